"""Results are never lost or mixed, and every failure is one clear line.

Tiny demo data (8 training videos, batch 4: 2 iterations per epoch, 1 epoch + 1 warm-up).
"""
import errno
import json
import os

import numpy as np
import pytest
import torch

import eval as eval_cli
import train
from libs.core.cli import Interrupted, RunError, run_main
from libs.engine import resolve_device
from libs.utils import train_utils
from libs.utils.train_utils import load_checkpoint
from test_engine_e2e import CONFIG, make_tiny_demo


def _opts(root, **kw):
    return make_tiny_demo(root, num_train=8, num_test=4, epochs=1, **kw) + ["loader.batch_size=4"]


def _train(opts, *extra):
    return train.main([CONFIG, "--device", "cpu", "-p", "1", "--ema-decay", "0.9", *extra, "--opts", *opts])


def _one_line(capsys, prog, func):
    """Run ``func`` as a CLI (run_main); return (exit status, the stderr lines)."""
    with pytest.raises(SystemExit) as exit_info:
        run_main(func, prog)
    err = capsys.readouterr().err.strip().splitlines()
    return exit_info.value.code, err


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One finished 2-epoch run: (opts, folder)."""
    root = tmp_path_factory.mktemp("safety")
    opts = _opts(root)
    return opts, _train(opts, "--output", "base", "-c", "1")["ckpt_folder"]


# --------------------------------------------------------------------------- folders
def test_reused_output_refuses_and_force_starts_over(tmp_path):
    opts = _opts(tmp_path)
    folder = _train(opts, "--output", "x", "-c", "1")["ckpt_folder"]
    assert sorted(f for f in os.listdir(folder) if f.endswith(".pth.tar")) == [
        "epoch_001.pth.tar", "epoch_002.pth.tar", "last.pth.tar"]
    with pytest.raises(RunError, match=r"already holds checkpoints \(epoch_001.pth.tar, epoch_002.pth.tar, "
                                       r"last.pth.tar\): use --resume .*last.pth.tar to continue, or --force"):
        _train(opts, "--output", "x")
    # --force clears the old run first: no stale epoch_002 beside the new run's files
    _train(opts + ["opt.early_stop_epochs=1"], "--output", "x", "--force")
    assert sorted(f for f in os.listdir(folder) if f.endswith(".pth.tar")) == ["epoch_001.pth.tar", "last.pth.tar"]
    assert "epochs 1..1" in open(os.path.join(folder, "train.log")).read()


def test_resume_continues_in_the_checkpoint_folder(tmp_path):
    opts = _opts(tmp_path)
    folder = _train(opts + ["opt.early_stop_epochs=1"], "--output", "part")["ckpt_folder"]
    out = _train(opts, "--resume", os.path.join(folder, "last.pth.tar"))        # no --output
    assert out["ckpt_folder"] == os.path.abspath(folder)
    assert load_checkpoint(os.path.join(folder, "epoch_002.pth.tar"))["epoch"] == 2
    assert os.listdir(tmp_path / "ckpt") == ["demo_part"]                          # no new folder


def test_failed_start_leaves_nothing_behind(tmp_path):
    opts = _opts(tmp_path) + ["dataset.input_dim=15"]       # the files hold 16 channels
    with pytest.raises(ValueError, match=r"feature check of split \['validation'\]: 8 problems"):
        _train(opts, "--output", "bad")
    assert not os.path.exists(tmp_path / "ckpt")


def test_seed_and_startup_line(tmp_path, capsys):
    opts = _opts(tmp_path)
    folder = _train(opts + ["opt.early_stop_epochs=1"], "--output", "s", "--seed", "7")["ckpt_folder"]
    assert "init_rand_seed: 7" in open(os.path.join(folder, "config.yaml")).read()
    assert "): 1 epochs + 1 warm-up, stopping after epoch 1; epochs 1..1" in capsys.readouterr().out


# --------------------------------------------------------------------------- eval.py
def test_eval_defaults_to_saved_config_and_never_mixes_outputs(run, capsys):
    opts, folder = run
    ema = eval_cli.main([folder, "--device", "cpu", "--save"])          # config: folder/config.yaml
    record = json.load(open(os.path.join(folder, "eval_metrics.json")))
    assert record["config"] == os.path.join(folder, "config.yaml") and record["epoch"] == 2
    assert record["checkpoint"] == os.path.join(folder, "epoch_002.pth.tar") and record["weights"] == "ema"
    assert record["average_mAP"] == ema["metrics"]["average_mAP"]
    assert os.path.isfile(os.path.join(folder, "eval_results.pkl"))     # scored and saved in one run
    live = eval_cli.main([CONFIG, folder, "--device", "cpu", "--weights", "live", "--opts", *opts])
    assert live["results"]["score"].tolist() != ema["results"]["score"].tolist()
    eval_cli.main([folder, "--device", "cpu", "--epoch", "1"])
    assert json.load(open(os.path.join(folder, "eval_metrics_live.json")))["weights"] == "live"
    assert json.load(open(os.path.join(folder, "eval_metrics_epoch_001.json")))["epoch"] == 1
    # the default checkpoint's metrics were not overwritten by the other evaluations
    assert json.load(open(os.path.join(folder, "eval_metrics.json"))) == record


def test_eval_of_an_interrupted_run_uses_last(tmp_path, capsys):
    opts = _opts(tmp_path)
    folder = _train(opts + ["opt.early_stop_epochs=1"], "--output", "i", "-c", "5")["ckpt_folder"]
    os.remove(os.path.join(folder, "epoch_001.pth.tar"))      # the final epoch_ file of a short run
    out = eval_cli.main([folder, "--device", "cpu"])
    assert out["ckpt_file"] == os.path.join(folder, "last.pth.tar")
    assert "evaluating last.pth.tar" in capsys.readouterr().err


# --------------------------------------------------------------------------- one-line failures
def test_corrupt_checkpoint_is_one_line(run, tmp_path, capsys):
    opts, folder = run
    data = open(os.path.join(folder, "last.pth.tar"), "rb").read()
    (tmp_path / "cut.pth.tar").write_bytes(data[: len(data) // 2])
    status, err = _one_line(capsys, "eval.py", lambda: eval_cli.main(
        [CONFIG, str(tmp_path / "cut.pth.tar"), "--device", "cpu", "--opts", *opts]))
    assert status == 1 and len(err) == 1
    assert err[0].startswith(f"eval.py: error: {tmp_path / 'cut.pth.tar'}: cannot read the checkpoint "
                             "(truncated or not a checkpoint file")
    status, err = _one_line(capsys, "train.py", lambda: _train(
        opts, "--output", "r", "--resume", str(tmp_path / "cut.pth.tar")))
    assert status == 1 and len(err) == 1 and "cut.pth.tar: cannot read the checkpoint" in err[0]


def test_weights_that_do_not_fit_name_file_keys_and_config(run):
    opts, folder = run
    with pytest.raises(ValueError) as info:
        eval_cli.main([CONFIG, folder, "--device", "cpu", "--opts", *opts, "model.head_dim=48"])
    message = str(info.value)
    assert message.startswith(f"{folder}/epoch_002.pth.tar: state_dict_ema does not fit the model built from "
                              "the config: shape mismatches")
    assert "cls_head.head.0.conv.weight (32, 32, 3) vs model (48, 32, 3)" in message
    assert message.endswith(f"it was trained with {folder}/config.yaml: evaluate with that config")


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    opts = _opts(tmp_path)
    real_open, calls = train_utils.atomic_open, []

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

    import contextlib

    @contextlib.contextmanager
    def failing_open(path, mode="w", **kw):
        calls.append(os.path.basename(path))
        with real_open(path, mode, **kw) as f:
            yield FullDisk(f) if len(calls) > 1 else f        # the second save hits a full disk

    monkeypatch.setattr(train_utils, "atomic_open", failing_open)
    with pytest.raises(RunError) as info:
        _train(opts, "--output", "full", "-c", "5")
    folder = tmp_path / "ckpt" / "demo_full"
    assert str(info.value) == (f"saving the epoch 2 checkpoint failed: {folder}/last.pth.tar: no space left "
                               f"on device; the previous checkpoint in {folder} is kept")
    assert load_checkpoint(str(folder / "last.pth.tar"))["epoch"] == 1
    assert sorted(os.listdir(folder)) == ["config.txt", "config.yaml", "last.pth.tar", "logs", "train.log"]


def test_ctrl_c_says_where_and_how_to_resume(tmp_path, monkeypatch, capsys):
    opts = _opts(tmp_path)
    real_step, steps = train_utils._train_step, []

    def step(*args, **kwargs):
        steps.append(1)
        if len(steps) == 4:          # epoch 2, iteration 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_utils, "_train_step", step)
    status, err = _one_line(capsys, "train.py", lambda: _train(opts, "--output", "c"))
    folder = tmp_path / "ckpt" / "demo_c"
    assert status == 130
    assert err == [f"train.py: interrupted at epoch 2, iteration 2; resume with --resume {folder}/last.pth.tar"]
    assert open(folder / "train.log").read().splitlines()[-1] == (
        f"stopped: interrupted at epoch 2, iteration 2; resume with --resume {folder}/last.pth.tar")
    steps.clear()
    with pytest.raises(Interrupted, match="interrupted at epoch 1, iteration 2; no checkpoint was saved yet"):
        steps.extend([1, 1])
        _train(opts, "--output", "c2")


def test_fp16_on_cpu_and_unknown_device_are_refused(tmp_path, capsys):
    opts = _opts(tmp_path)
    status, err = _one_line(capsys, "train.py", lambda: _train(opts, "--output", "f", "--amp", "fp16"))
    assert status == 1 and err == ["train.py: error: amp fp16 on the CPU: float16 autocast is emulated there "
                                   "and runs many times slower than float32; use --amp bf16 or no --amp on the CPU"]
    assert not os.path.exists(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="device 'gpu': unknown device; expected cpu, cuda or cuda:K"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="device 'mps': not supported"):
        resolve_device("mps")


def test_unexpected_errors_are_one_line_unless_debug(capsys, monkeypatch):
    def boom():
        raise RuntimeError("deep inside\nmore lines")

    status, err = _one_line(capsys, "x.py", boom)
    assert status == 1 and err == ["x.py: error: RuntimeError: deep inside (run with --debug for the traceback)"]
    monkeypatch.setattr("sys.argv", ["x.py", "--debug"])
    with pytest.raises(RuntimeError, match="deep inside"):
        run_main(boom, "x.py")


# --------------------------------------------------------------------------- data
def test_data_check_reports_every_bad_file_at_once(tmp_path, capsys):
    opts = _opts(tmp_path)
    feats = tmp_path / "data" / "features"
    names = sorted(p.name for p in feats.iterdir() if "validation" in p.name)[:5]
    good = np.load(feats / names[0])
    raw = (feats / names[0]).read_bytes()
    (feats / names[0]).write_bytes(raw[: len(raw) // 2])                           # truncated
    np.save(feats / names[1], np.array([{"a": 1}], dtype=object), allow_pickle=True)   # pickled
    (feats / names[2]).write_bytes(b"not an array at all")                           # garbage
    np.save(feats / names[3], good[:, :8])                                           # wrong width
    nan = np.load(feats / names[4])
    nan[3, 2] = np.nan
    np.save(feats / names[4], nan)                                                   # NaN (full only)
    with pytest.raises(ValueError) as info:
        _train(opts, "--output", "d", "--dry-run")
    lines = str(info.value).splitlines()
    videos = [n[:-4] for n in names]
    assert lines[0] == "feature check of split ['validation']: 4 problems:"
    assert lines[1] == (f"  {feats / names[0]}: video '{videos[0]}': cannot read the features (truncated: "
                        f"{len(raw) // 2} bytes, the header needs {len(raw)})")
    assert lines[2] == (f"  {feats / names[1]}: video '{videos[1]}': cannot read the features (holds Python "
                        "objects (a pickled array), not numbers)")
    assert lines[3].startswith(f"  {feats / names[2]}: video '{videos[2]}': cannot read the features (not a .npy")
    assert lines[4] == (f"  {feats / names[3]}: video '{videos[3]}': features have dimension 8 (shape "
                        f"{(good.shape[0], 8)}), but dataset.input_dim is 16")
    with pytest.raises(ValueError, match="5 problems") as info:
        _train(opts, "--output", "d", "--dry-run", "--check-data", "full")
    assert f"{feats / names[4]}: video '{videos[4]}': features contain 1 NaN/Inf values" in str(info.value)
    assert not os.path.exists(tmp_path / "ckpt")


def test_dry_run_checks_and_writes_nothing(tmp_path, capsys):
    opts = _opts(tmp_path)
    assert _train(opts, "--output", "dry", "--dry-run", "--check-data", "full")["ckpt_folder"] is None
    out = capsys.readouterr().out
    assert "data check: 8 feature files of split ['validation'] OK (headers, shapes and values (NaN/Inf)" in out
    assert "dry run: config, data and model are fine (2 iterations/epoch); nothing written" in out
    assert not os.path.exists(tmp_path / "ckpt")


def test_unreadable_feature_file_during_loading_names_file_and_video(tmp_path):
    from libs.datasets import make_dataset
    from libs.core import load_config
    opts = _opts(tmp_path)
    cfg = load_config(CONFIG, opts)
    dataset = make_dataset(cfg["dataset_name"], False, cfg["val_split"], **cfg["dataset"])
    vid = dataset.data_list[0]["id"]
    path = tmp_path / "data" / "features" / f"{vid}.npy"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=rf"^{path}: video '{vid}': cannot read the features \("):
        dataset[0]


def test_two_names_for_one_class_id_name_the_label_and_video(tmp_path):
    from libs.datasets import make_dataset
    from libs.core import load_config
    opts = _opts(tmp_path)
    json_file = tmp_path / "data" / "annotations" / "demo.json"
    content = json.loads(json_file.read_text())
    vid, entry = next((v, e) for v, e in content["database"].items() if e["annotations"])
    entry["annotations"][0]["label"] = entry["annotations"][0]["label"].lower()     # 'archery' beside 'Archery'
    json_file.write_text(json.dumps(content))
    cfg = load_config(CONFIG, opts + ["dataset_name=custom"])
    with pytest.raises(ValueError) as info:
        make_dataset("custom", True, cfg["train_split"], **cfg["dataset"])
    name, label_id = entry["annotations"][0]["label"], entry["annotations"][0]["label_id"]
    pair = [f"label '{name}' has id {label_id}, the id of label '{name.capitalize()}' (video '",
            f"label '{name.capitalize()}' has id {label_id}, the id of label '{name}' (video '"]
    assert any(p in str(info.value) for p in pair), str(info.value)
    assert "the file names 4 classes, more than dataset.num_classes = 3" in str(info.value)


def test_checkpoint_torch_save_round_trip(tmp_path):
    train_utils.save_checkpoint({"epoch": 3, "w": torch.arange(4)}, True, str(tmp_path), "x.pth.tar")
    assert sorted(os.listdir(tmp_path)) == ["model_best.pth.tar", "x.pth.tar"]      # no temp files left
    assert load_checkpoint(str(tmp_path / "x.pth.tar"))["epoch"] == 3


def test_permission_error_on_the_run_folder_is_one_line(tmp_path, monkeypatch, capsys):
    opts = _opts(tmp_path)
    real_makedirs = os.makedirs

    def no_write(path, *args, **kwargs):
        if "demo_p" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_makedirs(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", no_write)
    status, err = _one_line(capsys, "train.py", lambda: _train(opts, "--output", "p"))
    assert status == 1
    assert err == [f"train.py: error: cannot write the run folder: {tmp_path / 'ckpt' / 'demo_p'}: permission denied"]


def test_feature_error_in_a_loader_worker_is_one_line(tmp_path, capsys):
    opts = _opts(tmp_path) + ["loader.num_workers=1"]
    feats = tmp_path / "data" / "features"
    name = sorted(p.name for p in feats.iterdir() if "validation" in p.name)[0]
    arr = np.load(feats / name)
    arr[0, 0] = np.inf                     # passes the header check, fails when read
    np.save(feats / name, arr)
    status, err = _one_line(capsys, "train.py", lambda: _train(opts, "--output", "w"))
    assert status == 1 and len(err) == 1
    assert err[0] == (f"train.py: error: {feats / name}: video '{name[:-4]}': features contain 1 NaN/Inf values "
                      "(first at step 0, channel 0)")
