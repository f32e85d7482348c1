"""Necks between backbone and heads.

forward(features, masks) -> (features, masks) for levels ``start_level … end_level-1``:
``B×F×T_l`` and ``B×1×T_l``. Neither neck needs the ``extent`` of a batch: the identity neck has
no convolution, and the FPN's depthwise conv reads lateral features that are zero beyond each
video's extent (masked 1×1 convs, and nearest up-sampling of an even extent stays inside it).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import LayerNorm, MaskedConv1D
from .models import register_neck

__all__ = ["FPN1D", "FPNIdentity"]


def _level_range(in_channels: Sequence[int], start_level: int, end_level: int) -> range:
    end = len(in_channels) if end_level == -1 else end_level
    if not 0 <= start_level < end <= len(in_channels):
        raise ValueError(f"neck levels [{start_level}, {end}) do not fit the "
                         f"{len(in_channels)} backbone levels")
    return range(start_level, end)


@register_neck("fpn")
class FPN1D(nn.Module):
    """Feature pyramid: 1×1 lateral convs, top-down nearest up-sampling, depthwise k3 convs, LN."""

    def __init__(self, in_channels: Sequence[int], out_channel: int, scale_factor: int = 2,
                 start_level: int = 0, end_level: int = -1, with_ln: bool = True) -> None:
        super().__init__()
        self.levels = _level_range(in_channels, start_level, end_level)
        self.scale_factor = scale_factor
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        self.fpn_norms = nn.ModuleList()
        for level in self.levels:
            self.lateral_convs.append(
                MaskedConv1D(in_channels[level], out_channel, 1, bias=not with_ln))
            self.fpn_convs.append(
                MaskedConv1D(out_channel, out_channel, 3, padding=1, groups=out_channel,
                             bias=not with_ln))
            self.fpn_norms.append(LayerNorm(out_channel) if with_ln else nn.Identity())

    def forward(self, inputs: Sequence[Tensor], masks: Sequence[Tensor]
                ) -> Tuple[List[Tensor], List[Tensor]]:
        masks = [masks[level] for level in self.levels]
        laterals = [conv(inputs[level], mask)[0]
                    for conv, level, mask in zip(self.lateral_convs, self.levels, masks)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], scale_factor=self.scale_factor, mode="nearest")
        feats = [norm(conv(x, mask)[0])
                 for conv, norm, x, mask in zip(self.fpn_convs, self.fpn_norms, laterals, masks)]
        return feats, masks


@register_neck("identity")
class FPNIdentity(nn.Module):
    """Per-level LayerNorm only; requires ``in_channels[l] == out_channel``."""

    def __init__(self, in_channels: Sequence[int], out_channel: int, scale_factor: int = 2,
                 start_level: int = 0, end_level: int = -1, with_ln: bool = True) -> None:
        super().__init__()
        self.levels = _level_range(in_channels, start_level, end_level)
        self.fpn_norms = nn.ModuleList()
        for level in self.levels:
            if in_channels[level] != out_channel:
                raise ValueError(f"the identity neck needs fpn_dim == embd_dim, got "
                                 f"{out_channel} and {in_channels[level]}")
            self.fpn_norms.append(LayerNorm(out_channel) if with_ln else nn.Identity())

    def forward(self, inputs: Sequence[Tensor], masks: Sequence[Tensor]
                ) -> Tuple[List[Tensor], List[Tensor]]:
        feats = [norm(inputs[level]) for norm, level in zip(self.fpn_norms, self.levels)]
        return feats, [masks[level] for level in self.levels]
