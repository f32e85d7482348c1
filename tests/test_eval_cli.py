"""eval.py: checkpoint resolution, prefixed / stripped checkpoints, --saveonly files, batching, errors."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import eval as eval_cli
import train
from libs.engine import resolve_checkpoint
from libs.utils import ANETdetection
from libs.utils.train_utils import load_checkpoint
from test_engine_e2e import CONFIG, make_tiny_demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch run on tiny demo data: (opts, experiment folder)."""
    root = tmp_path_factory.mktemp("evalcli")
    opts = make_tiny_demo(root, num_train=16, num_test=8, epochs=1)
    out = train.main([CONFIG, "--output", "cli", "--device", "cpu", "-c", "1", "--opts", *opts])
    return opts, out["ckpt_folder"]


def _touch(folder, *names):
    for name in names:
        (folder / name).write_bytes(b"")


def test_resolve_checkpoint(tmp_path, capsys):
    _touch(tmp_path, "epoch_005.pth.tar", "epoch_010.pth.tar", "last.pth.tar", "model_best.pth.tar")
    assert resolve_checkpoint(str(tmp_path)) == str(tmp_path / "epoch_010.pth.tar")
    assert resolve_checkpoint(str(tmp_path), epoch=5) == str(tmp_path / "epoch_005.pth.tar")
    assert resolve_checkpoint(str(tmp_path / "last.pth.tar")) == str(tmp_path / "last.pth.tar")
    with pytest.raises(FileNotFoundError, match="epoch_007.pth.tar"):
        resolve_checkpoint(str(tmp_path), epoch=7)
    with pytest.raises(FileNotFoundError, match="missing: neither a checkpoint file nor a folder"):
        resolve_checkpoint(str(tmp_path / "missing"))
    os.mkdir(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no epoch_"):
        resolve_checkpoint(str(tmp_path / "empty"))
    # an interrupted run: only last.pth.tar; it is used, and a note says so
    _touch(tmp_path / "empty", "last.pth.tar")
    assert resolve_checkpoint(str(tmp_path / "empty")) == str(tmp_path / "empty" / "last.pth.tar")
    assert "has no epoch_*.pth.tar (an interrupted run?); evaluating last.pth.tar" in capsys.readouterr().err


def _predict(opts, ckpt, *extra):
    return eval_cli.main([CONFIG, ckpt, "--device", "cpu", "--saveonly", *extra, "--opts", *opts])["results"]


def _same(a, b):
    assert a["video-id"] == b["video-id"]
    for key in ("t-start", "t-end", "label", "score"):
        assert np.array_equal(a[key], b[key]), key


def test_prefixed_and_stripped_checkpoints_give_identical_predictions(trained, tmp_path):
    opts, folder = trained
    ckpt = load_checkpoint(os.path.join(folder, "epoch_002.pth.tar"))
    assert all(k.startswith("module.") for k in ckpt["state_dict_ema"])   # the reference's layout
    reference = _predict(opts, folder)          # the folder resolves to epoch_002
    assert len(reference["video-id"]) > 0
    stripped = {"state_dict_ema": {k[len("module."):]: v for k, v in ckpt["state_dict_ema"].items()}}
    torch.save(stripped, tmp_path / "plain.pth.tar")
    _same(reference, _predict(opts, str(tmp_path / "plain.pth.tar")))
    torch.save({"state_dict_ema": ckpt["state_dict_ema"]}, tmp_path / "prefixed.pth.tar")
    _same(reference, _predict(opts, str(tmp_path / "prefixed.pth.tar")))


def _canonical(preds):
    """Rows (video, label, start, end, score) sorted by video, label, start, end."""
    videos = np.unique(preds["video-id"], return_inverse=True)[1]
    rows = np.stack([videos, preds["label"], preds["t-start"], preds["t-end"], preds["score"]],
                    axis=1).astype(np.float64)
    return rows[np.lexsort(rows[:, 3::-1].T)]


def test_saveonly_files_and_batched_inference(trained):
    opts, folder = trained
    one = _predict(opts, folder)
    with open(os.path.join(folder, "eval_results.pkl"), "rb") as fd:
        _same(one, pickle.load(fd))
    with open(os.path.join(folder, "eval_results.json")) as fd:
        content = json.load(fd)
    assert sum(len(v) for v in content["results"].values()) == len(one["video-id"])
    # the JSON evaluates exactly like the in-memory predictions
    json_file = opts[0].split("=", 1)[1]
    evaluator = ANETdetection(json_file, "test", tiou_thresholds=np.linspace(0.3, 0.7, 5))
    m_json = evaluator.evaluate(os.path.join(folder, "eval_results.json"), verbose=False)[1]
    assert m_json == pytest.approx(evaluator.evaluate(one, verbose=False)[1], abs=1e-6)
    # batches of 3 videos give what one video at a time gives (up to float32 ulps, which may
    # swap two detections of equal scores: compare in a canonical order)
    three = _predict(opts, folder, "-b", "3")
    assert sorted(three["video-id"]) == sorted(one["video-id"])
    np.testing.assert_allclose(_canonical(three), _canonical(one), rtol=1e-5, atol=1e-5)
    # -t caps the predictions per video
    capped = _predict(opts, folder, "-t", "3")
    assert max(capped["video-id"].count(v) for v in set(capped["video-id"])) <= 3


def test_bad_checkpoint_gives_one_line_error(trained, tmp_path):
    opts, _ = trained
    torch.save({"epoch": 1, "state_dict": {}}, tmp_path / "no_ema.pth.tar")
    proc = subprocess.run([sys.executable, "eval.py", CONFIG, str(tmp_path / "no_ema.pth.tar"), "--device", "cpu",
                           "--opts", *opts], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"eval.py: error: {tmp_path / 'no_ema.pth.tar'}: checkpoint has no 'state_dict_ema' entry "
        "(it has: epoch, state_dict)")
    assert "Traceback" not in proc.stderr
