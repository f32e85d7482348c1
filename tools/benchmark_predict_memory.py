"""Peak memory of tools/predict.py on long videos (windowed inference), measured per run.

    python tools/benchmark_predict_memory.py [--steps 27000 270000] [--config configs/thumos_i3d.yaml]
        [--workdir /tmp/predict_memory] [--whole 27000]

For each length, writes a ``steps x input_dim`` float32 ``.npy`` of random features (THUMOS rate:
27,000 steps = 1 h at 7.5 features/s), saves a random-weight checkpoint of the config's model, runs
``tools/predict.py`` in a subprocess and reports the subprocess's peak resident memory
(``ru_maxrss`` from ``os.wait4``) and wall time. ``--whole`` lengths are also run with one window
covering the whole video, for comparison.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from libs.core import load_config  # noqa: E402
from libs.modeling import make_meta_arch  # noqa: E402


def write_features(path: str, steps: int, dim: int, chunk: int = 10000) -> None:
    """Random ``steps x dim`` float32 features, written chunk by chunk (little RAM)."""
    if os.path.isfile(path):
        return
    rng = np.random.default_rng(0)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(steps, dim))
    for start in range(0, steps, chunk):
        end = min(start + chunk, steps)
        out[start:end] = rng.standard_normal((end - start, dim), dtype=np.float32)
    out.flush()
    del out


def run_predict(config: str, ckpt: str, feats: str, out: str, extra) -> tuple:
    """(peak RSS in MiB, wall seconds, return code) of one predict.py subprocess."""
    cmd = [sys.executable, os.path.join(REPO, "tools", "predict.py"), config, ckpt, feats,
           "--fps", "30", "--out", out, *extra]
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss / 1024, time.time() - start, os.waitstatus_to_exitcode(status)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[27000, 270000])
    parser.add_argument("--whole", type=int, nargs="*", default=[27000],
                        help="lengths also run as one window (whole-video inference)")
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "thumos_i3d.yaml"))
    parser.add_argument("--workdir", default="/tmp/predict_memory")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    cfg = load_config(args.config)
    torch.manual_seed(0)
    model = make_meta_arch(cfg["model_name"], **cfg["model"])
    ckpt = os.path.join(args.workdir, "random.pth.tar")
    torch.save({"epoch": 0, "state_dict_ema": model.state_dict()}, ckpt)
    dim = cfg["dataset"]["input_dim"]
    runs = [(steps, False) for steps in args.steps] + [(steps, True) for steps in args.whole]
    for steps, whole in runs:
        feats = os.path.join(args.workdir, f"video_{steps}.npy")
        write_features(feats, steps, dim)
        extra = ["--window", str(steps)] if whole else []
        rss, wall, code = run_predict(args.config, ckpt, feats,
                                      os.path.join(args.workdir, f"out_{steps}.json"), extra)
        mode = "whole video" if whole else "windowed"
        print(f"{steps} steps ({steps / 7.5 / 3600:.1f} h at 7.5 feat/s), {mode}: peak RSS "
              f"{rss:.0f} MiB, {wall:.0f} s, exit {code}", flush=True)


if __name__ == "__main__":
    main()
