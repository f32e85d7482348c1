"""HACS Segments loader as TriDet's configs use it (``dataset_name: hacs``): I3D ``.npy`` or
SlowFast ``.pkl`` features in one folder per split, or TSP ``v_<id>.npy`` features."""
import os
import pickle
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .anet import ActivityNetDataset
from .data_utils import FeatureReader
from .datasets import register_dataset

FEATURE_TYPES = ("i3d", "slowfast", "tsp")


class SlowFastPickleReader(FeatureReader):
    """``<folder>/<video id>.pkl``: a pickled dict whose ``slow_feature`` (``1 x C_s x T``) and
    ``fast_feature`` (``1 x C_f x T``) tensors are concatenated into ``T x (C_s + C_f)``."""

    def _load(self, folder: str, path: str, video_id: str) -> np.ndarray:
        with open(path, "rb") as fd:
            data = pickle.load(fd)
        parts = []
        for key in ("slow_feature", "fast_feature"):
            if not isinstance(data, dict) or key not in data:
                raise ValueError(f"{path}: video '{video_id}': no '{key}' in the pickle (expected "
                                 f"a dict with 'slow_feature' and 'fast_feature')")
            value = np.asarray(data[key], dtype=np.float32)
            if value.ndim != 3 or value.shape[0] != 1:
                raise ValueError(f"{path}: video '{video_id}': field '{key}' has shape "
                                 f"{tuple(value.shape)}, expected 1 x C x T")
            parts.append(value[0])
        if parts[0].shape[1] != parts[1].shape[1]:
            raise ValueError(f"{path}: video '{video_id}': 'slow_feature' and 'fast_feature' "
                             f"have different lengths T ({parts[0].shape[1]} and "
                             f"{parts[1].shape[1]})")
        return np.ascontiguousarray(np.concatenate(parts, axis=0).T)


@register_dataset("hacs")
class HACSDataset(ActivityNetDataset):
    """HACS Segments v1.1.1 (200 classes, or class-agnostic with ``num_classes: 1``), read the
    way TriDet's loader reads it.

    ``backbone_type`` (a ``dataset`` key in TriDet's configs) names the features: ``i3d``
    (``<feat_folder>/<split[0]>/<file_prefix><id><file_ext>``), ``slowfast``
    (``<feat_folder>/<split[0]>/<id><file_ext>``, a ``.pkl`` read by
    :class:`SlowFastPickleReader`) or ``tsp`` (``<feat_folder>/v_<id><file_ext>``). Every split
    reads the folder of the first split, as TriDet does.

    As in TriDet, and unlike the ActivityNet loader: in training, actions starting at or after
    the last feature step are dropped and the others clipped to it, with no minimum share kept;
    training crops clip actions to the window itself (not widened by half a feature window).
    Evaluation at tIoU 0.5:0.95 (10 thresholds); duplicate annotations dropped; a missing
    feature file or duration is an error.
    """

    dataset_name = "HACS"
    tiou_range = (0.5, 0.95, 10)
    skip_missing_features = False
    requires_duration = True
    widen_truncation = False

    def __init__(self, is_training: bool, split: Sequence[str], *, backbone_type: str = "i3d",
                 **kwargs) -> None:
        if backbone_type not in FEATURE_TYPES:
            raise ValueError(f"dataset.backbone_type: expected one of {', '.join(FEATURE_TYPES)} "
                             f"(the HACS feature type), got {backbone_type!r}")
        self.backbone_type = backbone_type
        super().__init__(is_training, split, **kwargs)

    def _feature_reader(self, feat_folder: Union[str, Sequence[str]], file_prefix: Optional[str],
                        file_ext: Optional[str], input_dim: Union[int, Sequence[int]]
                        ) -> FeatureReader:
        if not isinstance(feat_folder, str):
            raise ValueError(f"dataset.feat_folder: HACS reads one folder, got {feat_folder!r}")
        if self.backbone_type == "tsp":
            return FeatureReader(feat_folder, "v_", file_ext, input_dim)
        folder = os.path.join(feat_folder, self.split[0])
        if self.backbone_type == "slowfast":
            return SlowFastPickleReader(folder, None, file_ext, input_dim)
        return FeatureReader(folder, file_prefix, file_ext, input_dim)

    def _clip_to_features(self, video: Dict[str, Any], segments: torch.Tensor, labels: torch.Tensor,
                          feat_len: int, feat_offset: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """Drop actions starting at or after ``feat_len``; clip the others' ends to it."""
        keep = segments[:, 0] < feat_len
        if not keep.any():
            raise ValueError(f"{self.json_file}: video '{video['id']}': no annotated action "
                             f"starts within its {feat_len} feature steps (grid segments "
                             f"{segments.tolist()}); check its duration / features")
        return segments[keep].clamp(max=feat_len), labels[keep]
