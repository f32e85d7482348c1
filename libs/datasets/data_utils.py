"""Helpers shared by the data set loaders: problem reports, feature reading, time -> grid
conversion, random truncation, collate and worker seeding.

Units: annotation segments arrive in **seconds**; everything a loader returns is in
**feature-grid steps** (index ``i`` = the i-th feature vector, centred on frame
``i * feat_stride + num_frames / 2``).
"""
from __future__ import annotations

import os
import pickle
import random
import warnings
import zipfile
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import h5py
import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["DataWarning", "ProblemReport", "FeatureReader", "shape_problem", "seconds_to_grid", "truncate_feats",
           "trivial_batch_collator", "worker_init_reset_seed"]

# how many ids / messages a summary line shows before "... and N more"
_SHOWN = 5
_SHOWN_ERRORS = 20


class DataWarning(UserWarning):
    """A problem in the data that the loader tolerates, as the reference does (counted summary)."""


class ProblemReport:
    """Collects problems found while reading one annotation file and reports them together.

    ``error(...)`` records something that would make training or evaluation wrong; ``warn(...)``
    groups tolerated problems by kind. :meth:`finish` first emits one :class:`DataWarning` per kind
    (count and first ids), then raises one ``ValueError`` listing every error (count first).

    >>> report = ProblemReport("thumos14.json")
    >>> report.warn("skipped: no feature file", "video_test_0000004")
    >>> report.finish()   # warns "thumos14.json: skipped: no feature file: 1 video (video_test_0000004)"
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: List[str] = []
        self.warnings: Dict[str, List[str]] = defaultdict(list)

    def error(self, video_id: Optional[str], message: str) -> None:
        where = f"video '{video_id}': " if video_id is not None else ""
        self.errors.append(f"{where}{message}")

    def warn(self, kind: str, video_id: str) -> None:
        self.warnings[kind].append(video_id)

    def finish(self) -> None:
        for kind, ids in self.warnings.items():
            unique = list(dict.fromkeys(ids))
            shown = ", ".join(unique[:_SHOWN]) + (f", ... and {len(unique) - _SHOWN} more"
                                                  if len(unique) > _SHOWN else "")
            noun = "video" if len(unique) == 1 else "videos"
            count = f"{len(ids)} in {len(unique)} {noun}" if len(ids) != len(unique) else \
                f"{len(unique)} {noun}"
            warnings.warn(f"{self.source}: {kind}: {count} ({shown})", DataWarning, stacklevel=2)
        if self.errors:
            lines = self.errors[:_SHOWN_ERRORS]
            if len(self.errors) > _SHOWN_ERRORS:
                lines.append(f"... and {len(self.errors) - _SHOWN_ERRORS} more")
            plural = "problem" if len(self.errors) == 1 else "problems"
            raise ValueError(f"{self.source}: {len(self.errors)} {plural}:\n  " + "\n  ".join(lines))


class FeatureReader:
    """Finds, reads and checks the feature array(s) of one video.

    File of video ``v`` in folder ``f``: ``f/<file_prefix><v><file_ext>``. Containers:
    ``.npz`` -> the array under key ``feats``; a folder path containing ``.hdf5`` -> the data set
    ``<file_prefix><v>`` inside that HDF5 file; anything else -> ``np.load``. With several folders
    (Ego4D) the arrays are concatenated along channels in folder order.

    Args:
        feat_folder: one folder or a list of folders (one per feature type).
        input_dim: channels expected: an int (total over all folders) or one int per folder.
    """

    def __init__(self, feat_folder: Union[str, Sequence[str]], file_prefix: Optional[str],
                 file_ext: Optional[str], input_dim: Union[int, Sequence[int]]) -> None:
        self.folders = [feat_folder] if isinstance(feat_folder, str) else list(feat_folder)
        self.prefix = file_prefix or ""
        self.ext = file_ext or ""
        if isinstance(input_dim, (list, tuple)) and len(input_dim) != len(self.folders):
            raise ValueError(f"dataset.input_dim: {list(input_dim)} gives {len(input_dim)} widths but "
                             f"dataset.feat_folder names {len(self.folders)} folders: {self.folders}")
        self.input_dim = input_dim
        for folder in self.folders:
            if not os.path.exists(folder):
                raise ValueError(f"dataset.feat_folder: '{folder}' does not exist")

    @staticmethod
    def _is_hdf5(folder: str) -> bool:
        return ".hdf5" in folder

    def path(self, folder: str, video_id: str) -> str:
        """Where the features of ``video_id`` from ``folder`` live (for messages)."""
        if self._is_hdf5(folder):
            return f"{folder}[{self.prefix}{video_id}]"
        return os.path.join(folder, self.prefix + video_id + self.ext)

    def missing(self, video_ids: Iterable[str]) -> Dict[str, str]:
        """``{video_id: first missing path}`` for the videos lacking a file in some folder."""
        video_ids = list(video_ids)
        missing: Dict[str, str] = {}
        for folder in self.folders:
            if self._is_hdf5(folder):
                with h5py.File(folder, "r") as h5:
                    absent = [v for v in video_ids if self.prefix + v not in h5]
            else:
                absent = [v for v in video_ids if not os.path.exists(self.path(folder, v))]
            for vid in absent:
                missing.setdefault(vid, self.path(folder, vid))
        return missing

    def _read_one(self, folder: str, video_id: str) -> np.ndarray:
        path = self.path(folder, video_id)
        try:
            return self._load(folder, path, video_id)
        except ValueError as exc:
            if str(exc).startswith(path):
                raise
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        except (OSError, KeyError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: video '{video_id}': cannot read the features ({reason})")

    def _load(self, folder: str, path: str, video_id: str) -> np.ndarray:
        if self._is_hdf5(folder):
            with h5py.File(folder, "r") as h5:
                return np.asarray(h5[self.prefix + video_id][()], dtype=np.float32)
        if self.ext == ".npz":
            with np.load(path) as data:
                if "feats" not in data:
                    raise ValueError(f"{path}: video '{video_id}': no array 'feats' in the .npz "
                                     f"(found {sorted(data.keys())})")
                return data["feats"].astype(np.float32, copy=False)
        return np.load(path).astype(np.float32, copy=False)

    def read(self, video_id: str) -> np.ndarray:
        """Features of ``video_id`` as a ``T x D`` float32 array (time-major, as stored)."""
        if isinstance(self.input_dim, (list, tuple)):
            dims = list(self.input_dim)
        else:   # one total width: checked per file when there is one file, else after concatenation
            dims = [self.input_dim] if len(self.folders) == 1 else [None] * len(self.folders)
        arrays = []
        for folder, dim in zip(self.folders, dims):
            feats = self._read_one(folder, video_id)
            _check_feats(feats, dim, self.path(folder, video_id), video_id)
            arrays.append(feats)
        if len(arrays) == 1:
            return arrays[0]
        paths = [self.path(f, video_id) for f in self.folders]
        if len({a.shape[0] for a in arrays}) > 1:
            lengths = ", ".join(f"{p}: {a.shape[0]}" for p, a in zip(paths, arrays))
            raise ValueError(f"video '{video_id}': feature types have different lengths T ({lengths}); "
                             f"they are concatenated per step and must align")
        feats = np.concatenate(arrays, axis=1)
        if dims[0] is None and feats.shape[1] != self.input_dim:
            widths = " + ".join(str(a.shape[1]) for a in arrays)
            raise ValueError(f"{' + '.join(paths)}: video '{video_id}': features have dimension "
                             f"{widths} = {feats.shape[1]}, but dataset.input_dim is {self.input_dim}")
        return feats


def shape_problem(shape: Tuple[int, ...], dim: Optional[int], path: str, video_id: str) -> Optional[str]:
    """One line describing why a stored feature shape is not ``T x dim`` (T > 0), or None."""
    prefix = f"{path}: video '{video_id}': features"
    if len(shape) != 2:
        return f"{prefix} have shape {tuple(shape)}; expected T x D (2-D)"
    if shape[0] == 0:
        return f"{prefix} are empty (T = 0)"
    if dim is not None and shape[1] != dim:
        hint = (" (the array looks transposed: store it time-major, T x D)"
                if shape[0] == dim else "")
        return (f"{prefix} have dimension {shape[1]} (shape {tuple(shape)}), "
                f"but dataset.input_dim is {dim}{hint}")
    return None


def _check_feats(feats: np.ndarray, dim: Optional[int], path: str, video_id: str) -> None:
    """Raise a one-line ValueError for a feature array that is not a finite ``T x dim`` matrix."""
    problem = shape_problem(feats.shape, dim, path, video_id)
    if problem:
        raise ValueError(problem)
    finite = np.isfinite(feats)
    if not finite.all():
        step, channel = np.argwhere(~finite)[0]
        raise ValueError(f"{path}: video '{video_id}': features contain {int((~finite).sum())} NaN/Inf "
                         f"values (first at step {step}, channel {channel})")


def seconds_to_grid(segments: np.ndarray, fps: float, feat_stride: float,
                    feat_offset: float) -> torch.Tensor:
    """Seconds -> feature-grid coordinates: ``t * fps / feat_stride - feat_offset``.

    Args:
        segments: ``N x 2`` float32 array, seconds.
        fps: frames per second; feat_stride: frames between features (effective, after
            down-sampling); feat_offset: ``0.5 * num_frames / feat_stride`` (grid steps).
    Returns:
        ``N x 2`` float32 tensor, grid steps (small negative values are possible). The float32
        operations run in the reference's order, so the values match it bit for bit.
    """
    return torch.from_numpy(segments * fps / feat_stride - feat_offset)


def truncate_feats(item: Dict[str, Any], max_seq_len: int, trunc_thresh: float, offset: float,
                   crop_ratio: Optional[Sequence[float]] = None,
                   max_num_trials: int = 200) -> Dict[str, Any]:
    """Random temporal crop of a training item, using Python's ``random`` module.

    Args:
        item: dict with ``feats`` (D x T), ``segments`` (N x 2, grid steps), ``labels`` (N).
        max_seq_len: longest window kept (grid steps); trunc_thresh: the fraction of an action
            that must lie in the window for it to be kept; offset: ``feat_offset`` (grid steps),
            by which the window is widened on both sides when clipping actions; crop_ratio:
            ``[r0, r1]``: a video no longer than ``max_seq_len`` is cropped to a random length in
            ``[round(r0 * T), round(r1 * T)]``.
    Returns:
        ``item`` itself when no crop is drawn, else a new dict with feats ``D x W``, the kept
        segments clipped to the widened window and shifted by its start, and their labels. After
        ``max_num_trials`` windows without any kept action the last window is used anyway.
    """
    feat_len = item["feats"].shape[1]
    num_segs = item["segments"].shape[0]
    if feat_len <= max_seq_len:
        if crop_ratio is None:
            return item
        max_seq_len = random.randint(max(round(crop_ratio[0] * feat_len), 1),
                                     min(round(crop_ratio[1] * feat_len), feat_len))
        if max_seq_len == feat_len:
            return item

    # new tensors replace feats / segments / labels below; a shallow copy leaves the input intact
    item = dict(item)
    segs = item["segments"]
    for _ in range(max_num_trials):
        st = random.randint(0, feat_len - max_seq_len)
        ed = st + max_seq_len
        window = torch.as_tensor([st, ed], dtype=torch.float32)[None].repeat(num_segs, 1)
        left = torch.maximum(window[:, 0] - offset, segs[:, 0])
        right = torch.minimum(window[:, 1] + offset, segs[:, 1])
        inter = (right - left).clamp(min=0)
        keep = (inter / torch.abs(segs[:, 1] - segs[:, 0])) >= trunc_thresh
        if keep.sum().item() > 0:
            break

    item["feats"] = item["feats"][:, st:ed].clone()
    item["segments"] = torch.stack((left[keep], right[keep]), dim=1) - st
    item["labels"] = item["labels"][keep].clone()
    return item


def trivial_batch_collator(batch: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Identity collate: a batch is the list of item dicts; the model pads."""
    return batch


def worker_init_reset_seed(worker_id: int) -> None:
    """Re-seed numpy, ``random`` and ``PYTHONHASHSEED`` in a loader worker from torch's seed."""
    seed = torch.initial_seed() % 2 ** 31
    np.random.seed(seed)
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def resize_to_fixed_length(feats: torch.Tensor, feat_stride: float, num_frames: float,
                           max_seq_len: int) -> Tuple[torch.Tensor, float]:
    """ActivityNet's ``force_upsampling``: ``D x T0`` features -> ``D x max_seq_len``.

    Linear interpolation with ``align_corners=False`` (identity when ``T0 == max_seq_len``).
    Returns the resized features and the effective stride in frames,
    ``((T0 - 1) * feat_stride + num_frames) / max_seq_len``, which is also the effective window:
    every resized step covers the same share of the frames the ``T0`` windows span.
    """
    num_stored = feats.shape[-1]
    feat_stride_eff = float((num_stored - 1) * feat_stride + num_frames) / max_seq_len
    if num_stored != max_seq_len:
        feats = F.interpolate(feats[None], size=max_seq_len, mode="linear", align_corners=False)[0]
    return feats, feat_stride_eff
