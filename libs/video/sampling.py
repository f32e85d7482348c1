"""Clip sampling on a video's frame sequence, and frame-rate resampling.

Feature ``t`` covers the frames ``[t * stride, t * stride + clip_len)`` of the (resampled) video,
so it is centred at ``(t * stride + clip_len / 2) / fps`` seconds, the time line of the THUMOS
loader and ``tools/predict.py`` (``feat_stride = stride``, ``num_frames = clip_len``). Only whole
clips are used: the last ``(num_frames - clip_len) % stride`` frames, fewer than ``stride``, start
no clip of their own and are covered only by the clips that already contain them.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Optional, Union

__all__ = ["ClipSampling", "FrameRateResampler", "num_clips"]


def num_clips(num_frames: int, clip_len: int, stride: int) -> int:
    """Whole clips of ``clip_len`` frames every ``stride`` frames in ``num_frames`` frames."""
    if num_frames < clip_len:
        return 0
    return (num_frames - clip_len) // stride + 1


@dataclass(frozen=True)
class ClipSampling:
    """Clips of ``clip_len`` frames every ``stride`` frames, at ``fps`` (None: the video's rate)."""

    clip_len: int = 16
    stride: int = 4
    fps: Optional[float] = None

    def __post_init__(self) -> None:
        if self.clip_len < 1 or self.stride < 1:
            raise ValueError(f"clip length and stride must be >= 1, got {self.clip_len} and "
                             f"{self.stride}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"--fps must be > 0, got {self.fps}")

    def clip_starts(self, num_frames: int) -> range:
        """First frame of every clip."""
        return range(0, num_clips(num_frames, self.clip_len, self.stride) * self.stride,
                     self.stride)

    def clip_centres(self, num_frames: int, fps: float) -> list:
        """Centre of every clip, in seconds."""
        return [(s + 0.5 * self.clip_len) / fps for s in self.clip_starts(num_frames)]


def _fraction(rate: Union[float, Fraction]) -> Fraction:
    return rate if isinstance(rate, Fraction) else Fraction(str(rate)).limit_denominator(1001000)


class FrameRateResampler:
    """Maps a stream of source frames at ``src_fps`` onto a grid at ``dst_fps``.

    Output frame ``k`` (time ``k / dst_fps``) is the source frame ``floor(k * src_fps / dst_fps)``,
    the last source frame shown at that time; a video of ``n`` source frames gives
    ``ceil(n * dst_fps / src_fps)`` output frames. Exact rational arithmetic (NTSC rates such as
    30000/1001 included).
    """

    def __init__(self, src_fps: Union[float, Fraction], dst_fps: Union[float, Fraction]) -> None:
        self.src, self.dst = _fraction(src_fps), _fraction(dst_fps)

    def _first_output(self, i: int) -> int:
        """Smallest output index k with floor(k * src / dst) >= i, i.e. ceil(i * dst / src)."""
        q = i * self.dst / self.src
        return -((-q.numerator) // q.denominator)

    def repeats(self, i: int) -> int:
        """How many output frames source frame ``i`` (0-based) becomes (0 drops it)."""
        return self._first_output(i + 1) - self._first_output(i)

    def num_output_frames(self, num_source_frames: int) -> int:
        return self._first_output(num_source_frames)

    def source_indices(self, num_source_frames: int) -> Iterator[int]:
        """The source frame of every output frame, in order."""
        for i in range(num_source_frames):
            for _ in range(self.repeats(i)):
                yield i
