"""tools/convert_ego4d_trainval.py on hand-written files in the official Ego4D MQ format (spec A.6);
its output loads with the ego4d loader."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

from libs.datasets import make_dataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import convert_ego4d_trainval as conv  # noqa: E402

LABELS = conv.load_label_map(conv.SHIPPED_LABEL_MAP)
SF_DIM, OV_DIM = 4, 3


def item(label, start_s, end_s, primary=True):
    """One official label item; canonical-video times (s) and frames (30 fps)."""
    return {"label": label, "start_time": 0.0, "end_time": 0.0, "video_start_time": start_s,
            "video_end_time": end_s, "video_start_frame": int(round(start_s * 30)),
            "video_end_frame": int(round(end_s * 30)), "primary": primary}


def clip(uid, start_s, end_s, start_frame, end_frame, annotators):
    return {"clip_uid": uid, "video_start_sec": start_s, "video_end_sec": end_s,
            "video_start_frame": start_frame, "video_end_frame": end_frame, "clip_start_sec": 0.0,
            "annotations": [{"annotator_uid": f"ann{i}", "labels": labels} for i, labels in enumerate(annotators)]}


def save_pt(folder, vid, windows, dim):
    os.makedirs(folder, exist_ok=True)
    feats = 100.0 * torch.arange(windows, dtype=torch.float64)[:, None] + torch.arange(dim)[None]
    torch.save(feats.float(), os.path.join(folder, vid + ".pt"))


@pytest.fixture
def ego4d_raw(tmp_path):
    """vid-1 (train): clip-1 (two annotators), clip-2 (no primary labels), clip-3 (fps 3), clip-4
    (negative start); vid-2 lacks omnivore, vid-3 lacks slowfast; vid-4 (val): one clip with
    every one of the 110 classes."""
    train = {"version": "v2", "videos": [{
        "video_uid": "vid-1", "split": "train", "clips": [
            clip("clip-1", 10.2, 18.2, 306, 546, [
                [item("watch_television", 12.2, 14.2), item("fold_clothes_/_sheets", 13.0, 15.0, primary=False),
                 item("fold_clothes_/_sheets", 15.0, 15.2)],
                [item("watch_television", 12.25, 14.25)]]),
            clip("clip-2", 20.0, 28.0, 600, 840, [[item("watch_television", 21.0, 22.0, primary=False)]]),
            clip("clip-3", 0.0, 100.0, 0, 300, [[item("watch_television", 1.0, 2.0)]]),
            clip("clip-4", -0.5, 4.0, -15, 120, [[item("fold_clothes_/_sheets", 1.0, 3.0)]]),
        ]}]}
    val = {"version": "v2", "videos": [
        {"video_uid": "vid-2", "split": "val", "clips": [clip("clip-x", 0.0, 8.0, 0, 240, [])]},
        {"video_uid": "vid-3", "split": "val", "clips": [clip("clip-y", 0.0, 8.0, 0, 240, [])]},
        {"video_uid": "vid-4", "split": "val", "clips": [
            clip("clip-5", 0.0, 60.0, 0, 1800, [[item(name, 1.0, 2.0) for name in LABELS]])]},
    ]}
    os.makedirs(tmp_path / "annotations")
    for name, content in (("moments_train.json", train), ("moments_val.json", val)):
        with open(tmp_path / "annotations" / name, "w") as fid:
            json.dump(content, fid)
    sf_dir, ov_dir = str(tmp_path / "features" / "slowfast8x8_r101_k400"), str(tmp_path / "features" / "omnivore_video_swinl")
    for vid, windows in (("vid-1", 60), ("vid-4", 120)):
        save_pt(sf_dir, vid, windows, SF_DIM)
        save_pt(ov_dir, vid, windows, OV_DIM)
    save_pt(sf_dir, "vid-2", 20, SF_DIM)
    save_pt(ov_dir, "vid-3", 20, OV_DIM)
    return tmp_path


def run_cli(root, monkeypatch, *argv, out="annotations/ego4d.json"):
    monkeypatch.chdir(root)
    assert conv.main(list(argv)) == 0
    with open(root / out) as fid:
        return json.load(fid)


def test_conversion_by_hand(ego4d_raw, monkeypatch, capsys):
    out = run_cli(ego4d_raw, monkeypatch)
    printed = capsys.readouterr().out
    assert "video vid-2: skipped, omnivore feature file missing" in printed
    assert "video vid-3: skipped, slowfast feature file missing" in printed
    assert "wrote 3 annotated clips to annotations/ego4d.json and features of 4 clips" in printed
    assert "skipped: 1 clips with fps outside [10, 100]" in printed
    assert "skipped: 1 clips without annotations (features written, no JSON entry)" in printed

    db = out["database"]
    assert out["version"] == "v1" and list(db) == ["clip-1", "clip-4", "clip-5"]
    # clip-1: frames 306..546 at 30 fps; 306 % 16 = 2 frames prepended, (242 - 32) % 16 = 2 -> 14
    # appended: frames 304..560, duration 8 + 16/30 = 8.533 s
    assert db["clip-1"]["subset"] == "training"
    assert db["clip-1"]["duration"] == 8.53 and db["clip-1"]["fps"] == 30.0
    # 12.2 - 10.2 + 2/30 = 2.0667 -> 2.07; annotators pooled; non-primary and 0.2 s items dropped
    assert db["clip-1"]["annotations"] == [
        {"label": "watch_television", "segment": [2.07, 4.07], "segment(frames)": [62, 122], "label_id": 105},
        {"label": "watch_television", "segment": [2.12, 4.12], "segment(frames)": [64, 124], "label_id": 105}]
    # clip-4 starts before the video: start clamped to 0; 120 frames + 8 appended -> 4.27 s
    assert db["clip-4"]["duration"] == 4.27
    assert db["clip-4"]["annotations"][0]["segment"] == [1.0, 3.0]
    assert db["clip-4"]["annotations"][0]["label_id"] == 49
    assert db["clip-5"]["subset"] == "validation" and len(db["clip-5"]["annotations"]) == 110

    sf = np.load(ego4d_raw / "features" / "slowfast_features" / "clip-1.npy")
    ov = np.load(ego4d_raw / "features" / "omnivore_features" / "clip-1.npy")
    # windows 304/16 = 19 ... (546 + 14 - 32)/16 = 33, end-exclusive: rows 19..32
    assert sf.dtype == np.float32 and sf.shape == (14, SF_DIM) and ov.shape == (14, OV_DIM)
    assert sf[0, 1] == 1901.0 and sf[-1, 0] == 3200.0 and ov[-1, 2] == 3202.0
    assert np.load(ego4d_raw / "features" / "slowfast_features" / "clip-4.npy").shape == (6, SF_DIM)
    # clip-2 has features but no entry; clip-3 (fps 3) has neither
    assert (ego4d_raw / "features" / "slowfast_features" / "clip-2.npy").exists()
    assert not (ego4d_raw / "features" / "slowfast_features" / "clip-3.npy").exists()


def test_output_loads_with_ego4d_loader(ego4d_raw, monkeypatch):
    run_cli(ego4d_raw, monkeypatch)
    folders = [str(ego4d_raw / "features" / "slowfast_features"), str(ego4d_raw / "features" / "omnivore_features")]
    cfg = dict(json_file=str(ego4d_raw / "annotations" / "ego4d.json"), feat_folder=folders, file_prefix=None,
               file_ext=".npy", feat_stride=16, num_frames=32, default_fps=30, input_dim=[SF_DIM, OV_DIM],
               num_classes=110, downsample_rate=1, max_seq_len=1024, trunc_thresh=0.3,
               crop_ratio=[0.9, 1.0], force_upsampling=False)
    train = make_dataset("ego4d", False, ["training"], **cfg)
    assert [v["id"] for v in train.data_list] == ["clip-1", "clip-4"]
    item = train[0]
    assert item["feats"].shape == (SF_DIM + OV_DIM, 14) and item["feats"][SF_DIM, 0].item() == 1900.0
    # grid = 1.875 t - 1
    torch.testing.assert_close(item["segments"], torch.tensor([[1.875 * 2.07 - 1, 1.875 * 4.07 - 1],
                                                               [1.875 * 2.12 - 1, 1.875 * 4.12 - 1]]))
    val = make_dataset("ego4d", False, ["validation"], **cfg)
    assert val[0]["feats"].shape == (SF_DIM + OV_DIM, 111)   # (1800 + 8 - 32) / 16 = 111 windows


def test_rerun_gives_identical_output(ego4d_raw, monkeypatch):
    run_cli(ego4d_raw, monkeypatch, "--no-progress")
    first = (ego4d_raw / "annotations" / "ego4d.json").read_bytes()
    sf = np.load(ego4d_raw / "features" / "slowfast_features" / "clip-1.npy")
    run_cli(ego4d_raw, monkeypatch, "--no-progress")
    assert (ego4d_raw / "annotations" / "ego4d.json").read_bytes() == first
    np.testing.assert_array_equal(np.load(ego4d_raw / "features" / "slowfast_features" / "clip-1.npy"), sf)


def test_flags_override_paths_and_local_label_map_wins(ego4d_raw, monkeypatch, tmp_path):
    shutil.move(str(ego4d_raw / "annotations" / "moments_val.json"), str(tmp_path / "val.json"))
    # a label map in the working folder is used instead of the shipped one
    local_map = open(conv.SHIPPED_LABEL_MAP).read().replace("105\twatch_television", "007\twatch_television")
    (ego4d_raw / "ego4d_label_map.txt").write_text(local_map)
    out = run_cli(ego4d_raw, monkeypatch, "--val-annot", str(tmp_path / "val.json"),
                  "--annot-out", "out/mq.json", "--slowfast-out", "sf", out="out/mq.json")
    assert out["database"]["clip-1"]["annotations"][0]["label_id"] == 7
    assert (ego4d_raw / "sf" / "clip-1.npy").exists()
    assert not (ego4d_raw / "annotations" / "ego4d.json").exists()


def test_unknown_label_reported_before_writing(ego4d_raw, monkeypatch, capsys):
    path = ego4d_raw / "annotations" / "moments_train.json"
    data = json.loads(path.read_text())
    data["videos"][0]["clips"][0]["annotations"][1]["labels"][0]["label"] = "juggle"
    path.write_text(json.dumps(data))
    monkeypatch.chdir(ego4d_raw)
    assert conv.main(["--no-progress"]) == 1
    err = capsys.readouterr().err
    assert ("error: 1 annotation label(s) not in " in err and "nothing was written:\n  video 'vid-1' clip 'clip-1': "
            "annotations[1].labels[0].label: 'juggle' is not in the label map" in err)
    assert not (ego4d_raw / "annotations" / "ego4d.json").exists()


def test_clip_past_the_features_is_skipped(ego4d_raw, monkeypatch, capsys):
    save_pt(str(ego4d_raw / "features" / "omnivore_video_swinl"), "vid-1", 30, OV_DIM)
    out = run_cli(ego4d_raw, monkeypatch, "--no-progress")
    assert "video vid-1 clip clip-1: skipped, needs feature windows up to 33 but slowfast has 60, omnivore 30" \
        in capsys.readouterr().out
    assert "clip-1" not in out["database"] and "clip-4" in out["database"]
