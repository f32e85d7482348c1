"""ActivityNet 1.3 loader: TSP / I3D features in ``.npy`` files or one
HDF5 file, resized to a fixed length (``force_upsampling``)."""
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from ..utils.metrics import remove_duplicate_annotations
from .data_utils import ProblemReport, resize_to_fixed_length
from .datasets import ActionDataset, register_dataset


@register_dataset("anet")
class ActivityNetDataset(ActionDataset):
    """ActivityNet 1.3, trained class-agnostic (``num_classes: 1``) or with its 200 classes.

    Per video: duplicate and shorter-than-1-ms events are dropped (the evaluator's rule, counted
    warning); with ``force_upsampling`` the ``T0`` features are linearly resized to
    ``max_seq_len`` steps, each step covering ``((T0 - 1) * feat_stride + num_frames) /
    max_seq_len`` frames (e.g. TSP, T0 = 120: 10 frames, ``grid = 1.5 * t - 0.5``). In training,
    actions starting beyond the features are dropped and the others clipped.
    A missing feature file or duration is an error.
    """

    dataset_name = "ActivityNet 1.3"
    tiou_range = (0.5, 0.95, 10)
    skip_missing_features = False
    requires_duration = True

    @property
    def class_agnostic(self) -> bool:
        return self.num_classes == 1

    def _check_num_classes(self, report: ProblemReport) -> None:
        if not self.class_agnostic:
            super()._check_num_classes(report)

    def _select_annotations(self, vid: str, acts: List[dict], report: ProblemReport) -> List[dict]:
        kept = remove_duplicate_annotations(acts)
        for _ in range(len(acts) - len(kept)):
            report.warn("duplicate or shorter-than-1-ms actions dropped (as the reference does)", vid)
        return kept

    def _resample(self, video: Dict[str, Any], feats: np.ndarray) -> Tuple[torch.Tensor, float, float]:
        if not self.force_upsampling:
            return super()._resample(video, feats)
        feats = torch.from_numpy(np.ascontiguousarray(feats.transpose()))
        feats, feat_stride = resize_to_fixed_length(feats, self.feat_stride, self.num_frames,
                                                    self.max_seq_len)
        return feats, feat_stride, feat_stride

    def _clip_to_features(self, video: Dict[str, Any], segments: torch.Tensor, labels: torch.Tensor,
                          feat_len: int, feat_offset: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """Drop actions starting at or after ``feat_len + feat_offset``; keep the others whose
        share inside that bound is at least ``trunc_thresh``, with the end clipped to it."""
        vid_len = feat_len + feat_offset
        seg64 = segments.double()
        inside = (torch.clamp(seg64[:, 1], max=vid_len) - seg64[:, 0]) / (seg64[:, 1] - seg64[:, 0])
        keep = (seg64[:, 0] < vid_len) & (inside >= self.trunc_thresh)
        if not keep.any():
            raise ValueError(f"{self.json_file}: video '{video['id']}': no annotated action lies "
                             f"within its {feat_len} feature steps (grid segments "
                             f"{segments.tolist()}); check its duration / features")
        return segments[keep].clamp(max=vid_len), labels[keep]
