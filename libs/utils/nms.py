"""1D non-maximum suppression for temporal segments.

Two interchangeable backends compute the same kernels on *grouped* candidates (the rows of
group g are ``offsets[g]:offsets[g+1]``; a group is one class in multi-class NMS, everything
in class-agnostic NMS):

* ``cpp``: the compiled extension ``libs.utils._nms_cpp`` (CPU, groups in parallel), built by
  setup.py or else compiled on first use into torch's extension cache (``cpp_build.py``);
* ``torch``: plain tensor code on any device (``nms_torch.py``); in ``batched_nms`` its
  soft-NMS stops once nothing left can enter the final ``max_seg_num``.

They keep the same segments in the same order; soft-NMS scores agree to ~1 ulp (the C++ code
uses single-precision ``std::exp``; the PyTorch code evaluates the exponential in float64 and
rounds to float32). All coordinates are feature-grid steps, all arithmetic float32.
Set ``ACTIONFORMER_DISABLE_CPP_NMS=1`` to force the PyTorch backend.
"""
from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import warnings
from typing import Iterator, Optional, Tuple

import torch

from . import nms_torch
from .cpp_build import load_or_build
from .nms_torch import SOFT_NMS_METHODS, SoftParams, f32, pad_groups

__all__ = ["auto_backend", "batched_nms", "cpp_nms_available", "hard_nms_grouped",
           "seg_voting", "soft_nms_grouped", "SOFT_NMS_METHODS"]

_UNLOADED = object()
_EXT = _UNLOADED              # the extension module, None when unavailable; loaded on first use
_ext_problem = "not built"    # why it is unavailable, for the one-time warning


def _load_extension():
    """The extension built by setup.py, else the one compiled on first use (cpp_build.py)."""
    global _ext_problem
    if os.environ.get("ACTIONFORMER_DISABLE_CPP_NMS", "0") == "1":
        _ext_problem = "disabled by ACTIONFORMER_DISABLE_CPP_NMS=1"
        return None
    try:
        from . import _nms_cpp
        return _nms_cpp
    except ImportError:
        pass
    try:
        ext = load_or_build()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        _ext_problem = f"not built ({exc})"
        return None
    if ext is None:
        _ext_problem = "not built and no C++ compiler found"
    return ext


def _extension():
    global _EXT
    if _EXT is _UNLOADED:
        _EXT = _load_extension()
    return _EXT


_fallback_warned = False


def cpp_nms_available() -> bool:
    """True when the C++ NMS extension is usable (and not disabled); compiles it on first use
    when only the source and a compiler are present."""
    return _extension() is not None


_auto_choice = None   # set by auto_backend()


@contextlib.contextmanager
def auto_backend(backend: str) -> Iterator[None]:
    """Within the block, ``backend='auto'`` means ``backend`` ('cpp' or 'torch'): e.g. to time
    inference as it runs with and without the extension."""
    global _auto_choice
    if backend not in ("cpp", "torch"):
        raise ValueError(f"auto_backend takes 'cpp' or 'torch', got {backend!r}")
    previous, _auto_choice = _auto_choice, backend
    try:
        yield
    finally:
        _auto_choice = previous


def _use_cpp(backend: str, device: torch.device) -> bool:
    global _fallback_warned
    if backend not in ("auto", "cpp", "torch"):
        raise ValueError(f"NMS backend must be 'auto', 'cpp' or 'torch', got {backend!r}")
    if backend == "auto" and _auto_choice is not None:
        backend = _auto_choice
    if backend == "torch" or (backend == "auto" and device.type != "cpu"):
        return False
    if _extension() is None:
        if backend == "cpp":
            raise RuntimeError(f"the C++ NMS extension is not available ({_ext_problem}); "
                               "see INSTALL.md")
        if not _fallback_warned:
            _fallback_warned = True
            warnings.warn(f"C++ NMS extension {_ext_problem}; using the PyTorch NMS (same "
                          "results, slower). See INSTALL.md to build it.", RuntimeWarning,
                          stacklevel=3)
        return False
    return True


def _check_grouped(segs: torch.Tensor, scores: torch.Tensor, offsets: torch.Tensor) -> None:
    if segs.dim() != 2 or segs.shape[1] != 2 or scores.shape != segs.shape[:1]:
        raise ValueError(f"expected segs N x 2 and scores N, got {tuple(segs.shape)} and "
                         f"{tuple(scores.shape)}")
    if offsets.dim() != 1 or offsets.numel() < 1 or int(offsets[0]) != 0 \
            or int(offsets[-1]) != segs.shape[0]:
        raise ValueError("offsets must be a 1-D tensor running from 0 to N")


# --------------------------------------------------------------------------------------------
# Hard NMS
# --------------------------------------------------------------------------------------------
def hard_nms_grouped(segs: torch.Tensor, scores: torch.Tensor, offsets: torch.Tensor,
                     iou_threshold: float, backend: str = "auto"
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Greedy hard NMS within each group.

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
        inds, counts = _extension().nms_hard_grouped(
            segs.float().cpu().contiguous(), scores.float().cpu().contiguous(), offsets,
            float(iou_threshold))
        return inds.to(segs.device), counts.to(segs.device)
    return nms_torch.hard_nms(segs.float(), scores.float(), offsets, f32(iou_threshold))


# --------------------------------------------------------------------------------------------
# Soft-NMS
# --------------------------------------------------------------------------------------------
def soft_nms_grouped(segs: torch.Tensor, scores: torch.Tensor, offsets: torch.Tensor,
                     iou_threshold: float, sigma: float, min_score: float,
                     method: str = "gaussian", backend: str = "auto",
                     max_outputs: Optional[int] = None, top_total: Optional[int] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft-NMS within each group, exactly as the reference kernel.

    Each round moves the best remaining candidate (lowest position on ties) to the output and
    decays the others by ``exp(-IoU^2 / sigma)`` (gaussian; ``iou_threshold`` unused), by
    ``1 - IoU`` when IoU >= threshold (linear), or drops them (hard). A decayed score below
    ``min_score`` removes the candidate by moving the last live one into its slot.
    ``max_outputs`` stops every group after that many selections (the selections made are
    unchanged; the C++ kernel computes them all and the counts are capped). With
    ``top_total`` the PyTorch backend may also stop all groups once none can add a
    selection scoring as high as the ``top_total``-th best of all groups so far: every
    selection left out then scores strictly below those.

    Returns:
        dets (N x 3 float32: start, end, decayed score), inds (N int64 row indices) and
        counts (G int64); group g's output is rows ``offsets[g]:offsets[g] + counts[g]``.
    """
    params = _soft_params(iou_threshold, sigma, min_score, method)
    offsets = offsets.to(device="cpu", dtype=torch.long)
    _check_grouped(segs, scores, offsets)
    limit = segs.shape[0] if max_outputs is None else max(int(max_outputs), 0)
    if _use_cpp(backend, segs.device):
        dets, inds, counts = _extension().nms_soft_grouped(
            segs.float().cpu().contiguous(), scores.float().cpu().contiguous(), offsets,
            float(iou_threshold), float(sigma), float(min_score), params.method)
        counts = counts.clamp(max=limit)
        return dets.to(segs.device), inds.to(segs.device), counts.to(segs.device)
    rows, sel_scores, counts = nms_torch.soft_nms(segs.float(), scores.float(), offsets, params,
                                                  limit, top_total)
    # the kernel's layout: group g's selections at offsets[g], offsets[g] + 1, ...
    at = _first_rows(offsets, counts, segs.shape[0])
    dets = segs.new_zeros(segs.shape[0], 3, dtype=torch.float32)
    inds = torch.full((segs.shape[0],), -1, dtype=torch.long, device=segs.device)
    dets[at, :2], dets[at, 2], inds[at] = segs[rows].float(), sel_scores, rows
    return dets, inds, counts


def _soft_params(iou_threshold: float, sigma: float, min_score: float, method: str
                 ) -> SoftParams:
    """The PyTorch kernel's arguments (rounded to float32, as the C++ kernel's are)."""
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"soft-NMS method must be one of {sorted(SOFT_NMS_METHODS)}, "
                         f"got {method!r}")
    return SoftParams(f32(iou_threshold), f32(sigma), f32(min_score), SOFT_NMS_METHODS[method])


# --------------------------------------------------------------------------------------------
# Voting and the batched wrapper
# --------------------------------------------------------------------------------------------
def seg_voting(nms_segs: torch.Tensor, all_segs: torch.Tensor, all_scores: torch.Tensor,
               iou_threshold: float, iou_weighted: bool = True) -> torch.Tensor:
    """Refine each kept segment as the score-and-IoU weighted mean of all candidates whose
    IoU with it is >= ``iou_threshold`` (plain IoU without the 1e-6).
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
    _, _, group, col = pad_groups(offsets.to(counts.device), counts.device)
    return torch.nonzero(col < counts.clamp(max=limit)[group]).squeeze(1)


def _soft_nms_selections(segs, scores, cls_idxs, offsets, iou_threshold, sigma, min_score,
                         soft_method, backend, cap, top_total):
    """Soft-NMS per group, the first ``cap`` selections of each: segs, scores, classes
    (the PyTorch kernel's selections as they come, the C++ kernel's out of its layout)."""
    params = _soft_params(iou_threshold, sigma, min_score, soft_method)
    if not _use_cpp(backend, segs.device):
        rows, sel_scores, _ = nms_torch.soft_nms(segs, scores, offsets, params, cap, top_total)
        return segs[rows], sel_scores, cls_idxs[rows]
    dets, inds, counts = soft_nms_grouped(segs, scores, offsets, iou_threshold, sigma,
                                          min_score, soft_method, "cpp", cap)
    take = _first_rows(offsets, counts, cap).to(segs.device)
    return dets[take, :2], dets[take, 2], cls_idxs[inds[take]]


def _ties_among_best(scores: torch.Tensor, num_best: int) -> bool:
    """Whether the ``num_best`` + 1 highest scores contain equal values."""
    best = scores.topk(min(num_best + 1, scores.numel())).values
    return bool((best[1:] == best[:-1]).any())


def batched_nms(segs: torch.Tensor, scores: torch.Tensor, cls_idxs: torch.Tensor,
                iou_threshold: float, min_score: float, max_seg_num: int,
                use_soft_nms: bool = True, multiclass: bool = True, sigma: float = 0.5,
                voting_thresh: float = 0.75, soft_method: str = "gaussian",
                backend: str = "auto", voting_iou_weighted: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NMS over one video's candidates, as the reference wrapper.

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
        soft = functools.partial(_soft_nms_selections, segs, scores, cls_idxs, offsets,
                                 iou_threshold, sigma, min_score, soft_method, backend, cap)
        # with equal scores among the best inputs (bf16 logits) the final sort's ties need
        # every selection: compute them all at once rather than after a first attempt
        top_total = max_seg_num if 0 < max_seg_num < scores.numel() \
            and not _ties_among_best(scores, max_seg_num) else None
        new_segs, new_scores, new_cls = soft(top_total)
        if top_total is not None and _ties_among_best(new_scores, top_total):
            # the final sort orders ties by its input: recompute the whole input
            new_segs, new_scores, new_cls = soft(None)
    else:
        inds, counts = hard_nms_grouped(segs, scores, offsets, iou_threshold, backend)
        keep = inds[_first_rows(offsets, counts, cap).to(segs.device)]
        new_segs, new_scores, new_cls = segs[keep], scores[keep], cls_idxs[keep]
    if not multiclass and voting_thresh > 0:
        new_segs = seg_voting(new_segs, all_segs, all_scores, voting_thresh, voting_iou_weighted)
    _, idxs = new_scores.sort(descending=True)
    idxs = idxs[:min(max_seg_num, new_segs.shape[0])]
    return new_segs[idxs], new_scores[idxs], new_cls[idxs]
