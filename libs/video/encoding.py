"""Writing videos with PyAV (MPEG-4 part 2, which every PyAV wheel can encode): for synthetic
demo data and tests."""
from __future__ import annotations

from fractions import Fraction
from typing import Iterable, Union

import numpy as np

__all__ = ["write_frames"]


def write_frames(path: str, frames: Iterable[np.ndarray], fps: Union[int, float, Fraction],
                 height: int, width: int, quality: int = 2) -> int:
    """Encode ``H x W x 3`` uint8 RGB frames at ``fps``; returns the number of frames written.
    ``quality``: MPEG-4 quantiser, 2 (best) to 31."""
    import av

    count = 0
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(str(fps)))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"qscale": str(quality)}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
            count += 1
        for packet in stream.encode():
            container.mux(packet)
    return count
