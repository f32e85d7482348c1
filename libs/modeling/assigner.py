"""Label assignment: which points are positives, their classes and regression targets.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["assign_points"]

# GTs whose length is within this many grid steps of the shortest qualifying one all give their
# class to the point (multi-label targets for near-identical actions).
_MULTI_LABEL_LENGTH_TOL = 1e-3


@torch.no_grad()
def assign_points(points: Tensor, gt_segments: Tensor, gt_labels: Tensor, num_classes: int,
                  center_sample: str = "radius", center_sample_radius: float = 1.5
                  ) -> Tuple[Tensor, Tensor]:
    """Targets of one video for the points of all levels.

    Args:
        points: ``P×4`` rows ``[t, reg_range_min, reg_range_max, stride]`` (grid units).
        gt_segments: ``N×2`` (start, end) in grid units; gt_labels: ``N`` int64.
        center_sample: ``radius`` (positives within ``radius·stride`` of the action centre);
            otherwise (``none``, the other value a config allows) anywhere strictly inside the
            action.
    Returns:
        cls_targets ``P×C`` (0/1, several ones for near-identical actions) and reg_targets
        ``P×2`` (left, right) distances to the chosen action, divided by the point's stride.
        A point is positive iff its class row is non-zero.
    """
    num_pts, num_gts = points.shape[0], gt_segments.shape[0]
    if num_gts == 0:
        return (gt_segments.new_zeros((num_pts, num_classes)),
                gt_segments.new_zeros((num_pts, 2)))

    t, range_min, range_max, stride = (points[:, i, None] for i in range(4))   # P×1 each
    starts, ends = gt_segments[None, :, 0], gt_segments[None, :, 1]              # 1×N each
    left, right = t - starts, ends - t                                           # P×N
    if center_sample == "radius":
        centres = 0.5 * (starts + ends)
        inner_start = torch.maximum(centres - stride * center_sample_radius, starts)
        inner_end = torch.minimum(centres + stride * center_sample_radius, ends)
        inside = torch.minimum(t - inner_start, inner_end - t) > 0
    else:
        inside = torch.minimum(left, right) > 0
    reach = torch.maximum(left, right)
    in_range = (reach >= range_min) & (reach <= range_max)

    lengths = (ends - starts).expand(num_pts, num_gts)
    lengths = lengths.masked_fill(~(inside & in_range), float("inf"))
    min_len, min_idx = lengths.min(dim=1)                                        # first arg-min
    chosen = (lengths <= min_len[:, None] + _MULTI_LABEL_LENGTH_TOL) & torch.isfinite(lengths)
    one_hot = F.one_hot(gt_labels.long(), num_classes).to(gt_segments.dtype)
    cls_targets = (chosen.to(gt_segments.dtype) @ one_hot).clamp_(0.0, 1.0)

    rows = torch.arange(num_pts, device=points.device)
    reg_targets = torch.stack((left[rows, min_idx], right[rows, min_idx]), dim=-1) / stride
    return cls_targets, reg_targets
