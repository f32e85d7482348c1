"""THUMOS14 loader on a small fixture in the real layout (spec A.2, B.1-B.4)."""
import os
import random
import warnings

import numpy as np
import pytest
import torch

from libs.datasets import DataWarning, make_dataset
from tests.fixtures_data import dataset_cfg, ramp, save_npy, video, write_json

D = 4


@pytest.fixture
def thumos(tmp_path):
    root = tmp_path / "data" / "thumos"
    feat_dir = str(root / "i3d_features")
    database = {
        "video_validation_0000051": video("Validation", 10.0, 30.0, [("Billiards", 1, 2.0, 5.4),
                                                                    ("BaseballPitch", 0, 0.1, 0.5)]),
        "video_validation_0000052": video("Validation", 6.0, 25.0, [("Billiards", 1, 1.0, 2.0)]),
        "video_validation_0000053": video("Validation", 6.0, 30.0, [("Billiards", 1, 1.0, 2.0)]),
        "video_test_0000004": video("Test", 5.0, 30.0, []),
    }
    json_file = write_json(str(root / "annotations" / "thumos14.json"), database)
    save_npy(feat_dir, "video_validation_0000051", ramp(80, D))
    save_npy(feat_dir, "video_validation_0000052", ramp(40, D, base=0.5))
    save_npy(feat_dir, "video_test_0000004", ramp(37, D))
    # video_validation_0000053 has no features: skipped, as the reference does
    return dataset_cfg(json_file, feat_dir, feat_stride=4, num_frames=16, input_dim=D, num_classes=2)


def build(cfg, is_training, split, **overrides):
    with pytest.warns(DataWarning, match="no feature file.*1 video.*video_validation_0000053"):
        return make_dataset("thumos", is_training, split, **dict(cfg, **overrides))


def test_items_in_feature_grid(thumos):
    ds = build(thumos, False, ["validation"])
    assert [v["id"] for v in ds.data_list] == ["video_validation_0000051", "video_validation_0000052"]
    assert ds.split == ["validation"] and ds.json_file == thumos["json_file"]

    item = ds[0]
    # D x T, float32, feats[d, t] = 100 t + d
    assert item["feats"].shape == (D, 80) and item["feats"].dtype == torch.float32
    assert item["feats"][3, 7].item() == 703.0
    # fps 30, stride 4, window 16: grid = 7.5 t - 2
    expected = torch.tensor([[7.5 * 2.0 - 2, 7.5 * 5.4 - 2], [7.5 * 0.1 - 2, 7.5 * 0.5 - 2]])
    assert item["segments"].dtype == torch.float32
    torch.testing.assert_close(item["segments"], expected)
    assert item["labels"].tolist() == [1, 0] and item["labels"].dtype == torch.int64
    assert (item["fps"], item["duration"], item["feat_stride"], item["feat_num_frames"]) == (30.0, 10.0, 4, 16)

    # per-video fps 25: grid = 6.25 t - 2
    torch.testing.assert_close(ds[1]["segments"], torch.tensor([[4.25, 10.5]]))


def test_attributes(thumos):
    attrs = make_dataset("thumos", False, ["test"], **thumos).get_attributes()
    assert attrs["dataset_name"] == "thumos-14" and attrs["empty_label_ids"] == []
    np.testing.assert_array_equal(attrs["tiou_thresholds"], np.linspace(0.3, 0.7, 5))


def test_unlabelled_test_video_is_evaluation_data(thumos):
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # an empty annotation list is no problem
        ds = make_dataset("thumos", False, ["test"], **thumos)
    item = ds[0]
    assert item["video_id"] == "video_test_0000004"
    assert item["segments"] is None and item["labels"] is None
    assert item["feats"].shape == (D, 37)


def test_downsample_rate(thumos):
    item = build(thumos, False, ["validation"], downsample_rate=2)[0]
    assert item["feats"].shape == (D, 40) and item["feats"][0, 1].item() == 200.0
    # stride 8, offset 0.5 * 16 / 8 = 1: grid = 3.75 t - 1
    torch.testing.assert_close(item["segments"][0], torch.tensor([3.75 * 2.0 - 1, 3.75 * 5.4 - 1]))
    assert item["feat_stride"] == 8


@pytest.mark.parametrize("seed", list(range(12)) + [17])  # seed 17 draws W = 80
def test_random_crop_of_short_video(thumos, seed):
    """L = 80 <= max_seq_len: crop to W ~ U{72..80}; window start st ~ U{0..80-W} (spec B.3)."""
    ds = build(thumos, True, ["validation"], crop_ratio=[0.9, 1.0])
    random.seed(seed)
    item = ds[0]
    random.seed(seed)
    width = random.randint(72, 80)      # round(0.9 * 80) = 72
    if width == 80:
        assert item["feats"].shape == (D, 80) and len(item["segments"]) == 2
        return
    st = random.randint(0, 80 - width)  # action [13, 38.5] is always inside: first trial accepted
    assert item["feats"].shape == (D, width)
    assert item["feats"][0, 0].item() == 100.0 * st
    # window widened by feat_offset = 2 on both sides; action 2 = [-1.25, 1.75] (3 steps long)
    # keeps (1.75 - max(st - 2, -1.25)) / 3 of itself: >= 0.5 iff st <= 2
    if st <= 2:
        expected = [[13.0 - st, 38.5 - st], [max(st - 2.0, -1.25) - st, 1.75 - st]]
        assert item["labels"].tolist() == [1, 0]
    else:
        expected = [[13.0 - st, 38.5 - st]]
        assert item["labels"].tolist() == [1]
    torch.testing.assert_close(item["segments"], torch.tensor(expected))
    # the stored record is untouched
    assert ds[0]["video_id"] == "video_validation_0000051"


def test_truncation_of_long_video(thumos):
    """L = 80 > max_seq_len = 32: windows of 32 until action [13, 38.5] keeps >= 50 %."""
    ds = build(thumos, True, ["validation"], max_seq_len=32, crop_ratio=[0.9, 1.0])
    random.seed(3)
    item = ds[0]
    random.seed(3)
    while True:
        st = random.randint(0, 48)
        left, right = max(st - 2.0, 13.0), min(st + 34.0, 38.5)
        if (right - left) / 25.5 >= 0.5:
            break
    assert item["feats"].shape == (D, 32) and item["feats"][1, 0].item() == 100.0 * st + 1
    torch.testing.assert_close(item["segments"][0], torch.tensor([left - st, right - st]))
    # same seed, same crop
    random.seed(3)
    torch.testing.assert_close(ds[0]["segments"], item["segments"])


def test_paths_relative_to_data_root(thumos, tmp_path, monkeypatch):
    """The shipped config's relative paths (./data/thumos/...) work from the repository root."""
    monkeypatch.chdir(tmp_path)
    cfg = dict(thumos, json_file="./data/thumos/annotations/thumos14.json",
               feat_folder="./data/thumos/i3d_features")
    assert len(build(cfg, False, ["validation"])) == 2
    assert os.path.exists(cfg["json_file"])
