"""TriDet: checkpoint layout, SGP and Trident head against per-step re-derivations (outputs and
gradients), the IoU-weighted loss, decoding on a hand-worked example, padding, zero-init SGP."""
import math

import pytest
import torch
import torch.nn.functional as F

from libs.core import load_config
from libs.core.config import config_from_dict
from libs.modeling import make_meta_arch
from libs.modeling.assigner import assign_points
from libs.modeling.decoding import decode_candidates
from libs.modeling.losses import sigmoid_focal_loss
from libs.modeling.sgp import SGPBlock, sgp_long_kernel
from libs.modeling.tridet import _gather_windows
from libs.modeling.trident import boundary_windows, trident_offsets
from libs.utils.train_utils import make_optimizer


# ------------------------------------------------------------------------------------------
# Checkpoint layout (from TriDet's code: its model built with its THUMOS config)
# ------------------------------------------------------------------------------------------
def _tridet_thumos_keys(E=512, D=2048, C=20, H=768, K=11, stem=2, branch=5, levels=6, bins=16):
    """Parameter names and shapes of TriDet's THUMOS model (TriDet's state_dict order)."""
    ln = lambda p: [(f"{p}.weight", (1, E, 1)), (f"{p}.bias", (1, E, 1))]  # noqa: E731
    keys = [(f"backbone.embd.{i}.conv.weight", (E, D if i == 0 else E, 3)) for i in range(2)]
    keys += ln("backbone.embd_norm.0") + ln("backbone.embd_norm.1")
    for block in [f"stem.{i}" for i in range(stem)] + [f"branch.{j}" for j in range(branch)]:
        p = f"backbone.{block}"
        keys += ln(f"{p}.ln") + [(f"{p}.gn.weight", (E,)), (f"{p}.gn.bias", (E,))]
        for name, k in (("psi", 1), ("fc", 1), ("convw", 1), ("convkw", K), ("global_fc", 1)):
            keys += [(f"{p}.{name}.weight", (E, 1, k)), (f"{p}.{name}.bias", (E,))]
        keys += [(f"{p}.mlp.0.weight", (H, E, 1)), (f"{p}.mlp.0.bias", (H,)),
                 (f"{p}.mlp.2.weight", (E, H, 1)), (f"{p}.mlp.2.bias", (E,))]
        if block.startswith("branch"):   # drop-path scales only where drop-path is on
            keys += [(f"{p}.drop_path_out.scale", (1, E, 1)), (f"{p}.drop_path_mlp.scale", (1, E, 1))]
    for level in range(levels):
        keys += ln(f"neck.fpn_norms.{level}")
    for head in ("cls_head", "start_head", "end_head", "reg_head"):
        keys += [(f"{head}.head.{i}.conv.weight", (E, E, 3)) for i in range(2)]
        keys += ln(f"{head}.norm.0") + ln(f"{head}.norm.1")
        if head != "reg_head":
            keys += [(f"{head}.cls_head.conv.weight", (C, E, 3)), (f"{head}.cls_head.conv.bias", (C,))]
    keys += [(f"reg_head.scale.{level}.scale", ()) for level in range(levels)]
    keys += [("reg_head.offset_head.conv.weight", (2 * (bins + 1), E, 3)),
             ("reg_head.offset_head.conv.bias", (2 * (bins + 1),))]
    return keys


def test_thumos_state_dict_layout_matches_tridet():
    cfg = load_config("configs/tridet/thumos_i3d.yaml")
    with torch.device("meta"):
        model = make_meta_arch(cfg["model_name"], **cfg["model"])
    expected = _tridet_thumos_keys()
    assert len(expected) == 192
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected
    assert sum(p.numel() for p in model.parameters()) == 15_989_604


@pytest.mark.parametrize("config, tensors, params, div", [
    ("thumos_i3d", 192, 15_989_604, 32), ("anet_tsp", 192, 12_811_555, 480),
    ("epic_slowfast_verb", 192, 18_594_123, 160), ("epic_slowfast_noun", 192, 19_503_532, 32),
    ("hacs_i3d", 215, 53_412_473, 960), ("hacs_slowfast", 192, 51_860_092, 96)])
def test_published_configs_build_tridets_models(config, tensors, params, div):
    """Counts and padding multiples as TriDet's code gives them for its six configs."""
    cfg = load_config(f"configs/tridet/{config}.yaml")
    with torch.device("meta"):
        model = make_meta_arch(cfg["model_name"], **cfg["model"])
    assert (len(model.state_dict()), sum(p.numel() for p in model.parameters())) == (tensors, params)
    assert model.max_div_factor == div


@pytest.mark.parametrize("w, k, expected", [(1, 5, 11), (1, 1.5, 3), (1, 1.25, 3), (3, 1.2, 5),
                                             (15, 1.3, 21), (5, 2, 13), (1, 4, 9), (15, 1.2, 19)])
def test_long_kernel_rule(w, k, expected):
    """round((w + 1) k), made odd; Python rounds 2.5 to 2 (then 3)."""
    assert sgp_long_kernel(w, k) == expected


# ------------------------------------------------------------------------------------------
# SGP block against a per-step re-derivation
# ------------------------------------------------------------------------------------------
def _dwconv_at(conv, u, t):
    """Depthwise conv (zero padding k//2) of ``u`` (B×C×T) at step t -> B×C."""
    k = conv.weight.shape[-1]
    out = conv.bias.expand(u.shape[0], -1)
    for j in range(k):
        src = t - k // 2 + j
        if 0 <= src < u.shape[-1]:
            out = out + conv.weight[:, 0, j] * u[:, :, src]
    return out


def _sgp_by_steps(block, x, mask):
    """SGPBlock.forward written out step by step (eval mode: drop-path = its scale)."""
    s = block.stride
    B, C, T = x.shape
    if s > 1:   # max-pool, kernel s+1, padding (s+1)//2 (-inf beyond the tensor)
        pad = (s + 1) // 2
        cols = []
        for t in range(T // s):
            src = [i for i in range(s * t - pad, s * t - pad + s + 1) if 0 <= i < T]
            cols.append(torch.stack([x[:, :, i] for i in src], -1).amax(-1))
        x = torch.stack(cols, -1)
        mask = mask[:, :, ::s]
    T = x.shape[-1]
    u = []
    for t in range(T):
        col = x[:, :, t]
        mu = col.mean(1, keepdim=True)
        var = ((col - mu) ** 2).mean(1, keepdim=True)
        u.append((col - mu) / torch.sqrt(var + 1e-5) * block.ln.weight[0, :, 0] + block.ln.bias[0, :, 0])
    u = torch.stack(u, -1)
    mean = u.mean(-1)                                                        # over ALL steps
    phi = torch.relu(block.global_fc.weight[:, 0, 0] * mean + block.global_fc.bias)
    scale_out = block.drop_path_out.scale[0, :, 0] if hasattr(block.drop_path_out, "scale") else 1
    y = []
    for t in range(T):
        branch = (_dwconv_at(block.fc, u, t) * phi
                  + (_dwconv_at(block.convw, u, t) + _dwconv_at(block.convkw, u, t))
                  * _dwconv_at(block.psi, u, t) + u[:, :, t])
        y.append(x[:, :, t] * mask[:, 0, t, None] + scale_out * branch)
    y = torch.stack(y, -1)
    groups = block.gn.num_groups
    g = y.reshape(B, groups, C // groups, T)                                  # stats over padding too
    g = (g - g.mean((2, 3), keepdim=True)) / torch.sqrt(g.var((2, 3), unbiased=False, keepdim=True) + 1e-5)
    g = g.reshape(B, C, T) * block.gn.weight[None, :, None] + block.gn.bias[None, :, None]
    w1, b1 = block.mlp[0].weight[:, :, 0], block.mlp[0].bias
    w2, b2 = block.mlp[2].weight[:, :, 0], block.mlp[2].bias
    scale_mlp = block.drop_path_mlp.scale[0, :, 0] if hasattr(block.drop_path_mlp, "scale") else 1
    out = [y[:, :, t] + scale_mlp * (F.gelu(g[:, :, t] @ w1.T + b1) @ w2.T + b2) for t in range(T)]
    return torch.stack(out, -1), mask


@pytest.mark.parametrize("window, stride, pdrop", [(1, 1, 0.0), (3, 2, 0.1), (5, 2, 0.1)])
def test_sgp_block_equals_its_per_step_definition(window, stride, pdrop):
    torch.manual_seed(window)
    block = SGPBlock(32, window, stride, k=1.5, n_hidden=24, path_pdrop=pdrop, init_conv_vars=0.4)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.2 * torch.randn_like(p))
    block.eval()
    x = torch.randn(2, 32, 12, requires_grad=True)
    mask = (torch.arange(12)[None, :] < torch.tensor([12, 7])[:, None])[:, None]
    out, out_mask = block(x, mask)
    ref, ref_mask = _sgp_by_steps(block, x, mask)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    assert torch.equal(out_mask, ref_mask)
    weight = torch.randn_like(ref)
    grads = torch.autograd.grad((out * weight).sum(), [x, *block.parameters()])
    ref_grads = torch.autograd.grad((ref * weight).sum(), [x, *block.parameters()])
    for name, g, r in zip(["x"] + [n for n, _ in block.named_parameters()], grads, ref_grads):
        torch.testing.assert_close(g, r, atol=5e-5, rtol=1e-4, msg=name)
    # not masked inside: the padded steps of video 1 carry values and change its real outputs
    assert out[1, :, (7 // stride) + 1:].abs().max() > 1e-3


# ------------------------------------------------------------------------------------------
# Trident head
# ------------------------------------------------------------------------------------------
def _trident_by_points(start, end, rel, n):
    """Per point t: softmax over the start window t-n..t / end window t..t+n (0 outside)."""
    rows = []
    for t in range(start.shape[-1]):
        s = torch.stack([start[..., i] if 0 <= i < start.shape[-1] else torch.zeros_like(start[..., 0])
                         for i in range(t - n, t + 1)], -1)
        e = torch.stack([end[..., i] if i < end.shape[-1] else torch.zeros_like(end[..., 0])
                         for i in range(t, t + n + 1)], -1)
        p_left = torch.softmax(s + rel[..., t, 0, :], -1)
        p_right = torch.softmax(e + rel[..., t, 1, :], -1)
        dist_left = sum(p_left[..., j] * (n - j) for j in range(n + 1))
        dist_right = sum(p_right[..., j] * j for j in range(n + 1))
        rows.append(torch.stack([dist_left, dist_right], -1))
    return torch.stack(rows, -2)                                   # …×T×2


def test_trident_decoding_equals_its_per_point_definition():
    torch.manual_seed(0)
    n, T = 3, 7
    start = torch.randn(2, T, requires_grad=True)     # two classes of one level
    end = torch.randn(2, T, requires_grad=True)
    rel = torch.rand(T, 2, n + 1, requires_grad=True)
    got = trident_offsets(boundary_windows(start, n, "start"), boundary_windows(end, n, "end"), rel)
    ref = _trident_by_points(start, end, rel, n)
    torch.testing.assert_close(got, ref)
    weight = torch.randn_like(ref)
    for g, r in zip(torch.autograd.grad((got * weight).sum(), [start, end, rel]),
                    torch.autograd.grad((ref * weight).sum(), [start, end, rel])):
        torch.testing.assert_close(g, r)


def test_trident_decoding_hand_worked_example():
    """One class, n = 2, level stride 2, points t = 0, 2, 4 (grid units).

    Point 1 (t = 2): start window = logits at steps -1, 0, 1 = [0 (outside), 0, ln 2] with
    relative logits [0, 0, 0] -> p = [1/4, 1/4, 1/2] over distances [2, 1, 0] -> 0.75 strides.
    End window = steps 1, 2, 3 = [0, ln 3, 0 (outside)] -> p = [1/5, 3/5, 1/5] over [0, 1, 2]
    -> 1.0 stride. Segment: [2 - 0.75 * 2, 2 + 1.0 * 2] = [0.5, 4.0].
    """
    start = torch.tensor([[0.0, math.log(2), 5.0]])                 # C×T
    end = torch.tensor([[0.0, 0.0, math.log(3)]])
    rel = torch.zeros(3, 6)                                         # T×2(n+1)
    points = torch.tensor([[0.0, 0, 99, 2], [2.0, 0, 99, 2], [4.0, 0, 99, 2]])
    logits = torch.tensor([[-9.0], [2.0], [-9.0]])                  # only point 1 passes 0.001

    def offsets(pt, label):
        return trident_offsets(boundary_windows(start, 2, "start")[label, pt],
                               boundary_windows(end, 2, "end")[label, pt],
                               rel[pt].unflatten(-1, (2, 3)))

    segs, scores, labels = decode_candidates([points], [torch.ones(3, dtype=torch.bool)], [logits],
                                             [offsets], 0.001, 10, 0.05)
    torch.testing.assert_close(segs, torch.tensor([[0.5, 4.0]]))
    torch.testing.assert_close(scores, torch.sigmoid(torch.tensor([2.0])))
    assert labels.tolist() == [0]


def test_windows_gathered_across_levels_are_each_levels_own():
    """Training reads the window of (video, point over all levels, class) from its own level:
    zeros at every level's borders, never the neighbouring level's logits."""
    torch.manual_seed(1)
    levels = [torch.randn(2, 3, T) for T in (8, 4, 2)]
    n = 3
    point = torch.arange(14).repeat(2)
    batch = torch.arange(2).repeat_interleave(14)
    label = torch.randint(0, 3, (28,))
    for side in ("start", "end"):
        got = _gather_windows(levels, n, side, batch, point, label)
        starts = [0, 8, 12]
        for row, (b, p, c) in enumerate(zip(batch.tolist(), point.tolist(), label.tolist())):
            lvl = max(i for i, s in enumerate(starts) if p >= s)
            expected = boundary_windows(levels[lvl], n, side)[b, c, p - starts[lvl]]
            assert torch.equal(got[row], expected), (side, b, p, c)


# ------------------------------------------------------------------------------------------
# A tiny TriDet: 4 levels (strides 1..8), max_seq_len 64
# ------------------------------------------------------------------------------------------
def _tiny_tridet(seed=0, perturb=True, train_cfg=None, **overrides):
    """A tiny TriDet, its config made by the config module (TriDet's defaults and checks);
    ``input_dim`` / ``num_classes`` / ``max_seq_len`` overrides go to the dataset section."""
    dataset = {"input_dim": 6, "num_classes": 3, "max_seq_len": 64}
    dataset.update({k: overrides.pop(k) for k in list(overrides) if k in dataset})
    model = {"backbone_arch": [2, 2, 3], "regression_range": [[0, 4], [4, 8], [8, 16], [16, 10000]],
             "embd_dim": 32, "fpn_dim": 32, "head_dim": 32, "sgp_mlp_dim": 40, "n_sgp_win_size": 3,
             "num_bins": 4, "k": 1.5, "iou_weight_power": 0.5, "init_conv_vars": 0.3,
             "max_buffer_len_factor": 4.0, **overrides}
    cfg = config_from_dict({"model_name": "TriDet", "dataset": dataset, "model": model,
                            "train_cfg": train_cfg or {}})
    torch.manual_seed(seed)
    model = make_meta_arch(cfg["model_name"], **cfg["model"])
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return model


def _item(vid, length, seed, segments=((2.0, 9.5), (20.0, 41.0)), labels=(0, 2)):
    g = torch.Generator().manual_seed(seed)
    return {"video_id": vid, "feats": torch.randn(6, length, generator=g),
            "segments": torch.tensor(segments), "labels": torch.tensor(labels), "fps": 30.0,
            "duration": length * 4 / 30, "feat_stride": 4, "feat_num_frames": 16}


def test_iou_weighted_focal_loss_equals_its_per_pair_definition():
    """cls loss = Σ over valid (point, class) of focal, times (IoU of the decoded segment)^power
    on the (positive point, target class) pairs; reg loss = Σ DIoU over those pairs."""
    model = _tiny_tridet(train_cfg={"label_smoothing": 0.1})
    model.train()
    items = [_item("a", 64, 1), _item("b", 40, 2, segments=((3.0, 12.0), (3.0, 12.0)), labels=(1, 2))]
    x, mask, _ = model.preprocessing(items)
    out = model.network(x, mask)
    before = model.loss_normalizer
    losses = model.losses(items, out)
    n, C, ls = model.num_bins, model.num_classes, 0.1
    points = torch.cat(out.points)
    offsets = torch.cat(out.offsets, 1)
    cls_logits = torch.cat(out.cls_logits, 1)
    valid = torch.cat(out.masks, 1)
    level_of = torch.cat([torch.full((p.shape[0],), i) for i, p in enumerate(out.points)])
    first = [0, 64, 96, 112]
    cls_sum, reg_sum, num_pos = 0.0, 0.0, 0
    for b, item in enumerate(items):
        gt_cls, gt_off = assign_points(points, item["segments"], item["labels"], C)
        num_pos += int(((gt_cls.sum(-1) > 0) & valid[b]).sum())
        for p in range(points.shape[0]):
            if not valid[b, p]:
                continue
            lvl, t = int(level_of[p]), p - first[int(level_of[p])]
            for c in range(C):
                target = gt_cls[p, c] * (1 - ls) + ls / (C + 1)
                loss = sigmoid_focal_loss(cls_logits[b, p, c], target)
                if gt_cls[p, c] > 0:
                    start = boundary_windows(out.starts[lvl][b, c], n, "start")[t]
                    end = boundary_windows(out.ends[lvl][b, c], n, "end")[t]
                    pred = trident_offsets(start, end, offsets[b, p].view(2, n + 1))
                    lp, rp = pred
                    lg, rg = gt_off[p]
                    inter = torch.min(lp, lg) + torch.min(rp, rg)
                    union = lp + rp + lg + rg - inter
                    iou = inter / union
                    loss = loss * (1 - (1 - iou)) ** 0.5
                    outer = torch.max(lp, lg) + torch.max(rp, rg)
                    reg_sum = reg_sum + 1 - iou + (0.5 * (rp - lp - rg + lg) / outer) ** 2
                cls_sum = cls_sum + loss
    norm = 0.9 * before + 0.1 * max(num_pos, 1)
    assert model.loss_normalizer == pytest.approx(norm)
    torch.testing.assert_close(losses["cls_loss"], cls_sum / norm, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(losses["reg_loss"], reg_sum / norm, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------
# Padding, batching, zero-initialised SGP convolutions
# ------------------------------------------------------------------------------------------
def test_inference_pads_as_tridet():
    """Up to max_seq_len: padded to max_seq_len; beyond: to the next multiple of TriDet's
    max_div_factor (stride x window: 480 for the ActivityNet config, 32 for THUMOS)."""
    for config, cases in (("anet_tsp", {100: 768, 768: 768, 769: 960, 1000: 1440}),
                          ("thumos_i3d", {2304: 2304, 2305: 2336})):
        cfg = load_config(f"configs/tridet/{config}.yaml")
        with torch.device("meta"):
            model = make_meta_arch("TriDet", **cfg["model"])
        assert {n: model.padded_length(n) for n in cases} == cases


def test_outputs_depend_on_the_padding_and_batches_pad_each_video_alone():
    model = _tiny_tridet()
    model.eval()
    short, longer = _item("s", 40, 3), _item("l", 100, 4)
    alone = [model([it])[0] for it in (short, longer)]
    batched = model([short, longer])
    for a, b in zip(alone, batched):
        assert torch.equal(a["segments"], b["segments"]) and torch.equal(a["scores"], b["scores"])
    # the same weights with a longer max_seq_len pad the short video further: SGP's time mean
    # and GroupNorm see the extra padding, and the detections change
    wider = _tiny_tridet(max_seq_len=128)
    wider.load_state_dict(model.state_dict())
    wider.eval()
    other = wider([short])[0]
    n = min(len(other["scores"]), len(alone[0]["scores"]))
    assert (other["scores"][:n] - alone[0]["scores"][:n]).abs().max() > 1e-4


def test_zero_initialised_sgp_convolutions_stay_zero():
    """init_conv_vars 0 (TriDet's default, THUMOS and EPIC configs): ψ, fc, convw, convkw and
    global_fc start at 0 and get exactly zero gradients (φ = ReLU(0) = 0 and ψ = 0 cancel every
    path), so AdamW with weight decay leaves them at 0: SGP reduces to x + LN(x) + MLP."""
    model = _tiny_tridet(init_conv_vars=0, perturb=False)
    model.train()
    opt = make_optimizer(model, {"type": "AdamW", "learning_rate": 1e-2, "weight_decay": 0.05})
    names = ("psi", "fc", "convw", "convkw", "global_fc")
    items = [_item("a", 64, 1), _item("b", 50, 2)]
    others_before = model.backbone.stem[0].mlp[0].weight.clone()
    for _ in range(3):
        opt.zero_grad()
        model(items)["final_loss"].backward()
        for block in list(model.backbone.stem) + list(model.backbone.branch):
            for name in names:
                conv = getattr(block, name)
                assert conv.weight.grad is None or not conv.weight.grad.any(), name
                assert conv.bias.grad is None or not conv.bias.grad.any(), name
        opt.step()
    for block in list(model.backbone.stem) + list(model.backbone.branch):
        assert all(not getattr(block, name).weight.any() and not getattr(block, name).bias.any()
                   for name in names)
    assert not torch.equal(model.backbone.stem[0].mlp[0].weight, others_before)
    # with a non-zero init they train
    model = _tiny_tridet(init_conv_vars=0.3, perturb=False)
    model.train()
    model(items)["final_loss"].backward()
    assert model.backbone.branch[0].psi.weight.grad.abs().max() > 0


def test_boundary_heads_see_detached_features_and_noise_is_drawn_on_the_cpu():
    model = _tiny_tridet(input_noise=0.5)
    model.train()
    items = [_item("a", 64, 1)]
    torch.manual_seed(7)
    losses = model(items)
    grads = torch.autograd.grad(losses["final_loss"], [model.backbone.embd[0].conv.weight,
                                                       model.start_head.cls_head.conv.weight])
    assert all(g.abs().max() > 0 for g in grads)
    # the boundary heads' loss paths do not reach the backbone
    x, mask, _ = model.preprocessing(items)
    out = model.network(x, mask)
    probe = sum(s.sum() for s in out.starts) + sum(e.sum() for e in out.ends)
    assert torch.autograd.grad(probe, model.backbone.embd[0].conv.weight, allow_unused=True)[0] is None
    # noise: N(0, 0.5²) from torch's CPU generator, added to the whole padded batch
    clean = model.preprocessing(items)[0]
    seen = []
    network = model.network
    model.network = lambda x, mask: network(seen.append(x.clone()) or x, mask)
    torch.manual_seed(7)
    model(items)
    torch.manual_seed(7)
    torch.testing.assert_close(seen[0], clean + torch.randn(1, 6, 64) * 0.5, rtol=0, atol=0)


def test_fast_paths_cover_tridet():
    """Channels-last fast paths equal the plain formulation; chunked long-video inference runs
    the embedding and heads in chunks (local) and never cuts the SGP blocks (global mean,
    GroupNorm): same detections to float32 rounding."""
    from libs.modeling.blocks import inference_chunk_steps, reference_formulation
    model = _tiny_tridet()
    model.eval()
    item = _item("long", 200, 5)
    fast = model([item])[0]
    with reference_formulation():
        plain = model([item])[0]
    with inference_chunk_steps(32):
        chunked = model([item])[0]
    for other in (plain, chunked):
        assert len(other["scores"]) == len(fast["scores"])
        torch.testing.assert_close(other["scores"], fast["scores"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(other["segments"], fast["segments"], atol=1e-3, rtol=1e-4)
    model.train()
    normalizer = model.loss_normalizer
    torch.manual_seed(3)
    loss_fast = model([_item("a", 64, 1)])["final_loss"]
    model.loss_normalizer = normalizer
    torch.manual_seed(3)
    with reference_formulation():
        loss_plain = model([_item("a", 64, 1)])["final_loss"]
    torch.testing.assert_close(loss_fast, loss_plain, atol=1e-5, rtol=1e-5)
