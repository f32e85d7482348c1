"""Evaluate any method's temporal action detections against an annotation JSON.

    python tools/evaluate.py --gt ANNOTATION_JSON --pred PREDICTIONS --split SUBSET
        [--tiou 0.3 0.4 0.5 0.6 0.7] [--topk 1 5] [--json OUT.json]
        [--dataset thumos|anet|epic|ego4d] [--drop-unknown-labels]

PREDICTIONS is one of
  * an ActivityNet-style results JSON: {"results": {video_id: [{"segment": [s, e],
    "label": class name or id, "score": x}, ...]}};
  * the reference's prediction JSON: {"database": {video_id: [{"segment": [s, e],
    "label_id": id, "scores": x}, ...]}};
  * the pickle written by ``eval.py --saveonly`` (dict of video-id, t-start, t-end, label,
    score arrays). Only open pickles you trust.
Segments are in seconds. Prints mAP and Recall@kx per tIoU and ends with
``Average mAP: xx.xx (%)``; ``--json`` writes {"tiou", "mAP", "average_mAP", "recall"} with
fractions in [0, 1]. Without --tiou the data set's thresholds are used (THUMOS 0.3:0.1:0.7,
ActivityNet 0.5:0.05:0.95, EPIC-Kitchens/Ego4D 0.1:0.1:0.5; guessed from the annotation file
name unless --dataset is given), else 0.3:0.1:0.7.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.utils.metrics import (DATASET_TIOU_THRESHOLDS, ANETdetection,  # noqa: E402
                                default_tiou_thresholds, guess_dataset_name, metrics_to_dict)
from libs.utils.prediction_io import load_predictions  # noqa: E402
from libs.utils.io import write_json  # noqa: E402


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="evaluate.py", description="Detection mAP and Recall@kx of temporal action "
        "detections against an annotation JSON.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--gt", required=True, help="annotation JSON ({'database': ...})")
    parser.add_argument("--pred", required=True, help="predictions (JSON or .pkl)")
    parser.add_argument("--split", required=True,
                        help="subset to evaluate, e.g. test (THUMOS) or validation")
    parser.add_argument("--tiou", type=float, nargs="+", default=None,
                        help="tIoU thresholds (default: the data set's)")
    parser.add_argument("--topk", type=int, nargs="+", default=[1, 5],
                        help="k of Recall@kx (default: 1 5)")
    parser.add_argument("--json", default=None, help="write the metrics to this JSON file")
    parser.add_argument("--dataset", choices=sorted(DATASET_TIOU_THRESHOLDS), default=None,
                        help="data set whose default tIoU list to use")
    parser.add_argument("--drop-unknown-labels", action="store_true",
                        help="drop predictions of classes absent from the ground truth "
                             "instead of remapping them like the reference (see FAQ)")
    return parser.parse_args(argv)


def format_table(tiou: np.ndarray, mAP: np.ndarray, average_mAP: float, recall: np.ndarray,
                 top_k: List[int]) -> str:
    header = "  tIoU |    mAP (%) |" + "|".join(f" Recall@{k}x (%) " for k in top_k)
    lines = [header, "-" * len(header)]
    for t, m, r in zip(tiou, mAP, recall):
        lines.append(f"  {t:4.2f} | {m * 100:10.2f} |"
                     + "|".join(f" {x * 100:14.2f} " for x in r))
    lines.append("-" * len(header))
    lines.append(f"   avg | {average_mAP * 100:10.2f} |"
                 + "|".join(f" {x * 100:14.2f} " for x in recall.mean(0)))
    lines.append("Average mAP: {:>4.2f} (%)".format(average_mAP * 100))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    dataset = args.dataset or guess_dataset_name(args.gt)
    tiou = np.asarray(args.tiou, dtype=np.float64) if args.tiou else \
        default_tiou_thresholds(dataset)
    if np.any((tiou <= 0) | (tiou > 1)):
        raise ValueError(f"--tiou: thresholds must lie in (0, 1], got {tiou.tolist()}")
    if any(k < 1 for k in args.topk):
        raise ValueError(f"--topk: k must be >= 1, got {args.topk}")
    preds = load_predictions(args.pred)
    detector = ANETdetection(args.gt, args.split, tiou_thresholds=tiou, top_k=args.topk,
                             dataset_name=dataset, drop_unknown_labels=args.drop_unknown_labels)
    if isinstance(preds, str):
        preds = detector.load_predictions(preds)
    if len(preds.get("score", [])) == 0:
        raise ValueError(f"{args.pred}: the prediction set is empty")
    mAP, average_mAP, recall = detector.evaluate(preds, verbose=False, source=args.pred)
    print(f"{args.pred}: {len(preds['score'])} predictions, split '{args.split}' of {args.gt} "
          f"({len(detector.video_ids)} videos, {len(detector.ground_truth)} ground-truth "
          f"segments, {len(detector.activity_index)} classes)")
    print(format_table(tiou, mAP, average_mAP, recall, args.topk))
    if args.json:
        write_json(metrics_to_dict(tiou, mAP, average_mAP, recall, args.topk), args.json, indent=2)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    # counted warnings of the evaluator as one "warning: ..." line each on stderr
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    lib_logger = logging.getLogger("libs")
    lib_logger.addHandler(handler)
    propagate, lib_logger.propagate = lib_logger.propagate, False
    try:
        return run(args)
    except (ValueError, KeyError, TypeError, FileNotFoundError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"evaluate.py: error: {message}", file=sys.stderr)
        return 2
    finally:
        lib_logger.removeHandler(handler)
        lib_logger.propagate = propagate


if __name__ == "__main__":
    sys.exit(main())
