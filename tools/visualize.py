"""Draw the detections of each video (and its ground truth) on a time line in seconds, one PNG
per video.

    python tools/visualize.py PREDICTIONS [--gt ANNOTATION_JSON] [--split SUBSET]
        [--videos ID ...] [--out-dir vis] [--threshold 0.2] [--max-dets 20]
        [--curves DIR] [--labels label_map.txt|annotation.json]

PREDICTIONS: ``eval.py --saveonly``'s ``eval_results.pkl`` / ``eval_results.json``, or the JSON of
``tools/predict.py``. Ground-truth segments (``--gt``, optionally restricted to ``--split``) are
drawn in the top lane, the ``--max-dets`` best detections scoring at least ``--threshold`` below
it, one colour per class, each labelled with its score. ``--curves DIR`` (written by
``predict.py --curves DIR``) adds the per-step class scores under the time line. Class names come
from ``--labels``, else ``--gt``, else the predictions file. Without ``--videos``, every video
of the predictions file is drawn.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.utils.metrics import load_gt_seg_from_json  # noqa: E402
from libs.utils.prediction_io import read_class_names, read_predictions  # noqa: E402
from libs.utils.io import atomic_open  # noqa: E402

__all__ = ["class_colour", "pack_lanes", "plot_video", "main"]

FIG_WIDTH_IN, DPI = 12.0, 100
LANE_IN = 0.32          # height of one lane of segments
MARGIN_IN = 1.1         # title, axis labels, legend
CURVE_IN = 1.6          # height of the score-curve panel


def class_colour(label: int) -> Tuple[float, float, float]:
    """RGB of a class id: the ``tab10`` palette, cycled."""
    return matplotlib.colormaps["tab10"].colors[int(label) % 10]


def pack_lanes(segments: Sequence[Tuple[float, float]]) -> List[int]:
    """Lane index per segment (in the given order): the first lane where it overlaps nothing."""
    lane_ends: List[List[Tuple[float, float]]] = []
    lanes = []
    for start, end in segments:
        for idx, taken in enumerate(lane_ends):
            if all(end <= s or start >= e for s, e in taken):
                taken.append((start, end))
                lanes.append(idx)
                break
        else:
            lane_ends.append([(start, end)])
            lanes.append(len(lane_ends) - 1)
    return lanes


def figure_height(num_lanes: int, with_curve: bool) -> float:
    """Figure height in inches for ``num_lanes`` lanes (ground truth included)."""
    return MARGIN_IN + LANE_IN * max(num_lanes, 1) + (CURVE_IN if with_curve else 0.0)


def plot_video(video_id: str, dets: pd.DataFrame, gt: Optional[pd.DataFrame],
               names: Mapping[int, str], duration: float, threshold: float, max_dets: int,
               curve: Optional[Mapping[str, np.ndarray]] = None) -> Figure:
    """The figure of one video.

    dets / gt: rows with ``t-start``, ``t-end`` (seconds), ``label`` (+ ``score`` for dets);
    ``curve``: ``{'times' (T,), 'scores' (T x C)}``. Detections are drawn best first.
    """
    shown = dets[dets["score"] >= threshold].sort_values("score", ascending=False,
                                                         kind="stable").head(max_dets)
    det_lanes = pack_lanes(list(zip(shown["t-start"], shown["t-end"])))
    gt_rows = gt if gt is not None else pd.DataFrame(columns=["t-start", "t-end", "label"])
    gt_lanes = pack_lanes(list(zip(gt_rows["t-start"], gt_rows["t-end"])))
    num_gt = (max(gt_lanes) + 1 if gt_lanes else 1) if gt is not None else 0
    num_lanes = num_gt + (max(det_lanes) + 1 if det_lanes else 1)

    fig = Figure(figsize=(FIG_WIDTH_IN, figure_height(num_lanes, curve is not None)), dpi=DPI)
    heights = [LANE_IN * num_lanes] + ([CURVE_IN] if curve is not None else [])
    axes = fig.subplots(len(heights), 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": heights})[:, 0]
    timeline = axes[0]

    def bars(rows, lanes, offset, with_scores):
        for (_, row), lane in zip(rows.iterrows(), lanes):
            y = num_lanes - 1 - (offset + lane)
            start, end = float(row["t-start"]), float(row["t-end"])
            timeline.broken_barh([(start, max(end - start, duration * 1e-3))], (y + 0.1, 0.8),
                                 facecolors=[class_colour(row["label"])], linewidth=0)
            if with_scores:
                timeline.text(start, y + 0.5, f" {row['score']:.2f}", va="center", ha="left",
                              fontsize=7, clip_on=True)

    bars(gt_rows, gt_lanes, 0, False)
    bars(shown, det_lanes, num_gt, True)
    ticks = ([num_lanes - num_gt / 2] if gt is not None else []) + [(num_lanes - num_gt) / 2]
    timeline.set_yticks(ticks, (["ground truth"] if gt is not None else []) + ["detections"])
    if gt is not None:
        timeline.axhline(num_lanes - num_gt, color="0.5", linewidth=0.8)
    timeline.set_ylim(0, num_lanes)
    timeline.set_xlim(0, duration)
    classes = set(shown["label"].astype(int)) | set(gt_rows["label"].astype(int))
    if curve is not None:
        classes |= set(range(np.shape(curve["scores"])[1]))
    classes = sorted(classes)
    if classes:
        timeline.legend(handles=[Patch(color=class_colour(c), label=names.get(c, str(c)))
                                 for c in classes], loc="lower left", bbox_to_anchor=(0, 1.0),
                        ncol=min(len(classes), 6), fontsize=8, frameon=False)
    total = int((dets["score"] >= threshold).sum())
    fig.suptitle(f"{video_id}: {len(shown)} of {total} detections with score >= {threshold:g}",
                 fontsize=10, x=0.99, ha="right")
    if curve is not None:
        ax = axes[1]
        scores = np.asarray(curve["scores"])
        for c in range(scores.shape[1]):
            ax.plot(curve["times"], scores[:, c], color=class_colour(c), linewidth=1.0)
        ax.set_ylim(0, 1)
        ax.set_ylabel("class score", fontsize=8)
    axes[-1].set_xlabel("time (s)")
    fig.subplots_adjust(left=0.09, right=0.99, bottom=0.55 / fig.get_figheight(),
                        top=1 - 0.55 / fig.get_figheight(), hspace=0.15)
    return fig


def _durations(gt_file: Optional[str]) -> Dict[str, float]:
    if gt_file is None:
        return {}
    with open(gt_file, "r", encoding="utf8") as f:
        database = json.load(f).get("database", {})
    return {vid: float(entry["duration"]) for vid, entry in database.items()
            if isinstance(entry, dict) and isinstance(entry.get("duration"), (int, float))}


def _class_names(args: argparse.Namespace) -> Dict[int, str]:
    for source in (args.labels, args.gt, args.predictions):
        if source is None:
            continue
        try:
            return read_class_names(source)
        except ValueError:
            if source is not args.predictions:
                raise
    return {}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="visualize.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("predictions", help="eval_results.pkl / .json or predict.py's JSON")
    parser.add_argument("--gt", default=None, help="annotation JSON with the ground truth")
    parser.add_argument("--split", default=None, help="subset of --gt to draw (default: all)")
    parser.add_argument("--videos", nargs="+", default=None, help="video ids to draw")
    parser.add_argument("--out-dir", default="vis", help="where the PNGs go (default vis/)")
    parser.add_argument("--threshold", type=float, default=0.2, help="lowest score drawn")
    parser.add_argument("--max-dets", type=int, default=20, help="detections drawn per video")
    parser.add_argument("--curves", default=None, metavar="DIR",
                        help="per-step class scores from predict.py --curves")
    parser.add_argument("--labels", default=None, help="class names (label map or annotation JSON)")
    args = parser.parse_args(argv)

    names = _class_names(args)
    preds = read_predictions(args.predictions, {name: i for i, name in names.items()})
    gt = load_gt_seg_from_json(args.gt, args.split) if args.gt else None
    durations = _durations(args.gt)
    videos = args.videos or list(dict.fromkeys(preds["video-id"]))
    known = set(preds["video-id"]) | (set(gt["video-id"]) if gt is not None else set())
    unknown = [v for v in videos if v not in known]
    if unknown:
        raise ValueError(f"--videos: {', '.join(unknown)} not in {args.predictions}"
                         + (f" or {args.gt}" if args.gt else ""))
    os.makedirs(args.out_dir, exist_ok=True)
    for vid in videos:
        dets = preds[preds["video-id"] == vid]
        video_gt = gt[gt["video-id"] == vid] if gt is not None else None
        curve = None
        if args.curves:
            path = os.path.join(args.curves, f"{vid}.npz")
            if os.path.isfile(path):
                with np.load(path) as data:
                    curve = {"times": data["times"], "scores": data["scores"]}
        ends = [dets["t-end"].max() if len(dets) else 0.0,
                video_gt["t-end"].max() if video_gt is not None and len(video_gt) else 0.0,
                float(curve["times"][-1]) if curve is not None else 0.0]
        duration = durations.get(vid) or max(max(ends) * 1.02, 1.0)
        fig = plot_video(vid, dets, video_gt, names, duration, args.threshold, args.max_dets,
                         curve)
        out = os.path.join(args.out_dir, vid.replace(os.sep, "_") + ".png")
        with atomic_open(out, "wb") as f:
            fig.savefig(f, format="png")
        print(f"{out}: {int((dets['score'] >= args.threshold).sum())} detections >= "
              f"{args.threshold:g}" + (f", {len(video_gt)} ground-truth segments"
                                       if video_gt is not None else ""))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, KeyError, FileNotFoundError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"visualize.py: error: {message}", file=sys.stderr)
        sys.exit(2)
