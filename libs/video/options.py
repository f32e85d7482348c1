"""How features are made from videos: one set of options shared by ``tools/extract_features.py``
(command line), ``features_meta.json`` and ``tools/predict.py`` (the config's ``features:`` block).
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from .sampling import ClipSampling

__all__ = ["ExtractorOptions"]


@dataclass(frozen=True)
class ExtractorOptions:
    """Backbone, clip sampling and preprocessing of a feature extractor.

    ``weights``: torchvision weights name (``default``, an enum member such as ``KINETICS400_V1``,
    or ``none`` for random weights; for ``i3d``, ``none`` means random weights instead of the
    ``rgb_weights`` / ``flow_weights`` files). ``short_side`` / ``crop_size``: I3D's resize and
    centre crop (torchvision models use their weights' own transforms).
    """

    backbone: str = "i3d"
    clip_len: int = 16
    stride: int = 4
    fps: Optional[float] = None
    weights: str = "default"
    rgb_weights: Optional[str] = None
    flow_weights: Optional[str] = None
    two_stream: bool = False
    flow: str = "tvl1"
    short_side: int = 256
    crop_size: int = 224

    @property
    def sampling(self) -> ClipSampling:
        return ClipSampling(self.clip_len, self.stride, self.fps)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str) -> "ExtractorOptions":
        """Build from a dict (a config's ``features:`` block); unknown keys are errors."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ValueError(f"{where}: features.{key}: unknown key{hint}")
        return cls(**{k: v for k, v in values.items() if v is not None})

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)
