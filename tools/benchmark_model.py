"""Speed and memory of the THUMOS model (configs/thumos_i3d.yaml) on random features.

Prints: training iteration time (forward + backward + AdamW step, batch 2 × 2048 × 2304),
inference time per video (2,304 steps, including NMS), and the peak memory of inference for
videos of 2,304 / 9,216 / 36,864 steps (each length in a fresh subprocess after a warm-up
forward: peak resident memory, VmHWM, on CPU; ``torch.cuda.max_memory_allocated`` on CUDA).

    python tools/benchmark_model.py [--quick] [--device cpu|cuda] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from libs.core import load_config  # noqa: E402
from libs.modeling import make_meta_arch  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                      "thumos_i3d.yaml")
MEMORY_LENGTHS = (2304, 9216, 36864)


def build_model(device: str) -> torch.nn.Module:
    cfg = load_config(CONFIG)
    return make_meta_arch(cfg["model_name"], **cfg["model"]).to(device)


def make_item(length: int, seed: int) -> Dict:
    g = torch.Generator().manual_seed(seed)
    segments = torch.tensor([[0.1, 0.15], [0.3, 0.5], [0.6, 0.62]]) * length
    return {"video_id": f"random_{seed}", "feats": torch.randn(2048, length, generator=g),
            "segments": segments, "labels": torch.tensor([0, 5, 19]), "fps": 30.0,
            "duration": length * 4 / 30.0, "feat_stride": 4, "feat_num_frames": 16}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_training(model: torch.nn.Module, device: str, iters: int) -> List[float]:
    """Seconds per iteration (after one warm-up iteration)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    batch = [make_item(2304, 0), make_item(2304, 1)]
    times = []
    for it in range(iters + 1):
        _sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        losses = model(batch)
        losses["final_loss"].backward()
        optimizer.step()
        _sync(device)
        if it > 0:
            times.append(time.perf_counter() - start)
    return times


def time_inference(model: torch.nn.Module, device: str, iters: int) -> List[float]:
    model.eval()
    item = make_item(2304, 2)
    times = []
    with torch.no_grad():
        for it in range(iters + 1):
            _sync(device)
            start = time.perf_counter()
            model([item])
            _sync(device)
            if it > 0:
                times.append(time.perf_counter() - start)
    return times


def _proc_status_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux; ru_maxrss cannot be reset and even survives exec)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def memory_probe(length: int, device: str) -> Dict[str, float]:
    """Run in a subprocess: peak memory of one inference forward of ``length`` steps."""
    model = build_model(device).eval()
    item = make_item(length, 3)
    with torch.no_grad():
        model([make_item(2304, 4)])                          # warm-up (allocator, kernels)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() / 2 ** 20
            start = time.perf_counter()
            model([item])
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2 ** 20
        else:
            base = _proc_status_mib("VmRSS")
            _reset_peak_rss()
            start = time.perf_counter()
            model([item])
            peak = _proc_status_mib("VmHWM")
    return {"length": length, "seconds": time.perf_counter() - start, "base_mib": base,
            "peak_mib": peak}


def _stats(times: List[float]) -> str:
    return f"{min(times):.3f} s (min), {sum(times) / len(times):.3f} s (mean of {len(times)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 timed iteration each; memory at 2,304 and 9,216 steps only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--probe", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe is not None:
        print(json.dumps(memory_probe(args.probe, args.device)))
        return

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads")
    model = build_model(args.device)
    n_train, n_infer = (1, 1) if args.quick else (3, 3)
    print(f"training iteration (fwd + bwd + AdamW, 2 × 2048 × 2304): "
          f"{_stats(time_training(model, args.device, n_train))}")
    print(f"inference per video (2304 steps, incl. NMS): "
          f"{_stats(time_inference(model, args.device, n_infer))}")
    del model

    lengths = MEMORY_LENGTHS[:2] if args.quick else MEMORY_LENGTHS
    for length in lengths:
        cmd = [sys.executable, os.path.abspath(__file__), "--probe", str(length),
               "--device", args.device] + (["--threads", str(args.threads)] if args.threads else [])
        result = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                           text=True).stdout.strip().splitlines()[-1])
        kind = "allocated" if args.device.startswith("cuda") else "RSS"
        print(f"inference {length:6d} steps: peak {kind} {result['peak_mib']:8.1f} MiB "
              f"(+{result['peak_mib'] - result['base_mib']:.1f} MiB over model and input), "
              f"{result['seconds']:.2f} s")


if __name__ == "__main__":
    main()
