"""Checkpoint files of an experiment folder: which file to read, its saved config, and loading
its weights with errors that name the file."""
from __future__ import annotations

import glob
import os
import sys
from typing import Any, Dict, Optional

from torch import nn

from ..modeling.checkpoint import load_model_weights
from ..utils.train_utils import load_checkpoint

__all__ = ["resolve_checkpoint", "default_checkpoint", "saved_config", "load_weights", "load_training_checkpoint",
           "WEIGHT_KEYS"]

RESUME_FILE = "last.pth.tar"
# --weights choice -> checkpoint entry
WEIGHT_KEYS = {"ema": "state_dict_ema", "live": "state_dict"}


def resolve_checkpoint(path: str, epoch: int = -1) -> str:
    """A ``.pth.tar`` path as given; a folder -> ``epoch_{epoch:03d}.pth.tar`` or the last
    ``epoch_*.pth.tar`` in sorted order (as the reference's eval.py picks it); a folder with
    no ``epoch_*`` file but a ``last.pth.tar`` (an interrupted run) -> that file, with a note."""
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
    file = default_checkpoint(path)
    if file is None:
        raise FileNotFoundError(f"{path}: no epoch_*.pth.tar or {RESUME_FILE} checkpoint in this folder")
    if os.path.basename(file) == RESUME_FILE:
        print(f"note: {path} has no epoch_*.pth.tar (an interrupted run?); evaluating {RESUME_FILE}",
              file=sys.stderr, flush=True)
    return file


def default_checkpoint(folder: str) -> Optional[str]:
    """The file a folder resolves to without ``-epoch`` (None when it holds neither kind)."""
    files = sorted(glob.glob(os.path.join(folder, "epoch_*.pth.tar")))
    if files:
        return files[-1]
    last = os.path.join(folder, RESUME_FILE)
    return last if os.path.isfile(last) else None


def saved_config(ckpt_path: str) -> str:
    """The ``config.yaml`` train.py saved beside a checkpoint (file or folder)."""
    folder = ckpt_path if os.path.isdir(ckpt_path) else os.path.dirname(os.path.abspath(ckpt_path))
    config = os.path.join(folder, "config.yaml")
    if not os.path.isfile(config):
        raise FileNotFoundError(f"{folder}: no config.yaml saved here; give the config file as well "
                                f"(CONFIG CKPT)")
    return config


def load_weights(model: nn.Module, ckpt_file: str, weights: str = "ema") -> Dict[str, Any]:
    """Load ``--weights ema|live`` of ``ckpt_file`` into ``model``; returns the checkpoint dict.

    A mismatch names the file, the first mismatching keys with both shapes, and the config
    saved beside the checkpoint."""
    key = WEIGHT_KEYS[weights]
    ckpt = load_checkpoint(ckpt_file, required=(key,))
    _load_into(model, ckpt, key, ckpt_file)
    return ckpt


def _load_into(model: nn.Module, ckpt: Dict[str, Any], key: str, ckpt_file: str) -> None:
    try:
        load_model_weights(model, ckpt, key=key)
    except ValueError as exc:
        detail = str(exc).split("weights do not fit the model: ", 1)[-1]
        beside = os.path.join(os.path.dirname(os.path.abspath(ckpt_file)), "config.yaml")
        hint = (f"; it was trained with {beside}: evaluate with that config" if os.path.isfile(beside)
                else "; use the config it was trained with")
        raise ValueError(f"{ckpt_file}: {key} does not fit the model built from the config: "
                         f"{detail}{hint}") from None


def load_training_checkpoint(path: str, model: nn.Module, ema_model: Optional[nn.Module]) -> Dict[str, Any]:
    """Read a checkpoint to resume from and load its weights (``state_dict``, ``state_dict_ema``);
    returns the dict (optimizer, scheduler, ... still to restore)."""
    ckpt = load_checkpoint(path, required=("epoch", "state_dict", "state_dict_ema", "optimizer", "scheduler"))
    _load_into(model, ckpt, "state_dict", path)
    if ema_model is not None:
        _load_into(ema_model, ckpt, "state_dict_ema", path)
    return ckpt
