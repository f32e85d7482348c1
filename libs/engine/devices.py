"""Which torch device a run uses."""
from __future__ import annotations

import sys
from typing import Optional

import torch

__all__ = ["resolve_device"]


def resolve_device(requested: str, local_rank: Optional[int] = None) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:K`` -> a torch device. CUDA falls back to the CPU with a
    one-line warning when it is unavailable; under ``torchrun`` a CUDA device becomes
    ``cuda:<local rank>``. Anything else (a typo, a GPU index that does not exist) is a
    ``ValueError`` naming the device."""
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise ValueError(f"device '{requested}': unknown device; expected cpu, cuda or cuda:K") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device '{requested}': not supported; expected cpu, cuda or cuda:K")
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"warning: {requested} requested but CUDA is not available; running on the CPU "
              "(pass --device cpu to silence this)", file=sys.stderr, flush=True)
        return torch.device("cpu")
    if device.type == "cuda" and local_rank is not None:
        return torch.device("cuda", local_rank)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device '{requested}': there are only {torch.cuda.device_count()} CUDA device(s)")
    return device
