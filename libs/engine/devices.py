"""Which torch device a run uses."""
from __future__ import annotations

import sys
from typing import Optional

import torch

__all__ = ["resolve_device"]


def resolve_device(requested: str, local_rank: Optional[int] = None) -> torch.device:
    """``cuda[:k]`` falls back to the CPU with a one-line warning when CUDA is unavailable;
    under ``torchrun`` a CUDA device becomes ``cuda:<local rank>``."""
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"warning: {requested} requested but CUDA is not available; running on the CPU "
              "(pass --device cpu to silence this)", file=sys.stderr, flush=True)
        return torch.device("cpu")
    if device.type == "cuda" and local_rank is not None:
        return torch.device("cuda", local_rank)
    return device
