"""Fast paths (GitHub issue #7) == the reference's plain formulation, in fp32 to 1e-5, outputs and
gradients: each layer on its own, Transformer blocks, and the whole detector, in eval and in
training mode with dropout, attention dropout and drop-path > 0 (the same seed must draw the same
masks: issue #12); a few training iterations of an Ego4D-like model give the same losses; plus
bf16 autocast."""
import pytest
import torch
import torch.nn.functional as F

from libs.core import load_config
from libs.modeling import make_meta_arch
from libs.modeling.blocks import (ChannelsLastMaxPool1d, Dropout, FastConv1d, LayerNorm,
                                  MaskedMHCA, TransformerBlock, reference_formulation)
from test_modeling_model import _item, _run, _tiny_model


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _layouts(x):
    """The same ``B×C×T`` values channel-first and channels-last in memory."""
    return [x, x.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()]


def _fast_and_plain(module, inputs, leaves, weight, seed=0):
    """(outputs, gradients of sum(out · weight) w.r.t. leaves) for the fast and the plain path,
    each run from the same random seed."""
    results = []
    for plain in (False, True):
        torch.manual_seed(seed)
        with reference_formulation(plain):
            out = module(*inputs)
        out = out[0] if isinstance(out, tuple) else out
        grads = torch.autograd.grad((out * weight).sum(), leaves)
        results.append((out.detach(), grads))
    return results


def _close(a, b, tol):
    """max |a - b| <= tol · max(1, max |b|): float32 rounding scales with the tensor, not with
    each element (a gradient entry near zero is a sum of large terms that cancel)."""
    scale = max(1.0, b.abs().max().item())
    assert (a - b).abs().max().item() <= tol * scale, ((a - b).abs().max().item(), scale)


def _assert_same(results, tol=1e-5):
    (out_fast, g_fast), (out_plain, g_plain) = results
    _close(out_fast, out_plain, tol)
    for a, b in zip(g_fast, g_plain):
        _close(a, b, tol)


def test_plain_path_is_torch_conv1d_and_context_restores_the_mode():
    conv = FastConv1d(4, 6, 3)
    x = torch.randn(2, 4, 9)
    with reference_formulation():
        torch.testing.assert_close(conv(x), F.conv1d(x, conv.weight, conv.bias, padding=1),
                                   atol=0, rtol=0)
        with pytest.raises(RuntimeError):
            with reference_formulation(False):
                raise RuntimeError("inner")
        ln = LayerNorm(4)
        assert ln(x).is_contiguous()                     # written out: stays channel-first
    assert not LayerNorm(4)(x).is_contiguous()           # fused: channels-last memory


@pytest.mark.parametrize("c_in, c_out, k, stride, groups", [
    (8, 16, 1, 1, 1), (8, 8, 1, 2, 1), (6, 5, 3, 1, 1), (6, 6, 3, 2, 1), (8, 8, 3, 1, 8),
    (8, 8, 3, 2, 8), (4, 4, 5, 4, 4)])
def test_fast_conv_equals_conv1d(c_in, c_out, k, stride, groups):
    g = torch.Generator().manual_seed(c_in * k + stride)
    conv = FastConv1d(c_in, c_out, k, stride, groups)
    with torch.no_grad():
        conv.bias.normal_(generator=g)
    for x in _layouts(torch.randn(3, c_in, 16, generator=g, requires_grad=True)):
        weight = torch.randn(3, c_out, 16 // stride, generator=g)
        _assert_same(_fast_and_plain(conv, [x], [x, conv.weight, conv.bias], weight))
    if k == 1 or groups > 1:                              # GEMM / channels-last conv
        assert conv(x).transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("affine", [True, False])
def test_fused_layer_norm_equals_the_written_out_one(affine):
    g = torch.Generator().manual_seed(1)
    ln = LayerNorm(12, affine=affine)
    if affine:
        with torch.no_grad():
            ln.weight.normal_(generator=g)
            ln.bias.normal_(generator=g)
    x = 3.0 + 2.0 * torch.randn(2, 12, 10, generator=g)
    x[1, :, 7:] = 0.0                                     # padded steps: output = bias
    for x in _layouts(x.requires_grad_()):
        weight = torch.randn(2, 12, 10, generator=g)
        leaves = [x] + ([ln.weight, ln.bias] if affine else [])
        _assert_same(_fast_and_plain(ln, [x], leaves, weight))


def test_channels_last_max_pool_equals_max_pool1d_including_ties():
    pool = ChannelsLastMaxPool1d(3, stride=2, padding=1)
    x = torch.tensor([[[1.0, 2.0, 2.0, 0.0, 0.0, 0.0, -1.0, 5.0],
                       [0.0, 0.0, 0.0, 0.0, 3.0, 3.0, 3.0, -2.0]]])       # ties everywhere
    for x in _layouts(x.requires_grad_()):
        weight = torch.arange(8.0).view(2, 4)[None]
        _assert_same(_fast_and_plain(pool, [x], [x], weight), tol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_draws_the_reference_mask_in_any_memory_layout(dtype):
    """Same seed, same dropped elements and scaled values (those of ``nn.Dropout`` on the
    contiguous tensor) and the same random stream afterwards; a channels-last input stays
    channels-last."""
    x = (torch.randn(2, 8, 16) + 5.0).to(dtype)
    layer = Dropout(0.3).train()
    torch.manual_seed(7)
    expected, after = torch.nn.Dropout(0.3)(x), torch.rand(4)
    for x_layout in _layouts(x):
        torch.manual_seed(7)
        out = layer(x_layout)
        torch.testing.assert_close(out, expected, atol=0, rtol=0)
        assert torch.equal(torch.rand(4), after) and out.stride() == x_layout.stride()
    assert 0 < int((expected == 0).sum()) < x.numel()
    torch.manual_seed(7)
    noise = layer.noise((2, 8, 16), x)
    torch.testing.assert_close(x * noise, expected, atol=0, rtol=0)
    assert torch.equal(layer.eval()(x), x)


def _block_case(seed, training, **kwargs):
    torch.manual_seed(seed)
    block = TransformerBlock(16, 4, attn_pdrop=0.1, proj_pdrop=0.1, path_pdrop=0.1, **kwargs)
    block.train(training)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))              # LN biases etc. non-trivial
    mask = (torch.arange(24)[None, :] < torch.tensor([24, 17])[:, None])[:, None, :]
    x = (torch.randn(2, 16, 24) * mask).requires_grad_()
    return block, x, mask


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("kwargs", [
    {"mha_win_size": 5}, {"mha_win_size": 5, "n_ds_strides": (2, 2)},
    {"mha_win_size": 7, "use_rel_pe": True}, {"mha_win_size": -1},
    {"mha_win_size": -1, "n_ds_strides": (2, 2)}])
def test_transformer_block_fast_equals_plain(kwargs, training):
    """In training mode every dropout (projection, MLP, attention map) and drop-path is active
    at p = 0.1: the same seed must drop the same elements on both paths."""
    block, x, mask = _block_case(3, training, **kwargs)
    stride = kwargs.get("n_ds_strides", (1, 1))[0]
    weight = torch.randn(2, 16, 24 // stride)
    leaves = [x] + list(block.parameters())
    _assert_same(_fast_and_plain(block, [x, mask], leaves, weight))
    extent = (torch.arange(24)[None, :] < torch.tensor([24, 20])[:, None])[:, None, :]
    _assert_same(_fast_and_plain(block, [x, mask, None, extent], leaves, weight))
    if training:                                           # the masks do depend on the seed
        outs = [_fast_and_plain(block, [x, mask], leaves, weight, seed)[0][0] for seed in (0, 1)]
        assert (outs[0] - outs[1]).abs().max() > 1e-3


def test_attention_output_is_channels_last_in_memory():
    block, x, mask = _block_case(4, False, mha_win_size=5)
    out, _ = block.attn(block.ln1(x), mask)
    assert isinstance(block.attn, MaskedMHCA) and out.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("variant", [{}, {"use_abs_pe": True},
                                     {"backbone_type": "conv", "fpn_type": "fpn"},
                                     {"n_mha_win_size": [5, 5, 5, -1]}])
def test_detector_training_losses_and_gradients_equal_the_plain_formulation(variant):
    model = _tiny_model(train_cfg={"dropout": 0.1, "droppath": 0.1}, **variant).train()
    batch = [_item("a", 40, 0), _item("b", 64, 1)]
    results = []
    for plain in (False, True):
        model.loss_normalizer = 100.0
        torch.manual_seed(0)                               # same dropout / drop-path draws
        with reference_formulation(plain):
            losses = model(batch)
        grads = torch.autograd.grad(losses["final_loss"], list(model.parameters()))
        results.append((torch.stack([losses["cls_loss"], losses["reg_loss"]]).detach(), grads))
    _assert_same(results)


def _ego4d_like_model():
    """The Ego4D SlowFast config (dropout 0.1, drop-path 0.1, window 9, absolute PE) at tiny
    dimensions: 4 levels, width 16, max_seq_len 64. Weights are perturbed like those of a model
    some way into training: at their initial 1e-4 the drop-path scales would hide the residual
    branches, and with them the dropout masks, from the losses."""
    cfg = load_config("configs/ego4d_slowfast.yaml", [
        "dataset.input_dim=6", "dataset.num_classes=3", "dataset.max_seq_len=64",
        "model.backbone_arch=[2, 2, 3]", "model.embd_dim=16", "model.fpn_dim=16",
        "model.head_dim=16", "model.regression_range=[[0, 4], [2, 8], [4, 16], [8, 10000]]"])
    assert cfg["train_cfg"]["dropout"] == 0.1 and cfg["train_cfg"]["droppath"] == 0.1
    torch.manual_seed(0)
    model = make_meta_arch(cfg["model_name"], **cfg["model"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model, cfg


def test_ego4d_like_training_losses_equal_the_plain_formulation_seed_for_seed():
    """Three AdamW iterations (gradient clipping as configured) from the same weights and seeds:
    the fast paths and the reference's formulation give the same losses to 1e-6."""
    model, cfg = _ego4d_like_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [[_item("a", 64, 2 * i), _item("b", 37 + 9 * i, 2 * i + 1)] for i in range(3)]
    history = []
    for plain in (False, True):
        model.load_state_dict(initial)
        model.loss_normalizer = float(cfg["train_cfg"]["init_loss_norm"])
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["opt"]["learning_rate"])
        losses = []
        for step, batch in enumerate(batches):
            torch.manual_seed(100 + step)
            with reference_formulation(plain):
                out = model.train()(batch)
            optimizer.zero_grad()
            out["final_loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["train_cfg"]["clip_grad_l2norm"])
            optimizer.step()
            losses.append([out[k].item() for k in ("cls_loss", "reg_loss", "final_loss")])
        history.append(torch.tensor(losses, dtype=torch.float64))
    torch.testing.assert_close(history[0], history[1], atol=1e-6, rtol=0)
    # dropout did act: other seeds give other losses
    model.load_state_dict(initial)
    torch.manual_seed(1)
    assert abs(model.train()(batches[0])["final_loss"].item() - history[0][0, 2].item()) > 1e-4


def test_detector_inference_equals_the_plain_formulation():
    model = _tiny_model(test_cfg={"nms_method": "none"}).eval()
    items = [_item("a", 50, 0), _item("b", 128, 1)]
    dets_fast, out_fast = _run(model, items)
    with reference_formulation():
        dets_plain, out_plain = _run(model, items)
    for a, b in zip(out_fast["cls"] + out_fast["reg"], out_plain["cls"] + out_plain["reg"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(dets_fast, dets_plain):
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-6, rtol=0)


def test_bf16_autocast_training_learns():
    """``--amp bf16``: autocast around the forward; a tiny model still fits one video."""
    torch.manual_seed(0)
    model = _tiny_model(perturb=False, train_cfg={"droppath": 0.0, "init_loss_norm": 10})
    item = _item("v", 64, seed=0)
    item["segments"] = torch.tensor([[10.0, 30.0]])
    item["feats"][1, 10:31] += 1.0
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    history = []
    for _ in range(60):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model([item])["final_loss"]
        assert loss.dtype == torch.float32
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-5:]) < 0.25 * sum(history[:5])
