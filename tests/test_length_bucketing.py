"""Less padded work in training (opt-in): batches padded to their longest video
(``train_cfg.pad_to_batch_max``), batches of similar length (``loader.length_bucketing``), and
the long-tailed lengths of the demo generator."""
import importlib.util
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler, RandomSampler

from libs.core import load_config
from libs.core.config import ConfigError
from libs.datasets import (LengthGroupedBatchSampler, make_data_loader, make_dataset,
                           training_lengths)
from libs.datasets.batching import POOL_BATCHES
from libs.modeling import make_meta_arch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _make_demo_data():
    spec = importlib.util.spec_from_file_location(
        "make_demo_data", os.path.join(REPO, "tools", "make_demo_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------
# The batch sampler
# ------------------------------------------------------------------------------------------
def _epoch(sampler):
    return [list(b) for b in sampler]


def test_same_samples_as_the_plain_loader_grouped_by_length():
    n, batch = 300, 4
    lengths = torch.randint(10, 1000, (n,), generator=torch.Generator().manual_seed(0)).tolist()
    grouped = LengthGroupedBatchSampler(
        RandomSampler(range(n), generator=torch.Generator().manual_seed(5)), lengths, batch,
        generator=torch.Generator().manual_seed(5))
    plain = list(RandomSampler(range(n), generator=torch.Generator().manual_seed(5)))
    batches = _epoch(grouped)
    # the epoch's samples (and the dropped tail) are the plain loader's
    assert len(batches) == len(grouped) == n // batch
    assert all(len(b) == batch for b in batches)
    assert sorted(i for b in batches for i in b) == sorted(plain[:n - n % batch])
    # within a pool of POOL_BATCHES batches, samples are sorted by length
    pool = plain[:batch * POOL_BATCHES]
    in_pool = [b for b in batches if set(b) <= set(pool)]
    assert len(in_pool) == POOL_BATCHES
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in in_pool)
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(spans, spans[1:]))
    # far less padding than random batches
    padded = sum(max(lengths[i] for i in b) * batch for b in batches)
    plain_padded = sum(max(lengths[i] for i in plain[k:k + batch]) * batch
                       for k in range(0, n - n % batch, batch))
    assert padded < 0.8 * plain_padded


def test_epochs_differ_and_a_seed_repeats():
    lengths = list(range(100))

    def make(seed):
        gen = torch.Generator().manual_seed(seed)
        return LengthGroupedBatchSampler(RandomSampler(range(100), generator=gen), lengths, 2,
                                         generator=gen)
    a, b = make(1), make(1)
    first, second = _epoch(a), _epoch(a)
    assert first != second
    assert first == _epoch(b) and second == _epoch(b)
    assert _epoch(make(2)) != first


def test_ddp_ranks_get_disjoint_equal_shares():
    lengths = list(np.random.default_rng(0).integers(1, 500, 103))
    shares = []
    for rank in range(3):
        base = DistributedSampler(range(103), num_replicas=3, rank=rank, shuffle=True, seed=7,
                                  drop_last=True)
        base.set_epoch(4)
        batches = _epoch(LengthGroupedBatchSampler(base, lengths, 5,
                                                   generator=torch.Generator().manual_seed(rank)))
        assert len(batches) == len(base) // 5
        shares.append({i for b in batches for i in b})
        base_share = list(base)
        assert shares[-1] == set(base_share[:len(base_share) - len(base_share) % 5])
    assert not (shares[0] & shares[1] or shares[0] & shares[2] or shares[1] & shares[2])


# ------------------------------------------------------------------------------------------
# Data set lengths, loader, config and model
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def longtail(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("longtail"))
    _make_demo_data().make_demo_data(out, num_train=40, num_test=8, min_len=16, max_len=600,
                                     median_len=120, len_sigma=0.8, feat_dim=8)
    overrides = [f"dataset.json_file={out}/annotations/demo.json",
                 f"dataset.feat_folder={out}/features", "dataset.input_dim=8",
                 "model.embd_dim=16", "model.fpn_dim=16", "model.head_dim=16",
                 "dataset.max_seq_len=256", "loader.batch_size=4"]
    return out, overrides


def test_long_tailed_demo_lengths(longtail):
    out, _ = longtail
    steps = [np.load(os.path.join(out, "features", f), mmap_mode="r").shape[0]
             for f in os.listdir(os.path.join(out, "features"))]
    assert min(steps) >= 16 and max(steps) <= 600
    assert 60 <= np.median(steps) <= 240                      # around the median asked for
    assert np.mean(np.array(steps) > 256) > 0.05              # a tail beyond max_seq_len


def test_training_lengths_and_loader(longtail):
    out, overrides = longtail
    cfg = load_config(os.path.join(REPO, "configs", "demo.yaml"),
                      overrides + ["train_cfg.pad_to_batch_max=true",
                                   "loader.length_bucketing=true"])
    dataset = make_dataset(cfg["dataset_name"], True, cfg["train_split"], **cfg["dataset"])
    lengths = training_lengths(dataset)
    for idx in range(len(dataset)):      # truncation to max_seq_len, random 90-100 % crop
        assert 0.9 * lengths[idx] - 1 <= dataset[idx]["feats"].shape[1] <= lengths[idx]
    assert max(lengths) == 256 and min(lengths) < 100
    loader = make_data_loader(dataset, True, torch.Generator().manual_seed(0), 4, 0,
                              lengths=lengths)
    batches = list(loader)
    assert len(batches) == len(loader) == len(dataset) // 4
    assert all(isinstance(b, list) and len(b) == 4 for b in batches)


def test_bucketing_needs_pad_to_batch_max(longtail):
    _, overrides = longtail
    with pytest.raises(ConfigError, match="length_bucketing"):
        load_config(os.path.join(REPO, "configs", "demo.yaml"),
                    overrides + ["loader.length_bucketing=true"])


def test_pad_to_batch_max(longtail):
    out, overrides = longtail
    models = {}
    for on in (False, True):
        cfg = load_config(os.path.join(REPO, "configs", "demo.yaml"),
                          overrides + [f"train_cfg.pad_to_batch_max={str(on).lower()}",
                                       "dataset.crop_ratio=null", "model.n_mha_win_size=3"])
        torch.manual_seed(0)
        models[on] = make_meta_arch(cfg["model_name"], **cfg["model"]).train()
    dataset = make_dataset(cfg["dataset_name"], True, cfg["train_split"], **cfg["dataset"])
    items = {len(dataset[i]["feats"][0]): dataset[i] for i in range(len(dataset))}
    short = [items[n] for n in sorted(items)[:2]]                # both well below 256 steps
    x, mask, extents = models[True].preprocessing(short)
    longest = max(item["feats"].shape[1] for item in short)
    assert models[True].max_div_factor == 64                     # 32 strides x window 3 - 1
    assert x.shape[-1] == extents[0] == -(-longest // 64) * 64 < 256
    assert models[False].preprocessing(short)[0].shape[-1] == 256
    # a batch holding a max_seq_len video is padded alike: the same losses
    full = [items[n] for n in sorted(items)[-1:]] + short[:1]
    assert full[0]["feats"].shape[1] == 256
    torch.manual_seed(1)
    on = models[True](full)
    torch.manual_seed(1)
    off = models[False](full)
    for key in ("cls_loss", "reg_loss", "final_loss"):
        torch.testing.assert_close(on[key], off[key], rtol=0, atol=0)
    # shorter padding changes what the coarse levels see: the losses differ (opt-in switch)
    torch.manual_seed(1)
    assert models[True](short)["final_loss"] != models[False](short)["final_loss"]
