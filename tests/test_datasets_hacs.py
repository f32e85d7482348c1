"""HACS loader (TriDet's configs): feature layouts per backbone_type, TriDet's training clip
rule and crop window, format checks."""
import os
import pickle
import random

import numpy as np
import pytest
import torch

from libs.core import ConfigError, load_config
from libs.datasets import DataWarning, make_dataset
from tests.fixtures_data import dataset_cfg, ramp, save_npy, video, write_json

D = 4
# vidA repeats an action: TriDet drops duplicates, as the ActivityNet loader does (counted warning)
pytestmark = pytest.mark.filterwarnings("ignore:.*duplicate or shorter-than-1-ms")


def _database():
    return {
        "vidA": video("training", 50.0, None, [("Archery", 0, 2.0, 5.0), ("Archery", 0, 2.0, 5.0),
                                               ("Bowling", 1, 8.0, 30.0), ("Bowling", 1, 40.0, 45.0)]),
        "vidB": video("validation", 10.0, None, [("Bowling", 1, 1.0, 4.0)]),
    }


@pytest.fixture
def hacs_i3d(tmp_path):
    """I3D layout of TriDet's hacs_i3d.yaml: 2 fps, stride 1, window 1: grid = 2 t - 0.5."""
    json_file = write_json(str(tmp_path / "annotations" / "HACS_segments_v1.1.1.json"), _database())
    feat_dir = str(tmp_path / "i3d_feature")
    save_npy(os.path.join(feat_dir, "training"), "vidA", ramp(36, D))
    save_npy(os.path.join(feat_dir, "validation"), "vidB", ramp(20, D))
    return dataset_cfg(json_file, feat_dir, feat_stride=1, num_frames=1, default_fps=2,
                       input_dim=D, num_classes=2, max_seq_len=512, backbone_type="i3d")


def test_i3d_items_in_the_split_folder(hacs_i3d):
    with pytest.warns(DataWarning, match="duplicate or shorter-than-1-ms actions dropped.*vidA"):
        train = make_dataset("hacs", False, ["training"], **hacs_i3d)
    assert [v["id"] for v in train.data_list] == ["vidA"]
    item = train[0]
    assert item["feats"].shape == (D, 36) and item["feats"][3, 7].item() == 703.0
    # duplicate dropped (as TriDet's remove_duplicate_annotations); grid = 2 t - 0.5
    torch.testing.assert_close(item["segments"], torch.tensor([[3.5, 9.5], [15.5, 59.5], [79.5, 89.5]]))
    assert item["labels"].tolist() == [0, 1, 1]
    attrs = train.get_attributes()
    assert attrs["dataset_name"] == "HACS"
    np.testing.assert_allclose(attrs["tiou_thresholds"], np.linspace(0.5, 0.95, 10))
    # every split reads the folder of the first split (TriDet: split[0])
    with pytest.raises(ValueError, match="vidB.*feature file not found.*training/vidB.npy"):
        make_dataset("hacs", False, ["training", "validation"], **hacs_i3d)


def test_training_clip_drops_late_actions_without_share_rule(hacs_i3d):
    random.seed(0)
    item = make_dataset("hacs", True, ["training"], **hacs_i3d)[0]
    # 36 steps: [79.5, 89.5] starts after the features -> dropped; [15.5, 59.5] (46 % inside)
    # kept and clipped to 36 (the ActivityNet loader would drop it: share < trunc_thresh 0.5)
    torch.testing.assert_close(item["segments"], torch.tensor([[3.5, 9.5], [15.5, 36.0]]))


def test_training_crop_window_is_not_widened(hacs_i3d):
    cfg = dict(hacs_i3d, max_seq_len=16, trunc_thresh=0.1)
    ds = make_dataset("hacs", True, ["training"], **cfg)
    for seed in range(20):
        random.seed(seed)
        item = ds[0]
        # actions clipped exactly to the 16-step window [0, 16] (no ± half-window margin)
        assert item["segments"].min() >= 0.0 and item["segments"].max() <= 16.0
        assert item["feats"].shape == (D, 16)


def test_slowfast_pickles(tmp_path):
    json_file = write_json(str(tmp_path / "HACS_segments_v1.1.1_slowfast.json"), _database())
    folder = tmp_path / "slowfast_feature" / "validation"
    folder.mkdir(parents=True)
    slow, fast = torch.arange(3 * 5.0).reshape(1, 3, 5), -torch.arange(1 * 5.0).reshape(1, 1, 5)
    with open(folder / "vidB.pkl", "wb") as fd:
        pickle.dump({"slow_feature": slow, "fast_feature": fast}, fd)
    cfg = dataset_cfg(json_file, str(tmp_path / "slowfast_feature"), file_ext=".pkl", feat_stride=8,
                      num_frames=32, default_fps=15, input_dim=4, num_classes=2, max_seq_len=960,
                      backbone_type="slowfast")
    item = make_dataset("hacs", False, ["validation"], **cfg)[0]
    # channels: slow then fast, time-major in the file -> D x T in the item
    torch.testing.assert_close(item["feats"], torch.cat([slow, fast], dim=1)[0])
    # grid = (15 t - 16) / 8
    torch.testing.assert_close(item["segments"], torch.tensor([[-0.125, 5.5]]))
    with open(folder / "vidB.pkl", "wb") as fd:
        pickle.dump({"slow_feature": slow}, fd)
    with pytest.raises(ValueError, match="vidB.pkl: video 'vidB'.*no 'fast_feature'"):
        make_dataset("hacs", False, ["validation"], **cfg)[0]


def test_tsp_layout_has_v_prefix_and_no_split_folder(tmp_path):
    json_file = write_json(str(tmp_path / "hacs.json"), _database())
    save_npy(str(tmp_path / "tsp"), "v_vidB", ramp(12, D))
    cfg = dataset_cfg(json_file, str(tmp_path / "tsp"), feat_stride=16, num_frames=16,
                      default_fps=15, input_dim=D, num_classes=2, backbone_type="tsp")
    assert make_dataset("hacs", False, ["validation"], **cfg)[0]["feats"].shape == (D, 12)


def test_format_checks(hacs_i3d, tmp_path):
    with pytest.raises(ValueError, match="dataset.backbone_type: expected one of i3d, slowfast, tsp"):
        make_dataset("hacs", False, ["training"], **dict(hacs_i3d, backbone_type="c3d"))
    with pytest.raises(ValueError, match="classes"):
        make_dataset("hacs", False, ["training"], **dict(hacs_i3d, num_classes=3))
    db = _database()
    del db["vidA"]["duration"]
    json_file = write_json(str(tmp_path / "no_duration.json"), db)
    with pytest.raises(ValueError, match="vidA.*duration: missing"):
        make_dataset("hacs", False, ["training"], **dict(hacs_i3d, json_file=json_file))
    # wrong feature width names file and video
    save_npy(os.path.join(hacs_i3d["feat_folder"], "training"), "vidA", ramp(36, D + 1))
    with pytest.raises(ValueError, match="vidA.npy: video 'vidA': features have dimension 5"):
        make_dataset("hacs", False, ["training"], **hacs_i3d)[0]


def test_config_key_only_for_hacs():
    with pytest.raises(ConfigError, match="dataset.backbone_type: only the hacs data set"):
        load_config("configs/thumos_i3d.yaml", ["dataset.backbone_type=i3d"])
    with pytest.raises(ConfigError, match="dataset.backbone_type: expected one of"):
        load_config("configs/thumos_i3d.yaml", ["dataset_name=hacs", "dataset.backbone_type=c3d"])
