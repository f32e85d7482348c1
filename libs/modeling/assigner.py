"""Label assignment: which points are positives, their classes and regression targets.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .losses import ctr_diou_loss_1d, sigmoid_focal_loss

__all__ = ["assign_points", "simota_assign", "SIMOTA_DEFAULTS"]

# TemporalMaxer's SimOTA defaults, for keys a config's ``model.assigner`` leaves out
SIMOTA_DEFAULTS = {"center_radius": 2.5, "iou_weight": 3.0, "cls_weight": 1.0,
                   "keep_percent": 0.65, "confuse_weight": 0.1}

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

    chosen, min_idx, left, right = _candidates(points, gt_segments, center_sample,
                                               center_sample_radius)
    one_hot = F.one_hot(gt_labels.long(), num_classes).to(gt_segments.dtype)
    cls_targets = (chosen.to(gt_segments.dtype) @ one_hot).clamp_(0.0, 1.0)

    return cls_targets, _regression_targets(points, left, right, min_idx)


def _candidates(points: Tensor, gt_segments: Tensor, center_sample: str, radius: float
                ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """ActionFormer's candidate rule: ``chosen`` ``P×N`` bool, True where the point
    lies inside the action (its centre region with ``radius``), the action's reach fits the
    point's regression range and its length is within the tolerance of the shortest such action;
    ``min_idx`` ``P`` the first shortest one; ``left``, ``right`` ``P×N`` distances (grid units)."""
    t, range_min, range_max, stride = (points[:, i, None] for i in range(4))   # P×1 each
    starts, ends = gt_segments[None, :, 0], gt_segments[None, :, 1]              # 1×N each
    left, right = t - starts, ends - t                                           # P×N
    if center_sample == "radius":
        centres = 0.5 * (starts + ends)
        inner_start = torch.maximum(centres - stride * radius, starts)
        inner_end = torch.minimum(centres + stride * radius, ends)
        inside = torch.minimum(t - inner_start, inner_end - t) > 0
    else:
        inside = torch.minimum(left, right) > 0
    reach = torch.maximum(left, right)
    in_range = (reach >= range_min) & (reach <= range_max)

    lengths = (ends - starts).expand(points.shape[0], gt_segments.shape[0])
    lengths = lengths.masked_fill(~(inside & in_range), float("inf"))
    min_len, min_idx = lengths.min(dim=1)                                        # first arg-min
    chosen = (lengths <= min_len[:, None] + _MULTI_LABEL_LENGTH_TOL) & torch.isfinite(lengths)
    return chosen, min_idx, left, right


def _regression_targets(points: Tensor, left: Tensor, right: Tensor, idx: Tensor) -> Tensor:
    """``P×2`` (left, right) distances of each point to action ``idx[p]``, over its stride."""
    rows = torch.arange(points.shape[0], device=points.device)
    return torch.stack((left[rows, idx], right[rows, idx]), dim=-1) / points[:, 3, None]


@torch.no_grad()
def simota_assign(points: Tensor, valid: Tensor, cls_logits: Tensor, offsets: Tensor,
                  gt_segments: Tensor, gt_labels: Tensor, num_classes: int,
                  center_radius: float = 2.5, iou_weight: float = 3.0, cls_weight: float = 1.0,
                  keep_percent: float = 0.65, confuse_weight: float = 0.1
                  ) -> Tuple[Tensor, Tensor, Tensor]:
    """TemporalMaxer's SimOTA-style assignment of one video, from the current predictions.

    Args:
        points: ``P×4`` as for :func:`assign_points`; valid: ``P`` bool (unpadded points).
        cls_logits: ``P×C`` class logits; offsets: ``P×2`` predicted (left, right) distances in
            units of the point's stride (both taken as constants).
        gt_segments, gt_labels: ``N×2`` grid units, ``N``.
    Rule, on the valid points only:
        candidates = ActionFormer's centre-sampling candidates with ``center_radius``;
        cost[p, n] = cls_weight · Σ_c focal(logit[p, c], onehot(label n)[c])
                     + iou_weight · DIoU-loss(pred offsets of p, offsets of p to action n),
        infinite where p lies outside action n (a boundary point is inside);
        positives = candidates with a finite cost (so exactly the candidates);
        regression target of a point = the action of least cost (first on ties), which need not
        be the shortest candidate;
        weight of a point = ``confuse_weight`` if some cost is finite, raised to 1 for the
        ``floor(keep_percent · #finite costs of n)`` cheapest points of every action n; 1 where
        no cost is finite.
    Returns:
        cls_targets ``P×C`` (0/1), reg_targets ``P×2`` (stride units), weights ``P`` (0 on
        padded points; used on positives only, also as their count for the loss normaliser).
    """
    num_pts, num_gts = points.shape[0], gt_segments.shape[0]
    if num_gts == 0:
        return (gt_segments.new_zeros((num_pts, num_classes)),
                gt_segments.new_zeros((num_pts, 2)), valid.to(gt_segments.dtype))
    chosen, _, left, right = _candidates(points, gt_segments, "radius", center_radius)
    rows = valid.nonzero().squeeze(1)
    cost = _simota_cost(points[rows], cls_logits[rows], offsets[rows], left[rows], right[rows],
                        gt_labels, num_classes, iou_weight, cls_weight)
    finite = cost < float("inf")

    weights = torch.ones(len(rows), dtype=torch.float32, device=points.device)
    weights[finite.any(dim=1)] = confuse_weight
    num_kept = (finite.sum(dim=0) * keep_percent).long()
    for n in range(num_gts):
        weights[torch.topk(cost[:, n], k=int(num_kept[n]), largest=False).indices] = 1.0

    matching = torch.zeros_like(chosen)
    matching[rows] = chosen[rows] & finite
    best = torch.zeros(num_pts, dtype=torch.long, device=points.device)
    best[rows] = cost.min(dim=1).indices
    all_weights = torch.zeros(num_pts, dtype=torch.float32, device=points.device)
    all_weights[rows] = weights
    one_hot = F.one_hot(gt_labels.long(), num_classes).to(gt_segments.dtype)
    cls_targets = (matching.to(gt_segments.dtype) @ one_hot).clamp_(0.0, 1.0)
    return cls_targets, _regression_targets(points, left, right, best), all_weights


def _simota_cost(points: Tensor, cls_logits: Tensor, offsets: Tensor, left: Tensor, right: Tensor,
                 gt_labels: Tensor, num_classes: int, iou_weight: float, cls_weight: float
                 ) -> Tensor:
    """``V×N`` matching cost of :func:`simota_assign` (``inf`` where the point is outside)."""
    num_pts, num_gts = left.shape
    gt_offsets = torch.stack((left, right), dim=-1) / points[:, 3, None, None]     # V×N×2
    outside = (gt_offsets < 0).any(dim=-1)
    gt_offsets = gt_offsets.masked_fill(outside[..., None], 0.0)
    pred = offsets[:, None, :].expand(num_pts, num_gts, 2).masked_fill(outside[..., None], 0.0)
    iou_cost = ctr_diou_loss_1d(pred.reshape(-1, 2), gt_offsets.reshape(-1, 2))
    iou_cost = iou_cost.reshape(num_pts, num_gts).masked_fill(outside, float("inf"))
    one_hot = F.one_hot(gt_labels.long(), num_classes).float()
    cls_cost = sigmoid_focal_loss(cls_logits[:, None, :].expand(num_pts, num_gts, num_classes),
                                  one_hot[None].expand(num_pts, num_gts, num_classes)).sum(-1)
    return cls_cost * cls_weight + iou_cost * iou_weight
