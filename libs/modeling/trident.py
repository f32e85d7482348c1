"""TriDet's Trident head: boundary distances as expectations over bins (docs/tridet.md).

Three branches predict, per point ``t`` and for ``n = num_bins``:

* a start-boundary logit per class and step (``start_head``, ``B×C×T``),
* an end-boundary logit per class and step (``end_head``, ``B×C×T``),
* per point, ``n + 1`` relative logits for each side (the regression head, ``B×T×2(n+1)``,
  left side first).

The distance to the start is ``E[d] = Σ_d d · softmax_j(start[t - n + j] + rel_left[j])`` with
``d = n - j`` (bin j of the window ``t-n … t``); to the end ``Σ_j j · softmax_j(end[t + j] +
rel_right[j])`` (window ``t … t+n``). Steps outside the level's tensor contribute a start/end
logit of 0 (TriDet pads the windows with zeros, not −∞). Distances are in level strides.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["boundary_windows", "trident_offsets"]


def boundary_windows(logits: Tensor, num_bins: int, side: str) -> Tensor:
    """Windows of ``num_bins + 1`` boundary logits around every step.

    logits: ``…×T`` (one level, time last). Returns ``…×T×(num_bins+1)``:
    ``side='start'``: ``out[t, j] = logits[t - num_bins + j]``; ``side='end'``:
    ``out[t, j] = logits[t + j]``; 0 where the index leaves ``[0, T)``.
    """
    if side == "start":
        padded = F.pad(logits, (num_bins, 0))
    elif side == "end":
        padded = F.pad(logits, (0, num_bins))
    else:
        raise ValueError(f"side must be 'start' or 'end', got {side!r}")
    return padded.unfold(-1, num_bins + 1, 1)


def trident_offsets(start_windows: Tensor, end_windows: Tensor, rel_logits: Tensor) -> Tensor:
    """Expected (start, end) distances of the Trident head.

    start_windows, end_windows: ``…×(n+1)`` (from :func:`boundary_windows`); rel_logits:
    ``…×2×(n+1)`` (left row first), broadcastable against them. Returns ``…×2`` (level strides).
    As TriDet, NaN probabilities of the right distribution are set to 0 in *both*
    distributions (no effect on finite logits).
    """
    left = torch.softmax(start_windows + rel_logits[..., 0, :], dim=-1)
    right = torch.softmax(end_windows + rel_logits[..., 1, :], dim=-1)
    bins = left.shape[-1]
    invalid = torch.isnan(right)
    left = left.masked_fill(invalid, 0)
    right = right.masked_fill(invalid, 0)
    left_dist = torch.arange(bins - 1, -1, -1, device=left.device, dtype=torch.float)[:, None]
    # as TriDet: a (bins × 1) matmul, not a sum
    right_dist = torch.arange(bins, device=right.device, dtype=torch.float)[:, None]
    return torch.cat([torch.matmul(left, left_dist.to(left.dtype)),
                      torch.matmul(right, right_dist.to(right.dtype))], dim=-1)
