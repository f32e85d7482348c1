"""The detectors (ActionFormer, TriDet, TemporalMaxer): blocks, backbones, necks, heads, losses,
assignment."""
# blocks first: training utilities import these names while libs.modeling is initialising
from .blocks import (AffineDropPath, ConvBlock, LayerNorm, LocalMaskedMHCA, MaskedConv1D,
                     MaskedMHA, MaskedMHCA, Scale, TransformerBlock)
from .models import (make_backbone, make_generator, make_meta_arch, make_neck,
                     register_backbone, register_generator, register_meta_arch, register_neck)
from . import backbones, loc_generators, meta_archs, necks, sgp, temporalmaxer, tridet  # noqa: F401,E501  (registries)
from .checkpoint import load_model_weights, strip_prefix
from .meta_archs import LocPointTransformer
from .tridet import TriDet

__all__ = ["AffineDropPath", "ConvBlock", "LayerNorm", "LocalMaskedMHCA", "MaskedConv1D",
           "MaskedMHA", "MaskedMHCA", "Scale", "TransformerBlock", "make_backbone",
           "make_generator", "make_meta_arch", "make_neck",
           "register_backbone", "register_generator", "register_meta_arch", "register_neck",
           "load_model_weights", "strip_prefix", "LocPointTransformer", "TriDet"]
