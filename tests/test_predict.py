"""tools/predict.py and its building blocks (libs/datasets/feature_io.py, libs/engine/windowed_inference.py):
same detections as eval.py, windowed == whole-video inference on videos that fit, planted actions
found in a long video processed in windows, feature containers, one-line errors for bad files."""
import json
import os

import h5py
import numpy as np
import pytest
import torch
import yaml

import eval as eval_script
from libs.core import load_config
from libs.core.config import config_from_dict
from libs.datasets import make_dataset
from libs.modeling import make_meta_arch
from libs.datasets.feature_io import FeatureFile, find_feature_files, open_features
from libs.utils.prediction_io import read_predictions
from libs.engine.windowed_inference import (Window, level_outputs, plan_windows, step_scores,
                                           windowed_inference)
from tests.fixtures_data import dataset_cfg, video, write_json
from tools import predict

DIM, NUM_CLASSES, FPS = 8, 2, 30.0
NAMES = ("Jump", "Run")




def tiny_config(tmp_path, json_file, feat_folder, **dataset):
    """A 3-level model (strides 1, 2, 4; window 5; max_seq_len 64) on THUMOS-style data."""
    cfg = {
        "dataset_name": "thumos", "devices": ["cpu"], "train_split": ["validation"],
        "val_split": ["test"],
        "dataset": dict(json_file=json_file, feat_folder=feat_folder, file_prefix=None,
                        file_ext=".npy", num_classes=NUM_CLASSES, input_dim=DIM, feat_stride=4,
                        num_frames=16, trunc_thresh=0.5, crop_ratio=None, max_seq_len=64,
                        **dataset),
        "model": {"fpn_type": "identity", "backbone_arch": [2, 1, 2], "n_mha_win_size": 5,
                  "embd_dim": 16, "fpn_dim": 16, "head_dim": 16, "n_head": 2,
                  "regression_range": [[0, 4], [4, 8], [8, 10000]],
                  "max_buffer_len_factor": 1.0},
        "loader": {"batch_size": 2, "num_workers": 0},
        "test_cfg": {"pre_nms_topk": 300, "max_seg_num": 40, "min_score": 0.001},
        "output_folder": str(tmp_path / "ckpt"),
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def synthetic_video(rng, length, actions):
    """``T x D`` noise; action steps [s, e) of class c add 2 on channel c and on channel D-1."""
    feats = 0.3 * rng.standard_normal((length, DIM)).astype(np.float32)
    for start, end, label in actions:
        feats[start:end, label] += 2.0
        feats[start:end, DIM - 1] += 2.0
    return feats


def seconds(grid):
    return (grid * 4 + 8) / FPS


def random_checkpoint(config, folder):
    """(config dict, model, ``folder/epoch_001.pth.tar``): the config's model with seed-0 random
    weights, saved as an EMA checkpoint."""
    cfg = load_config(config)
    torch.manual_seed(0)
    model = make_meta_arch(cfg["model_name"], **cfg["model"]).eval()
    ckpt = folder / "epoch_001.pth.tar"
    ckpt.parent.mkdir()
    torch.save({"epoch": 1, "state_dict_ema": model.state_dict()}, ckpt)
    return cfg, model, ckpt


@pytest.fixture
def demo(tmp_path):
    """Four test videos (one longer than max_seq_len), a config and a random-weight checkpoint."""
    rng = np.random.default_rng(0)
    feat_dir = tmp_path / "feats"
    feat_dir.mkdir()
    database = {}
    for idx, length in enumerate((40, 64, 100, 23)):
        vid = f"vid{idx}"
        np.save(feat_dir / f"{vid}.npy", synthetic_video(rng, length, [(5, 12, idx % 2)]))
        database[vid] = video("test", duration=round(seconds(length - 1) + 8 / FPS, 2), fps=FPS,
                              acts=[(NAMES[idx % 2], idx % 2, seconds(4.5), seconds(11.5))])
    database["train0"] = video("validation", duration=10.0, fps=FPS,
                               acts=[(NAMES[0], 0, 1.0, 2.0), (NAMES[1], 1, 3.0, 4.0)])
    np.save(feat_dir / "train0.npy", synthetic_video(rng, 64, []))
    json_file = write_json(str(tmp_path / "ann" / "tiny.json"), database)
    config = tiny_config(tmp_path, json_file, str(feat_dir))
    cfg, model, ckpt = random_checkpoint(config, tmp_path / "run")
    return {"config": config, "cfg": cfg, "model": model, "ckpt": str(ckpt),
            "feat_dir": feat_dir, "json_file": json_file}


def per_video(frame):
    return {vid: rows.reset_index(drop=True) for vid, rows in frame.groupby("video-id", sort=False)}


def assert_same_detections(a, b):
    assert sorted(a) == sorted(b)
    for vid in a:
        for key in ("t-start", "t-end", "score"):
            np.testing.assert_array_equal(a[vid][key].to_numpy(np.float32),
                                          b[vid][key].to_numpy(np.float32), err_msg=f"{vid} {key}")
        np.testing.assert_array_equal(a[vid]["label"], b[vid]["label"])


# ------------------------------------------------------------------------------ predict vs eval
@pytest.mark.parametrize("batch_size", [1, 3])
def test_predict_equals_eval_inference(demo, tmp_path, capsys, batch_size):
    # batching changes float rounding (BLAS), so both sides use the same batches
    eval_script.main([demo["config"], os.path.dirname(demo["ckpt"]), "--saveonly",
                      "--device", "cpu", "-b", str(batch_size)])
    expected = per_video(read_predictions(str(tmp_path / "run" / "eval_results.pkl")))
    files = sorted(str(p) for p in demo["feat_dir"].glob("vid*.npy"))
    out = tmp_path / "pred.json"
    code = predict.main([demo["config"], demo["ckpt"], *files, "--out", str(out),
                         "--topk", "40", "--min-score", "0", "--batch-size", str(batch_size)])
    assert code == 0
    got = per_video(read_predictions(str(out)))
    assert len(expected) == 4 and all(len(rows) > 10 for rows in expected.values())
    assert_same_detections(got, expected)
    # class names come from the config's annotation JSON; one summary line per video
    content = json.loads(out.read_text())
    assert content["class_names"] == list(NAMES)
    assert {d["label_name"] for d in content["results"]["vid0"]} <= set(NAMES)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("vid")]
    assert [ln.split(":")[0] for ln in lines] == ["vid0", "vid1", "vid2", "vid3"]


def test_topk_min_score_csv_and_curves(demo, tmp_path):
    out, csv_file, curves = tmp_path / "p.json", tmp_path / "p.csv", tmp_path / "curves"
    code = predict.main([demo["config"], demo["ckpt"], str(demo["feat_dir"] / "vid2.npy"),
                         "--out", str(out), "--csv", str(csv_file), "--topk", "5",
                         "--min-score", "0.02", "--curves", str(curves)])
    assert code == 0
    dets = json.loads(out.read_text())["results"]["vid2"]
    assert 0 < len(dets) <= 5 and all(d["score"] >= 0.02 for d in dets)
    assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)
    rows = csv_file.read_text().splitlines()
    assert rows[0] == "video,start_s,end_s,label,score" and len(rows) == len(dets) + 1
    first = rows[1].split(",")
    assert first[0] == "vid2" and first[3] == dets[0]["label_name"]
    assert float(first[1]) == pytest.approx(dets[0]["segment"][0], abs=1e-3)
    curve = np.load(curves / "vid2.npz")
    assert curve["scores"].shape == (100, NUM_CLASSES)
    np.testing.assert_allclose(curve["times"][:2], [seconds(0), seconds(1)])
    assert ((curve["scores"] >= 0) & (curve["scores"] <= 1)).all()


def test_bad_files_one_line_each_others_processed(demo, tmp_path, capsys):
    good = np.load(demo["feat_dir"] / "vid0.npy")
    bad = tmp_path / "bad"
    bad.mkdir()
    nan = good.copy()
    nan[7, 2] = np.nan
    np.save(bad / "nan.npy", nan)
    np.save(bad / "dim.npy", good[:, :5])
    np.save(bad / "transposed.npy", good.T.copy())
    np.save(bad / "empty.npy", np.zeros((0, DIM), np.float32))
    (bad / "junk.npy").write_bytes(b"not an array")
    np.savez(bad / "wrongkey.npz", a=good, b=good)
    np.save(bad / "truncated.npy", good)
    with open(bad / "truncated.npy", "r+b") as f:
        f.truncate(os.path.getsize(bad / "truncated.npy") - 4)
    out = tmp_path / "p.json"
    code = predict.main([demo["config"], demo["ckpt"], str(bad), str(demo["feat_dir"] / "vid0.npy"),
                         str(tmp_path / "missing.npy"), "--fps", "30", "--out", str(out)])
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    errors = [ln for ln in err if ln.startswith("error: ")]
    assert len(errors) == 8
    expect = {"nan.npy": "NaN/Inf (first at stored step 7, channel 2)",
              "dim.npy": "dimension 5", "transposed.npy": "looks transposed",
              "empty.npy": "empty (T = 0)", "junk.npy": "not a .npy array file",
              "wrongkey.npz": "field 'feats' not found", "missing.npy": "no such file",
              "truncated.npy": "unreadable feature file (the file is truncated"}
    for name, text in expect.items():
        line = next(ln for ln in errors if name in ln)
        assert text in line, line
    assert list(json.loads(out.read_text())["results"]) == ["vid0"]


def test_fps_is_required_for_unlisted_videos(demo, tmp_path, capsys):
    feats = tmp_path / "mine.npy"
    np.save(feats, np.load(demo["feat_dir"] / "vid0.npy"))
    assert predict.main([demo["config"], demo["ckpt"], str(feats), "--out",
                         str(tmp_path / "p.json")]) == 1
    assert "field 'fps' unknown" in capsys.readouterr().err
    assert predict.main([demo["config"], demo["ckpt"], str(feats), "--fps", "30", "--out",
                         str(tmp_path / "p.json")]) == 0


def test_feature_containers_give_the_same_detections(demo, tmp_path):
    feats = np.load(demo["feat_dir"] / "vid2.npy")
    folder = tmp_path / "formats"
    folder.mkdir()
    np.savez(folder / "a.npz", feats=feats)
    torch.save(torch.from_numpy(feats), folder / "b.pt")
    torch.save({"feats": torch.from_numpy(feats).half()}, folder / "c.pt")
    with h5py.File(folder / "many.h5", "w") as h5:
        h5["d"] = feats
        h5.create_group("sub")["e"] = feats.astype(np.float16)
    np.save(folder / "f.npy", feats)
    np.save(folder / "g.npy", np.asfortranarray(feats))      # read whole, not row by row
    out = tmp_path / "p.json"
    assert predict.main([demo["config"], demo["ckpt"], str(folder), "--fps", "30", "--out",
                         str(out), "--min-score", "0"]) == 0
    results = json.loads(out.read_text())["results"]
    assert sorted(results) == list("abcdefg")
    for vid in "bdfg":
        assert results[vid] == results["a"]
    for vid in "ce":   # float16 on disk: same model, slightly different input values
        assert len(results[vid]) == len(results["a"])


# ------------------------------------------------------------------------------ feature reading
def test_lazy_reader_matches_the_dataset_grid(tmp_path):
    """VideoFeatures reproduces the loaders' items: down-sampling (THUMOS) and ANet resizing."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "f"
    folder.mkdir()
    np.save(folder / "v.npy", rng.standard_normal((37, 4)).astype(np.float32))
    json_file = write_json(str(tmp_path / "a.json"), {
        "v": video("test", duration=30.0, fps=30.0, acts=[("x", 0, 1.0, 2.0)])})
    cases = [("thumos", dict(downsample_rate=2, num_classes=1)),
             ("anet", dict(force_upsampling=True, max_seq_len=16, feat_stride=16, num_frames=16,
                           num_classes=1))]
    for name, overrides in cases:
        cfg = dataset_cfg(json_file, str(folder), **overrides)
        item = make_dataset(name, False, ["test"], **cfg)[0]
        with open_features(FeatureFile("v", str(folder / "v.npy")), cfg) as lazy:
            assert lazy.shape == tuple(item["feats"].shape)
            torch.testing.assert_close(lazy[:, 0:lazy.shape[1]], item["feats"], rtol=0, atol=0)
            torch.testing.assert_close(lazy[:, 3:9], item["feats"][:, 3:9], rtol=0, atol=0)
            assert lazy.feat_stride == pytest.approx(item["feat_stride"])
            assert lazy.num_frames == pytest.approx(item["feat_num_frames"])
            # 37 stored features, stride 16 frames, window 32 (THUMOS case) or 16 (ANet), 30 fps
            stride, window = (16, 16) if name == "anet" else (16, 32)
            assert lazy.duration_estimate(30.0) == pytest.approx((36 * stride + window) / 30.0)


def test_find_feature_files(tmp_path):
    (tmp_path / "d").mkdir()
    np.save(tmp_path / "d" / "x.npy", np.zeros((2, 2)))
    (tmp_path / "d" / "notes.txt").write_text("ignored")
    np.save(tmp_path / "x.npy", np.zeros((2, 2)))
    (tmp_path / "y.csv").write_text("")
    files, problems = find_feature_files([str(tmp_path / "d"), str(tmp_path / "x.npy"),
                                          str(tmp_path / "y.csv")])
    assert [f.video_id for f in files] == ["x"]
    assert len(problems) == 2
    assert "unsupported feature file type" in problems[0] and "already read from" in problems[1]


# ------------------------------------------------------------------------------ windows
def test_plan_windows_hand_computed():
    # hop 192; last start (1000 - 256) // 32 * 32 = 736; cuts = middle of each overlap, floored
    # to the 32-grid: 224, 416, 608, (832 + 736) // 2 = 784 -> 768
    assert plan_windows(1000, 256, 64, 32) == [
        Window(0, 256, 0, 224), Window(192, 448, 224, 416), Window(384, 640, 416, 608),
        Window(576, 832, 608, 768), Window(736, 1000, 768, 1000)]
    assert plan_windows(256, 256, 64, 32) == [Window(0, 256, 0, 256)]
    with pytest.raises(ValueError, match="multiples"):
        plan_windows(1000, 250, 64, 32)
    with pytest.raises(ValueError, match="overlap"):
        plan_windows(1000, 256, 256, 32)


@pytest.mark.parametrize("num_steps", [257, 300, 511, 777, 4099])
def test_plan_windows_invariants(num_steps):
    window, overlap, align = 256, 64, 16
    plan = plan_windows(num_steps, window, overlap, align)
    assert plan[0].start == 0 and plan[-1].end == num_steps
    assert plan[0].own_start == 0 and plan[-1].own_end == num_steps
    for win in plan:
        assert win.start % align == 0 and window <= win.end - win.start < window + align
        assert win.start <= win.own_start < win.own_end <= win.end
    for a, b in zip(plan, plan[1:]):
        assert a.own_end == b.own_start and a.own_end % align == 0    # ownership partitions
        assert a.end - b.start >= overlap                              # enough overlap
        assert min(a.end - a.own_end, b.own_start - b.start) >= overlap // 2 - align


def test_windowed_equals_whole_video_when_it_fits(demo):
    model = demo["model"]
    feats = torch.from_numpy(np.load(demo["feat_dir"] / "vid2.npy").T.copy())
    meta = {"video_id": "v", "fps": FPS, "duration": 14.0, "feat_stride": 4, "feat_num_frames": 16}
    whole = model([dict(meta, feats=feats)])[0]
    windowed = windowed_inference(model, feats, meta, window=128, overlap=32,
                                  with_step_scores=True)
    assert windowed["num_windows"] == 1 and len(whole["scores"]) == 40
    for key in ("segments", "scores", "labels"):
        assert torch.equal(windowed[key], whole[key]), key
    # the step curve: highest level probability covering each step, checked at hand-picked steps
    _, masks, logits, _ = level_outputs(model, dict(meta, feats=feats))
    curve = windowed["step_scores"]
    assert curve.shape == (100, NUM_CLASSES)
    for step in (0, 5, 63, 99):
        best = max(float(torch.sigmoid(lg[step // s, 1])) for lg, s in zip(logits, (1, 2, 4)))
        assert float(curve[step, 1]) == pytest.approx(best, rel=1e-6)
    assert torch.equal(step_scores(masks, logits, (1, 2, 4), 100), curve)



def test_windows_of_a_long_video_find_the_planted_actions():
    """Train the tiny model to find the synthetic actions, then plant 8 actions in a video of
    1,500 steps (several near window cuts) and process it in windows of 128 steps."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = config_from_dict({
        "dataset": {"input_dim": DIM, "num_classes": NUM_CLASSES, "max_seq_len": 64},
        "model": {"fpn_type": "identity", "backbone_arch": [2, 1, 2], "n_head": 2,
                  "n_mha_win_size": 5, "embd_dim": 16, "fpn_dim": 16, "head_dim": 16,
                  "regression_range": [[0, 4], [4, 8], [8, 10000]]},
        "train_cfg": {"init_loss_norm": 20, "droppath": 0.0},
        "test_cfg": {"pre_nms_topk": 500, "max_seg_num": 100, "min_score": 0.001}})
    model = make_meta_arch(cfg["model_name"], **cfg["model"])
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(80):
        batch = []
        for _ in range(4):
            start, length, label = int(rng.integers(2, 40)), int(rng.integers(4, 16)), \
                int(rng.integers(2))
            feats = synthetic_video(rng, 64, [(start, start + length, label)])
            batch.append({"video_id": "t", "feats": torch.from_numpy(feats.T.copy()),
                          "segments": torch.tensor([[start - 0.5, start + length - 0.5]]),
                          "labels": torch.tensor([label]), "fps": FPS, "duration": 100.0,
                          "feat_stride": 4, "feat_num_frames": 16})
        loss = model(batch)["final_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()

    planted = [(60, 70, 0), (120, 132, 1), (215, 225, 0), (300, 306, 1), (470, 482, 0),
               (700, 712, 1), (1010, 1018, 0), (1480, 1492, 1)]
    long_feats = torch.from_numpy(synthetic_video(rng, 1500, planted).T.copy())
    meta = {"video_id": "long", "fps": FPS, "duration": 1e8, "feat_stride": 4,
            "feat_num_frames": 16}
    out = windowed_inference(model, long_feats, meta, window=128, overlap=32)
    assert out["num_windows"] == len(plan_windows(1500, 128, 32, 4)) == 16
    segs = out["segments"].numpy()
    scores, labels = out["scores"].numpy(), out["labels"].numpy()
    top = scores >= np.sort(scores)[::-1][len(planted) * 2 - 1]
    for start, end, label in planted:
        gt = np.array([seconds(start - 0.5), seconds(end - 0.5)])
        inter = np.clip(np.minimum(segs[:, 1], gt[1]) - np.maximum(segs[:, 0], gt[0]), 0, None)
        iou = inter / (segs[:, 1] - segs[:, 0] + gt[1] - gt[0] - inter)
        hits = top & (labels == label) & (iou >= 0.5)
        assert hits.any(), f"planted action {start}-{end} class {label} not found"


def test_no_video_succeeded_keeps_the_earlier_output(demo, tmp_path, capsys):
    out = tmp_path / "detections.json"
    assert predict.main([demo["config"], demo["ckpt"], str(demo["feat_dir"] / "vid0.npy"), "--out", str(out)]) == 0
    before = out.read_text()
    bad = tmp_path / "broken.npy"
    bad.write_bytes(b"garbage")
    assert predict.main([demo["config"], demo["ckpt"], str(bad), "--out", str(out), "--csv",
                         str(tmp_path / "d.csv")]) == 1
    assert f"no video succeeded: {out} not written" in capsys.readouterr().err
    assert out.read_text() == before and not (tmp_path / "d.csv").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []     # no temp files left


def test_weights_live_reads_state_dict(demo, tmp_path):
    ckpt = torch.load(demo["ckpt"])
    live = {k: v + 0.05 if v.is_floating_point() else v for k, v in ckpt["state_dict_ema"].items()}
    torch.save({"epoch": 1, "state_dict_ema": ckpt["state_dict_ema"], "state_dict": live},
               tmp_path / "both.pth.tar")
    files = [str(demo["feat_dir"] / "vid2.npy")]
    for weights in ("ema", "live"):
        assert predict.main([demo["config"], str(tmp_path / "both.pth.tar"), *files, "--weights", weights,
                             "--out", str(tmp_path / f"{weights}.json")]) == 0
    ema = json.load(open(tmp_path / "ema.json"))["results"]["vid2"]
    live_out = json.load(open(tmp_path / "live.json"))["results"]["vid2"]
    assert ema != live_out
    with pytest.raises(KeyError, match="checkpoint has no 'state_dict' entry"):
        predict.main([demo["config"], demo["ckpt"], *files, "--weights", "live", "--out", str(tmp_path / "x.json")])
