"""Fast paths taken in bf16 / fp16 (autocast) == the plain formulation: outputs and gradients.
float32 to 1e-5 where the path can run in float32 too; under bf16 autocast to bf16 rounding
against the plain formulation under the same autocast."""
import pytest
import torch
import torch.nn.functional as F

from libs.modeling.blocks import FastConv1d, reference_formulation
from libs.modeling.kernels import strided_depthwise_conv
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
