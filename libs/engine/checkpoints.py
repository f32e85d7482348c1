"""Finding the checkpoint file of an experiment folder."""
from __future__ import annotations

import glob
import os

__all__ = ["resolve_checkpoint"]


def resolve_checkpoint(path: str, epoch: int = -1) -> str:
    """A ``.pth.tar`` path as given; a folder -> ``epoch_{epoch:03d}.pth.tar`` or the last
    ``epoch_*.pth.tar`` in sorted order (as the reference's eval.py picks it)."""
    if ".pth.tar" in path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: checkpoint file not found")
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: neither a checkpoint file nor a folder")
    if epoch > 0:
        file = os.path.join(path, f"epoch_{epoch:03d}.pth.tar")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file}: no checkpoint for epoch {epoch}")
        return file
    files = sorted(glob.glob(os.path.join(path, "epoch_*.pth.tar")))
    if not files:
        raise FileNotFoundError(f"{path}: no epoch_*.pth.tar checkpoint in this folder")
    return files[-1]
