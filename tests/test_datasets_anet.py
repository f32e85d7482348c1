"""ActivityNet loader: v_ prefix, HDF5 container, force_upsampling to 192 steps (spec A.2, B.2)."""
import random

import h5py
import numpy as np
import pytest
import torch

from libs.datasets import DataWarning, make_dataset
from tests.fixtures_data import dataset_cfg, ramp, save_npy, video, write_json

D = 3
T0 = 120


@pytest.fixture
def anet(tmp_path):
    root = tmp_path / "anet_1.3"
    feat_dir = str(root / "tsp_features")
    database = {
        # YouTube ids without the v_ prefix; 200 classes in the JSON, trained as one class
        "abc": video("training", 128.0, None, [("Archery", 5, 2.0, 10.0), ("Archery", 5, 2.0004, 10.0),
                                               ("Bowling", 7, 3.0, 3.0005), ("Bowling", 7, 20.0, 30.0)]),
        "xyz": video("validation", 100.0, None, [("Bowling", 7, 1.0, 4.0)]),
    }
    json_file = write_json(str(root / "annotations" / "anet1.3_tsp_filtered.json"), database)
    save_npy(feat_dir, "v_abc", ramp(T0, D))
    save_npy(feat_dir, "v_xyz", ramp(T0, D))
    return dataset_cfg(json_file, feat_dir, file_prefix="v_", feat_stride=16, num_frames=16,
                       default_fps=15, input_dim=D, num_classes=1, max_seq_len=192,
                       force_upsampling=True, crop_ratio=None)


def build(cfg, is_training=False, split=("training",), **overrides):
    return make_dataset("anet", is_training, list(split), **dict(cfg, **overrides))


def test_duplicates_and_tiny_events_dropped_with_warning(anet):
    with pytest.warns(DataWarning, match=r"duplicate or shorter-than-1-ms actions dropped.*2 in 1 video \(abc\)"):
        ds = build(anet)
    assert len(ds.data_list[0]["segments"]) == 2


def test_force_upsampling_grid_and_resize(anet):
    with pytest.warns(DataWarning):
        item = build(anet)[0]
    # stride_eff = ((120 - 1) * 16 + 16) / 192 = 10 frames; fps 15: grid = 1.5 t - 0.5
    assert item["feat_stride"] == 10.0 and item["feat_num_frames"] == 10.0
    torch.testing.assert_close(item["segments"], torch.tensor([[2.5, 14.5], [29.5, 44.5]]))
    assert item["labels"].tolist() == [0, 0]          # num_classes 1: class-agnostic
    # linear resize, align_corners=False: step i samples source (i + 0.5) * 120 / 192 - 0.5,
    # clamped to [0, 119]; the source is 100 t + d
    assert item["feats"].shape == (D, 192)
    src = np.clip((np.arange(192) + 0.5) * T0 / 192 - 0.5, 0, T0 - 1)
    np.testing.assert_allclose(item["feats"][2].numpy(), 100 * src + 2, rtol=1e-6, atol=1e-3)


def test_hdf5_container_equals_npy(anet, tmp_path):
    h5_path = str(tmp_path / "anet_1.3" / "tsp_features.hdf5")
    with h5py.File(h5_path, "w") as h5:
        h5["v_abc"] = ramp(T0, D)
        h5["v_xyz"] = ramp(T0, D)
    with pytest.warns(DataWarning):
        from_npy = build(anet)[0]
        from_h5 = build(anet, feat_folder=h5_path)[0]
    torch.testing.assert_close(from_h5["feats"], from_npy["feats"])
    torch.testing.assert_close(from_h5["segments"], from_npy["segments"])


def test_without_upsampling_uses_plain_stride(anet):
    with pytest.warns(DataWarning):
        item = build(anet, force_upsampling=False)[0]
    # stride 16, window 16, fps 15: grid = 15 t / 16 - 0.5
    assert item["feats"].shape == (D, T0) and item["feat_stride"] == 16
    torch.testing.assert_close(item["segments"][0], torch.tensor([2.0 * 15 / 16 - 0.5, 10.0 * 15 / 16 - 0.5]))


def test_training_cleanup_beyond_features(anet, tmp_path):
    """vid_len = 192 + 0.5; actions starting beyond are dropped, the others kept iff >= 50 %
    of them lies inside, with their end clipped (spec B.2)."""
    database = {"abc": video("training", 128.0, None, [
        ("Archery", 5, 130.0, 140.0),    # grid [194.5, 209.5]: starts beyond -> dropped
        ("Archery", 5, 120.0, 140.0),    # [179.5, 209.5]: (192.5 - 179.5) / 30 = 0.43 -> dropped
        ("Bowling", 7, 125.0, 130.0),    # [187, 194.5]: 5.5 / 7.5 = 0.73 -> kept as [187, 192.5]
        ("Bowling", 7, 10.0, 20.0)])}    # [14.5, 29.5] inside
    json_file = write_json(str(tmp_path / "clean.json"), database)
    with pytest.warns(DataWarning, match=r"clean.json: actions kept that reach more than 1 s outside "
                                         r"\[0, duration\]: 3 in 1 video \(abc\)"):
        train = build(anet, True, json_file=json_file)
    random.seed(0)
    item = train[0]
    torch.testing.assert_close(item["segments"], torch.tensor([[187.0, 192.5], [14.5, 29.5]]))
    # evaluation items keep every action
    with pytest.warns(DataWarning):
        assert len(build(anet, False, json_file=json_file)[0]["segments"]) == 4


def test_training_cleanup_removing_everything_is_an_error(anet, tmp_path):
    json_file = write_json(str(tmp_path / "out.json"),
                           {"abc": video("training", 128.0, None, [("Archery", 5, 130.0, 140.0)])})
    with pytest.warns(DataWarning):
        train = build(anet, True, json_file=json_file)
    with pytest.raises(ValueError, match=r"out.json: video 'abc': no annotated action lies within its 192 feature steps"):
        train[0]


def test_random_crop_uses_half_step_offset(anet, tmp_path):
    json_file = write_json(str(tmp_path / "crop.json"),
                           {"abc": video("training", 128.0, None, [("Archery", 5, 10.0, 20.0)])})
    train = build(anet, True, json_file=json_file, crop_ratio=[0.9, 1.0])
    random.seed(1)
    item = train[0]
    random.seed(1)
    width = random.randint(173, 192)     # round(0.9 * 192) = 173 (spec J)
    st = random.randint(0, 192 - width) if width < 192 else 0
    assert item["feats"].shape == (D, width)
    torch.testing.assert_close(item["segments"], torch.tensor([[14.5 - st, 29.5 - st]]))


def test_attributes_and_class_count(anet):
    with pytest.warns(DataWarning):
        attrs = build(anet).get_attributes()
    assert attrs["dataset_name"] == "ActivityNet 1.3" and attrs["empty_label_ids"] == []
    np.testing.assert_array_equal(attrs["tiou_thresholds"], np.linspace(0.5, 0.95, 10))
    with pytest.warns(DataWarning), \
            pytest.raises(ValueError, match=r"the file names 2 classes but dataset.num_classes is 200"):
        build(anet, num_classes=200)


def test_missing_feature_file_is_an_error(anet, tmp_path):
    (tmp_path / "anet_1.3" / "tsp_features" / "v_xyz.npy").unlink()
    with pytest.raises(ValueError, match=r"anet1.3_tsp_filtered.json: 1 problem:\n  video 'xyz': "
                                         r"feature file not found: .*tsp_features/v_xyz.npy"):
        build(anet, split=["validation"])


def test_missing_duration_is_an_error(anet, tmp_path):
    json_file = write_json(str(tmp_path / "nodur.json"),
                           {"xyz": video("validation", None, None, [("Bowling", 7, 1.0, 4.0)])})
    with pytest.raises(ValueError, match=r"video 'xyz': duration: missing \(ActivityNet 1.3 needs it\)"):
        build(anet, split=["validation"], json_file=json_file)
