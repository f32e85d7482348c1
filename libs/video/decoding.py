"""Streaming video decoding with PyAV: one RGB frame at a time, never the whole video.

PyAV wheels bundle FFmpeg, so no system FFmpeg is needed. Frames come out as ``H x W x 3`` uint8
RGB arrays, optionally resampled to another frame rate (:class:`FrameRateResampler`).
"""
from __future__ import annotations

from fractions import Fraction
from typing import Iterator, Optional

import numpy as np

from .sampling import FrameRateResampler

__all__ = ["VideoError", "VideoReader"]


class VideoError(ValueError):
    """A video that cannot be used; the message is one line naming the file."""


class VideoReader:
    """Decodes the first video stream of ``path`` frame by frame.

    Attributes: ``src_fps`` (the stream's average rate), ``fps`` (the rate frames are delivered
    at), ``expected_frames`` (container's count after resampling, 0 when unknown; for progress
    bars only), and after iteration ``source_frames`` / ``frames``: frames decoded / delivered.
    """

    def __init__(self, path: str, fps: Optional[float] = None) -> None:
        import av

        self.path = path
        try:
            self._container = av.open(path)
        except Exception as exc:  # noqa: BLE001 - every FFmpeg / OS failure gets one line
            raise VideoError(f"{path}: cannot open the video ({_reason(exc)})") from None
        if not self._container.streams.video:
            self.close()
            raise VideoError(f"{path}: no video stream in the file")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        if not rate or rate <= 0:
            self.close()
            raise VideoError(f"{path}: field 'fps': the video stream has no frame rate")
        self.src_fps = Fraction(rate)
        self._resampler = FrameRateResampler(self.src_fps, fps) if fps else None
        self.fps = float(self._resampler.dst) if self._resampler else float(self.src_fps)
        count = int(self._stream.frames or 0)
        self.expected_frames = self._resampler.num_output_frames(count) if self._resampler \
            else count
        self.source_frames = 0
        self.frames = 0

    @property
    def duration(self) -> float:
        """Seconds covered by the decoded frames (``source_frames / src_fps``)."""
        return float(self.source_frames / self.src_fps)

    def __iter__(self) -> Iterator[np.ndarray]:
        try:
            for frame in self._container.decode(self._stream):
                image = frame.to_ndarray(format="rgb24")
                repeats = self._resampler.repeats(self.source_frames) if self._resampler else 1
                self.source_frames += 1
                for _ in range(repeats):
                    self.frames += 1
                    yield image
        except VideoError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise VideoError(f"{self.path}: decoding failed after {self.source_frames} frames "
                             f"({_reason(exc)})") from None
        if self.source_frames == 0:
            raise VideoError(f"{self.path}: the video has no frames")

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or (str(exc).splitlines()[0] if str(exc) else "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
