"""Atomic output files: written to a temporary file beside the target, then renamed over it, so
that an interrupted or failed write never leaves a partial file nor destroys the previous one."""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
from typing import IO, Any, Iterator

__all__ = ["atomic_open", "write_json", "write_pickle"]


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs) -> Iterator[IO]:
    """``open(path, mode)``-like context: the file appears at ``path`` only when the block ends
    without an exception (``mode`` is ``'w'`` or ``'wb'``; text mode defaults to UTF-8)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w":
        kwargs.setdefault("encoding", "utf8")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(obj: Any, path: str, **kwargs) -> None:
    """``json.dump(obj)`` to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, **kwargs)


def write_pickle(obj: Any, path: str) -> None:
    """``pickle.dump(obj)`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        pickle.dump(obj, f)
