"""Location generator: the anchor points of every pyramid level (spec C.9)."""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor, nn

from .models import register_generator

__all__ = ["PointGenerator"]


@register_generator("point")
class PointGenerator(nn.Module):
    """Points ``[t, reg_range_min, reg_range_max, stride]`` (float32, input-grid units).

    Level l with stride ``s_l`` has points ``t = 0, s_l, 2·s_l, …``, one per feature step. The
    reference pre-computes them up to ``max_seq_len × max_buffer_len_factor`` and refuses longer
    inputs; here they are generated for the actual length, with the same values.

    forward(feats: list of ``B×C×T_l``) -> list of ``T_l×4`` tensors on the features' device.
    """

    def __init__(self, fpn_strides: Sequence[int],
                 regression_range: Sequence[Sequence[float]], use_offset: bool = False) -> None:
        super().__init__()
        if len(regression_range) != len(fpn_strides):
            raise ValueError(f"{len(regression_range)} regression ranges for "
                             f"{len(fpn_strides)} pyramid levels")
        self.fpn_strides = list(fpn_strides)
        self.regression_range = [tuple(r) for r in regression_range]
        self.use_offset = use_offset

    def level_points(self, level: int, length: int, device: torch.device) -> Tensor:
        """``length×4`` points of pyramid level ``level``."""
        stride = self.fpn_strides[level]
        t = torch.arange(length, dtype=torch.float32, device=device) * stride
        if self.use_offset:
            t = t + 0.5 * stride
        rows = torch.tensor([*self.regression_range[level], stride], dtype=torch.float32,
                            device=device)
        return torch.cat([t[:, None], rows.expand(length, 3)], dim=1)

    def forward(self, feats: Sequence[Tensor]) -> List[Tensor]:
        if len(feats) != len(self.fpn_strides):
            raise ValueError(f"{len(feats)} feature levels for {len(self.fpn_strides)} strides")
        return [self.level_points(level, feat.shape[-1], feat.device)
                for level, feat in enumerate(feats)]
