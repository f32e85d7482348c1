"""Write a small synthetic video data set: ``.mp4`` files with planted actions and their
annotation JSON (the ``custom`` loader's format), for the worked example of docs/own_videos.md.

    python tools/make_demo_videos.py --out data/video_demo [--train 12] [--test 3]
        [--seconds 10] [--fps 15]

Each video shows a slowly drifting colour gradient with noise; actions are a white square
sliding across the frame (``slide``) or the whole frame brightening (``flash``), 1.5-3 s long,
one or two per video. Writes ``OUT/videos/{train,test}_NNN.mp4`` and ``OUT/annotations.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, Iterator, List, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.video.encoding import write_frames  # noqa: E402

CLASSES = ("slide", "flash")
HEIGHT, WIDTH = 96, 128


def plan_actions(rng: np.random.Generator, seconds: float) -> List[Tuple[int, float, float]]:
    """One or two non-overlapping ``(label_id, start_s, end_s)``."""
    actions = []
    halves = [(0.5, seconds / 2 - 0.5), (seconds / 2 + 0.5, seconds - 0.5)]
    for lo, hi in halves[:rng.integers(1, 3)]:
        length = rng.uniform(1.5, min(3.0, hi - lo))
        start = rng.uniform(lo, hi - length)
        actions.append((int(rng.integers(len(CLASSES))), round(start, 2), round(start + length, 2)))
    return actions


def render(rng: np.random.Generator, num_frames: int, fps: float,
           actions: List[Tuple[int, float, float]]) -> Iterator[np.ndarray]:
    """The frames, one at a time."""
    rows = np.linspace(0.0, 1.0, HEIGHT)[:, None]
    cols = np.linspace(0.0, 1.0, WIDTH)[None, :]
    hue = rng.uniform(0, 2 * np.pi, 3)
    for i in range(num_frames):
        t = i / fps
        base = np.stack([80 + 60 * np.sin(hue[c] + 2 * rows + 3 * cols + 0.2 * t)
                         for c in range(3)], axis=-1)
        image = base + rng.normal(0, 6, base.shape)
        for label, start, end in actions:
            if start <= t < end:
                progress = (t - start) / (end - start)
                if CLASSES[label] == "slide":
                    left = int(progress * (WIDTH - 24))
                    image[36:60, left:left + 24] = 250
                else:
                    image = image + 90 * np.sin(np.pi * progress)
        yield np.clip(image, 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/video_demo")
    parser.add_argument("--train", type=int, default=12)
    parser.add_argument("--test", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    os.makedirs(os.path.join(args.out, "videos"), exist_ok=True)
    num_frames = int(round(args.seconds * args.fps))
    database: Dict[str, dict] = {}
    for subset, count in (("train", args.train), ("test", args.test)):
        for k in range(count):
            vid = f"{subset}_{k:03d}"
            actions = plan_actions(rng, args.seconds)
            write_frames(os.path.join(args.out, "videos", f"{vid}.mp4"),
                         render(rng, num_frames, args.fps, actions), args.fps, HEIGHT, WIDTH)
            database[vid] = {"subset": subset, "duration": num_frames / args.fps,
                             "fps": args.fps, "annotations": [
                                 {"label": CLASSES[c], "label_id": c, "segment": [s, e]}
                                 for c, s, e in actions]}
    with open(os.path.join(args.out, "annotations.json"), "w", encoding="utf8") as f:
        json.dump({"version": "video-demo", "database": database}, f, indent=1)
    print(f"{len(database)} videos ({args.train} train, {args.test} test), {num_frames} frames "
          f"at {args.fps:g} fps each -> {args.out}")


if __name__ == "__main__":
    main()
