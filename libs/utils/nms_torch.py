"""The NMS kernels in plain PyTorch, on any device, equal to the C++ extension's.

Candidates come *grouped*: the rows of group g are ``offsets[g]:offsets[g+1]`` (a group is
one class in multi-class NMS, everything in class-agnostic NMS). All coordinates are
feature-grid steps, all arithmetic float32 as in the kernels.

Soft-NMS (``soft_nms``) makes the kernel's selections without its one-at-a-time loop where
that is provably exact:

* the kernel's memory order only breaks ties between equal maxima, so all groups advance side
  by side without moving candidates (``_soft_nms_unordered``), several selections per
  iteration when the next best provably stays ahead (``_advance``); groups where a maximum
  was tied are replayed by a loop that repeats the kernel's moves (``_soft_nms_positional``);
* segments that do not overlap leave each other's scores unchanged, so each group is cut into
  chains of overlapping segments (``_split_chains``) that run as units of their own and are
  merged back by score (``_merge``);
* when only the best ``top_total`` selections of all groups are wanted, candidates below a
  threshold cannot change a selection above it, so the best few hundred candidates are tried
  first (``_select_from_best``), and the loops stop once nothing left can enter.
"""
from __future__ import annotations

import functools
import math
from typing import List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["SOFT_NMS_METHODS", "SoftParams", "f32", "hard_nms", "pad_groups", "soft_nms"]

SOFT_NMS_METHODS = {"hard": 0, "linear": 1, "gaussian": 2}
AREA_EPS = 1e-6  # added to every segment length inside NMS


def f32(x: float) -> float:
    """Round a Python float to the nearest float32, as the C++ kernels' float arguments do."""
    return float(np.float32(x))


def pad_groups(offsets: torch.Tensor, device: torch.device):
    """Row -> (group, column) map for packing ragged groups into a G x M array.
    Returns sizes (G), M, and each row's group and column (N each)."""
    sizes = offsets[1:] - offsets[:-1]
    num_groups = sizes.numel()
    width = int(sizes.max()) if num_groups > 0 else 0
    rows = torch.arange(int(offsets[-1]), device=device)
    group = torch.searchsorted(offsets[1:], rows, right=True)
    return sizes, width, group, rows - offsets[group]


def _iou(a: Tuple[torch.Tensor, ...], b: Tuple[torch.Tensor, ...]) -> torch.Tensor:
    """IoU of segments given as (start, end, area) triples of broadcastable tensors, in the
    kernel's float32 arithmetic: ``inter / (area_a + area_b - inter)``."""
    inter = (torch.minimum(a[1], b[1]) - torch.maximum(a[0], b[0])).clamp(min=0)
    return inter / (a[2] + b[2] - inter)


# --------------------------------------------------------------------------------------------
# Hard NMS
# --------------------------------------------------------------------------------------------
def hard_nms(segs: torch.Tensor, scores: torch.Tensor, offsets: torch.Tensor,
             iou_threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Greedy hard NMS within each group, as the kernel (see ``nms.hard_nms_grouped``)."""
    device = segs.device
    offsets_dev = offsets.to(device)
    sizes, width, group, col = pad_groups(offsets_dev, device)
    # per-group descending sort, the same call on the same slice as the C++ kernel
    order = torch.empty(segs.shape[0], dtype=torch.long, device=device)
    bounds = offsets.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            order[start:end] = scores[start:end].sort(descending=True)[1] + start
    areas = segs[:, 1] - segs[:, 0] + AREA_EPS
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
class SoftParams(NamedTuple):
    iou_threshold: float   # all three rounded to float32, as the kernel's arguments
    sigma: float
    min_score: float
    method: int            # SOFT_NMS_METHODS value


class _Flat(NamedTuple):
    """Selections of all groups, group after group, each group's in the kernel's order."""
    rows: torch.Tensor     # S int64, the selected candidates' rows
    scores: torch.Tensor   # S float32, their decayed scores
    group: torch.Tensor    # S int64, ascending
    tied: torch.Tensor     # G bool: a maximum was shared, the group's selections may differ
    floor: float           # selections below it were left out, or -inf: the ``top_total``-th
                           # best of those made before any tie in their unit (hence at most
                           # the true one)


def soft_nms(segs: torch.Tensor, scores: torch.Tensor, offsets: torch.Tensor,
             params: SoftParams, limit: int, top_total: Optional[int]
             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft-NMS within each group, as the kernel: the first ``limit`` selections of each,
    and with ``top_total`` possibly fewer, all selections left out then scoring strictly
    below the ``top_total``-th best of those returned.

    Args: segs N x 2, scores N (float32), offsets G+1 (int64, CPU).
    Returns: rows (S int64) and decayed scores (S float32) of the selections, group after
    group in the kernel's order, and each group's count (G int64).
    """
    device = segs.device
    offsets_dev = offsets.to(device)
    num_groups = offsets.numel() - 1
    if segs.shape[0] == 0 or limit == 0:
        flat = _no_selections(segs, num_groups, replay=False)
    else:
        finite, by_chains = torch.stack([
            torch.isfinite(scores).all(), _chains_are_independent(segs, params)]).tolist()
        if not finite:   # -inf / nan scores: only the kernel's own loop treats them right
            flat = _no_selections(segs, num_groups, replay=True)
        elif top_total and by_chains:
            flat = _select_from_best(segs, scores, offsets_dev, params, limit, top_total)
        else:
            flat = _select(segs, scores, offsets_dev, params, limit, top_total, by_chains)
        if bool(flat.tied.any()):
            flat = _redo_tied(flat, segs, scores, offsets_dev, params, limit, top_total)
    return flat.rows, flat.scores, torch.bincount(flat.group, minlength=num_groups)


def _no_selections(segs: torch.Tensor, num_groups: int, replay: bool) -> _Flat:
    """None yet; ``replay`` marks every group for the kernel's loop replayed."""
    empty = torch.zeros(0, dtype=torch.long, device=segs.device)
    return _Flat(empty, segs.new_zeros(0), empty,
                 torch.full((num_groups,), replay, dtype=torch.bool, device=segs.device),
                 float("-inf"))


def _select(segs, scores, offsets_dev, params: SoftParams, limit: int,
            top_total: Optional[int], by_chains: bool, wanted: float = float("-inf")
            ) -> _Flat:
    """The position-free loop over every group's chains (``by_chains``, when exact) or over
    the whole groups, merged into each group's order. Selections below ``wanted`` may be
    left out."""
    device = segs.device
    sizes, width, group, col = pad_groups(offsets_dev, device)
    if by_chains:
        units = _split_chains(segs, group, col, sizes.numel(), width)
    else:
        units = _Units(torch.arange(segs.shape[0], device=device), offsets_dev,
                       torch.arange(sizes.numel(), device=device))
    unit_sizes, unit_width, unit, unit_col = pad_groups(units.offsets, device)
    packed = _pack(segs[units.rows], scores[units.rows], unit, unit_col, unit_sizes.numel(),
                   unit_width)
    found = _soft_nms_unordered(packed, params, min(limit, unit_width), top_total, wanted)
    rows = units.rows[units.offsets[found.unit] + found.col]
    return _merge(rows, found.scores, units.group[found.unit], units.group[found.tied],
                  found.floor, sizes.numel(), limit, params.min_score)


def _merge(rows, sel_scores, group, tied_groups, floor: float, num_groups: int, limit: int,
           min_score: float) -> _Flat:
    """Units' selections -> each group's, in the kernel's order: a group's next selection
    is its best live candidate, the best next selection of its units, each of whose
    sequences is non-increasing; so a group's selections are its units' merged by score
    (equal scores from two units mark the group tied). A group's selections below
    ``min_score`` are dropped except its first (the kernel always makes one, then removes
    everything below ``min_score``), and those after its first ``limit``."""
    device = rows.device
    by_score = sel_scores.sort(descending=True, stable=True).indices
    order = by_score[group[by_score].sort(stable=True).indices]
    rows, sel_scores, group = rows[order], sel_scores[order], group[order]
    made = torch.bincount(group, minlength=num_groups)
    rank = torch.arange(group.numel(), device=device) - (made.cumsum(0) - made)[group]
    tied = torch.zeros(num_groups, dtype=torch.bool, device=device)
    tied[tied_groups] = True
    equal = (group[1:] == group[:-1]) & (sel_scores[1:] == sel_scores[:-1])
    tied[group[1:][equal & ((sel_scores[1:] >= min_score) | (rank[:-1] == 0))]] = True
    keep = ((sel_scores >= min_score) | (rank == 0)) & (rank < limit)
    return _Flat(rows[keep], sel_scores[keep], group[keep], tied, floor)


def _select_from_best(segs, scores, offsets_dev, params: SoftParams, limit: int,
                      top_total: int) -> _Flat:
    """Selections from the best-scoring candidates alone, when that is exact.

    With ``t`` the lowest score tried, a candidate below ``t`` is only ever selected once its
    group's maximum is below ``t``, and until then changes no score; so every selection at
    or above ``t`` is the same with or without the candidates below it. When the
    ``top_total``-th best selection from the candidates >= ``t`` is itself >= ``t``, they
    give every selection that is returned. Tries the best ``2 * top_total`` candidates
    (``5 * top_total`` for a single group, whose selections all decay one another), then as
    many more as the selections >= ``t`` fell short of ``top_total``, then all."""
    tried = 2 * top_total if offsets_dev.numel() > 2 else 5 * top_total
    for _ in range(2):
        if tried >= scores.numel():
            break
        threshold = scores.topk(tried).values[-1]
        rows = (scores >= threshold).nonzero().squeeze(1)
        counts = torch.bincount(torch.searchsorted(offsets_dev[1:], rows, right=True),
                                minlength=offsets_dev.numel() - 1)
        flat = _select(segs[rows], scores[rows], torch.cat([counts.new_zeros(1),
                                                            counts.cumsum(0)]),
                       params, limit, top_total, True, float(threshold))
        if flat.floor >= float(threshold):
            return flat._replace(rows=rows[flat.rows])
        above = int((flat.scores >= threshold).sum())
        tried = int(tried * 1.25 * top_total / max(above, 1))
    return _select(segs, scores, offsets_dev, params, limit, top_total, True)


def _redo_tied(flat: _Flat, segs, scores, offsets_dev, params: SoftParams, limit: int,
               top_total: Optional[int]) -> _Flat:
    """The tied groups' selections replaced by the kernel's loop replayed on them, until
    their selections fall below ``flat.floor`` or the ``top_total``-th best selection of the
    untied groups and the replay so far."""
    device = segs.device
    redo = flat.tied.nonzero().squeeze(1)
    sizes = (offsets_dev[1:] - offsets_dev[:-1])[redo]
    redo_offsets = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])
    _, width, group, col = pad_groups(redo_offsets, device)
    rows = offsets_dev[redo][group] + col
    packed = _pack(segs[rows], scores[rows], group, col, redo.numel(), width)
    untied = ~flat.tied[flat.group]
    cols, sel_scores, counts = _soft_nms_positional(packed, params, min(limit, width),
                                                    flat.floor, top_total, flat.scores[untied])
    g, k = (torch.arange(cols.shape[1], device=device) < counts[:, None]).nonzero(
        as_tuple=True)
    group = torch.cat([flat.group[untied], redo[g]])
    order = group.sort(stable=True).indices
    rows = torch.cat([flat.rows[untied], offsets_dev[redo[g]] + cols[g, k]])
    sel_scores = torch.cat([flat.scores[untied], sel_scores[g, k]])
    return _Flat(rows[order], sel_scores[order], group[order], flat.tied & False, flat.floor)


class _Packed(NamedTuple):
    """Ragged groups packed left-aligned into G x M arrays (M = largest group)."""
    coords: torch.Tensor   # G x 3 x M float32: start, end, area (= end - start + 1e-6);
                           # padding (0, 0, 1): IoU 0 with anything, never 0 / 0
    scores: torch.Tensor   # G x M float32
    dead: torch.Tensor     # G x M bool: True on padding


def _pack(segs: torch.Tensor, scores: torch.Tensor, group: torch.Tensor, col: torch.Tensor,
          num_groups: int, width: int) -> _Packed:
    areas = segs[:, 1] - segs[:, 0] + AREA_EPS
    coords = _padding_coords(segs, num_groups, width)
    coords[group, :, col] = torch.stack([segs[:, 0], segs[:, 1], areas], 1)
    padded_scores = scores.new_zeros(num_groups, width)
    padded_scores[group, col] = scores
    dead = torch.ones(num_groups, width, dtype=torch.bool, device=segs.device)
    dead[group, col] = False
    return _Packed(coords, padded_scores, dead)


def _padding_coords(like: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    """rows x 3 x width coordinates of padding: start 0, end 0, area 1."""
    coords = like.new_zeros(rows, 3, width)
    coords[:, 2] = 1
    return coords


def _decay_weight(ovr: torch.Tensor, params: SoftParams) -> torch.Tensor:
    """Per-candidate score multiplier, float32 like the C++ kernel."""
    if params.method == SOFT_NMS_METHODS["gaussian"]:
        # exponent in float32 as in C++; exp in float64 then rounded (~ correctly rounded expf)
        return torch.div(ovr * ovr, -params.sigma).double().exp_().to(ovr.dtype)
    hit = ovr >= params.iou_threshold
    if params.method == SOFT_NMS_METHODS["linear"]:
        return torch.where(hit, 1 - ovr, torch.ones_like(ovr))
    return (~hit).to(ovr.dtype)


# --------------------------------------------------------------------------------------------
# Chains of overlapping segments
# --------------------------------------------------------------------------------------------
def _chains_are_independent(segs: torch.Tensor, params: SoftParams) -> torch.Tensor:
    """Whether segments that do not overlap leave each other's scores exactly unchanged
    (0-d bool tensor): their IoU is then exactly 0 (finite coordinates, positive areas), and
    a zero IoU decays by exactly 1 (always for gaussian, else when the threshold is > 0)."""
    if params.method != SOFT_NMS_METHODS["gaussian"] and not params.iou_threshold > 0:
        return torch.zeros((), dtype=torch.bool, device=segs.device)
    areas = segs[:, 1] - segs[:, 0] + AREA_EPS
    return torch.isfinite(segs).all() & (areas > 0).all()


class _Units(NamedTuple):
    """The candidates cut into units that run the position-free loop side by side: whole
    groups, or chains (maximal runs, in order of start, of segments overlapping the union of
    the ones before them: segments in different chains never overlap, so each chain's
    soft-NMS runs alone)."""
    rows: torch.Tensor     # N, candidate rows unit after unit
    offsets: torch.Tensor  # U+1, unit boundaries in ``rows``
    group: torch.Tensor    # U, group of each unit


def _split_chains(segs: torch.Tensor, group: torch.Tensor, col: torch.Tensor,
                  num_groups: int, width: int) -> _Units:
    """Chains of every group (``group``/``col``: each row's group and column; rows are
    grouped, so a row's column is also its position among its group's rows in any order)."""
    by_start = segs[:, 0].sort(stable=True).indices
    rows = by_start[group[by_start].sort(stable=True).indices]
    starts, ends = segs[rows].unbind(1)
    reach = segs.new_full((num_groups, width), float("-inf"))
    reach[group, col] = ends
    reach = reach.cummax(1).values                  # furthest end so far, per group
    first = (col == 0) | (starts >= reach[group, (col - 1).clamp(min=0)])   # touching is not
    heads = first.nonzero().squeeze(1)                                        # overlapping
    return _Units(rows, torch.cat([heads, heads.new_full((1,), rows.numel())]), group[heads])


# --------------------------------------------------------------------------------------------
# The position-free loop
# --------------------------------------------------------------------------------------------
_WINDOW = 4   # entries per unit tried per iteration of the position-free loop


class _Found(NamedTuple):
    """Selections of the position-free loop, unit by unit."""
    unit: torch.Tensor     # S int64
    col: torch.Tensor      # S int64, packed column in the unit
    scores: torch.Tensor   # S float32
    tied: torch.Tensor     # T int64: units where a maximum was shared
    floor: float           # selections below it were left out, or -inf (see ``_Flat``)


def _soft_nms_unordered(packed: _Packed, params: SoftParams, rounds: int,
                        top_total: Optional[int] = None, wanted: float = float("-inf")
                        ) -> _Found:
    """All units advance side by side without moving candidates in memory.

    The kernel's slot order only decides between tied maxima, so without ties this equals it
    (same multiplications in the same order). An iteration selects each unit's best entry
    and then, in score order, the next ones of its ``_WINDOW`` best while each, decayed by
    those selected before it, still beats every other entry's current score (``_advance``).
    A candidate decayed below ``min_score`` stays below every live one, so it needs no
    removal; every third iteration the entries that can no longer be selected (taken, below
    ``min_score``, ``wanted`` or the ``top_total``-th best selection so far, or in a unit that
    made ``rounds``) are dropped and the rest re-packed; the loop ends when none is left.
    Selections below the final ``top_total``-th best are left out. A unit's first
    selection is returned even below ``min_score`` (``_merge`` decides).
    """
    extra = max(_WINDOW + 1 - packed.scores.shape[1], 0)     # room for the window
    coords = torch.cat([packed.coords, _padding_coords(packed.coords, packed.coords.shape[0],
                                                       extra)], 2)
    scores = F.pad(packed.scores, (0, extra))
    num_units, width = scores.shape
    device = scores.device
    state = _LoopState(coords, scores,
                       torch.zeros_like(scores).masked_fill_(
                           F.pad(packed.dead, (0, extra), value=True), float("-inf")),
                       torch.arange(width, device=device).expand(num_units, -1),
                       torch.arange(num_units, device=device),
                       torch.zeros(num_units, dtype=torch.long, device=device),
                       torch.zeros(num_units, dtype=torch.bool, device=device))
    record: List[_Step] = []
    best = scores.new_zeros(0)     # the best trusted selections so far, at most top_total
    counted = 0                    # steps of ``record`` counted in ``best``
    for iteration in range(rounds):
        if iteration % 3 == 1:     # a host sync every third iteration
            if top_total:
                best, counted = _best_trusted(best, record[counted:], top_total), len(record)
            floor = best[-1].item() if top_total and best.numel() == top_total else -math.inf
            state = state.drop_below(max(floor, wanted, params.min_score), rounds)
            if state.scores.shape[1] == 0:
                break
        step = _advance(state, params)
        record.append(step._replace(first=state.made.clone()))
        state.made.add_(step.count)
    return _found(record, rounds, params.min_score, top_total, device)


class _Step(NamedTuple):
    """The selections of one iteration, for the U' active units."""
    units: torch.Tensor    # U'
    first: torch.Tensor    # U', index of the first selection among its unit's
    count: torch.Tensor    # U', how many were selected (1 .. _WINDOW)
    cols: torch.Tensor     # U' x _WINDOW packed columns, in selection order
    scores: torch.Tensor   # U' x _WINDOW their decayed scores, -inf past ``count``
    tied: torch.Tensor     # U', the first one's maximum was shared
    tied_before: torch.Tensor  # U', one was in an earlier iteration


def _advance(state: "_LoopState", params: SoftParams) -> _Step:
    """One iteration: every unit selects its best live entry c_0, then c_1, c_2, ... (its
    next best by current score) while c_i decayed by c_0 .. c_i-1 beats the current score of
    c_i+1, hence of every other entry (scores only decay); the entries decay by c_0, c_1, ...
    in turn, as in the kernel's successive rounds."""
    top, idx = (state.scores + state.taken).topk(_WINDOW + 1, dim=1)    # U' x (K+1), sorted
    idx = idx[:, :_WINDOW]
    spread = idx[:, None]
    win = state.coords.gather(2, spread.expand(-1, 3, -1))[..., None].unbind(1)
    weights = _decay_weight(_iou(win, state.spread_coords), params)       # U' x K x W
    # on_window[:, l, i]: weight of c_l on c_i, 1 unless l < i
    on_window = torch.where(_before(idx.device),
                            weights.gather(2, spread.expand(-1, _WINDOW, -1)), 1.0)
    decayed = top[:, :_WINDOW]
    for row in on_window.unbind(1)[:-1]:
        decayed = decayed * row
    later = decayed[:, 1:]
    count = ((later > top[:, 2:]) & (later >= params.min_score)).cumprod(1).sum(1) + 1
    passed = _positions(idx.device) >= count[:, None]
    tied, tied_before = top[:, 0] == top[:, 1], state.tied.clone()
    state.tied.logical_or_(tied)
    for row in weights.masked_fill_(passed[..., None], 1.0).unbind(1):
        state.scores.mul_(row)
    state.taken.scatter_(1, idx, state.taken.gather(1, idx).masked_fill_(~passed,
                                                                         float("-inf")))
    return _Step(state.units, state.made, count, state.cols.gather(1, idx),
                 decayed.masked_fill_(passed, float("-inf")), tied, tied_before)


@functools.lru_cache(maxsize=None)
def _positions(device: torch.device) -> torch.Tensor:
    return torch.arange(_WINDOW, device=device)


@functools.lru_cache(maxsize=None)
def _before(device: torch.device) -> torch.Tensor:
    """K x K bool, [l, i] = l < i."""
    return torch.ones(_WINDOW, _WINDOW, dtype=torch.bool, device=device).triu(1)


def _found(record: List[_Step], rounds: int, min_score: float, top_total: Optional[int],
           device: torch.device) -> _Found:
    """The iterations' selections, the first ``rounds`` of each unit and those not below
    the ``top_total``-th best of those at least ``min_score`` (every selection that is)."""
    if not record:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return _Found(empty, empty, torch.zeros(0, device=device), empty, float("-inf"))
    steps = _Step(*(torch.cat(parts) for parts in zip(*record)))
    made = (steps.scores > float("-inf")) & (
        steps.first[:, None] + _positions(device) < rounds)
    sel_scores = steps.scores[made]
    trusted = _trusted(steps)[made]
    floor = _kth_best(sel_scores[(sel_scores >= min_score) & trusted], top_total)
    keep = sel_scores >= floor
    unit = steps.units[:, None].expand_as(made)[made][keep]
    # ties matter at selections the kernel makes: those >= min_score and the first ones
    tied = (steps.tied & ((steps.scores[:, 0] >= min_score) | (steps.first == 0)))[:, None] \
        & (_positions(device) == 0)
    return _Found(unit, steps.cols[made][keep], sel_scores[keep], unit[tied[made][keep]],
                  floor)


class _LoopState(NamedTuple):
    """Working arrays of the position-free loop over the U' units still active, U' x W
    (W shrinks as entries drop out, but stays above ``_WINDOW``)."""
    coords: torch.Tensor   # U' x 3 x W
    scores: torch.Tensor   # U' x W, decayed so far
    taken: torch.Tensor    # U' x W, -inf where selected or padding, else 0
    cols: torch.Tensor     # U' x W, packed column of each entry
    units: torch.Tensor    # U', unit of each row
    made: torch.Tensor     # U', selections so far
    tied: torch.Tensor     # U' bool, a maximum was shared in an iteration so far

    @property
    def spread_coords(self) -> Tuple[torch.Tensor, ...]:
        """start, end and area, each U' x 1 x W (against the window's U' x K x 1)."""
        return self.coords[:, :, None].unbind(1)

    def drop_below(self, floor: float, rounds: int) -> "_LoopState":
        """Keep, left-aligned, the entries not taken and scoring at least ``floor``, in the
        units that have any and made fewer than ``rounds`` selections."""
        eligible = ((self.scores + self.taken) >= floor) & (self.made < rounds)[:, None]
        sizes = eligible.sum(1)
        width = int(sizes.max()) if sizes.numel() else 0
        if width == 0:
            return self._replace(scores=self.scores[:, :0])
        active = (sizes > 0).nonzero().squeeze(1)
        if width > 0.75 * self.scores.shape[1] and active.numel() > 0.75 * sizes.numel():
            return self                              # not worth re-packing
        width = max(width, _WINDOW + 1)
        eligible, sizes = eligible[active], sizes[active]
        g, c = eligible.nonzero(as_tuple=True)
        new_c = torch.arange(g.numel(), device=g.device) - (torch.cumsum(sizes, 0)
                                                            - sizes)[g]
        old_g = active[g]
        coords = _padding_coords(self.coords, active.numel(), width)
        coords[g, :, new_c] = self.coords[old_g, :, c]
        scores = self.scores.new_zeros(active.numel(), width)
        scores[g, new_c] = self.scores[old_g, c]
        taken = torch.full_like(scores, float("-inf"))
        taken[g, new_c] = 0
        cols = self.cols.new_zeros(scores.shape)
        cols[g, new_c] = self.cols[old_g, c]
        return _LoopState(coords, scores, taken, cols, self.units[active], self.made[active],
                          self.tied[active])


def _trusted(steps: _Step) -> torch.Tensor:
    """U' x _WINDOW: the selections made before any tie in their unit, surely the kernel's
    (the first one at a tie too: its score is the tied maximum whichever is picked)."""
    return ~steps.tied_before[:, None] & (~steps.tied[:, None]
                                          | (_positions(steps.tied.device) == 0))


def _best_trusted(best: torch.Tensor, record: List[_Step], top_total: int) -> torch.Tensor:
    """The ``top_total`` best (descending) of ``best`` and the trusted selections of
    ``record``'s steps. A first maximum below ``min_score`` may count whether or not it was
    a selection: it can only decide a cut-off below ``min_score``, which is then used."""
    steps = _Step(*(torch.cat(parts) for parts in zip(*record)))
    made = torch.cat([best, steps.scores.masked_fill(~_trusted(steps), -math.inf).view(-1)])
    return made.topk(min(top_total, made.numel())).values


def _kth_best(values: torch.Tensor, k: Optional[int]) -> float:
    """The k-th largest of ``values`` (-inf when k is None or there are fewer)."""
    if not k or values.numel() < k:
        return float("-inf")
    return float(values.topk(k).values[-1])


# --------------------------------------------------------------------------------------------
# The kernel's loop, replayed
# --------------------------------------------------------------------------------------------
def _soft_nms_positional(packed: _Packed, params: SoftParams, rounds: int,
                         stop_below: float = float("-inf"), top_total: Optional[int] = None,
                         known: Optional[torch.Tensor] = None):
    """The kernel's loop with its memory moves: round i swaps the best live candidate
    (lowest slot on ties) into slot i and removes decayed-out ones by compaction.
    Every 4th round it may stop: once every group's last selection is below ``stop_below``
    or below the ``top_total``-th best of its selections so far and the ``known`` ones.
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
        if i >= end or (i % 4 == 0 and i > 0 and _replay_done(
                sel_scores[:, :i], live_count, stop_below, top_total, known)):
            rounds = i
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
        removed = rest_live & (decayed < params.min_score)
        if bool(removed.any()):
            keep = rest_live & ~removed
            _compact(rest, win_cols[:, 1:], keep)
            live_count = torch.where(live[:, 0], i + 1 + keep.sum(1), live_count)
    return sel_cols, sel_scores, torch.minimum(live_count, sizes).clamp(max=rounds)


def _replay_done(sel_scores: torch.Tensor, live_count: torch.Tensor, stop_below: float,
                 top_total: Optional[int], known: Optional[torch.Tensor]) -> bool:
    """Whether every group of the replay (G x i selections so far) is finished or its last
    selection is below the cut-off: ``stop_below``, or the ``top_total``-th best of the
    selections so far and ``known``, when higher."""
    rounds = sel_scores.shape[1]
    made = torch.arange(rounds, device=sel_scores.device) < live_count[:, None]
    floor = stop_below
    if top_total:
        so_far = sel_scores[made] if known is None else torch.cat([known, sel_scores[made]])
        floor = max(floor, _kth_best(so_far, top_total))
    return bool(((sel_scores[:, -1] < floor) | (live_count <= rounds)).all())


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
