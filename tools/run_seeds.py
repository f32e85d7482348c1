"""Train and evaluate one config with N seeds, then print mean ± std of the mAP.

    python tools/run_seeds.py CONFIG --seeds N --output NAME [--first-seed S] [--device DEV]
                              [--amp bf16|fp16] [--opts KEY=VALUE ...] [other train.py options]

Seed i (i = 0 … N-1) is ``S + i`` (``S`` defaults to the config's ``init_rand_seed``, so the first
run is the plain ``train.py`` run); it trains ``<output_folder>/<config name>_<NAME>_seed<seed>``
with ``--opts init_rand_seed=<seed>``, evaluates its last checkpoint with eval.py (same
``--device``, ``--amp`` and ``--opts``), and the table of ``tools/summarize_runs.py`` closes the
run. Options this tool does not know (``--eval-freq``, ``-c``, ``--ema-decay`` …) go to train.py.

Resumable: a seed whose folder already holds ``eval_metrics.json`` is not run again, and one with
an unfinished training continues from its ``last.pth.tar``. Per-seed wall times (training,
evaluation) and the summary are written to ``<output_folder>/<config name>_<NAME>_seeds.json``;
a later call keeps the times recorded for seeds it does not run again.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.core import load_config  # noqa: E402
from libs.core.cli import run_main  # noqa: E402
from tools import summarize_runs  # noqa: E402

train_script = importlib.import_module("train")
eval_script = importlib.import_module("eval")


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(prog="run_seeds.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("config", help="config file (YAML)")
    parser.add_argument("--seeds", type=int, required=True, help="number of seeds (N >= 1)")
    parser.add_argument("--output", required=True, help="experiment name; seeds add _seed<S>")
    parser.add_argument("--first-seed", type=int, default=None,
                        help="first seed (default: the config's init_rand_seed)")
    parser.add_argument("--device", default=None, help="device for training and evaluation")
    parser.add_argument("--amp", default=None, choices=["bf16", "fp16"])
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for training and evaluation")
    args, train_extra = parser.parse_known_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds: expected N >= 1, got {args.seeds}")
    return args, train_extra


def _shared_args(args) -> List[str]:
    shared = [] if args.device is None else ["--device", args.device]
    return shared + ([] if args.amp is None else ["--amp", args.amp])


def run_seed(args, train_extra: List[str], seed: int,
             earlier: Dict[int, Dict[str, Any]]) -> Dict[str, Any]:
    """Train (or finish training) and evaluate one seed; returns its record for the JSON
    (``earlier[seed]``, the record of a previous call, when the seed is already done)."""
    opts = ["--opts", *args.opts, f"init_rand_seed={seed}"]
    cfg = load_config(args.config, opts[1:])
    name = f"{args.output}_seed{seed}"
    folder = train_script.experiment_folder(cfg, args.config, name)
    metrics_file = os.path.join(folder, summarize_runs.METRICS_FILE)
    if os.path.isfile(metrics_file):
        print(f"=> seed {seed}: {metrics_file} exists, not run again", flush=True)
        return earlier.get(seed, {"seed": seed, "folder": folder, "train_s": None, "eval_s": None})
    resume = os.path.join(folder, train_script.RESUME_FILE)
    resume_args = ["--resume", resume] if os.path.isfile(resume) else []
    print(f"=> seed {seed}: {folder}" + (" (resuming)" if resume_args else ""), flush=True)
    start = time.time()
    train_script.main([args.config, "--output", name, *resume_args, *_shared_args(args),
                       *train_extra, *opts])
    trained = time.time()
    eval_script.main([args.config, folder, *_shared_args(args), *opts])
    return {"seed": seed, "folder": folder, "train_s": round(trained - start, 1),
            "eval_s": round(time.time() - trained, 1)}


def _write_json(path: str, payload: Dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fd:
        json.dump(payload, fd, indent=2)
    os.replace(tmp, path)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args, train_extra = parse_args(argv)
    cfg = load_config(args.config, args.opts)
    first = cfg["init_rand_seed"] if args.first_seed is None else args.first_seed
    out = train_script.experiment_folder(cfg, args.config, args.output) + "_seeds.json"
    earlier = {}
    if os.path.isfile(out):
        with open(out) as fd:
            earlier = {r["seed"]: r for r in json.load(fd).get("runs", [])}
    records = [run_seed(args, train_extra, first + i, earlier) for i in range(args.seeds)]
    folders = [r["folder"] for r in records]
    summary = summarize_runs.summarize([summarize_runs.load_metrics(
        summarize_runs.find_metrics_file(f)) for f in folders])
    print(summarize_runs.format_summary(summary, folders), flush=True)
    _write_json(out, {"config": args.config, "runs": records, "summary": summary})
    print(f"=> wrote {out}")
    return {"runs": records, "summary": summary}


if __name__ == "__main__":
    run_main(main, "run_seeds.py")
