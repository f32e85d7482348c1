"""EPIC-Kitchens loader: .npz features under key 'feats', empty classes (spec A.2, B.6)."""
import os
import random

import numpy as np
import pytest
import torch

from libs.datasets import make_dataset
from tests.fixtures_data import dataset_cfg, ramp, video, write_json

D = 6


@pytest.fixture
def epic(tmp_path):
    feat_dir = tmp_path / "epic_kitchens" / "features"
    feat_dir.mkdir(parents=True)
    database = {
        "P01_11": video("training", 60.0, 59.94, [("take", 0, 1.6, 3.2), ("open", 3, 8.0, 9.6)]),
        "P01_12": video("training", 30.0, 59.94, [("put", 2, 0.0, 1.6)]),
        "P02_01": video("validation", 20.0, 59.94, [("take", 0, 4.0, 5.6)]),
    }
    json_file = write_json(str(tmp_path / "epic_kitchens" / "annotations" / "epic_kitchens_100_verb.json"), database)
    for vid, steps in (("P01_11", 110), ("P01_12", 50), ("P02_01", 30)):
        np.savez(str(feat_dir / f"{vid}.npz"), feats=ramp(steps, D).astype(np.float16))
    return dataset_cfg(json_file, str(feat_dir), file_ext=".npz", feat_stride=16, num_frames=32,
                       default_fps=30, input_dim=D, num_classes=5, max_seq_len=64, trunc_thresh=0.3,
                       crop_ratio=[0.9, 1.0])


def test_npz_features_and_grid(epic):
    ds = make_dataset("epic", False, ["validation"], **epic)
    item = ds[0]
    assert item["video_id"] == "P02_01"
    assert item["feats"].shape == (D, 30) and item["feats"].dtype == torch.float32
    assert item["feats"][5, 2].item() == 205.0
    # default_fps 30 overrides the JSON's 59.94; stride 16, window 32: grid = 1.875 t - 1
    assert item["fps"] == 30
    torch.testing.assert_close(item["segments"], torch.tensor([[1.875 * 4.0 - 1, 1.875 * 5.6 - 1]]))
    assert item["labels"].tolist() == [0]


def test_empty_classes_over_all_subsets(epic):
    attrs = make_dataset("epic", False, ["validation"], **epic).get_attributes()
    # ids used anywhere in the JSON: 0, 2, 3 (training videos included)
    assert attrs["empty_label_ids"] == [1, 4]
    assert attrs["dataset_name"] == "epic-kitchens-100"
    np.testing.assert_array_equal(attrs["tiou_thresholds"], np.linspace(0.1, 0.5, 5))


def test_truncation_with_offset_one(epic):
    """L = 110 > 64: windows of 64 until an action keeps >= 30 % (window widened by 1 step)."""
    ds = make_dataset("epic", True, ["training"], **epic)
    random.seed(5)
    item = ds[0]
    random.seed(5)
    acts = [(2.0, 5.0), (14.0, 17.0)]               # grid of [1.6, 3.2] and [8.0, 9.6]
    while True:
        st = random.randint(0, 110 - 64)
        clipped = [(max(st - 1.0, s), min(st + 65.0, e)) for s, e in acts]
        kept = [i for i, (l, r) in enumerate(clipped) if max(r - l, 0) / 3.0 >= 0.3]
        if kept:
            break
    assert item["feats"].shape == (D, 64) and item["feats"][0, 0].item() == 100.0 * st
    torch.testing.assert_close(item["segments"],
                               torch.tensor([[clipped[i][0] - st, clipped[i][1] - st] for i in kept]))
    assert item["labels"].tolist() == [[0, 3][i] for i in kept]


def test_missing_npz_is_an_error(epic):
    os.remove(os.path.join(epic["feat_folder"], "P01_12.npz"))
    with pytest.raises(ValueError, match=r"epic_kitchens_100_verb.json: 1 problem:\n  video 'P01_12': "
                                         r"feature file not found: .*features/P01_12.npz"):
        make_dataset("epic", True, ["training"], **epic)


def test_npz_without_feats_key(epic):
    np.savez(os.path.join(epic["feat_folder"], "P02_01.npz"), x=ramp(30, D))
    ds = make_dataset("epic", False, ["validation"], **epic)
    with pytest.raises(ValueError, match=r"P02_01.npz: video 'P02_01': no array 'feats' in the .npz \(found \['x'\]\)"):
        ds[0]


def test_more_classes_than_num_classes(epic):
    with pytest.raises(ValueError, match=r"label_id: 3 \('open'\) is outside \[0, 3\)"):
        make_dataset("epic", False, ["validation"], **dict(epic, num_classes=3))
