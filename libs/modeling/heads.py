"""Classification and regression heads, shared across pyramid levels.

forward(feats, masks, extents) with one ``B×F×T_l`` / ``B×1×T_l`` / (``B×1×T_l`` or None) per
level -> one output per level: logits ``B×C×T_l`` or offsets ``B×2×T_l``.

Fast path under autocast (bf16 / fp16): all levels run in one pass over a :class:`LevelStack`
(levels side by side along time, separated by ``k//2`` zero steps that every k-tap convolution
sees as the level's tensor border), so each layer is one convolution with one weight cast
instead of one per level; the outputs are views of the stacked result. Equal to the per-level
formulation (float32 and the reference formulation run that; so does chunked long-video
inference) to float rounding (``tests/test_heads_stacked.py``).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import (LayerNorm, MaskedConv1D, Scale, chunked_inference_applies,
                     map_time_chunks, reference_formulation_active)

__all__ = ["ClsHead", "RegHead", "LevelStack", "stack_levels"]

# bias of a class that never occurs in the annotations: sigmoid(bias) = 1e-6
_EMPTY_CLASS_PRIOR = 1e-6


def _prior_bias(prior_prob: float) -> float:
    return -math.log((1 - prior_prob) / prior_prob)


class LevelStack(NamedTuple):
    """Pyramid levels side by side along time: level l occupies steps ``starts[l] :
    starts[l] + lengths[l]``, followed (all but the last) by ``gap`` masked-out steps."""
    x: Tensor                   # B×C×L, channels-last memory; zeros in the gaps
    mask: Tensor                # B×1×L bool, False in the gaps
    extent: Optional[Tensor]    # B×1×L bool (False in the gaps), None when no level has one
    starts: List[int]
    lengths: List[int]
    gap: int

    def split(self, y: Tensor) -> List[Tensor]:
        """Per-level views of a ``B×·×L`` tensor."""
        return [y[..., s:s + n] for s, n in zip(self.starts, self.lengths)]

    def zero_gaps_(self, y: Tensor) -> Tensor:
        """Zero the gap steps of ``y`` in place (what a convolution must read there), outside
        autograd: for a ``y`` whose gradient at the gaps is zero anyway (a ReLU follows, whose
        output there is 0). Recorded in-place writes would copy the whole gradient once per
        gap in the backward pass."""
        with torch.no_grad():
            for s, n in zip(self.starts[:-1], self.lengths[:-1]):
                y[..., s + n:s + n + self.gap] = 0
        return y


def stack_levels(feats: Sequence[Tensor], masks: Sequence[Tensor],
                 extents: Sequence[Optional[Tensor]], gap: int) -> LevelStack:
    """Concatenate ``B×C×T_l`` levels (masks ``B×1×T_l``, extents or None) along time with
    ``gap`` zero steps between neighbours."""
    batch, channels = feats[0].shape[:2]
    lengths = [x.shape[-1] for x in feats]
    starts = [sum(lengths[:l]) + l * gap for l in range(len(feats))]
    zeros = feats[0].new_zeros(batch, gap, channels)
    no_step = masks[0].new_zeros(batch, 1, gap)
    xs, ms, es = [], [], []
    for l, (x, m, e) in enumerate(zip(feats, masks, extents)):
        if l:
            xs.append(zeros)
            ms.append(no_step)
            es.append(no_step)
        xs.append(x.transpose(1, 2))
        ms.append(m)
        es.append(torch.ones_like(m) if e is None else e)
    extent = None if all(e is None for e in extents) else torch.cat(es, 2)
    return LevelStack(torch.cat(xs, 1).transpose(1, 2), torch.cat(ms, 2), extent, starts,
                      lengths, gap)


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

    def _trunk(self, x: Tensor, mask: Tensor, extent: Optional[Tensor],
               stack: Optional[LevelStack] = None) -> Tensor:
        for conv, norm in zip(self.head, self.norm):
            y = norm(conv(x, mask, extent)[0])
            x = self.act(y if stack is None else stack.zero_gaps_(y))
        return x

    def _level(self, output: Callable[[Tensor, Tensor, Optional[Tensor]], Tensor], x: Tensor,
               mask: Tensor, extent: Optional[Tensor]) -> Tensor:
        """``output(x, mask, extent)`` of one level, in time chunks for long inference inputs
        (the trunk and the final conv are all k-tap convs: halo = their half-kernels)."""
        if not chunked_inference_applies(x.shape[-1], self.training):
            return output(x, mask, extent)
        halo = (len(self.head) + 1) * (self.kernel_size // 2)
        return map_time_chunks(output, (x, mask, extent), halo)

    def _stack(self, feats: Sequence[Tensor], masks: Sequence[Tensor],
               extents: Sequence[Optional[Tensor]]) -> Optional[LevelStack]:
        """All levels stacked for one pass under autocast (where per-level weight casts and
        small convolutions cost most; in float32 the per-level convolutions measured faster on
        CPU), or None where the per-level path runs (also: reference formulation, one level,
        chunked long-video inference)."""
        if (not torch.is_autocast_enabled(feats[0].device.type)
                or reference_formulation_active() or len(feats) < 2
                or chunked_inference_applies(max(x.shape[-1] for x in feats), self.training)):
            return None
        return stack_levels(feats, masks, extents, self.kernel_size // 2)


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
        extents = _per_level(extents, len(feats))
        stack = self._stack(feats, masks, extents)
        if stack is not None:
            return stack.split(self._logits(stack.x, stack.mask, stack.extent, stack))
        return [self._level(self._logits, x, mask, extent)
                for x, mask, extent in zip(feats, masks, extents)]

    def _logits(self, x: Tensor, mask: Tensor, extent: Optional[Tensor],
                stack: Optional[LevelStack] = None) -> Tensor:
        return self.cls_head(self._trunk(x, mask, extent, stack), mask, extent)[0]


class RegHead(_ConvTower):
    """Non-negative (left, right) distances in units of the level stride:
    ``ReLU(scale_l · conv(x))`` with one learnable ``Scale`` per level.

    ``out_dim`` output channels (2; TriDet's Trident head: ``2 · (num_bins + 1)`` bin logits).
    """

    def __init__(self, input_dim: int, feat_dim: int, fpn_levels: int, num_layers: int = 3,
                 kernel_size: int = 3, with_ln: bool = False, out_dim: int = 2) -> None:
        super().__init__(input_dim, feat_dim, num_layers, kernel_size, with_ln)
        self.scale = nn.ModuleList([Scale() for _ in range(fpn_levels)])
        self.offset_head = MaskedConv1D(feat_dim, out_dim, kernel_size, padding=kernel_size // 2)

    def forward(self, feats: Sequence[Tensor], masks: Sequence[Tensor],
                extents: Optional[Sequence[Optional[Tensor]]] = None) -> List[Tensor]:
        if len(feats) != len(self.scale):
            raise ValueError(f"{len(feats)} feature levels for {len(self.scale)} scales")
        extents = _per_level(extents, len(feats))
        stack = self._stack(feats, masks, extents)
        if stack is not None:
            return stack.split(self._stacked_offsets(stack))
        return [self._level(partial(self._offsets, scale), x, mask, extent)
                for x, mask, extent, scale in zip(feats, masks, extents, self.scale)]

    def _offsets(self, scale: Scale, x: Tensor, mask: Tensor, extent: Optional[Tensor]) -> Tensor:
        return F.relu(scale(self.offset_head(self._trunk(x, mask, extent), mask, extent)[0]))

    def _stacked_offsets(self, stack: LevelStack) -> Tensor:
        out = self.offset_head(self._trunk(stack.x, stack.mask, stack.extent, stack),
                               stack.mask, stack.extent)[0]
        # each level's scale over its steps and the gap after it; the product is taken in
        # float32 and rounded once, as a 0-d scale multiplies a low-precision tensor
        scales = torch.cat([s.scale.expand(n + stack.gap)
                            for s, n in zip(self.scale, stack.lengths)])[:out.shape[-1]]
        return F.relu((out.float() * scales).to(out.dtype))
