"""EPIC-Kitchens-100 loader: SlowFast ``.npz`` features (key ``feats``)."""
from .datasets import ActionDataset, register_dataset


@register_dataset("epic")
class EpicKitchensDataset(ActionDataset):
    """EPIC-Kitchens-100 verbs (97 classes) or nouns (300 classes).

    A missing feature file is an error (the reference fails when loading it). Classes that no
    annotation of the JSON uses (any subset) are listed in ``empty_label_ids``; training gives
    them a near-zero prior (``train_cfg.head_empty_cls``).
    """

    dataset_name = "epic-kitchens-100"
    tiou_range = (0.1, 0.5, 5)
    skip_missing_features = False
    exact_num_classes = False
    report_empty_classes = True
