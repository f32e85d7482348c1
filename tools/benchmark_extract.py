"""Clip throughput of the video feature extractors (model forward only, random weights).

    python tools/benchmark_extract.py [--backbones i3d r2plus1d_18] [--batch-size 4]
        [--rounds 5] [--device cpu|cuda] [--threads N]

Input clips have each backbone's own size: 16 x 224 x 224 for ``i3d`` (RGB), the weights'
crop for torchvision models (112 x 112 for ``r2plus1d_18``). Each round times one batch of every
(backbone, precision) pair in turn, after one warm-up batch each; the table gives clips per
second from the median and the best round. fp32, bf16 (autocast; CPU and GPU) and fp16 (GPU).
Decoding and preprocessing are not included: ``tools/extract_features.py`` overlaps them with
the model when ``--workers`` > 0.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.video.backbones import TorchvisionExtractor, build_extractor  # noqa: E402
from libs.video.options import ExtractorOptions  # noqa: E402


def clip_shape(extractor, batch: int, clip_len: int) -> Tuple[int, ...]:
    size = extractor.transform.crop_size[0] if isinstance(extractor, TorchvisionExtractor) \
        else extractor.opts.crop_size
    return (batch, 3, clip_len, size, size)


def timed(extractor, clips: torch.Tensor, dtype, device: torch.device) -> float:
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None \
        else contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad(), autocast:
        extractor((clips,))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["i3d", "r2plus1d_18"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--clip-len", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    if device.type == "cuda":
        dtypes["fp16"] = torch.float16
    torch.manual_seed(0)
    runs: Dict[Tuple[str, str], List[float]] = {}
    inputs = {}
    for name in args.backbones:
        extractor = build_extractor(ExtractorOptions(backbone=name, weights="none"), device)
        clips = torch.rand(clip_shape(extractor, args.batch_size, args.clip_len), device=device)
        inputs[name] = (extractor, clips * 2 - 1)
        for label, dtype in dtypes.items():
            timed(extractor, inputs[name][1], dtype, device)            # warm-up
            runs[(name, label)] = []
    for _ in range(args.rounds):
        for (name, label), times in runs.items():
            extractor, clips = inputs[name]
            times.append(timed(extractor, clips, dtypes[label], device))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"{where}; torch {torch.__version__}; batch {args.batch_size} clips of "
          f"{args.clip_len} frames; {args.rounds} rounds")
    print(f"{'backbone':<14}{'precision':<10}{'input':<18}{'clips/s (median)':>18}"
          f"{'clips/s (best)':>16}")
    for (name, label), times in runs.items():
        shape = "x".join(map(str, inputs[name][1].shape[2:]))
        print(f"{name:<14}{label:<10}{shape:<18}"
              f"{args.batch_size / statistics.median(times):>18.2f}"
              f"{args.batch_size / min(times):>16.2f}")


if __name__ == "__main__":
    main()
