"""Training batches of similar length (``loader.length_bucketing``), for less padded work
together with ``train_cfg.pad_to_batch_max``.

Each epoch the base sampler's order (the shuffled order of the plain loader, or a
``DistributedSampler``'s share of a common permutation under DDP) is cut into pools of
:data:`POOL_BATCHES` batches; each pool is sorted by length and cut into batches, and the
batches are visited in random order. The samples of an epoch, and the ones the last partial
batch drops, are those of the plain loader; only how they are grouped changes.
"""
from __future__ import annotations

import math
from typing import Iterator, List, Optional, Sequence

import torch
from torch.utils.data import Sampler

from .data_check import stored_shape

__all__ = ["POOL_BATCHES", "LengthGroupedBatchSampler", "training_lengths"]

POOL_BATCHES = 32   # batches per pool sorted by length


class LengthGroupedBatchSampler(Sampler[List[int]]):
    """Batches (lists of dataset indices) of similar ``lengths``, drawn from ``sampler``.

    ``generator`` shuffles the batch order (the loader's generator, so that a seeded run
    repeats); the last ``len(sampler) % batch_size`` samples of the epoch's order are dropped
    when ``drop_last``.
    """

    def __init__(self, sampler: Sampler[int], lengths: Sequence[int], batch_size: int,
                 drop_last: bool = True, generator: Optional[torch.Generator] = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler, self.lengths = sampler, list(lengths)
        self.batch_size, self.drop_last, self.generator = batch_size, drop_last, generator

    def __len__(self) -> int:
        count = len(self.sampler) / self.batch_size
        return int(count) if self.drop_last else math.ceil(count)

    def __iter__(self) -> Iterator[List[int]]:
        order = list(self.sampler)
        if self.drop_last:
            order = order[:len(order) - len(order) % self.batch_size]
        pool = self.batch_size * POOL_BATCHES
        batches = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start:start + pool], key=self.lengths.__getitem__)
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk),
                                                                   self.batch_size)]
        for i in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[i]


def training_lengths(dataset) -> List[int]:
    """Steps each training item has at most (``max_seq_len`` at most; a random crop may take a
    few off), from the stored feature
    headers of the first feature folder (ActivityNet's ``force_upsampling``: ``max_seq_len``).
    An unreadable header counts as ``max_seq_len`` (the pre-flight check reports it)."""
    if getattr(dataset, "force_upsampling", False):
        return [dataset.max_seq_len] * len(dataset)
    folder = dataset.reader.folders[0]
    lengths = []
    for video in dataset.data_list:
        try:
            steps = stored_shape(dataset.reader, folder, video["id"])[0]
        except (ValueError, OSError, KeyError):
            steps = dataset.max_seq_len
        lengths.append(min(dataset.max_seq_len, -(-steps // dataset.downsample_rate)))
    return lengths
