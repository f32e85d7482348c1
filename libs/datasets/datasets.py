"""Data set registry, the shared loader base class, and the builders.

A loader reads one annotation JSON once, at construction, into an immutable list of
per-video records (segments in seconds); ``dataset[i]`` then reads that video's features lazily
and returns an item dict (feats ``D x T`` float32, segments ``N x 2`` in feature-grid
steps, labels ``N`` int64, ...), randomly truncated in training.

Problems in the data are reported with the file, the video id and the field (see
``ProblemReport``): an error (``ValueError``) where training or evaluation would be wrong, a
counted ``DataWarning`` where the reference tolerates the problem (e.g. skips the video).
"""
from __future__ import annotations

import json
import math
import numbers
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from ..core.registry import Registry
from .batching import LengthGroupedBatchSampler
from .data_utils import (FeatureReader, ProblemReport, seconds_to_grid, trivial_batch_collator,
                         truncate_feats, worker_init_reset_seed)

__all__ = ["DATASETS", "register_dataset", "ActionDataset", "make_dataset", "make_data_loader",
           "THUMOS14_MISLABELLED_TEST_VIDEOS"]

DATASETS = Registry("dataset")
register_dataset = DATASETS.register

# THUMOS14 test videos with wrong annotations; later work evaluates on the 211 other test videos
# (``dataset.exclude_videos``); the reference keeps all 213
THUMOS14_MISLABELLED_TEST_VIDEOS = ("video_test_0000270", "video_test_0001292")

# duration used when a JSON entry has none
_NO_DURATION = 1e8
# a segment reaching further than this (seconds) outside [0, duration] is reported
OUTSIDE_MARGIN_S = 1.0


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


class ActionDataset(Dataset):
    """Base class of the temporal action localization loaders (THUMOS, ANet, EPIC, Ego4D, custom).

    Subclasses set the class attributes below and override the small hooks
    (``_select_annotations``, ``_resample``, ``_clip_to_features``, ``_extra_fields``) where
    their data set differs.

    Args:
        is_training: training mode (random truncation; every video must have actions).
        split: subset names to keep (compared with the lower-cased JSON ``subset``).
        json_file: annotation JSON.
        feat_folder: feature folder (a list for several feature types, concatenated per step),
            or a ``.hdf5`` file path.
        feat_stride: frames between consecutive features; num_frames: frames per feature window.
        default_fps: fps of every video, or None to read ``fps`` per video from the JSON.
        downsample_rate: keep every n-th feature (the stride grows by the same factor).
        max_seq_len: longest training window (grid steps); trunc_thresh: fraction of an action a
            training window must contain to keep it; crop_ratio: ``[r0, r1]`` random crop of
            short training videos.
        input_dim: feature channels (int, or one int per folder); num_classes: classes.
        file_prefix, file_ext: feature file name = ``prefix + video_id + ext``.
        force_upsampling: ActivityNet only: resize every video to ``max_seq_len`` steps.
        widen_truncation: True: the training crop clips actions to its window widened by half a
            feature window on each side (the reference); False: to the window itself (TriDet's
            loaders); None: the loader's own rule (class attribute ``widen_truncation``).
        exclude_videos: video ids left out of every split (each must be in the JSON), e.g.
            THUMOS14's two mislabelled test videos (:data:`THUMOS14_MISLABELLED_TEST_VIDEOS`).
    """

    dataset_name = "action"
    tiou_range: Tuple[float, float, int] = (0.3, 0.7, 5)   # np.linspace arguments
    skip_missing_features = True    # False: a video without features is an error
    exact_num_classes = True        # False: the JSON may use fewer than num_classes classes
    report_empty_classes = False    # fill get_attributes()['empty_label_ids']
    requires_duration = False       # False: a missing duration means 1e8 s
    widen_truncation = True         # training crops clip actions to the window ± feat_offset

    def __init__(self, is_training: bool, split: Sequence[str], *, json_file: str,
                 feat_folder: Union[str, Sequence[str]], feat_stride: int, num_frames: int,
                 input_dim: Union[int, Sequence[int]], num_classes: int, max_seq_len: int,
                 trunc_thresh: float, default_fps: Optional[float] = None, downsample_rate: int = 1,
                 crop_ratio: Optional[Sequence[float]] = None, file_prefix: Optional[str] = None,
                 file_ext: Optional[str] = ".npy", force_upsampling: bool = False,
                 widen_truncation: Optional[bool] = None,
                 exclude_videos: Sequence[str] = ()) -> None:
        if isinstance(split, str):
            split = [split]
        if crop_ratio is not None and len(crop_ratio) != 2:
            raise ValueError(f"dataset.crop_ratio: expected [r0, r1] or null, got {crop_ratio!r}")
        if feat_stride <= 0:
            raise ValueError(f"dataset.feat_stride: must be > 0 frames, got {feat_stride}")
        self.is_training = is_training
        self.split = list(split)
        self.json_file = json_file
        self.feat_stride = feat_stride
        self.num_frames = num_frames
        self.default_fps = default_fps
        self.downsample_rate = downsample_rate
        self.max_seq_len = max_seq_len
        self.trunc_thresh = trunc_thresh
        self.crop_ratio = crop_ratio
        self.input_dim = input_dim
        self.num_classes = num_classes
        self.force_upsampling = force_upsampling
        if widen_truncation is not None:
            self.widen_truncation = widen_truncation
        self.exclude_videos = frozenset(exclude_videos)
        self.reader = self._feature_reader(feat_folder, file_prefix, file_ext, input_dim)

        report = ProblemReport(json_file)
        database = self._load_database(json_file)
        self.label_dict = self._build_label_dict(database, report)
        self._check_num_classes(report)
        self.data_list = self._build_video_list(database, report)
        report.finish()
        if not self.data_list:
            subsets = sorted({str(v.get("subset")) for v in database.values() if isinstance(v, dict)})
            raise ValueError(f"{json_file}: no usable video in subset(s) {self.split} "
                             f"(subsets in the file: {subsets})")
        self.empty_label_ids = self._find_empty_classes() if self.report_empty_classes else []

    # ------------------------------------------------------------------ annotation parsing
    @staticmethod
    def _load_database(json_file: str) -> Dict[str, Any]:
        try:
            with open(json_file, "r") as fid:
                data = json.load(fid)
        except FileNotFoundError:
            raise ValueError(f"dataset.json_file: '{json_file}' does not exist") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{json_file}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
            raise ValueError(f"{json_file}: expected a top-level object with a 'database' mapping "
                             f"video id -> entry")
        return data["database"]

    @property
    def class_agnostic(self) -> bool:
        """True when every action is trained as class 0 (ActivityNet with one class)."""
        return False

    def _build_label_dict(self, database: Dict[str, Any], report: ProblemReport) -> Dict[str, int]:
        """``label name -> label_id`` over every video of the JSON, all subsets.

        A name given two different ids, or an id outside ``[0, num_classes)``, is an error
        (the reference would silently train on the id of the last occurrence).
        """
        label_dict: Dict[str, int] = {}
        first_seen: Dict[str, str] = {}
        for vid, entry in database.items():
            if not isinstance(entry, dict):
                report.error(vid, f"entry is {type(entry).__name__}, expected an object")
                continue
            acts = entry.get("annotations")
            if acts is None:
                continue
            if not isinstance(acts, list):
                report.error(vid, f"annotations: expected a list, got {type(acts).__name__}")
                continue
            for idx, act in enumerate(acts):
                field = f"annotations[{idx}]"
                if not isinstance(act, dict) or not isinstance(act.get("label"), str):
                    report.error(vid, f"{field}.label: missing or not a string")
                    continue
                name, label_id = act["label"], act.get("label_id")
                if not isinstance(label_id, int) or isinstance(label_id, bool):
                    report.error(vid, f"{field}.label_id: expected an integer class index, got {label_id!r}")
                    continue
                if not self.class_agnostic and not 0 <= label_id < self.num_classes:
                    report.error(vid, f"{field}.label_id: {label_id} ('{name}') is outside "
                                      f"[0, {self.num_classes}) (dataset.num_classes = {self.num_classes})")
                    continue
                if name in label_dict and label_dict[name] != label_id:
                    report.error(vid, f"{field}.label_id: label '{name}' has id {label_id} here but "
                                      f"{label_dict[name]} in video '{first_seen[name]}'")
                    continue
                label_dict[name] = label_id
                first_seen.setdefault(name, vid)
        self._label_first_seen = first_seen
        return label_dict

    def _check_num_classes(self, report: ProblemReport) -> None:
        count = len(self.label_dict)
        if self.exact_num_classes and count != self.num_classes:
            report.error(None, f"the file names {count} classes but dataset.num_classes is "
                               f"{self.num_classes} ({self.dataset_name} needs them equal)")
        elif count > self.num_classes:
            report.error(None, f"the file names {count} classes, more than dataset.num_classes "
                               f"= {self.num_classes}")
        if count > self.num_classes:
            by_id: Dict[int, str] = {}
            for name, label_id in self.label_dict.items():
                if label_id in by_id:   # a second name for one class id: name both and where
                    other = by_id[label_id]
                    report.error(self._label_first_seen[name],
                                 f"label '{name}' has id {label_id}, the id of label '{other}' (video "
                                 f"'{self._label_first_seen[other]}'): one name per class id")
                else:
                    by_id[label_id] = name

    def _build_video_list(self, database: Dict[str, Any], report: ProblemReport) -> Tuple[dict, ...]:
        split = {s.lower() for s in self.split}
        for vid in sorted(self.exclude_videos - set(database)):
            report.error(vid, "listed in dataset.exclude_videos but not in the file")
        selected = []
        for vid, entry in database.items():
            if not isinstance(entry, dict) or vid in self.exclude_videos:
                continue
            subset = entry.get("subset")
            if not isinstance(subset, str):
                report.error(vid, f"subset: missing or not a string ({subset!r})")
            elif subset.lower() in split:
                selected.append((vid, entry))
        missing = self.reader.missing(vid for vid, _ in selected)
        videos = []
        for vid, entry in selected:
            if vid in missing:
                if self.skip_missing_features:
                    report.warn("videos skipped, no feature file (as the reference does)", vid)
                else:
                    report.error(vid, f"feature file not found: {missing[vid]}")
                continue
            video = self._parse_video(vid, entry, report)
            if video is not None:
                videos.append(video)
        return tuple(videos)

    def _parse_video(self, vid: str, entry: Dict[str, Any],
                     report: ProblemReport) -> Optional[Dict[str, Any]]:
        """One JSON entry -> record ``{id, fps, duration, segments (N x 2 s) | None, labels | None}``."""
        fps = self.default_fps if self.default_fps is not None else entry.get("fps")
        if fps is None:
            report.error(vid, "fps: missing, and dataset.default_fps is not set")
            return None
        if not _is_number(fps) or fps <= 0:
            report.error(vid, f"fps: expected frames per second > 0, got {fps!r}")
            return None
        if "duration" in entry:
            duration = entry["duration"]
            if not _is_number(duration) or duration <= 0:
                report.error(vid, f"duration: expected seconds > 0, got {duration!r}")
                return None
        elif self.requires_duration:
            report.error(vid, f"duration: missing ({self.dataset_name} needs it)")
            return None
        else:
            duration = _NO_DURATION

        acts = []
        for idx, act in enumerate(entry.get("annotations") or []):
            seg = act.get("segment") if isinstance(act, dict) else None
            if not (isinstance(seg, (list, tuple)) and len(seg) == 2 and all(_is_number(t) for t in seg)):
                report.error(vid, f"annotations[{idx}].segment: expected [start, end] in seconds, got {seg!r}")
            elif act.get("label") in self.label_dict:   # else already reported by the label pass
                acts.append(act)
        acts = self._select_annotations(vid, acts, report)
        kept = []
        for act in acts:
            start, end = act["segment"]
            if end <= start:
                # a zero/negative-length action can never be matched by a point: drop it
                report.warn("actions dropped, segment end <= start", vid)
                continue
            if start < -OUTSIDE_MARGIN_S or end > duration + OUTSIDE_MARGIN_S:
                report.warn(f"actions kept that reach more than {OUTSIDE_MARGIN_S:g} s outside "
                            f"[0, duration]", vid)
            kept.append(act)

        if kept:
            segments = np.asarray([act["segment"] for act in kept], dtype=np.float32)
            labels = np.asarray([0 if self.class_agnostic else self.label_dict[act["label"]]
                                 for act in kept], dtype=np.int64)
        elif self.is_training:
            report.error(vid, "annotations: no usable action; every training video needs one "
                              "(unlabelled videos belong in an evaluation subset)")
            return None
        else:
            segments = labels = None
        record = {"id": vid, "fps": fps, "duration": duration, "segments": segments, "labels": labels}
        record.update(self._extra_fields(entry))
        return record

    def _find_empty_classes(self) -> List[int]:
        """Class ids in ``[0, num_classes)`` that no label of the JSON uses."""
        used = set(self.label_dict.values())
        return [c for c in range(self.num_classes) if c not in used]

    # ------------------------------------------------------------------ hooks
    def _feature_reader(self, feat_folder: Union[str, Sequence[str]], file_prefix: Optional[str],
                        file_ext: Optional[str], input_dim: Union[int, Sequence[int]]) -> FeatureReader:
        """The reader of the feature files; default: :class:`FeatureReader` on these settings."""
        return FeatureReader(feat_folder, file_prefix, file_ext, input_dim)

    def _select_annotations(self, vid: str, acts: List[dict], report: ProblemReport) -> List[dict]:
        """Filter the (well-formed) annotations of one video; default: keep all."""
        return acts

    def _extra_fields(self, entry: Dict[str, Any]) -> Dict[str, Any]:
        """Entry fields passed through to the item untouched; default: none."""
        return {}

    def _resample(self, video: Dict[str, Any], feats: np.ndarray) -> Tuple[torch.Tensor, float, float]:
        """``T x D`` array -> (``D x T'`` tensor, feat_stride, num_frames), both in frames.

        Default: keep every ``downsample_rate``-th feature; the stride grows by that factor.
        """
        feats = feats[::self.downsample_rate]
        feat_stride = self.feat_stride * self.downsample_rate
        return torch.from_numpy(np.ascontiguousarray(feats.transpose())), feat_stride, self.num_frames

    def _clip_to_features(self, video: Dict[str, Any], segments: torch.Tensor, labels: torch.Tensor,
                          feat_len: int, feat_offset: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """Training-only clean-up of grid segments against the feature length; default: none."""
        return segments, labels

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return len(self.data_list)

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        video = self.data_list[idx]
        feats, feat_stride, num_frames = self._resample(video, self.reader.read(video["id"]))
        feat_offset = 0.5 * num_frames / feat_stride
        segments = labels = None
        if video["segments"] is not None:
            segments = seconds_to_grid(video["segments"], video["fps"], feat_stride, feat_offset)
            labels = torch.from_numpy(video["labels"])
            if self.is_training:
                segments, labels = self._clip_to_features(video, segments, labels, feats.shape[1],
                                                          feat_offset)
        item = {"video_id": video["id"],
                "feats": feats,                 # D x T
                "segments": segments,           # N x 2, grid steps
                "labels": labels,               # N
                "fps": video["fps"],
                "duration": video["duration"],  # seconds
                "feat_stride": feat_stride,     # frames
                "feat_num_frames": num_frames}  # frames
        item.update(self._extra_fields(video))
        if self.is_training and segments is not None:
            offset = feat_offset if self.widen_truncation else 0.0
            item = truncate_feats(item, self.max_seq_len, self.trunc_thresh, offset, self.crop_ratio)
        return item

    def get_attributes(self) -> Dict[str, Any]:
        """``{'dataset_name', 'tiou_thresholds' (evaluation tIoUs), 'empty_label_ids'}``."""
        return {"dataset_name": self.dataset_name,
                "tiou_thresholds": np.linspace(*self.tiou_range),
                "empty_label_ids": self.empty_label_ids}


def make_dataset(name: str, is_training: bool, split: Sequence[str], **kwargs) -> ActionDataset:
    """Build the loader registered as ``name`` with the config's ``dataset`` section."""
    return DATASETS.build(name, is_training, split, **kwargs)


def make_data_loader(dataset: Dataset, is_training: bool, generator: Optional[torch.Generator],
                     batch_size: int, num_workers: int,
                     sampler: Optional[Sampler] = None,
                     lengths: Optional[Sequence[int]] = None) -> DataLoader:
    """DataLoader with the identity collate.

    Training: shuffled (unless a ``sampler``, e.g. a DistributedSampler, is given), last partial
    batch dropped, workers re-seeded from torch's seed. Workers persist when there are any.
    ``lengths`` (training, one per item): batches of similar length
    (:class:`~libs.datasets.batching.LengthGroupedBatchSampler` over the same shuffled order).
    """
    common = dict(num_workers=num_workers, collate_fn=trivial_batch_collator,
                  worker_init_fn=worker_init_reset_seed if is_training else None,
                  generator=generator, persistent_workers=num_workers > 0)
    if is_training and lengths is not None:
        base = sampler if sampler is not None else RandomSampler(dataset, generator=generator)
        batches = LengthGroupedBatchSampler(base, lengths, batch_size, drop_last=True,
                                            generator=generator)
        return DataLoader(dataset, batch_sampler=batches, **common)
    return DataLoader(dataset, batch_size=batch_size, shuffle=is_training and sampler is None,
                      sampler=sampler, drop_last=is_training, **common)
