"""Builders for small data sets in the real on-disk formats (spec A), used by the dataset tests."""
import json
import os
from typing import Any, Dict

import numpy as np


def write_json(path: str, database: Dict[str, Any]) -> str:
    """Write an annotation JSON ``{"version": ..., "database": database}`` (spec A.1)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fid:
        json.dump({"version": "test", "database": database}, fid)
    return path


def ramp(num_steps: int, dim: int, base: float = 0.0) -> np.ndarray:
    """``T x D`` features whose value tells where it came from: ``f[t, d] = base + 100 t + d``."""
    t = np.arange(num_steps, dtype=np.float64)[:, None]
    d = np.arange(dim, dtype=np.float64)[None, :]
    return base + 100.0 * t + d


def save_npy(folder: str, name: str, feats: np.ndarray) -> None:
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, name + ".npy"), feats)


def video(subset: str, duration: float = None, fps: float = None, acts=None) -> Dict[str, Any]:
    """One database entry; ``acts`` = [(label, label_id, start_s, end_s), ...] or None (no key)."""
    entry: Dict[str, Any] = {"subset": subset}
    if duration is not None:
        entry["duration"] = duration
    if fps is not None:
        entry["fps"] = fps
    if acts is not None:
        entry["annotations"] = [{"label": label, "label_id": lid, "segment": [s, e]}
                                for label, lid, s, e in acts]
    return entry


def dataset_cfg(json_file: str, feat_folder, **overrides) -> Dict[str, Any]:
    """A complete ``dataset`` config section (every key a loader accepts)."""
    cfg = dict(json_file=json_file, feat_folder=feat_folder, file_prefix=None, file_ext=".npy",
               feat_stride=16, num_frames=32, default_fps=None, input_dim=4, num_classes=2,
               downsample_rate=1, max_seq_len=2304, trunc_thresh=0.5, crop_ratio=None,
               force_upsampling=False)
    cfg.update(overrides)
    return cfg
