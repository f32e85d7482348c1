"""The custom loader (any classes, fps, stride), every bad-input message, truncation corner
cases and the data loader (spec B.3, B.5)."""
import json
import os
import random

import numpy as np
import pytest
import torch

from libs.core import load_config
from libs.datasets import (DATASETS, DataWarning, make_data_loader, make_dataset, truncate_feats,
                           worker_init_reset_seed)
from tests.fixtures_data import dataset_cfg, ramp, save_npy, video, write_json

D = 5


def custom_cfg(tmp_path, database, features=None, **overrides):
    """Write ``database`` and ramp features (``{video_id: T}``; default 64 steps for every video)."""
    json_file = write_json(str(tmp_path / "my_data.json"), database)
    feat_dir = str(tmp_path / "features")
    os.makedirs(feat_dir, exist_ok=True)
    for vid, steps in (features or {vid: 64 for vid in database}).items():
        save_npy(feat_dir, vid, ramp(steps, D))
    cfg = dict(feat_stride=8, num_frames=16, default_fps=None, input_dim=D, num_classes=4)
    cfg.update(overrides)
    return dataset_cfg(json_file, feat_dir, **cfg)


GOOD = {
    "cam1_morning": video("train", 20.0, 25.0, [("jump", 2, 0.64, 3.2), ("sit", 0, 5.0, 6.0)]),
    "cam2_evening": video("test", 20.0, 25.0, [("run", 1, 1.28, 2.56)]),
}


# ---------------------------------------------------------------------------------- custom
def test_custom_classes_fps_and_stride(tmp_path):
    ds = make_dataset("custom", False, ["train"], **custom_cfg(tmp_path, GOOD))
    assert ds.label_dict == {"jump": 2, "sit": 0, "run": 1}
    item = ds[0]
    # fps 25, stride 8, window 16: grid = 25 t / 8 - 1
    torch.testing.assert_close(item["segments"], torch.tensor([[1.0, 9.0], [14.625, 17.75]]))
    assert item["labels"].tolist() == [2, 0]
    attrs = ds.get_attributes()
    assert attrs["dataset_name"] == "custom" and attrs["empty_label_ids"] == [3]
    np.testing.assert_array_equal(attrs["tiou_thresholds"], np.linspace(0.3, 0.7, 5))


def test_custom_training_pipeline_through_loader(tmp_path):
    ds = make_dataset("custom", True, ["train", "test"], **custom_cfg(tmp_path, GOOD, max_seq_len=32))
    generator = torch.Generator().manual_seed(0)
    loader = make_data_loader(ds, True, generator, batch_size=2, num_workers=0)
    batches = list(loader)
    assert len(batches) == 1 and isinstance(batches[0], list) and len(batches[0]) == 2
    for item in batches[0]:
        assert item["feats"].shape == (D, 32) and len(item["segments"]) >= 1


# ---------------------------------------------------------------------------------- bad input
def test_registry_lists_names_for_unknown_loader():
    with pytest.raises(KeyError, match=r"unknown dataset 'thumos14'.*anet, custom, ego4d, epic, hacs, thumos"):
        DATASETS.get("thumos14")


def test_feature_dimension_mismatch(tmp_path):
    ds = make_dataset("custom", False, ["train"], **custom_cfg(tmp_path, GOOD, input_dim=2048))
    with pytest.raises(ValueError, match=r"features/cam1_morning.npy: video 'cam1_morning': features have dimension 5 "
                                         r"\(shape \(64, 5\)\), but dataset.input_dim is 2048$"):
        ds[0]


def test_transposed_features_get_a_hint(tmp_path):
    cfg = custom_cfg(tmp_path, GOOD)
    save_npy(cfg["feat_folder"], "cam1_morning", ramp(64, D).T)
    with pytest.raises(ValueError, match=r"dimension 64 \(shape \(5, 64\)\), but dataset.input_dim is 5 "
                                         r"\(the array looks transposed: store it time-major, T x D\)"):
        make_dataset("custom", False, ["train"], **cfg)[0]


def test_nan_in_features(tmp_path):
    cfg = custom_cfg(tmp_path, GOOD)
    feats = ramp(64, D)
    feats[10, 3] = np.nan
    feats[12, 0] = np.inf
    save_npy(cfg["feat_folder"], "cam1_morning", feats)
    with pytest.raises(ValueError, match=r"cam1_morning.npy: video 'cam1_morning': features contain 2 NaN/Inf "
                                         r"values \(first at step 10, channel 3\)"):
        make_dataset("custom", False, ["train"], **cfg)[0]


def test_missing_features_skipped_with_counted_warning(tmp_path):
    database = {f"v{i}": video("train", 20.0, 25.0, [("jump", 0, 1.0, 2.0)]) for i in range(8)}
    cfg = custom_cfg(tmp_path, database, features={"v0": 64})
    with pytest.warns(DataWarning, match=r"my_data.json: videos skipped, no feature file \(as the reference does\): "
                                         r"7 videos \(v1, v2, v3, v4, v5, \.\.\. and 2 more\)"):
        ds = make_dataset("custom", True, ["train"], **cfg)
    assert len(ds) == 1


def test_segment_end_before_start_dropped_with_warning(tmp_path):
    database = {"a": video("train", 20.0, 25.0, [("jump", 0, 3.0, 3.0), ("jump", 0, 5.0, 4.0), ("jump", 0, 1.0, 2.0)])}
    with pytest.warns(DataWarning, match=r"actions dropped, segment end <= start: 2 in 1 video \(a\)"):
        ds = make_dataset("custom", True, ["train"], **custom_cfg(tmp_path, database))
    np.testing.assert_array_equal(ds.data_list[0]["segments"], [[1.0, 2.0]])


def test_segment_far_outside_duration_warned(tmp_path):
    database = {"a": video("train", 20.0, 25.0, [("jump", 0, 18.0, 21.5), ("jump", 0, 18.0, 20.9)]),
                "b": video("train", 20.0, 25.0, [("jump", 0, -1.5, 2.0)])}
    with pytest.warns(DataWarning, match=r"actions kept that reach more than 1 s outside \[0, duration\]: 2 videos \(a, b\)"):
        ds = make_dataset("custom", True, ["train"], **custom_cfg(tmp_path, database))
    assert len(ds.data_list[0]["segments"]) == 2


def test_label_id_outside_num_classes(tmp_path):
    database = {"a": video("train", 20.0, 25.0, [("jump", 0, 1.0, 2.0), ("fly", 7, 3.0, 4.0)])}
    with pytest.raises(ValueError, match=r"my_data.json: 1 problem:\n  video 'a': annotations\[1\].label_id: 7 \('fly'\) "
                                         r"is outside \[0, 4\) \(dataset.num_classes = 4\)"):
        make_dataset("custom", True, ["train"], **custom_cfg(tmp_path, database))


def test_label_name_with_two_ids(tmp_path):
    database = {"a": video("train", 20.0, 25.0, [("jump", 0, 1.0, 2.0)]),
                "b": video("test", 20.0, 25.0, [("jump", 1, 1.0, 2.0)])}
    with pytest.raises(ValueError, match=r"video 'b': annotations\[0\].label_id: label 'jump' has id 1 here but 0 in video 'a'"):
        make_dataset("custom", True, ["train"], **custom_cfg(tmp_path, database))


def test_label_field_missing(tmp_path):
    database = {"a": {"subset": "train", "duration": 20.0, "fps": 25.0,
                      "annotations": [{"segment": [1.0, 2.0], "label_id": 0}]}}
    with pytest.raises(ValueError, match=r"video 'a': annotations\[0\].label: missing or not a string"):
        make_dataset("custom", True, ["train"], **custom_cfg(tmp_path, database))


def test_bad_segment_field(tmp_path):
    database = {"a": video("train", 20.0, 25.0, [("jump", 0, 1.0, 2.0)])}
    database["a"]["annotations"][0]["segment"] = [1.0]
    with pytest.raises(ValueError, match=r"video 'a': annotations\[0\].segment: expected \[start, end\] in seconds, got \[1.0\]"):
        make_dataset("custom", False, ["train"], **custom_cfg(tmp_path, database))


def test_duration_zero(tmp_path):
    database = {"a": video("train", 0.0, 25.0, [("jump", 0, 1.0, 2.0)]),
                "b": video("train", 0.0, 25.0, [("jump", 0, 1.0, 2.0)])}
    with pytest.raises(ValueError, match=r"my_data.json: 2 problems:\n  video 'a': duration: expected seconds > 0, got 0.0\n"
                                         r"  video 'b': duration: expected seconds > 0, got 0.0"):
        make_dataset("custom", False, ["train"], **custom_cfg(tmp_path, database))


def test_fps_missing_without_default(tmp_path):
    database = {"a": video("train", 20.0, None, [("jump", 0, 1.0, 2.0)])}
    with pytest.raises(ValueError, match=r"video 'a': fps: missing, and dataset.default_fps is not set"):
        make_dataset("custom", False, ["train"], **custom_cfg(tmp_path, database))
    # with default_fps the entry needs none
    assert make_dataset("custom", False, ["train"], **custom_cfg(tmp_path, database, default_fps=30))[0]["fps"] == 30


def test_training_video_without_actions(tmp_path):
    database = {"a": video("train", 20.0, 25.0, [("jump", 0, 1.0, 2.0)]), "b": video("train", 20.0, 25.0, [])}
    with pytest.raises(ValueError, match=r"video 'b': annotations: no usable action; every training video needs one"):
        make_dataset("custom", True, ["train"], **custom_cfg(tmp_path, database))
    assert len(make_dataset("custom", False, ["train"], **custom_cfg(tmp_path, database))) == 2


def test_split_selecting_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"my_data.json: no usable video in subset\(s\) \['validation'\] "
                                         r"\(subsets in the file: \['test', 'train'\]\)"):
        make_dataset("custom", False, ["validation"], **custom_cfg(tmp_path, GOOD))


def test_json_problems(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{\"database\": ")
    cfg = custom_cfg(tmp_path, GOOD)
    with pytest.raises(ValueError, match=r"bad.json: not valid JSON"):
        make_dataset("custom", False, ["train"], **dict(cfg, json_file=str(bad)))
    bad.write_text("{\"videos\": []}")
    with pytest.raises(ValueError, match=r"bad.json: expected a top-level object with a 'database' mapping"):
        make_dataset("custom", False, ["train"], **dict(cfg, json_file=str(bad)))
    with pytest.raises(ValueError, match=r"dataset.json_file: '.*nowhere.json' does not exist"):
        make_dataset("custom", False, ["train"], **dict(cfg, json_file=str(tmp_path / "nowhere.json")))


# ---------------------------------------------------------------------------------- truncation
def _item(num_steps, segments, labels):
    return {"video_id": "v", "feats": torch.arange(num_steps, dtype=torch.float32)[None].repeat(2, 1),
            "segments": torch.tensor(segments, dtype=torch.float32), "labels": torch.tensor(labels)}


def test_truncation_falls_back_to_last_window_after_200_trials():
    """An action no window reaches: 200 draws, then the last window with no action (spec B.3)."""
    item = _item(100, [[500.0, 510.0]], [3])
    random.seed(11)
    out = truncate_feats(item, max_seq_len=40, trunc_thresh=0.5, offset=1.0)
    after = random.random()
    random.seed(11)
    starts = [random.randint(0, 60) for _ in range(200)]
    assert random.random() == after                       # exactly 200 draws
    assert out["feats"][0].tolist() == list(range(starts[-1], starts[-1] + 40))
    assert out["segments"].shape == (0, 2) and out["labels"].tolist() == []
    assert item["segments"].tolist() == [[500.0, 510.0]]  # the input item is not modified


def test_truncation_threshold_and_offset_by_hand(monkeypatch):
    """Window [20, 60) widened by offset 2 to [18, 62]: [10, 30] keeps 12/20 = 0.6, [55, 75] keeps
    7/20 = 0.35 (< 0.5, dropped), [30, 40] keeps all."""
    item = _item(100, [[10.0, 30.0], [55.0, 75.0], [30.0, 40.0]], [0, 1, 2])
    monkeypatch.setattr(random, "randint", lambda a, b: 20)
    out = truncate_feats(item, max_seq_len=40, trunc_thresh=0.5, offset=2.0)
    assert out["feats"][0, 0].item() == 20.0 and out["feats"].shape == (2, 40)
    assert out["segments"].tolist() == [[-2.0, 10.0], [10.0, 20.0]]
    assert out["labels"].tolist() == [0, 2]


def test_short_video_without_crop_ratio_is_returned_unchanged():
    item = _item(30, [[1.0, 5.0]], [0])
    assert truncate_feats(item, max_seq_len=64, trunc_thresh=0.5, offset=1.0) is item


# ---------------------------------------------------------------------------------- data loader
class _Ids(torch.utils.data.Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, idx):
        return {"idx": idx, "np": float(np.random.rand()), "py": random.random()}


def test_loader_batches_are_lists_and_drop_last():
    train = make_data_loader(_Ids(), True, torch.Generator().manual_seed(1), batch_size=2, num_workers=0)
    batches = list(train)
    assert len(batches) == 2 and all(isinstance(b, list) and len(b) == 2 for b in batches)
    assert len({x["idx"] for b in batches for x in b}) == 4
    evaluation = make_data_loader(_Ids(), False, None, batch_size=1, num_workers=0)
    assert [b[0]["idx"] for b in evaluation] == [0, 1, 2, 3, 4]
    assert not evaluation.persistent_workers
    assert make_data_loader(_Ids(), True, None, batch_size=1, num_workers=2).persistent_workers


def test_loader_shuffle_follows_generator_and_sampler_disables_it():
    order = lambda seed: [x["idx"] for b in make_data_loader(_Ids(), True, torch.Generator().manual_seed(seed),
                                                             batch_size=1, num_workers=0) for x in b]
    assert order(3) == order(3) and sorted(order(3)) == [0, 1, 2, 3, 4]
    sampler = torch.utils.data.SequentialSampler(range(5))
    loader = make_data_loader(_Ids(), True, None, batch_size=2, num_workers=0, sampler=sampler)
    assert [[x["idx"] for x in b] for b in loader] == [[0, 1], [2, 3]]


def test_worker_init_reseeds_from_torch_seed(monkeypatch):
    """numpy, random and PYTHONHASHSEED take ``torch.initial_seed() % 2**31`` (spec B.5)."""
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    torch.manual_seed(2 ** 31 + 17)
    worker_init_reset_seed(0)
    got = (np.random.rand(), random.random(), os.environ["PYTHONHASHSEED"])
    np.random.seed(17)
    random.seed(17)
    assert got == (np.random.rand(), random.random(), "17")
    loader = make_data_loader(_Ids(), True, None, batch_size=1, num_workers=0)
    assert loader.worker_init_fn is worker_init_reset_seed
    assert make_data_loader(_Ids(), False, None, batch_size=1, num_workers=0).worker_init_fn is None


# ---------------------------------------------------------------------------------- the guide
def test_worked_example_of_the_guide_runs(tmp_path, monkeypatch, capsys):
    """docs/custom_dataset.md: its config loads, its script writes data the custom loader reads."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    guide = open(os.path.join(root, "docs", "custom_dataset.md")).read()
    blocks = {}
    for chunk in guide.split("```")[1::2]:
        lang, _, body = chunk.partition("\n")
        blocks.setdefault(lang, []).append(body)
    monkeypatch.chdir(tmp_path)
    os.makedirs("configs")
    # the guide's config is the shipped configs/custom_example.yaml
    assert blocks["yaml"][0] == open(os.path.join(root, "configs", "custom_example.yaml")).read()
    with open("configs/custom_example.yaml", "w") as fid:
        fid.write(blocks["yaml"][0])
    make_data, check = blocks["python"]
    exec(compile(make_data, "make_toy_data.py", "exec"), {})
    exec(compile(check, "check.py", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "wrote 12 videos to data/toy"
    assert lines[1].startswith("9 kitchen_000 (256, ")
    with open("data/toy/annotations.json") as fid:
        start = json.load(fid)["database"]["kitchen_009"]["annotations"][0]["segment"][0]
    cfg = load_config("configs/custom_example.yaml")
    item = make_dataset("custom", False, cfg["val_split"], **cfg["dataset"])[0]
    assert item["feats"].shape == (256, 186)
    assert abs(item["segments"][0, 0].item() - (start * 25 / 8 - 1)) < 1e-4
