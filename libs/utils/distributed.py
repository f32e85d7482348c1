"""Thin helpers over ``torch.distributed`` for multi-process launches (one process per device:
``torchrun``, or train.py's own launch for a config listing several devices).

Without one (no ``WORLD_SIZE`` in the environment) everything degrades to a single
process: rank 0, world size 1, reductions are identities.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist


def is_dist() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    """Rank 0 alone writes logs and checkpoints."""
    return get_rank() == 0


def launched_by_torchrun() -> bool:
    """True in a multi-process launch (``torchrun`` or one process per configured device)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


# set in each process started by ``libs.engine.launch`` (one process per ``devices`` entry)
PER_DEVICE_ENV = "ACTIONFORMER_PER_DEVICE"


def launched_per_device() -> bool:
    """True in a process started for one entry of the config's ``devices``."""
    return os.environ.get(PER_DEVICE_ENV) == "1"


def device_of_this_process(devices) -> str:
    """The config's ``devices[local rank]`` in a per-device launch, else ``devices[0]``."""
    if launched_per_device():
        return devices[int(os.environ.get("LOCAL_RANK", "0"))]
    return devices[0]


def init_distributed(device: torch.device) -> Optional[int]:
    """Join the process group (``nccl`` on CUDA, ``gloo`` on CPU) of a multi-process launch.

    Returns the local rank, or None for a plain single-process launch. Call before building
    the model; ``device`` decides the backend (with an index, it becomes the current CUDA device,
    else ``cuda:<local rank>`` does).
    """
    if not launched_by_torchrun():
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device.index if device.index is not None else local_rank)
    dist.init_process_group(backend=backend)
    return local_rank


def cleanup_distributed() -> None:
    if is_dist():
        dist.destroy_process_group()


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (a new tensor; identity for a single process)."""
    if not is_dist():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out
