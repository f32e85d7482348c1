"""Detect actions in your own videos' feature files with a trained checkpoint.

    python tools/predict.py CONFIG CKPT FEATURES... [--fps F] [--feat-stride S] [--num-frames N]
        [--out detections.json] [--csv detections.csv] [--labels label_map.txt|annotation.json]
        [--topk 100] [--min-score 0.05] [--device cpu|cuda] [--batch-size N]
        [--window STEPS] [--overlap STEPS] [--curves DIR] [--opts KEY=VALUE ...]

FEATURES are ``.npy`` / ``.npz`` (array ``feats``) / ``.pt`` files of ``T x D`` features
(time-major), folders of them, or HDF5 files (one data set per video); the video id is the file
name without extension (or the data set name). Features must come from the same extractor,
stride and window as the training features.

Defaults come from the config: ``--feat-stride`` and ``--num-frames`` (frames) from
``dataset.feat_stride`` / ``dataset.num_frames``, fps from ``dataset.default_fps``, else from the
video's entry in the annotation JSON (``--labels``, else the config's ``dataset.json_file`` when it
exists), which also gives ``duration`` (detections are clipped to it; without it the duration is
the span of the features) and the class names.

Writes an ActivityNet-style results JSON (``--out``; read by ``tools/evaluate.py`` and
``tools/visualize.py``), optionally a CSV (video, start_s, end_s, label, score) and per-step class
scores (``--curves DIR``: ``<video>.npz`` with ``times`` (s) and ``scores`` (T x C)), and prints one
line per video. ``--topk`` caps detections per video (``test_cfg.max_seg_num``), ``--min-score``
drops weaker ones from the output.

Videos longer than ``--window`` grid steps (default 4 x max_seq_len) are processed in windows
overlapping by ``--overlap`` steps (default max_seq_len / 2), read from disk window by window:
peak memory does not grow with the video length. Shorter videos give exactly eval.py's output.

Video files (``.mp4``, ``.avi``, ``.mkv``, ...; also inside folders) are turned into features
first, with the extractor recorded in the config's ``features:`` block (else in the checkpoint
folder's ``config.yaml``): backbone, clip length and stride, weights (see
``tools/extract_features.py``; needs ``pip install -e .[video]``). Their fps and duration come from
the video itself. Features are streamed to a temporary ``.npy`` and read back window by window,
so memory stays flat in the video length.

A bad feature file (unreadable, empty, wrong dimension, NaN/Inf) or video is reported in one line;
the other files are still processed and the exit status is 1.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.core import load_config  # noqa: E402
from libs.core.cli import run_main  # noqa: E402
from libs.engine import resolve_checkpoint, resolve_device  # noqa: E402
from libs.engine.checkpoints import load_weights  # noqa: E402
from libs.modeling import make_meta_arch  # noqa: E402
from libs.datasets.feature_io import FeatureError, VideoFeatures, find_feature_files, open_features  # noqa: E402
from libs.utils.prediction_io import read_class_names  # noqa: E402
from libs.utils.io import atomic_open, write_json  # noqa: E402
from libs.video.files import split_video_inputs  # noqa: E402
from libs.engine.windowed_inference import (default_window, normalise_window,  # noqa: E402
                                           windowed_inference)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="predict.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("config", help="config file (YAML) the checkpoint was trained with")
    parser.add_argument("ckpt", help="checkpoint file or experiment folder (as eval.py)")
    parser.add_argument("features", nargs="+", help="feature files or folders")
    parser.add_argument("--fps", type=float, default=None,
                        help="frames per second of every video (default: dataset.default_fps, else --labels)")
    parser.add_argument("--feat-stride", type=float, default=None,
                        help="frames between features (default: dataset.feat_stride)")
    parser.add_argument("--num-frames", type=float, default=None,
                        help="frames per feature window (default: dataset.num_frames)")
    parser.add_argument("--out", default="detections.json",
                        help="results JSON (default %(default)s; written atomically, and not at all "
                             "when no video succeeded)")
    parser.add_argument("--csv", default=None, help="also write the detections as CSV (default: no CSV)")
    parser.add_argument("--labels", default=None,
                        help="class names: label map text file or annotation JSON "
                             "(default: the config's dataset.json_file when it exists)")
    parser.add_argument("--topk", type=int, default=100, help="detections per video (default 100)")
    parser.add_argument("--min-score", type=float, default=0.05,
                        help="drop detections scoring below this (default 0.05)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:K (default cpu)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="videos per forward pass among those that fit one window (default 1)")
    parser.add_argument("--window", type=int, default=None,
                        help="longest video processed whole, and the window length, in grid steps "
                             "(default 4 x max_seq_len)")
    parser.add_argument("--overlap", type=int, default=None,
                        help="window overlap in grid steps (default max_seq_len / 2)")
    parser.add_argument("--curves", default=None, metavar="DIR",
                        help="write per-step class scores to DIR/<video>.npz (default: none)")
    parser.add_argument("--weights", default="ema", choices=["ema", "live"],
                        help="EMA weights (default, as eval.py) or the live training weights")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides")
    return parser.parse_args(argv)


class VideoInfo:
    """Per-video fps / duration and class names from an annotation JSON or label map."""

    def __init__(self, path: Optional[str], num_classes: int) -> None:
        self.path = path
        self.database: Dict[str, Any] = {}
        self.class_names: Dict[int, str] = {}
        if path is None:
            return
        names = read_class_names(path)      # also reports unreadable files
        if path.lower().endswith(".json"):
            with open(path, "r", encoding="utf8") as f:
                content = json.load(f)
            if isinstance(content.get("database"), dict):
                self.database = content["database"]
        outside = [i for i in names if not 0 <= i < num_classes]
        if outside:
            print(f"warning: {path}: class ids up to {max(outside)} but the model has "
                  f"{num_classes} classes; class names not used", file=sys.stderr)
        else:
            self.class_names = names

    def entry(self, video_id: str) -> Mapping[str, Any]:
        entry = self.database.get(video_id)
        return entry if isinstance(entry, dict) else {}

    def name(self, label: int) -> str:
        return self.class_names.get(int(label), str(int(label)))


def _number(entry: Mapping[str, Any], key: str) -> Optional[float]:
    value = entry.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def build_model(cfg: Dict[str, Any], ckpt_path: str, device: torch.device,
                weights: str = "ema") -> torch.nn.Module:
    """The config's model with the checkpoint's EMA (``weights='ema'``) or live weights, in eval mode."""
    model = make_meta_arch(cfg["model_name"], **cfg["model"]).to(device)
    load_weights(model, resolve_checkpoint(ckpt_path), weights)
    return model.eval()


class Predictor:
    """Runs the model on one feature file after another; collects results and failures."""

    def __init__(self, args: argparse.Namespace, cfg: Dict[str, Any], model: torch.nn.Module,
                 info: VideoInfo) -> None:
        self.args, self.cfg, self.model, self.info = args, cfg, model, info
        window, overlap = default_window(model)
        self.window, self.overlap = normalise_window(
            model, args.window or window, overlap if args.overlap is None else args.overlap)
        if not 0 <= self.overlap < self.window:
            raise ValueError(f"--overlap: expected 0 <= overlap < window ({self.window} steps), "
                             f"got {self.overlap}")
        self.results: Dict[str, Dict[str, Any]] = {}
        self.video_records: Dict[str, Mapping[str, Any]] = {}   # fps, duration of video files
        self.failures: List[str] = []
        self._pending: List[Tuple[Dict[str, Any], int]] = []

    def video_meta(self, file, feats) -> Dict[str, Any]:
        entry = dict(self.info.entry(file.video_id), **self.video_records.get(file.video_id, {}))
        fps = _number(self.video_records.get(file.video_id, {}), "fps") or self.args.fps \
            or self.cfg["dataset"].get("default_fps") or _number(entry, "fps")
        if fps is None:
            raise FeatureError(f"{file.where}: video '{file.video_id}': field 'fps' unknown: pass "
                               f"--fps, set dataset.default_fps, or list the video in --labels")
        duration = _number(entry, "duration") or feats.duration_estimate(fps)
        return {"video_id": file.video_id, "fps": fps, "duration": duration,
                "feat_stride": feats.feat_stride, "feat_num_frames": feats.num_frames}

    def open(self, file) -> VideoFeatures:
        """The features of one input (a feature file or an HDF5 entry) on the model's grid."""
        return open_features(file, self.cfg["dataset"], self.args.feat_stride, self.args.num_frames)

    def run(self, file) -> None:
        """Predict one file (a whole-video batch is flushed when full)."""
        try:
            feats = self.open(file)
            with feats:
                meta = self.video_meta(file, feats)
                num_steps = feats.shape[1]
                batched = self.args.batch_size > 1 and not self.args.curves
                if batched and num_steps <= self.window:
                    self._pending.append((dict(meta, feats=feats[:, 0:num_steps]), num_steps))
                    if len(self._pending) >= self.args.batch_size:
                        self.flush()
                    return
                out = windowed_inference(self.model, feats, meta, self.window, self.overlap,
                                         with_step_scores=bool(self.args.curves))
            self.finish(out, meta, num_steps)
        except (ValueError, OSError) as exc:
            self.fail(str(exc).splitlines()[0])

    def flush(self) -> None:
        """Whole-video inference of the pending batch (eval.py's path)."""
        if not self._pending:
            return
        items = [item for item, _ in self._pending]
        with torch.no_grad():
            outputs = self.model(items)
        for out, (item, num_steps) in zip(outputs, self._pending):
            out["num_windows"] = 1
            self.finish(out, item, num_steps)
        self._pending = []

    def fail(self, message: str) -> None:
        self.failures.append(message)
        print(f"error: {message}", file=sys.stderr, flush=True)

    def finish(self, out: Dict[str, Any], meta: Mapping[str, Any], num_steps: int) -> None:
        keep = out["scores"] >= self.args.min_score
        det = {"segments": out["segments"][keep].numpy(), "scores": out["scores"][keep].numpy(),
               "labels": out["labels"][keep].numpy()}
        vid = meta["video_id"]
        self.results[vid] = det
        if self.args.curves:
            times = (np.arange(num_steps) * meta["feat_stride"] + 0.5 * meta["feat_num_frames"]) \
                / meta["fps"]
            with atomic_open(os.path.join(self.args.curves, f"{vid}.npz"), "wb") as f:
                np.savez(f, times=times, scores=out["step_scores"].numpy())
        windows = f", {out['num_windows']} windows" if out["num_windows"] > 1 else ""
        best = ""
        if len(det["scores"]):
            (start, end), label, score = det["segments"][0], det["labels"][0], det["scores"][0]
            best = f"; best: {self.info.name(label)} {start:.1f}-{end:.1f} s ({score:.2f})"
        print(f"{vid}: {meta['duration']:.1f} s, {num_steps} steps{windows}: "
              f"{len(det['scores'])} detections >= {self.args.min_score:g}{best}", flush=True)


def results_json(results: Mapping[str, Mapping[str, np.ndarray]], info: VideoInfo,
                 num_classes: int) -> Dict[str, Any]:
    """ActivityNet-style results: per video ``{"segment", "label" (class id), "label_name",
    "score"}`` sorted by score, plus ``class_names`` (list indexed by class id, or null)."""
    per_video = {}
    for vid, det in results.items():
        per_video[vid] = [{"segment": [float(s), float(e)], "label": int(label),
                           "label_name": info.name(label), "score": float(score)}
                          for (s, e), label, score in zip(det["segments"], det["labels"],
                                                           det["scores"])]
    names = [info.class_names.get(i) for i in range(num_classes)]
    return {"version": "ActionFormer", "results": per_video, "external_data": {},
            "class_names": names if any(n is not None for n in names) else None}


def write_csv(path: str, results: Mapping[str, Mapping[str, np.ndarray]], info: VideoInfo) -> None:
    with atomic_open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "start_s", "end_s", "label", "score"])
        for vid, det in results.items():
            for (start, end), label, score in zip(det["segments"], det["labels"], det["scores"]):
                writer.writerow([vid, f"{start:.3f}", f"{end:.3f}", info.name(label),
                                 f"{score:.4f}"])


def write_outputs(args: argparse.Namespace, results, info: VideoInfo, num_classes: int) -> None:
    """``--out`` (and ``--csv``), atomically; nothing at all when no video succeeded, so that an
    earlier output is never replaced by an empty one."""
    if not results:
        print(f"no video succeeded: {args.out} not written", file=sys.stderr, flush=True)
        return
    write_json(results_json(results, info, num_classes), args.out)
    if args.csv:
        write_csv(args.csv, results, info)


# ---- video files: extract features with the recorded extractor, then predict as for files ----
def video_extractor(args: argparse.Namespace, cfg: Dict[str, Any], device: torch.device):
    """(options, extractor) from the config's ``features:`` block or the checkpoint folder's
    ``config.yaml``; the sampling must match the model's feature grid."""
    from libs.video import missing_video_extra

    missing = missing_video_extra()
    if missing:
        raise RuntimeError(f"video files given: {missing}")
    from libs.video.backbones import build_extractor
    from libs.video.options import ExtractorOptions

    block, where = cfg["features"], args.config
    folder = args.ckpt if os.path.isdir(args.ckpt) else os.path.dirname(args.ckpt)
    saved = os.path.join(folder, "config.yaml")
    if block.get("backbone") is None and os.path.isfile(saved):
        block, where = load_config(saved)["features"], saved
    if block.get("backbone") is None:
        raise ValueError(f"{args.config}: features.backbone: not set, so video files cannot be "
                         f"turned into features; add a features: block (see docs/own_videos.md)")
    opts = ExtractorOptions.from_mapping(block, where)
    stride = args.feat_stride or cfg["dataset"]["feat_stride"]
    clip = args.num_frames or cfg["dataset"]["num_frames"]
    if (opts.stride, opts.clip_len) != (stride, clip):
        raise ValueError(f"{where}: features.stride / clip_len = {opts.stride} / {opts.clip_len} "
                         f"but the model's feat_stride / num_frames = {stride:g} / {clip:g}")
    torch.manual_seed(0)            # weights 'none': the same random weights as the extractor tool
    return opts, build_extractor(opts, device)


def predict_videos(predictor: "Predictor", videos: List[Tuple[str, str]], extractor,
                   device: torch.device, batch_size: int = 8) -> None:
    """Extract each video to a temporary ``.npy`` (streamed), predict on it, delete it."""
    import tempfile

    from libs.datasets.feature_io import FeatureFile
    from libs.video.extract import extract_file, failure_message, open_video_batches

    opts, model = extractor
    with tempfile.TemporaryDirectory(prefix="predict_features_") as tmp:
        for vid, path in videos:
            npy = os.path.join(tmp, f"{vid}.npy")
            try:
                reader, batches = open_video_batches(path, model, opts, batch_size)
                predictor.video_records[vid] = extract_file(reader, batches, model, opts, npy,
                                                            device)
            except (ValueError, OSError, RuntimeError) as exc:
                predictor.fail(failure_message(path, exc))
                continue
            predictor.run(FeatureFile(vid, npy))
            predictor.flush()           # the batch may hold this file's features
            os.remove(npy)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.topk < 1 or args.batch_size < 1:
        raise ValueError("--topk and --batch-size must be >= 1")
    cfg = load_config(args.config, args.opts)
    cfg["test_cfg"]["max_seg_num"] = args.topk
    label_file = args.labels
    if label_file is None and os.path.isfile(str(cfg["dataset"].get("json_file"))):
        label_file = cfg["dataset"]["json_file"]
    info = VideoInfo(label_file, cfg["dataset"]["num_classes"])
    videos, feature_paths, video_problems = split_video_inputs(args.features)
    files, problems = find_feature_files(feature_paths) if feature_paths else ([], [])
    problems = video_problems + problems
    device = resolve_device(args.device)
    extractor = video_extractor(args, cfg, device) if videos else None
    model = build_model(cfg, args.ckpt, device, args.weights)
    if args.curves:
        os.makedirs(args.curves, exist_ok=True)

    predictor = Predictor(args, cfg, model, info)
    for message in problems:
        predictor.fail(message)
    start = time.time()
    for file in files:
        predictor.run(file)
    if videos:
        predict_videos(predictor, videos, extractor, device)
    predictor.flush()

    order = [f.video_id for f in files] + [vid for vid, _ in videos]
    order = [vid for vid in order if vid in predictor.results]
    results = {vid: predictor.results[vid] for vid in order}
    write_outputs(args, results, info, cfg["dataset"]["num_classes"])
    total = sum(len(det["scores"]) for det in results.values())
    if results:
        print(f"{len(results)} videos, {total} detections in {time.time() - start:.1f} s -> {args.out}"
              + (f", {args.csv}" if args.csv else ""))
    if predictor.failures:
        print(f"{len(predictor.failures)} inputs failed (see the error lines above)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main, "predict.py")
