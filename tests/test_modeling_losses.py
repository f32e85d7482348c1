"""Label assignment (spec D.1), focal and DIoU losses and the loss normaliser (spec D.2)."""
import math
import warnings

import pytest
import torch

from libs.modeling.assigner import assign_points
from libs.modeling.loc_generators import PointGenerator
from libs.modeling.losses import ctr_diou_loss_1d, sigmoid_focal_loss

THUMOS_RANGES = [(0, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 10000)]
STRIDES = [1, 2, 4, 8, 16, 32]


def _points(length=64):
    gen = PointGenerator(2304 * 6.0, STRIDES, THUMOS_RANGES)
    return torch.cat(gen([torch.zeros(1, 1, length // s) for s in STRIDES]))


def _positives(cls_targets, reg_targets, points):
    """{(t, stride): (sorted class ids, (left, right))} of the positive points."""
    out = {}
    for row in torch.nonzero(cls_targets.sum(-1) > 0).flatten().tolist():
        t, stride = points[row, 0].item(), points[row, 3].item()
        out[(t, stride)] = (torch.nonzero(cls_targets[row]).flatten().tolist(),
                            tuple(reg_targets[row].tolist()))
    return out


def test_point_generator_rows():
    points = PointGenerator(None, [1, 4], [(0, 4), (4, 10000)])([torch.zeros(1, 1, 8),
                                                                  torch.zeros(1, 1, 2)])
    assert points[0][:, 0].tolist() == list(range(8))
    assert points[1].tolist() == [[0.0, 4.0, 10000.0, 4.0], [4.0, 4.0, 10000.0, 4.0]]


def test_the_reference_point_buffer_only_warns_once():
    """The reference buffers ceil(L / s) points per level (L = max_seq_len ×
    max_buffer_len_factor) and stops beyond; here a longer input gets its points and one
    warning."""
    gen = PointGenerator(100.0, [1, 2, 4, 8], [(0, 4), (4, 8), (8, 16), (16, 10000)])
    assert not gen.beyond_reference_buffer([100, 50, 25, 13])   # ceil(100 / 8) = 13 rows
    assert gen.beyond_reference_buffer([100, 50, 25, 14])
    assert gen.beyond_reference_buffer([101, 51, 26, 13])
    assert not PointGenerator(None, [1], [(0, 4)]).beyond_reference_buffer([10 ** 6])
    feats = [torch.zeros(1, 1, 128 // s) for s in (1, 2, 4, 8)]
    with pytest.warns(UserWarning, match=r"input of 128 steps.*= 100\).*max_buffer_len_factor"):
        points = gen(feats)
    assert points[3][:, 0].tolist() == [8.0 * i for i in range(16)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gen(feats)                                                 # once only


def test_assignment_worked_example_of_the_spec():
    """Spec D.1: GTs [10, 20] label 3, [10, 20.0005] label 4, [30, 31.5] label 7. (The spec
    prints the offsets 1.00025 and 0.000125 rounded to 1.0002 and 0.0001.)"""
    points = _points()
    segments = torch.tensor([[10.0, 20.0], [10.0, 20.0005], [30.0, 31.5]])
    labels = torch.tensor([3, 4, 7])
    cls_targets, reg_targets = assign_points(points, segments, labels, 20)
    got = _positives(cls_targets, reg_targets, points)
    expected = {(31.0, 1.0): ([7], (1.0, 0.5)),
                (14.0, 2.0): ([3, 4], (2.0, 3.0)),
                (16.0, 2.0): ([3, 4], (3.0, 2.0)),
                (18.0, 2.0): ([4], (4.0, 2.0005 / 2)),
                (12.0, 4.0): ([3, 4], (0.5, 2.0)),
                (20.0, 4.0): ([4], (2.5, 0.0005 / 4))}
    assert set(got) == set(expected)
    for key, (classes, offsets) in expected.items():
        assert got[key][0] == classes, key
        assert got[key][1] == pytest.approx(offsets, abs=2e-5), key


def test_assignment_without_centre_sampling_uses_the_whole_action():
    points = _points(16)
    cls_targets, reg_targets = assign_points(points, torch.tensor([[2.0, 5.0]]),
                                             torch.tensor([1]), 3, center_sample="none")
    got = _positives(cls_targets, reg_targets, points)
    # strictly inside (2, 5) and max(left, right) within the level's range
    assert got == {(3.0, 1.0): ([1], (1.0, 2.0)), (4.0, 1.0): ([1], (2.0, 1.0))}


def test_assignment_prefers_the_shortest_action_and_handles_no_gt():
    points = _points(16)
    segments = torch.tensor([[0.0, 8.0], [3.0, 5.0]])
    cls_targets, reg_targets = assign_points(points, segments, torch.tensor([0, 1]), 2,
                                             center_sample="none")
    got = _positives(cls_targets, reg_targets, points)
    assert got[(4.0, 1.0)] == ([1], (1.0, 1.0))          # inside both: the shorter wins
    cls_targets, reg_targets = assign_points(points, torch.zeros(0, 2),
                                             torch.zeros(0, dtype=torch.long), 2)
    assert cls_targets.shape == (points.shape[0], 2) and not cls_targets.any()
    assert not reg_targets.any()


def test_focal_loss_known_values():
    x = torch.tensor([0.0, 0.0, 2.0])
    y = torch.tensor([1.0, 0.0, 0.5])
    loss = sigmoid_focal_loss(x, y)
    p = 1 / (1 + math.exp(-2.0))
    ce = -(0.5 * math.log(p) + 0.5 * math.log(1 - p))
    p_t = p * 0.5 + (1 - p) * 0.5
    expected = [math.log(2) * 0.25 * 0.25, math.log(2) * 0.25 * 0.75,
                ce * (1 - p_t) ** 2 * (0.25 * 0.5 + 0.75 * 0.5)]
    torch.testing.assert_close(loss, torch.tensor(expected))
    torch.testing.assert_close(sigmoid_focal_loss(x, y, reduction="sum"),
                               torch.tensor(sum(expected)))


def test_diou_loss_known_values():
    pred = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 3.0], [0.0, 0.0]])
    target = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 1.0], [1.0, 1.0]])
    loss = ctr_diou_loss_1d(pred, target)
    # identical; same centre IoU 1/2; IoU 2/6 with centres 2 apart in an enclosing length 6;
    # an empty prediction: IoU 0, centre offset 0
    torch.testing.assert_close(loss, torch.tensor([0.0, 0.5, 1 - 1 / 3 + 1 / 9, 1.0]))
    assert ctr_diou_loss_1d(pred[:0], target[:0], reduction="mean").item() == 0.0


# ------------------------------------------------------------------------------------------
# The model's loss: normaliser EMA, label smoothing, loss weight (spec D.2)
# ------------------------------------------------------------------------------------------
def _tiny_model(**train_overrides):
    from libs.core.config import config_from_dict
    from libs.modeling import make_meta_arch
    cfg = config_from_dict({
        "dataset": {"input_dim": 4, "num_classes": 3, "max_seq_len": 32},
        "model": {"n_mha_win_size": 3, "embd_dim": 8, "fpn_dim": 8, "head_dim": 8,
                  "backbone_arch": [1, 1, 1], "regression_range": [[0, 4], [4, 10000]]},
        "train_cfg": {"init_loss_norm": 100, **train_overrides}})
    return make_meta_arch(cfg["model_name"], **cfg["model"]).train()


def _zero_outputs(model, video_list, offsets_value=1.0):
    """Call model.losses with logits 0 and constant offsets on the real pyramid layout."""
    T = model.max_seq_len
    points = model.point_generator([torch.zeros(1, 1, T // s) for s in model.fpn_strides])
    masks = [torch.stack([torch.arange(T // s) * s < item["feats"].shape[1]
                          for item in video_list]) for s in model.fpn_strides]
    B = len(video_list)
    logits = [torch.zeros(B, T // s, 3, requires_grad=True) for s in model.fpn_strides]
    offsets = [torch.full((B, T // s, 2), offsets_value, requires_grad=True)
               for s in model.fpn_strides]
    return model.losses(video_list, points, masks, logits, offsets), points, masks


def _video(length, segments, labels):
    return {"video_id": "v", "feats": torch.zeros(4, length),
            "segments": torch.tensor(segments), "labels": torch.tensor(labels)}


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_model_loss_normaliser_and_label_smoothing(smoothing):
    model = _tiny_model(label_smoothing=smoothing)
    video = _video(20, [[4.0, 9.0]], [2])
    losses, points, masks = _zero_outputs(model, [video])
    cls_targets, reg_targets = assign_points(torch.cat(points), video["segments"],
                                             video["labels"], 3)
    valid = torch.cat(masks, dim=1)[0]
    num_pos = int((cls_targets.sum(-1) > 0)[valid].sum())
    assert num_pos > 0
    normaliser = 0.9 * 100 + (1 - 0.9) * num_pos
    assert model.loss_normalizer == normaliser

    # logits 0: p = 1/2, every (point, class) term is ln2 · (1/2)^2 · alpha_t
    y = cls_targets[valid].double() * (1 - smoothing) + smoothing / 4
    terms = (-(y * math.log(0.5) + (1 - y) * math.log(0.5))) * 0.25 * (0.25 * y + 0.75 * (1 - y))
    assert losses["cls_loss"].item() == pytest.approx(terms.sum().item() / normaliser, rel=1e-5)
    # offsets (1, 1): loss of each positive against its target
    pos = (cls_targets.sum(-1) > 0) & valid
    reg = ctr_diou_loss_1d(torch.ones(num_pos, 2), reg_targets[pos]).sum() / normaliser
    assert losses["reg_loss"].item() == pytest.approx(reg.item(), rel=1e-6)
    assert losses["final_loss"].item() == pytest.approx(
        losses["cls_loss"].item() + losses["reg_loss"].item(), rel=1e-6)


def test_model_loss_without_positives_and_auto_weight():
    model = _tiny_model(loss_weight=-1)
    video = _video(20, [[0.0, 0.2]], [0])     # too short for any centre region: no positive
    losses, _, _ = _zero_outputs(model, [video])
    assert model.loss_normalizer == pytest.approx(0.9 * 100 + 0.1 * 1)
    assert losses["reg_loss"].item() == 0.0 and losses["reg_loss"].requires_grad
    # loss_weight <= 0: w = cls_loss / max(reg_loss, 0.01)
    assert losses["final_loss"].item() == pytest.approx(losses["cls_loss"].item(), rel=1e-6)


def test_num_pos_reducer_sees_the_count_before_the_update():
    model = _tiny_model()
    seen = []

    def reducer(count):
        seen.append(int(count))
        return count * 3

    model.num_pos_reducer = reducer
    _zero_outputs(model, [_video(20, [[4.0, 9.0]], [2]), _video(30, [[10.0, 20.0]], [1])])
    assert len(seen) == 1 and seen[0] > 0
    assert model.loss_normalizer == pytest.approx(0.9 * 100 + 0.1 * 3 * seen[0])
