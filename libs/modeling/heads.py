"""Classification and regression heads, shared across pyramid levels.

forward(feats, masks, extents) with one ``B×F×T_l`` / ``B×1×T_l`` / (``B×1×T_l`` or None) per
level -> one output per level: logits ``B×C×T_l`` or offsets ``B×2×T_l``.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, List, Optional, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import LayerNorm, MaskedConv1D, Scale, chunked_inference_applies, map_time_chunks

__all__ = ["ClsHead", "RegHead"]

# bias of a class that never occurs in the annotations: sigmoid(bias) = 1e-6
_EMPTY_CLASS_PRIOR = 1e-6


def _prior_bias(prior_prob: float) -> float:
    return -math.log((1 - prior_prob) / prior_prob)


class _ConvTower(nn.Module):
    """``num_layers - 1`` × (masked conv k -> LayerNorm -> ReLU), the trunk both heads share."""

    def __init__(self, input_dim: int, feat_dim: int, num_layers: int, kernel_size: int,
                 with_ln: bool) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.act = nn.ReLU()
        self.head = nn.ModuleList()
        self.norm = nn.ModuleList()
        for idx in range(num_layers - 1):
            self.head.append(MaskedConv1D(input_dim if idx == 0 else feat_dim, feat_dim,
                                          kernel_size, padding=kernel_size // 2,
                                          bias=not with_ln))
            self.norm.append(LayerNorm(feat_dim) if with_ln else nn.Identity())

    def _trunk(self, x: Tensor, mask: Tensor, extent: Optional[Tensor]) -> Tensor:
        for conv, norm in zip(self.head, self.norm):
            x = self.act(norm(conv(x, mask, extent)[0]))
        return x

    def _level(self, output: Callable[[Tensor, Tensor, Optional[Tensor]], Tensor], x: Tensor,
               mask: Tensor, extent: Optional[Tensor]) -> Tensor:
        """``output(x, mask, extent)`` of one level, in time chunks for long inference inputs
        (the trunk and the final conv are all k-tap convs: halo = their half-kernels)."""
        if not chunked_inference_applies(x.shape[-1], self.training):
            return output(x, mask, extent)
        halo = (len(self.head) + 1) * (self.kernel_size // 2)
        return map_time_chunks(output, (x, mask, extent), halo)


def _per_level(extents: Optional[Sequence[Optional[Tensor]]], n_levels: int
               ) -> Sequence[Optional[Tensor]]:
    return [None] * n_levels if extents is None else extents


class ClsHead(_ConvTower):
    """Class logits; the final conv's bias starts at the prior ``-log((1-π)/π)`` (0 when
    ``prior_prob`` is 0) and at ``-log((1-1e-6)/1e-6)`` for the ``empty_cls`` ids."""

    def __init__(self, input_dim: int, feat_dim: int, num_classes: int, prior_prob: float = 0.01,
                 num_layers: int = 3, kernel_size: int = 3, with_ln: bool = False,
                 empty_cls: Sequence[int] = ()) -> None:
        super().__init__(input_dim, feat_dim, num_layers, kernel_size, with_ln)
        self.cls_head = MaskedConv1D(feat_dim, num_classes, kernel_size,
                                     padding=kernel_size // 2)
        if prior_prob > 0:                         # else the bias stays 0, as in the reference
            nn.init.constant_(self.cls_head.conv.bias, _prior_bias(prior_prob))
        for idx in empty_cls:
            nn.init.constant_(self.cls_head.conv.bias[idx], _prior_bias(_EMPTY_CLASS_PRIOR))

    def forward(self, feats: Sequence[Tensor], masks: Sequence[Tensor],
                extents: Optional[Sequence[Optional[Tensor]]] = None) -> List[Tensor]:
        return [self._level(self._logits, x, mask, extent)
                for x, mask, extent in zip(feats, masks, _per_level(extents, len(feats)))]

    def _logits(self, x: Tensor, mask: Tensor, extent: Optional[Tensor]) -> Tensor:
        return self.cls_head(self._trunk(x, mask, extent), mask, extent)[0]


class RegHead(_ConvTower):
    """Non-negative (left, right) distances in units of the level stride:
    ``ReLU(scale_l · conv(x))`` with one learnable ``Scale`` per level."""

    def __init__(self, input_dim: int, feat_dim: int, fpn_levels: int, num_layers: int = 3,
                 kernel_size: int = 3, with_ln: bool = False) -> None:
        super().__init__(input_dim, feat_dim, num_layers, kernel_size, with_ln)
        self.scale = nn.ModuleList([Scale() for _ in range(fpn_levels)])
        self.offset_head = MaskedConv1D(feat_dim, 2, kernel_size, padding=kernel_size // 2)

    def forward(self, feats: Sequence[Tensor], masks: Sequence[Tensor],
                extents: Optional[Sequence[Optional[Tensor]]] = None) -> List[Tensor]:
        if len(feats) != len(self.scale):
            raise ValueError(f"{len(feats)} feature levels for {len(self.scale)} scales")
        return [self._level(partial(self._offsets, scale), x, mask, extent)
                for x, mask, extent, scale in zip(feats, masks, _per_level(extents, len(feats)),
                                                  self.scale)]

    def _offsets(self, scale: Scale, x: Tensor, mask: Tensor, extent: Optional[Tensor]) -> Tensor:
        return F.relu(scale(self.offset_head(self._trunk(x, mask, extent), mask, extent)[0]))
