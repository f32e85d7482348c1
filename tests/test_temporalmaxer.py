"""TemporalMaxer: max-pooling backbone, its neck, SimOTA assignment, THUMOS config and checkpoint
layout, model size."""
import math

import pytest
import torch

from libs.core import ConfigError, load_config
from libs.modeling import make_meta_arch
from libs.modeling.assigner import assign_points, simota_assign
from libs.modeling.blocks import reference_formulation
from libs.modeling.temporalmaxer import ConvPoolerBackbone, TemporalMaxerBlock
from tests.test_modeling_model import _thumos_keys

TMX_THUMOS = "configs/temporalmaxer/temporalmaxer_thumos_i3d.yaml"
SMALL = ["dataset.input_dim=16", "model.embd_dim=8", "model.fpn_dim=8", "model.head_dim=8",
         "dataset.max_seq_len=64", "dataset.num_classes=3"]


def _loop_pool(x, mask, stride):
    """Per-step re-derivation: out[b, :, t] = max of x over steps s·t-1 … s·t+1 inside [0, T),
    times mask[b, s·t]."""
    B, C, T = x.shape
    cols = []
    for t in range(T // stride):
        lo, hi = max(stride * t - 1, 0), min(stride * t + 1, T - 1)
        cols.append(x[:, :, lo:hi + 1].max(dim=-1).values * mask[:, :, stride * t].to(x.dtype))
    return torch.stack(cols, dim=-1), mask[:, :, ::stride]


@pytest.mark.parametrize("stride", [2, 4])
def test_pooling_level_equals_per_step_loop(stride):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 32, requires_grad=True)
    mask = (torch.arange(32)[None, :] < torch.tensor([32, 19, 6])[:, None])[:, None, :]
    block = TemporalMaxerBlock(stride)
    expected, expected_mask = _loop_pool(x, mask, stride)
    grad_out = torch.randn_like(expected)
    (g_expected,) = torch.autograd.grad(expected, x, grad_out)
    for plain in (False, True):
        with reference_formulation(plain):
            out, out_mask = block(x, mask)
        assert torch.equal(out_mask, expected_mask)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        (g,) = torch.autograd.grad(out, x, grad_out)
        torch.testing.assert_close(g, g_expected, rtol=0, atol=0)


def test_pooling_reads_padded_steps():
    """The input is not masked before pooling (the model leaves ReLU(LayerNorm bias) there): the
    last valid output step of a 19-step video pools steps 17-19, 19 being padding."""
    x = torch.zeros(1, 2, 32)
    x[0, :, 19] = 100.0
    mask = (torch.arange(32) < 19)[None, None, :]
    out, _ = TemporalMaxerBlock(2)(x, mask)
    assert out[0, :, 9].eq(100.0).all() and out[0, :, 10:].eq(0.0).all()


def test_backbone_levels_equal_loop_over_embedding():
    torch.manual_seed(1)
    net = ConvPoolerBackbone(6, 8, 3, arch=(2, 3), scale_factor=2, with_ln=True)
    for p in net.parameters():                    # non-zero LayerNorm biases: padding matters
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 6, 64)
    mask = (torch.arange(64)[None, :] < torch.tensor([64, 37])[:, None])[:, None, :]
    feats, masks = net(x, mask)
    assert [f.shape[-1] for f in feats] == [64, 32, 16, 8]
    level, level_mask = net.embed(x, mask), mask
    torch.testing.assert_close(feats[0], level)
    for f, m in zip(feats[1:], masks[1:]):
        level, level_mask = _loop_pool(level, level_mask, 2)
        torch.testing.assert_close(f, level, rtol=0, atol=0)
        assert torch.equal(m, level_mask)
    assert list(net.state_dict()) == ["embd.0.conv.weight", "embd.1.conv.weight",
                                      "embd_norm.0.weight", "embd_norm.0.bias",
                                      "embd_norm.1.weight", "embd_norm.1.bias"]


# ------------------------------------------------------------------------------------------
# SimOTA on a hand-worked example
# ------------------------------------------------------------------------------------------
def _simota_example(**settings):
    """Stride-1 points t = 0…7 (t = 7 padding), actions A = [1, 6] (class 0), B = [2, 5]
    (class 1), zero logits (equal class cost for every pair), chosen predicted offsets."""
    points = torch.tensor([[t, 0.0, 100.0, 1.0] for t in range(8)])
    valid = torch.arange(8) < 7
    pred = torch.tensor([[0, 0], [0, 0], [0, 0], [2, 3], [1, 1], [0, 1], [0, 0], [0, 0.]])
    gts, labels = torch.tensor([[1.0, 6.0], [2.0, 5.0]]), torch.tensor([0, 1])
    return simota_assign(points, valid, torch.zeros(8, 2), pred, gts, labels, 2,
                         center_radius=10.0, iou_weight=1.0, cls_weight=1.0, **settings)


def test_simota_hand_worked_example():
    # candidates (strictly inside, shortest action): 2 -> A, 3 -> B, 4 -> B, 5 -> A.
    # DIoU costs (A, B): p1 (1.25, inf), p2 (1.09, 1.25), p3 (0, 0.4) [prediction = A exactly],
    # p4 (0.61, 0.3611), p5 (0.96, 1.25), p6 (1.25, inf); p0 outside both.
    cls_t, reg_t, weights = _simota_example(keep_percent=0.5, confuse_weight=0.1)
    expected_cls = torch.zeros(8, 2)
    expected_cls[[2, 5], 0] = 1.0
    expected_cls[[3, 4], 1] = 1.0
    assert torch.equal(cls_t, expected_cls)
    # regression target = action of least cost: point 3 is labelled B but regresses to A
    torch.testing.assert_close(reg_t[2:6], torch.tensor([[1.0, 4.0], [2.0, 3.0], [2.0, 1.0],
                                                         [4.0, 1.0]]))
    # weights: 0.1 where some cost is finite, 1 for the floor(0.5 * 6) = 3 cheapest of A
    # (3, 4, 5) and floor(0.5 * 4) = 2 of B (4, 3), 1 where no cost is finite, 0 on padding
    torch.testing.assert_close(weights, torch.tensor([1.0, 0.1, 0.1, 1.0, 1.0, 1.0, 0.1, 0.0]))
    # ActionFormer's assignment: same classes, point 3 regresses to its own action B
    af_cls, af_reg = assign_points(torch.tensor([[t, 0.0, 100.0, 1.0] for t in range(8)]),
                                   torch.tensor([[1.0, 6.0], [2.0, 5.0]]), torch.tensor([0, 1]),
                                   2, "radius", 10.0)
    assert torch.equal(af_cls[:7], expected_cls[:7])
    torch.testing.assert_close(af_reg[3], torch.tensor([1.0, 2.0]))


def test_simota_with_temporalmaxer_thumos_settings_weights_every_positive_one():
    _, _, weights = _simota_example(keep_percent=1.0, confuse_weight=0.0)
    torch.testing.assert_close(weights, torch.tensor([1.0] * 7 + [0.0]))


def test_simota_without_actions():
    points = torch.tensor([[t, 0.0, 100.0, 1.0] for t in range(4)])
    cls_t, reg_t, weights = simota_assign(points, torch.ones(4, dtype=torch.bool),
                                          torch.zeros(4, 2), torch.zeros(4, 2),
                                          torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 2)
    assert cls_t.abs().sum() == 0 and reg_t.abs().sum() == 0 and weights.eq(1).all()


# ------------------------------------------------------------------------------------------
# Config, checkpoint layout, size
# ------------------------------------------------------------------------------------------
def _tmx_keys():
    """TemporalMaxer's THUMOS state_dict as its code builds it: ActionFormer's THUMOS keys
    without the Transformer blocks (no parameters in the pooling levels) and without the neck's
    LayerNorms (its GroupNorm has no affine parameters)."""
    return [(k, shape) for k, shape in _thumos_keys()
            if not k.startswith(("backbone.stem.", "backbone.branch.", "neck."))]


def test_thumos_config_state_dict_parameters_and_macs():
    from tools.model_summary import model_summary
    cfg = load_config(TMX_THUMOS)
    assert cfg["model_name"] == "TemporalMaxerArchitecture"
    assert cfg["model"]["assigner"] == {"iou_weight": 2, "cls_weight": 1.0, "center_radius": 1.5,
                                        "keep_percent": 1.0, "confuse_weight": 0.0}
    model = make_meta_arch(cfg["model_name"], **cfg["model"])
    assert model.simota_cfg == cfg["model"]["assigner"]
    expected = _tmx_keys()
    assert len(expected) == 28
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected
    # 2048·512·3 + 512·512·3 + 4 LayerNorms (embedding) + 2 × (2·512·512·3 + 2 LayerNorms)
    # + 512·20·3 + 20 + 512·2·3 + 2 + 6 scales = 7,117,852 (TemporalMaxer: "7.1M")
    assert sum(p.numel() for p in model.parameters()) == 7_117_852
    # MACs at 2304 steps: embedding on 2304 steps, heads on 2304·(1 + 1/2 + … + 1/32) = 4536
    macs = 2304 * (2048 * 512 * 3 + 512 * 512 * 3) + \
        4536 * (4 * 512 * 512 * 3 + 512 * 20 * 3 + 512 * 2 * 3)
    rows = model_summary(model, 2304)
    assert sum(r["macs"] for r in rows) == macs == 23_481_999_360
    assert math.isclose(macs / 1e9, 23.48, abs_tol=0.005)


def test_thumos_config_has_temporalmaxers_values():
    cfg = load_config(TMX_THUMOS)
    got = {"backbone": (cfg["model"]["backbone_type"], cfg["model"]["backbone_arch"],
                        cfg["model"]["fpn_type"], cfg["model"].get("fpn_norm", "groupnorm")),
           "opt": (cfg["opt"]["learning_rate"], cfg["opt"]["epochs"], cfg["opt"]["weight_decay"],
                   cfg["opt"]["warmup_epochs"]),
           "train": (cfg["loader"]["batch_size"], cfg["train_cfg"]["init_loss_norm"],
                     cfg["train_cfg"]["clip_grad_l2norm"], cfg["dataset"]["crop_ratio"]),
           "test": (cfg["test_cfg"]["voting_thresh"], cfg["test_cfg"]["pre_nms_topk"],
                    cfg["test_cfg"]["max_seg_num"], cfg["test_cfg"]["min_score"],
                    cfg["test_cfg"]["multiclass_nms"], cfg["test_cfg"]["nms_method"])}
    assert got == {"backbone": ("convPooler", [2, 5], "identity", "groupnorm"),
                   "opt": (0.0001, 60, 0.05, 5), "train": (2, 100, 1.0, [0.9, 1.0]),
                   "test": (0.7, 2000, 200, 0.001, True, "soft")}


def test_config_schema_checks():
    cfg = load_config(TMX_THUMOS)
    assert cfg["model"]["backbone_arch"] == [2, 5]
    with pytest.raises(ConfigError, match="model.assigner.iou_weight"):
        load_config(TMX_THUMOS, ["model.assigner.iou_weigth=3"])
    with pytest.raises(ConfigError, match="two non-negative integers for convPooler"):
        load_config(TMX_THUMOS, ["model.backbone_arch=[2, 2, 5]"])
    with pytest.raises(ConfigError, match="only TemporalMaxerArchitecture"):
        load_config("configs/thumos_i3d.yaml", ["model.fpn_norm=layernorm"])
    # the SimOTA switch on ActionFormer itself
    af = load_config("configs/thumos_i3d.yaml", ["model.assigner={keep_percent: 0.5}"])
    model = make_meta_arch(af["model_name"], **af["model"])
    assert model.simota_cfg["keep_percent"] == 0.5 and model.simota_cfg["iou_weight"] == 3.0
    with pytest.raises(ValueError, match="TemporalMaxerArchitecture needs"):
        bad = load_config(TMX_THUMOS, ["model.backbone_type=conv", "model.backbone_arch=[2, 2, 5]"])
        make_meta_arch(bad["model_name"], **bad["model"])


def _small_model(*opts):
    cfg = load_config(TMX_THUMOS, SMALL + list(opts))
    torch.manual_seed(0)
    model = make_meta_arch(cfg["model_name"], **cfg["model"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.mark.parametrize("fpn_norm", ["groupnorm", "layernorm"])
def test_batched_inference_equals_single_video(fpn_norm):
    model = _small_model(f"model.fpn_norm={fpn_norm}")
    torch.manual_seed(2)
    videos = [{"video_id": v, "feats": torch.randn(16, n)} for v, n in (("a", 40), ("b", 150))]
    batched = model.forward_levels(videos)
    for b, video in enumerate(videos):
        alone = model.forward_levels([video])
        for got, want in zip(batched[3], alone[3]):                 # class logits per level
            torch.testing.assert_close(got[b, :want.shape[1]], want[0], rtol=1e-5, atol=1e-5)


def test_groupnorm_neck_statistics_include_the_padding():
    """As in TemporalMaxer: the level-0 GroupNorm runs over the whole padded input, so a video's
    outputs change with the length it is padded to."""
    model = _small_model()
    feats = torch.randn(16, 40)
    short = model.forward_levels([{"video_id": "a", "feats": feats}])[3][0]
    model.max_seq_len = 128
    long = model.forward_levels([{"video_id": "a", "feats": feats}])[3][0]
    assert (short[0, :40] - long[0, :40]).abs().max() > 1e-3


def test_simota_losses_equal_centre_sampling_with_one_action():
    """One action per video, TemporalMaxer's THUMOS settings (keep all, weight 1): SimOTA and
    ActionFormer's assignment give the same positives and targets, so the same losses."""
    simota = _small_model().train()
    plain = _small_model("model.assigner=null", "train_cfg.center_sample=radius",
                         "train_cfg.center_sample_radius=1.5").train()
    torch.manual_seed(3)
    videos = [{"video_id": "a", "feats": torch.randn(16, 64), "segments": torch.tensor([[10.0, 30.0]]),
               "labels": torch.tensor([1])},
              {"video_id": "b", "feats": torch.randn(16, 50), "segments": torch.tensor([[3.0, 9.5]]),
               "labels": torch.tensor([2])}]
    a, b = simota(videos), plain(videos)
    for key in ("cls_loss", "reg_loss", "final_loss"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)
    assert simota.loss_normalizer == plain.loss_normalizer


def test_training_losses_equal_temporalmaxers_code():
    """One training forward of a small model, weights and inputs as below, with SimOTA keeping
    60 % and weighting the others 0.2: the losses and loss normaliser that TemporalMaxer's own
    code (TuanTNG/TemporalMaxer @ 4030cdf, same seed gives the same initial weights) computed
    for this case, recorded once. Its gradients also matched ours exactly."""
    cfg = load_config(TMX_THUMOS, [
        "dataset.input_dim=64", "model.embd_dim=32", "model.fpn_dim=32", "model.head_dim=32",
        "dataset.max_seq_len=256", "dataset.num_classes=3", "model.assigner.keep_percent=0.6",
        "model.assigner.confuse_weight=0.2"])
    torch.manual_seed(0)
    model = make_meta_arch(cfg["model_name"], **cfg["model"])
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    g = torch.Generator().manual_seed(1)
    videos = [{"video_id": "a", "feats": torch.randn(64, 200, generator=g),
               "segments": torch.tensor([[10.0, 40.0], [12.0, 41.0], [100.0, 180.0]]),
               "labels": torch.tensor([0, 2, 1])},
              {"video_id": "b", "feats": torch.randn(64, 256, generator=g),
               "segments": torch.tensor([[3.0, 9.5], [50.0, 52.0]]), "labels": torch.tensor([1, 1])}]
    losses = model.train()(videos)
    assert losses["cls_loss"].item() == pytest.approx(0.16627870500087738, rel=1e-5)
    assert losses["reg_loss"].item() == pytest.approx(0.10979906469583511, rel=1e-5)
    # 0.9 * 100 + 0.1 * (sum of the positives' weights = 12.2)
    assert model.loss_normalizer == pytest.approx(91.22, rel=1e-9)
