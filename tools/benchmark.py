"""Speed and memory of a THUMOS-sized model (configs/thumos_i3d.yaml, or --config): reference
formulation vs ours.

Side by side, with the same weights and inputs (random features, batch 2 × 2048 × 2304):

* ``reference`` — the reference's plain formulation (``Conv1d`` projections,
  channel-first LayerNorm written out, ``MaxPool1d``, Longformer-style chunked local attention),
  run under :func:`libs.modeling.blocks.reference_formulation`;
* ``ours`` — the default fast paths (channels-last GEMMs and NHWC convolutions, fused LayerNorm,
  O(T·w) band attention, chunked long-video inference; GitHub issue #7);

each in fp32 and with ``--amp bf16`` semantics (``torch.autocast`` around the forward). Rows:
training iteration (forward + backward + AdamW step), inference per video (2,304 steps, incl.
NMS), both with glibc keeping freed memory as train.py / eval.py set it (for both columns, so the
reference gains from it too); peak memory of whole-video inference at 2,304 / 9,216 / 36,864 steps
(fp32, one fresh subprocess per configuration: on CPU, peak resident memory (VmHWM) above the
resident memory after model, input and a warm-up forward; on CUDA,
``torch.cuda.max_memory_allocated`` above the allocated memory; the reference keeps its padded
input to the end of the forward, as its ``forward`` does); and efficiency: the model's FLOPs per
iteration (3 × forward, from ``tools/model_summary.py``) over the time, next to a 2048² matmul's
FLOP rate (the ceiling).
Also: inference per video of the fast paths with the NMS extension and with the PyTorch NMS
(what an install without the extension runs), and soft-NMS alone on 2,000 candidates (clustered
like one video's; 20 classes uniform or concentrated, or class-agnostic with voting; THUMOS test
settings), C++ vs PyTorch, on the CPU where NMS always runs.
Timed configurations run interleaved, round-robin, so that load from other processes spreads
over all of them; min and median are printed, and speed-ups are the median over rounds of the
ratio within the round (robust to the machine's speed drifting between rounds).

    python tools/benchmark.py [--quick] [--device cpu|cuda] [--threads N] [--repeats R] [--config CONFIG]

``--config`` times another model on the same THUMOS-shaped input, e.g. TriDet's
``configs/tridet/thumos_i3d.yaml`` ("reference" then means the plain formulation of the same layers)
or ``configs/temporalmaxer/temporalmaxer_thumos_i3d.yaml`` (its pooling levels have no separate
reference formulation: both columns differ only in the shared layers).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from libs.core import load_config  # noqa: E402
from libs.modeling import make_meta_arch  # noqa: E402
from libs.modeling.blocks import reference_formulation  # noqa: E402
from libs.utils.cpu_memory import reuse_freed_memory  # noqa: E402
from libs.utils.nms import auto_backend, batched_nms, cpp_nms_available  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "thumos_i3d.yaml")
TRAIN_LENGTH = 2304
MEMORY_LENGTHS = (2304, 9216, 36864)
IMPLS = ("reference", "ours")
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def precisions(device: str) -> List[str]:
    """fp32 and bf16 everywhere; fp16 too on CUDA (CPUs have no fast fp16 kernels)."""
    return ["fp32", "bf16", "fp16"] if device.startswith("cuda") else ["fp32", "bf16"]


def build_model(device: str, seed: int = 0, config: str = CONFIG) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = load_config(config)
    return make_meta_arch(cfg["model_name"], **cfg["model"]).to(device)


def make_item(length: int, seed: int) -> Dict:
    """A random THUMOS-like video: 2048 × ``length`` features, three actions (grid units)."""
    g = torch.Generator().manual_seed(seed)
    segments = torch.tensor([[0.1, 0.15], [0.3, 0.5], [0.6, 0.62]]) * length
    return {"video_id": f"random_{seed}", "feats": torch.randn(2048, length, generator=g),
            "segments": segments, "labels": torch.tensor([0, 5, 19]), "fps": 30.0,
            "duration": length * 4 / 30.0, "feat_stride": 4, "feat_num_frames": 16}


@contextlib.contextmanager
def mode(impl: str, precision: str, device: str) -> Iterator[None]:
    """The implementation (``reference`` / ``ours``) and the autocast of the forward."""
    dtype = AUTOCAST_DTYPES[precision]
    with (reference_formulation() if impl == "reference" else contextlib.nullcontext()), \
            torch.autocast(device.split(":")[0], dtype=dtype or torch.float32,
                           enabled=dtype is not None):
        yield


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], None], device: str,
           clock: Callable[[], float] = time.perf_counter) -> float:
    _sync(device)
    start = clock()
    fn()
    _sync(device)
    return clock() - start


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: List[Dict],
                  impl: str, precision: str, device: str) -> Callable[[], None]:
    """One iteration as train.py runs it (fp16: with a loss scaler, so that overflowing steps are
    skipped instead of spoiling the weights the other configurations share)."""
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=precision == "fp16")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with mode(impl, precision, device):
            loss = model(batch)["final_loss"]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


def inference_step(model: torch.nn.Module, item: Dict, impl: str, precision: str,
                   device: str) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad(), mode(impl, precision, device):
            model([item])
    return step


def round_robin(steps: Dict[str, Callable[[], None]], repeats: int, device: str,
                clock: Callable[[], float] = time.perf_counter) -> Dict[str, List[float]]:
    """One warm-up call each, then ``repeats`` rounds calling every step once per round."""
    for step in steps.values():
        step()
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(_timed(step, device, clock))
    return times


def matmul_rate(dtype: torch.dtype, device: str, repeats: int = 5) -> float:
    """FLOP/s of an n × n × n matrix product (best of ``repeats``; n = 2048 on CPU, 8192 on
    CUDA), as a matmul or, when faster, as the 1×1 NHWC convolution the CPU fast paths use
    (oneDNN; MKL's GEMM scales poorly on AMD CPUs)."""
    n = 8192 if device.startswith("cuda") else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    products = [lambda: a @ b]
    if not device.startswith("cuda"):
        a4 = a.T[None, :, None].contiguous(memory_format=torch.channels_last)   # 1 x n x 1 x n
        products.append(lambda: torch.nn.functional.conv2d(a4, b[:, :, None, None]))
    best = min(_timed(product, device) for product in products for _ in range(repeats + 1))
    return 2 * n ** 3 / best


def forward_flops_per_video(length: int, config: str) -> float:
    """FLOPs of one forward pass (backbone, neck, heads) on one video, from the model summary."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from model_summary import model_summary
    with torch.device("cpu"):
        model = build_model("cpu", config=config)
    return 2.0 * sum(row["macs"] for row in model_summary(model, length))


# ------------------------------------------------------------------------------------------
# NMS: C++ extension vs PyTorch
# ------------------------------------------------------------------------------------------
def nms_candidates(num: int = 2000, num_classes: int = 20, length: int = TRAIN_LENGTH,
                   seed: int = 0, skewed: bool = False):
    """Candidates like one video's: clustered around 30 action instances, 2-100 steps long,
    scores mostly low (uniform cubed); classes uniform or, ``skewed``, mostly the first few."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(30, generator=g) * length
    mid = centers[torch.randint(0, 30, (num,), generator=g)] + torch.randn(num, generator=g) * 20
    half = (torch.rand(num, generator=g) * 98 + 2) / 2
    scores = torch.rand(num, generator=g) ** 3
    u = torch.rand(num, generator=g)
    labels = ((u ** 4 if skewed else u) * num_classes).long()
    return torch.stack([mid - half, mid + half], 1), scores, labels


def model_candidates(model: torch.nn.Module, item: Dict, precision: str, device: str
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The candidates this model's inference passes to NMS for ``item`` (segments in
    seconds, scores, labels): its decoding run with NMS switched off."""
    nms_method = model.test_cfg["nms_method"]
    model.test_cfg["nms_method"] = "none"
    try:
        with torch.no_grad(), mode("ours", precision, device):
            result = model([item])[0]
    finally:
        model.test_cfg["nms_method"] = nms_method
    return result["segments"], result["scores"], result["labels"]


def nms_rows(test_cfg: Dict, repeats: int, inputs: Optional[Dict[str, Tuple]] = None
             ) -> List[str]:
    """Markdown rows: soft-NMS CPU time per video on one thread, C++ vs PyTorch, on 2,000
    generated candidates and on ``inputs`` (label -> segs, scores, labels; multi-class)."""
    backends = ("cpp", "torch") if cpp_nms_available() else ("torch",)
    rows = []
    cases = [(f"2,000 candidates, {label}", multiclass, nms_candidates(skewed=skewed))
             for label, multiclass, skewed in (("20 classes, uniform", True, False),
                                               ("20 classes, 80 % in 3", True, True),
                                               ("class-agnostic + voting", False, False))]
    cases += [(label, True, candidates) for label, candidates in (inputs or {}).items()]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)    # CPU time of tiny ops on several threads counts their spinning
    for label, multiclass, (segs, scores, labels) in cases:
        steps = {b: functools.partial(
            batched_nms, segs, scores, labels, test_cfg["iou_threshold"],
            test_cfg["min_score"], test_cfg["max_seg_num"], multiclass=multiclass,
            sigma=test_cfg["nms_sigma"], voting_thresh=test_cfg["voting_thresh"], backend=b)
            for b in backends}
        # CPU time of the process: milliseconds of many small ops stretch with the host's
        # load far more than one tight C++ loop does, CPU time does not
        times = round_robin(steps, repeats * 3, "cpu", clock=time.process_time)
        cells = [f"{statistics.median(times[b]) * 1e3:.2f} ms "
                 f"({len(scores) / statistics.median(times[b]) / 1e6:.2f} M/s)" for b in backends]
        ratio = (f"{_paired_speedup(times['torch'], times['cpp']):.2f}x"
                 if len(backends) == 2 else "n/a")
        rows.append(f"| soft-NMS, {label} | " + " | ".join(cells)
                    + (" | " if len(backends) == 2 else " | n/a | ") + ratio + " |")
    torch.set_num_threads(threads)
    return rows


def install_mode_step(model: torch.nn.Module, item: Dict, precision: str, device: str,
                      backend: str) -> Callable[[], None]:
    """Inference as it runs with the NMS extension (``cpp``) or without it (``torch``)."""
    step = inference_step(model, item, "ours", precision, device)

    def run() -> None:
        with auto_backend(backend):
            step()
    return run


def print_nms_tables(installs: Dict[str, List[float]], precs: List[str], repeats: int,
                     test_cfg: Dict, candidates: Dict[str, Tuple]) -> None:
    """Inference per install mode (``installs``: times keyed '<precision> cpp|torch') and
    soft-NMS alone, C++ vs PyTorch (also on ``candidates``: label -> segs, scores, labels)."""
    print("\ninference per video (ours, 2304 steps), s (min / median), by how NMS is installed")
    print("| | C++ extension | no extension (PyTorch NMS) | slowdown |\n|---|---|---|---|")
    for prec in precs:
        ext, none = installs.get(f"{prec} cpp"), installs[f"{prec} torch"]
        print(f"| ours {prec} | {_fmt_times(ext) if ext else 'not built'} | {_fmt_times(none)} | "
              + (f"{_paired_speedup(none, ext):.2f}x |" if ext else "n/a |"))
    print("\nNMS per video (CPU, THUMOS test settings), median CPU time (candidates per second)")
    print("| | C++ extension | PyTorch | PyTorch / C++ (paired median) |\n|---|---|---|---|")
    print("\n".join(nms_rows(test_cfg, repeats, candidates)))


# ------------------------------------------------------------------------------------------
# Peak memory, one subprocess per configuration
# ------------------------------------------------------------------------------------------
def _proc_status_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux; ru_maxrss cannot be reset and survives exec)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _hold_padded_input(model: torch.nn.Module) -> None:
    """Keep the padded input alive until the next call, as the reference's ``forward`` does (it
    holds ``batched_inputs`` to the end); this project's model frees it once embedded."""
    embed, held = model.backbone.embed, []

    def embed_and_hold(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        held[:] = [x]
        return embed(x, *args, **kwargs)
    model.backbone.embed = embed_and_hold


def memory_probe(length: int, impl: str, device: str, config: str) -> Dict[str, float]:
    """Peak memory of one fp32 inference forward of ``length`` steps above what model, input
    and two warm-up forwards (one at this length, so that the timing excludes first-call kernel
    selection) already hold (MiB), and its time (s)."""
    model = build_model(device, config=config).eval()
    item = make_item(length, 3)
    if impl == "reference":
        _hold_padded_input(model)
    with torch.no_grad(), mode(impl, "fp32", device):
        model([make_item(TRAIN_LENGTH, 4)])                 # warm-up (allocator, kernels)
        model([item])                                       # warm-up at this length's shapes
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() / 2 ** 20
            seconds = _timed(lambda: model([item]), device)
            peak = torch.cuda.max_memory_allocated() / 2 ** 20
        else:
            base = _proc_status_mib("VmRSS")
            _reset_peak_rss()
            seconds = _timed(lambda: model([item]), device)
            peak = _proc_status_mib("VmHWM")
    return {"seconds": seconds, "extra_mib": peak - base}


def run_probe(length: int, impl: str, device: str, threads: Optional[int],
              config: str) -> Dict[str, float]:
    cmd = [sys.executable, os.path.abspath(__file__), "--probe", str(length), "--impl", impl,
           "--device", device, "--config", config] + (["--threads", str(threads)] if threads else [])
    # glibc returns every block of 64 KiB or more to the system when freed (no adaptive mmap
    # threshold, no heap fragments): resident memory then follows the live tensors
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------
def _row(label: str, values: Dict[str, str]) -> str:
    return f"| {label} | " + " | ".join(values.values()) + " |"


def _fmt_times(times: List[float]) -> str:
    return f"{min(times):.3f} / {statistics.median(times):.3f}"


def _paired_speedup(base: List[float], times: List[float]) -> float:
    """Median over rounds of ``base[i] / times[i]``."""
    return statistics.median(b / t for b, t in zip(base, times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 timed rounds; memory at 2,304 and 9,216 steps only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds (default 7, --quick 2)")
    parser.add_argument("--config", default=CONFIG,
                        help="model config with 2048-d THUMOS input (default configs/thumos_i3d.yaml)")
    parser.add_argument("--probe", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="ours", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe is not None:
        print(json.dumps(memory_probe(args.probe, args.impl, args.device, args.config)))
        return
    device = args.device
    reuse_freed_memory()                        # as train.py / eval.py; not in the probes
    repeats = args.repeats or (2 if args.quick else 7)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    print(f"{os.path.relpath(args.config)}: torch {torch.__version__}, device {device} ({name}), "
          f"{torch.get_num_threads()} threads; times in s as min / median of {repeats} rounds")

    configs = [(impl, prec) for impl in IMPLS for prec in precisions(device)]
    columns = [f"{impl} {prec}" for impl, prec in configs]
    model = build_model(device, config=args.config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    model.train()
    batch = [make_item(TRAIN_LENGTH, 0), make_item(TRAIN_LENGTH, 1)]
    train = round_robin({f"{i} {p}": training_step(model, optimizer, batch, i, p, device)
                         for i, p in configs}, repeats, device)
    model.eval()
    item = make_item(TRAIN_LENGTH, 2)
    infer = round_robin({f"{i} {p}": inference_step(model, item, i, p, device)
                         for i, p in configs}, repeats, device)
    installs = round_robin({f"{p} {b}": install_mode_step(model, item, p, device, b)
                            for p in precisions(device) for b in ("cpp", "torch")
                            if b == "torch" or cpp_nms_available()}, repeats, device)
    candidates = {}
    for prec in precisions(device):
        segs, scores, labels = model_candidates(model, item, prec, device)
        candidates[f"this model's {len(scores):,} candidates ({prec}, random weights)"] = (
            segs, scores, labels)
    del model, optimizer

    base_train, base_infer = train["reference fp32"], infer["reference fp32"]
    flops = 3 * forward_flops_per_video(TRAIN_LENGTH, args.config) * len(batch)
    peak = {prec: matmul_rate(AUTOCAST_DTYPES[prec] or torch.float32, device)
            for prec in precisions(device)}
    matmul_size = 8192 if device.startswith("cuda") else 2048

    print(f"\n| | {' | '.join(columns)} |\n|---|" + "---|" * len(columns))
    print(_row("training iteration, s (2 × 2048 × 2304)", {k: _fmt_times(v) for k, v in train.items()}))
    print(_row("speed-up vs reference fp32 (paired median)",
               {k: f"{_paired_speedup(base_train, v):.2f}x" for k, v in train.items()}))
    print(_row("inference per video, s (2304 steps, incl. NMS)",
               {k: _fmt_times(v) for k, v in infer.items()}))
    print(_row("speed-up vs reference fp32 (paired median)",
               {k: f"{_paired_speedup(base_infer, v):.2f}x" for k, v in infer.items()}))
    print(_row("training GFLOP/s (model FLOPs / min time)",
               {k: f"{flops / min(v) / 1e9:.0f}" for k, v in train.items()}))
    print(_row(f"{matmul_size}² matrix product GFLOP/s (ceiling)",
               {k: f"{peak[k.split()[1]] / 1e9:.0f}" for k in columns}))
    print(f"\nmodel FLOPs per training iteration: {flops / 1e9:.0f} G "
          f"(3 × forward, batch {len(batch)})")

    print_nms_tables(installs, precisions(device), repeats,
                     load_config(args.config)["test_cfg"], candidates)

    kind = "allocated" if device.startswith("cuda") else "resident"
    lengths = MEMORY_LENGTHS[:2] if args.quick else MEMORY_LENGTHS
    print(f"\nwhole-video inference, fp32: peak {kind} memory above model + input, MiB (time, s)")
    print("| steps | reference | ours | ratio |\n|---|---|---|---|")
    for length in lengths:
        ref, ours = (run_probe(length, impl, device, args.threads, args.config) for impl in IMPLS)
        print(f"| {length} | {ref['extra_mib']:.0f} ({ref['seconds']:.2f}) | "
              f"{ours['extra_mib']:.0f} ({ours['seconds']:.2f}) | "
              f"{ours['extra_mib'] / ref['extra_mib']:.2f} |")


if __name__ == "__main__":
    main()
