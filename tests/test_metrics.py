"""Evaluator: hand-computed AP / recall, GT clean-up, the label quirk, and agreement with a
deliberately naive loop implementation of spec F on random data."""
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from libs.utils import ANETdetection, metrics_to_dict, remove_duplicate_annotations
from libs.utils.metrics import (default_tiou_thresholds, guess_dataset_name,
                                interpolated_prec_rec, load_gt_seg_from_json, segment_iou)


def write_gt(tmp_path, videos, name="gt.json"):
    """videos: {vid: (subset, [(start, end, label_id), ...])}"""
    database = {vid: {"subset": subset, "duration": 100.0,
                      "annotations": [{"label": f"class{l}", "segment": [s, e], "label_id": l}
                                      for s, e, l in events]}
                for vid, (subset, events) in videos.items()}
    path = tmp_path / name
    path.write_text(json.dumps({"database": database}))
    return str(path)


def preds_dict(rows):
    """rows: [(vid, start, end, label, score), ...]"""
    vids, s, e, l, sc = zip(*rows)
    return {"video-id": list(vids), "t-start": np.array(s), "t-end": np.array(e),
            "label": np.array(l), "score": np.array(sc)}


# ------------------------------------------------------------------------------------------
# Naive reference: literal loops over spec F.2 / F.3 (one prediction and one GT at a time)
# ------------------------------------------------------------------------------------------
def naive_evaluate(gt_events, preds, thresholds, top_k):
    """gt_events: list of (vid, start, end, label) after clean-up; preds: list of
    (vid, start, end, label, score) in input order. Returns (ap T x K, recall T x k x K)."""
    gt_ids = sorted({g[3] for g in gt_events})
    index = {j: i for i, j in enumerate(gt_ids)}
    gt = [(v, s, e, index[l]) for v, s, e, l in gt_events]
    pr = [(v, s, e, index.get(l, l), sc) for v, s, e, l, sc in preds]
    num_t, num_c = len(thresholds), len(gt_ids)
    ap = np.zeros((num_t, num_c))
    recall = np.zeros((num_t, len(top_k), num_c))
    for c in range(num_c):
        gts = [g for g in gt if g[3] == c]
        ps = [p for p in pr if p[3] == c]
        if not ps:
            continue
        # --- AP
        order = np.argsort(np.array([p[4] for p in ps]))[::-1]
        tp = np.zeros((num_t, len(ps)))
        fp = np.zeros((num_t, len(ps)))
        taken = np.zeros((num_t, len(gts)), dtype=bool)
        for idx, pi in enumerate(order):
            v, s, e = ps[pi][:3]
            cand = [j for j, g in enumerate(gts) if g[0] == v]
            if not cand:
                fp[:, idx] = 1
                continue
            ious = np.array([segment_iou(np.array([s, e]), np.array([[gts[j][1], gts[j][2]]]))[0]
                             for j in cand])
            for t, thr in enumerate(thresholds):
                for jj in np.argsort(ious)[::-1]:
                    if ious[jj] < thr:
                        break
                    if taken[t, cand[jj]]:
                        continue
                    taken[t, cand[jj]] = True
                    tp[t, idx] = 1
                    break
                fp[t, idx] = 1 - tp[t, idx]
        tpc, fpc = np.cumsum(tp, 1), np.cumsum(fp, 1)
        for t in range(num_t):
            prec = tpc[t] / (tpc[t] + fpc[t])
            rec = tpc[t] / len(gts)
            # plain-loop VOC interpolation
            mprec = [0.0] + list(prec) + [0.0]
            mrec = [0.0] + list(rec) + [1.0]
            for i in range(len(mprec) - 2, -1, -1):
                mprec[i] = max(mprec[i], mprec[i + 1])
            ap[t, c] = sum((mrec[i] - mrec[i - 1]) * mprec[i] for i in range(1, len(mrec))
                           if mrec[i] != mrec[i - 1])
        # --- Recall@kx
        for v in sorted({g[0] for g in gts}):
            vg = [g for g in gts if g[0] == v]
            vp = [p for p in ps if p[0] == v]
            if not vp:
                continue
            vorder = np.argsort(np.array([p[4] for p in vp]))[::-1]
            for ki, k in enumerate(top_k):
                top = [vp[i] for i in vorder[:k * len(vg)]]
                for t, thr in enumerate(thresholds):
                    for g in vg:
                        if any(segment_iou(np.array([p[1], p[2]]), np.array([[g[1], g[2]]]))[0]
                               >= thr for p in top):
                            recall[t, ki, c] += 1
        recall[:, :, c] /= len(gts)
    return ap, recall


# ------------------------------------------------------------------------------------------
# Hand-computed answers
# ------------------------------------------------------------------------------------------
def test_segment_iou_known_values():
    ious = segment_iou(np.array([0.0, 10.0]), np.array([[5.0, 15.0], [0.0, 10.0], [20.0, 30.0],
                                                        [2.0, 4.0]]))
    np.testing.assert_allclose(ious, [5 / 15, 1.0, 0.0, 0.2])


def test_interpolated_ap_known_value():
    # TP, FP, TP with 2 GT: prec 1, .5, 2/3; rec .5, .5, 1 -> AP = .5*1 + .5*(2/3)
    ap = interpolated_prec_rec(np.array([1, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0]))
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_single_class_hand_computed_ap_and_recall(tmp_path):
    gt = write_gt(tmp_path, {"v1": ("test", [(0, 10, 3), (20, 30, 3)]),
                             "v2": ("test", [(0, 10, 3)])})
    preds = preds_dict([
        ("v1", 0, 10, 3, 0.9),     # TP (IoU 1)
        ("v1", 1, 10, 3, 0.8),     # IoU .9 with the taken GT -> FP at .5 (GT locked)
        ("v2", 0, 5, 3, 0.7),      # IoU .5 -> TP at 0.5, FP at 0.7
        ("v1", 20, 30, 3, 0.6),    # TP
    ])
    det = ANETdetection(gt, "test", tiou_thresholds=[0.5, 0.7], top_k=(1,))
    mAP, avg, recall = det.evaluate(preds, verbose=False)
    # thr .5: TP FP TP TP, 3 GT: prec 1, .5, 2/3, 3/4; rec 1/3, 1/3, 2/3, 1
    ap_05 = 1 / 3 * 1 + 1 / 3 * 3 / 4 + 1 / 3 * 3 / 4
    # thr .7: TP FP FP TP: prec 1, .5, 1/3, .5; rec 1/3, 1/3, 1/3, 2/3
    ap_07 = 1 / 3 * 1 + 1 / 3 * 0.5
    np.testing.assert_allclose(mAP, [ap_05, ap_07])
    assert avg == pytest.approx((ap_05 + ap_07) / 2)
    # Recall@1x: v1 keeps its 2 best (both on GT 0 -> 1 of 2 recalled), v2 keeps 1 (IoU .5)
    np.testing.assert_allclose(recall[:, 0], [2 / 3, 1 / 3])


def test_ties_follow_reversed_argsort(tmp_path):
    # equal scores: np.argsort is stable for this short array, reversed -> later row first
    gt = write_gt(tmp_path, {"v": ("test", [(0, 10, 0)])})
    preds = preds_dict([("v", 0, 10, 0, 0.5), ("v", 50, 60, 0, 0.5)])
    det = ANETdetection(gt, "test", tiou_thresholds=[0.5], top_k=(1,))
    mAP, _, recall = det.evaluate(preds, verbose=False)
    # order: FP (row 1) then TP (row 0): prec 0, .5; rec 0, 1 -> AP .5
    assert mAP[0] == pytest.approx(0.5)
    # Recall@1x keeps only the first of the reversed order -> the FP -> 0
    assert recall[0, 0] == 0.0


def test_recall_is_not_one_to_one(tmp_path):
    # one prediction overlapping two GTs by >= .3 recalls both (spec F.3)
    gt = write_gt(tmp_path, {"v": ("test", [(0, 10, 1), (5, 15, 1)])})
    det = ANETdetection(gt, "test", tiou_thresholds=[0.3], top_k=(1,))
    _, _, recall = det.evaluate(preds_dict([("v", 2, 13, 1, 0.9)]), verbose=False)
    assert recall[0, 0] == 1.0


def test_classes_without_predictions_count_zero(tmp_path, caplog):
    gt = write_gt(tmp_path, {"v": ("test", [(0, 10, 0), (20, 30, 1)])})
    det = ANETdetection(gt, "test", tiou_thresholds=[0.5], top_k=(1,))
    with caplog.at_level(logging.WARNING):
        mAP, _, _ = det.evaluate(preds_dict([("v", 0, 10, 0, 0.9)]), verbose=False)
    assert mAP[0] == pytest.approx(0.5)
    assert "no predictions for 1 of 2" in caplog.text


def test_duplicate_and_short_ground_truth_removed(tmp_path):
    events = [{"segment": [0, 10], "label_id": 1}, {"segment": [0.0005, 10.0009], "label_id": 1},
              {"segment": [0, 10], "label_id": 2}, {"segment": [5, 5.0005], "label_id": 1},
              {"segment": [0.002, 10], "label_id": 1}]
    kept = remove_duplicate_annotations(events)
    assert kept == [events[0], events[2], events[4]]
    gt = write_gt(tmp_path, {"v": ("Test", [(0, 10, 1), (0.0005, 10.0009, 1), (3, 3.0001, 1)]),
                             "w": ("train", [(0, 1, 1)])})
    frame = load_gt_seg_from_json(gt, split="test")
    assert frame["video-id"].tolist() == ["v"] and frame["t-end"].tolist() == [10.0]


def test_label_quirk_and_drop_flag(tmp_path):
    # GT ids {0, 2, 3} -> {0, 1, 2}; a prediction with id 1 (absent) stays 1 = GT class 2
    gt = write_gt(tmp_path, {"v": ("test", [(0, 10, 0), (20, 30, 2), (40, 50, 3)])})
    preds = preds_dict([("v", 0, 10, 0, 0.9), ("v", 20, 30, 1, 0.8), ("v", 40, 50, 3, 0.7)])
    det = ANETdetection(gt, "test", tiou_thresholds=[0.5], top_k=(1,))
    ap_quirk = det.evaluate(preds, verbose=False)[0][0]
    assert ap_quirk == pytest.approx(1.0)   # id 1 is scored as GT id 2 and matches it
    det = ANETdetection(gt, "test", tiou_thresholds=[0.5], top_k=(1,), drop_unknown_labels=True)
    assert det.evaluate(preds, verbose=False)[0][0] == pytest.approx(2 / 3)


def test_prediction_formats_agree(tmp_path):
    gt = write_gt(tmp_path, {"v": ("test", [(0, 10, 0), (20, 30, 1)])})
    rows = [("v", 0, 9, 0, 0.9), ("v", 21, 30, 1, 0.4), ("v", 50, 60, 1, 0.8)]
    det = ANETdetection(gt, "test", tiou_thresholds=[0.5, 0.95], top_k=(1, 5))
    ref = det.evaluate(preds_dict(rows), verbose=False)
    frame = pd.DataFrame(preds_dict(rows))
    tensors = {k: (torch.tensor(v) if k != "video-id" else v) for k, v in preds_dict(rows).items()}
    path = tmp_path / "pred.json"
    path.write_text(json.dumps({"database": {"v": [{"segment": [s, e], "label_id": l,
                                                    "scores": sc} for _, s, e, l, sc in rows]}}))
    for other in (frame, tensors, str(path)):
        got = det.evaluate(other, verbose=False)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[2], ref[2])


def test_verbose_prints_reference_lines(tmp_path, capsys):
    gt = write_gt(tmp_path, {"v": ("test", [(0, 10, 0)])})
    det = ANETdetection(gt, "test", tiou_thresholds=np.linspace(0.3, 0.7, 5), top_k=(1, 5),
                        dataset_name="toy")
    det.evaluate(preds_dict([("v", 0, 10, 0, 0.9)]))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[RESULTS] Action detection results on toy."
    assert out[2] == "|tIoU = 0.30: mAP = 100.00 (%) Recall@1x = 100.00 (%) Recall@5x = 100.00 (%) "
    assert out[-1] == "Average mAP: 100.00 (%)"


@pytest.mark.parametrize("rows, message", [
    ([("v", 5, 1, 0, 0.5)], "ends before it starts"),
    ([("v", 0, 1, 0, float("nan"))], "field 'score' is nan"),
    ([("nope", 0, 1, 0, 0.5)], "none of the 1 video ids"),
])
def test_bad_predictions_give_one_line_errors(tmp_path, rows, message):
    det = ANETdetection(write_gt(tmp_path, {"v": ("test", [(0, 10, 0)])}), "test")
    with pytest.raises(ValueError, match=message) as err:
        det.evaluate(preds_dict(rows), verbose=False)
    assert "\n" not in str(err.value)


def test_missing_split_and_empty_predictions(tmp_path, caplog):
    gt = write_gt(tmp_path, {"v": ("validation", [(0, 10, 0)])})
    with pytest.raises(ValueError, match="subsets present: validation"):
        ANETdetection(gt, "test")
    det = ANETdetection(gt, "validation", tiou_thresholds=[0.5], top_k=(1,))
    with caplog.at_level(logging.WARNING):
        empty = {"video-id": [], "t-start": np.zeros(0), "t-end": np.zeros(0),
                 "label": np.zeros(0, dtype=int), "score": np.zeros(0)}
        mAP, avg, recall = det.evaluate(empty, verbose=False)
    assert avg == 0.0 and recall.shape == (1, 1) and "empty" in caplog.text


def test_unknown_videos_warn_and_count_as_false_positives(tmp_path, caplog):
    gt = write_gt(tmp_path, {"v": ("test", [(0, 10, 0)])})
    det = ANETdetection(gt, "test", tiou_thresholds=[0.5], top_k=(1,))
    with caplog.at_level(logging.WARNING):
        mAP = det.evaluate(preds_dict([("x", 0, 10, 0, 0.9), ("v", 0, 10, 0, 0.5)]),
                           verbose=False)[0]
    assert mAP[0] == pytest.approx(0.5) and "1 predictions in 1 videos outside" in caplog.text


def test_metrics_to_dict_schema():
    out = metrics_to_dict(np.array([0.3, 0.5]), np.array([0.6, 0.4]), 0.5,
                          np.array([[0.7, 0.9], [0.5, 0.8]]), (1, 5))
    assert out == {"tiou": [0.3, 0.5], "mAP": [0.6, 0.4], "average_mAP": 0.5,
                   "recall": {"1": [0.7, 0.5], "5": [0.9, 0.8]}}


def test_dataset_defaults():
    assert guess_dataset_name("data/thumos/annotations/thumos14.json") == "thumos"
    assert guess_dataset_name("anet1.3_tsp_filtered.json") == "anet"
    assert guess_dataset_name("custom.json") is None
    np.testing.assert_array_equal(default_tiou_thresholds("anet"), np.linspace(0.5, 0.95, 10))
    np.testing.assert_array_equal(default_tiou_thresholds(None), np.linspace(0.3, 0.7, 5))


# ------------------------------------------------------------------------------------------
# Agreement with the naive loops on random data
# ------------------------------------------------------------------------------------------
def random_problem(rng, num_videos, num_classes, quantize):
    videos = {}
    for v in range(num_videos):
        events = []
        for _ in range(rng.integers(0, 6)):
            s = float(rng.uniform(0, 90))
            e = s + float(rng.uniform(0.5, 20))
            if quantize:
                s, e = round(s / 5) * 5.0, round(e / 5) * 5.0 + 5.0
            events.append((s, e, int(rng.integers(0, num_classes))))
        videos[f"vid{v}"] = ("test", events)
    preds = []
    for _ in range(rng.integers(1, 200)):
        v = f"vid{rng.integers(0, num_videos + 1)}"       # one id outside the split
        s = float(rng.uniform(0, 90))
        e = s + float(rng.uniform(0.1, 25))
        score = float(rng.uniform())
        if quantize:
            s, e, score = round(s / 5) * 5.0, round(e / 5) * 5.0 + 5.0, round(score * 4) / 4
        preds.append((v, s, e, int(rng.integers(0, num_classes + 1)), score))
    return videos, preds


@pytest.mark.parametrize("seed", range(12))
def test_matches_naive_loops(tmp_path, seed):
    rng = np.random.default_rng(seed)
    quantize = seed % 2 == 1        # odd seeds: many equal scores, IoUs and identical GTs
    videos, preds = random_problem(rng, num_videos=int(rng.integers(1, 8)),
                                   num_classes=int(rng.integers(1, 5)), quantize=quantize)
    if not any(events for _, events in videos.values()):
        videos["vid0"] = ("test", [(0.0, 10.0, 0)])
    gt_file = write_gt(tmp_path, videos)
    thresholds = np.linspace(0.1, 0.9, 9)
    det = ANETdetection(gt_file, "test", tiou_thresholds=thresholds, top_k=(1, 2, 5))
    mAP, avg, recall = det.evaluate(preds_dict(preds), verbose=False)

    gt_events = []
    for vid, (_, events) in videos.items():
        kept = remove_duplicate_annotations([{"segment": [s, e], "label_id": l}
                                             for s, e, l in events])
        gt_events += [(vid, ev["segment"][0], ev["segment"][1], ev["label_id"]) for ev in kept]
    ap_naive, recall_naive = naive_evaluate(gt_events, preds, thresholds, (1, 2, 5))
    np.testing.assert_allclose(det.ap, ap_naive, rtol=0, atol=1e-12)
    np.testing.assert_allclose(det.recall, recall_naive, rtol=0, atol=1e-12)
    np.testing.assert_allclose(mAP, ap_naive.mean(1), rtol=0, atol=1e-12)
