"""From video files to clip features: decoding, clip sampling, I3D, optical flow, torchvision
video classifiers. Needs the optional ``video`` extra (``pip install -e .[video]``): PyAV,
torchvision and OpenCV (contrib, for TV-L1 flow). :func:`missing_video_extra` says what is
missing without importing anything heavy.
"""
from __future__ import annotations

import importlib.util
from typing import Optional

__all__ = ["VIDEO_EXTRA_MODULES", "missing_video_extra"]

# import name -> pip package of the `video` extra
VIDEO_EXTRA_MODULES = {"av": "av", "torchvision": "torchvision==0.28.0",
                       "cv2": "opencv-contrib-python-headless"}


def missing_video_extra() -> Optional[str]:
    """None when the video extra is installed, else a one-line message saying what to install."""
    missing = [pkg for mod, pkg in VIDEO_EXTRA_MODULES.items()
               if importlib.util.find_spec(mod) is None]
    if not missing:
        return None
    return (f"video support needs {', '.join(missing)}: pip install -e .[video] "
            f"(or pip install {' '.join(missing)})")
