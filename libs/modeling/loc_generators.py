"""Location generator: the anchor points of every pyramid level."""
from __future__ import annotations

import math
import warnings
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from .models import register_generator

__all__ = ["PointGenerator"]


@register_generator("point")
class PointGenerator(nn.Module):
    """Points ``[t, reg_range_min, reg_range_max, stride]`` (float32, input-grid units).

    Level l with stride ``s_l`` has points ``t = 0, s_l, 2·s_l, …``, one per feature step. The
    reference pre-computes them up to ``max_seq_len`` (the model passes ``max_seq_len ×
    max_buffer_len_factor``) and stops on longer inputs; here they are generated for the actual
    length, with the same values, and ``max_seq_len`` only serves a one-time warning when an
    input exceeds what the reference would have taken (None: no warning).

    forward(feats: list of ``B×C×T_l``) -> list of ``T_l×4`` tensors on the features' device.
    """

    def __init__(self, max_seq_len: Optional[float], fpn_strides: Sequence[int],
                 regression_range: Sequence[Sequence[float]], use_offset: bool = False) -> None:
        super().__init__()
        self.max_seq_len = max_seq_len
        self.fpn_strides = list(fpn_strides)
        self.regression_range = [tuple(r) for r in regression_range]
        self.use_offset = use_offset
        self._warned = False

    def level_points(self, level: int, length: int, device: torch.device) -> Tensor:
        """``length×4`` points of pyramid level ``level``."""
        stride = self.fpn_strides[level]
        t = torch.arange(length, dtype=torch.float32, device=device) * stride
        if self.use_offset:
            t = t + 0.5 * stride
        rows = torch.tensor([*self.regression_range[level], stride], dtype=torch.float32,
                            device=device)
        return torch.cat([t[:, None], rows.expand(length, 3)], dim=1)

    def beyond_reference_buffer(self, lengths: Sequence[int]) -> bool:
        """True when per-level lengths ``lengths`` exceed the reference's buffer of
        ``ceil(max_seq_len / s_l)`` points at some level l."""
        if self.max_seq_len is None:
            return False
        return any(n > math.ceil(self.max_seq_len / s) for n, s in zip(lengths, self.fpn_strides))

    def forward(self, feats: Sequence[Tensor]) -> List[Tensor]:
        if len(feats) != len(self.fpn_strides):
            raise ValueError(f"{len(feats)} feature levels for {len(self.fpn_strides)} strides")
        lengths = [feat.shape[-1] for feat in feats]
        if not self._warned and self.beyond_reference_buffer(lengths):
            self._warned = True
            warnings.warn(
                f"an input of {lengths[0] * self.fpn_strides[0]} steps is longer than the "
                f"reference's point buffer (model.max_seq_len × model.max_buffer_len_factor = "
                f"{self.max_seq_len:g}), where the reference stops; points are made on demand "
                f"here, so max_buffer_len_factor has no effect (warned once)", stacklevel=2)
        return [self.level_points(level, n, feat.device)
                for level, (feat, n) in enumerate(zip(feats, lengths))]
