"""Ego4D loader: several feature folders concatenated per step (spec A.3), offset passthrough."""
import os

import pytest
import torch

from libs.datasets import DataWarning, make_dataset
from tests.fixtures_data import dataset_cfg, ramp, save_npy, video, write_json

DIMS = {"slowfast_features": 3, "omnivore_features": 2, "egovlp_features": 1}
BASES = {"slowfast_features": 0.0, "omnivore_features": 0.25, "egovlp_features": 0.5}


@pytest.fixture
def ego4d(tmp_path):
    root = tmp_path / "ego4d"
    database = {
        "clip-a": video("training", 480.0, 30.0, [("use_phone", 1, 8.0, 16.0), ("read_a_book", 0, 0.5, 1.0)]),
        "clip-b": video("validation", 480.0, 30.0, [("use_phone", 1, 1.6, 3.2)]),
        "clip-c": video("validation", 480.0, 30.0, [("read_a_book", 0, 1.0, 2.0)]),
    }
    database["clip-b"]["offset"] = 12.5
    json_file = write_json(str(root / "annotations" / "ego4d.json"), database)
    folders = [str(root / name) for name in DIMS]
    for folder, (name, dim) in zip(folders, DIMS.items()):
        for clip in ("clip-a", "clip-b", "clip-c"):
            if not (clip == "clip-c" and name == "egovlp_features"):
                save_npy(folder, clip, ramp(40, dim, base=BASES[name]))
    return dataset_cfg(json_file, folders, feat_stride=16, num_frames=32, default_fps=30,
                       input_dim=list(DIMS.values()), num_classes=2, max_seq_len=1024, trunc_thresh=0.3)


def test_concatenation_in_folder_order(ego4d):
    with pytest.warns(DataWarning, match=r"videos skipped, no feature file \(as the reference does\): 1 video \(clip-c\)"):
        ds = make_dataset("ego4d", False, ["validation"], **ego4d)
    assert [v["id"] for v in ds.data_list] == ["clip-b"]
    item = ds[0]
    assert item["feats"].shape == (6, 40)
    # channels 0-2 slowfast, 3-4 omnivore, 5 egovlp; value = base + 100 t + d within each source
    t = 7
    expected = [700.0, 701.0, 702.0, 700.25, 701.25, 700.5]
    assert item["feats"][:, t].tolist() == expected
    # fps 30, stride 16, window 32: grid = 1.875 t - 1
    torch.testing.assert_close(item["segments"], torch.tensor([[2.0, 5.0]]))
    assert item["offset"] == 12.5
    assert ds.get_attributes()["dataset_name"] == "ego4d"


def test_single_int_input_dim_and_training_offset_none(ego4d):
    ds = make_dataset("ego4d", True, ["training"], **dict(ego4d, input_dim=6))
    item = ds[0]
    assert item["offset"] is None and item["feats"].shape == (6, 40)
    torch.testing.assert_close(item["segments"], torch.tensor([[14.0, 29.0], [-0.0625, 0.875]]))


def test_egovlp_only_window_16(ego4d):
    cfg = dict(ego4d, feat_folder=ego4d["feat_folder"][2], input_dim=1, num_frames=16)
    item = make_dataset("ego4d", True, ["training"], **cfg)[0]
    # offset 0.5 * 16 / 16 = 0.5: grid = 1.875 t - 0.5
    torch.testing.assert_close(item["segments"][0], torch.tensor([14.5, 29.5]))


def test_unequal_lengths_are_an_error(ego4d):
    save_npy(ego4d["feat_folder"][1], "clip-a", ramp(41, 2))
    ds = make_dataset("ego4d", False, ["training"], **ego4d)
    with pytest.raises(ValueError, match=r"video 'clip-a': feature types have different lengths T \(.*slowfast_features/clip-a.npy: 40, "
                                         r".*omnivore_features/clip-a.npy: 41"):
        ds[0]


def test_per_source_dimension_checked(ego4d):
    ds = make_dataset("ego4d", False, ["training"], **dict(ego4d, input_dim=[2, 3, 1]))
    with pytest.raises(ValueError, match=r"slowfast_features/clip-a.npy: video 'clip-a': features have dimension 3 "
                                         r"\(shape \(40, 3\)\), but dataset.input_dim is 2"):
        ds[0]


def test_input_dim_list_must_match_folders(ego4d):
    with pytest.raises(ValueError, match=r"dataset.input_dim: \[3, 2\] gives 2 widths but dataset.feat_folder names 3 folders"):
        make_dataset("ego4d", False, ["training"], **dict(ego4d, input_dim=[3, 2]))


def test_class_count_must_match(ego4d):
    with pytest.raises(ValueError, match=r"ego4d.json: 1 problem:\n  the file names 2 classes but "
                                         r"dataset.num_classes is 110 \(ego4d needs them equal\)"):
        make_dataset("ego4d", False, ["training"], **dict(ego4d, num_classes=110))


def test_missing_folder(ego4d):
    with pytest.raises(ValueError, match=r"dataset.feat_folder: '.*internvideo' does not exist"):
        make_dataset("ego4d", False, ["training"],
                     **dict(ego4d, feat_folder=ego4d["feat_folder"] + [os.path.join(os.path.dirname(ego4d["feat_folder"][0]), "internvideo")],
                            input_dim=7))


def test_total_dimension_checked_after_concatenation(ego4d):
    ds = make_dataset("ego4d", False, ["training"], **dict(ego4d, input_dim=2560))
    with pytest.raises(ValueError, match=r"slowfast_features/clip-a.npy \+ .*omnivore_features/clip-a.npy \+ "
                                         r".*egovlp_features/clip-a.npy: video 'clip-a': features have dimension "
                                         r"3 \+ 2 \+ 1 = 6, but dataset.input_dim is 2560"):
        ds[0]


def test_data_check_compares_feature_types_from_their_headers(ego4d, tmp_path, capsys):
    from libs.datasets.data_check import check_split_features
    folders = ego4d["feat_folder"]
    save_npy(folders[1], "clip-a", ramp(39, 2, base=0.25))            # omnivore one step short
    ds = make_dataset("ego4d", True, ["training"], **dict(ego4d, input_dim=6))
    with pytest.raises(ValueError) as info:
        check_split_features(ds)
    assert str(info.value).splitlines() == [
        "feature check of split ['training']: 1 problem:",
        f"  video 'clip-a': feature types have different lengths T ({folders[0]}/clip-a.npy: 40, "
        f"{folders[1]}/clip-a.npy: 39, {folders[2]}/clip-a.npy: 40); they must align"]
    save_npy(folders[1], "clip-a", ramp(40, 3, base=0.25))            # right length, one channel too many
    with pytest.raises(ValueError, match=r"features have dimension 3 \+ 3 \+ 1 = 7, but dataset.input_dim is 6"):
        check_split_features(ds)
    save_npy(folders[1], "clip-a", ramp(40, 2, base=0.25))
    check_split_features(ds)
    assert "data check: 3 feature files of split ['training'] OK (headers and shapes" in capsys.readouterr().out
