"""``python train.py`` with a config listing several ``devices``: one DistributedDataParallel
process per device, equivalent to the reference's DataParallel over those devices.

The reference keeps ``loader.batch_size`` as the global batch (DataParallel splits it) and
multiplies the learning rate and the loader workers by ``len(devices)``. Here each of the N
processes loads ``batch_size / N`` videos with ``num_workers`` workers (N x num_workers in all),
and the optimiser uses ``N x learning_rate`` (the rule train.py applies to every multi-process
launch); DDP's gradient mean over ranks, with the loss normaliser summed over ranks, gives the
gradient of the global batch.
"""
from __future__ import annotations

import os
import socket
import sys
from typing import Any, Callable, Dict, List

import torch.multiprocessing as mp

from ..core import ConfigError
from ..core.cli import RunError, run_main
from ..utils import distributed as du

__all__ = ["launch_per_device", "per_device_batch"]


def per_device_batch(cfg: Dict[str, Any], config_path: str) -> int:
    """Videos per process: ``loader.batch_size`` split over the devices in a per-device launch
    (the reference's global batch), else ``loader.batch_size`` (torchrun: per process)."""
    if not du.launched_per_device():
        return cfg["loader"]["batch_size"]
    return _split_batch(cfg, config_path, du.get_world_size())


def _split_batch(cfg: Dict[str, Any], config_path: str, world: int) -> int:
    batch_size = cfg["loader"]["batch_size"]
    if batch_size % world:
        raise ConfigError(f"{config_path}: loader.batch_size {batch_size} does not split evenly over the "
                          f"{world} devices {cfg['devices']}; use a multiple of {world}")
    return batch_size // world


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, main: Callable, argv: List[str], world: int, port: int) -> None:
    os.environ.update({du.PER_DEVICE_ENV: "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    sys.argv = [sys.argv[0]] + list(argv)      # run_main reads --debug from here
    run_main(lambda: main(argv), "train.py")


def launch_per_device(main: Callable, argv: List[str], cfg: Dict[str, Any], config_path: str,
                      dry_run: bool, folder: str) -> Dict[str, Any]:
    """Run ``main(argv)`` in one process per ``cfg['devices']`` entry (rank k uses devices[k]);
    returns ``{'ckpt_folder': folder, 'history': []}`` (the processes write the outputs).

    A dry run checks in this process only (on ``devices[0]``)."""
    devices = cfg["devices"]
    _split_batch(cfg, config_path, len(devices))          # fail here, before any process starts
    if dry_run:
        return main(list(argv) + ["--device", devices[0]])
    print(f"starting one training process per device: {', '.join(devices)}", flush=True)
    try:
        mp.start_processes(_worker, args=(main, list(argv), len(devices), _free_port()),
                           nprocs=len(devices), join=True, start_method="spawn")
    except mp.ProcessExitedException as exc:
        raise RunError(f"the process for device {devices[exc.error_index]} stopped with exit status "
                       f"{exc.exit_code} (its error is printed above)") from None
    except mp.ProcessRaisedException as exc:
        raise RunError(f"a device process failed: {str(exc).strip().splitlines()[-1]}") from None
    return {"ckpt_folder": folder, "history": []}
