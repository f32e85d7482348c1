"""Evaluate (or just save the predictions of) a trained ActionFormer checkpoint.

    python eval.py CONFIG CKPT [-epoch N] [-t TOPK] [--saveonly] [--device cpu|cuda]
                   [-b BATCH] [--amp bf16|fp16] [--opts KEY=VALUE ...]

CKPT is a checkpoint file, or an experiment folder: ``epoch_{N:03d}.pth.tar`` with ``-epoch N``,
else the last ``epoch_*.pth.tar`` in sorted order (never ``last.pth.tar`` or ``model_best``).
Only ``state_dict_ema`` is read (keys with or without the ``module.`` prefix; the reference's
checkpoints load as they are). Prints the mAP table ending with ``Average mAP: xx.xx (%)`` and
writes ``eval_metrics.json`` beside the checkpoint. ``--saveonly`` writes the predictions
(before score fusion) as ``eval_results.pkl`` and ActivityNet-style ``eval_results.json`` instead.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import time
from typing import Any, Dict, List, Optional


from libs.core import load_config
from libs.core.cli import run_main
from libs.datasets import make_data_loader, make_dataset
from libs.engine import resolve_checkpoint, resolve_device
from libs.modeling import make_meta_arch
from libs.modeling.checkpoint import load_model_weights
from libs.utils.cpu_memory import reuse_freed_memory
from libs.utils.train_utils import fix_random_seed, inference, load_checkpoint


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a point-based transformer for action localization")
    parser.add_argument("config", metavar="CONFIG", help="path to a config file")
    parser.add_argument("ckpt", metavar="CKPT", help="checkpoint file or experiment folder")
    parser.add_argument("-epoch", type=int, default=-1, help="checkpoint epoch to load from a folder")
    parser.add_argument("-t", "--topk", default=-1, type=int, help="max number of output actions (overrides test_cfg.max_seg_num)")
    parser.add_argument("--saveonly", action="store_true", help="only save the predictions, no evaluation")
    parser.add_argument("-p", "--print-freq", default=10, type=int, help="kept for compatibility (a progress bar is shown)")
    parser.add_argument("-b", "--batch-size", default=1, type=int, help="videos per inference batch (default 1)")
    parser.add_argument("--device", default=None, help="device, e.g. cpu or cuda:0 (default: the config's devices[0])")
    parser.add_argument("--amp", default=None, choices=["bf16", "fp16"], help="autocast inference (config key amp)")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    return parser.parse_args(argv)


def results_to_json(results: Dict[str, Any]) -> Dict[str, Any]:
    """Prediction dict of spec F.5 -> ActivityNet-style ``{"version", "results": {vid: [
    {"segment": [s, e], "label" (class id), "score"}]}, "external_data"}`` (seconds)."""
    per_video: Dict[str, list] = {}
    for vid, start, end, label, score in zip(results["video-id"], results["t-start"].tolist(),
                                             results["t-end"].tolist(), results["label"].tolist(),
                                             results["score"].tolist()):
        per_video.setdefault(vid, []).append({"segment": [start, end], "label": label, "score": score})
    return {"version": "ActionFormer", "results": per_video, "external_data": {}}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the evaluation; returns ``{'ckpt_file', 'results', 'metrics' (None with --saveonly)}``."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.opts)
    if args.topk > 0:
        cfg["test_cfg"]["max_seg_num"] = args.topk   # model.test_cfg is the same dict
    if args.amp is not None:
        cfg["amp"] = args.amp
    ckpt_file = resolve_checkpoint(args.ckpt, args.epoch)
    device = resolve_device(args.device or cfg["devices"][0])
    start = time.time()

    fix_random_seed(0, include_cuda=True)
    reuse_freed_memory()
    val_dataset = make_dataset(cfg["dataset_name"], False, cfg["val_split"], **cfg["dataset"])
    val_loader = make_data_loader(val_dataset, False, None, args.batch_size, cfg["loader"]["num_workers"])

    model = make_meta_arch(cfg["model_name"], **cfg["model"]).to(device)
    ckpt = load_checkpoint(ckpt_file, required=("state_dict_ema",))
    load_model_weights(model, ckpt, key="state_dict_ema")
    print(f"=> loaded {ckpt_file} (epoch {ckpt.get('epoch', '?')}, EMA weights); "
          f"{len(val_dataset)} videos of {val_dataset.split} on {device}", flush=True)
    del ckpt

    results = inference(val_loader, model, amp=cfg.get("amp"))
    print(f"Inference done: {len(results['video-id'])} predictions in {time.time() - start:0.2f} sec", flush=True)
    out_dir = os.path.dirname(os.path.abspath(ckpt_file))
    metrics = None
    if args.saveonly:
        with open(os.path.join(out_dir, "eval_results.pkl"), "wb") as fd:
            pickle.dump(results, fd)
        with open(os.path.join(out_dir, "eval_results.json"), "w") as fd:
            json.dump(results_to_json(results), fd)
        print(f"wrote {len(results['video-id'])} predictions to {out_dir}/eval_results.pkl and .json")
    else:
        from libs.utils import ANETdetection, metrics_to_dict, postprocess_results
        evaluator = ANETdetection(val_dataset.json_file, val_dataset.split[0],
                                  tiou_thresholds=val_dataset.get_attributes()["tiou_thresholds"])
        if isinstance(cfg["test_cfg"]["ext_score_file"], str):
            results = postprocess_results(results, cfg["test_cfg"]["ext_score_file"])
        mAP, avg_map, recall = evaluator.evaluate(results, verbose=True)
        metrics = metrics_to_dict(evaluator.tiou_thresholds, mAP, avg_map, recall, evaluator.top_k)
        with open(os.path.join(out_dir, "eval_metrics.json"), "w") as fd:
            json.dump(metrics, fd, indent=2)
    return {"ckpt_file": ckpt_file, "results": results, "metrics": metrics}


if __name__ == "__main__":
    run_main(main, "eval.py")
