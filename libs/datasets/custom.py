"""A loader for your own data (see ``docs/custom_dataset.md``)."""
from .datasets import ActionDataset, register_dataset


@register_dataset("custom")
class CustomDataset(ActionDataset):
    """The common JSON format with any classes, fps and feature stride.

    * classes: ``label_id`` values in ``[0, num_classes)``, one id per label name; classes no
      annotation uses are listed in ``empty_label_ids``;
    * features: ``.npy`` (``T x D``), ``.npz`` (array ``feats``) or one ``.hdf5`` file, or a list
      of folders concatenated per step; videos without features are skipped with a warning;
    * fps: ``dataset.default_fps`` or a per-video ``fps`` field; ``duration`` is recommended
      (detections are clipped to it);
    * evaluation at tIoU 0.3, 0.4, ..., 0.7.
    """

    dataset_name = "custom"
    tiou_range = (0.3, 0.7, 5)
    skip_missing_features = True
    exact_num_classes = False
    report_empty_classes = True
