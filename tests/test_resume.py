"""--resume continues exactly: same losses and the same final weights as an uninterrupted run."""
import os

import torch

import train
from libs.utils.train_utils import load_checkpoint
from test_engine_e2e import CONFIG, make_tiny_demo


def _run(opts, name, *extra):
    return train.main([CONFIG, "--output", name, "--device", "cpu", "-p", "1", *extra, "--opts", *opts])


def _assert_state_equal(a, b, path=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_state_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_state_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_resume_matches_uninterrupted_run(tmp_path):
    # 16 videos, batch 4: 4 iterations per epoch, 3 epochs; random crops and drop-path are on
    opts = make_tiny_demo(tmp_path, num_train=16, num_test=4, epochs=2) + ["loader.batch_size=4"]
    full = _run(opts, "full")
    first = _run(opts + ["opt.early_stop_epochs=1"], "part")       # "killed" after epoch 1
    folder = first["ckpt_folder"]
    assert sorted(f for f in os.listdir(folder) if f.endswith(".pth.tar")) == ["epoch_001.pth.tar", "last.pth.tar"]
    resumed = _run(opts, "part", "--resume", os.path.join(folder, "last.pth.tar"))
    assert len(full["history"]) == 12 and len(first["history"]) == 4
    assert first["history"] + resumed["history"] == full["history"]      # bit for bit
    a = load_checkpoint(os.path.join(full["ckpt_folder"], "epoch_003.pth.tar"))
    b = load_checkpoint(os.path.join(folder, "epoch_003.pth.tar"))
    for key in ("epoch", "state_dict", "state_dict_ema", "optimizer", "scheduler", "loss_normalizer"):
        _assert_state_equal(a[key], b[key], key)
    assert a["loss_normalizer"] != 100.0          # the normaliser moved and was carried over


def test_resume_from_a_reference_layout_checkpoint(tmp_path):
    """A checkpoint with only the reference's keys resumes (approximately: no RNG / normaliser)."""
    opts = make_tiny_demo(tmp_path, num_train=8, num_test=4, epochs=1) + ["loader.batch_size=4"]
    first = _run(opts + ["opt.early_stop_epochs=1"], "ref")
    ckpt = load_checkpoint(os.path.join(first["ckpt_folder"], "epoch_001.pth.tar"))
    reference_keys = ("epoch", "state_dict", "scheduler", "optimizer", "state_dict_ema")
    torch.save({k: ckpt[k] for k in reference_keys}, tmp_path / "reference.pth.tar")
    resumed = _run(opts, "ref", "--resume", str(tmp_path / "reference.pth.tar"))
    assert len(resumed["history"]) == 2          # epoch 2 only, 2 iterations
    last = load_checkpoint(os.path.join(first["ckpt_folder"], "epoch_002.pth.tar"))
    assert last["epoch"] == 2 and last["scheduler"]["last_epoch"] == 4
