"""Grid -> seconds conversion (spec E.5, J) and external score fusion (spec E.6, A.4)."""
import json
import pickle

import numpy as np
import pytest
import torch

from libs.utils import load_external_scores, postprocess_results, segments_to_seconds

F32 = np.float32


def test_thumos_grid_to_seconds_and_clamping():
    # THUMOS, fps 30: t = (4 g + 8) / 30 (spec J); duration 200 s
    grid = torch.tensor([[-3.0, 10.0], [-2.0, 100.0], [1500.0, 2000.0]])
    secs = segments_to_seconds(grid.clone(), feat_stride=4, num_frames=16, fps=30.0,
                               duration=200.0)
    expected = (grid.numpy() * F32(4) + F32(8)) / F32(30)      # float32, same op order
    expected = np.where(expected <= 0, expected * 0, expected)
    expected = np.where(expected >= 200, F32(200), expected)
    np.testing.assert_array_equal(secs.numpy(), expected)
    assert secs[0, 1].item() == pytest.approx(48 / 30)
    assert secs[2].tolist() == [200.0, 200.0]
    # negatives become -0.0 (multiplied by 0), an exact 0 stays +0.0
    assert torch.signbit(secs[0, 0]) and secs[0, 0].item() == 0.0
    assert not torch.signbit(secs[1, 0]) and secs[1, 0].item() == 0.0


def test_epic_grid_to_seconds():
    # EPIC / Ego4D: t = (16 g + 16) / 30
    secs = segments_to_seconds(torch.tensor([[0.0, 14.0]]), 16, 32, 30.0, 1e8)
    assert secs.tolist()[0] == pytest.approx([16 / 30, 240 / 30])
    assert segments_to_seconds(torch.zeros(0, 2), 16, 32, 30.0, 10.0).shape == (0, 2)


def write_scores(tmp_path, scores, wrap=True, name="cls_scores.json"):
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps({"results": scores} if wrap else scores))
    else:
        with open(path, "wb") as f:
            pickle.dump({k: np.asarray(v) for k, v in scores.items()}, f)
    return str(path)


RESULTS = {"video-id": ["b", "a", "a", "a"],
           "t-start": np.array([1.0, 0.0, 5.0, 9.0], dtype=np.float32),
           "t-end": np.array([2.0, 4.0, 8.0, 12.0], dtype=np.float32),
           "label": np.array([0, 0, 0, 0]),
           "score": np.array([0.5, 0.3, 0.8, 0.6], dtype=np.float32)}
EXT = {"a": [0.1, 0.7, 0.2], "b": [0.6, 0.05, 0.3], "unused": [1, 0, 0]}


@pytest.mark.parametrize("wrap", [True, False])
def test_fusion_hand_computed(tmp_path, wrap):
    out = postprocess_results(RESULTS, write_scores(tmp_path, EXT, wrap), num_pred=2, topk=2)
    # videos in sorted order; "a" keeps its 2 best (0.8 at [5,8], 0.6 at [9,12]) and pairs
    # them with classes 1 (0.7) then 2 (0.2); "b" keeps [1,2] with classes 0 (0.6), 2 (0.3)
    assert out["video-id"] == ["a"] * 4 + ["b"] * 2
    assert out["label"].tolist() == [1, 1, 2, 2, 0, 2]
    assert out["t-start"].tolist() == [5, 9, 5, 9, 1, 1]
    assert out["t-end"].tolist() == [8, 12, 8, 12, 2, 2]
    s = lambda a, b: np.sqrt(np.float64(a) * np.float64(F32(b)))   # noqa: E731
    np.testing.assert_allclose(out["score"], [s(0.7, 0.8), s(0.7, 0.6), s(0.2, 0.8),
                                              s(0.2, 0.6), s(0.6, 0.5), s(0.3, 0.5)],
                               rtol=1e-15)
    assert out["score"].dtype == np.float64 and out["label"].dtype == np.int64


def test_fusion_from_pickles_and_ties(tmp_path):
    results_pkl = tmp_path / "eval_results.pkl"
    with open(results_pkl, "wb") as f:
        pickle.dump(RESULTS, f)
    # equal external scores: argsort is stable here, reversed -> the higher class id first
    ext = write_scores(tmp_path, {"a": [0.4, 0.4, 0.1], "b": [0.2, 0.2, 0.2]}, name="s.pkl")
    out = postprocess_results(str(results_pkl), ext, num_pred=1, topk=2)
    assert out["label"].tolist() == [1, 0, 2, 1]
    assert out["t-start"].tolist() == [5, 5, 1, 1]


def test_load_external_scores_formats(tmp_path):
    assert load_external_scores(write_scores(tmp_path, EXT))["a"] == [0.1, 0.7, 0.2]
    assert load_external_scores(write_scores(tmp_path, EXT, wrap=False))["b"][0] == 0.6
    assert load_external_scores(write_scores(tmp_path, EXT, name="x.pkl"))["a"].shape == (3,)
    with pytest.raises(FileNotFoundError, match="no such external score file"):
        load_external_scores(str(tmp_path / "missing.json"))


def test_fusion_errors_name_file_and_video(tmp_path):
    path = write_scores(tmp_path, {"a": [0.1, 0.7, 0.2]})
    with pytest.raises(KeyError, match="no external class scores for video 'b'"):
        postprocess_results(RESULTS, path)
    path = write_scores(tmp_path, {"a": [0.1], "b": [0.3]})
    with pytest.raises(ValueError, match="video 'a'.*at least 2"):
        postprocess_results(RESULTS, path)
    empty = {k: v[:0] for k, v in RESULTS.items()}
    assert len(postprocess_results(empty, write_scores(tmp_path, EXT))["score"]) == 0
