"""Convert the official Ego4D Moment Queries files into what the ``ego4d`` loader reads.

Input (the official downloads), laid out as the reference expects::

    ./annotations/moments_train.json, ./annotations/moments_val.json
    ./features/slowfast8x8_r101_k400/<video_uid>.pt     (N x 2304, 32-frame windows, stride 16)
    ./features/omnivore_video_swinl/<video_uid>.pt      (N x 1536)
    ./ego4d_label_map.txt   (optional; else the copy shipped next to this script)

Output::

    ./annotations/ego4d.json                             clip-level annotation JSON (the common format)
    ./features/{slowfast,omnivore}_features/<clip_uid>.npy   per-clip T x D float32

Run without arguments from that folder (``python tools/convert_ego4d_trainval.py``) or name each
path with a flag. The result equals the reference script's output, including its quirks: the
clip is aligned to the 16-frame feature grid, its features are sliced end-exclusively (the last
fully covered window is dropped), segments, duration and fps are rounded to 2 decimals, the
primary labels of all annotators are pooled, and clips without annotations get feature files but
no JSON entry. Where the reference crashes this script skips and reports instead: a video
without its SlowFast file, a clip of zero duration, a clip whose window runs past the features.
A label missing from the label map is reported (with every other one) before anything is written.
Re-running overwrites the outputs with the same content.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from libs.utils.io import write_json  # noqa: E402
from tqdm import tqdm

CLIP_SIZE = 32    # frames per feature window
STRIDE = 16       # frames between feature windows
MIN_ACTION_S = 0.25
FPS_RANGE = (10, 100)
SUBSETS = {"train": "training", "val": "validation"}
SHIPPED_LABEL_MAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ego4d_label_map.txt")


def load_label_map(path: str) -> Dict[str, int]:
    """``<3-digit id>\\t<name>`` per line -> ``{name: id}`` (names keep their literal quotes)."""
    label_map = {}
    with open(path, "r") as fid:
        for line_no, line in enumerate(fid, 1):
            if not line.strip():
                continue
            fields = line.strip().split("\t")
            if len(fields) != 2 or not fields[0].isdigit():
                raise ValueError(f"{path}:{line_no}: expected '<id>\\t<label name>', got {line.rstrip()!r}")
            label_map[fields[1]] = int(fields[0])
    return label_map


def plan_clip(clip: Dict[str, Any], subset: str, label_map: Dict[str, int],
              where: str, problems: List[str]) -> Optional[Dict[str, Any]]:
    """Grid alignment, feature slice and annotations of one clip.

    Returns ``{'clip_uid', 'si', 'ei', 'entry'}`` (feature rows ``si:ei``; ``entry`` is the JSON
    record, None without annotations) or ``{'clip_uid', 'skip': reason}``. The arithmetic runs in
    the reference's order so that the rounded values match it exactly.
    """
    cid = clip["clip_uid"]
    ss = max(float(clip["video_start_sec"]), 0)
    es = float(clip["video_end_sec"])
    sf = max(int(clip["video_start_frame"]), 0)
    ef = int(clip["video_end_frame"])
    duration = es - ss          # seconds
    frames = ef - sf
    if duration <= 0:
        return {"clip_uid": cid, "skip": "clips of zero or negative duration"}
    fps = frames / duration
    if fps < FPS_RANGE[0] or fps > FPS_RANGE[1]:
        return {"clip_uid": cid, "skip": f"clips with fps outside [{FPS_RANGE[0]}, {FPS_RANGE[1]}]"}

    # extend the clip to whole feature windows: back to the grid, forward to a window end
    prepend_frames = sf % STRIDE
    prepend_sec = prepend_frames / fps
    duration += prepend_sec
    frames += prepend_frames
    append_frames = 0
    if (frames - CLIP_SIZE) % STRIDE:
        append_frames = STRIDE - (frames - CLIP_SIZE) % STRIDE
        duration += append_frames / fps
        frames += append_frames
    si = (sf - prepend_frames) // STRIDE
    ei = (ef + append_frames - CLIP_SIZE) // STRIDE

    annotations = []
    for a_idx, annotator in enumerate(clip["annotations"]):
        for l_idx, item in enumerate(annotator["labels"]):
            if not item["primary"]:
                continue
            start = item["video_start_time"] - ss + prepend_sec
            end = item["video_end_time"] - ss + prepend_sec
            start_frame = item["video_start_frame"] - sf + prepend_frames
            end_frame = item["video_end_frame"] - sf + prepend_frames
            if end - start < MIN_ACTION_S:
                continue
            label = item["label"]
            if label not in label_map:
                problems.append(f"{where} clip '{cid}': annotations[{a_idx}].labels[{l_idx}].label: "
                                f"{label!r} is not in the label map")
                continue
            annotations.append({"label": label, "segment": [round(start, 2), round(end, 2)],
                                "segment(frames)": [start_frame, end_frame],
                                "label_id": label_map[label]})
    entry = None
    if annotations:
        entry = {"subset": subset, "duration": round(duration, 2), "fps": round(fps, 2),
                 "annotations": annotations}
    return {"clip_uid": cid, "si": si, "ei": ei, "entry": entry}


def _load_videos(path: str) -> List[Dict[str, Any]]:
    try:
        with open(path, "r") as fid:
            return json.load(fid)["videos"]
    except FileNotFoundError:
        raise SystemExit(f"{path}: not found (download the Ego4D Moment Queries annotations, "
                         f"or pass --train-annot / --val-annot)") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise SystemExit(f"{path}: expected the official Ego4D MQ JSON with a 'videos' list") from None


def _load_features(path: str) -> np.ndarray:
    feats = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(feats, torch.Tensor) or feats.dim() != 2:
        raise SystemExit(f"{path}: expected a 2-D tensor (windows x channels), got "
                         f"{getattr(feats, 'shape', type(feats).__name__)}")
    return feats.numpy()


def convert(train_annot: str, val_annot: str, slowfast_dir: str, omnivore_dir: str,
            label_map_path: str, slowfast_out: str, omnivore_out: str, annot_out: str,
            progress: bool = True) -> Dict[str, Any]:
    """Run the conversion; returns ``{'clips': n written to the JSON, 'feature_files': n,
    'skipped': Counter(reason -> count)}``. Raises ValueError on labels missing from the map."""
    label_map = load_label_map(label_map_path)
    videos = _load_videos(train_annot) + _load_videos(val_annot)
    skipped: Counter = Counter()
    log = tqdm.write if progress else print

    # pass 1: arithmetic and label checks for every clip, before anything is written
    plans, problems = [], []
    for video in videos:
        vid = video["video_uid"]
        paths = {name: os.path.join(folder, vid + ".pt")
                 for name, folder in (("slowfast", slowfast_dir), ("omnivore", omnivore_dir))}
        absent = [name for name, path in paths.items() if not os.path.exists(path)]
        if absent:
            log(f"video {vid}: skipped, {' and '.join(absent)} feature file missing "
                f"({', '.join(paths[n] for n in absent)})")
            skipped[f"videos without {absent[0]} features"] += 1
            continue
        subset = SUBSETS.get(video["split"], video["split"])
        clips = [plan_clip(clip, subset, label_map, f"video '{vid}'", problems) for clip in video["clips"]]
        plans.append((vid, paths, clips))
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise ValueError(f"{len(problems)} annotation label(s) not in {label_map_path}; nothing was "
                         f"written:\n  " + "\n  ".join(shown))

    # pass 2: slice and save features, collect the JSON
    os.makedirs(slowfast_out, exist_ok=True)
    os.makedirs(omnivore_out, exist_ok=True)
    database: Dict[str, Any] = {}
    feature_files = 0
    for vid, paths, clips in tqdm(plans, desc="videos", unit="video", disable=not progress):
        slowfast, omnivore = _load_features(paths["slowfast"]), _load_features(paths["omnivore"])
        for plan in clips:
            cid = plan["clip_uid"]
            if "skip" in plan:
                skipped[plan["skip"]] += 1
                continue
            if plan["ei"] > min(len(slowfast), len(omnivore)):
                log(f"video {vid} clip {cid}: skipped, needs feature windows up to {plan['ei']} but "
                    f"slowfast has {len(slowfast)}, omnivore {len(omnivore)}")
                skipped["clips running past the features"] += 1
                continue
            for feats, folder in ((slowfast, slowfast_out), (omnivore, omnivore_out)):
                np.save(os.path.join(folder, cid + ".npy"), feats[plan["si"]:plan["ei"]].astype(np.float32))
            feature_files += 1
            if plan["entry"] is None:
                skipped["clips without annotations (features written, no JSON entry)"] += 1
            else:
                database[cid] = plan["entry"]

    os.makedirs(os.path.dirname(annot_out) or ".", exist_ok=True)
    write_json({"version": "v1", "database": database}, annot_out)
    return {"clips": len(database), "feature_files": feature_files, "skipped": skipped}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--train-annot", default="annotations/moments_train.json")
    add("--val-annot", default="annotations/moments_val.json")
    add("--slowfast-dir", default="features/slowfast8x8_r101_k400", help="official SlowFast .pt files")
    add("--omnivore-dir", default="features/omnivore_video_swinl", help="official Omnivore .pt files")
    add("--label-map", default=None,
        help="110-class label map (default: ./ego4d_label_map.txt if present, else the shipped copy)")
    add("--slowfast-out", default="features/slowfast_features")
    add("--omnivore-out", default="features/omnivore_features")
    add("--annot-out", default="annotations/ego4d.json")
    add("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.label_map is None:
        args.label_map = "ego4d_label_map.txt" if os.path.exists("ego4d_label_map.txt") else SHIPPED_LABEL_MAP
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        result = convert(args.train_annot, args.val_annot, args.slowfast_dir, args.omnivore_dir,
                         args.label_map, args.slowfast_out, args.omnivore_out, args.annot_out,
                         progress=not args.no_progress)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {result['clips']} annotated clips to {args.annot_out} and features of "
          f"{result['feature_files']} clips to {args.slowfast_out}, {args.omnivore_out}")
    for reason, count in sorted(result["skipped"].items()):
        print(f"skipped: {count} {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
