"""Temporal action detection metrics: ActivityNet-style mAP at tIoU thresholds and the
Recall@kx of Ego4D, vectorised with numpy.

Numbers are identical to the reference evaluator (itself line-for-line the official
ActivityNet ``compute_average_precision_detection``): ground truth de-duplicated, greedy
matching in descending score order, VOC-2011 interpolated AP, mean over the classes present
in the ground truth. Every sort that decides ties is the same numpy call on the same array as
in the reference, so tie order is reproduced too.

Label quirk: ground-truth ids are remapped to 0..K-1 in sorted order and
prediction ids are remapped with the same table; a predicted id that is absent from the
ground truth is left unchanged and may therefore be scored as another class. This is the
default, because published numbers depend on it; ``drop_unknown_labels=True`` drops such
predictions instead.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

__all__ = ["ANETdetection", "DATASET_TIOU_THRESHOLDS", "class_names_from_database",
           "default_tiou_thresholds", "format_results", "guess_dataset_name",
           "interpolated_prec_rec", "load_gt_seg_from_json", "load_pred_seg_from_json",
           "metrics_to_dict", "remove_duplicate_annotations", "segment_iou"]

logger = logging.getLogger(__name__)

# tIoU thresholds per data set, built with np.linspace exactly as the reference configs
DATASET_TIOU_THRESHOLDS = {
    "thumos": (0.3, 0.7, 5),
    "anet": (0.5, 0.95, 10),
    "epic": (0.1, 0.5, 5),
    "ego4d": (0.1, 0.5, 5),
}
_DATASET_KEYWORDS = (("thumos", "thumos"), ("anet", "anet"), ("activitynet", "anet"),
                     ("epic", "epic"), ("ego4d", "ego4d"))

PredsLike = Union[pd.DataFrame, Mapping[str, Sequence], str]


def default_tiou_thresholds(dataset_name: Optional[str]) -> np.ndarray:
    """The data set's tIoU list (THUMOS 0.3:0.1:0.7, ActivityNet 0.5:0.05:0.95, EPIC and
    Ego4D 0.1:0.1:0.5); 0.3:0.1:0.7 when unknown."""
    start, stop, num = DATASET_TIOU_THRESHOLDS.get(dataset_name or "", (0.3, 0.7, 5))
    return np.linspace(start, stop, num)


def guess_dataset_name(ant_file: str) -> Optional[str]:
    """'thumos' / 'anet' / 'epic' / 'ego4d' from the annotation file name, else None."""
    name = os.path.basename(ant_file).lower()
    for keyword, dataset in _DATASET_KEYWORDS:
        if keyword in name:
            return dataset
    return None


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def remove_duplicate_annotations(ants: List[dict], tol: float = 1e-3) -> List[dict]:
    """Drop events shorter than ``tol`` seconds and events whose label_id and both boundaries
    are within ``tol`` of an earlier kept event."""
    valid_events: List[dict] = []
    for event in ants:
        s, e, label = event["segment"][0], event["segment"][1], event["label_id"]
        if (e - s) < tol:
            continue
        if any(abs(s - p["segment"][0]) <= tol and abs(e - p["segment"][1]) <= tol
               and label == p["label_id"] for p in valid_events):
            continue
        valid_events.append(event)
    return valid_events


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, "r", encoding="utf8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def _database(path: str, content) -> dict:
    if not isinstance(content, dict) or not isinstance(content.get("database"), dict):
        raise ValueError(f"{path}: expected a top-level object with a 'database' object")
    return content["database"]


def _int_label(value, where: str, class_names: Optional[Mapping[str, int]] = None) -> int:
    """A class id from an int, an integral float or numeric string, or a known class name."""
    if isinstance(value, str) and class_names and value in class_names:
        return _int_label(class_names[value], where)
    number = None
    if not isinstance(value, (bool, np.bool_)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            pass
    if number is None or not number.is_integer():
        kind = "a known class name nor an integer class id" if isinstance(value, str) else \
            "an integer class id"
        raise ValueError(f"{where}: {value!r} is neither {kind}" if isinstance(value, str)
                         else f"{where}: expected {kind}, got {value!r}")
    return int(number)


def _segment(event, where: str) -> Tuple[float, float]:
    seg = event.get("segment") if isinstance(event, dict) else None
    if not isinstance(seg, (list, tuple)) or len(seg) != 2:
        raise ValueError(f"{where}: field 'segment' must be [start, end], got {seg!r}")
    try:
        return float(seg[0]), float(seg[1])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field 'segment' must hold numbers, got {seg!r}") from None


def _split_set(split) -> Optional[set]:
    if split is None:
        return None
    return {s.lower() for s in ([split] if isinstance(split, str) else split)}


def _subset(entry) -> str:
    return str(entry.get("subset", "")).lower() if isinstance(entry, dict) else ""


def _ground_truth_from_database(json_file: str, database: dict, split, label: str
                                ) -> Tuple[pd.DataFrame, List[str]]:
    """GT rows (file order, de-duplicated) and the ids of every video in the split."""
    splits = _split_set(split)
    videos = [vid for vid, entry in database.items() if splits is None or _subset(entry) in splits]
    if splits is not None and not videos:
        present = sorted({_subset(v) for v in database.values()})
        raise ValueError(f"{json_file}: no video has subset {'/'.join(sorted(splits))}; "
                         f"subsets present: {', '.join(present) or '(none)'}")
    vids, starts, stops, labels, no_annotations = [], [], [], [], []
    for vid in videos:
        entry = database[vid]
        if not isinstance(entry, dict) or "annotations" not in entry:
            no_annotations.append(vid)
            continue
        events = []
        for k, event in enumerate(entry["annotations"] or []):
            where = f"{json_file}: video '{vid}', annotation {k}"
            start, end = _segment(event, where)
            for field in dict.fromkeys((label, "label_id")):
                if field not in event:
                    raise ValueError(f"{where}: missing field '{field}'")
            events.append({"segment": (start, end),
                           "label_id": _int_label(event["label_id"], f"{where}, 'label_id'"),
                           "label": _int_label(event[label], f"{where}, '{label}'")})
        for event in remove_duplicate_annotations(events):
            vids.append(vid)
            starts.append(event["segment"][0])
            stops.append(event["segment"][1])
            labels.append(event["label"])
    if no_annotations:
        logger.warning("%s: %d videos of the split have no 'annotations' key (e.g. '%s'); they "
                       "count as videos without ground truth", json_file, len(no_annotations),
                       no_annotations[0])
    frame = pd.DataFrame({"video-id": vids, "t-start": np.asarray(starts, dtype=np.float64),
                          "t-end": np.asarray(stops, dtype=np.float64),
                          "label": np.asarray(labels, dtype=np.int64)})
    return frame, videos


def load_gt_seg_from_json(json_file: str, split: Union[str, Sequence[str], None] = None,
                          label: str = "label_id", label_offset: int = 0) -> pd.DataFrame:
    """Ground truth of the videos whose lower-cased ``subset`` is in ``split`` (every video
    when None): columns video-id, t-start, t-end (seconds), label (the integer ``label``
    field), in file order, after ``remove_duplicate_annotations``.

    ``label_offset`` is accepted for signature compatibility; list-valued labels (the
    reference's unused and buggy branch) are rejected.
    """
    del label_offset
    database = _database(json_file, _read_json(json_file))
    return _ground_truth_from_database(json_file, database, split, label)[0]


def class_names_from_database(database: dict) -> Dict[str, int]:
    """Class name -> label_id over every annotation of the file (later entries win), the way
    the data loaders build it."""
    names: Dict[str, int] = {}
    for entry in database.values():
        for event in (entry.get("annotations") or []) if isinstance(entry, dict) else []:
            if isinstance(event, dict) and "label" in event and "label_id" in event:
                names[str(event["label"])] = event["label_id"]
    return names


def load_pred_seg_from_json(json_file: str, label: str = "label_id", label_offset: int = 0,
                            class_names: Optional[Mapping[str, int]] = None) -> pd.DataFrame:
    """Predictions from JSON: the reference's ``{"database": {vid: [{"segment", "label_id",
    "scores"}]}}`` or ActivityNet-style ``{"results": {vid: [{"segment", "label", "score"}]}}``.
    A label may be a class id or, given ``class_names``, a class name.
    """
    del label_offset
    content = _read_json(json_file)
    if isinstance(content, dict) and isinstance(content.get("results"), dict):
        database, label_keys, score_keys = content["results"], ("label", label), \
            ("score", "scores")
    else:
        database, label_keys, score_keys = _database(json_file, content), (label, "label"), \
            ("scores", "score")
    vids, starts, stops, labels, scores = [], [], [], [], []
    for vid, events in database.items():
        if not isinstance(events, list):
            raise ValueError(f"{json_file}: video '{vid}': expected a list of predictions, "
                             f"got {type(events).__name__}")
        for k, event in enumerate(events):
            where = f"{json_file}: video '{vid}', prediction {k}"
            start, end = _segment(event, where)
            label_key = next((key for key in label_keys if key in event), None)
            score_key = next((key for key in score_keys if key in event), None)
            if label_key is None or score_key is None:
                missing = label_keys[0] if label_key is None else score_keys[0]
                raise ValueError(f"{where}: missing field '{missing}'")
            try:
                score = float(event[score_key])
            except (TypeError, ValueError):
                raise ValueError(f"{where}: field '{score_key}' must be a number, got "
                                 f"{event[score_key]!r}") from None
            vids.append(str(vid))
            starts.append(start)
            stops.append(end)
            labels.append(_int_label(event[label_key], f"{where}, field '{label_key}'",
                                     class_names))
            scores.append(score)
    return pd.DataFrame({"video-id": vids, "t-start": np.asarray(starts, dtype=np.float64),
                         "t-end": np.asarray(stops, dtype=np.float64),
                         "label": np.asarray(labels, dtype=np.int64),
                         "score": np.asarray(scores, dtype=np.float64)})


_PRED_KEYS = ("video-id", "t-start", "t-end", "label", "score")


def _pred_columns(preds: PredsLike, class_names: Mapping[str, int], source: str) -> dict:
    """Prediction columns as numpy arrays (a DataFrame, a dict of arrays/tensors or a JSON)."""
    if isinstance(preds, str):
        preds = load_pred_seg_from_json(preds, class_names=class_names)
    if not isinstance(preds, (pd.DataFrame, Mapping)):
        raise TypeError(f"predictions must be a DataFrame, a dict of arrays or a JSON path, "
                        f"got {type(preds).__name__}")
    missing = [k for k in _PRED_KEYS if k not in preds]
    if missing:
        raise ValueError(f"{source}: missing keys {missing}")
    columns = {}
    for key in _PRED_KEYS:
        values = preds[key]
        if hasattr(values, "detach"):   # torch tensor
            values = values.detach().cpu().numpy()
        columns[key] = np.asarray(values, dtype=object if key == "video-id" else None)
        if columns[key].ndim != 1:
            raise ValueError(f"{source}: '{key}' must be one-dimensional")
    if len({len(v) for v in columns.values()}) != 1:
        raise ValueError(f"{source}: {', '.join(_PRED_KEYS)} must have the same length")
    return columns


# --------------------------------------------------------------------------------------------
# Reference building blocks (kept as the readable definition; used by tests)
# --------------------------------------------------------------------------------------------
def segment_iou(target_segment: np.ndarray, candidate_segments: np.ndarray) -> np.ndarray:
    """tIoU of one [start, end] with each row of an N x 2 array (seconds)."""
    tt1 = np.maximum(target_segment[0], candidate_segments[:, 0])
    tt2 = np.minimum(target_segment[1], candidate_segments[:, 1])
    inter = (tt2 - tt1).clip(0)
    union = (candidate_segments[:, 1] - candidate_segments[:, 0]) \
        + (target_segment[1] - target_segment[0]) - inter
    return inter.astype(float) / union


def interpolated_prec_rec(prec: np.ndarray, rec: np.ndarray) -> float:
    """VOC-2011 interpolated average precision of a precision/recall curve."""
    mprec = np.hstack([[0], prec, [0]])
    mrec = np.hstack([[0], rec, [1]])
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]
    idx = np.where(mrec[1::] != mrec[0:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def metrics_to_dict(tiou_thresholds: Iterable[float], mAP: Sequence[float],
                    average_mAP: float, recall: np.ndarray, top_k: Sequence[int]) -> dict:
    """The JSON schema of eval_metrics.json / tools/evaluate.py --json: fractions in [0, 1],
    one recall list per k aligned with ``tiou``."""
    recall = np.asarray(recall, dtype=np.float64).reshape(len(list(mAP)), len(top_k))
    return {"tiou": [round(float(t), 6) for t in tiou_thresholds],   # 0.4, not 0.39999999999999997
            "mAP": [float(m) for m in mAP],
            "average_mAP": float(average_mAP),
            "recall": {str(k): [float(r) for r in recall[:, i]] for i, k in enumerate(top_k)}}


# --------------------------------------------------------------------------------------------
# Vectorised evaluation
# --------------------------------------------------------------------------------------------
def _rank_desc(values: np.ndarray, group_starts: np.ndarray, group_sizes: np.ndarray
               ) -> np.ndarray:
    """Rank of every element inside its group by ``np.argsort(group_values)[::-1]``.

    ``values`` is laid out group after group. Groups of one size are sorted together as the
    rows of a 2-D array, which yields the same permutation (ties included) as sorting each
    group on its own, as the reference does.
    """
    rank = np.empty(len(values), dtype=np.int64)
    for size in np.unique(group_sizes):
        cols = group_starts[group_sizes == size][:, None] + np.arange(size)[None, :]
        order = np.argsort(values[cols], axis=1)[:, ::-1]
        rank[np.take_along_axis(cols, order, 1)] = np.arange(size)[None, :]
    return rank


def _runs(keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Start and length of each run of equal values in a sorted array."""
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else \
        np.zeros(0, dtype=np.int64)
    return starts, np.diff(np.r_[starts, len(keys)])


class _GroundTruth:
    """Ground truth arranged by (class, video) group: group g holds rows
    ``starts[g]:starts[g] + sizes[g]`` of the sorted arrays, in file order."""

    def __init__(self, video_codes: np.ndarray, t_start: np.ndarray, t_end: np.ndarray,
                 labels: np.ndarray, num_videos: int):
        self.num_videos = max(num_videos, 1)
        keys = labels * self.num_videos + video_codes
        order = np.argsort(keys, kind="stable")
        self.t_start, self.t_end = t_start[order], t_end[order]
        self.keys, self.starts, self.sizes = np.unique(keys[order], return_index=True,
                                                       return_counts=True)

    def lookup(self, labels: np.ndarray, video_codes: np.ndarray) -> np.ndarray:
        """Group of each (class, video) pair; -1 where it has no ground truth."""
        if len(self.keys) == 0:
            return np.full(len(labels), -1, dtype=np.int64)
        keys = labels * self.num_videos + video_codes
        pos = np.searchsorted(self.keys, keys).clip(max=len(self.keys) - 1)
        return np.where((self.keys[pos] == keys) & (video_codes >= 0), pos, -1)

    def tiou(self, p_start: np.ndarray, p_end: np.ndarray, groups: np.ndarray,
             size: int) -> Tuple[np.ndarray, np.ndarray]:
        """tIoU (P x size) of each prediction with every GT of its group (groups of ``size``
        GTs), computed as ``segment_iou(pred, gts)``; also returns the GT rows (P x size)."""
        gt_rows = self.starts[groups][:, None] + np.arange(size)[None, :]
        gs, ge = self.t_start[gt_rows], self.t_end[gt_rows]
        ps, pe = p_start[:, None], p_end[:, None]
        inter = (np.minimum(pe, ge) - np.maximum(ps, gs)).clip(0)
        union = (ge - gs) + (pe - ps) - inter
        return inter.astype(float) / union, gt_rows


def _greedy_match(tiou_sorted: np.ndarray, gt_sorted: np.ndarray, rank: np.ndarray,
                  thresholds: np.ndarray, num_gt: int) -> np.ndarray:
    """True positives (T x P) of predictions given their group's GT rows ``gt_sorted``
    (P x n, by decreasing tIoU) and their rank inside the group.

    A prediction takes the first GT of its list with tIoU >= threshold that no better-ranked
    prediction of the group has taken. Groups are independent, so all of
    them advance one rank per step.
    """
    tp = np.zeros((len(thresholds), len(rank)), dtype=bool)
    locked = np.zeros((len(thresholds), num_gt), dtype=bool)
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[by_rank], np.arange(int(rank.max(initial=-1)) + 2))
    above = tiou_sorted[None] >= thresholds[:, None, None]
    for r in range(len(bounds) - 1):
        sel = by_rank[bounds[r]:bounds[r + 1]]
        gts = gt_sorted[sel]
        free = above[:, sel] & ~locked[:, gts]
        t_idx, p_idx = np.nonzero(free.any(2))
        first = free.argmax(2)[t_idx, p_idx]
        tp[t_idx, sel[p_idx]] = True
        locked[t_idx, gts[p_idx, first]] = True
    return tp


def _rank_in_runs(group: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... among the elements of each group id, in array order."""
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    rank = np.empty(len(group), dtype=np.int64)
    rank[order] = np.arange(len(group)) - np.searchsorted(sorted_group, sorted_group)
    return rank


class ANETdetection:
    """Detection mAP and Recall@kx against an annotation JSON.

    Args:
        ant_file: annotation JSON.
        split: subset name(s) to evaluate (compared lower-cased); None = every video.
        tiou_thresholds: tIoU thresholds.
        top_k: the k of Recall@kx.
        label: the annotation field holding integer class ids.
        label_offset, num_workers: accepted for compatibility with the reference; unused
            (the evaluation is vectorised, not multi-process).
        dataset_name: printed in the results header (default: the file name).
        drop_unknown_labels: drop predictions whose class id is absent from the ground truth
            instead of remapping them like the reference (see the module docstring).
        exclude_videos: video ids left out of the evaluation (their ground truth and any
            predictions for them), e.g. the loader's ``dataset.exclude_videos``.
    """

    def __init__(self, ant_file: str, split: Union[str, Sequence[str], None] = None,
                 tiou_thresholds: Sequence[float] = np.linspace(0.1, 0.5, 5),
                 top_k: Sequence[int] = (1, 5), label: str = "label_id", label_offset: int = 0,
                 num_workers: int = 8, dataset_name: Optional[str] = None,
                 drop_unknown_labels: bool = False, exclude_videos: Sequence[str] = ()):
        del label_offset, num_workers
        self.ant_file = ant_file
        self.split = split
        self.tiou_thresholds = np.asarray(tiou_thresholds, dtype=np.float64).reshape(-1)
        self.top_k = tuple(int(k) for k in top_k)
        self.drop_unknown_labels = drop_unknown_labels
        self.dataset_name = dataset_name if dataset_name is not None else \
            os.path.basename(ant_file).replace(".json", "")
        self.ap: Optional[np.ndarray] = None
        self.recall: Optional[np.ndarray] = None

        database = _database(ant_file, _read_json(ant_file))
        self.class_names = class_names_from_database(database)
        self.exclude_videos = frozenset(exclude_videos)
        database = {vid: entry for vid, entry in database.items()
                    if vid not in self.exclude_videos}
        self.ground_truth, self.video_ids = _ground_truth_from_database(ant_file, database,
                                                                        split, label)
        if len(self.ground_truth) == 0:
            raise ValueError(f"{ant_file}: split {split!r} has no ground-truth segments")
        # GT ids -> 0..K-1 in sorted order; predictions go through the same table
        self._gt_ids = np.unique(self.ground_truth["label"].to_numpy(np.int64))
        self.activity_index = {int(j): i for i, j in enumerate(self._gt_ids)}
        self.ground_truth["label"] = np.searchsorted(self._gt_ids, self.ground_truth["label"])
        self._video_code = {vid: i for i, vid in enumerate(self.video_ids)}
        gt_labels = self.ground_truth["label"].to_numpy(np.int64)
        self._gt = _GroundTruth(
            np.asarray([self._video_code[v] for v in self.ground_truth["video-id"]],
                       dtype=np.int64),
            self.ground_truth["t-start"].to_numpy(np.float64),
            self.ground_truth["t-end"].to_numpy(np.float64), gt_labels, len(self.video_ids))
        self._num_classes = len(self._gt_ids)
        self._npos = np.bincount(gt_labels, minlength=self._num_classes).astype(np.float64)

    # ---- input handling -------------------------------------------------------------------
    def load_predictions(self, pred_file: str) -> pd.DataFrame:
        """Read a prediction JSON (either format); class names resolve through the
        annotation file's name -> label_id table."""
        return load_pred_seg_from_json(pred_file, class_names=self.class_names)

    def _prepare(self, preds: PredsLike, source: Optional[str]) -> Optional[dict]:
        """Validated prediction arrays with remapped labels; None when there are none."""
        source = source or (preds if isinstance(preds, str) else "predictions")
        cols = _pred_columns(preds, self.class_names, source)
        if len(cols["score"]) == 0:
            return None
        vids = np.asarray([str(v) for v in cols["video-id"]], dtype=object)
        if self.exclude_videos:
            kept = np.asarray([v not in self.exclude_videos for v in vids], dtype=bool)
            cols = {key: np.asarray(value)[kept] for key, value in cols.items()}
            vids = vids[kept]
            if len(vids) == 0:
                return None

        def where(i: int) -> str:
            return f"{source}: video '{vids[i]}', row {i}"

        numeric = {}
        for key in ("t-start", "t-end", "score"):
            try:
                numeric[key] = cols[key].astype(np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"{source}: field '{key}' must hold numbers") from None
            bad = np.flatnonzero(~np.isfinite(numeric[key]))
            if len(bad):
                raise ValueError(f"{where(bad[0])}: field '{key}' is {numeric[key][bad[0]]} "
                                 f"({len(bad)} such rows)")
        bad = np.flatnonzero(numeric["t-end"] < numeric["t-start"])
        if len(bad):
            raise ValueError(f"{where(bad[0])}: segment ends before it starts "
                             f"[{numeric['t-start'][bad[0]]}, {numeric['t-end'][bad[0]]}] "
                             f"({len(bad)} such rows)")
        labels = cols["label"]
        if not np.issubdtype(labels.dtype, np.integer):
            labels = np.asarray([_int_label(v, f"{where(i)}, field 'label'", self.class_names)
                                 for i, v in enumerate(labels)], dtype=np.int64)
        labels = labels.astype(np.int64)

        codes = np.asarray([self._video_code.get(v, -1) for v in vids], dtype=np.int64)
        unknown = codes < 0
        if unknown.all():
            raise ValueError(f"{source}: none of the {len(set(vids))} video ids belongs to split "
                             f"{self.split!r} of {self.ant_file} (e.g. '{vids[0]}')")
        if unknown.any():
            logger.warning("%s: %d predictions in %d videos outside split %r of %s (e.g. '%s') "
                           "count as false positives", source, unknown.sum(),
                           len(set(vids[unknown])), self.split, self.ant_file, vids[unknown][0])

        pos = np.searchsorted(self._gt_ids, labels).clip(max=self._num_classes - 1)
        known = self._gt_ids[pos] == labels
        if not known.all():
            absent = np.unique(labels[~known])
            action = "dropped (drop_unknown_labels)" if self.drop_unknown_labels else \
                "kept and remapped like the reference, so they may count for another class"
            logger.warning("%s: %d predictions have class ids absent from the ground truth "
                           "(%s%s); %s", source, (~known).sum(), ", ".join(map(str, absent[:10])),
                           ", ..." if len(absent) > 10 else "", action)
        mapped = np.where(known, pos, labels)
        keep = known if self.drop_unknown_labels else (mapped >= 0) & (mapped < self._num_classes)
        return {"video": codes[keep], "t-start": numeric["t-start"][keep],
                "t-end": numeric["t-end"][keep], "label": mapped[keep],
                "score": numeric["score"][keep]}

    # ---- metrics --------------------------------------------------------------------------
    def _average_precision(self, p: dict) -> np.ndarray:
        """AP (T x K)."""
        thresholds = self.tiou_thresholds
        ap = np.zeros((len(thresholds), self._num_classes))
        # class-major order; inside a class the reference's argsort(score)[::-1]
        by_class = np.argsort(p["label"], kind="stable")
        counts = np.bincount(p["label"], minlength=self._num_classes)
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        present = counts > 0
        rank = _rank_desc(p["score"][by_class], starts[present], counts[present])
        order = np.empty_like(by_class)
        order[starts[p["label"][by_class]] + rank] = by_class

        group = self._gt.lookup(p["label"][order], p["video"][order])
        tp = np.zeros((len(thresholds), len(order)), dtype=bool)
        with_gt = np.flatnonzero(group >= 0)
        sizes = self._gt.sizes[group[with_gt]]
        for size in np.unique(sizes):
            idx = with_gt[sizes == size]          # positions in class-major order
            rows = order[idx]
            tiou, gt_rows = self._gt.tiou(p["t-start"][rows], p["t-end"][rows], group[idx],
                                          size)
            srt = np.argsort(tiou, axis=1)[:, ::-1]
            tp[:, idx] = _greedy_match(np.take_along_axis(tiou, srt, 1),
                                       np.take_along_axis(gt_rows, srt, 1),
                                       _rank_in_runs(group[idx]), thresholds,
                                       len(self._gt.t_start))
        if not present.all():
            logger.warning("no predictions for %d of %d ground-truth classes (their AP is 0), "
                           "e.g. class id %d", (~present).sum(), self._num_classes,
                           self._gt_ids[np.argmin(present)])
        for c in np.flatnonzero(present):
            tp_c = tp[:, starts[c]:starts[c] + counts[c]].astype(np.float64)
            tp_cumsum = np.cumsum(tp_c, axis=1)
            fp_cumsum = np.cumsum(1.0 - tp_c, axis=1)
            rec = tp_cumsum / self._npos[c]
            prec = tp_cumsum / (tp_cumsum + fp_cumsum)
            for t in range(len(thresholds)):
                ap[t, c] = interpolated_prec_rec(prec[t], rec[t])
        return ap

    def _topkx_recall(self, p: dict) -> np.ndarray:
        """Recall@kx (T x len(top_k) x K)."""
        thresholds = self.tiou_thresholds
        tp = np.zeros((len(thresholds), len(self.top_k), self._num_classes))
        group = self._gt.lookup(p["label"], p["video"])
        with_gt = np.flatnonzero(group >= 0)
        # group-major; inside a (class, video) group the reference's own argsort order
        rows = with_gt[np.argsort(group[with_gt], kind="stable")]
        grp = group[rows]
        run_starts, run_sizes = _runs(grp)
        rank = _rank_desc(p["score"][rows], run_starts, run_sizes)
        num_gt = self._gt.sizes[grp]
        for size in np.unique(num_gt):
            sel = np.flatnonzero(num_gt == size)
            tiou, _ = self._gt.tiou(p["t-start"][rows[sel]], p["t-end"][rows[sel]], grp[sel],
                                    size)
            above = tiou[None] >= thresholds[:, None, None]               # T x P x size
            seg_starts, _ = _runs(grp[sel])
            cls = self._gt.keys[grp[sel][seg_starts]] // self._gt.num_videos
            for ki, k in enumerate(self.top_k):
                eligible = (rank[sel] < k * size)[None, :, None]
                recalled = np.logical_or.reduceat(above & eligible, seg_starts, axis=1)
                for t, per_group in enumerate(recalled.sum(2)):
                    np.add.at(tp[t, ki], cls, per_group)
        return tp / self._npos

    def evaluate(self, preds: PredsLike, verbose: bool = True, source: Optional[str] = None
                 ) -> Tuple[np.ndarray, float, np.ndarray]:
        """Evaluate predictions: (mAP per tIoU, average mAP, Recall@kx as tIoU x len(top_k)),
        all fractions in [0, 1].

        ``preds``: a DataFrame or dict with keys video-id, t-start, t-end (seconds), label
        (class id), score (numpy arrays or tensors), or the path of a prediction JSON.
        ``source`` names the predictions in warnings and errors (default: the path or
        "predictions").
        """
        prepared = self._prepare(preds, source)
        if prepared is None:
            logger.warning("the prediction set is empty; every metric is 0")
            self.ap = np.zeros((len(self.tiou_thresholds), self._num_classes))
            self.recall = np.zeros((len(self.tiou_thresholds), len(self.top_k),
                                    self._num_classes))
        else:
            self.ap = self._average_precision(prepared)
            self.recall = self._topkx_recall(prepared)
        mAP = self.ap.mean(axis=1)
        mRecall = self.recall.mean(axis=2)
        average_mAP = mAP.mean()
        if verbose:
            print(format_results(self.dataset_name, self.tiou_thresholds, mAP, average_mAP,
                                 mRecall, self.top_k))
        return mAP, float(average_mAP), mRecall


def format_results(dataset_name: str, tiou_thresholds: Sequence[float], mAP: np.ndarray,
                   average_mAP: float, mRecall: np.ndarray, top_k: Sequence[int]) -> str:
    """The reference's printed block."""
    block = ""
    for tiou, tiou_mAP, tiou_recall in zip(tiou_thresholds, mAP, mRecall):
        block += "\n|tIoU = {:.2f}: ".format(tiou)
        block += "mAP = {:>4.2f} (%) ".format(tiou_mAP * 100)
        for idx, k in enumerate(top_k):
            block += "Recall@{:d}x = {:>4.2f} (%) ".format(k, tiou_recall[idx] * 100)
    return ("[RESULTS] Action detection results on {:s}.\n".format(dataset_name) + block
            + "\nAverage mAP: {:>4.2f} (%)".format(average_mAP * 100))
