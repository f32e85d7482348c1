"""Time the NMS backends and the evaluator on synthetic data.

    python tools/benchmark_eval.py [--repeat 3] [--skip-torch-nms]

Prints (1) batched soft-NMS and hard NMS time for 2,000 candidates x 20 classes with the C++
extension and with the PyTorch implementation, and (2) evaluator time (JSON loading and
``evaluate``) for 100,000 predictions over 200 classes and 5,000 videos.
Target on 2 CPU cores: the evaluation in under 5 s.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.utils import ANETdetection, batched_nms, cpp_nms_available  # noqa: E402


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def nms_inputs(num_per_class: int, num_classes: int, seed: int = 0):
    """Random candidates: 2,000 overlapping segments per class (grid steps)."""
    gen = torch.Generator().manual_seed(seed)
    n = num_per_class * num_classes
    centre = torch.rand(n, generator=gen) * 2000
    length = torch.rand(n, generator=gen) * 100 + 1
    segs = torch.stack([centre - length / 2, centre + length / 2], 1)
    scores = torch.rand(n, generator=gen)
    labels = torch.arange(num_classes).repeat_interleave(num_per_class)
    return segs, scores, labels[torch.randperm(n, generator=gen)]


def bench_nms(repeat: int, skip_torch: bool) -> None:
    segs, scores, labels = nms_inputs(2000, 20)
    print(f"NMS: {segs.shape[0]} candidates = 2,000 x 20 classes, multi-class, "
          f"max_seg_num 2000, torch threads {torch.get_num_threads()}")
    backends = (["cpp"] if cpp_nms_available() else []) + ([] if skip_torch else ["torch"])
    if not cpp_nms_available():
        print("  (C++ extension not built: run `python setup.py build_ext --inplace`)")
    for soft in (True, False):
        for backend in backends:
            seconds = best_time(lambda: batched_nms(
                segs, scores, labels, iou_threshold=0.1, min_score=0.001, max_seg_num=2000,
                use_soft_nms=soft, multiclass=True, sigma=0.5, backend=backend), repeat)
            print(f"  {'soft-NMS' if soft else 'hard NMS':8s} {backend:5s}: "
                  f"{seconds * 1000:9.1f} ms")


def synthetic_eval_files(folder: str, num_videos: int, num_classes: int, num_preds: int,
                         seed: int = 0):
    rng = np.random.default_rng(seed)
    database = {}
    for v in range(num_videos):
        events = []
        for _ in range(rng.integers(1, 5)):
            start = float(rng.uniform(0, 150))
            events.append({"label": f"c{(c := int(rng.integers(num_classes)))}",
                           "label_id": c,
                           "segment": [start, start + float(rng.uniform(1, 30))]})
        database[f"video_{v:05d}"] = {"subset": "validation", "duration": 200.0,
                                      "annotations": events}
    gt_file = os.path.join(folder, "bench_gt.json")
    with open(gt_file, "w") as f:
        json.dump({"database": database}, f)
    # predictions: half are jittered copies of GT segments (same video and class, so the
    # matching does real work), half are random
    gt = [(vid, ev["segment"][0], ev["segment"][1], ev["label_id"])
          for vid, entry in database.items() for ev in entry["annotations"]]
    pick = rng.integers(len(gt), size=num_preds // 2)
    num_random = num_preds - len(pick)
    jitter = rng.normal(0, 2, size=(len(pick), 2))
    rand_start = rng.uniform(0, 150, size=num_random)
    preds = {
        "video-id": [gt[i][0] for i in pick]
                    + [f"video_{v:05d}" for v in rng.integers(num_videos, size=num_random)],
        "t-start": np.r_[[gt[i][1] for i in pick] + jitter[:, 0], rand_start],
        "t-end": np.r_[[gt[i][2] for i in pick] + np.abs(jitter[:, 1]) + 0.5,
                       rand_start + rng.uniform(1, 30, size=num_random)],
        "label": np.r_[[gt[i][3] for i in pick], rng.integers(num_classes, size=num_random)],
        "score": rng.uniform(size=num_preds).astype(np.float32),
    }
    preds["t-end"] = np.maximum(preds["t-end"], preds["t-start"])
    pred_file = os.path.join(folder, "bench_pred.json")
    results = {}
    for i, v in enumerate(preds["video-id"]):
        results.setdefault(v, []).append({"segment": [float(preds["t-start"][i]),
                                                      float(preds["t-end"][i])],
                                          "label": int(preds["label"][i]),
                                          "score": float(preds["score"][i])})
    with open(pred_file, "w") as f:
        json.dump({"results": results}, f)
    return gt_file, pred_file, preds


def bench_eval(repeat: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        gt_file, pred_file, preds = synthetic_eval_files(folder, 5000, 200, 100_000)
        thresholds = np.linspace(0.1, 0.5, 5)
        print("Evaluator: 100,000 predictions, 200 classes, 5,000 videos, 5 tIoU, top_k (1, 5)")
        load = best_time(lambda: ANETdetection(gt_file, "validation", thresholds), repeat)
        det = ANETdetection(gt_file, "validation", thresholds)
        run = best_time(lambda: det.evaluate(preds, verbose=False), repeat)
        from_json = best_time(lambda: det.evaluate(pred_file, verbose=False), 1)
        print(f"  load ground truth           : {load:6.2f} s")
        print(f"  evaluate (dict of arrays)   : {run:6.2f} s   (target < 5 s)")
        print(f"  evaluate (results JSON file): {from_json:6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    parser.add_argument("--skip-torch-nms", action="store_true",
                        help="only time the C++ NMS")
    args = parser.parse_args()
    bench_nms(args.repeat, args.skip_torch_nms)
    bench_eval(args.repeat)


if __name__ == "__main__":
    main()
