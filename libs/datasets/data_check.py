"""Pre-flight check of every feature file of a split, before the first iteration.

``headers`` (default): each file exists, its header reads (``.npy`` / ``.npz`` member / HDF5
data set), the stored size matches the header (a truncated ``.npy`` is found), the shape is
``T x input_dim`` with ``T > 0``, several feature types agree on ``T``, and the annotations fall
inside the features (counted warning, as the loaders tolerate it). ``full`` also reads every
array and scans it for NaN/Inf. All problems are reported at once, with a count.
"""
from __future__ import annotations

import os
import time
import zipfile
from typing import Optional, Tuple

import h5py
import numpy as np

from .data_utils import FeatureReader, ProblemReport, seconds_to_grid, shape_problem

__all__ = ["check_split_features", "stored_shape"]


def _npy_header(f, path: str, size: Optional[int]) -> Tuple[int, ...]:
    """Shape from a ``.npy`` header; checks dtype and (when ``size`` is known) the data length."""
    try:
        version = np.lib.format.read_magic(f)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        shape, _, dtype = readers[version](f) if version in readers else \
            np.lib.format._read_array_header(f, version)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"not a .npy array ({str(exc).splitlines()[0]})") from None
    if dtype.hasobject:
        raise ValueError("holds Python objects (a pickled array), not numbers")
    if size is not None:
        expected = f.tell() + int(np.prod(shape)) * dtype.itemsize
        if size < expected:
            raise ValueError(f"truncated: {size} bytes, the header needs {expected}")
    return tuple(shape)


def stored_shape(reader: FeatureReader, folder: str, video_id: str) -> Tuple[int, ...]:
    """Shape of one stored feature array, from its header only (``ValueError`` / ``OSError``
    with the reason when it cannot be read)."""
    if reader._is_hdf5(folder):
        with h5py.File(folder, "r") as h5:
            return tuple(h5[reader.prefix + video_id].shape)
    path = reader.path(folder, video_id)
    if reader.ext == ".npz":
        try:
            with zipfile.ZipFile(path) as archive:
                if "feats.npy" not in archive.namelist():
                    raise ValueError(f"no array 'feats' in the .npz (found {sorted(archive.namelist())})")
                info = archive.getinfo("feats.npy")
                with archive.open(info) as f:
                    return _npy_header(f, path, info.file_size)
        except zipfile.BadZipFile as exc:
            raise ValueError(f"not a valid .npz ({exc})") from None
    with open(path, "rb") as f:
        return _npy_header(f, path, os.fstat(f.fileno()).st_size)


def _grid_length(dataset, num_stored: int) -> Optional[int]:
    if getattr(dataset, "force_upsampling", False):
        return None
    return (num_stored + dataset.downsample_rate - 1) // dataset.downsample_rate


def _combined_problem(reader: FeatureReader, vid: str, shapes) -> Optional[str]:
    """Several feature types of one video: equal lengths, and the total width when ``input_dim``
    is one number (the headers only; the loader checks the same on reading)."""
    if len(shapes) < 2:
        return None
    paths = [reader.path(f, vid) for f in reader.folders]
    if len({shape[0] for shape in shapes}) > 1:
        lengths = ", ".join(f"{p}: {shape[0]}" for p, shape in zip(paths, shapes))
        return f"video '{vid}': feature types have different lengths T ({lengths}); they must align"
    total = sum(shape[1] for shape in shapes)
    if not isinstance(reader.input_dim, (list, tuple)) and total != reader.input_dim:
        widths = " + ".join(str(shape[1]) for shape in shapes)
        return (f"{' + '.join(paths)}: video '{vid}': features have dimension {widths} = {total}, "
                f"but dataset.input_dim is {reader.input_dim}")
    return None


def _check_video(dataset, video: dict, report: ProblemReport, full: bool) -> int:
    """Check one video's feature file(s); returns how many files were looked at."""
    reader, vid = dataset.reader, video["id"]
    dims = reader.input_dim if isinstance(reader.input_dim, (list, tuple)) else \
        ([reader.input_dim] if len(reader.folders) == 1 else [None] * len(reader.folders))
    shapes = []
    for folder, dim in zip(reader.folders, dims):
        path = reader.path(folder, vid)
        if not reader._is_hdf5(folder) and not os.path.isfile(path):
            report.error(None, f"{path}: video '{vid}': feature file not found")
            continue
        try:
            shape = stored_shape(reader, folder, vid)
        except (ValueError, OSError, KeyError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            report.error(None, f"{path}: video '{vid}': cannot read the features ({reason})")
            continue
        problem = shape_problem(shape, dim, path, vid)
        if problem:
            report.error(None, problem)
            continue
        shapes.append(shape)
    if len(shapes) != len(reader.folders):
        return len(reader.folders)
    problem = _combined_problem(reader, vid, shapes)
    if problem:
        report.error(None, problem)
        return len(reader.folders)
    try:
        if full:
            reader.read(vid)
    except ValueError as exc:
        report.error(None, str(exc).splitlines()[0])
        return len(reader.folders)
    length = _grid_length(dataset, shapes[0][0])
    if length is not None and video["segments"] is not None:
        stride = dataset.feat_stride * dataset.downsample_rate
        grid = seconds_to_grid(video["segments"], video["fps"], stride, 0.5 * dataset.num_frames / stride)
        if bool((grid[:, 0] >= length).any()):
            report.warn("actions starting after the last feature (features shorter than the "
                        "annotations; check feat_stride / fps)", vid)
    return len(reader.folders)


def check_split_features(dataset, full: bool = False) -> None:
    """Check every feature file of ``dataset`` (an ActionDataset); raise one ``ValueError``
    listing every problem with a count, or print one summary line."""
    start = time.time()
    report = ProblemReport(f"feature check of split {dataset.split}")
    files = 0
    for video in dataset.data_list:
        files += _check_video(dataset, video, report, full)
    report.finish()
    what = "headers, shapes and values (NaN/Inf)" if full else "headers and shapes"
    print(f"data check: {files} feature files of split {dataset.split} OK ({what}, "
          f"{time.time() - start:.1f} s)", flush=True)
