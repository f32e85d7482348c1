"""Inference on videos of any length in overlapping windows, with flat peak memory.

A video of ``T`` feature-grid steps is cut into windows of ``window`` steps that overlap by
``overlap`` steps (window starts on multiples of the coarsest pyramid stride, so every window's
pyramid points are points of the whole-video pyramid). Each pyramid point is *owned* by exactly one
window, the one in which it lies farthest from a window edge (the overlaps are split in the
middle), and is decoded from that window's network outputs only. The candidates then go through
the same steps as whole-video inference: the ``pre_nms_topk`` best of each
level over the whole video (kept as a running top-k, so memory does not grow with ``T``), the
``duration_thresh`` filter, one NMS over all windows, conversion to seconds.

A video with ``T <= window`` is one window, and the result is exactly whole-video inference
(``model([item])``). On longer videos the network outputs near a point differ from whole-video
inference only through the context cut off beyond ``overlap / 2`` steps; actions longer than about
``overlap / 2`` steps may be split or missed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..modeling.decoding import decode_candidates, postprocess_video

__all__ = ["Window", "default_window", "level_outputs", "normalise_window", "plan_windows", "step_scores",
           "windowed_inference"]


@dataclass(frozen=True)
class Window:
    """Grid steps ``start .. end-1`` go into the model; points in ``[own_start, own_end)`` are
    decoded from this window."""

    start: int
    end: int
    own_start: int
    own_end: int


def plan_windows(num_steps: int, window: int, overlap: int, align: int = 1) -> List[Window]:
    """Windows covering ``num_steps`` grid steps.

    ``window`` and ``overlap`` are multiples of ``align`` (grid steps), ``0 <= overlap < window``.
    All windows have ``window`` steps except the last, which ends at ``num_steps`` and starts on
    the ``align`` grid (so it has ``window`` to ``window + align - 1`` steps); consecutive windows
    overlap by at least ``overlap`` steps. Ownership cuts lie in the middle of each overlap, on
    the ``align`` grid.
    """
    if not 0 <= overlap < window:
        raise ValueError(f"window overlap must satisfy 0 <= overlap < window, got overlap "
                         f"{overlap}, window {window}")
    if window % align or overlap % align:
        raise ValueError(f"window ({window}) and overlap ({overlap}) must be multiples of the "
                         f"coarsest pyramid stride {align}")
    if num_steps <= window:
        return [Window(0, num_steps, 0, num_steps)]
    starts = list(range(0, num_steps - window, window - overlap))
    last = (num_steps - window) // align * align
    if last > starts[-1]:
        starts.append(last)
    ends = [s + window for s in starts[:-1]] + [num_steps]
    cuts = [(ends[k] + starts[k + 1]) // 2 // align * align for k in range(len(starts) - 1)]
    owns = zip([0] + cuts, cuts + [num_steps])
    return [Window(s, e, a, b) for s, e, (a, b) in zip(starts, ends, owns)]


def default_window(model: nn.Module) -> Tuple[int, int]:
    """(window, overlap) in grid steps: ``4 x max_seq_len`` and ``max_seq_len / 2``, rounded up
    to the model's padding multiple and coarsest stride."""
    return normalise_window(model, 4 * model.max_seq_len, model.max_seq_len // 2)


def normalise_window(model: nn.Module, window: int, overlap: int) -> Tuple[int, int]:
    """Round ``window`` up to a multiple of ``model.max_div_factor`` (no padding is wasted) and
    ``overlap`` up to a multiple of the coarsest stride."""
    align = model.fpn_strides[-1]
    div = model.max_div_factor
    return -(-window // div) * div, -(-overlap // align) * align


@torch.no_grad()
def level_outputs(model: nn.Module, item: Mapping[str, Any]
                  ) -> Tuple[List[Tensor], List[Tensor], List[Tensor], List[Tensor]]:
    """Per pyramid level, the network outputs of one video (eval mode, padded as whole-video inference pads it).

    Returns points ``T_l x 4`` (grid units), masks ``T_l`` (bool), class logits ``T_l x C`` and
    offsets ``T_l x 2`` (in strides), ``T_l`` = padded length / stride of level l.
    """
    _, points, masks, logits, offsets = model.forward_levels([item])
    return points, [m[0] for m in masks], [c[0] for c in logits], [o[0] for o in offsets]


def step_scores(masks: Sequence[Tensor], cls_logits: Sequence[Tensor], strides: Sequence[int],
                num_steps: int) -> Tensor:
    """``num_steps x C`` class probabilities per input step: the highest over pyramid levels of
    ``sigmoid(logit)`` at the point of level l covering the step (index ``step // s_l``)."""
    best = None
    for mask, logits, stride in zip(masks, cls_logits, strides):
        probs = (logits.sigmoid() * mask[:, None]).repeat_interleave(stride, dim=0)[:num_steps]
        best = probs if best is None else torch.maximum(best, probs)
    return best


def _merge_top(kept: Optional[Tuple[Tensor, ...]], new: Tuple[Tensor, ...], k: int
               ) -> Tuple[Tensor, ...]:
    """The ``k`` best-scoring of two candidate sets (segments, scores, labels)."""
    if kept is None:
        return new
    segs, scores, labels = (torch.cat(pair) for pair in zip(kept, new))
    order = scores.argsort(descending=True, stable=True)[:k]
    return segs[order], scores[order], labels[order]


@torch.no_grad()
def windowed_inference(model: nn.Module, feats, video: Mapping[str, Any], window: int,
                       overlap: int, with_step_scores: bool = False) -> Dict[str, Any]:
    """Detections of one video of any length (see the module docstring).

    Args:
        model: a ``LocPointTransformer`` in eval mode.
        feats: ``D x T`` features on the model grid, anything supporting ``feats[:, a:b]`` (a
            tensor, or a lazily read :class:`~libs.datasets.feature_io.VideoFeatures`).
        video: ``video_id``, ``fps``, ``duration`` (seconds), ``feat_stride``,
            ``feat_num_frames`` (frames), as in a data set item.
        window, overlap: grid steps (see :func:`plan_windows`; :func:`normalise_window` makes
            valid values).
        with_step_scores: also return ``step_scores``, ``T x C`` (see :func:`step_scores`).
    Returns:
        ``{'video_id', 'segments' (N x 2 seconds), 'scores', 'labels', 'num_windows'}`` (+
        ``'step_scores'``), detections sorted as whole-video inference sorts them.
    """
    cfg = model.test_cfg
    strides = model.fpn_strides
    num_steps = feats.shape[-1]
    plan = plan_windows(num_steps, window, overlap, strides[-1])
    kept: List[Optional[Tuple[Tensor, ...]]] = [None] * len(strides)
    curve = None
    for win in plan:
        item = dict(video, feats=feats[:, win.start:win.end])
        points, masks, logits, offsets = level_outputs(model, item)
        for level, (pts, mask, lgt, off) in enumerate(zip(points, masks, logits, offsets)):
            t = pts[:, 0] + win.start
            owned = mask & (t >= win.own_start) & (t < win.own_end)
            # the duration filter waits until the whole-video top-k is known (the whole-video order)
            segs, scores, labels = decode_candidates([pts], [owned], [lgt], [off],
                                                     cfg["pre_nms_thresh"], cfg["pre_nms_topk"],
                                                     float("-inf"))
            kept[level] = _merge_top(kept[level], (segs + win.start, scores, labels),
                                     cfg["pre_nms_topk"])
        if with_step_scores:
            scores_win = step_scores(masks, logits, strides, win.end - win.start).cpu()
            if curve is None:
                curve = torch.zeros(num_steps, scores_win.shape[1])
            curve[win.own_start:win.own_end] = \
                scores_win[win.own_start - win.start:win.own_end - win.start]
    segs, scores, labels = (torch.cat(parts) for parts in zip(*kept))
    long_enough = (segs[:, 1] - segs[:, 0]) > cfg["duration_thresh"]
    result = postprocess_video(segs[long_enough], scores[long_enough], labels[long_enough],
                               video, cfg)
    result["num_windows"] = len(plan)
    if with_step_scores:
        result["step_scores"] = curve
    return result
