"""tools/evaluate.py: the three prediction formats, the JSON output, defaults and one-line
errors for bad input."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from tools.evaluate import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 2 videos in split "test"; hand-checkable numbers at tIoU 0.5 (see test_results_json_numbers)
GT = {"database": {
    "v1": {"subset": "Test", "annotations": [
        {"label": "Jump", "label_id": 0, "segment": [0.0, 10.0]},
        {"label": "Run", "label_id": 1, "segment": [20.0, 30.0]}]},
    "v2": {"subset": "test", "annotations": [
        {"label": "Jump", "label_id": 0, "segment": [5.0, 15.0]}]},
    "v3": {"subset": "train", "annotations": [
        {"label": "Swim", "label_id": 2, "segment": [0.0, 1.0]}]},
}}
# (video, start, end, label name, label id, score)
PREDS = [("v1", 0.0, 10.0, "Jump", 0, 0.9), ("v2", 30.0, 40.0, "Jump", 0, 0.8),
         ("v2", 5.0, 14.0, "Jump", 0, 0.7), ("v1", 20.0, 26.0, "Run", 1, 0.6)]


@pytest.fixture
def gt_file(tmp_path):
    path = tmp_path / "thumos14.json"
    path.write_text(json.dumps(GT))
    return str(path)


def results_json(tmp_path, rows, use_names=True):
    results = {}
    for vid, s, e, name, lid, score in rows:
        results.setdefault(vid, []).append({"segment": [s, e], "label": name if use_names else lid,
                                            "score": score})
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"results": results}))
    return str(path)


def run_tool(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_results_json_numbers(tmp_path, gt_file, capsys):
    out_json = tmp_path / "metrics.json"
    code, out, err = run_tool(["--gt", gt_file, "--pred", results_json(tmp_path, PREDS),
                               "--split", "test", "--tiou", "0.5", "--json", str(out_json)],
                              capsys)
    assert code == 0, err
    # class Jump (2 GT): TP .9, FP .8, TP .7 (IoU .9) -> AP = .5*1 + .5*2/3
    # class Run (1 GT): IoU .6 -> TP -> AP 1
    ap = ((0.5 + 0.5 * 2 / 3) + 1.0) / 2
    metrics = json.loads(out_json.read_text())
    assert metrics["tiou"] == [0.5]
    assert metrics["mAP"] == pytest.approx([ap])
    assert metrics["average_mAP"] == pytest.approx(ap)
    # Recall@1x: v1/Jump top-1 hits, v2/Jump top-1 is the miss at .8 -> 1/2; Run 1/1
    assert metrics["recall"]["1"] == pytest.approx([(0.5 + 1.0) / 2])
    assert metrics["recall"]["5"] == pytest.approx([1.0])
    assert out.strip().splitlines()[-1] == f"Average mAP: {ap * 100:.2f} (%)"


def test_all_formats_give_the_same_numbers(tmp_path, gt_file, capsys):
    database = {}
    for vid, s, e, _, lid, score in PREDS:
        database.setdefault(vid, []).append({"segment": [s, e], "label_id": lid,
                                             "scores": score})
    ref_json = tmp_path / "ref_preds.json"
    ref_json.write_text(json.dumps({"database": database}))
    pkl = tmp_path / "eval_results.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"video-id": [p[0] for p in PREDS],
                     "t-start": np.array([p[1] for p in PREDS], dtype=np.float32),
                     "t-end": np.array([p[2] for p in PREDS], dtype=np.float32),
                     "label": np.array([p[4] for p in PREDS]),
                     "score": np.array([p[5] for p in PREDS], dtype=np.float32)}, f)
    outputs = []
    for pred in (results_json(tmp_path, PREDS), results_json(tmp_path, PREDS, False),
                 str(ref_json), str(pkl)):
        out_json = tmp_path / "m.json"
        code, _, err = run_tool(["--gt", gt_file, "--pred", pred, "--split", "test",
                                 "--json", str(out_json)], capsys)
        assert code == 0, err
        outputs.append(json.loads(out_json.read_text()))
    for other in outputs[1:]:
        assert other["mAP"] == pytest.approx(outputs[0]["mAP"], abs=1e-7)
        for k in ("1", "5"):
            assert other["recall"][k] == pytest.approx(outputs[0]["recall"][k], abs=1e-7)
    # thumos14.json -> THUMOS thresholds 0.3:0.1:0.7
    assert outputs[0]["tiou"] == pytest.approx([0.3, 0.4, 0.5, 0.6, 0.7])
    assert set(outputs[0]["recall"]) == {"1", "5"}


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["results"].update({"nope": r["results"]["v1"]}), "outside split"),
    (lambda r: r["results"]["v1"][0].update({"label": "Fly"}), "'Fly' is neither a known"),
    (lambda r: r["results"]["v1"][0].update({"segment": [5.0, 1.0]}), "ends before it starts"),
    (lambda r: r["results"]["v1"][0].update({"score": float("nan")}), "'score' is nan"),
    (lambda r: r.update({"results": {}}), "the prediction set is empty"),
    (lambda r: r["results"]["v1"][0].pop("segment"), "field 'segment'"),
])
def test_bad_input_gives_one_line(tmp_path, gt_file, capsys, mutate, message):
    with open(results_json(tmp_path, PREDS)) as f:
        content = json.load(f)
    mutate(content)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    code, out, err = run_tool(["--gt", gt_file, "--pred", str(path), "--split", "test"], capsys)
    assert message in err
    assert "Traceback" not in err
    if message == "outside split":     # a counted warning; evaluation continues
        assert code == 0 and "warning: " in err and out.strip().endswith("(%)")
    else:
        assert code == 2 and len(err.strip().splitlines()) == 1


def test_missing_split_and_missing_files(tmp_path, gt_file, capsys):
    pred = results_json(tmp_path, PREDS)
    code, _, err = run_tool(["--gt", gt_file, "--pred", pred, "--split", "validation"], capsys)
    assert code == 2 and "subsets present: test, train" in err
    code, _, err = run_tool(["--gt", gt_file, "--pred", str(tmp_path / "x.json"), "--split",
                             "test"], capsys)
    assert code == 2 and "no such predictions file" in err
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01garbage")
    code, _, err = run_tool(["--gt", gt_file, "--pred", str(tmp_path / "junk.bin"), "--split",
                             "test"], capsys)
    assert code == 2 and "neither a prediction JSON nor a readable pickle" in err


def test_runs_as_a_script(tmp_path, gt_file):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "evaluate.py"), "--gt",
                           gt_file, "--pred", results_json(tmp_path, PREDS), "--split", "test"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("Average mAP: ")
