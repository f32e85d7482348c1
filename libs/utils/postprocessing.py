"""Post-processing of detections: feature grid -> seconds and fusion with external video-level
classification scores (JSON or pickle files, see :func:`load_external_scores`).

A *results dict* (what eval.py collects and ``eval.py --saveonly`` pickles) has the keys
``video-id`` (list of str, one per prediction), ``t-start``, ``t-end`` (seconds), ``label``
(int class ids) and ``score`` (numpy arrays of equal length).
"""
from __future__ import annotations

import json
import os
import pickle
from typing import Dict, List, Mapping, Union

import numpy as np
import torch

from .prediction_io import read_predictions

__all__ = ["load_external_scores", "postprocess_results", "segments_to_seconds"]

ResultsDict = Dict[str, Union[List[str], np.ndarray]]


def segments_to_seconds(segs_grid: torch.Tensor, feat_stride: float, num_frames: float,
                        fps: float, duration: float) -> torch.Tensor:
    """Convert N x 2 segments from feature-grid steps to seconds, clamped to [0, duration].

    ``sec = (grid * feat_stride + 0.5 * num_frames) / fps`` (feature i is centred on frame
    ``i * stride + num_frames / 2``); then values <= 0 are multiplied by 0 (negatives become
    -0.0, as in the reference) and values >= duration become duration. Same float32 tensor
    ops as the reference, so results match it bit for bit.
    """
    segs = (segs_grid * feat_stride + 0.5 * num_frames) / fps
    segs[segs <= 0.0] *= 0.0
    beyond = segs >= duration
    segs[beyond] = segs[beyond] * 0.0 + duration
    return segs


def load_external_scores(filename: str) -> Mapping[str, np.ndarray]:
    """Video-level class scores: video id -> vector indexed by class id.

    A name containing ``.json`` is read as JSON (its ``results`` sub-dict when present, e.g.
    the CUHK ActivityNet file); anything else is unpickled (THUMOS UntrimmedNet scores).
    """
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"{filename}: no such external score file")
    if ".json" in filename:
        with open(filename, "r", encoding="utf8") as f:
            scores = json.load(f)
        if isinstance(scores, dict) and "results" in scores:
            scores = scores["results"]
    else:
        with open(filename, "rb") as f:
            scores = pickle.load(f)
    if not hasattr(scores, "__getitem__"):
        raise ValueError(f"{filename}: expected a mapping video id -> class scores, "
                         f"got {type(scores).__name__}")
    return scores


def _group_by_video(results: Mapping, num_pred: int) -> Dict[str, Dict[str, np.ndarray]]:
    """Per video (sorted ids): the top ``num_pred`` predictions by score, in float64.

    Ties keep the order of ``np.argsort(score)[::-1]`` on the video's own scores, as the
    reference does.
    """
    vids = np.asarray([str(v) for v in results["video-id"]], dtype=object)
    starts = np.asarray(results["t-start"], dtype=np.float64)
    ends = np.asarray(results["t-end"], dtype=np.float64)
    labels = np.asarray(results["label"]).astype(np.int64)
    scores = np.asarray(results["score"], dtype=np.float64)
    if not len(vids) == len(starts) == len(ends) == len(labels) == len(scores):
        raise ValueError("results dict: 'video-id', 't-start', 't-end', 'label' and 'score' "
                         "must have the same length")
    order = np.argsort(vids, kind="stable")
    unique_vids, first = np.unique(vids[order], return_index=True)
    per_video = {}
    for vid, rows in zip(unique_vids, np.split(order, first[1:])):
        top = rows[np.argsort(scores[rows])[::-1][:num_pred]]
        per_video[vid] = {"segment": np.stack([starts[top], ends[top]], 1),
                          "score": scores[top], "label": labels[top]}
    return per_video


def postprocess_results(results: Union[ResultsDict, str], cls_score_file: str,
                        num_pred: int = 200, topk: int = 2) -> ResultsDict:
    """Fuse detections with external video-level classification scores.

    Per video: keep the ``num_pred`` best detections; take the ``topk`` classes with the
    highest external scores; emit every kept segment once per chosen class with label = that
    class and score = sqrt(class score * detection score). The model's own labels are
    discarded. Videos come out in sorted id order, float64 arrays.

    Args:
        results: a results dict, or the path of a prediction file (the pickle or JSON that
            ``eval.py --saveonly`` writes, read by :func:`read_predictions`).
        cls_score_file: external scores (see ``load_external_scores``).
    """
    if isinstance(results, str):
        results = read_predictions(results)
    per_video = _group_by_video(results, num_pred)
    cls_scores = load_external_scores(cls_score_file)

    out_vids: List[str] = []
    starts, ends, labels, scores = [], [], [], []
    for vid, det in per_video.items():
        try:
            video_scores = np.asarray(cls_scores[vid])
        except (KeyError, IndexError):
            raise KeyError(f"{cls_score_file}: no external class scores for video '{vid}'") \
                from None
        if video_scores.ndim != 1 or video_scores.shape[0] < topk:
            raise ValueError(f"{cls_score_file}: video '{vid}': expected a vector of at least "
                             f"{topk} class scores, got shape {video_scores.shape}")
        top_cls = np.argsort(video_scores)[::-1][:topk]
        num_segs = len(det["score"])
        scores.append(np.sqrt(np.outer(video_scores[top_cls], det["score"])).ravel())
        segs = np.tile(det["segment"], (topk, 1))
        starts.append(segs[:, 0])
        ends.append(segs[:, 1])
        labels.append(np.repeat(top_cls, num_segs))
        out_vids.extend([vid] * (num_segs * topk))

    def cat(parts, dtype):
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    return {"video-id": out_vids, "t-start": cat(starts, np.float64),
            "t-end": cat(ends, np.float64), "label": cat(labels, np.int64),
            "score": cat(scores, np.float64)}
