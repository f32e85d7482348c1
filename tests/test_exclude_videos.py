"""dataset.exclude_videos: THUMOS14's 211-video test protocol (two mislabelled videos left out of
the loader and of the evaluation)."""
import numpy as np
import pytest

from libs.core import load_config
from libs.datasets import make_dataset
from libs.datasets.datasets import THUMOS14_MISLABELLED_TEST_VIDEOS
from libs.utils import ANETdetection
from tests.fixtures_data import dataset_cfg, ramp, save_npy, video, write_json
from tests.test_metrics import preds_dict, write_gt


@pytest.fixture
def thumos(tmp_path):
    feat_dir = str(tmp_path / "i3d_features")
    database = {vid: video("Test", 5.0, 30.0, [("Billiards", 0, 1.0, 2.0)])
                for vid in ("video_test_0000004", *THUMOS14_MISLABELLED_TEST_VIDEOS)}
    database["video_validation_0000051"] = video("Validation", 5.0, 30.0, [("Billiards", 0, 1.0, 2.0)])
    json_file = write_json(str(tmp_path / "thumos14.json"), database)
    for vid in database:
        save_npy(feat_dir, vid, ramp(37, 4))
    return dataset_cfg(json_file, feat_dir, feat_stride=4, num_frames=16, input_dim=4, num_classes=1)


def test_default_keeps_every_video_and_the_switch_drops_two(thumos):
    assert load_config("configs/thumos_i3d.yaml")["dataset"]["exclude_videos"] == []
    all_test = make_dataset("thumos", False, ["test"], **thumos)
    assert len(all_test) == 3
    kept = make_dataset("thumos", False, ["test"], **thumos,
                        exclude_videos=list(THUMOS14_MISLABELLED_TEST_VIDEOS))
    assert [v["id"] for v in kept.data_list] == ["video_test_0000004"]
    train = make_dataset("thumos", True, ["validation"], **thumos,
                         exclude_videos=list(THUMOS14_MISLABELLED_TEST_VIDEOS))
    assert len(train) == 1


def test_unknown_excluded_id_is_an_error(thumos):
    with pytest.raises(ValueError, match="video 'video_test_9999999': listed in "
                                         "dataset.exclude_videos but not in the file"):
        make_dataset("thumos", False, ["test"], **thumos, exclude_videos=["video_test_9999999"])


def test_config_override_parses_the_list():
    cfg = load_config("configs/thumos_i3d.yaml",
                      ["dataset.exclude_videos=[video_test_0000270, video_test_0001292]"])
    assert cfg["dataset"]["exclude_videos"] == list(THUMOS14_MISLABELLED_TEST_VIDEOS)


def test_evaluator_leaves_out_ground_truth_and_predictions(tmp_path):
    gt = write_gt(tmp_path, {"v1": ("test", [(0, 10, 0)]), "bad": ("test", [(0, 10, 0), (20, 30, 0)])})
    preds = preds_dict([("v1", 0, 10, 0, 0.9), ("bad", 50, 60, 0, 0.95)])
    every = ANETdetection(gt, "test", tiou_thresholds=[0.5], top_k=(1,))
    # FP (bad, 0.95) then TP: precision 0, 1/2; 1 of 3 GT recalled -> AP = 1/3 * 1/2
    assert every.evaluate(preds, verbose=False)[0][0] == pytest.approx(1 / 6)
    fair = ANETdetection(gt, "test", tiou_thresholds=[0.5], top_k=(1,), exclude_videos=["bad"])
    assert fair.video_ids == ["v1"]
    np.testing.assert_allclose(fair.evaluate(preds, verbose=False)[0], [1.0])


def test_eval_scores_without_the_excluded_videos(thumos):
    import eval as eval_cli
    dataset = make_dataset("thumos", False, ["test"], **thumos,
                           exclude_videos=list(THUMOS14_MISLABELLED_TEST_VIDEOS))
    results = preds_dict([("video_test_0000004", 1.0, 2.0, 0, 0.9),
                          ("video_test_0000270", 1.0, 2.0, 0, 0.95)])
    metrics = eval_cli.score({"test_cfg": {"ext_score_file": None}}, dataset, results)
    # only video_test_0000004 is scored: its one prediction hits its one action
    assert metrics["average_mAP"] == pytest.approx(1.0)
