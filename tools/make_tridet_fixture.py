"""Make the TriDet parity fixture: a checkpoint trained by TriDet's own code, and its detections.

    python tools/make_tridet_fixture.py --tridet /path/to/TriDet --out tests/fixtures/tridet

``--tridet`` is a checkout of TriDet's public code (dingfengshi/TriDet, commit 764b816) with its
C++ NMS built (``cd libs/utils && python setup.py build_ext --inplace``, or the module
``nms_1d_cpu`` importable some other way); TriDet's evaluator imports ``joblib``, which must be
importable too. Nothing of TriDet's code enters this project: the script writes a small data set
and a config, then runs a driver *inside* TriDet's checkout that calls TriDet's own functions
(``load_config``, ``make_dataset``, ``make_meta_arch``, ``make_optimizer``, ``make_scheduler``,
``ModelEma``, ``train_one_epoch``, ``valid_one_epoch``, ``ANETdetection``) on the CPU.

Written to ``--out``:

* ``config.yaml``: the TriDet config (TriDet's schema; data paths relative to the data root);
* ``checkpoint.pth.tar``: ``{'epoch', 'state_dict_ema'}`` of TriDet's DataParallel model (keys
  ``module.``-prefixed, as TriDet's checkpoints);
* ``detections.pkl``: TriDet's ``valid_one_epoch`` output on the test videos (per detection:
  video-id, t-start, t-end, label, score) and ``metrics.json``: TriDet's mAP per tIoU.

The data are ``tools/make_demo_data.py`` with the arguments in :data:`DATA_ARGS` (the same bytes
every time): ``tests/test_tridet_parity.py`` regenerates them. Training: 8 epochs, EMA decay 0.9
(a driver choice so that the EMA weights move within 48 iterations), TriDet's seed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.make_demo_data import make_demo_data  # noqa: E402

# make_demo_data(out, num_train, num_test, num_classes, feat_dim, min_len, max_len, amplitude)
DATA_ARGS = dict(num_train=24, num_test=8, num_classes=3, feat_dim=16, min_len=64, max_len=128,
                 amplitude=1.0, seed=0)

CONFIG = {
    "model_name": "TriDet",
    "dataset_name": "thumos",
    "train_split": ["validation"],
    "val_split": ["test"],
    "devices": ["cpu"],
    "dataset": {"json_file": "annotations/demo.json", "feat_folder": "features",
                "file_prefix": None, "file_ext": ".npy", "num_classes": 3, "input_dim": 16,
                "feat_stride": 4, "num_frames": 16, "trunc_thresh": 0.5, "crop_ratio": [0.9, 1.0],
                "max_seq_len": 128},
    "model": {"backbone_arch": [2, 2, 3], "regression_range": [[0, 4], [4, 8], [8, 16], [16, 10000]],
              "n_sgp_win_size": [1, 3, 3, 1], "k": 1.5, "init_conv_vars": 0.2, "embd_dim": 16,
              "fpn_dim": 16, "head_dim": 16, "sgp_mlp_dim": 32, "num_bins": 6,
              "iou_weight_power": 0.2, "input_noise": 0.01, "use_abs_pe": True,
              "max_buffer_len_factor": 2.0},
    "loader": {"batch_size": 4, "num_workers": 1},   # TriDet's loader needs workers
    "train_cfg": {"init_loss_norm": 50, "clip_grad_l2norm": 1.0, "label_smoothing": 0.05},
    "test_cfg": {"pre_nms_topk": 500, "max_seg_num": 100, "min_score": 0.001,
                 "multiclass_nms": True},
    "opt": {"learning_rate": 0.003, "epochs": 6, "warmup_epochs": 2, "weight_decay": 0.02,
            "eta_min": 1e-5},
}

# Runs inside TriDet's checkout (cwd), with TriDet's `libs` first on sys.path.
_DRIVER = r'''
import json, pickle, sys
import torch
from torch import nn
from libs.core import load_config
from libs.datasets import make_dataset, make_data_loader
from libs.modeling import make_meta_arch
from libs.utils import (train_one_epoch, valid_one_epoch, ANETdetection, make_optimizer,
                        make_scheduler, fix_random_seed, ModelEma)

config, data_root, out = sys.argv[1:4]
cfg = load_config(config)
for key in ("json_file", "feat_folder"):
    cfg["dataset"][key] = f"{data_root}/{cfg['dataset'][key]}"
rng = fix_random_seed(cfg["init_rand_seed"], include_cuda=False)
train_set = make_dataset(cfg["dataset_name"], True, cfg["train_split"], **cfg["dataset"])
cfg["model"]["train_cfg"]["head_empty_cls"] = train_set.get_attributes()["empty_label_ids"]
train_loader = make_data_loader(train_set, True, rng, **cfg["loader"])
model = nn.DataParallel(make_meta_arch(cfg["model_name"], **cfg["model"]), device_ids=[])
optimizer = make_optimizer(model, cfg["opt"])
scheduler = make_scheduler(optimizer, cfg["opt"], len(train_loader))
model_ema = ModelEma(model, decay=0.9)
epochs = cfg["opt"]["epochs"] + cfg["opt"]["warmup_epochs"]
for epoch in range(epochs):
    train_one_epoch(train_loader, model, optimizer, scheduler, epoch, model_ema=model_ema,
                    clip_grad_l2norm=cfg["train_cfg"]["clip_grad_l2norm"], print_freq=10 ** 9)
torch.save({"epoch": epochs - 1, "state_dict_ema": model_ema.module.state_dict()},
           f"{out}/checkpoint.pth.tar")
fix_random_seed(0, include_cuda=False)
val_set = make_dataset(cfg["dataset_name"], False, cfg["val_split"], **cfg["dataset"])
val_loader = make_data_loader(val_set, False, None, 1, 1)
model_ema.module.eval()
valid_one_epoch(val_loader, model_ema.module, -1, output_file=f"{out}/detections.pkl",
                print_freq=10 ** 9)
evaluator = ANETdetection(val_set.json_file, val_set.split[0],
                          tiou_thresholds=val_set.get_attributes()["tiou_thresholds"])
mAP = valid_one_epoch(val_loader, model_ema.module, -1, evaluator=evaluator, print_freq=10 ** 9)
tious = [round(float(t), 2) for t in evaluator.tiou_thresholds]
json.dump({"average_mAP": float(mAP), "mAP": dict(zip(map(str, tious), map(float, evaluator.ap.mean(axis=1)))),
           "tiou_thresholds": tious}, open(f"{out}/metrics.json", "w"), indent=1)
'''


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tridet", required=True, help="checkout of TriDet's code (NMS built)")
    parser.add_argument("--out", default="tests/fixtures/tridet", help="fixture folder")
    parser.add_argument("--python-path", default="", help="extra PYTHONPATH entries for TriDet "
                        "(e.g. where nms_1d_cpu and joblib live)")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.yaml"), "w") as fd:
        fd.write("# TriDet parity fixture: made by tools/make_tridet_fixture.py (data: "
                 "tools/make_demo_data.py with its DATA_ARGS); paths relative to the data root\n")
        yaml.safe_dump(CONFIG, fd, sort_keys=False, default_flow_style=None)
    with tempfile.TemporaryDirectory() as tmp:
        make_demo_data(os.path.join(tmp, "data"), **DATA_ARGS)
        driver = os.path.join(tmp, "driver.py")
        with open(driver, "w") as fd:
            fd.write(_DRIVER)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (args.python_path, os.path.abspath(args.tridet)) if p))
        subprocess.run([sys.executable, driver, os.path.join(out, "config.yaml"),
                        os.path.join(tmp, "data"), out], cwd=args.tridet, env=env, check=True)
    with open(os.path.join(out, "metrics.json")) as fd:
        print(f"TriDet's average mAP on the fixture: {json.load(fd)['average_mAP'] * 100:.2f} %")


if __name__ == "__main__":
    main()
