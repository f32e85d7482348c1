"""The detector: checkpoint layout (spec C.1, C.12), padding / batching (C.2, C.11), bad input,
long videos, and a tiny model that must learn one video."""
import warnings

import pytest
import torch

from libs.core import load_config
from libs.core.config import ConfigError, config_from_dict
from libs.modeling import make_meta_arch
from libs.modeling.blocks import (chunked_inference_applies, inference_chunk_steps,
                                  reference_formulation)



# ------------------------------------------------------------------------------------------
# Checkpoint compatibility
# ------------------------------------------------------------------------------------------


def _thumos_keys(E=512, D=2048, C=20, stem=2, branch=5, levels=6):
    """Parameter names and shapes of the THUMOS model, written out from spec C.12."""
    ln = lambda p: [(f"{p}.weight", (1, E, 1)), (f"{p}.bias", (1, E, 1))]  # noqa: E731
    keys = [(f"backbone.embd.{i}.conv.weight", (E, D if i == 0 else E, 3)) for i in range(2)]
    keys += ln("backbone.embd_norm.0") + ln("backbone.embd_norm.1")
    for block in [f"stem.{i}" for i in range(stem)] + [f"branch.{j}" for j in range(branch)]:
        p = f"backbone.{block}"
        keys += ln(f"{p}.ln1") + ln(f"{p}.ln2")
        for name in ("query", "key", "value"):
            keys += [(f"{p}.attn.{name}_conv.conv.weight", (E, 1, 3))] + ln(f"{p}.attn.{name}_norm")
        for name in ("key", "query", "value", "proj"):
            keys += [(f"{p}.attn.{name}.weight", (E, E, 1)), (f"{p}.attn.{name}.bias", (E,))]
        keys += [(f"{p}.mlp.0.weight", (4 * E, E, 1)), (f"{p}.mlp.0.bias", (4 * E,)),
                 (f"{p}.mlp.3.weight", (E, 4 * E, 1)), (f"{p}.mlp.3.bias", (E,)),
                 (f"{p}.drop_path_attn.scale", (1, E, 1)), (f"{p}.drop_path_mlp.scale", (1, E, 1))]
    for level in range(levels):
        keys += ln(f"neck.fpn_norms.{level}")
    for head in ("cls_head", "reg_head"):
        keys += [(f"{head}.head.{i}.conv.weight", (E, E, 3)) for i in range(2)]
        keys += ln(f"{head}.norm.0") + ln(f"{head}.norm.1")
        if head == "cls_head":
            keys += [("cls_head.cls_head.conv.weight", (C, E, 3)), ("cls_head.cls_head.conv.bias", (C,))]
    keys += [(f"reg_head.scale.{level}.scale", ()) for level in range(levels)]
    keys += [("reg_head.offset_head.conv.weight", (2, E, 3)), ("reg_head.offset_head.conv.bias", (2,))]
    return keys


def test_thumos_state_dict_layout_matches_the_reference():
    cfg = load_config("configs/thumos_i3d.yaml")
    model = make_meta_arch(cfg["model_name"], **cfg["model"])
    expected = _thumos_keys()
    assert len(expected) == 229
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == expected
    assert sum(p.numel() for p in model.parameters()) == 29_251_612
    # spec J: prior bias and initial scales
    bias = model.cls_head.cls_head.conv.bias
    torch.testing.assert_close(bias, torch.full((20,), -4.59511985))
    assert all(s.scale.item() == 1.0 for s in model.reg_head.scale)


@pytest.mark.parametrize("config, tensors, params", [
    ("anet_tsp", 229, 6_943_497), ("anet_i3d", 229, 8_123_145),
    ("epic_slowfast_verb", 229, 29_763_177), ("epic_slowfast_noun", 229, 30_075_188),
    ("ego4d_slowfast", 259, 32_945_271), ("ego4d_omnivore", 289, 34_927_736),
    ("ego4d_egovlp", 289, 18_675_576), ("ego4d_slowfast_egovlp", 289, 78_933_624),
    ("ego4d_omnivore_egovlp", 289, 77_164_152),
    ("ego4d_slowfast_omnivore_egovlp", 295, 134_048_888)])
def test_parameter_counts_of_the_released_configs(config, tensors, params):
    """Spec C.1 / C.12 (built on the meta device: shapes only)."""
    cfg = load_config(f"configs/{config}.yaml")
    with torch.device("meta"):
        model = make_meta_arch(cfg["model_name"], **cfg["model"])
    assert len(model.state_dict()) == tensors
    assert sum(p.numel() for p in model.parameters()) == params


def test_optional_parameters_follow_the_switches():
    """Spec I.18: no drop-path scales without drop-path; rel_pe [1,1,H,w] only when enabled."""
    model = _tiny_model(train_cfg={"droppath": 0.0}, use_rel_pe=True)
    keys = model.state_dict()
    assert not any("drop_path" in k for k in keys)
    assert tuple(keys["backbone.stem.0.attn.rel_pe"].shape) == (1, 1, 2, 5)
    assert "backbone.pos_embd" not in keys                 # buffers are not checkpointed


def test_the_config_module_is_the_single_source_of_defaults_and_checks():
    """The model takes the config's sections as they are: the project's extra keys come from
    the config's defaults, and bad values are the config's errors, before any model exists."""
    model = _tiny_model()
    assert model.test_cfg["tight_padding"] is False and model.train_cfg["dropout"] == 0.0
    for bad, pattern in (({"train_cfg": {"center_sample": "box"}}, "train_cfg.center_sample"),
                         ({"test_cfg": {"nms_method": "fast"}}, "test_cfg.nms_method"),
                         ({"regression_range": [[0, 4]]}, "model.regression_range")):
        with pytest.raises(ConfigError, match=pattern):
            _tiny_model(**bad)
    with pytest.raises(ConfigError, match="did you mean model.n_head"):
        _tiny_model(n_heads=4)


def test_multi_source_projection_splits_the_input_channels():
    """Spec A.3: input_dim [4, 2] -> per-source 1×1 convs to [8, 8], embedding width 16."""
    model = _tiny_model(input_dim=[4, 2], embd_dim=[8, 8])
    keys = model.state_dict()
    assert tuple(keys["backbone.proj.0.conv.weight"].shape) == (8, 4, 1)
    assert tuple(keys["backbone.proj.1.conv.weight"].shape) == (8, 2, 1)
    assert tuple(keys["backbone.embd.0.conv.weight"].shape) == (16, 16, 3)
    # channels 4-5 reach the model only through proj.1: with its weight zeroed they do nothing
    model.eval()
    with torch.no_grad():
        model.backbone.proj[1].conv.weight.zero_()
    item = _item("v", 30, seed=4)
    _, first = _run(model, [item])
    item["feats"][4:] += 5.0
    _, second = _run(model, [item])
    torch.testing.assert_close(second["cls"][0], first["cls"][0], atol=0, rtol=0)
    item["feats"][:4] += 5.0
    _, third = _run(model, [item])
    assert (third["cls"][0] - first["cls"][0]).abs().max() > 1e-2


def test_zero_prior_probability_leaves_the_classifier_bias_at_zero():
    """``cls_prior_prob: 0`` skips the prior (the reference's rule; -log(1/0) would divide by
    zero); the empty-class bias still applies, and the model trains."""
    model = _tiny_model(train_cfg={"cls_prior_prob": 0, "head_empty_cls": [2]}, perturb=False)
    bias = model.cls_head.cls_head.conv.bias
    torch.testing.assert_close(bias, torch.tensor([0.0, 0.0, -13.81550956]))
    losses = model.train()([_item("a", 40, 0)])
    assert torch.isfinite(losses["final_loss"])


def test_empty_classes_get_a_very_negative_bias():
    model = _tiny_model(train_cfg={"head_empty_cls": [1]}, perturb=False)
    bias = model.cls_head.cls_head.conv.bias
    torch.testing.assert_close(bias, torch.tensor([-4.59511985, -13.81550956, -4.59511985]))


# ------------------------------------------------------------------------------------------
# A tiny model: 4 levels (strides 1, 2, 4, 8), window 5 -> max_div_factor 32, max_seq_len 64
# ------------------------------------------------------------------------------------------
def _tiny_model(train_cfg=None, test_cfg=None, seed=0, perturb=True, **model_overrides):
    """The tiny detector, its config made by the config module (defaults and checks) like every
    caller of ``make_meta_arch``; ``input_dim`` / ``num_classes`` / ``max_seq_len`` overrides go
    to the dataset section, from which the model section takes them."""
    dataset = {"input_dim": 6, "num_classes": 3, "max_seq_len": 64}
    dataset.update({k: model_overrides.pop(k) for k in list(model_overrides) if k in dataset})
    model = {"n_mha_win_size": 5, "n_head": 2, "embd_dim": 16, "fpn_dim": 16, "head_dim": 16,
             "backbone_arch": [2, 2, 3],
             "regression_range": [[0, 4], [4, 8], [8, 16], [16, 10000]], **model_overrides}
    cfg = config_from_dict({"dataset": dataset, "model": model, "train_cfg": train_cfg or {},
                            "test_cfg": test_cfg or {}})
    torch.manual_seed(seed)
    model = make_meta_arch(cfg["model_name"], **cfg["model"])
    if perturb:   # non-trivial LayerNorm biases etc., so that padding effects are visible
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
    return model


def _item(vid, length, seed, channels=6):
    g = torch.Generator().manual_seed(seed)
    return {"video_id": vid, "feats": torch.randn(channels, length, generator=g),
            "segments": torch.tensor([[2.0, 9.0]]), "labels": torch.tensor([1]),
            "fps": 30.0, "duration": length * 4 / 30.0, "feat_stride": 4, "feat_num_frames": 16}


def _run(model, items):
    """Eval-mode forward; returns (detections, per-video list of per-level (logits, offsets))."""
    captured = {}
    hooks = [model.cls_head.register_forward_hook(lambda m, i, o: captured.__setitem__("cls", o)),
             model.reg_head.register_forward_hook(lambda m, i, o: captured.__setitem__("reg", o))]
    with torch.no_grad():
        dets = model(items)
    for h in hooks:
        h.remove()
    return dets, captured


def _head_outputs(captured, b, extent, strides):
    return [(c[b, :, :extent // s], r[b, :, :extent // s])
            for c, r, s in zip(captured["cls"], captured["reg"], strides)]


# lengths: = max_seq_len (no padded step), short, exact multiple of max_div_factor above
# max_seq_len (no padded step), padded to 128, very short, = the batch's longest
LENGTHS = [64, 50, 96, 100, 7, 128]


@pytest.mark.parametrize("variant", [
    {}, {"use_abs_pe": True}, {"backbone_type": "conv", "fpn_type": "fpn"},
    {"n_mha_win_size": [5, 5, 5, -1]}])
def test_batched_inference_equals_per_video_inference(variant):
    model = _tiny_model(test_cfg={"nms_method": "soft", "min_score": 0.001}, **variant).eval()
    items = [_item(f"v{i}", n, seed=i) for i, n in enumerate(LENGTHS)]
    batch_dets, batch_out = _run(model, items)
    for b, item in enumerate(items):
        extent = model.padded_length(item["feats"].shape[1])
        dets, out = _run(model, [item])
        for (c1, r1), (c2, r2) in zip(_head_outputs(out, 0, extent, model.fpn_strides),
                                      _head_outputs(batch_out, b, extent, model.fpn_strides)):
            # a few float32 ulps from different BLAS blockings; padding mistakes cost ~1e-1
            torch.testing.assert_close(c2, c1, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(r2, r1, atol=1e-5, rtol=1e-5)
        assert batch_dets[b]["video_id"] == item["video_id"]
        assert dets[0]["segments"].shape[0] > 0
        # same detections; two with scores equal to ~1e-8 may come out in either order
        torch.testing.assert_close(_sorted_detections(batch_dets[b]),
                                   _sorted_detections(dets[0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", [
    {}, {"use_abs_pe": True}, {"backbone_type": "conv", "fpn_type": "fpn"},
    {"n_mha_win_size": [5, 5, 5, -1]}, {"n_mha_win_size": [3, 5, 7, 9]}])
@pytest.mark.parametrize("steps", [6, 11])
def test_chunked_inference_equals_whole_video_inference(variant, steps):
    """Long inputs at inference run embedding, blocks, MLPs and heads in time chunks with halos
    (issue #7, memory); a chunk size of 6 or 11 steps cuts every level of these videos, alone
    and in a batch of different lengths (extents)."""
    model = _tiny_model(test_cfg={"nms_method": "soft", "min_score": 0.001}, **variant).eval()
    items = [_item("long", 250, seed=1), _item("short", 100, seed=2)]
    for batch in ([items[0]], items):
        with inference_chunk_steps(None):
            whole_dets, whole = _run(model, batch)
        with inference_chunk_steps(steps):
            chunked_dets, chunked = _run(model, batch)
        for key in ("cls", "reg"):
            for a, b in zip(chunked[key], whole[key]):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        for a, b in zip(chunked_dets, whole_dets):
            torch.testing.assert_close(_sorted_detections(a), _sorted_detections(b),
                                       atol=1e-5, rtol=0)


def test_chunking_is_for_inference_only():
    """Training (autograd on, or train mode under no_grad: drop-path and dropout draw per sample)
    never runs in chunks, nor does the reference formulation."""
    model = _tiny_model(train_cfg={"dropout": 0.2, "droppath": 0.5})
    items = [_item("a", 64, seed=1), _item("b", 40, seed=2)]
    normalizer = model.loss_normalizer
    for grad in (True, False):
        outputs = []
        for steps in (None, 4):
            with inference_chunk_steps(steps), torch.set_grad_enabled(grad):
                torch.manual_seed(0)
                model.loss_normalizer = normalizer
                outputs.append(torch.cat(model.forward_levels(items)[3], dim=1))
        assert torch.equal(outputs[0], outputs[1])
    with inference_chunk_steps(4):
        assert not chunked_inference_applies(100, training=False)       # autograd on
        with torch.no_grad():
            assert chunked_inference_applies(8, training=False)
            assert not chunked_inference_applies(7, training=False)
            assert not chunked_inference_applies(100, training=True)
            with reference_formulation():
                assert not chunked_inference_applies(100, training=False)
    with pytest.raises(ValueError, match="at least 1 step"):
        with inference_chunk_steps(0):
            pass


def _sorted_detections(dets):
    """``N×4`` rows (label, start, end, score) sorted by label, start, end."""
    rows = torch.cat([dets["labels"][:, None].double(), dets["segments"].double(),
                      dets["scores"][:, None].double()], dim=1)
    for column in (2, 1, 0):                     # stable sorts: last key first
        rows = rows[torch.sort(rows[:, column], stable=True).indices]
    return rows


def test_padding_dependence_is_real_and_reproduced():
    """Spec C.2: outputs near the end of a video depend on its padded length only when some level
    has no padded step. Padding every video to the batch's longest (the naive batching) changes
    a 64-step video (64 = its reference padding) but not a 50-step one."""
    model = _tiny_model().eval()
    for length, changes in ((64, True), (50, False)):
        item = _item("v", length, seed=3)
        _, ref = _run(model, [item])
        reference_pad = model.padded_length
        model.padded_length = lambda n: 128        # pad like a longer batch partner would
        _, naive = _run(model, [item])
        model.padded_length = reference_pad
        diff = max((a[0] - b[0]).abs().max().item() for a, b in zip(
            _head_outputs(ref, 0, 64, model.fpn_strides),
            _head_outputs(naive, 0, 64, model.fpn_strides)))
        assert diff > 1e-2 if changes else diff < 1e-5, (length, diff)


def test_reference_padding_lengths_and_the_tight_switch():
    model = _tiny_model()
    assert model.max_div_factor == 32
    assert [model.padded_length(n) for n in (1, 64, 65, 96, 97)] == [64, 64, 96, 96, 128]
    tight = _tiny_model(test_cfg={"tight_padding": True})
    assert [tight.padded_length(n) for n in (1, 33, 64, 65)] == [32, 64, 64, 96]
    tight.eval()
    with torch.no_grad():
        tight([_item("a", 20, seed=1)])


def test_inference_has_no_length_cap():
    """The reference's point buffer (max_seq_len × max_buffer_len_factor = 64 here) would
    refuse a 300-step video: here it runs, with a one-time warning; with the default factor 6
    (buffer 384) there is none."""
    model = _tiny_model(max_buffer_len_factor=1.0, test_cfg={"nms_method": "none"}).eval()
    item = _item("long", 300, seed=5)
    with pytest.warns(UserWarning, match="max_buffer_len_factor"):
        _, out = _run(model, [item])
    assert [c.shape[-1] for c in out["cls"]] == [320, 160, 80, 40]
    points = model.point_generator(out["cls"])
    assert torch.equal(points[3][:, 0], torch.arange(40.0) * 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(model, [item])                                            # warned once
        _run(_tiny_model(test_cfg={"nms_method": "none"}).eval(), [item])


def test_training_pads_to_max_seq_len_and_rejects_longer_videos():
    model = _tiny_model().train()
    x, mask, extents = model.preprocessing([_item("a", 20, 0), _item("b", 64, 1)])
    assert x.shape == (2, 6, 64) and extents == [64, 64]
    assert mask.sum(-1).flatten().tolist() == [20, 64]
    with pytest.raises(ValueError, match=r"video 'long'.*'feats'.*max_seq_len"):
        model([_item("long", 65, 0)])


@pytest.mark.parametrize("mutate, pattern", [
    (lambda it: it.update(feats=torch.zeros(5, 10)), r"video 'bad'.*'feats'.*5, 10.*input_dim 6"),
    (lambda it: it["feats"].__setitem__((0, 3), float("nan")), r"video 'bad'.*'feats'.*NaN"),
    (lambda it: it["feats"].__setitem__((1, 1), float("inf")), r"video 'bad'.*'feats'.*Inf"),
    (lambda it: it.update(segments=None), r"video 'bad'.*'segments'"),
])
def test_bad_input_names_the_video_and_field(mutate, pattern):
    model = _tiny_model().train()
    bad = _item("bad", 10, 0)
    mutate(bad)
    with pytest.raises(ValueError, match=pattern):
        model([_item("good", 10, 1), bad])


def test_outputs_are_in_seconds_and_on_cpu():
    model = _tiny_model(test_cfg={"nms_method": "none"}).eval()
    item = _item("v", 40, seed=2)
    with torch.no_grad():
        det = model([item])[0]
    segs = det["segments"]
    assert segs.device.type == "cpu" and segs.shape[1] == 2
    assert segs.min() >= 0 and segs.max() <= item["duration"]
    assert det["labels"].dtype == torch.int64 and det["scores"].max() <= 1


def test_tiny_model_overfits_one_video():
    """Loss falls and the two best detections are the two actions, right class, tIoU > 0.9."""
    torch.manual_seed(0)
    model = _tiny_model(perturb=False, train_cfg={"droppath": 0.0, "init_loss_norm": 10},
                        test_cfg={"min_score": 0.001})
    feats = 0.1 * torch.randn(6, 64, generator=torch.Generator().manual_seed(0))
    segments = torch.tensor([[10.0, 30.0], [40.0, 52.0]])
    labels = torch.tensor([1, 2])
    for (start, end), label in zip(segments.long().tolist(), labels.tolist()):
        feats[label, start:end + 1] += 1.0
    item = {"video_id": "v", "feats": feats, "segments": segments, "labels": labels, "fps": 30.0,
            "duration": 64 * 4 / 30.0, "feat_stride": 4, "feat_num_frames": 16}
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    history = []
    for _ in range(100):
        optimizer.zero_grad()
        loss = model([item])["final_loss"]
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-10:]) < 0.2 * sum(history[:10])

    model.eval()
    with torch.no_grad():
        det = model([item])[0]
    gt_seconds = (segments * 4 + 8) / 30.0
    for segment, score_rank_label in zip(det["segments"][:2], det["labels"][:2]):
        inter = (torch.minimum(segment[1], gt_seconds[:, 1])
                 - torch.maximum(segment[0], gt_seconds[:, 0])).clamp(min=0)
        union = (segment[1] - segment[0]) + (gt_seconds[:, 1] - gt_seconds[:, 0]) - inter
        tiou = inter / union
        best = int(tiou.argmax())
        assert tiou[best] > 0.9 and int(score_rank_label) == int(labels[best])
    assert set(det["labels"][:2].tolist()) == {1, 2}
