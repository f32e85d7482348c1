"""TriDet's config schema: detection, TriDet's defaults, strict validation per schema, overrides."""
import copy
import os

import pytest
import torch

from libs.core import ConfigError, load_config, save_config
from libs.core.config import TRIDET_DEFAULTS, schema_defaults
from libs.utils.lr_schedulers import make_scheduler
from test_config import write_yaml

# TriDet's THUMOS model block, as TriDet's YAML writes it (no model_name)
TRIDET_THUMOS = {
    "dataset_name": "thumos",
    "train_split": ["validation"],
    "val_split": ["test"],
    "dataset": {"json_file": "a.json", "feat_folder": "feats", "file_prefix": None, "file_ext": ".npy",
                "num_classes": 20, "input_dim": 2048, "feat_stride": 4, "num_frames": 16,
                "trunc_thresh": 0.5, "crop_ratio": [0.9, 1.0], "max_seq_len": 2304},
    "model": {"fpn_type": "identity", "max_buffer_len_factor": 6.0, "backbone_arch": [2, 2, 5],
              "n_sgp_win_size": 1, "num_bins": 16, "k": 5, "iou_weight_power": 0.2,
              "use_trident_head": True, "sgp_mlp_dim": 768, "input_noise": 0.0005},
    "opt": {"learning_rate": 0.0001, "warmup_epochs": 20, "epochs": 20, "weight_decay": 0.025},
    "loader": {"batch_size": 2},
    "output_folder": "./ckpt/",
}


def test_a_tridet_yaml_without_model_name_gets_tridets_defaults(tmp_path):
    cfg = load_config(write_yaml(tmp_path, TRIDET_THUMOS))
    assert cfg["model_name"] == "TriDet"
    model = cfg["model"]
    # TriDet's defaults (its libs/core/config.py) fill what the YAML leaves out
    assert (model["backbone_type"], model["init_conv_vars"], model["boudary_kernel_size"],
            model["downsample_type"], model["embd_dim"]) == ("SGP", 0, 3, "max", 512)
    assert cfg["opt"]["eta_min"] == 1e-8 and cfg["train_cfg"]["droppath"] == 0.1
    assert "n_head" not in model and "n_mha_win_size" not in model
    assert cfg["model"]["train_cfg"] is cfg["train_cfg"]
    # the shipped config is the same model, written with model_name
    shipped = load_config("configs/tridet/thumos_i3d.yaml")
    own = lambda c: {k: v for k, v in c["model"].items() if k not in ("train_cfg", "test_cfg")}  # noqa: E731
    assert own(shipped) == own(cfg)


def test_schema_choice():
    assert schema_defaults({"model": {"num_bins": 3}}) is TRIDET_DEFAULTS
    assert schema_defaults({"model_name": "TriDet"}) is TRIDET_DEFAULTS
    assert schema_defaults({"model": {"n_head": 4}})["model_name"] == "LocPointTransformer"
    assert schema_defaults({"model_name": "LocPointTransformer", "model": {"num_bins": 3}}) \
        ["model_name"] == "LocPointTransformer"


def test_validation_is_strict_in_each_schema(tmp_path):
    cfg = copy.deepcopy(TRIDET_THUMOS)
    cfg["model"]["num_bin"] = 8
    cfg["model"]["boundary_kernel_size"] = 3
    with pytest.raises(ConfigError) as err:
        load_config(write_yaml(tmp_path, cfg))
    assert "model.num_bin: unknown key; did you mean model.num_bins?" in str(err.value)
    assert "model.boundary_kernel_size: unknown key; did you mean model.boudary_kernel_size?" in str(err.value)
    # ActionFormer keys are unknown to TriDet, and TriDet keys to ActionFormer
    cfg = copy.deepcopy(TRIDET_THUMOS)
    cfg["model"]["n_head"] = 4
    with pytest.raises(ConfigError, match="model.n_head: unknown key"):
        load_config(write_yaml(tmp_path, cfg))
    cfg = copy.deepcopy(TRIDET_THUMOS)
    cfg["model_name"] = "LocPointTransformer"
    with pytest.raises(ConfigError, match="model.n_sgp_win_size: unknown key"):
        load_config(write_yaml(tmp_path, cfg))
    # types, choices and values
    cfg = copy.deepcopy(TRIDET_THUMOS)
    cfg["model"].update(num_bins=2.5, downsample_type="mean")
    with pytest.raises(ConfigError) as err:
        load_config(write_yaml(tmp_path, cfg))
    assert "model.num_bins: expected an integer, got 2.5" in str(err.value)
    assert "model.downsample_type: expected one of max, avg, got 'mean'" in str(err.value)
    cfg = copy.deepcopy(TRIDET_THUMOS)
    cfg["model"].update(n_sgp_win_size=[1, 3, 5], embd_dim=40, fpn_dim=40)
    with pytest.raises(ConfigError) as err:
        load_config(write_yaml(tmp_path, cfg))
    assert "model.n_sgp_win_size: a list needs one window per pyramid level (6" in str(err.value)
    assert "model.embd_dim: SGP's GroupNorm needs a multiple of 16, got 40" in str(err.value)


def test_overrides_follow_the_schema(tmp_path):
    path = write_yaml(tmp_path, TRIDET_THUMOS)
    cfg = load_config(path, ["model.num_bins=8", "opt.eta_min=1e-5"])
    assert cfg["model"]["num_bins"] == 8 and cfg["opt"]["eta_min"] == 1e-5
    with pytest.raises(ConfigError, match=r"--opts: model.n_head: unknown key"):
        load_config(path, ["model.n_head=4"])
    # a YAML naming no model keys is ActionFormer's unless --opts says TriDet
    plain = {k: v for k, v in TRIDET_THUMOS.items() if k != "model"}
    path = write_yaml(tmp_path, plain, "plain.yaml")
    assert load_config(path)["model_name"] == "LocPointTransformer"
    cfg = load_config(path, ["model_name=TriDet", "model.n_sgp_win_size=3"])
    assert cfg["model_name"] == "TriDet" and cfg["model"]["num_bins"] == 16
    assert cfg["model"]["n_sgp_win_size"] == 3


def test_saved_tridet_config_loads_back_the_same(tmp_path):
    cfg = load_config("configs/tridet/anet_tsp.yaml")
    save_config(cfg, str(tmp_path))
    assert load_config(os.path.join(tmp_path, "config.yaml")) == cfg


def test_eta_min_is_the_cosine_floor():
    """TriDet passes opt.eta_min to the cosine schedule (ActionFormer: 1e-8 fixed)."""
    param = torch.nn.Parameter(torch.zeros(1))
    for eta_min in (0.5, None):
        opt = torch.optim.SGD([param], lr=1.0)
        cfg = {"epochs": 2, "warmup": True, "warmup_epochs": 1, "schedule_type": "cosine"}
        if eta_min is not None:
            cfg["eta_min"] = eta_min
        sched = make_scheduler(opt, cfg, 2)
        lrs = []
        for _ in range(6):
            opt.step()
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        floor = 1e-8 if eta_min is None else eta_min
        assert lrs[3] == pytest.approx(floor + (1 - floor) * 0.5) and lrs[5] == pytest.approx(floor)


def test_tridets_training_crop_clips_to_the_window_itself(tmp_path):
    """dataset.widen_truncation: the reference clips cropped actions to the window widened by
    half a feature window (2 steps for THUMOS' 16 frames / stride 4); TriDet's loaders (its schema's
    default) to the window itself."""
    import random
    from libs.datasets import make_dataset
    from tools.make_demo_data import make_demo_data
    make_demo_data(str(tmp_path), num_train=6, num_test=2, num_classes=2, feat_dim=8,
                   min_len=100, max_len=120, amplitude=1.0, seed=3)
    cfg = load_config("configs/tridet/thumos_i3d.yaml", [
        f"dataset.json_file={tmp_path}/annotations/demo.json",
        f"dataset.feat_folder={tmp_path}/features", "dataset.num_classes=2",
        "dataset.input_dim=8", "dataset.max_seq_len=32"])
    reach = {}
    for widen in (False, True):
        data = make_dataset("thumos", True, ["validation"],
                            **{**cfg["dataset"], "widen_truncation": widen})
        random.seed(0)
        segs = torch.cat([data[i % len(data)]["segments"] for i in range(60)])
        reach[widen] = (segs.min().item(), segs.max().item())
    assert reach[False][0] >= 0 and reach[False][1] <= 32
    assert reach[True][0] < 0 or reach[True][1] > 32
    assert reach[True][0] >= -2 and reach[True][1] <= 34
