"""The reference's building blocks keep its signatures (issue #12): constructor parameters in the
same order with the same names and defaults, the same forward arguments, importable from
``libs.modeling``; called the reference's way (positional and keyword), each gives what a plain
channel-first formulation of the reference's computation gives."""
import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import libs.modeling as modeling
from libs.modeling import (AffineDropPath, ConvBlock, LayerNorm, LocalMaskedMHCA, MaskedConv1D,
                           MaskedMHA, MaskedMHCA, Scale, TransformerBlock)
from libs.modeling.blocks import DropPath, get_sinusoid_encoding

_EMPTY = inspect.Parameter.empty

# (name, default) of every constructor parameter after self, written out from the reference
REFERENCE_SIGNATURES = {
    MaskedConv1D: [("in_channels", _EMPTY), ("out_channels", _EMPTY), ("kernel_size", _EMPTY),
                   ("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1),
                   ("bias", True), ("padding_mode", "zeros")],
    LayerNorm: [("num_channels", _EMPTY), ("eps", 1e-5), ("affine", True), ("device", None),
                ("dtype", None)],
    MaskedMHA: [("n_embd", _EMPTY), ("n_head", _EMPTY), ("attn_pdrop", 0.0),
                ("proj_pdrop", 0.0)],
    MaskedMHCA: [("n_embd", _EMPTY), ("n_head", _EMPTY), ("n_qx_stride", 1), ("n_kv_stride", 1),
                 ("attn_pdrop", 0.0), ("proj_pdrop", 0.0)],
    LocalMaskedMHCA: [("n_embd", _EMPTY), ("n_head", _EMPTY), ("window_size", _EMPTY),
                      ("n_qx_stride", 1), ("n_kv_stride", 1), ("attn_pdrop", 0.0),
                      ("proj_pdrop", 0.0), ("use_rel_pe", False)],
    TransformerBlock: [("n_embd", _EMPTY), ("n_head", _EMPTY), ("n_ds_strides", (1, 1)),
                       ("n_out", None), ("n_hidden", None), ("act_layer", nn.GELU),
                       ("attn_pdrop", 0.0), ("proj_pdrop", 0.0), ("path_pdrop", 0.0),
                       ("mha_win_size", -1), ("use_rel_pe", False)],
    ConvBlock: [("n_embd", _EMPTY), ("kernel_size", 3), ("n_ds_stride", 1),
                ("expansion_factor", 2), ("n_out", None), ("act_layer", nn.ReLU)],
    Scale: [("init_value", 1.0)],
    DropPath: [("drop_prob", None)],
    AffineDropPath: [("num_dim", _EMPTY), ("drop_prob", 0.0), ("init_scale_value", 1e-4)],
}
# leading forward parameters after self (ours may add a trailing optional ``extent``)
REFERENCE_FORWARDS = {
    MaskedConv1D: ["x", "mask"], LayerNorm: ["x"], MaskedMHA: ["x", "mask"],
    MaskedMHCA: ["x", "mask"], LocalMaskedMHCA: ["x", "mask"],
    TransformerBlock: ["x", "mask", "pos_embd"], ConvBlock: ["x", "mask", "pos_embd"],
    Scale: ["x"], DropPath: ["x"], AffineDropPath: ["x"],
}


@pytest.mark.parametrize("cls", list(REFERENCE_SIGNATURES), ids=lambda c: c.__name__)
def test_constructor_and_forward_signatures_are_the_reference_ones(cls):
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert [(p.name, p.default) for p in params] == REFERENCE_SIGNATURES[cls]
    forward = list(inspect.signature(cls.forward).parameters.values())[1:]
    expected = REFERENCE_FORWARDS[cls]
    assert [p.name for p in forward[:len(expected)]] == expected
    assert all(p.default is not _EMPTY for p in forward[len(expected):])
    if "pos_embd" in expected:
        assert forward[2].default is None


def test_the_reference_exports_are_importable_from_libs_modeling():
    for name in ("MaskedConv1D", "MaskedMHCA", "MaskedMHA", "LayerNorm", "TransformerBlock",
                 "ConvBlock", "Scale", "AffineDropPath", "LocalMaskedMHCA", "make_backbone",
                 "make_neck", "make_meta_arch", "make_generator"):
        assert name in modeling.__all__ and hasattr(modeling, name)


# ------------------------------------------------------------------------------------------
# Plain channel-first formulations of the reference's computations
# ------------------------------------------------------------------------------------------
def _mask(lengths, T):
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None])[:, None, :]


def _plain_conv(module, x, mask):
    conv = module.conv
    out = F.conv1d(x, conv.weight, conv.bias, conv.stride, conv.padding, groups=conv.groups)
    out_mask = mask[:, :, ::conv.stride[0]]
    return out * out_mask, out_mask


def _plain_ln(ln, x):
    centred = x - x.mean(dim=1, keepdim=True)
    out = centred / torch.sqrt((centred ** 2).mean(dim=1, keepdim=True) + ln.eps)
    return out * ln.weight + ln.bias


def _plain_1x1(conv, x):
    return F.conv1d(x, conv.weight, conv.bias)


def _plain_attention(q, k, v, kv_mask, n_head, window=-1, rel_pe=None):
    """Softmax attention per head on ``B×E×T``; a local window masks keys beyond ``window//2``
    steps and adds ``rel_pe`` by offset; padded keys get -1e4 (local) or -inf (global)."""
    B, E, T = q.shape
    d = E // n_head
    q, k, v = (t.reshape(B, n_head, d, -1).transpose(2, 3) for t in (q, k, v))
    att = (q / math.sqrt(d)) @ k.transpose(2, 3)                        # B×H×T×T
    if window > 1:
        h = window // 2
        offset = torch.arange(T)[None, :] - torch.arange(T)[:, None]
        if rel_pe is not None:
            att = att + rel_pe[0, 0][:, (offset + h).clamp(0, 2 * h)]
        att = att + (~kv_mask[:, :, None, :]).float() * -1e4
        att = att.masked_fill(offset.abs() > h, float("-inf"))
    else:
        att = att.masked_fill(~kv_mask[:, :, None, :], float("-inf"))
    out = att.softmax(-1) @ (v * kv_mask[:, :, :, None])
    return out.transpose(2, 3).reshape(B, E, -1)


def _plain_mhca(attn, x, mask):
    q, qx_mask = _plain_conv(attn.query_conv, x, mask)
    k, kv_mask = _plain_conv(attn.key_conv, x, mask)
    v, _ = _plain_conv(attn.value_conv, x, mask)
    q = _plain_1x1(attn.query, _plain_ln(attn.query_norm, q))
    k = _plain_1x1(attn.key, _plain_ln(attn.key_norm, k))
    v = _plain_1x1(attn.value, _plain_ln(attn.value_norm, v))
    out = _plain_attention(q, k, v, kv_mask, attn.n_head, attn.window_size,
                           attn.rel_pe.detach() if attn.rel_pe is not None else None)
    return _plain_1x1(attn.proj, out) * qx_mask, qx_mask


def _perturbed(module, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module.eval()


def _close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# Calls written the reference's way
# ------------------------------------------------------------------------------------------
def test_masked_conv_positional_and_keyword_calls():
    x, mask = torch.randn(2, 8, 12), _mask([12, 7], 12)
    # the fifth positional argument is padding, then dilation, groups, bias, padding_mode
    conv = _perturbed(MaskedConv1D(8, 8, 3, 2, 1, 1, 4, False, "zeros"))
    assert conv.conv.bias is None and conv.conv.groups == 4
    out, out_mask = conv(x, mask)
    expected, expected_mask = _plain_conv(conv, x, mask)
    _close(out, expected)
    assert torch.equal(out_mask, expected_mask) and out.shape == (2, 8, 6)
    conv = _perturbed(MaskedConv1D(in_channels=8, out_channels=5, kernel_size=5, stride=1,
                                   padding=2, bias=True))
    _close(conv(x, mask)[0], _plain_conv(conv, x, mask)[0])
    assert torch.equal(MaskedConv1D(8, 5, 1).conv.bias, torch.zeros(5))   # bias starts at 0
    with pytest.raises(ValueError, match="padding"):          # the reference asserts here
        MaskedConv1D(8, 8, 3)
    with pytest.raises(ValueError, match="dilation"):
        MaskedConv1D(8, 8, 3, padding=1, dilation=2)


def test_layer_norm_with_factory_arguments():
    ln = _perturbed(LayerNorm(6, 1e-5, True, device="cpu", dtype=torch.float64))
    assert ln.weight.dtype == torch.float64 and ln.affine
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    torch.testing.assert_close(ln(x), _plain_ln(ln, x))
    plain = LayerNorm(num_channels=6, eps=1e-3, affine=False)
    assert plain.weight is None and not plain.affine


def test_masked_mha_is_global_attention_over_real_steps():
    x, mask = torch.randn(2, 16, 10), _mask([10, 6], 10)
    mha = _perturbed(MaskedMHA(16, 4, 0.0, 0.0))
    out, out_mask = mha(x, mask)
    q, k, v = (_plain_1x1(c, x) for c in (mha.query, mha.key, mha.value))
    expected = _plain_1x1(mha.proj, _plain_attention(q, k, v, mask, 4)) * mask
    _close(out, expected)
    assert out_mask is mask
    assert [n for n, _ in mha.named_parameters()] == [
        "key.weight", "key.bias", "query.weight", "query.bias", "value.weight", "value.bias",
        "proj.weight", "proj.bias"]


@pytest.mark.parametrize("stride", [1, 2])
def test_masked_mhca_positional_and_keyword_calls(stride):
    x, mask = torch.randn(2, 16, 12), _mask([12, 7], 12)
    for attn in (MaskedMHCA(16, 4, stride, stride, 0.0, 0.0),
                 MaskedMHCA(n_embd=16, n_head=4, n_qx_stride=stride, n_kv_stride=stride)):
        attn = _perturbed(attn)
        out, out_mask = attn(x, mask)
        expected, expected_mask = _plain_mhca(attn, x, mask)
        _close(out, expected)
        assert torch.equal(out_mask, expected_mask)


def test_masked_mhca_query_conv_follows_the_reference_strides():
    """The reference builds the query conv with the kernel of ``n_qx_stride`` and the stride of
    ``n_kv_stride``."""
    attn = MaskedMHCA(8, 2, n_qx_stride=4, n_kv_stride=2)
    assert attn.query_conv.conv.kernel_size == (5,) and attn.query_conv.stride == 2
    assert attn.key_conv.conv.kernel_size == (3,) and attn.key_conv.stride == 2


@pytest.mark.parametrize("use_rel_pe", [False, True])
def test_local_masked_mhca_positional_and_keyword_calls(use_rel_pe):
    x, mask = torch.randn(2, 16, 16), _mask([16, 9], 16)
    for attn in (LocalMaskedMHCA(16, 4, 5, 2, 2, 0.0, 0.0, use_rel_pe),
                 LocalMaskedMHCA(16, 4, window_size=5, n_qx_stride=2, n_kv_stride=2,
                                 attn_pdrop=0.0, proj_pdrop=0.0, use_rel_pe=use_rel_pe)):
        attn = _perturbed(attn)
        assert (attn.rel_pe is not None) == use_rel_pe and attn.window_overlap == 2
        out, out_mask = attn(x, mask)
        expected, _ = _plain_mhca(attn, x, mask)
        _close(out, expected)


def _plain_block(block, x, mask, pos_embd, stride, act):
    out, out_mask = _plain_mhca(block.attn, _plain_ln(block.ln1, x), mask)
    skip = F.max_pool1d(x, stride + 1, stride, (stride + 1) // 2) if stride > 1 else x
    out = skip * out_mask + block.drop_path_attn.scale * out
    mlp = block.mlp
    hidden = act(_plain_1x1(mlp[0], _plain_ln(block.ln2, out)))
    out = out + block.drop_path_mlp.scale * (_plain_1x1(mlp[3], hidden) * out_mask)
    return out + pos_embd * out_mask, out_mask


@pytest.mark.parametrize("window", [5, -1])
def test_transformer_block_positional_and_keyword_calls(window):
    x, mask = torch.randn(2, 16, 16), _mask([16, 9], 16)
    x = x * mask
    pos = torch.randn(1, 16, 8)
    blocks = [TransformerBlock(16, 4, (2, 2), None, 24, nn.ReLU, 0.0, 0.0, 0.1, window, True),
              TransformerBlock(16, 4, n_ds_strides=(2, 2), n_hidden=24, act_layer=nn.ReLU,
                               attn_pdrop=0.0, proj_pdrop=0.0, path_pdrop=0.1,
                               mha_win_size=window, use_rel_pe=True)]
    for block in blocks:
        block = _perturbed(block)
        assert isinstance(block.attn, LocalMaskedMHCA if window > 1 else MaskedMHCA)
        assert block.mlp[0].out_channels == 24
        out, out_mask = block(x, mask, pos)
        expected, expected_mask = _plain_block(block, x, mask, pos, 2, F.relu)
        _close(out, expected)
        assert torch.equal(out_mask, expected_mask)
    with pytest.raises(ValueError, match="n_ds_strides"):
        TransformerBlock(16, 4, n_ds_strides=(2, 1))


def test_conv_block_positional_and_keyword_calls():
    x, mask = torch.randn(2, 8, 12), _mask([12, 7], 12)
    for block in (ConvBlock(8, 3, 2, 2, None, nn.ReLU),
                  ConvBlock(n_embd=8, kernel_size=3, n_ds_stride=2, expansion_factor=2)):
        block = _perturbed(block)
        out, out_mask = block(x, mask, None)
        hidden, hidden_mask = _plain_conv(block.conv1, x, mask)
        expected, expected_mask = _plain_conv(block.conv2, F.relu(hidden), hidden_mask)
        expected = F.relu(expected + _plain_conv(block.downsample, x, mask)[0])
        _close(out, expected)
        assert torch.equal(out_mask, expected_mask)
    same = _perturbed(ConvBlock(8))
    hidden, hidden_mask = _plain_conv(same.conv1, x, mask)
    expected = F.relu(_plain_conv(same.conv2, F.relu(hidden), hidden_mask)[0] + x)
    _close(same(x, mask)[0], expected)


def test_scale_drop_path_and_sinusoid_helpers():
    x = torch.randn(4, 3, 5)
    torch.testing.assert_close(Scale(2.5)(x), 2.5 * x)
    layer = AffineDropPath(3, 0.0, 0.5)
    torch.testing.assert_close(layer(x), 0.5 * x)
    drop = DropPath(0.5).train()
    torch.manual_seed(0)
    keep = (0.5 + torch.rand(4, 1, 1)).floor()
    torch.manual_seed(0)
    torch.testing.assert_close(drop(x), x / 0.5 * keep)
    table = get_sinusoid_encoding(7, 4)
    assert table.shape == (1, 4, 7)
    torch.testing.assert_close(table[0, :, 5], torch.tensor(
        [math.sin(5.0), math.cos(5.0), math.sin(5.0 / 100.0), math.cos(5.0 / 100.0)]))


def test_factories_take_the_reference_keyword_sets():
    """``make_backbone`` / ``make_neck`` / ``make_generator`` with the keyword dicts the
    reference's detector passes (attention-map dropout and the point buffer length included)."""
    torch.manual_seed(0)
    backbone = modeling.make_backbone("convTransformer", **{
        "n_in": 6, "n_embd": 16, "n_head": 4, "n_embd_ks": 3, "max_len": 64, "arch": (2, 2, 3),
        "mha_win_size": [5] * 4, "scale_factor": 2, "with_ln": True, "attn_pdrop": 0.0,
        "proj_pdrop": 0.1, "path_pdrop": 0.1, "use_abs_pe": True, "use_rel_pe": False}).eval()
    neck = modeling.make_neck("fpn", **{"in_channels": [16] * 4, "out_channel": 16,
                                        "scale_factor": 2, "start_level": 0, "with_ln": True})
    generator = modeling.make_generator("point", **{
        "max_seq_len": 64 * 4.0, "fpn_strides": [1, 2, 4, 8],
        "regression_range": [[0, 4], [4, 8], [8, 16], [16, 10000]]})
    x, mask = torch.randn(2, 6, 64), _mask([64, 40], 64)
    feats, masks = neck(*backbone(x * mask, mask))
    assert [f.shape[-1] for f in feats] == [64, 32, 16, 8]
    assert [m[1, 0].sum().item() for m in masks] == [40, 20, 10, 5]
    points = generator(feats)
    assert points[2][:3].tolist() == [[0.0, 8.0, 16.0, 4.0], [4.0, 8.0, 16.0, 4.0],
                                      [8.0, 8.0, 16.0, 4.0]]
