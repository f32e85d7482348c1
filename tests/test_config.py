"""Config system: defaults, merge, derived fields, validation messages, overrides, round trip."""
import copy
import os

import pytest
import yaml

from libs.core import DEFAULTS, ConfigError, Registry, load_config, save_config
from libs.core.config import apply_overrides, load_default_config, max_div_factor

THUMOS_LIKE = {
    "dataset_name": "thumos",
    "train_split": ["validation"],
    "val_split": ["test"],
    "dataset": {"json_file": "a.json", "feat_folder": "feats", "file_prefix": None, "file_ext": ".npy",
                "num_classes": 20, "input_dim": 2048, "feat_stride": 4, "num_frames": 16,
                "default_fps": None, "trunc_thresh": 0.5, "crop_ratio": [0.9, 1.0], "max_seq_len": 2304},
    "model": {"fpn_type": "identity", "max_buffer_len_factor": 6.0, "n_mha_win_size": 19},
    "opt": {"learning_rate": 0.0001, "epochs": 30, "weight_decay": 0.05},
    "loader": {"batch_size": 2},
    "train_cfg": {"init_loss_norm": 100, "clip_grad_l2norm": 1.0},
    "test_cfg": {"voting_thresh": 0.7, "pre_nms_topk": 2000, "max_seg_num": 200, "min_score": 0.001},
    "output_folder": "./ckpt/",
}


def write_yaml(tmp_path, cfg, name="cfg.yaml"):
    path = os.path.join(tmp_path, name)
    with open(path, "w") as fd:
        yaml.safe_dump(cfg, fd)
    return path


def test_defaults_match_reference_table():
    # spec G.1, a few values per section and the exact section key sets
    assert DEFAULTS["init_rand_seed"] == 1234567891
    assert DEFAULTS["dataset"]["max_seq_len"] == 2304 and DEFAULTS["dataset"]["num_classes"] == 97
    assert DEFAULTS["loader"] == {"batch_size": 8, "num_workers": 4}
    assert DEFAULTS["model"]["regression_range"][-1] == (64, 10000)
    assert DEFAULTS["train_cfg"]["init_loss_norm"] == 2000 and DEFAULTS["train_cfg"]["droppath"] == 0.1
    assert DEFAULTS["test_cfg"]["min_score"] == 0.01 and DEFAULTS["test_cfg"]["pre_nms_topk"] == 5000
    assert DEFAULTS["opt"]["learning_rate"] == 1e-3 and DEFAULTS["opt"]["warmup_epochs"] == 5
    assert len(DEFAULTS["model"]) == 20 and len(DEFAULTS["dataset"]) == 10
    assert len(DEFAULTS["train_cfg"]) == 10 and len(DEFAULTS["test_cfg"]) == 11 and len(DEFAULTS["opt"]) == 10


def test_merge_fills_defaults_and_derived_fields(tmp_path):
    cfg = load_config(write_yaml(tmp_path, THUMOS_LIKE))
    assert cfg["dataset"]["feat_stride"] == 4            # from the file
    assert cfg["dataset"]["downsample_rate"] == 1        # from the defaults
    assert cfg["model"]["n_head"] == 4 and cfg["model"]["n_mha_win_size"] == 19
    assert cfg["model"]["input_dim"] == 2048 and cfg["model"]["num_classes"] == 20
    assert cfg["model"]["max_seq_len"] == 2304
    assert cfg["model"]["train_cfg"] is cfg["train_cfg"]
    assert cfg["model"]["test_cfg"] is cfg["test_cfg"]
    assert cfg["train_cfg"]["init_loss_norm"] == 100 and cfg["train_cfg"]["droppath"] == 0.1
    assert cfg["amp"] is None
    # loading must never mutate the shared defaults table
    assert DEFAULTS["dataset"]["input_dim"] == 2304
    cfg["test_cfg"]["min_score"] = 0.5
    assert load_config(write_yaml(tmp_path, THUMOS_LIKE))["test_cfg"]["min_score"] == 0.001


def test_yaml_round_trip(tmp_path):
    cfg = load_config(write_yaml(tmp_path, THUMOS_LIKE), overrides=["opt.epochs=3"])
    out = os.path.join(tmp_path, "exp")
    save_config(cfg, out)
    again = load_config(os.path.join(out, "config.yaml"))
    assert again == cfg
    assert again["model"]["train_cfg"] is again["train_cfg"]
    text = open(os.path.join(out, "config.txt")).read()
    assert "'init_rand_seed': 1234567891" in text


def test_unknown_key_names_file_path_and_closest_key(tmp_path):
    bad = copy.deepcopy(THUMOS_LIKE)
    bad["model"]["n_heads"] = 8
    path = write_yaml(tmp_path, bad)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: model.n_heads: unknown key; did you mean model.n_head?"


def test_unknown_top_level_key_and_several_errors(tmp_path):
    bad = copy.deepcopy(THUMOS_LIKE)
    bad["optt"] = {"epochs": 3}
    bad["test_cfg"]["max_seg_nums"] = 10
    path = write_yaml(tmp_path, bad)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = str(err.value).splitlines()
    assert f"{path}: optt: unknown key; did you mean opt?" in lines
    assert f"{path}: test_cfg.max_seg_nums: unknown key; did you mean test_cfg.max_seg_num?" in lines


def test_wrong_types_are_reported(tmp_path):
    bad = copy.deepcopy(THUMOS_LIKE)
    bad["opt"]["learning_rate"] = "1e-4"
    bad["loader"]["batch_size"] = 2.5
    bad["model"]["use_abs_pe"] = "yes"
    path = write_yaml(tmp_path, bad)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = str(err.value).splitlines()
    assert (f"{path}: opt.learning_rate: expected a number, got '1e-4' (YAML reads '1e-4' as a string; "
            "write the number with a dot, e.g. 1.0e-4 instead of 1e-4)") in lines
    assert f"{path}: loader.batch_size: expected an integer, got 2.5" in lines
    assert f"{path}: model.use_abs_pe: expected true/false, got 'yes'" in lines


def test_impossible_max_seq_len(tmp_path):
    bad = copy.deepcopy(THUMOS_LIKE)
    bad["dataset"]["max_seq_len"] = 2300
    path = write_yaml(tmp_path, bad)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (
        f"{path}: dataset.max_seq_len: 2300 is not divisible by 576 (largest stride x window of the "
        "attention pyramid: scale_factor 2, 6 levels, windows [19, 19, 19, 19, 19, 19]); use a multiple of 576")


def test_max_div_factor_matches_spec_table():
    # spec C.1: THUMOS 576, ANet ([7]*5 + global) 96, EPIC 256, Ego4D 7 levels 512, 8 levels 1024
    assert max_div_factor(2, 6, [19] * 6) == 576
    assert max_div_factor(2, 6, [7, 7, 7, 7, 7, -1]) == 96
    assert max_div_factor(2, 6, [9] * 6) == 256
    assert max_div_factor(2, 7, [9] * 7) == 512
    assert max_div_factor(2, 8, [9] * 8) == 1024


def test_window_list_length_and_regression_ranges(tmp_path):
    bad = copy.deepcopy(THUMOS_LIKE)
    bad["model"]["n_mha_win_size"] = [19, 19]
    bad["model"]["regression_range"] = [[0, 4], [4, 8]]
    path = write_yaml(tmp_path, bad)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = str(err.value).splitlines()
    assert (f"{path}: model.n_mha_win_size: a list needs one window per pyramid level "
            "(6 for backbone_arch [2, 2, 5]), got 2") in lines
    assert (f"{path}: model.regression_range: expected 6 [min, max] pairs (one per pyramid level), got 2") in lines


def test_overrides_yaml_typing_and_rejection(tmp_path):
    path = write_yaml(tmp_path, THUMOS_LIKE)
    cfg = load_config(path, overrides=["opt.epochs=10", "model.n_head=8", "train_cfg.dropout=0.1",
                                       "dataset.crop_ratio=[0.8, 1.0]", "opt.learning_rate=1e-4",
                                       "test_cfg.ext_score_file=null", "amp=bf16"])
    assert cfg["opt"]["epochs"] == 10 and isinstance(cfg["opt"]["epochs"], int)
    assert cfg["model"]["n_head"] == 8
    assert cfg["model"]["train_cfg"]["dropout"] == 0.1
    assert cfg["dataset"]["crop_ratio"] == [0.8, 1.0]
    assert cfg["opt"]["learning_rate"] == 1e-4
    assert cfg["test_cfg"]["ext_score_file"] is None and cfg["amp"] == "bf16"
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides=["model.n_heads=8"])
    assert str(err.value) == "--opts: model.n_heads: unknown key; did you mean model.n_head?"
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides=["opt.epochs"])
    assert str(err.value) == "--opts: 'opt.epochs': expected KEY=VALUE, e.g. opt.epochs=10"
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides=["amp=fp8"])
    assert str(err.value) == "--opts: amp: expected one of None, bf16, fp16, got 'fp8'"
    # derived fields follow overrides of their sources
    cfg = apply_overrides(cfg, ["dataset.max_seq_len=1152"])
    assert cfg["model"]["max_seq_len"] == 1152


def test_yaml_only_and_optional_keys_accepted(tmp_path):
    cfg = copy.deepcopy(THUMOS_LIKE)
    cfg["opt"]["early_stop_epochs"] = 3
    cfg["dataset"]["feat_folder"] = ["a", "b"]
    assert load_config(write_yaml(tmp_path, cfg))["opt"]["early_stop_epochs"] == 3


def test_missing_file_and_default_config(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(os.path.join(tmp_path, "nope.yaml"))
    cfg = load_default_config()
    assert cfg["model"]["train_cfg"] is cfg["train_cfg"] and cfg["train_split"] == ["training"]


def test_registry_errors_list_registered_names():
    reg = Registry("backbone")

    @reg.register("convTransformer")
    class A:  # noqa: D401 - stand-in entry
        def __init__(self, x=1):
            self.x = x

    @reg.register("conv")
    class B:
        pass

    assert reg.build("convTransformer", x=3).x == 3
    with pytest.raises(KeyError) as err:
        reg.get("convTransformr")
    assert err.value.args[0] == ("unknown backbone 'convTransformr'; did you mean 'convTransformer'? "
                                 "registered backbones: conv, convTransformer")
    with pytest.raises(KeyError, match="already registered"):
        reg.register("conv")(A)
