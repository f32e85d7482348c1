"""The ActionFormer model (and TemporalMaxer): blocks, backbones, necks, heads, losses, assignment,
detector."""
# blocks first: training utilities import these names while libs.modeling is initialising
from .blocks import (AffineDropPath, ConvBlock, LayerNorm, LocalMaskedMHCA, MaskedConv1D,
                     MaskedMHA, MaskedMHCA, Scale, TransformerBlock)
from .models import (make_backbone, make_generator, make_meta_arch, make_neck,
                     register_backbone, register_generator, register_meta_arch, register_neck)
from . import backbones, loc_generators, meta_archs, necks  # noqa: F401  (fill the registries)
from . import temporalmaxer  # noqa: F401  (convPooler, TemporalMaxerArchitecture)
from .checkpoint import load_model_weights, strip_prefix
from .meta_archs import LocPointTransformer

__all__ = ["AffineDropPath", "ConvBlock", "LayerNorm", "LocalMaskedMHCA", "MaskedConv1D",
           "MaskedMHA", "MaskedMHCA", "Scale", "TransformerBlock", "make_backbone",
           "make_generator", "make_meta_arch", "make_neck",
           "register_backbone", "register_generator", "register_meta_arch", "register_neck",
           "load_model_weights", "strip_prefix", "LocPointTransformer"]
