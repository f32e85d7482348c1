"""Ego4D Moment Queries loader: per-clip ``.npy`` features, possibly of
several types (SlowFast, Omnivore, EgoVLP) concatenated per step."""
from typing import Any, Dict

from .datasets import ActionDataset, register_dataset


@register_dataset("ego4d")
class Ego4DDataset(ActionDataset):
    """Ego4D MQ: 110 classes, clips produced by ``tools/convert_ego4d_trainval.py``.

    ``feat_folder`` may be a list; a clip is kept only if every folder has its file (else a
    counted warning), and the arrays, which must have equal T, are concatenated along channels
    in list order. ``input_dim`` is the total width or one width per folder. The entry's
    ``offset`` (test files only) is passed through to the item.
    """

    dataset_name = "ego4d"
    tiou_range = (0.1, 0.5, 5)
    skip_missing_features = True
    exact_num_classes = True

    def _extra_fields(self, entry: Dict[str, Any]) -> Dict[str, Any]:
        return {"offset": entry.get("offset")}
