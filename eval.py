"""Evaluate (and/or save the predictions of) a trained ActionFormer checkpoint.

    python eval.py [CONFIG] CKPT [-epoch N] [-t TOPK] [--saveonly | --save] [--weights ema|live]
                   [--device cpu|cuda] [-b BATCH] [--amp bf16|fp16] [--check-data headers|full]
                   [--debug] [--opts KEY=VALUE ...]

CKPT is a checkpoint file, or an experiment folder: ``epoch_{N:03d}.pth.tar`` with ``-epoch N``,
else the last ``epoch_*.pth.tar`` in sorted order (as the reference), else ``last.pth.tar`` (an
interrupted run; a note says so). Without CONFIG the ``config.yaml`` saved beside the checkpoint
is used. ``--weights ema`` (default, as the reference) reads ``state_dict_ema``, ``live`` reads
``state_dict`` (keys with or without the ``module.`` prefix: the reference's checkpoints load as
they are). Prints the mAP table ending with ``Average mAP: xx.xx (%)`` and writes
``eval_metrics.json`` beside the checkpoint (``eval_metrics_<checkpoint>[_live].json`` for another
checkpoint than the folder's default or for live weights), recording the checkpoint, its epoch,
the config and the weights. ``--saveonly`` writes the predictions (before score fusion) as
``eval_results.pkl`` and ActivityNet-style ``eval_results.json`` instead; ``--save`` does both. The
same ``_<checkpoint>[_live]`` suffix applies to these files, so no evaluation overwrites another's.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any, Dict, List, Optional

from libs.core import load_config
from libs.core.cli import run_main
from libs.datasets import make_data_loader, make_dataset
from libs.datasets.data_check import check_split_features
from libs.engine import resolve_checkpoint, resolve_device
from libs.engine.checkpoints import default_checkpoint, load_weights, saved_config
from libs.modeling import make_meta_arch
from libs.utils.cpu_memory import reuse_freed_memory
from libs.utils.io import write_json, write_pickle
from libs.utils.train_utils import fix_random_seed, inference


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a point-based transformer for action localization")
    parser.add_argument("paths", nargs="+", metavar="[CONFIG] CKPT",
                        help="config file (default: the config.yaml saved beside the checkpoint) and "
                             "checkpoint file or experiment folder")
    parser.add_argument("-epoch", "--epoch", type=int, default=-1,
                        help="checkpoint epoch to load from a folder (default: the last one)")
    parser.add_argument("-t", "--topk", default=-1, type=int,
                        help="max number of output actions (overrides test_cfg.max_seg_num; default: the config's)")
    parser.add_argument("--saveonly", action="store_true",
                        help="only save the predictions, no evaluation (default: evaluate)")
    parser.add_argument("--save", action="store_true",
                        help="evaluate and also save the predictions (default: evaluate only)")
    parser.add_argument("--weights", default="ema", choices=["ema", "live"],
                        help="EMA weights (default, as the reference) or the live training weights")
    parser.add_argument("-b", "--batch-size", default=1, type=int, help="videos per inference batch (default 1)")
    parser.add_argument("--device", default=None, help="device, e.g. cpu or cuda:0 (default: the config's devices[0])")
    parser.add_argument("--amp", default=None, choices=["bf16", "fp16"],
                        help="autocast inference (config key amp; default: the config's)")
    parser.add_argument("--check-data", default="headers", choices=["headers", "full"],
                        help="check every feature file's header and shape first (headers, default) or "
                             "also scan all values for NaN/Inf (full)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args(argv)
    if len(args.paths) > 2:
        parser.error(f"expected [CONFIG] CKPT, got {len(args.paths)} paths")
    args.ckpt = args.paths[-1]
    args.config = args.paths[0] if len(args.paths) == 2 else None
    return args


def results_to_json(results: Dict[str, Any]) -> Dict[str, Any]:
    """Prediction dict (``inference``) -> ActivityNet-style ``{"version", "results": {vid: [
    {"segment": [s, e], "label" (class id), "score"}]}, "external_data"}`` (seconds)."""
    per_video: Dict[str, list] = {}
    for vid, start, end, label, score in zip(results["video-id"], results["t-start"].tolist(),
                                             results["t-end"].tolist(), results["label"].tolist(),
                                             results["score"].tolist()):
        per_video.setdefault(vid, []).append({"segment": [start, end], "label": label, "score": score})
    return {"version": "ActionFormer", "results": per_video, "external_data": {}}


def output_suffix(ckpt_file: str, weights: str) -> str:
    """``''`` for the folder's default checkpoint with EMA weights, else ``_<checkpoint>[_live]``:
    evaluating another checkpoint of the same folder never overwrites the default's files."""
    folder = os.path.dirname(os.path.abspath(ckpt_file))
    default = default_checkpoint(folder)
    suffix = "" if default and os.path.samefile(default, ckpt_file) else \
        "_" + os.path.basename(ckpt_file).replace(".pth.tar", "")
    return suffix + ("_live" if weights == "live" else "")


def save_predictions(results: Dict[str, Any], out_dir: str, suffix: str) -> None:
    pkl = os.path.join(out_dir, f"eval_results{suffix}.pkl")
    write_pickle(results, pkl)
    write_json(results_to_json(results), pkl[:-len(".pkl")] + ".json")
    print(f"wrote {len(results['video-id'])} predictions to {pkl} and .json")


def score(cfg: Dict[str, Any], dataset, results: Dict[str, Any]) -> Dict[str, Any]:
    """Score fusion (when configured) and the mAP table; returns the metrics dict."""
    from libs.utils import ANETdetection, metrics_to_dict, postprocess_results
    evaluator = ANETdetection(dataset.json_file, dataset.split[0],
                              tiou_thresholds=dataset.get_attributes()["tiou_thresholds"],
                              exclude_videos=dataset.exclude_videos)
    if isinstance(cfg["test_cfg"]["ext_score_file"], str):
        results = postprocess_results(results, cfg["test_cfg"]["ext_score_file"])
    mAP, avg_map, recall = evaluator.evaluate(results, verbose=True)
    return metrics_to_dict(evaluator.tiou_thresholds, mAP, avg_map, recall, evaluator.top_k)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the evaluation; returns ``{'ckpt_file', 'results', 'metrics' (None with --saveonly)}``."""
    args = parse_args(argv)
    ckpt_file = resolve_checkpoint(args.ckpt, args.epoch)
    config = args.config or saved_config(ckpt_file)
    cfg = load_config(config, args.opts)
    if args.topk > 0:
        cfg["test_cfg"]["max_seg_num"] = args.topk   # model.test_cfg is the same dict
    if args.amp is not None:
        cfg["amp"] = args.amp
    device = resolve_device(args.device or cfg["devices"][0])
    start = time.time()

    fix_random_seed(0, include_cuda=True)
    reuse_freed_memory()
    val_dataset = make_dataset(cfg["dataset_name"], False, cfg["val_split"], **cfg["dataset"])
    check_split_features(val_dataset, full=args.check_data == "full")
    val_loader = make_data_loader(val_dataset, False, None, args.batch_size, cfg["loader"]["num_workers"])

    model = make_meta_arch(cfg["model_name"], **cfg["model"]).to(device)
    epoch = load_weights(model, ckpt_file, args.weights).get("epoch", "?")
    print(f"=> loaded {ckpt_file} (epoch {epoch}, {args.weights} weights); "
          f"{len(val_dataset)} videos of {val_dataset.split} on {device}", flush=True)

    results = inference(val_loader, model, amp=cfg.get("amp"))
    print(f"Inference done: {len(results['video-id'])} predictions in {time.time() - start:0.2f} sec", flush=True)
    out_dir = os.path.dirname(os.path.abspath(ckpt_file))
    suffix = output_suffix(ckpt_file, args.weights)
    metrics = None
    if args.saveonly or args.save:
        save_predictions(results, out_dir, suffix)
    if not args.saveonly:
        metrics = score(cfg, val_dataset, results)
        record = dict(metrics, checkpoint=os.path.abspath(ckpt_file), epoch=epoch,
                      config=os.path.abspath(config), weights=args.weights, opts=list(args.opts))
        write_json(record, os.path.join(out_dir, f"eval_metrics{suffix}.json"), indent=2)
    return {"ckpt_file": ckpt_file, "results": results, "metrics": metrics}


if __name__ == "__main__":
    run_main(main, "eval.py")
