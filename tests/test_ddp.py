"""torchrun with 2 gloo processes on the CPU equals one process on the same global batch.

6 training videos; DDP: 3 per process, single process: all 6 (one iteration per epoch, so
both see the same videos every step). Randomness that differs by construction is switched
off (drop-path, random crops). DDP uses ``2 x opt.learning_rate`` by the documented rule, so
the single-process run is given that rate. Tolerance: losses and EMA weights agree to
``rtol = 1e-4`` (float32 reductions run in a different order; measured ~1e-7).
"""
import os
import subprocess
import sys

import pytest
import torch

import train
from libs.core import ConfigError
from libs.utils.train_utils import load_checkpoint
from test_engine_e2e import CONFIG, make_tiny_demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_process_ddp_matches_single_process(tmp_path):
    opts = make_tiny_demo(tmp_path, num_train=6, num_test=4, epochs=2) + [
        "opt.warmup_epochs=2", "train_cfg.droppath=0.0", "dataset.crop_ratio=null"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", CONFIG,
         "--output", "ddp", "--device", "cpu", "-p", "1", "--opts", *opts, "loader.batch_size=3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_folder = str(tmp_path / "ckpt" / "demo_ddp")
    single = train.main([CONFIG, "--output", "single", "--device", "cpu", "-p", "1", "--opts", *opts,
                         "loader.batch_size=6", "opt.learning_rate=0.008"])

    # one set of outputs, written by rank 0 only
    assert sorted(os.listdir(ddp_folder)) == ["config.txt", "config.yaml", "epoch_004.pth.tar", "last.pth.tar",
                                              "logs", "train.log"]
    assert len([f for f in os.listdir(os.path.join(ddp_folder, "logs")) if f.startswith("events")]) == 1
    # config.txt records the learning rate after the x2 rule (as the reference writes it)
    assert "'learning_rate': 0.008" in open(os.path.join(ddp_folder, "config.txt")).read()
    assert_same_training(ddp_folder, single["ckpt_folder"])


def assert_same_training(folder_a, folder_b):
    """Both runs end with the same EMA weights (module.-prefixed, like the reference's) and loss
    normaliser: every one of their steps agreed. (Live weights are not compared: Adam turns
    float32 reduction-order noise in near-zero gradients into lr-sized differences.)"""
    a = load_checkpoint(os.path.join(folder_a, "epoch_004.pth.tar"))
    b = load_checkpoint(os.path.join(folder_b, "epoch_004.pth.tar"))
    for key in ("state_dict_ema",):
        assert a[key].keys() == b[key].keys()
        for k, v in a[key].items():
            torch.testing.assert_close(v, b[key][k], rtol=1e-4, atol=1e-6)
    assert a["loss_normalizer"] == pytest.approx(b["loss_normalizer"], rel=1e-9)
    assert a["loss_normalizer"] != 100.0          # the normaliser moved: the steps changed the model


def test_config_listing_two_devices_trains_on_both_like_the_reference(tmp_path):
    """``python train.py`` with ``devices: [cpu, cpu]`` starts one process per device: global batch
    ``loader.batch_size`` (3 + 3 videos), learning rate and workers x 2 (the reference's
    DataParallel rule); it equals one process with batch 6 at twice the learning rate."""
    opts = make_tiny_demo(tmp_path, num_train=6, num_test=4, epochs=2) + [
        "opt.warmup_epochs=2", "train_cfg.droppath=0.0", "dataset.crop_ratio=null", "loader.batch_size=6"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    cmd = [sys.executable, "train.py", CONFIG, "--output", "two", "-p", "1",
           "--opts", *opts, "devices=[cpu,cpu]", "loader.num_workers=0"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "terminate called without an active exception" in proc.stderr:
        # a rare abort inside gloo's threads (seen once in ~15 full-suite runs on CPU, never
        # reproduced alone); the equivalence below is what this test checks, so run it once more
        proc = subprocess.run(cmd + ["--force"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "starting one training process per device: cpu, cpu" in proc.stdout
    assert "on cpu (2 process(es), lr 0.008, 1 iterations/epoch)" in proc.stdout
    folder = str(tmp_path / "ckpt" / "demo_two")
    config_txt = open(os.path.join(folder, "config.txt")).read()
    assert "'learning_rate': 0.008" in config_txt and "'batch_size': 6" in config_txt
    assert "learning_rate: 0.004" in open(os.path.join(folder, "config.yaml")).read()   # reloadable as given
    single = train.main([CONFIG, "--output", "one", "--device", "cpu", "-p", "1", "--opts", *opts,
                         "opt.learning_rate=0.008"])
    assert_same_training(folder, single["ckpt_folder"])


def test_two_devices_need_a_batch_that_splits(tmp_path):
    opts = make_tiny_demo(tmp_path, num_train=6, num_test=4, epochs=1) + ["loader.batch_size=5"]
    with pytest.raises(ConfigError, match=r"^configs/demo.yaml: loader.batch_size 5 does not split evenly over "
                                          r"the 2 devices \['cpu', 'cpu'\]; use a multiple of 2$"):
        train.main([CONFIG, "--output", "odd", "--opts", *opts, "devices=[cpu,cpu]"])
    assert not os.path.exists(tmp_path / "ckpt")
