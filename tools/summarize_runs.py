"""Mean ± std of mAP over several runs (e.g. the same config trained with different seeds).

    python tools/summarize_runs.py ckpt/thumos_i3d_seed1 ckpt/thumos_i3d_seed2 ckpt/thumos_i3d_seed3

Each argument is an experiment folder holding the ``eval_metrics.json`` that ``eval.py`` writes
(searched recursively; the newest one in a folder wins) or such a file itself. The standard deviation
is the sample one (ddof = 1), the spread to expect from one more seed.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Dict, List, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from libs.utils.io import write_json  # noqa: E402

METRICS_FILE = "eval_metrics.json"


def find_metrics_file(path: str) -> str:
    """The metrics file for ``path``: the file itself, or the newest ``eval_metrics*.json`` below it
    (eval.py writes ``eval_metrics.json`` for a folder's default checkpoint and
    ``eval_metrics_<checkpoint>.json`` for another one)."""
    if os.path.isfile(path):
        return path
    found = glob.glob(os.path.join(path, "**", "eval_metrics*.json"), recursive=True)
    if not found:
        raise FileNotFoundError(f"{path}: no {METRICS_FILE} found (run eval.py on this experiment first)")
    return max(found, key=os.path.getmtime)


def load_metrics(path: str) -> Dict:
    """Read one ``eval_metrics.json`` ({"tiou", "mAP", "average_mAP", "recall"}) and check its shape."""
    with open(path) as fd:
        metrics = json.load(fd)
    for key in ("tiou", "mAP", "average_mAP"):
        if key not in metrics:
            raise ValueError(f"{path}: missing field '{key}' (expected the schema eval.py writes)")
    if len(metrics["mAP"]) != len(metrics["tiou"]):
        raise ValueError(f"{path}: field 'mAP' has {len(metrics['mAP'])} values for {len(metrics['tiou'])} tIoUs")
    return metrics


def summarize(runs: Sequence[Dict]) -> Dict:
    """Mean and sample std (ddof=1; 0 for a single run) of per-tIoU mAP, average mAP and recall."""
    tiou = runs[0]["tiou"]
    for run in runs[1:]:
        if not np.allclose(run["tiou"], tiou):
            raise ValueError(f"runs were evaluated at different tIoU thresholds: {tiou} vs {run['tiou']}")
    ddof = 1 if len(runs) > 1 else 0

    def stats(values: List) -> Dict:
        arr = np.asarray(values, dtype=np.float64)
        return {"mean": arr.mean(axis=0).tolist(), "std": arr.std(axis=0, ddof=ddof).tolist()}

    summary = {"num_runs": len(runs), "tiou": list(tiou),
               "mAP": stats([r["mAP"] for r in runs]),
               "average_mAP": stats([r["average_mAP"] for r in runs]), "recall": {}}
    shared_k = set.intersection(*(set(r.get("recall", {})) for r in runs))
    for k in sorted(shared_k, key=float):
        summary["recall"][k] = stats([r["recall"][k] for r in runs])
    return summary


def format_summary(summary: Dict, names: Sequence[str]) -> str:
    """A plain-text table in percent."""
    lines = [f"{summary['num_runs']} runs: " + ", ".join(names)]
    recall_ks = list(summary["recall"])
    header = f"{'tIoU':>6} | {'mAP (%)':>15}" + "".join(f" | {'R@' + k + 'x (%)':>15}" for k in recall_ks)
    lines += [header, "-" * len(header)]
    for i, t in enumerate(summary["tiou"]):
        row = f"{t:6.2f} | {100 * summary['mAP']['mean'][i]:7.2f} ± {100 * summary['mAP']['std'][i]:5.2f}"
        for k in recall_ks:
            rec = summary["recall"][k]
            row += f" | {100 * rec['mean'][i]:7.2f} ± {100 * rec['std'][i]:5.2f}"
        lines.append(row)
    avg = summary["average_mAP"]
    lines.append(f"Average mAP: {100 * avg['mean']:.2f} ± {100 * avg['std']:.2f} (%)")
    return "\n".join(lines)


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="experiment folders or eval_metrics.json files")
    parser.add_argument("--json", help="also write the summary to this JSON file")
    args = parser.parse_args(argv)
    try:
        files = [find_metrics_file(p) for p in args.runs]
        summary = summarize([load_metrics(f) for f in files])
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary, args.runs))
    if args.json:
        write_json(summary, args.json, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
