"""Autograd functions with hand-written backward passes (libs/modeling/kernels.py) and the fast
paths built on them == the plain formulation, outputs and gradients: float32 (float64 for
gradcheck) to 1e-5, and under bf16 / fp16 autocast to low-precision rounding against the plain
formulation under the same autocast."""
import pytest
import torch
import torch.nn.functional as F

from libs.modeling.attention import local_attention
from libs.modeling.blocks import FastConv1d, reference_formulation
from libs.modeling.kernels import chunk_spans, strided_depthwise_conv
from libs.modeling.reference_formulation import local_attention_chunked
from test_fast_paths import _close, single_thread  # noqa: F401  (autouse fixture: one thread)


def _grads(run, leaves, seed=5):
    out = run()
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    grads = torch.autograd.grad((out.float() * weight).sum(), leaves)
    return [out.detach().float()] + [g.float() for g in grads]


@pytest.mark.parametrize("k, stride, bias", [(3, 2, False), (3, 2, True), (5, 4, True)])
def test_strided_depthwise_conv_equals_conv2d_in_float32(k, stride, bias):
    g = torch.Generator().manual_seed(k + stride)
    x = torch.randn(2, 16, 6, generator=g).transpose(1, 2).unsqueeze(2).requires_grad_()
    x4 = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(6, 1, 1, k, generator=g, requires_grad=True)
    b = torch.randn(6, generator=g, requires_grad=True) if bias else None
    leaves = [x4, w] + ([b] if bias else [])
    ours = _grads(lambda: strided_depthwise_conv(x4, w, b, stride), leaves)
    plain = _grads(lambda: F.conv2d(x4, w, b, (1, stride), (0, k // 2), groups=6), leaves)
    for a, p in zip(ours, plain):
        _close(a, p, 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [False, True])
def test_strided_depthwise_fast_conv_under_autocast_equals_plain(dtype, bias):
    """FastConv1d takes the custom backward under autocast; the plain Conv1d under the same
    autocast gives the same outputs and gradients (input, weight, bias) to low-precision
    rounding, and the output dtype is autocast's."""
    torch.manual_seed(0)
    conv = FastConv1d(8, 8, 3, stride=2, groups=8, bias=bias)
    x = torch.randn(2, 20, 8).transpose(1, 2).requires_grad_()     # channels-last, as in blocks
    leaves = [x] + list(conv.parameters())
    results = []
    for plain in (False, True):
        with reference_formulation(plain), torch.autocast("cpu", dtype=dtype):
            results.append(_grads(lambda: conv(x), leaves))
            assert conv(x).dtype == dtype
    for a, p in zip(*results):
        _close(a, p, 1e-2)


@pytest.mark.parametrize("T, chunk, halo", [(23, 10, 2), (20, 10, 4), (5, 6, 2), (40, 10, 9),
                                            (23, 10, 0), (20, 10, 0)])
def test_chunk_spans_equal_pad_and_unfold(T, chunk, halo):
    """Spans == zero-padded unfold (exactly); the gradient is the unfold's (gradcheck in
    float64) and comes back in the input's memory layout (a view of a B×T×H×d buffer)."""
    g = torch.Generator().manual_seed(T + halo)
    x = torch.randn(2, T, 3, 4, generator=g, dtype=torch.float64).permute(0, 2, 1, 3)
    x.requires_grad_()
    n = -(-T // chunk)
    plain = F.pad(x, (0, 0, halo, halo + n * chunk - T)).unfold(-2, chunk + 2 * halo, chunk)
    spans = chunk_spans(x, chunk, halo)
    assert spans.is_contiguous() and torch.equal(spans, plain.transpose(-1, -2))
    weight = torch.randn(spans.shape, generator=g, dtype=torch.float64)
    grad, = torch.autograd.grad((spans * weight).sum(), x)
    assert grad.stride() == x.stride()
    assert torch.autograd.gradcheck(lambda t: chunk_spans(t, chunk, halo), (x,))


@pytest.mark.parametrize("T, window", [(24, 9), (37, 5)])
def test_local_attention_under_bf16_autocast_equals_the_chunked_formulation(T, window):
    """Inputs as the attention module gives them (views of channels-last projections), bf16:
    output and gradients of q, k, v match the reference's chunked formulation to bf16
    rounding, and the gradients keep the inputs' layout."""
    g = torch.Generator().manual_seed(T)
    B, H, d = 2, 2, 8
    T_chunked = -(-T // (2 * (window // 2))) * 2 * (window // 2)    # chunked needs T % 2h == 0
    mask = (torch.arange(T_chunked)[None, :] < torch.tensor([T, T - 6])[:, None])[:, None, :]
    q, k, v = (torch.randn(B, T_chunked, H, d, generator=g).to(torch.bfloat16)
               .permute(0, 2, 3, 1).requires_grad_() for _ in range(3))
    weight = torch.randn(B, H, d, T_chunked, generator=g) * mask[:, :, None, :]
    results = []
    for kernel in (local_attention, local_attention_chunked):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = kernel(q, k, v, mask, window)
        grads = torch.autograd.grad((out.float() * weight).sum(), (q, k, v))
        results.append([out.float() * mask[:, :, None, :]] + [t.float() for t in grads])
        if kernel is local_attention:
            assert out.dtype == torch.bfloat16 and out.flatten(1, 2).transpose(1, 2).is_contiguous()
            assert all(t.stride() == q.stride() for t in grads)
    for a, p in zip(*results):
        _close(a, p, 2e-2)
