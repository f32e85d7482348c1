"""End to end on demo-sized synthetic data: make_demo_data -> train.py -> eval.py -> mAP.

The model must actually learn: average mAP (tIoU 0.3:0.7) above ``MAP_FLOOR`` after a few
seconds of training, where an untrained model scores near 0.
"""
import json
import os

import numpy as np
import pytest

import eval as eval_cli
import train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tools.make_demo_data import make_demo_data

CONFIG = "configs/demo.yaml"
MAP_FLOOR = 0.60          # measured 0.98 (fp32 and bf16) after 10 epochs; with EMA decay 0.999: 0.14
BF16_MAP_FLOOR = 0.50



def make_tiny_demo(root, num_train=48, num_test=16, seed=0, epochs=9):
    """Write a tiny demo data set under ``root`` and return the ``--opts`` that point
    ``configs/demo.yaml`` at it with a tiny model (4 levels, width 32, 128 steps)."""
    data = os.path.join(str(root), "data")
    make_demo_data(data, num_train=num_train, num_test=num_test, num_classes=3, feat_dim=16,
                   min_len=48, max_len=128, amplitude=0.8, seed=seed)
    return [f"dataset.json_file={data}/annotations/demo.json", f"dataset.feat_folder={data}/features",
            "dataset.num_classes=3", "dataset.input_dim=16", "dataset.max_seq_len=128",
            "model.backbone_arch=[2,1,3]", "model.n_mha_win_size=5",
            "model.regression_range=[[0,4],[4,8],[8,16],[16,10000]]",
            "model.embd_dim=32", "model.fpn_dim=32", "model.head_dim=32",
            "opt.learning_rate=0.004", f"opt.epochs={epochs}", "opt.warmup_epochs=1",
            f"output_folder={root}/ckpt"]


def test_demo_data_is_deterministic_and_thumos_shaped(tmp_path):
    make_demo_data(str(tmp_path / "a"), num_train=6, num_test=3, num_classes=2, feat_dim=8, seed=3)
    make_demo_data(str(tmp_path / "b"), num_train=6, num_test=3, num_classes=2, feat_dim=8, seed=3)
    ja = (tmp_path / "a/annotations/demo.json").read_text()
    assert ja == (tmp_path / "b/annotations/demo.json").read_text()
    db = json.loads(ja)["database"]
    assert sorted({v["subset"] for v in db.values()}) == ["Test", "Validation"] and len(db) == 9
    for vid, entry in db.items():
        feats = np.load(tmp_path / f"a/features/{vid}.npy")
        assert np.array_equal(feats, np.load(tmp_path / f"b/features/{vid}.npy"))
        assert feats.dtype == np.float32 and feats.shape[1] == 8
        # duration covers every feature window: (T - 1) * 4 + 16 frames at 30 fps
        assert entry["duration"] == pytest.approx(((feats.shape[0] - 1) * 4 + 16) / 30, abs=0.01)
        for act in entry["annotations"]:
            s, e = act["segment"]
            assert 0 <= s < e <= entry["duration"] and act["label_id"] in (0, 1)
    make_demo_data(str(tmp_path / "c"), num_train=6, num_test=3, num_classes=2, feat_dim=8, seed=4)
    assert (tmp_path / "c/annotations/demo.json").read_text() != ja


def _train_and_eval(tmp_path, name, extra=()):
    opts = make_tiny_demo(tmp_path)
    # a 120-iteration run: the reference's EMA decay 0.999 would still hold 89 % of the initial weights
    out = train.main([CONFIG, "--output", name, "--device", "cpu", "-p", "5", "-c", "4", "--ema-decay", "0.98",
                      *extra, "--opts", *opts])
    folder = out["ckpt_folder"]
    metrics = eval_cli.main([CONFIG, folder, "--device", "cpu", "--opts", *opts])["metrics"]
    return out, folder, metrics


def read_scalars(folder, tag):
    """[(step, value)] of a TensorBoard scalar in ``folder/logs``."""
    acc = EventAccumulator(os.path.join(folder, "logs"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_train_then_eval_learns(tmp_path, capsys):
    out, folder, metrics = _train_and_eval(tmp_path, "e2e", extra=("--eval-freq", "5"))
    files = sorted(os.listdir(folder))
    assert files == ["config.txt", "config.yaml", "epoch_004.pth.tar", "epoch_008.pth.tar", "epoch_010.pth.tar",
                     "eval_metrics.json", "last.pth.tar", "logs", "model_best.pth.tar", "train.log"]
    # validation during training (epochs 5 and 10) logged the mAP that eval.py finds for epoch 10,
    # on the training curves' x-axis (global step after the epoch), with the epoch beside it
    val = read_scalars(folder, "validation/mAP")
    assert [s for s, _ in val] == [60, 120] and val[1][1] == pytest.approx(metrics["average_mAP"], abs=1e-6)
    assert read_scalars(folder, "validation/epoch") == [(60, 5.0), (120, 10.0)]
    # as the reference: every print_freq iterations, not at iteration 0
    assert [s for s, _ in read_scalars(folder, "train/final_loss")] == [e * 12 + i for e in range(10) for i in (5, 10)]
    losses = [h["final_loss"] for h in out["history"]]
    assert np.mean(losses[-12:]) < 0.5 * np.mean(losses[:12])
    assert metrics["average_mAP"] > MAP_FLOOR, metrics
    with open(os.path.join(folder, "eval_metrics.json")) as fd:
        record = json.load(fd)
    assert {k: record[k] for k in metrics} == metrics
    assert record["checkpoint"] == os.path.join(folder, "epoch_010.pth.tar") and record["epoch"] == 10
    assert record["config"] == os.path.abspath(CONFIG) and record["weights"] == "ema"
    assert metrics["tiou"] == [0.3, 0.4, 0.5, 0.6, 0.7]          # rounded, not 0.39999999999999997
    # train.log holds the console lines without progress-bar redraws
    log = open(os.path.join(folder, "train.log")).read()
    assert "Training LocPointTransformer" in log and "9 epochs + 1 warm-up; epochs 1..10" in log
    assert "Epoch 10/10 [10/12] loss" in log and "\r" not in log and "All done!" in log
    printed = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert printed[-1] == f"Average mAP: {100 * metrics['average_mAP']:.2f} (%)"


def test_bf16_autocast_training_learns(tmp_path):
    out, folder, metrics = _train_and_eval(tmp_path, "bf16", extra=("--amp", "bf16"))
    with open(os.path.join(folder, "config.yaml")) as fd:
        assert "amp: bf16" in fd.read()
    losses = [h["final_loss"] for h in out["history"]]
    assert np.mean(losses[-12:]) < 0.5 * np.mean(losses[:12])
    assert metrics["average_mAP"] > BF16_MAP_FLOOR, metrics
