"""1D non-maximum suppression for temporal segments.

Two interchangeable backends compute the same kernels on *grouped* candidates (the rows of
group g are ``offsets[g]:offsets[g+1]``; a group is one class in multi-class NMS, everything
in class-agnostic NMS):

* ``cpp``: the compiled extension ``libs.utils._nms_cpp`` (CPU, groups in parallel), built by
  setup.py or else compiled on first use into torch's extension cache (``cpp_build.py``);
* ``torch``: plain tensor code below, on any device. Soft-NMS advances all groups one
  selection per iteration without moving candidates (the kernel's memory order only breaks
  ties; groups with a tied maximum are redone by a loop that replays the kernel's moves),
  drops candidates that can no longer be selected as it goes, and in ``batched_nms`` stops
  once nothing left can enter the final ``max_seg_num``.

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
from typing import Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
import torch

from .cpp_build import load_or_build

__all__ = ["auto_backend", "batched_nms", "cpp_nms_available", "hard_nms_grouped",
           "seg_voting", "soft_nms_grouped", "SOFT_NMS_METHODS"]

SOFT_NMS_METHODS = {"hard": 0, "linear": 1, "gaussian": 2}
_AREA_EPS = 1e-6  # added to every segment length inside NMS


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
    rows = torch.arange(int(offsets[-1]), device=device)
    group = torch.searchsorted(offsets[1:], rows, right=True)
    return sizes, width, group, rows - offsets[group]


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
    keep = col.new_zeros(sizes.numel(), width, dtype=torch.bool)
    keep[group, col] = True
    for i in range(width - 1):
        ovr = _iou(padded[:, :, i:i + 1], padded[:, :, i + 1:])
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
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"soft-NMS method must be one of {sorted(SOFT_NMS_METHODS)}, "
                         f"got {method!r}")
    offsets = offsets.to(device="cpu", dtype=torch.long)
    _check_grouped(segs, scores, offsets)
    limit = segs.shape[0] if max_outputs is None else max(int(max_outputs), 0)
    code = SOFT_NMS_METHODS[method]
    if _use_cpp(backend, segs.device):
        dets, inds, counts = _extension().nms_soft_grouped(
            segs.float().cpu().contiguous(), scores.float().cpu().contiguous(), offsets,
            float(iou_threshold), float(sigma), float(min_score), code)
        counts = counts.clamp(max=limit)
        return dets.to(segs.device), inds.to(segs.device), counts.to(segs.device)
    params = _SoftParams(_f32(iou_threshold), _f32(sigma), _f32(min_score), code)
    return _soft_nms_torch(segs.float(), scores.float(), offsets, params, limit, top_total)


class _SoftParams(NamedTuple):
    iou_threshold: float   # all three rounded to float32, as the kernel's arguments
    sigma: float
    min_score: float
    method: int            # SOFT_NMS_METHODS value


class _Packed(NamedTuple):
    """Ragged groups packed left-aligned into G x M arrays (M = largest group)."""
    coords: torch.Tensor   # G x 3 x M float32: start, end, area (= end - start + 1e-6)
    scores: torch.Tensor   # G x M float32
    dead: torch.Tensor     # G x M bool: True on padding


def _pack(segs: torch.Tensor, scores: torch.Tensor, group: torch.Tensor, col: torch.Tensor,
          num_groups: int, width: int) -> _Packed:
    areas = segs[:, 1] - segs[:, 0] + _AREA_EPS
    coords = segs.new_zeros(num_groups, 3, width)
    coords[group, :, col] = torch.stack([segs[:, 0], segs[:, 1], areas], 1)
    padded_scores = scores.new_zeros(num_groups, width)
    padded_scores[group, col] = scores
    dead = torch.ones(num_groups, width, dtype=torch.bool, device=segs.device)
    dead[group, col] = False
    return _Packed(coords, padded_scores, dead)


def _iou(a: Tuple[torch.Tensor, ...], b: Tuple[torch.Tensor, ...]) -> torch.Tensor:
    """IoU of segments given as (start, end, area) triples of broadcastable tensors, in the
    kernel's float32 arithmetic: ``inter / (area_a + area_b - inter)``."""
    inter = (torch.minimum(a[1], b[1]) - torch.maximum(a[0], b[0])).clamp(min=0)
    return inter / (a[2] + b[2] - inter)


def _decay_weight(ovr: torch.Tensor, params: _SoftParams) -> torch.Tensor:
    """Per-candidate score multiplier, float32 like the C++ kernel."""
    if params.method == SOFT_NMS_METHODS["gaussian"]:
        # exponent in float32 as in C++; exp in float64 then rounded (~ correctly rounded expf)
        return torch.div(ovr * ovr, -params.sigma).double().exp_().to(ovr.dtype)
    hit = ovr >= params.iou_threshold
    if params.method == SOFT_NMS_METHODS["linear"]:
        return torch.where(hit, 1 - ovr, torch.ones_like(ovr))
    return (~hit).to(ovr.dtype)


def _decay_rows(coords: torch.Tensor, best: torch.Tensor, params: _SoftParams) -> torch.Tensor:
    """Multipliers (G x M) for every packed candidate (``coords`` G x 3 x M) given each
    group's selected column ``best`` (G x 1)."""
    chosen = coords.gather(2, best[:, None, :].expand(-1, 3, 1))
    return _decay_weight(_iou(chosen.unbind(1), coords.unbind(1)), params)


def _soft_nms_torch(segs, scores, offsets, params: _SoftParams, limit: int,
                    top_total: Optional[int]):
    """Soft-NMS of all groups side by side (G x M packed arrays). Groups run the
    position-free loop; those where a maximum was ever tied (the kernel's choice then
    depends on the slot order) are redone by the positional loop."""
    device = segs.device
    offsets_dev = offsets.to(device)
    sizes, width, group, col = _pad_groups(offsets_dev, device)
    packed = _pack(segs, scores, group, col, sizes.numel(), width)
    rounds = min(limit, width)
    if bool(torch.isfinite(scores).all()):
        sel_cols, sel_scores, counts, tied = _soft_nms_unordered(packed, params, rounds,
                                                                 top_total)
    else:   # -inf / nan scores: only the positional loop treats them as the kernel does
        sel_cols, sel_scores, counts = (None,) * 3
        tied = torch.ones(sizes.numel(), dtype=torch.bool, device=device)
    redo = tied.nonzero().squeeze(1)
    if redo.numel() > 0:
        sub = _Packed(*(x[redo] for x in packed))
        redo_results = _soft_nms_positional(sub, params, rounds)
        if sel_cols is None:
            sel_cols, sel_scores, counts = redo_results
        else:
            for full, part in zip((sel_cols, sel_scores, counts), redo_results):
                full[redo] = part
    return _scatter_outputs(segs, offsets_dev, group, col, sel_cols, sel_scores, counts)


def _scatter_outputs(segs, offsets_dev, group, col, sel_cols, sel_scores, counts):
    """G x R selections (packed columns, scores) -> the flat (dets, inds) of the kernel."""
    out_dets = segs.new_zeros(segs.shape[0], 3)
    out_inds = torch.full((segs.shape[0],), -1, dtype=torch.long, device=segs.device)
    take = col < counts[group]
    flat, g, k = take.nonzero().squeeze(1), group[take], col[take]
    rows = offsets_dev[g] + sel_cols[g, k]
    out_inds[flat] = rows
    out_dets[flat, :2] = segs[rows]
    out_dets[flat, 2] = sel_scores[g, k]
    return out_dets, out_inds, counts


def _soft_nms_unordered(packed: _Packed, params: _SoftParams, rounds: int,
                        top_total: Optional[int] = None):
    """Every group advances one selection per iteration; nothing moves in memory.

    The kernel's slot order only decides between tied maxima, so without ties this equals it
    (same multiplications in the same order). A candidate decayed below ``min_score`` stays
    below every live one, so it needs no removal; every fourth round the entries that can
    no longer be selected (taken, below ``min_score``, or below the ``top_total``-th best
    selection so far) are dropped, with the groups left without any, and the rest
    re-packed; the loop ends when none is left. Selections scoring below the final
    ``top_total``-th best are cut off.
    Returns the selected columns and their scores (G x rounds), counts (G) and ``tied``
    (G bool: a maximum was shared at a returned selection).
    """
    num_groups, width = packed.scores.shape
    device = packed.scores.device
    state = _LoopState(packed.coords, packed.scores.clone(),
                       packed.scores.new_zeros(num_groups, width).masked_fill_(
                           packed.dead, float("-inf")),
                       torch.arange(width, device=device).expand(num_groups, -1),
                       torch.arange(num_groups, device=device))
    record = {"round": [], "group": [], "col": [], "score": [], "equal": []}
    for r in range(rounds):
        if r % 4 == 1:     # a host sync every fourth round
            state = state.drop_below(_selection_floor(record["score"], params.min_score,
                                                      top_total))
            if state.scores.shape[1] == 0:
                break
        key = state.scores + state.taken
        top, best = key.max(1, keepdim=True)
        for name, value in (("round", torch.full_like(best, r)), ("group", state.groups),
                            ("col", state.cols.gather(1, best)), ("score", top),
                            ("equal", (key == top).sum(1, keepdim=True))):
            record[name].append(value.view(-1))
        state.taken.scatter_(1, best, float("-inf"))
        state.scores.mul_(_decay_rows(state.coords, best, params))
    return _collect_selections(record, num_groups, rounds, params.min_score, top_total)


def _collect_selections(record, num_groups, rounds, min_score, top_total):
    """Per-round records of the active groups -> G x rounds arrays, counts and ties."""
    device = record["group"][0].device if record["group"] else None
    flat = {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.long, device=device)
            for k, v in record.items()}
    index = (flat["group"], flat["round"])
    sel_cols = torch.zeros(num_groups, rounds, dtype=torch.long, device=device)
    sel_cols[index] = flat["col"]
    sel_scores = torch.full((num_groups, rounds), float("-inf"), device=device)
    sel_scores[index] = flat["score"].float()
    equal = torch.zeros_like(sel_cols)
    equal[index] = flat["equal"]
    keep = _valid_selections(sel_scores, min_score)
    keep &= sel_scores >= _kth_best(sel_scores[keep], top_total)
    return sel_cols, sel_scores, keep.sum(1), ((equal > 1) & keep).any(1)


class _LoopState(NamedTuple):
    """Working arrays of the position-free loop over the G' groups still active, G' x W
    (W shrinks as entries drop out)."""
    coords: torch.Tensor   # G' x 3 x W
    scores: torch.Tensor   # G' x W, decayed so far
    taken: torch.Tensor    # G' x W, -inf where selected or padding, else 0
    cols: torch.Tensor     # G' x W, packed column of each entry
    groups: torch.Tensor   # G', group of each row

    def drop_below(self, floor: float) -> "_LoopState":
        """Keep, left-aligned, the entries not taken and scoring at least ``floor``, in the
        groups that have any."""
        eligible = (self.scores + self.taken) >= floor
        sizes = eligible.sum(1)
        width = int(sizes.max()) if sizes.numel() else 0
        active = (sizes > 0).nonzero().squeeze(1)
        if width > 0.75 * self.scores.shape[1] and active.numel() > 0.75 * sizes.numel():
            return self                              # not worth re-packing
        eligible, sizes = eligible[active], sizes[active]
        g, c = eligible.nonzero(as_tuple=True)
        new_c = torch.arange(g.numel(), device=g.device) - (torch.cumsum(sizes, 0)
                                                            - sizes)[g]
        old_g = active[g]
        coords = self.coords.new_zeros(active.numel(), 3, width)
        coords[g, :, new_c] = self.coords[old_g, :, c]
        scores = self.scores.new_zeros(active.numel(), width)
        scores[g, new_c] = self.scores[old_g, c]
        taken = torch.full_like(scores, float("-inf"))
        taken[g, new_c] = 0
        cols = self.cols.new_zeros(scores.shape)
        cols[g, new_c] = self.cols[old_g, c]
        return _LoopState(coords, scores, taken, cols, self.groups[active])


def _valid_selections(sel_scores: torch.Tensor, min_score: float) -> torch.Tensor:
    """Which recorded maxima (G x R) were real selections: any finite one in round 0, later
    ones while at least ``min_score`` (live candidates never fall below it)."""
    valid = sel_scores >= min_score
    valid[:, :1] = sel_scores[:, :1] > float("-inf")
    return valid


def _selection_floor(sel_scores: List[torch.Tensor], min_score: float,
                     top_total: Optional[int]) -> float:
    """The score a later selection needs to matter: ``min_score``, or the ``top_total``-th
    best valid selection so far when higher (``sel_scores``: the maxima of rounds 0, 1, ...
    of the groups active in each)."""
    if not top_total or len(sel_scores) < 2:
        return min_score
    later = torch.cat(sel_scores[1:])
    made = torch.cat([sel_scores[0][sel_scores[0] > float("-inf")], later[later >= min_score]])
    return max(min_score, _kth_best(made, top_total))


def _kth_best(values: torch.Tensor, k: Optional[int]) -> float:
    """The k-th largest of ``values`` (-inf when k is None or there are fewer)."""
    if not k or values.numel() < k:
        return float("-inf")
    return float(values.topk(k).values[-1])


def _soft_nms_positional(packed: _Packed, params: _SoftParams, rounds: int):
    """The kernel's loop with its memory moves: round i swaps the best live candidate
    (lowest slot on ties) into slot i and removes decayed-out ones by compaction.
    Returns selected columns and scores (G x rounds) and counts (G)."""
    vals = torch.cat([packed.coords, packed.scores[:, None]], 1)   # G x 4 x M: x1 x2 area s
    num_groups, _, width = vals.shape
    device = vals.device
    cols = torch.arange(width, device=device).repeat(num_groups, 1)   # column held per slot
    sizes = (~packed.dead).sum(1)
    live_count = sizes.clone()
    sel_cols = torch.zeros(num_groups, rounds, dtype=torch.long, device=device)
    sel_scores = torch.zeros(num_groups, rounds, dtype=vals.dtype, device=device)
    for i in range(rounds):
        end = int(live_count.max())
        if i >= end:
            break
        win, win_cols = vals[:, :, i:end], cols[:, i:end]   # views, updated in place
        live = torch.arange(end - i, device=device) < (live_count - i)[:, None]
        _move_best_to_front(win, win_cols, live)
        sel_cols[:, i], sel_scores[:, i] = win_cols[:, 0], win[:, 3, 0]
        if end - i == 1:
            continue
        rest, rest_live = win[:, :, 1:], live[:, 1:]
        decayed = rest[:, 3] * _decay_weight(_iou(win[:, :3, :1].unbind(1),
                                                  rest[:, :3].unbind(1)), params)
        rest[:, 3] = torch.where(rest_live, decayed, rest[:, 3])
        keep = rest_live & ~(decayed < params.min_score)
        _compact(rest, win_cols[:, 1:], keep)
        live_count = torch.where(live[:, 0], i + 1 + keep.sum(1), live_count)
    return sel_cols, sel_scores, torch.minimum(live_count, sizes).clamp(max=rounds)


def _move_best_to_front(win: torch.Tensor, win_cols: torch.Tensor, live: torch.Tensor) -> None:
    """Swap each group's best live candidate (first slot on ties) into slot 0, in place.
    ``win``: G x 4 x S values (score in row 3), ``win_cols``: G x S, ``live``: G x S bool."""
    best = torch.where(live, win[:, 3], float("-inf")).argmax(1)[:, None]
    best_vals = win.gather(2, best[:, None].expand(-1, 4, 1))
    best_cols = win_cols.gather(1, best)
    win.scatter_(2, best[:, None].expand(-1, 4, 1), win[:, :, :1].clone())
    win_cols.scatter_(1, best, win_cols[:, :1].clone())
    win[:, :, :1] = best_vals
    win_cols[:, :1] = best_cols


def _compact(rest: torch.Tensor, rest_cols: torch.Tensor, keep: torch.Tensor) -> None:
    """The kernel's removal order, in place: of the K kept entries, those among the first K
    slots stay put, and the holes there are filled, left to right, by the kept entries
    beyond slot K taken from the right end. ``rest``: G x 4 x S, ``rest_cols``/``keep``: G x S.
    """
    num_groups, span = keep.shape
    pos = torch.arange(span, device=keep.device)
    in_head = pos < keep.sum(1, keepdim=True)
    hole, tail = in_head & ~keep, keep & ~in_head
    scratch = span   # an extra column absorbs all non-moves
    hole_rank = torch.cumsum(hole.long(), 1) - 1
    tail_rank = torch.flip(torch.cumsum(torch.flip(tail.long(), [1]), 1), [1]) - 1
    hole_pos = torch.full((num_groups, span + 1), scratch, dtype=torch.long, device=keep.device)
    hole_pos.scatter_(1, torch.where(hole, hole_rank, scratch), pos.expand_as(hole).clone())
    target = torch.where(tail, hole_pos.gather(1, tail_rank.clamp(min=0)), scratch)
    moved = torch.cat([rest, rest[:, :, :1]], 2)
    moved.scatter_(2, target[:, None, :].expand(-1, 4, -1), rest)
    moved_cols = torch.cat([rest_cols, rest_cols[:, :1]], 1)
    moved_cols.scatter_(1, target, rest_cols)
    rest.copy_(moved[:, :, :-1])
    rest_cols.copy_(moved_cols[:, :-1])


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
    _, _, group, col = _pad_groups(offsets.to(counts.device), counts.device)
    return torch.nonzero(col < counts.clamp(max=limit)[group]).squeeze(1)


def _soft_nms_selections(segs, scores, cls_idxs, offsets, iou_threshold, sigma, min_score,
                         soft_method, backend, cap, top_total):
    """Soft-NMS per group, the first ``cap`` selections of each: segs, scores, classes."""
    dets, inds, counts = soft_nms_grouped(segs, scores, offsets, iou_threshold, sigma,
                                          min_score, soft_method, backend, cap, top_total)
    take = _first_rows(offsets, counts, cap).to(segs.device)
    return dets[take, :2], dets[take, 2], cls_idxs[inds[take]]


def _ties_among_best(scores: torch.Tensor, num_best: int) -> bool:
    """Whether the ``num_best`` + 1 highest scores contain equal values."""
    best = scores.sort(descending=True).values[:num_best + 1]
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
        top_total = max_seg_num if multiclass and max_seg_num > 0 else None
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
