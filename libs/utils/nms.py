"""1D non-maximum suppression for temporal segments (spec E.2-E.4).

Two interchangeable backends compute the same kernels on *grouped* candidates (the rows of
group g are ``offsets[g]:offsets[g+1]``; a group is one class in multi-class NMS, everything
in class-agnostic NMS):

* ``cpp``: the compiled extension ``libs.utils._nms_cpp`` (CPU, groups in parallel);
* ``torch``: plain tensor code below, on any device; groups are processed side by side.

They keep the same segments in the same order; soft-NMS scores agree to ~1 ulp (the C++ code
uses single-precision ``std::exp``; the PyTorch code evaluates the exponential in float64 and
rounds to float32). All coordinates are feature-grid steps, all arithmetic float32.
Set ``ACTIONFORMER_DISABLE_CPP_NMS=1`` to force the PyTorch backend.
"""
from __future__ import annotations

import os
import warnings
from typing import Tuple

import numpy as np
import torch

__all__ = ["batched_nms", "cpp_nms_available", "hard_nms_grouped", "seg_voting",
           "soft_nms_grouped", "SOFT_NMS_METHODS"]

SOFT_NMS_METHODS = {"hard": 0, "linear": 1, "gaussian": 2}
_AREA_EPS = 1e-6  # added to every segment length inside NMS (spec E.3)


def _load_extension():
    if os.environ.get("ACTIONFORMER_DISABLE_CPP_NMS", "0") == "1":
        return None
    try:
        from . import _nms_cpp
    except ImportError:
        return None
    return _nms_cpp


_EXT = _load_extension()
_fallback_warned = False


def cpp_nms_available() -> bool:
    """True when the compiled C++ NMS extension is importable (and not disabled)."""
    return _EXT is not None


def _use_cpp(backend: str, device: torch.device) -> bool:
    global _fallback_warned
    if backend not in ("auto", "cpp", "torch"):
        raise ValueError(f"NMS backend must be 'auto', 'cpp' or 'torch', got {backend!r}")
    if backend == "torch":
        return False
    if _EXT is None:
        if backend == "cpp":
            raise RuntimeError("the C++ NMS extension libs.utils._nms_cpp is not available; "
                               "build it with `python setup.py build_ext --inplace`")
        if not _fallback_warned:
            _fallback_warned = True
            why = ("disabled by ACTIONFORMER_DISABLE_CPP_NMS=1"
                   if os.environ.get("ACTIONFORMER_DISABLE_CPP_NMS", "0") == "1" else "not built")
            warnings.warn(f"C++ NMS extension {why}; using the PyTorch NMS (same results, "
                          "slower). See INSTALL.md to build it.", RuntimeWarning, stacklevel=3)
        return False
    return backend == "cpp" or device.type == "cpu"


def _f32(x: float) -> float:
    """Round a Python float to the nearest float32, as the C++ kernels' float arguments do."""
    return float(np.float32(x))


def _check_grouped(segs: torch.Tensor, scores: torch.Tensor, offsets: torch.Tensor) -> None:
    if segs.dim() != 2 or segs.shape[1] != 2 or scores.shape != segs.shape[:1]:
        raise ValueError(f"expected segs N x 2 and scores N, got {tuple(segs.shape)} and "
                         f"{tuple(scores.shape)}")
    if offsets.dim() != 1 or offsets.numel() < 1 or int(offsets[0]) != 0 \
            or int(offsets[-1]) != segs.shape[0]:
        raise ValueError("offsets must be a 1-D tensor running from 0 to N")


def _pad_groups(offsets: torch.Tensor, device: torch.device):
    """Row -> (group, column) map for packing ragged groups into a G x M array."""
    sizes = offsets[1:] - offsets[:-1]
    num_groups = sizes.numel()
    width = int(sizes.max()) if num_groups > 0 else 0
    group = torch.repeat_interleave(torch.arange(num_groups, device=device), sizes)
    col = torch.arange(int(offsets[-1]), device=device) - offsets[group]
    return sizes, width, group, col


# --------------------------------------------------------------------------------------------
# Hard NMS
# --------------------------------------------------------------------------------------------
def hard_nms_grouped(segs: torch.Tensor, scores: torch.Tensor, offsets: torch.Tensor,
                     iou_threshold: float, backend: str = "auto"
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Greedy hard NMS within each group (spec E.3).

    Args:
        segs: N x 2 float32 [start, end] (grid steps), rows grouped by ``offsets``.
        scores: N float32.
        offsets: G+1 int64 group boundaries.
        iou_threshold: a candidate is dropped when IoU >= threshold with a kept one.
    Returns:
        inds (N int64) and counts (G int64): group g kept ``inds[offsets[g]:offsets[g] +
        counts[g]]`` (row indices, descending score; torch's sort decides ties).
    """
    offsets = offsets.to(device="cpu", dtype=torch.long)
    _check_grouped(segs, scores, offsets)
    if _use_cpp(backend, segs.device):
        inds, counts = _EXT.nms_hard_grouped(segs.float().cpu().contiguous(),
                                             scores.float().cpu().contiguous(), offsets,
                                             float(iou_threshold))
        return inds.to(segs.device), counts.to(segs.device)
    return _hard_nms_torch(segs.float(), scores.float(), offsets, _f32(iou_threshold))


def _hard_nms_torch(segs, scores, offsets, iou_threshold):
    device = segs.device
    offsets_dev = offsets.to(device)
    sizes, width, group, col = _pad_groups(offsets_dev, device)
    # per-group descending sort, the same call on the same slice as the C++ kernel
    order = torch.empty(segs.shape[0], dtype=torch.long, device=device)
    bounds = offsets.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            order[start:end] = scores[start:end].sort(descending=True)[1] + start
    areas = segs[:, 1] - segs[:, 0] + _AREA_EPS
    padded = torch.zeros(3, sizes.numel(), width, dtype=segs.dtype, device=device)
    padded[:, group, col] = torch.stack([segs[order, 0], segs[order, 1], areas[order]])
    x1, x2, area = padded
    keep = col.new_zeros(sizes.numel(), width, dtype=torch.bool)
    keep[group, col] = True
    for i in range(width - 1):
        inter = (torch.minimum(x2[:, i:i + 1], x2[:, i + 1:])
                 - torch.maximum(x1[:, i:i + 1], x1[:, i + 1:])).clamp(min=0)
        ovr = inter / (area[:, i:i + 1] + area[:, i + 1:] - inter)
        keep[:, i + 1:] &= ~((ovr >= iou_threshold) & keep[:, i:i + 1])
    counts = keep.sum(1)
    # kept rows first within each group, in sorted order
    rank = torch.cumsum(keep.long(), 1) - 1
    inds = torch.full_like(order, -1)
    kept = keep[group, col]
    inds[offsets_dev[group[kept]] + rank[group, col][kept]] = order[kept]
    return inds, counts


# --------------------------------------------------------------------------------------------
# Soft-NMS
# --------------------------------------------------------------------------------------------
def soft_nms_grouped(segs: torch.Tensor, scores: torch.Tensor, offsets: torch.Tensor,
                     iou_threshold: float, sigma: float, min_score: float,
                     method: str = "gaussian", backend: str = "auto"
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft-NMS within each group, exactly as the reference kernel (spec E.3).

    Each round moves the best remaining candidate (lowest position on ties) to the output and
    decays the others by ``exp(-IoU^2 / sigma)`` (gaussian; ``iou_threshold`` unused), by
    ``1 - IoU`` when IoU >= threshold (linear), or drops them (hard). A decayed score below
    ``min_score`` removes the candidate by moving the last live one into its slot.

    Returns:
        dets (N x 3 float32: start, end, decayed score), inds (N int64 row indices) and
        counts (G int64); group g's output is rows ``offsets[g]:offsets[g] + counts[g]``.
    """
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"soft-NMS method must be one of {sorted(SOFT_NMS_METHODS)}, "
                         f"got {method!r}")
    offsets = offsets.to(device="cpu", dtype=torch.long)
    _check_grouped(segs, scores, offsets)
    code = SOFT_NMS_METHODS[method]
    if _use_cpp(backend, segs.device):
        dets, inds, counts = _EXT.nms_soft_grouped(
            segs.float().cpu().contiguous(), scores.float().cpu().contiguous(), offsets,
            float(iou_threshold), float(sigma), float(min_score), code)
        return dets.to(segs.device), inds.to(segs.device), counts.to(segs.device)
    return _soft_nms_torch(segs.float(), scores.float(), offsets, _f32(iou_threshold),
                           _f32(sigma), _f32(min_score), code)


def _decay_weight(ovr, iou_threshold, sigma, method):
    """Per-candidate score multiplier, float32 like the C++ kernel."""
    if method == SOFT_NMS_METHODS["gaussian"]:
        # exponent in float32 as in C++; exp in float64 then rounded (~ correctly rounded expf)
        return torch.exp((-(ovr * ovr) / sigma).double()).to(ovr.dtype)
    hit = ovr >= iou_threshold
    if method == SOFT_NMS_METHODS["linear"]:
        return torch.where(hit, 1 - ovr, torch.ones_like(ovr))
    return (~hit).to(ovr.dtype)


def _soft_nms_torch(segs, scores, offsets, iou_threshold, sigma, min_score, method):
    """All groups advance one round at a time; G x M padded arrays (M = largest group).

    Removal order reproduces the C++ "copy the last live entry into the hole" scan: kept
    entries among the first K slots after the top stay put, and the holes there are filled,
    left to right, by the kept entries beyond slot K taken from the right end.
    """
    device = segs.device
    num_segs = segs.shape[0]
    offsets_dev = offsets.to(device)
    sizes, width, group, col = _pad_groups(offsets_dev, device)
    num_groups = sizes.numel()
    areas = segs[:, 1] - segs[:, 0] + _AREA_EPS
    vals = torch.zeros(num_groups, 4, width, dtype=segs.dtype, device=device)  # x1 x2 score area
    vals[group, :, col] = torch.stack([segs[:, 0], segs[:, 1], scores, areas], 1)
    rows = torch.zeros(num_groups, width, dtype=torch.long, device=device)
    rows[group, col] = torch.arange(num_segs, device=device)
    dets = torch.zeros(num_groups, width, 3, dtype=segs.dtype, device=device)
    live_count = sizes.clone()
    neg_inf = torch.tensor(float("-inf"), dtype=segs.dtype, device=device)

    for i in range(width):
        end = int(live_count.max())
        if i >= end:
            break
        win, win_rows = vals[:, :, i:end], rows[:, i:end]   # views, updated in place
        span = end - i
        rel = torch.arange(span, device=device)
        live = rel[None, :] < (live_count - i)[:, None]
        # 1) best remaining candidate -> slot 0 of the window (swap)
        best = torch.where(live, win[:, 2], neg_inf).argmax(1)
        best_vals = win.gather(2, best.view(-1, 1, 1).expand(-1, 4, 1))
        best_rows = win_rows.gather(1, best[:, None])
        win.scatter_(2, best.view(-1, 1, 1).expand(-1, 4, 1), win[:, :, :1].clone())
        win_rows.scatter_(1, best[:, None], win_rows[:, :1].clone())
        win[:, :, :1] = best_vals
        win_rows[:, :1] = best_rows
        dets[:, i] = win[:, :3, 0]
        if span == 1:
            continue
        # 2) decay every other live candidate
        rest, rest_rows, rest_live = win[:, :, 1:], win_rows[:, 1:], live[:, 1:]
        inter = (torch.minimum(best_vals[:, 1], rest[:, 1])
                 - torch.maximum(best_vals[:, 0], rest[:, 0])).clamp(min=0)
        ovr = inter / (best_vals[:, 3] + rest[:, 3] - inter)
        decayed = rest[:, 2] * _decay_weight(ovr, iou_threshold, sigma, method)
        rest[:, 2] = torch.where(rest_live, decayed, rest[:, 2])
        keep = rest_live & ~(decayed < min_score)
        # 3) compaction: holes in the head are filled by tail survivors, rightmost first
        num_keep = keep.sum(1)
        pos = torch.arange(span - 1, device=device)
        in_head = pos[None, :] < num_keep[:, None]
        hole = in_head & ~keep
        tail = keep & ~in_head
        dummy = span - 1   # an extra scratch column absorbs all non-moves
        hole_rank = torch.cumsum(hole.long(), 1) - 1
        tail_rank = torch.flip(torch.cumsum(torch.flip(tail.long(), [1]), 1), [1]) - 1
        hole_pos = torch.full((num_groups, span), dummy, dtype=torch.long, device=device)
        hole_pos.scatter_(1, torch.where(hole, hole_rank, dummy), pos.expand_as(hole).clone())
        target = torch.where(tail, hole_pos.gather(1, tail_rank.clamp(min=0)), dummy)
        moved = torch.cat([rest, rest[:, :, :1]], 2)
        moved.scatter_(2, target[:, None, :].expand(-1, 4, -1), rest)
        moved_rows = torch.cat([rest_rows, rest_rows[:, :1]], 1)
        moved_rows.scatter_(1, target, rest_rows)
        rest.copy_(moved[:, :, :-1])
        rest_rows.copy_(moved_rows[:, :-1])
        live_count = torch.where(live[:, 0], i + 1 + num_keep, live_count)

    counts = torch.minimum(live_count, sizes)
    flat = offsets_dev[group] + col
    out_dets = torch.zeros(num_segs, 3, dtype=segs.dtype, device=device)
    out_rows = torch.full((num_segs,), -1, dtype=torch.long, device=device)
    out_dets[flat] = dets[group, col]
    out_rows[flat] = rows[group, col]
    return out_dets, out_rows, counts


# --------------------------------------------------------------------------------------------
# Voting and the batched wrapper
# --------------------------------------------------------------------------------------------
def seg_voting(nms_segs: torch.Tensor, all_segs: torch.Tensor, all_scores: torch.Tensor,
               iou_threshold: float, iou_weighted: bool = True) -> torch.Tensor:
    """Refine each kept segment as the score-and-IoU weighted mean of all candidates whose
    IoU with it is >= ``iou_threshold`` (spec E.4; plain IoU without the 1e-6).
    ``iou_weighted=False``: weights are the scores alone (TriDet's voting).

    Shapes: nms_segs K x 2, all_segs N x 2, all_scores N -> K x 2 (grid steps).
    """
    left = torch.maximum(nms_segs[:, None, 0], all_segs[None, :, 0])
    right = torch.minimum(nms_segs[:, None, 1], all_segs[None, :, 1])
    inter = (right - left).clamp(min=0)
    nms_lens = (nms_segs[:, 1] - nms_segs[:, 0])[:, None]
    all_lens = (all_segs[:, 1] - all_segs[:, 0])[None, :]
    iou = inter / (nms_lens + all_lens - inter)
    weights = (iou >= iou_threshold).to(all_scores.dtype) * all_scores[None, :]
    if iou_weighted:
        weights = weights * iou
    weights /= torch.sum(weights, dim=1, keepdim=True)
    return weights @ all_segs


def _group_offsets(sorted_keys: torch.Tensor) -> torch.Tensor:
    counts = torch.unique_consecutive(sorted_keys, return_counts=True)[1]
    return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]).cpu()


def _first_rows(offsets: torch.Tensor, counts: torch.Tensor, limit: int) -> torch.Tensor:
    """Flat row positions of the first min(count, limit) outputs of every group."""
    device = counts.device
    offsets = offsets.to(device)
    sizes = offsets[1:] - offsets[:-1]
    group = torch.repeat_interleave(torch.arange(sizes.numel(), device=device), sizes)
    col = torch.arange(int(offsets[-1]), device=device) - offsets[group]
    return torch.nonzero(col < counts.clamp(max=limit)[group]).squeeze(1)


def batched_nms(segs: torch.Tensor, scores: torch.Tensor, cls_idxs: torch.Tensor,
                iou_threshold: float, min_score: float, max_seg_num: int,
                use_soft_nms: bool = True, multiclass: bool = True, sigma: float = 0.5,
                voting_thresh: float = 0.75, soft_method: str = "gaussian",
                backend: str = "auto", voting_iou_weighted: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NMS over one video's candidates, as the reference wrapper (spec E.2).

    Args:
        segs: N x 2 [start, end] in feature-grid steps; scores: N; cls_idxs: N class ids.
        iou_threshold: hard NMS (and linear soft-NMS) threshold; unused by gaussian soft-NMS.
        min_score: hard NMS keeps ``score > min_score`` first; soft-NMS drops candidates
            whose decayed score falls below it.
        max_seg_num: cap per class (multi-class) and on the final list.
        multiclass: NMS per class (ascending id), else over all candidates followed by
            segment voting when ``voting_thresh > 0``.
        backend: 'auto' (C++ for CPU tensors when built, else PyTorch), 'cpp' or 'torch'.
        voting_iou_weighted: voting weights are score × IoU (the reference), or the score
            alone (False, TriDet).
    Returns:
        segs K x 2, scores K (decayed for soft-NMS), cls_idxs K; sorted by score descending.
    """
    if segs.shape[0] == 0:
        return (torch.zeros([0, 2]), torch.zeros([0]),
                torch.zeros([0], dtype=cls_idxs.dtype))
    segs, scores = segs.float(), scores.float()
    all_segs, all_scores = segs, scores
    if not use_soft_nms and min_score > 0:
        valid = scores > min_score
        segs, scores, cls_idxs = segs[valid], scores[valid], cls_idxs[valid]
    if multiclass:
        cls_sorted, order = torch.sort(cls_idxs, stable=True)
        segs, scores, cls_idxs = segs[order], scores[order], cls_sorted
        offsets = _group_offsets(cls_idxs)
    else:
        offsets = torch.tensor([0, segs.shape[0]])
    cap = max_seg_num if max_seg_num > 0 else segs.shape[0]
    if use_soft_nms:
        dets, inds, counts = soft_nms_grouped(segs, scores, offsets, iou_threshold, sigma,
                                              min_score, soft_method, backend)
        take = _first_rows(offsets, counts, cap).to(segs.device)
        new_segs, new_scores = dets[take, :2], dets[take, 2]
        new_cls = cls_idxs[inds[take]]
    else:
        inds, counts = hard_nms_grouped(segs, scores, offsets, iou_threshold, backend)
        keep = inds[_first_rows(offsets, counts, cap).to(segs.device)]
        new_segs, new_scores, new_cls = segs[keep], scores[keep], cls_idxs[keep]
    if not multiclass and voting_thresh > 0:
        new_segs = seg_voting(new_segs, all_segs, all_scores, voting_thresh, voting_iou_weighted)
    _, idxs = new_scores.sort(descending=True)
    idxs = idxs[:min(max_seg_num, new_segs.shape[0])]
    return new_segs[idxs], new_scores[idxs], new_cls[idxs]
