"""Reading prediction files and class-name tables, shared by the tools.

Prediction files (segments in seconds):

* ActivityNet-style results JSON ``{"results": {video_id: [{"segment": [s, e], "label": class
  name or id, "score": x}, ...]}}`` (written by ``eval.py --saveonly`` and ``tools/predict.py``);
* the reference's JSON ``{"database": {video_id: [{"segment", "label_id", "scores"}]}}``;
* the pickle of ``eval.py --saveonly`` (dict of ``video-id``, ``t-start``, ``t-end``, ``label``,
  ``score`` arrays). Only open pickles you trust.

Class-name tables (class id -> name): a label map text file (``<id><TAB><name>`` per line, as
``tools/ego4d_label_map.txt``, or one name per line, ids counting from 0), an annotation JSON
(``label`` / ``label_id`` of every annotation), or a results JSON carrying
``class_names`` (a list indexed by class id, as ``tools/predict.py`` writes).
"""
from __future__ import annotations

import json
import os
import pickle
from typing import Dict, Mapping, Optional, Union

import numpy as np
import pandas as pd

from .metrics import class_names_from_database, load_pred_seg_from_json

__all__ = ["PRED_COLUMNS", "load_predictions", "read_class_names", "read_predictions"]

PRED_COLUMNS = ("video-id", "t-start", "t-end", "label", "score")


def load_predictions(path: str) -> Union[str, dict]:
    """A prediction JSON path (to be parsed by ``ANETdetection``) or the dict from a pickle."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such predictions file")
    with open(path, "rb") as f:
        if f.read(64).lstrip().startswith((b"{", b"[")):
            return path
        f.seek(0)
        try:
            preds = pickle.load(f)
        except Exception as exc:   # noqa: BLE001 - any unpickling failure is a user error
            raise ValueError(f"{path}: neither a prediction JSON nor a readable pickle "
                             f"({type(exc).__name__}: {exc})") from None
    if not isinstance(preds, dict):
        raise ValueError(f"{path}: the pickle holds a {type(preds).__name__}, expected a dict "
                         f"with keys video-id, t-start, t-end, label, score")
    return preds


def read_predictions(path: str, class_names: Optional[Mapping[str, int]] = None) -> pd.DataFrame:
    """Any prediction file as a DataFrame with columns ``video-id`` (str), ``t-start``,
    ``t-end`` (seconds), ``label`` (int class id), ``score``, in file order.

    ``class_names`` (name -> id) resolves labels given as class names.
    """
    preds = load_predictions(path)
    if isinstance(preds, str):
        return load_pred_seg_from_json(path, class_names=class_names)
    missing = [key for key in PRED_COLUMNS if key not in preds]
    if missing:
        raise ValueError(f"{path}: missing keys {missing} (expected {', '.join(PRED_COLUMNS)})")
    columns = {key: np.asarray(preds[key]) for key in PRED_COLUMNS}
    if len({len(v) for v in columns.values()}) != 1:
        raise ValueError(f"{path}: {', '.join(PRED_COLUMNS)} must have the same length")
    return pd.DataFrame({"video-id": [str(v) for v in columns["video-id"]],
                         "t-start": columns["t-start"].astype(np.float64),
                         "t-end": columns["t-end"].astype(np.float64),
                         "label": columns["label"].astype(np.int64),
                         "score": columns["score"].astype(np.float64)})


def _names_from_text(path: str) -> Dict[int, str]:
    names: Dict[int, str] = {}
    with open(path, "r", encoding="utf8") as f:
        lines = [line.rstrip("\r\n") for line in f if line.strip()]
    for index, line in enumerate(lines):
        parts = line.split("\t", 1)
        if len(parts) == 2 and parts[0].strip().isdigit():
            names[int(parts[0])] = parts[1].strip()
        else:
            names[index] = line.strip()
    return names


def read_class_names(path: str) -> Dict[int, str]:
    """Class id -> name from a label map text file, an annotation JSON or a results JSON."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such label file")
    if not path.lower().endswith(".json"):
        return _names_from_text(path)
    try:
        with open(path, "r", encoding="utf8") as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(content, dict) and isinstance(content.get("database"), dict):
        return {int(i): name for name, i in class_names_from_database(content["database"]).items()}
    if isinstance(content, dict) and isinstance(content.get("class_names"), list):
        return {i: str(name) for i, name in enumerate(content["class_names"]) if name is not None}
    raise ValueError(f"{path}: no class names found (expected an annotation JSON with "
                     f"'database' or a results JSON with 'class_names')")
