"""Every shipped reference config loads through the validator and differs from the defaults
(spec G.1) in exactly the values of spec G.2 (transcribed here by hand from that table)."""
import os

import pytest

from libs.core import load_config, load_default_config

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

EPIC_RANGES = [[0, 4], [2, 8], [4, 16], [8, 32], [16, 64], [32, 10000]]
EGO_RANGES_7 = [[0, 4], [2, 8], [4, 16], [8, 32], [16, 64], [32, 128], [64, 10000]]
EGO_RANGES_8 = [[0, 4], [2, 8], [4, 16], [8, 32], [16, 64], [32, 128], [64, 256], [128, 10000]]
SHARED = {"output_folder": "./ckpt/", "dataset.crop_ratio": [0.9, 1.0], "model.fpn_type": "identity",
          "opt.weight_decay": 0.05, "train_cfg.clip_grad_l2norm": 1.0, "test_cfg.min_score": 0.001}

THUMOS = {
    "dataset_name": "thumos", "train_split": ["validation"], "val_split": ["test"],
    "dataset.json_file": "./data/thumos/annotations/thumos14.json",
    "dataset.feat_folder": "./data/thumos/i3d_features", "dataset.file_prefix": None,
    "dataset.file_ext": ".npy", "dataset.feat_stride": 4, "dataset.num_frames": 16,
    "dataset.input_dim": 2048, "dataset.num_classes": 20, "dataset.max_seq_len": 2304,
    "dataset.trunc_thresh": 0.5, "loader.batch_size": 2, "model.n_mha_win_size": 19,
    "model.max_buffer_len_factor": 6.0, "opt.learning_rate": 0.0001, "opt.epochs": 30,
    "train_cfg.init_loss_norm": 100, "test_cfg.pre_nms_topk": 2000, "test_cfg.max_seg_num": 200,
    "test_cfg.multiclass_nms": True, "test_cfg.voting_thresh": 0.7,
}


def anet(features, fps, dim):
    return {
        "dataset_name": "anet",
        "dataset.json_file": f"./data/anet_1.3/annotations/anet1.3_{features}_filtered.json",
        "dataset.feat_folder": f"./data/anet_1.3/{features}_features", "dataset.file_prefix": "v_",
        "dataset.file_ext": ".npy", "dataset.feat_stride": 16, "dataset.num_frames": 16,
        "dataset.default_fps": fps, "dataset.input_dim": dim, "dataset.num_classes": 1,
        "dataset.max_seq_len": 192, "dataset.trunc_thresh": 0.5, "dataset.force_upsampling": True,
        "loader.batch_size": 16, "model.n_mha_win_size": [7, 7, 7, 7, 7, -1],
        "model.embd_dim": 256, "model.fpn_dim": 256, "model.head_dim": 256,
        "model.max_buffer_len_factor": 1.0, "model.use_abs_pe": True, "opt.learning_rate": 0.001,
        "opt.epochs": 10, "train_cfg.init_loss_norm": 200, "train_cfg.label_smoothing": 0.1,
        "train_cfg.loss_weight": 2.0, "test_cfg.pre_nms_topk": 2000, "test_cfg.max_seg_num": 100,
        "test_cfg.nms_sigma": 0.75, "test_cfg.multiclass_nms": False, "test_cfg.voting_thresh": 0.9,
        "test_cfg.duration_thresh": 0.001,
        "test_cfg.ext_score_file": "./data/anet_1.3/annotations/cuhk_val_simp_share.json",
    }


def epic(part, classes, **extra):
    cfg = {
        "dataset_name": "epic",
        "dataset.json_file": f"./data/epic_kitchens/annotations/epic_kitchens_100_{part}.json",
        "dataset.feat_folder": "./data/epic_kitchens/features", "dataset.file_prefix": None,
        "dataset.file_ext": ".npz", "dataset.feat_stride": 16, "dataset.num_frames": 32,
        "dataset.default_fps": 30, "dataset.input_dim": 2304, "dataset.num_classes": classes,
        "dataset.max_seq_len": 2304, "dataset.trunc_thresh": 0.3, "loader.batch_size": 2,
        "model.regression_range": EPIC_RANGES, "model.n_mha_win_size": 9,
        "model.max_buffer_len_factor": 4.0, "opt.learning_rate": 0.0001, "opt.epochs": 16,
        "train_cfg.init_loss_norm": 250, "test_cfg.max_seg_num": 2000, "test_cfg.nms_sigma": 0.4,
        "test_cfg.multiclass_nms": True,
    }
    cfg.update(extra)
    return cfg


def ego4d(folders, dim, **extra):
    paths = [f"./data/ego4d/{name}_features" for name in folders]
    cfg = {
        "dataset_name": "ego4d", "dataset.json_file": "./data/ego4d/annotations/ego4d.json",
        "dataset.feat_folder": paths[0] if len(paths) == 1 else paths, "dataset.file_prefix": None,
        "dataset.file_ext": ".npy", "dataset.feat_stride": 16, "dataset.num_frames": 32,
        "dataset.default_fps": 30, "dataset.input_dim": dim, "dataset.num_classes": 110,
        "dataset.max_seq_len": 1024, "dataset.trunc_thresh": 0.3, "loader.batch_size": 2,
        "model.backbone_arch": [2, 2, 7], "model.regression_range": EGO_RANGES_8,
        "model.n_mha_win_size": 9, "model.max_buffer_len_factor": 4.0, "model.use_abs_pe": True,
        "opt.learning_rate": 0.0001, "opt.epochs": 10, "train_cfg.init_loss_norm": 100,
        "train_cfg.dropout": 0.1, "test_cfg.max_seg_num": 2000, "test_cfg.nms_sigma": 0.9,
        "test_cfg.multiclass_nms": True, "test_cfg.voting_thresh": 0.95,
    }
    cfg.update(extra)
    return cfg


def dims(width):
    return {"model.embd_dim": width, "model.fpn_dim": width, "model.head_dim": width}


EXPECTED = {
    "thumos_i3d": THUMOS,
    "anet_tsp": anet("tsp", 15, 512),
    "anet_i3d": anet("i3d", 25, 2048),
    "epic_slowfast_verb": epic("verb", 97),
    "epic_slowfast_noun": epic("noun", 300, **{"train_cfg.label_smoothing": 0.1}),
    "ego4d_slowfast": ego4d(["slowfast"], 2304, **{"model.backbone_arch": [2, 2, 6],
                                                   "model.regression_range": EGO_RANGES_7}),
    "ego4d_omnivore": ego4d(["omnivore"], 1536),
    "ego4d_egovlp": ego4d(["egovlp"], 256, **{"dataset.num_frames": 16}, **dims(384)),
    "ego4d_slowfast_egovlp": ego4d(["slowfast", "egovlp"], 2560, **{"model.n_head": 12}, **dims(768)),
    "ego4d_omnivore_egovlp": ego4d(["omnivore", "egovlp"], 1792, **{"model.n_head": 12}, **dims(768)),
    "ego4d_slowfast_omnivore_egovlp": ego4d(
        ["slowfast", "omnivore", "egovlp"], [2304, 1536, 256],
        **{"model.n_head": 16, "model.embd_dim": [256, 384, 384], "model.fpn_dim": 1024,
           "model.head_dim": 1024}),
}


def flatten(tree, prefix=""):
    """{'a': {'b': 1}} -> {'a.b': 1}; model.train_cfg / test_cfg are the top-level sections."""
    out = {}
    for key, value in tree.items():
        path = prefix + key
        if path in ("model.train_cfg", "model.test_cfg"):
            continue
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def as_lists(value):
    if isinstance(value, (list, tuple)):
        return [as_lists(v) for v in value]
    return value


def test_every_reference_config_is_shipped():
    # other configs (demo, the custom-data example, your own) may sit beside them
    shipped = {f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml")}
    assert set(EXPECTED) <= shipped, sorted(set(EXPECTED) - shipped)


def test_custom_data_guide_config_is_shipped_and_loads():
    cfg = load_config(os.path.join(CONFIG_DIR, "custom_example.yaml"))
    assert cfg["dataset_name"] == "custom" and cfg["dataset"]["json_file"] == "./data/toy/annotations.json"
    guide = open(os.path.join(CONFIG_DIR, "..", "docs", "custom_dataset.md")).read()
    assert "configs/custom_example.yaml" in guide


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_equals_defaults_plus_g2_values(name):
    cfg = flatten(load_config(os.path.join(CONFIG_DIR, name + ".yaml")))
    expected = flatten(load_default_config())
    expected.update(SHARED)
    expected.update(EXPECTED[name])
    # derived copies (spec G)
    for key in ("input_dim", "num_classes", "max_seq_len"):
        expected[f"model.{key}"] = expected[f"dataset.{key}"]
    assert {k: as_lists(v) for k, v in cfg.items()} == {k: as_lists(v) for k, v in expected.items()}


def test_spot_values_from_the_table():
    thumos = load_config(os.path.join(CONFIG_DIR, "thumos_i3d.yaml"))
    assert thumos["dataset"]["max_seq_len"] == 2304 and thumos["model"]["n_mha_win_size"] == 19
    assert thumos["dataset"]["default_fps"] is None and thumos["test_cfg"]["ext_score_file"] is None
    assert thumos["devices"] == ["cuda:0"]
    assert thumos["model"]["train_cfg"] is thumos["train_cfg"]
    soe = load_config(os.path.join(CONFIG_DIR, "ego4d_slowfast_omnivore_egovlp.yaml"))
    assert sum(soe["model"]["embd_dim"]) == soe["model"]["fpn_dim"] == 1024
