"""Blocks of the model: masking primitives, attention kernels, Transformer block (spec C.2-C.6)."""
import math

import pytest
import torch

from libs.modeling.blocks import (AffineDropPath, LayerNorm, LocalMaskedMHCA, MaskedConv1D,
                                  TransformerBlock,
                                  drop_path, global_attention, local_attention,
                                  local_attention_dense, sinusoid_position_table)
from libs.modeling.weight_init import trunc_normal_


def _prefix_mask(lengths, T):
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None])[:, None, :]


def _attention_by_loops(q, k, v, mask, window, rel_pe=None):
    """Spec C.6 literally, one query at a time (float64): window keys j in [i-h, i+h] ∩ [0, T),
    logit q_i·k_j + rel_pe[j-i+h] - 1e4·[key j padded]; padded query rows are 0."""
    B, H, d, T = q.shape
    h = window // 2
    out = torch.zeros(B, H, d, T, dtype=torch.float64)
    for b in range(B):
        for hd in range(H):
            for i in range(T):
                if not mask[b, 0, i]:
                    continue
                js = list(range(max(0, i - h), min(T, i + h + 1)))
                logits = torch.stack([
                    q[b, hd, :, i].double() @ k[b, hd, :, j].double()
                    + (rel_pe[0, 0, hd, j - i + h].double() if rel_pe is not None else 0.0)
                    + (0.0 if mask[b, 0, j] else -1e4) for j in js])
                p = logits.softmax(0)
                out[b, hd, :, i] = sum(p[n] * v[b, hd, :, j].double() for n, j in enumerate(js))
    return out


def test_local_attention_definitions_match_the_spec_loops():
    g = torch.Generator().manual_seed(0)
    B, H, d, T, w = 2, 2, 3, 11, 5
    q, k, v = (torch.randn(B, H, d, T, generator=g) for _ in range(3))
    rel_pe = torch.randn(1, 1, H, w, generator=g)
    mask = _prefix_mask([11, 7], T)
    expected = _attention_by_loops(q, k, v, mask, w, rel_pe)
    dense = local_attention_dense(q, k, v, mask, w, rel_pe)
    fast = local_attention(q, k, v, mask, w, rel_pe) * mask[:, :, None, :]
    torch.testing.assert_close(dense.double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("T", [1, 6, 16, 37])
@pytest.mark.parametrize("window", [2, 3, 4, 9, 19])
@pytest.mark.parametrize("heads", [1, 4])
def test_fast_local_attention_equals_dense_band_attention(T, window, heads):
    g = torch.Generator().manual_seed(T * 100 + window * 10 + heads)
    B, d = 3, 4
    q, k, v = (torch.randn(B, heads, d, T, generator=g, requires_grad=True) for _ in range(3))
    rel_pe = None
    if window % 2 == 1:
        rel_pe = torch.randn(1, 1, heads, window, generator=g, requires_grad=True)
    # full length, a padded tail, and a mask with holes (stress test of the key masking)
    mask = _prefix_mask([T, max(1, T // 2), T], T)
    mask[2, 0, ::3] = False
    mask[2, 0, 0] = True
    weight = torch.randn(B, heads, d, T, generator=g) * mask[:, :, None, :]

    outs, grads = [], []
    for fn in (local_attention_dense, local_attention):
        out = fn(q, k, v, mask, window, rel_pe) * mask[:, :, None, :]
        leaves = [q, k, v] + ([rel_pe] if rel_pe is not None else [])
        grads.append(torch.autograd.grad((out * weight).sum(), leaves))
        outs.append(out.detach())
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    for g_fast, g_dense in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_fast, g_dense, atol=1e-5, rtol=1e-5)


def test_local_attention_never_builds_a_quadratic_matrix():
    """Peak autograd-saved memory grows linearly in T (a T×T float matrix at T = 8192 would be
    256 MiB)."""
    T, window = 8192, 9
    q, k, v = (torch.randn(1, 1, 2, T, requires_grad=True) for _ in range(3))
    mask = torch.ones(1, 1, T, dtype=torch.bool)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        local_attention(q, k, v, mask, window).sum()
    assert max(saved) < 4 * T * window * 4


def test_global_attention_ignores_padded_keys():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 3, 6, generator=g) for _ in range(3))
    mask = _prefix_mask([4], 6)
    out = global_attention(q, k, v, mask)
    logits = torch.einsum("bhdi,bhdj->bhij", q[..., :4], k[..., :4])
    expected = torch.einsum("bhij,bhdj->bhdi", logits.softmax(-1), v[..., :4])
    torch.testing.assert_close(out[..., :4], expected, atol=1e-6, rtol=1e-6)


def test_masked_conv_reads_unmasked_padding_and_zeroes_its_output():
    conv = MaskedConv1D(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.conv.weight.fill_(1.0)
    x = torch.tensor([[[1.0, 2.0, 3.0, 10.0, 20.0, 30.0]]])    # steps 3.. are padding
    mask = _prefix_mask([3], 6)
    out, out_mask = conv(x, mask)
    # last real step sums 2 + 3 + 10: the padded value 10 is read, as in the reference
    assert out.flatten().tolist() == [3.0, 6.0, 15.0, 0.0, 0.0, 0.0]
    assert torch.equal(out_mask, mask)
    # beyond a video's extent the input reads as zero (the tensor border of a shorter padding)
    extent = _prefix_mask([4], 6)
    out, _ = conv(x, mask, extent)
    assert out.flatten().tolist() == [3.0, 6.0, 15.0, 0.0, 0.0, 0.0]
    out, _ = conv(x, _prefix_mask([4], 6), _prefix_mask([4], 6))
    assert out.flatten().tolist() == [3.0, 6.0, 15.0, 13.0, 0.0, 0.0]


def test_strided_masked_conv_downsamples_mask_by_nearest_neighbour():
    conv = MaskedConv1D(1, 1, 3, stride=2, padding=1, bias=False)
    mask = _prefix_mask([5], 8)
    _, out_mask = conv(torch.randn(1, 1, 8), mask)
    assert out_mask.flatten().tolist() == [True, True, True, False]   # mask[0], [2], [4], [6]
    with pytest.raises(ValueError, match="divisible"):
        conv(torch.randn(1, 1, 7), _prefix_mask([7], 7))


def test_layer_norm_over_channels_known_values():
    ln = LayerNorm(3)
    with torch.no_grad():
        ln.weight.copy_(torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1))
        ln.bias.copy_(torch.tensor([0.5, 0.0, -0.5]).view(1, 3, 1))
    x = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]])    # second step all zero: padding
    out = ln(x)
    s = math.sqrt(2.0 / 3.0 + 1e-5)
    expected_first = [0.5 - 1.0 / s, 0.0, -0.5 + 3.0 / s]
    torch.testing.assert_close(out[0, :, 0], torch.tensor(expected_first))
    # a zero (padded) step becomes the bias: the quirk of spec C.2
    assert out[0, :, 1].tolist() == [0.5, 0.0, -0.5]


def test_sinusoid_table_known_values():
    table = sinusoid_position_table(5, 4)
    assert table.shape == (1, 4, 5)
    pos = 3.0
    expected = [math.sin(pos), math.cos(pos), math.sin(pos / 100.0), math.cos(pos / 100.0)]
    torch.testing.assert_close(table[0, :, 3], torch.tensor(expected))


def test_strided_block_pools_over_zero_padding():
    """With the residual branches scaled to zero, a stride-2 block outputs the max-pool of its
    input; at the end of the video the pool sees zeros (padding), at the start −inf (border)."""
    block = TransformerBlock(4, 2, (2, 2), path_pdrop=0.1, mha_win_size=3).eval()
    with torch.no_grad():
        block.drop_path_attn.scale.zero_()
        block.drop_path_mlp.scale.zero_()
    x = -torch.arange(1.0, 9.0).repeat(1, 4, 1)                  # -1 … -8 on every channel
    mask = _prefix_mask([5], 8)
    x = x * mask                                                  # block inputs are 0 on padding
    out, out_mask = block(x, mask)
    assert out_mask.flatten().tolist() == [True, True, True, False]
    # pooled windows: [-inf,-1,-2] [-2,-3,-4] [-4,-5,0]
    assert out[0, 0].tolist() == [-1.0, -2.0, 0.0, 0.0]


def test_drop_path_keeps_or_drops_whole_samples():
    torch.manual_seed(0)
    x = torch.ones(64, 3, 5)
    assert torch.equal(drop_path(x, 0.5, training=False), x)
    out = drop_path(x, 0.5, training=True)
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert all(len(row.unique()) == 1 for row in per_sample)
    layer = AffineDropPath(3, drop_prob=0.1).eval()
    torch.testing.assert_close(layer(x), x * 1e-4)


def test_trunc_normal_is_the_inverse_cdf_of_one_uniform_draw_per_element():
    """u ~ U[2Φ(a/σ) - 1, 2Φ(b/σ) - 1] from the seed, value = σ·√2·erfinv(u): re-derived here
    from the same uniform draws with the float64 error function (erf(value / (σ√2)) = u)."""
    std, a, b = 0.5, -2.0, 2.0
    torch.manual_seed(11)
    values = trunc_normal_(torch.empty(2000), std=std)
    torch.manual_seed(11)
    low, high = (0.5 * (1 + math.erf(t / std / math.sqrt(2))) for t in (a, b))
    uniform = torch.empty(2000).uniform_(2 * low - 1, 2 * high - 1)
    recovered = torch.tensor([math.erf(v / (std * math.sqrt(2))) for v in values.tolist()],
                             dtype=torch.float64)
    torch.testing.assert_close(recovered, uniform.double(), atol=2e-6, rtol=0)
    assert values.min() >= a and values.max() <= b
    assert abs(values.std().item() - std) < 0.02             # cut at ±4σ: almost N(0, σ²)


def test_relative_position_table_draws_after_all_other_weights():
    """``use_rel_pe``: the reference fills ``rel_pe`` (1×1×H×w) last, with its truncated normal
    of std sqrt(2/E): the same module without it, built from the same seed, leaves the random
    stream exactly where the table's uniform draws start."""
    E, H, w = 16, 4, 5
    torch.manual_seed(5)
    attn = LocalMaskedMHCA(E, H, w, use_rel_pe=True)
    torch.manual_seed(5)
    plain = LocalMaskedMHCA(E, H, w)
    weights = dict(attn.named_parameters())
    assert weights.pop("rel_pe") is attn.rel_pe
    assert list(weights) == [n for n, _ in plain.named_parameters()]
    assert all(torch.equal(weights[n], p) for n, p in plain.named_parameters())
    std = math.sqrt(2.0 / E)
    low, high = (0.5 * (1 + math.erf(t / std / math.sqrt(2))) for t in (-2.0, 2.0))
    uniform = torch.empty(1, 1, H, w).uniform_(2 * low - 1, 2 * high - 1)
    expected = (torch.erfinv(uniform) * (std * math.sqrt(2))).clamp(-2.0, 2.0)
    assert torch.equal(attn.rel_pe.detach(), expected)
