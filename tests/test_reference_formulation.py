"""The reference's formulation of local attention (the benchmark baseline kept in
libs/modeling/reference_formulation.py): the same band attention as the readable definition and
the fast kernel, with and without attention-map dropout noise."""
import pytest
import torch

from libs.modeling.attention import local_attention, local_attention_dense
from libs.modeling.reference_formulation import local_attention_chunked
from test_modeling_blocks import _prefix_mask


@pytest.mark.parametrize("T, window", [(4, 5), (6, 3), (16, 9), (36, 19), (38, 19), (12, 4),
                                       (16, 8)])
@pytest.mark.parametrize("heads", [1, 4])
def test_reference_chunked_attention_equals_dense_band_attention(T, window, heads):
    """The benchmark baseline (Longformer-style chunks) computes the same band; lengths must be
    multiples of 2·(w // 2)."""
    g = torch.Generator().manual_seed(T + window + heads)
    q, k, v = (torch.randn(3, heads, 4, T, generator=g, requires_grad=True) for _ in range(3))
    rel_pe = None                                   # relative PE needs an odd window (spec C.6)
    if window % 2 == 1:
        rel_pe = torch.randn(1, 1, heads, window, generator=g, requires_grad=True)
    mask = _prefix_mask([T, T // 2, T], T)
    mask[2, 0, 1::3] = False
    if T % (2 * (window // 2)) != 0:
        with pytest.raises(ValueError, match="divisible by 18"):
            local_attention_chunked(q, k, v, mask, window, rel_pe)
        return
    weight = torch.randn(3, heads, 4, T, generator=g)
    outs = [fn(q, k, v, mask, window, rel_pe) for fn in (local_attention_dense,
                                                         local_attention_chunked)]
    leaves = [q, k, v] + ([rel_pe] if rel_pe is not None else [])
    grads = [torch.autograd.grad((out * weight).sum(), leaves) for out in outs]
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    for g_chunked, g_dense in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_chunked, g_dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T, window", [(16, 5), (24, 9), (12, 4)])
def test_attention_dropout_noise_means_the_same_pairs_in_every_kernel(T, window):
    """``drop`` (B×T×H×w, the reference's layout of the probabilities) multiplies the same
    (query, key) probabilities in the fast kernel as in the chunked one; with a noise of ones
    both give the attention without dropout."""
    g = torch.Generator().manual_seed(T + window)
    B, H, d = 2, 3, 4
    w = 2 * (window // 2) + 1
    q, k, v = (torch.randn(B, H, d, T, generator=g) for _ in range(3))
    mask = _prefix_mask([T, T - 5], T)
    drop = (torch.rand(B, T, H, w, generator=g) > 0.3).float() / 0.7
    chunked = local_attention_chunked(q, k, v, mask, window, None, drop)
    fast = local_attention(q, k, v, mask, window, None, drop) * mask[:, :, None, :]
    torch.testing.assert_close(fast, chunked, atol=1e-5, rtol=1e-5)
    no_drop = local_attention_dense(q, k, v, mask, window)
    ones = torch.ones(B, T, H, w)
    torch.testing.assert_close(local_attention_chunked(q, k, v, mask, window, None, ones),
                               no_drop, atol=1e-5, rtol=1e-5)
    assert (fast - no_drop).abs().max() > 1e-2
    # known answer: with q = 0 the probabilities are uniform over the real keys in the window;
    # keeping only slot h (key = the query itself) leaves v_i / (number of those keys)
    keep_self = torch.zeros(B, T, H, w)
    keep_self[..., window // 2] = 1.0
    h = window // 2
    offsets = torch.arange(T)[None, :] - torch.arange(T)[:, None]
    in_window = (offsets.abs() <= h)[None] & mask                          # B×T×T
    expected = v / in_window.sum(-1).clamp(min=1)[:, None, None, :] * mask[:, :, None, :]
    zero_q = torch.zeros_like(q)
    for kernel in (local_attention, local_attention_chunked):
        out = kernel(zero_q, k, v, mask, window, None, keep_self) * mask[:, :, None, :]
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
