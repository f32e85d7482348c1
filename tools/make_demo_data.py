"""Write a small synthetic temporal-action data set in THUMOS format (annotation JSON + one .npy per video).

    python tools/make_demo_data.py --out data/demo

Layout written under ``--out``::

    annotations/demo.json          {"database": {vid: {subset, duration, fps, annotations}}}
    features/<video_id>.npy        T x D float32, one row per feature step

Videos follow the THUMOS conventions the ``thumos`` loader expects: fps 30, one feature every
4 frames over a 16-frame window, so feature step ``g`` is centred at ``(4 g + 8) / 30`` seconds;
training videos are in subset ``validation``, evaluation videos in ``test``.

What makes the actions learnable: background steps are Gaussian noise; inside an action of
class ``c`` every step adds ``amplitude * pattern_c`` (``pattern_c`` = a shared component plus a
class-specific one, so classes are similar but separable) with a one-step ramp at both ends.
Action lengths span 3 to 48 steps so that several pyramid levels get positives. Video lengths
are uniform, or (``--median-len``) log-normal with a long tail like THUMOS's. Everything is
drawn from one ``numpy`` generator seeded by ``--seed``: the same arguments give the same bytes.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from libs.utils.io import write_json  # noqa: E402

FPS = 30.0
FEAT_STRIDE = 4      # frames between features
NUM_FRAMES = 16      # frames per feature window
CLASS_NAMES = ("Archery", "Bowling", "Cycling", "Dancing", "Fencing", "Golfing", "Juggling", "Kayaking")


def grid_to_seconds(grid: float) -> float:
    """Feature-grid position -> seconds (feature centres, stride 4, window 16, fps 30)."""
    return (grid * FEAT_STRIDE + 0.5 * NUM_FRAMES) / FPS


def _class_patterns(rng: np.random.Generator, num_classes: int, feat_dim: int) -> np.ndarray:
    """``num_classes x feat_dim`` unit-RMS patterns: 50 % shared direction, 50 % own direction."""
    shared = rng.standard_normal(feat_dim)
    own = rng.standard_normal((num_classes, feat_dim))
    patterns = np.sqrt(0.5) * shared[None] + np.sqrt(0.5) * own
    return patterns / np.sqrt((patterns ** 2).mean(axis=1, keepdims=True))


def _place_actions(rng: np.random.Generator, length: int, max_actions: int,
                   len_range: Tuple[int, int]) -> List[Tuple[int, int]]:
    """Non-overlapping ``[start, end)`` step ranges (at least 2 background steps apart)."""
    placed: List[Tuple[int, int]] = []
    for _ in range(50):
        if len(placed) == max_actions:
            break
        span = int(np.exp(rng.uniform(np.log(len_range[0]), np.log(len_range[1] + 1))))
        span = min(span, length - 2)
        start = int(rng.integers(1, length - span))
        if all(start >= e + 2 or start + span + 2 <= s for s, e in placed):
            placed.append((start, start + span))
    return sorted(placed)


def _make_video(rng: np.random.Generator, patterns: np.ndarray, length: int, amplitude: float,
                max_actions: int, len_range: Tuple[int, int]) -> Tuple[np.ndarray, List[Dict]]:
    feat_dim = patterns.shape[1]
    feats = rng.standard_normal((length, feat_dim)).astype(np.float32)
    annotations = []
    for start, end in _place_actions(rng, length, max_actions, len_range):
        label_id = int(rng.integers(len(patterns)))
        envelope = np.ones(end - start)
        envelope[0] = envelope[-1] = 0.5           # half-strength first and last step
        feats[start:end] += (amplitude * envelope[:, None] * patterns[label_id][None]).astype(np.float32)
        # the action covers steps start .. end-1, i.e. grid interval [start - 0.5, end - 0.5]
        annotations.append({"label": CLASS_NAMES[label_id],
                            "segment": [round(grid_to_seconds(start - 0.5), 2),
                                        round(grid_to_seconds(end - 0.5), 2)],
                            "label_id": label_id})
    return feats, annotations


def _draw_length(rng: np.random.Generator, min_len: int, max_len: int,
                 median_len: Optional[int], len_sigma: float) -> int:
    """Uniform in ``[min_len, max_len]``, or, with ``median_len``, log-normal (median
    ``median_len``, log-std ``len_sigma``) clipped to that range: a long tail like THUMOS's."""
    if median_len is None:
        return int(rng.integers(min_len, max_len + 1))
    return int(np.clip(round(median_len * np.exp(len_sigma * rng.standard_normal())),
                       min_len, max_len))


def make_demo_data(out_dir: str, num_train: int = 200, num_test: int = 60, num_classes: int = 4,
                   feat_dim: int = 64, min_len: int = 96, max_len: int = 256, amplitude: float = 0.6,
                   max_actions: int = 4, seed: int = 0, median_len: Optional[int] = None,
                   len_sigma: float = 0.8) -> str:
    """Write the data set under ``out_dir``; returns the annotation JSON path.

    Lengths (feature steps) are uniform in ``[min_len, max_len]``, or log-normal around
    ``median_len`` (see :func:`_draw_length`); each video gets 1 to ``max_actions`` actions.
    Every class occurs in both subsets (checked).
    """
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"--num-classes: expected 1..{len(CLASS_NAMES)}, got {num_classes}")
    if min_len < 16 or max_len < min_len:
        raise ValueError(f"--min-len/--max-len: expected 16 <= min_len <= max_len, got {min_len}, {max_len}")
    rng = np.random.default_rng(seed)
    patterns = _class_patterns(rng, num_classes, feat_dim)
    feat_dir = os.path.join(out_dir, "features")
    os.makedirs(feat_dir, exist_ok=True)
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    database = {}
    for subset, count in (("validation", num_train), ("test", num_test)):
        for idx in range(count):
            vid = f"video_{subset}_{idx:07d}"
            length = _draw_length(rng, min_len, max_len, median_len, len_sigma)
            feats, annotations = _make_video(rng, patterns, length, amplitude, max_actions, (3, 48))
            np.save(os.path.join(feat_dir, f"{vid}.npy"), feats)
            num_frames = (length - 1) * FEAT_STRIDE + NUM_FRAMES
            database[vid] = {"subset": subset.capitalize(), "duration": round(num_frames / FPS, 2),
                             "fps": FPS, "annotations": annotations}
    for subset in ("Validation", "Test"):
        seen = {a["label_id"] for v in database.values() if v["subset"] == subset for a in v["annotations"]}
        if len(seen) != num_classes:
            raise ValueError(f"subset {subset} has only classes {sorted(seen)}; use more videos")
    json_path = os.path.join(out_dir, "annotations", "demo.json")
    write_json({"version": "demo-1", "database": database}, json_path)
    return json_path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/demo", help="output folder (default data/demo)")
    parser.add_argument("--num-train", type=int, default=200, help="training videos (subset 'validation')")
    parser.add_argument("--num-test", type=int, default=60, help="evaluation videos (subset 'test')")
    parser.add_argument("--num-classes", type=int, default=4)
    parser.add_argument("--feat-dim", type=int, default=64, help="feature channels D")
    parser.add_argument("--min-len", type=int, default=96, help="shortest video, feature steps")
    parser.add_argument("--max-len", type=int, default=256, help="longest video, feature steps")
    parser.add_argument("--median-len", type=int, default=None,
                        help="log-normal lengths with this median (clipped to --min-len/--max-len) "
                             "instead of uniform ones: a long tail like THUMOS's")
    parser.add_argument("--len-sigma", type=float, default=0.8,
                        help="log-std of the log-normal lengths (default 0.8)")
    parser.add_argument("--amplitude", type=float, default=0.6, help="action pattern strength (noise std 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = make_demo_data(args.out, args.num_train, args.num_test, args.num_classes, args.feat_dim,
                          args.min_len, args.max_len, args.amplitude, seed=args.seed,
                          median_len=args.median_len, len_sigma=args.len_sigma)
    print(f"wrote {args.num_train} training + {args.num_test} test videos: {path}, "
          f"{os.path.join(args.out, 'features')}/")


if __name__ == "__main__":
    main()
