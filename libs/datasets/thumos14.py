"""THUMOS14 loader: I3D ``.npy`` features, per-video fps from the JSON."""
from .datasets import ActionDataset, register_dataset


@register_dataset("thumos")
class THUMOS14Dataset(ActionDataset):
    """THUMOS14: 20 classes, train on ``validation``, evaluate on ``test``.

    Videos without a feature file are skipped (counted warning), as in the reference.
    Grid at fps 30, stride 4, window 16: ``grid = 7.5 * t - 2``.
    """

    dataset_name = "thumos-14"
    tiou_range = (0.3, 0.7, 5)
    skip_missing_features = True
    exact_num_classes = True
