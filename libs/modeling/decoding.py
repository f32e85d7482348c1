"""Inference decoding: per-level candidates, NMS and conversion to seconds."""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..utils.nms import batched_nms
from ..utils.postprocessing import segments_to_seconds

__all__ = ["decode_candidates", "postprocess_video"]

# per-level offsets: a ``T_l×2`` tensor, or a function (point indices N, labels N) -> ``N×2``
# for offsets that depend on the class (TriDet's Trident head)
LevelOffsets = Union[Tensor, Callable[[Tensor, Tensor], Tensor]]


@torch.no_grad()
def decode_candidates(points: Sequence[Tensor], masks: Sequence[Tensor],
                      cls_logits: Sequence[Tensor], offsets: Sequence[LevelOffsets],
                      pre_nms_thresh: float, pre_nms_topk: int, duration_thresh: float
                      ) -> Tuple[Tensor, Tensor, Tensor]:
    """Candidate segments of one video, in grid units.

    Per level: points ``T_l×4``, mask ``T_l`` (bool), logits ``T_l×C``, offsets ``T_l×2`` (in
    strides; or a function of the selected point indices and labels giving their ``N×2``
    offsets). Keeps (point, class) pairs with ``sigmoid > pre_nms_thresh``, the ``pre_nms_topk``
    best of each level, and segments longer than ``duration_thresh`` grid steps.
    Returns segments ``N×2``, scores ``N``, labels ``N`` (int64), levels concatenated.
    """
    segs_all, scores_all, labels_all = [], [], []
    for pts, mask, logits, offs in zip(points, masks, cls_logits, offsets):
        num_classes = logits.shape[-1]
        probs = (logits.sigmoid() * mask[:, None]).flatten()       # index = point·C + class
        keep = probs > pre_nms_thresh
        probs = probs[keep]
        flat_idx = keep.nonzero(as_tuple=True)[0]
        num_top = min(pre_nms_topk, flat_idx.numel())
        probs, order = probs.sort(descending=True)
        probs = probs[:num_top].clone()
        flat_idx = flat_idx[order[:num_top]].clone()
        pt_idx = torch.div(flat_idx, num_classes, rounding_mode="floor")
        labels = torch.fmod(flat_idx, num_classes)
        sel_pts = pts[pt_idx]
        sel_offs = offs(pt_idx, labels) if callable(offs) else offs[pt_idx]
        starts = sel_pts[:, 0] - sel_offs[:, 0] * sel_pts[:, 3]
        ends = sel_pts[:, 0] + sel_offs[:, 1] * sel_pts[:, 3]
        long_enough = (ends - starts) > duration_thresh
        segs_all.append(torch.stack((starts, ends), dim=-1)[long_enough])
        scores_all.append(probs[long_enough])
        labels_all.append(labels[long_enough])
    return torch.cat(segs_all), torch.cat(scores_all), torch.cat(labels_all)


@torch.no_grad()
def postprocess_video(segs: Tensor, scores: Tensor, labels: Tensor, video: Mapping[str, Any],
                      test_cfg: Mapping[str, Any], voting_iou_weighted: bool = True
                      ) -> Dict[str, Any]:
    """NMS on CPU in grid units, then conversion to seconds clamped to ``[0, duration]``.

    ``video`` supplies ``video_id``, ``fps``, ``duration``, ``feat_stride``, ``feat_num_frames``;
    ``test_cfg`` the NMS settings; ``voting_iou_weighted``: see :func:`seg_voting` (False:
    TriDet's score-only weights). Returns ``{video_id, segments (N×2 s), scores, labels}``.
    """
    segs, scores, labels = segs.detach().cpu(), scores.detach().cpu(), labels.detach().cpu()
    if test_cfg["nms_method"] != "none":
        segs, scores, labels = batched_nms(
            segs, scores, labels, test_cfg["iou_threshold"], test_cfg["min_score"],
            test_cfg["max_seg_num"], use_soft_nms=test_cfg["nms_method"] == "soft",
            multiclass=test_cfg["multiclass_nms"], sigma=test_cfg["nms_sigma"],
            voting_thresh=test_cfg["voting_thresh"], voting_iou_weighted=voting_iou_weighted)
    if segs.shape[0] > 0:
        segs = segments_to_seconds(segs, video["feat_stride"], video["feat_num_frames"],
                                   video["fps"], video["duration"])
    return {"video_id": video["video_id"], "segments": segs, "scores": scores, "labels": labels}
