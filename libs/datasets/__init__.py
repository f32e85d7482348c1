"""Data sets: annotation JSON + feature files -> per-video items.

Importing this package registers the loaders ``thumos``, ``anet``, ``epic``, ``ego4d``, ``hacs``
and ``custom`` in :data:`DATASETS`.
"""
from . import anet, custom, ego4d, epic_kitchens, hacs, thumos14  # noqa: F401  (registration)
from .batching import LengthGroupedBatchSampler, training_lengths
from .data_utils import DataWarning, truncate_feats, worker_init_reset_seed
from .datasets import DATASETS, ActionDataset, make_data_loader, make_dataset, register_dataset

__all__ = ["DATASETS", "ActionDataset", "DataWarning", "LengthGroupedBatchSampler",
           "make_data_loader", "make_dataset", "register_dataset", "training_lengths",
           "truncate_feats", "worker_init_reset_seed"]
