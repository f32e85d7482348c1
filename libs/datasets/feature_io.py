"""Feature files of your own videos, read lazily, on the model's feature grid.

A video's features are a ``T x D`` array (time-major, one row per clip feature) in

* a ``.npy`` file (only the rows asked for are read),
* a ``.npz`` file (the array ``feats``, or its only array; read whole),
* a ``.pt`` file (a tensor, or a dict holding ``feats``; memory-mapped when torch can, so the
  pages read may count in the resident memory until the file is closed), or
* a data set inside an HDF5 file (``.h5`` / ``.hdf5``; one video per data set, sliced lazily).

The video id is the file name without its extension, or the HDF5 data set name. Problems (missing
or unreadable file, wrong shape or dimension, NaN / Inf, no rows) raise :class:`FeatureError`, a
``ValueError`` whose message is one line naming the file, the video and the field.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import h5py
import numpy as np
import torch

from .data_utils import resize_to_fixed_length

__all__ = ["FEATURE_EXTENSIONS", "FeatureError", "FeatureFile", "VideoFeatures",
           "find_feature_files", "open_features"]

FEATURE_EXTENSIONS = (".npy", ".npz", ".pt", ".h5", ".hdf5")
_HDF5_EXTENSIONS = (".h5", ".hdf5")


class FeatureError(ValueError):
    """A feature file that cannot be used; the message is one line naming file and video."""


@dataclass(frozen=True)
class FeatureFile:
    """Where one video's features live: ``path`` and, inside an HDF5 file, the data set ``key``."""

    video_id: str
    path: str
    key: Optional[str] = None

    @property
    def where(self) -> str:
        """``path`` or ``path[key]``, for messages."""
        return f"{self.path}[{self.key}]" if self.key is not None else self.path


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _hdf5_videos(path: str) -> List[FeatureFile]:
    """One :class:`FeatureFile` per data set in the file (nested groups included)."""
    names: List[str] = []
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return [FeatureFile(name.split("/")[-1], path, name) for name in sorted(names)]


def find_feature_files(paths: Sequence[str]) -> Tuple[List[FeatureFile], List[str]]:
    """Expand files, folders (their feature files, not recursive) and HDF5 files into videos.

    Returns (videos in argument order, folders sorted by name; problems as one-line messages).
    A video id found twice is a problem; the first occurrence is kept.
    """
    videos: List[FeatureFile] = []
    problems: List[str] = []
    for path in paths:
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if _extension(n) in FEATURE_EXTENSIONS)
            if not names:
                problems.append(f"{path}: no feature files ({', '.join(FEATURE_EXTENSIONS)}) in "
                                f"this folder")
            files = [os.path.join(path, n) for n in names]
        elif os.path.isfile(path):
            if _extension(path) not in FEATURE_EXTENSIONS:
                problems.append(f"{path}: unsupported feature file type (expected one of "
                                f"{', '.join(FEATURE_EXTENSIONS)})")
                continue
            files = [path]
        else:
            problems.append(f"{path}: no such file or folder")
            continue
        for file in files:
            if _extension(file) in _HDF5_EXTENSIONS:
                try:
                    videos.extend(_hdf5_videos(file))
                except OSError as exc:
                    problems.append(f"{file}: unreadable HDF5 file ({exc})")
            else:
                videos.append(FeatureFile(os.path.splitext(os.path.basename(file))[0], file))
    seen = {}
    unique = []
    for video in videos:
        if video.video_id in seen:
            problems.append(f"{video.where}: video '{video.video_id}' already read from "
                            f"{seen[video.video_id]}; skipped")
            continue
        seen[video.video_id] = video.where
        unique.append(video)
    return unique, problems


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}


class _NpyRows:
    """Rows of a C-ordered 2-D ``.npy`` file (data from byte ``offset``), read on demand with
    plain file reads. Unlike a memory map, rows once read do not stay mapped into the process,
    so reading a long video window by window keeps the resident memory flat."""

    def __init__(self, path: str, offset: int, shape: Tuple[int, int], dtype: np.dtype) -> None:
        self.path, self.offset, self.shape, self.dtype = path, offset, shape, dtype

    def __getitem__(self, index: slice) -> np.ndarray:
        first, last, step = index.indices(self.shape[0])
        count = max(last - first, 0)
        with open(self.path, "rb") as f:
            f.seek(self.offset + first * self.shape[1] * self.dtype.itemsize)
            rows = np.fromfile(f, dtype=self.dtype, count=count * self.shape[1])
        return rows.reshape(count, self.shape[1])[::step]


def _open_npy(path: str):
    """:class:`_NpyRows` for a C-ordered numeric 2-D array, else the whole array."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version not in _NPY_HEADER_READERS:
            return np.load(path)
        shape, fortran_order, dtype = _NPY_HEADER_READERS[version](f)
        offset = f.tell()
    if fortran_order or dtype.hasobject or len(shape) != 2:
        return np.load(path)
    expected = offset + shape[0] * shape[1] * dtype.itemsize
    if os.path.getsize(path) < expected:
        raise ValueError(f"the file is truncated ({os.path.getsize(path)} bytes, the header "
                         f"announces {expected} for shape {shape})")
    return _NpyRows(path, offset, shape, dtype)


def _load_array(file: FeatureFile):
    """The raw ``T x D`` array-like (numpy array, torch tensor, h5py data set or lazy rows)."""
    ext = _extension(file.path)
    if ext == ".npy":
        with open(file.path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise FeatureError(f"{file.where}: video '{file.video_id}': unreadable feature "
                                   f"file (not a .npy array file)")
        return _open_npy(file.path)
    if ext == ".npz":
        with np.load(file.path) as data:
            keys = list(data.keys())
            if "feats" in keys:
                return data["feats"]
            if len(keys) == 1:
                return data[keys[0]]
            raise FeatureError(f"{file.where}: video '{file.video_id}': field 'feats' not found "
                               f"in the .npz (arrays: {', '.join(keys) or 'none'})")
    if ext == ".pt":
        try:
            obj = torch.load(file.path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:   # legacy (non-zip) serialisation cannot be memory-mapped
            obj = torch.load(file.path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict):
            if "feats" not in obj:
                raise FeatureError(f"{file.where}: video '{file.video_id}': field 'feats' not "
                                   f"found in the .pt dict (keys: {', '.join(map(str, obj))})")
            obj = obj["feats"]
        if not isinstance(obj, torch.Tensor):
            raise FeatureError(f"{file.where}: video '{file.video_id}': expected a tensor, got "
                               f"{type(obj).__name__}")
        return obj
    raise FeatureError(f"{file.where}: video '{file.video_id}': unsupported file type '{ext}'")


class VideoFeatures:
    """One video's features on the model's grid, read window by window.

    ``video[:, start:end]`` is a ``D x (end - start)`` float32 tensor of grid steps
    ``start .. end-1``; ``shape`` is ``(D, T)`` with ``T`` in grid steps. The grid is the one the
    data set loaders produce: every ``downsample_rate``-th stored feature, or, with
    ``force_upsampling`` (ActivityNet), the whole video linearly resized to ``max_seq_len``
    steps. ``feat_stride`` and ``num_frames`` (frames, possibly fractional) map grid steps to
    seconds. Non-finite values raise :class:`FeatureError` when the rows holding them are read.

    Use as a context manager (closes an HDF5 file).
    """

    def __init__(self, file: FeatureFile, input_dim: int, feat_stride: float, num_frames: float,
                 downsample_rate: int = 1, force_upsampling: bool = False,
                 max_seq_len: Optional[int] = None) -> None:
        self.file = file
        self.video_id = file.video_id
        self._h5 = None
        if _extension(file.path) in _HDF5_EXTENSIONS:
            self._h5 = h5py.File(file.path, "r")
            raw = self._h5[file.key]
        else:
            raw = _load_array(file)
        shape = tuple(raw.shape)
        prefix = f"{file.where}: video '{file.video_id}': field 'feats'"
        if len(shape) != 2:
            raise FeatureError(f"{prefix} has shape {shape}; expected T x D (2-D, time-major)")
        if shape[0] == 0:
            raise FeatureError(f"{prefix} is empty (T = 0)")
        if shape[1] != input_dim:
            hint = " (it looks transposed: store it time-major, T x D)" if shape[0] == input_dim else ""
            raise FeatureError(f"{prefix} has dimension {shape[1]} (shape {shape}), but the "
                               f"config's input_dim is {input_dim}{hint}")
        self._raw = raw
        self._rate = downsample_rate
        self._stored_stride, self._stored_frames = float(feat_stride), float(num_frames)
        self.num_stored = shape[0]
        self.feat_stride = float(feat_stride * downsample_rate)
        self.num_frames = float(num_frames)
        self._resized = None
        if force_upsampling:   # ActivityNet: the whole video on max_seq_len steps
            self._resized, self.feat_stride = resize_to_fixed_length(
                self._rows(0, self.num_stored, 1), feat_stride, num_frames, max_seq_len)
            self.num_frames = self.feat_stride
            self.shape = (input_dim, max_seq_len)
        else:
            self.shape = (input_dim, (self.num_stored + downsample_rate - 1) // downsample_rate)

    def _rows(self, first: int, last: int, step: int) -> torch.Tensor:
        """Stored rows ``first:last:step`` as a ``D x n`` float32 tensor, checked finite."""
        raw = self._raw[first:last:step]
        rows = raw.float() if isinstance(raw, torch.Tensor) else \
            torch.from_numpy(np.array(raw, dtype=np.float32))
        finite = torch.isfinite(rows)
        if not bool(finite.all()):
            row, channel = (~finite).nonzero()[0].tolist()
            raise FeatureError(f"{self.file.where}: video '{self.video_id}': field 'feats' "
                               f"contains NaN/Inf (first at stored step {first + row * step}, "
                               f"channel {channel})")
        return rows.t().contiguous()

    def __getitem__(self, index) -> torch.Tensor:
        if not (isinstance(index, tuple) and len(index) == 2 and index[0] == slice(None)
                and isinstance(index[1], slice) and index[1].step in (None, 1)):
            raise TypeError("VideoFeatures supports only [:, start:end]")
        start, end, _ = index[1].indices(self.shape[1])
        if self._resized is not None:
            return self._resized[:, start:end]
        return self._rows(start * self._rate, min(end * self._rate, self.num_stored), self._rate)

    def duration_estimate(self, fps: float) -> float:
        """Seconds spanned by the stored features: ``((T - 1) * stride + num_frames) / fps``
        with the stored ``T``, stride and window (the video is at least this long)."""
        return ((self.num_stored - 1) * self._stored_stride + self._stored_frames) / fps

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __enter__(self) -> "VideoFeatures":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_features(file: FeatureFile, dataset_cfg: dict, feat_stride: Optional[float] = None,
                  num_frames: Optional[float] = None) -> VideoFeatures:
    """:class:`VideoFeatures` of ``file`` with the grid settings of a config's ``dataset`` section.

    ``feat_stride`` / ``num_frames`` (frames) override the config's. Unreadable files raise
    :class:`FeatureError` with the reason.
    """
    input_dim = dataset_cfg["input_dim"]
    if isinstance(input_dim, (list, tuple)):
        input_dim = sum(input_dim)
    try:
        return VideoFeatures(file, input_dim,
                             dataset_cfg["feat_stride"] if feat_stride is None else feat_stride,
                             dataset_cfg["num_frames"] if num_frames is None else num_frames,
                             dataset_cfg.get("downsample_rate", 1),
                             bool(dataset_cfg.get("force_upsampling")),
                             dataset_cfg.get("max_seq_len"))
    except FeatureError:
        raise
    except (OSError, ValueError, RuntimeError, EOFError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FeatureError(f"{file.where}: video '{file.video_id}': unreadable feature file "
                           f"({reason})") from None

