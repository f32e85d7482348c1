"""TemporalMaxer (Tang, Kim, Sohn 2023): the ActionFormer detector with its Transformer blocks
replaced by parameter-free max-pooling.

Registers the backbone ``convPooler`` and the detector ``TemporalMaxerArchitecture``, the names
TemporalMaxer's configs use. Behaviour as in TemporalMaxer's code:

* embedding: the same masked convs -> LayerNorm -> ReLU as ActionFormer (same parameter names);
* no stem; each of the ``backbone_arch[1]`` branch levels is ``MaxPool1d(kernel 3, stride
  scale_factor, padding 1)`` over the *unmasked* input (padded steps keep the value the
  embedding left there, ReLU(LayerNorm bias)), multiplied by the nearest-neighbour
  down-sampled mask;
* the identity neck normalises each level with ``fpn_norm``: ``groupnorm`` (TemporalMaxer's
  default: ``GroupNorm(4 groups, no affine)`` over all steps of the padded sequence, padding
  included, so outputs depend on the padded length as in TemporalMaxer), ``layernorm`` or
  ``None``; ``fpn_with_ln`` is not read;
* point generator, heads, losses and decoding are ActionFormer's; the label assignment is
  usually SimOTA (``model.assigner``, see :func:`libs.modeling.assigner.simota_assign`).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import Dims, _EmbeddingBackbone
from .blocks import ChannelsLastMaxPool1d, LayerNorm, downsample_mask
from .meta_archs import LocPointTransformer
from .models import register_backbone, register_meta_arch

__all__ = ["TemporalMaxerBlock", "ConvPoolerBackbone", "TemporalMaxerNeck",
           "TemporalMaxerArchitecture"]

FPN_NORMS = ("groupnorm", "layernorm", None)


class TemporalMaxerBlock(nn.Module):
    """One pyramid level: ``max over steps s·t-1, s·t, s·t+1`` (−∞ beyond the tensor ends), then
    zero on padded steps.

    forward: x ``B×E×T`` (T divisible by ``stride``), mask ``B×1×T`` -> (``B×E×T/s``, mask
    ``B×1×T/s`` with ``mask_out[t] = mask[s·t]``). ``extent`` is accepted for the backbone
    interface and not needed: with T and every video's extent divisible by s, no window reaches
    past an extent's last step.
    """

    def __init__(self, stride: int = 2) -> None:
        super().__init__()
        self.stride = stride
        self.ds_pooling = ChannelsLastMaxPool1d(3, stride=stride, padding=1)

    def forward(self, x: Tensor, mask: Tensor, extent: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor]:
        if x.shape[-1] % self.stride != 0:
            raise ValueError(f"sequence length {x.shape[-1]} is not divisible by the pooling "
                             f"stride {self.stride}")
        out_mask = downsample_mask(mask, self.stride)
        return self.ds_pooling(x) * out_mask.to(x.dtype), out_mask


@register_backbone("convPooler")
class ConvPoolerBackbone(_EmbeddingBackbone):
    """Embedding convs -> ``arch[1]`` TemporalMaxer levels (``arch = (#embedding convs,
    #down-sampling levels)``, TemporalMaxer's ``(2, 5)``); ``arch[1] + 1`` pyramid levels.

    Parameters (and checkpoint names) are only the embedding's: ``embd.i.conv.weight``,
    ``embd_norm.i.{weight,bias}`` (and ``proj.i`` for a list ``n_in``).
    """

    def __init__(self, n_in: Dims, n_embd: Dims, n_embd_ks: int,
                 arch: Sequence[int] = (2, 5), scale_factor: int = 2,
                 with_ln: bool = False) -> None:
        super().__init__()
        if len(arch) != 2:
            raise ValueError(f"backbone_arch of convPooler must be (#embd convs, #pooling "
                             f"levels), got {tuple(arch)}")
        self.arch = tuple(arch)
        self.scale_factor = scale_factor
        self._build_embedding(n_in, n_embd, n_embd_ks, arch[0], with_ln)
        self.stem = nn.ModuleList()
        self.branch = nn.ModuleList([TemporalMaxerBlock(scale_factor) for _ in range(arch[1])])
        self.apply(self._zero_biases)


class TemporalMaxerNeck(nn.Module):
    """TemporalMaxer's identity neck: one normalisation per pyramid level, no parameters with
    ``groupnorm`` (``neck.fpn_norms.l.{weight,bias}`` with ``layernorm``).

    forward(features, masks, extents) -> (features, masks) of levels ``start_level…``;
    ``extents``: per backbone level ``B×1×T_l`` bool (each video's padded extent) or None (all
    fill the tensor). GroupNorm statistics run over each video's extent, so a video gives the
    same features in any batch; steps beyond its extent are set to 0.
    """

    def __init__(self, in_channels: Sequence[int], out_channel: int, start_level: int = 0,
                 fpn_norm: Optional[str] = "groupnorm", num_group: int = 4) -> None:
        super().__init__()
        if fpn_norm not in FPN_NORMS:
            raise ValueError(f"model.fpn_norm must be one of {FPN_NORMS}, got {fpn_norm!r}")
        if any(c != out_channel for c in in_channels[start_level:]):
            raise ValueError(f"the identity neck needs fpn_dim == embd_dim, got {out_channel} "
                             f"and {in_channels[start_level]}")
        self.start_level = start_level
        self.fpn_norms = nn.ModuleList([
            nn.GroupNorm(num_group, out_channel, affine=False) if fpn_norm == "groupnorm"
            else LayerNorm(out_channel) if fpn_norm == "layernorm" else nn.Identity()
            for _ in in_channels[start_level:]])

    def forward(self, inputs: Sequence[Tensor], masks: Sequence[Tensor],
                extents: Optional[Sequence[Optional[Tensor]]] = None
                ) -> Tuple[List[Tensor], List[Tensor]]:
        levels = range(self.start_level, len(inputs))
        extents = [None] * len(inputs) if extents is None else extents
        feats = [self._normalise(norm, inputs[l], extents[l])
                 for norm, l in zip(self.fpn_norms, levels)]
        return feats, [masks[l] for l in levels]

    @staticmethod
    def _normalise(norm: nn.Module, x: Tensor, extent: Optional[Tensor]) -> Tensor:
        if extent is None or not isinstance(norm, nn.GroupNorm):
            return norm(x)
        out = torch.zeros_like(x)
        for row, n in enumerate(extent.sum(dim=-1).flatten().tolist()):
            out[row:row + 1, :, :n] = F.group_norm(x[row:row + 1, :, :n], norm.num_groups,
                                                   eps=norm.eps)
        return out


@register_meta_arch("TemporalMaxerArchitecture")
class TemporalMaxerArchitecture(LocPointTransformer):
    """TemporalMaxer's detector: :class:`LocPointTransformer` with the ``convPooler`` backbone
    and TemporalMaxer's identity neck (both required, as in TemporalMaxer's code).

    Extra keys: ``fpn_norm`` (``groupnorm`` default, ``layernorm``, None). Attention keys
    (``n_head``, ``n_mha_win_size``, ``use_abs_pe``, ``use_rel_pe``), ``fpn_with_ln`` and
    ``train_cfg.center_sample`` / ``droppath`` have no effect; with ``model.assigner`` set,
    SimOTA chooses the positives.
    """

    def __init__(self, backbone_type: str, fpn_type: str, fpn_norm: Optional[str] = "groupnorm",
                 **kwargs) -> None:
        if backbone_type != "convPooler" or fpn_type != "identity":
            raise ValueError(f"TemporalMaxerArchitecture needs model.backbone_type 'convPooler' "
                             f"and model.fpn_type 'identity', got {backbone_type!r} and "
                             f"{fpn_type!r}")
        kwargs["n_mha_win_size"] = -1     # no attention: pad to multiples of the largest stride
        super().__init__(backbone_type=backbone_type, fpn_type=fpn_type, **kwargs)
        embd = kwargs["embd_dim"]
        width = sum(embd) if isinstance(embd, (list, tuple)) else embd
        self.neck = TemporalMaxerNeck([width] * (kwargs["backbone_arch"][-1] + 1),
                                      kwargs["fpn_dim"], kwargs["fpn_start_level"], fpn_norm)

    def _neck(self, feats: List[Tensor], masks: List[Tensor], extent_mask: Optional[Tensor]
              ) -> Tuple[List[Tensor], List[Tensor]]:
        extents = [downsample_mask(extent_mask, self.backbone.scale_factor ** level)
                   for level in range(len(feats))]
        return self.neck(feats, masks, extents)
