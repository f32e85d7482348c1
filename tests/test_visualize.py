"""tools/visualize.py: a PNG per video whose size and colours are checked pixel by pixel, the
same picture from eval.py's pickle and from a results JSON, lane packing, video selection."""
import json
import pickle

import numpy as np
import pytest
from matplotlib import image

from tools.visualize import class_colour, figure_height, main, pack_lanes

GT = {"database": {
    "v1": {"subset": "test", "duration": 60.0, "annotations": [
        {"label": "Jump", "label_id": 0, "segment": [5.0, 15.0]},
        {"label": "Run", "label_id": 1, "segment": [30.0, 40.0]}]},
    "v2": {"subset": "test", "duration": 30.0, "annotations": [
        {"label": "Jump", "label_id": 0, "segment": [1.0, 2.0]}]},
}}
# v1: two overlapping class-2 detections (2 lanes) and one class-3 detection below threshold
DETS = [("v1", 4.0, 16.0, 2, 0.9), ("v1", 10.0, 20.0, 2, 0.6), ("v1", 31.0, 39.0, 3, 0.1),
        ("v2", 1.0, 2.5, 0, 0.8)]


def rgb255(colour):
    return tuple(int(round(c * 255)) for c in colour[:3])


def pixels(path):
    img = image.imread(str(path))
    return (img[..., :3] * 255).round().astype(np.uint8)


def count_colour(img, colour):
    return int((img == np.asarray(rgb255(colour), dtype=np.uint8)).all(-1).sum())


@pytest.fixture
def files(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(GT))
    results = {}
    for vid, s, e, label, score in DETS:
        results.setdefault(vid, []).append({"segment": [s, e], "label": label, "score": score})
    pred_json = tmp_path / "pred.json"
    pred_json.write_text(json.dumps({"results": results}))
    pred_pkl = tmp_path / "eval_results.pkl"
    with open(pred_pkl, "wb") as f:   # the layout eval.py --saveonly pickles
        pickle.dump({"video-id": [d[0] for d in DETS],
                     "t-start": np.array([d[1] for d in DETS], np.float32),
                     "t-end": np.array([d[2] for d in DETS], np.float32),
                     "label": np.array([d[3] for d in DETS], np.int64),
                     "score": np.array([d[4] for d in DETS], np.float32)}, f)
    return {"gt": str(gt), "json": str(pred_json), "pkl": str(pred_pkl)}


def test_png_size_and_colours(files, tmp_path, capsys):
    out = tmp_path / "vis"
    assert main([files["json"], "--gt", files["gt"], "--out-dir", str(out),
                 "--threshold", "0.3"]) == 0
    png = out / "v1.png"
    assert png.stat().st_size > 5000
    img = pixels(png)
    # 1 ground-truth lane + 2 detection lanes, 12 in wide at 100 dpi
    assert img.shape[:2] == (round(figure_height(3, False) * 100), 1200)
    assert img.shape[0] == round((1.1 + 3 * 0.32) * 100)
    bar = 1200 * 0.9 / 60   # pixels per second, roughly (axes span 90 % of the width)
    assert count_colour(img, class_colour(0)) > 10 * bar * 8    # GT Jump, 10 s
    assert count_colour(img, class_colour(1)) > 10 * bar * 8    # GT Run, 10 s
    assert count_colour(img, class_colour(2)) > 20 * bar * 8    # two detections, 12 s + 10 s
    assert count_colour(img, class_colour(3)) == 0              # score 0.1 < 0.3: not drawn
    assert "v1.png: 2 detections >= 0.3, 2 ground-truth segments" in capsys.readouterr().out


def test_pickle_and_json_give_the_same_picture(files, tmp_path):
    main([files["json"], "--gt", files["gt"], "--out-dir", str(tmp_path / "a")])
    main([files["pkl"], "--gt", files["gt"], "--out-dir", str(tmp_path / "b")])
    for vid in ("v1", "v2"):
        np.testing.assert_array_equal(pixels(tmp_path / "a" / f"{vid}.png"),
                                      pixels(tmp_path / "b" / f"{vid}.png"))


def test_score_curve_panel_and_no_ground_truth(files, tmp_path):
    curves = tmp_path / "curves"
    curves.mkdir()
    times = np.linspace(0.5, 29.5, 60)
    scores = np.zeros((60, 4), np.float32)
    scores[:, 3] = 0.8                      # a flat class-3 curve
    np.savez(curves / "v2.npz", times=times, scores=scores)
    out = tmp_path / "vis"
    assert main([files["json"], "--videos", "v2", "--curves", str(curves), "--out-dir",
                 str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["v2.png"]
    img = pixels(out / "v2.png")
    assert img.shape[:2] == (round(figure_height(1, True) * 100), 1200)
    assert count_colour(img, class_colour(3)) > 500    # the curve line
    assert count_colour(img, class_colour(0)) > 0      # the detection


def test_unknown_video_is_an_error(files, tmp_path):
    with pytest.raises(ValueError, match="--videos: nope not in"):
        main([files["json"], "--videos", "nope", "--out-dir", str(tmp_path)])


def test_pack_lanes():
    assert pack_lanes([(0, 10), (5, 15), (10, 20), (12, 13), (30, 40)]) == [0, 1, 0, 2, 0]
    assert pack_lanes([]) == []
