"""tools/summarize_runs.py on fake experiment folders with hand-computed statistics."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "summarize_runs.py")


def fake_run(folder, maps, recall1, recall5):
    os.makedirs(folder)
    metrics = {"tiou": [0.3, 0.5, 0.7], "mAP": maps, "average_mAP": sum(maps) / len(maps),
               "recall": {"1": recall1, "5": recall5}}
    with open(os.path.join(folder, "eval_metrics.json"), "w") as fd:
        json.dump(metrics, fd)


def test_two_runs_mean_and_sample_std(tmp_path):
    a, b = str(tmp_path / "seed1"), str(tmp_path / "seed2")
    fake_run(a, [0.80, 0.60, 0.40], [0.5, 0.4, 0.3], [0.9, 0.8, 0.7])
    fake_run(b, [0.70, 0.50, 0.30], [0.7, 0.6, 0.5], [0.9, 0.8, 0.7])
    out_json = str(tmp_path / "summary.json")
    proc = subprocess.run([sys.executable, TOOL, a, b, "--json", out_json], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # means 0.75/0.55/0.35, sample std of two values d apart = d / sqrt(2) = 0.0707
    assert "  0.30 |   75.00 ±  7.07" in proc.stdout
    assert proc.stdout.strip().endswith("Average mAP: 55.00 ± 7.07 (%)")
    summary = json.load(open(out_json))
    assert summary["num_runs"] == 2
    assert summary["mAP"]["mean"] == pytest.approx([0.75, 0.55, 0.35])
    assert summary["recall"]["1"]["mean"] == pytest.approx([0.6, 0.5, 0.4])
    assert summary["recall"]["5"]["std"] == pytest.approx([0.0, 0.0, 0.0])


def test_missing_metrics_is_one_clear_line(tmp_path):
    os.makedirs(tmp_path / "empty")
    proc = subprocess.run([sys.executable, TOOL, str(tmp_path / "empty")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {tmp_path / 'empty'}: no eval_metrics.json found "
                                   "(run eval.py on this experiment first)")
