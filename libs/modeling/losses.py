"""Loss functions. Both compute in float32 whatever the input dtype."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sigmoid_focal_loss", "ctr_diou_loss_1d", "ctr_iou_loss_1d"]


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction '{reduction}' (none | mean | sum)")


def sigmoid_focal_loss(inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "none") -> Tensor:
    """Focal loss on logits (RetinaNet): ``BCE(x, y) · (1 - p_t)^γ · (α y + (1-α)(1-y))``.

    inputs, targets: same shape (any); targets in [0, 1] (soft targets allowed).
    ``p = sigmoid(x)``, ``p_t = p y + (1-p)(1-y)``; ``alpha < 0`` disables the α weighting.
    """
    inputs = inputs.float()
    targets = targets.float()
    p = torch.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


def _anchored_iou(input_offsets: Tensor, target_offsets: Tensor, eps: float) -> Tensor:
    """IoU of ``N×2`` (left, right) float32 offset pairs sharing their anchor point."""
    lp, rp = input_offsets[:, 0], input_offsets[:, 1]
    lg, rg = target_offsets[:, 0], target_offsets[:, 1]
    intersection = torch.min(lp, lg) + torch.min(rp, rg)
    union = (lp + rp) + (lg + rg) - intersection
    return intersection / union.clamp(min=eps)


def ctr_iou_loss_1d(input_offsets: Tensor, target_offsets: Tensor, reduction: str = "none",
                    eps: float = 1e-8) -> Tensor:
    """``1 - IoU`` between segments sharing their anchor point (TriDet's ``ctr_giou_loss_1d``:
    for such segments the generalised IoU equals the IoU).

    input_offsets, target_offsets: ``N×2`` non-negative (left, right) distances from the point.
    """
    loss = 1.0 - _anchored_iou(input_offsets.float(), target_offsets.float(), eps)
    return _reduce(loss, reduction)


def ctr_diou_loss_1d(input_offsets: Tensor, target_offsets: Tensor, reduction: str = "none",
                     eps: float = 1e-8) -> Tensor:
    """1-D Distance-IoU loss between segments sharing their anchor point.

    input_offsets, target_offsets: ``N×2`` non-negative (left, right) distances from the point.
    ``loss = 1 - IoU + (ρ / L_c)²`` with ρ the distance between the two centres and L_c the
    length of the smallest segment enclosing both.
    """
    input_offsets = input_offsets.float()
    target_offsets = target_offsets.float()
    lp, rp = input_offsets[:, 0], input_offsets[:, 1]
    lg, rg = target_offsets[:, 0], target_offsets[:, 1]
    iou = _anchored_iou(input_offsets, target_offsets, eps)
    enclosing = torch.max(lp, lg) + torch.max(rp, rg)
    rho = 0.5 * (rp - lp - rg + lg)
    loss = 1.0 - iou + torch.square(rho / enclosing.clamp(min=eps))
    return _reduce(loss, reduction)
