"""Building blocks of the ActionFormer model.

Every tensor is channel-first: features ``B×C×T``, masks ``B×1×T`` (bool, True on real steps).
Lengths are feature-grid steps of the level the tensor lives on.

Padding semantics. A *padded* step lies inside a video's padded extent but after
its last real step; the reference leaves LayerNorm biases there and convolutions at the end of
the video read them. A step *beyond the extent* exists only because a shorter video shares a
batch with a longer one; it must look like the tensor border. Modules therefore take an optional
``extent`` mask (``B×1×T`` bool, True inside each video's own padded extent; ``None`` = the whole
tensor): convolutions with a kernel wider than 1 see zeros beyond it. Nothing else needs it:
stride-2 convolutions and max-pools of an even extent never read past it, attention masks those
keys anyway, and every masked output is zero there.

Memory layout (GitHub issue #7). Shapes stay ``B×C×T``, but the fast paths keep the *memory*
channels-last (strides ``(T·C, 1, C)``, i.e. a ``B×T×C`` buffer seen through ``transpose(1, 2)``):
1×1 convolutions become one GEMM (``F.linear``; in float32 on the CPU a oneDNN NHWC
convolution, faster there), LayerNorm becomes the fused ``F.layer_norm``,
depthwise convolutions, max-pools and k-tap convolutions after a LayerNorm run channels-last
(NHWC); element-wise ops keep the layout. Only the first embedding convolution reads the model's
channel-first features as they are. Local attention is an O(T·w) band (:func:`local_attention`).
The reference's plain channel-first formulation is kept next to each fast path as
``forward_reference`` (attention: ``reference_formulation.local_attention_chunked``);
:func:`reference_formulation` runs the whole model with it (benchmark baseline;
``tests/test_fast_paths.py`` proves both agree to 1e-5, outputs and gradients, and give the same
losses seed for seed with dropout and drop-path: every random mask is drawn in the reference's
layout and order, see :class:`Dropout`).

The reference's building blocks keep its constructor and forward signatures (positional order,
keyword names, defaults): :class:`MaskedConv1D`, :class:`LayerNorm`, :class:`MaskedMHA`,
:class:`MaskedMHCA`, :class:`LocalMaskedMHCA`, :class:`TransformerBlock`, :class:`ConvBlock`,
:class:`Scale`, :class:`DropPath`, :class:`AffineDropPath`; forwards take an optional trailing
``extent``.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import global_attention, local_attention, local_attention_dense
from .kernels import strided_depthwise_conv
from .reference_formulation import local_attention_chunked
from .weight_init import trunc_normal_

__all__ = [
    "reference_formulation", "reference_formulation_active", "inference_chunk_steps",
    "chunked_inference_applies", "map_time_chunks", "downsample_mask", "MaskedConv1D", "FastConv1d",
    "ChannelsLastMaxPool1d", "LayerNorm", "sinusoid_position_table", "get_sinusoid_encoding",
    "local_attention", "local_attention_dense", "global_attention", "Dropout", "MaskedMHA",
    "MaskedMHCA", "LocalMaskedMHCA", "TransformerBlock", "ConvBlock", "Scale", "drop_path",
    "DropPath", "AffineDropPath",
]

_REFERENCE_MODE = [False]


@contextmanager
def _overridden(setting: list, value: object) -> Iterator[None]:
    """Set the one-element module setting ``setting`` to ``value`` within the context."""
    previous = setting[0]
    setting[0] = value
    try:
        yield
    finally:
        setting[0] = previous


def reference_formulation(enabled: bool = True) -> ContextManager[None]:
    """Within this context every module runs its ``forward_reference`` (the reference's plain
    channel-first formulation) and local attention runs
    :func:`local_attention_chunked`, instead of the fast paths. For benchmarks and equivalence
    tests; not thread-safe."""
    return _overridden(_REFERENCE_MODE, enabled)


def reference_formulation_active() -> bool:
    """True inside :func:`reference_formulation`."""
    return _REFERENCE_MODE[0]


# Inference (eval mode, no autograd) on long inputs runs the local parts of the network (embedding,
# Transformer blocks with local attention, MLPs, heads) over chunks of this many steps plus halos:
# their temporaries then take memory for one chunk instead of the whole video (issue #7).
_INFERENCE_CHUNK = [4096]


def inference_chunk_steps(steps: Optional[int]) -> ContextManager[None]:
    """Within this context, inference cuts inputs of at least ``2·steps`` steps into chunks of
    ``steps`` (None: never). Default 4,096. Results agree with unchunked inference to float32
    rounding."""
    if steps is not None and steps < 1:
        raise ValueError(f"inference chunks need at least 1 step, got {steps}")
    return _overridden(_INFERENCE_CHUNK, steps)


def chunked_inference_applies(length: int, training: bool) -> bool:
    """True when a module (``training``: its mode) processes a ``length``-step input in chunks:
    eval mode without autograd, fast paths, and at least twice the chunk size (so that a chunk
    with halos shorter than half a chunk is not cut again)."""
    steps = _INFERENCE_CHUNK[0]
    return (steps is not None and length >= 2 * steps and not training
            and not torch.is_grad_enabled() and not _REFERENCE_MODE[0])


def map_time_chunks(fn: Callable[..., Tensor], inputs: Sequence[Optional[Tensor]],
                    halo: int, stride: int = 1) -> Tensor:
    """``fn(*inputs)`` for a local ``fn``, computed chunk by chunk along time.

    inputs: ``B×·×T`` tensors (or None) sliced along time; ``fn`` maps ``t`` input steps to a
    ``B×C×t/stride`` output whose step i depends on input steps
    ``[stride·i - halo, stride·i + halo]`` only (``halo`` a multiple of ``stride``). Each output
    chunk is computed from an input slice reaching ``halo`` steps beyond it on both sides (never
    beyond the tensor, whose borders stay borders), so it sees what it sees in the whole
    tensor. Returns ``B×C×T/stride`` in channels-last memory.
    """
    if halo % stride != 0:
        raise ValueError(f"halo {halo} is not a multiple of the stride {stride}")
    steps = _INFERENCE_CHUNK[0]
    T = next(t for t in inputs if t is not None).shape[-1]
    T_out = T // stride
    out = None
    for start in range(0, T_out, steps):
        stop = min(T_out, start + steps)
        lo, hi = max(0, stride * start - halo), min(T, stride * stop + halo)
        part = fn(*[None if t is None else t[..., lo:hi] for t in inputs])
        if out is None:
            out = part.new_empty(part.shape[0], T_out, part.shape[1]).transpose(1, 2)
        first = start - lo // stride
        out[..., start:stop] = part[..., first:first + stop - start]
    return out


def _channels_last(x: Tensor) -> Tensor:
    """``B×C×T`` -> contiguous ``B×T×C`` buffer (no copy when ``x`` is channels-last already)."""
    return x.transpose(1, 2).contiguous()


def _is_channels_last(x: Tensor) -> bool:
    """True when ``B×C×T`` ``x`` lies in memory as a contiguous ``B×T×C`` buffer."""
    return x.shape[1] > 1 and x.transpose(1, 2).is_contiguous()


_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a convolution of ``x`` computes in: autocast's, when enabled, else ``x``'s."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def _low_precision_cpu(x: Tensor) -> bool:
    """True when a convolution of ``x`` runs in bf16 / fp16 on the CPU (where oneDNN's strided
    depthwise backward is slow; GPUs were not measured and keep the plain call)."""
    return x.device.type == "cpu" and _compute_dtype(x) in _LOW_PRECISION


def _fp32_cpu(x: Tensor) -> bool:
    """True when a convolution of ``x`` runs in float32 on the CPU, where oneDNN's NHWC 1×1
    convolution beats the BLAS GEMM (2x with two threads on an AMD EPYC, whose MKL GEMM scales
    poorly; level on one thread)."""
    return x.device.type == "cpu" and _compute_dtype(x) == torch.float32


def downsample_mask(mask: Optional[Tensor], stride: int) -> Optional[Tensor]:
    """Nearest-neighbour down-sampling of a ``B×1×T`` mask: ``out[i] = mask[stride·i]``."""
    if mask is None or stride == 1:
        return mask
    return mask[:, :, ::stride]


class MaskedConv1D(nn.Module):
    """``Conv1d`` (odd kernel k, padding k//2) whose output is zeroed on padded steps.

    The reference's signature: ``padding`` must be ``kernel_size // 2``; ``dilation`` 1 and
    ``padding_mode`` 'zeros' are the only supported values.
    forward: x ``B×C_in×T``, mask ``B×1×T`` [, extent] -> (``B×C_out×T/s``, mask ``B×1×T/s``).
    The input itself is not masked, so padded steps carrying non-zero values (LayerNorm biases)
    are read at the end of the video exactly as in the reference. The bias starts at 0.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        if kernel_size % 2 != 1 or padding != kernel_size // 2:
            raise ValueError(f"MaskedConv1D needs an odd kernel size and padding = kernel_size "
                             f"// 2, got kernel_size {kernel_size}, padding {padding}")
        if dilation != 1 or padding_mode != "zeros":
            raise ValueError(f"MaskedConv1D supports dilation 1 and padding_mode 'zeros' only, "
                             f"got {dilation} and {padding_mode!r}")
        self.stride = stride
        self.conv = FastConv1d(in_channels, out_channels, kernel_size, stride, groups, bias)
        if bias:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor, mask: Tensor, extent: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor]:
        if x.shape[-1] % self.stride != 0:
            raise ValueError(f"sequence length {x.shape[-1]} is not divisible by the conv "
                             f"stride {self.stride}")
        if extent is not None and self.conv.kernel_size[0] > 1:
            x = x * extent.to(x.dtype)
        out_mask = downsample_mask(mask, self.stride)
        out = self.conv(x)
        return out * out_mask.to(out.dtype), out_mask


class FastConv1d(nn.Conv1d):
    """``Conv1d`` with padding ``k//2`` (same parameters and checkpoint names), computed in the
    cheapest memory layout.

    forward: x ``B×C_in×T`` (any layout) -> ``B×C_out×T/stride``. 1×1 kernels run as one GEMM
    on the (strided) steps, except in float32 on the CPU; those, depthwise kernels, and dense
    k-tap kernels on channels-last input (head and second embedding convs, after a LayerNorm)
    run as a channels-last (NHWC) 2-D conv; all of these return channels-last memory. A dense
    kernel on channel-first input (the raw features) stays a channel-first ``conv1d``. Measured
    on this CPU (fp32 and bf16, forward and backward), each beats both the other layout and a
    GEMM over a k-step window. Strided depthwise kernels in bf16 / fp16 on the CPU take
    :func:`~libs.modeling.kernels.strided_depthwise_conv` (same numbers, a 10x faster backward).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 stride: int = 1, groups: int = 1, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         padding=kernel_size // 2, groups=groups, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if _REFERENCE_MODE[0]:
            return self.forward_reference(x)
        k, stride = self.kernel_size[0], self.stride[0]
        if k == 1 and self.groups == 1 and not _fp32_cpu(x):
            return F.linear(_channels_last(x)[:, ::stride], self.weight.squeeze(-1),
                            self.bias).transpose(1, 2)
        if self.groups > 1 or _is_channels_last(x) or k == 1:
            x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
            if stride > 1 and self.groups == self.out_channels and _low_precision_cpu(x):
                return self._strided_depthwise(x4, _compute_dtype(x)).squeeze(2)
            return F.conv2d(x4, self.weight.unsqueeze(2), self.bias, (1, stride), (0, k // 2),
                            groups=self.groups).squeeze(2)
        return super().forward(x)

    def _strided_depthwise(self, x4: Tensor, dtype: torch.dtype) -> Tensor:
        """The depthwise conv of channels-last ``B×C×1×T`` ``x4`` in ``dtype`` (cast as autocast
        casts) with the cheaper backward of :func:`strided_depthwise_conv`."""
        bias = None if self.bias is None else self.bias.to(dtype)
        return strided_depthwise_conv(x4.to(dtype), self.weight.to(dtype).unsqueeze(2), bias,
                                      self.stride[0])

    def forward_reference(self, x: Tensor) -> Tensor:
        """Plain definition: ``Conv1d`` on the channel-first input."""
        return super().forward(x)


class ChannelsLastMaxPool1d(nn.MaxPool1d):
    """``MaxPool1d`` (−∞ padding at the tensor border) that keeps channels-last memory.

    forward: x ``B×C×T`` -> ``B×C×T'``; runs as a 1×k 2-D pool on the ``B×C×1×T`` view.
    """

    def forward(self, x: Tensor) -> Tensor:
        if _REFERENCE_MODE[0]:
            return self.forward_reference(x)
        x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        return F.max_pool2d(x4, (1, self.kernel_size), (1, self.stride),
                            (0, self.padding)).squeeze(2)

    def forward_reference(self, x: Tensor) -> Tensor:
        """Plain definition: ``MaxPool1d`` on the channel-first input."""
        return super().forward(x)


class LayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``B×C×T``.

    ``y = (x - mean_c) / sqrt(var_c + eps) · weight + bias`` (biased variance); weight and bias
    have shape ``1×C×1`` (checkpoint layout). Computed by the fused ``F.layer_norm``
    on the channels-last buffer (output channels-last); :meth:`forward_reference` writes it out
    as the reference does.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
                 ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        if affine:
            factory = {"device": device, "dtype": dtype}
            self.weight = nn.Parameter(torch.ones(1, num_channels, 1, **factory))
            self.bias = nn.Parameter(torch.zeros(1, num_channels, 1, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        if _REFERENCE_MODE[0]:
            return self.forward_reference(x)
        weight = bias = None
        if self.weight is not None:
            weight, bias = self.weight.view(-1), self.bias.view(-1)
        return F.layer_norm(_channels_last(x), (self.num_channels,), weight, bias,
                            self.eps).transpose(1, 2)

    def forward_reference(self, x: Tensor) -> Tensor:
        """Plain definition: eight element-wise passes over the channel-first tensor."""
        centred = x - x.mean(dim=1, keepdim=True)
        var = (centred ** 2).mean(dim=1, keepdim=True)
        out = centred / torch.sqrt(var + self.eps)
        if self.weight is not None:
            out = out * self.weight + self.bias
        return out


def sinusoid_position_table(length: int, dim: int) -> Tensor:
    """Absolute position table ``1×dim×length`` (float32), before the 1/sqrt(dim) scaling.

    ``PE[2i, pos] = sin(pos / 10000^(2i/dim))``, ``PE[2i+1, pos] = cos(same)``; computed in
    float64.
    """
    pos = np.arange(length, dtype=np.float64)[:, None]
    denom = np.power(10000, 2 * (np.arange(dim) // 2) / dim)
    angles = pos / denom
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return torch.from_numpy(angles).float().T.unsqueeze(0).contiguous()


def get_sinusoid_encoding(n_position: int, d_hid: int) -> Tensor:
    """The reference's name of :func:`sinusoid_position_table`: ``1×d_hid×n_position``."""
    return sinusoid_position_table(n_position, d_hid)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask falls on the reference's elements for a given seed.

    The random draws follow the logical (channel-first) order of the tensor, as they do on the
    reference's contiguous tensors, whatever the memory layout of the input (a channels-last
    input keeps its layout). :meth:`noise` gives the multiplier alone, for attention maps that
    the fast kernels hold in another layout.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.active or x.is_contiguous():
            return super().forward(x)
        if x.device.type != "cpu":
            return x * self.noise(x.shape, x)
        # CPU dropout is one Bernoulli draw per element in logical order; draw the keep mask as
        # bytes and copy it into x's layout (cheaper than a float noise of the other layout)
        keep = torch.empty(x.shape, dtype=torch.bool).bernoulli_(1 - self.p)
        keep = torch.empty_like(x, dtype=torch.bool).copy_(keep)
        return x * (keep * x.new_tensor(1.0).div_(1 - self.p))

    @property
    def active(self) -> bool:
        """True when the module drops anything (training mode and p > 0)."""
        return self.training and self.p > 0.0

    def noise(self, shape: Sequence[int], like: Tensor) -> Tensor:
        """The multiplier (0 or 1/(1-p)) that dropout draws for a contiguous tensor of ``shape``
        (``like``'s dtype and device), consuming the same random numbers."""
        return F.dropout(like.new_ones(shape), self.p, training=True)


# --------------------------------------------------------------------------------------------
# Attention modules: the reference's MaskedMHA, MaskedMHCA and LocalMaskedMHCA
# --------------------------------------------------------------------------------------------
class _AttentionBase(nn.Module):
    """Projections, dropouts and the attention step shared by the attention modules."""

    window_size = -1                               # <= 1: global attention

    def _set_heads(self, n_embd: int, n_head: int) -> None:
        if n_embd % n_head != 0:
            raise ValueError(f"embedding width {n_embd} is not divisible by {n_head} heads")
        self.n_embd = n_embd
        self.n_head = n_head
        self.n_channels = n_embd // n_head
        self.scale = 1.0 / math.sqrt(self.n_channels)
        self.rel_pe: Optional[nn.Parameter] = None

    def _build_projections(self, n_embd: int, n_head: int, attn_pdrop: float,
                           proj_pdrop: float) -> None:
        """1×1 ``key``, ``query``, ``value`` convs, dropouts and the output conv ``proj``
        (created in the reference's order: same initial weights for a seed)."""
        self.key = FastConv1d(n_embd, n_embd)
        self.query = FastConv1d(n_embd, n_embd)
        self.value = FastConv1d(n_embd, n_embd)
        self.attn_drop = Dropout(attn_pdrop)
        self.proj_drop = Dropout(proj_pdrop)
        self.proj = FastConv1d(n_embd, n_embd)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, kv_mask: Tensor) -> Tensor:
        """Projected ``B×E×T`` q, k, v -> attention output ``B×E×T`` (before ``proj``)."""
        heads = (self.n_head, self.n_channels)     # channel c -> head c // d (any layout)
        q, k, v = q.unflatten(1, heads) * self.scale, k.unflatten(1, heads), v.unflatten(1, heads)
        B, T = q.shape[0], q.shape[-1]
        if self.window_size > 1:
            slots = 2 * (self.window_size // 2) + 1
            drop = self.attn_drop.noise((B, T, self.n_head, slots), q) \
                if self.attn_drop.active else None
            attend = local_attention_chunked if _REFERENCE_MODE[0] else local_attention
            out = attend(q, k, v, kv_mask, self.window_size, self.rel_pe, drop)
        else:
            drop = self.attn_drop.noise((B, self.n_head, T, k.shape[-1]), q) \
                if self.attn_drop.active else None
            out = global_attention(q, k, v, kv_mask, drop)
        return out.flatten(1, 2)


class MaskedMHA(_AttentionBase):
    """Multi-head self-attention over the real steps (global).

    forward: x ``B×E×T``, mask ``B×1×T`` -> (``B×E×T`` zero on padded steps, mask).
    """

    def __init__(self, n_embd: int, n_head: int, attn_pdrop: float = 0.0,
                 proj_pdrop: float = 0.0) -> None:
        super().__init__()
        self._set_heads(n_embd, n_head)
        self._build_projections(n_embd, n_head, attn_pdrop, proj_pdrop)

    def forward(self, x: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        out = self._attend(self.query(x), self.key(x), self.value(x), mask)
        out = self.proj_drop(self.proj(out))
        return out * mask.to(out.dtype), mask


class MaskedMHCA(_AttentionBase):
    """Multi-head *conv* attention with masking and optional down-sampling, global.

    forward: x ``B×E×T`` (the block's LayerNorm output), mask ``B×1×T`` ->
    (``B×E×T/s``, mask ``B×1×T/s``), ``s = n_kv_stride``. Depthwise strided convs + LayerNorm
    give q, k, v; 1×1 convs project them; output 1×1 conv ``proj``. As in the reference, the
    query conv takes its kernel (``n_qx_stride + 1``, or 3) from ``n_qx_stride`` and its stride
    from ``n_kv_stride``; the Transformer block uses equal strides.
    """

    def __init__(self, n_embd: int, n_head: int, n_qx_stride: int = 1, n_kv_stride: int = 1,
                 attn_pdrop: float = 0.0, proj_pdrop: float = 0.0) -> None:
        super().__init__()
        for stride in (n_qx_stride, n_kv_stride):
            if stride > 1 and stride % 2 != 0:
                raise ValueError(f"attention down-sampling stride must be 1 or even, got {stride}")
        self._set_heads(n_embd, n_head)
        self.n_qx_stride = n_qx_stride
        self.n_kv_stride = n_kv_stride
        self.query_conv = self._depthwise(n_embd, n_qx_stride, n_kv_stride)
        self.query_norm = LayerNorm(n_embd)
        self.key_conv = self._depthwise(n_embd, n_kv_stride, n_kv_stride)
        self.key_norm = LayerNorm(n_embd)
        self.value_conv = self._depthwise(n_embd, n_kv_stride, n_kv_stride)
        self.value_norm = LayerNorm(n_embd)
        self._build_projections(n_embd, n_head, attn_pdrop, proj_pdrop)

    @staticmethod
    def _depthwise(n_embd: int, kernel_stride: int, stride: int) -> "MaskedConv1D":
        kernel = kernel_stride + 1 if kernel_stride > 1 else 3
        return MaskedConv1D(n_embd, n_embd, kernel, stride=stride, padding=kernel // 2,
                            groups=n_embd, bias=False)

    @property
    def stride(self) -> int:
        """Down-sampling factor of the output (the query conv's stride)."""
        return self.n_kv_stride

    def forward(self, x: Tensor, mask: Tensor, extent: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor]:
        q, qx_mask = self.query_conv(x, mask, extent)
        k, kv_mask = self.key_conv(x, mask, extent)
        v, _ = self.value_conv(x, mask, extent)
        q = self.query(self.query_norm(q))
        k = self.key(self.key_norm(k))
        v = self.value(self.value_norm(v))
        out = self.proj_drop(self.proj(self._attend(q, k, v, kv_mask)))
        return out * qx_mask.to(out.dtype), qx_mask


class LocalMaskedMHCA(MaskedMHCA):
    """:class:`MaskedMHCA` with local attention: query i attends to keys within
    ``window_size // 2`` steps, plus an optional learnt relative position bias ``rel_pe``
    (``1×1×H×window_size``, odd windows only; truncated-normal init with std sqrt(2/E))."""

    def __init__(self, n_embd: int, n_head: int, window_size: int, n_qx_stride: int = 1,
                 n_kv_stride: int = 1, attn_pdrop: float = 0.0, proj_pdrop: float = 0.0,
                 use_rel_pe: bool = False) -> None:
        if window_size <= 1:
            raise ValueError(f"local attention needs a window of at least 2, got {window_size}")
        if use_rel_pe and window_size % 2 == 0:
            raise ValueError(f"relative position encoding needs an odd window, got {window_size}")
        super().__init__(n_embd, n_head, n_qx_stride, n_kv_stride, attn_pdrop, proj_pdrop)
        self.window_size = window_size
        self.window_overlap = window_size // 2
        self.use_rel_pe = use_rel_pe
        if use_rel_pe:
            self.rel_pe = nn.Parameter(torch.zeros(1, 1, n_head, window_size))
            trunc_normal_(self.rel_pe, std=(2.0 / n_embd) ** 0.5)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------
class TransformerBlock(nn.Module):
    """Pre-LN Transformer block with optional strided down-sampling.

    forward: x ``B×E×T``, mask ``B×1×T`` [, pos_embd ``·×E×T/s`` added to the output on real
    steps] -> (``B×E×T/s``, mask ``B×1×T/s``); outputs are exactly zero on padded steps. The
    attention is :class:`LocalMaskedMHCA` for ``mha_win_size > 1``, else :class:`MaskedMHCA`
    (``use_rel_pe`` applies to local attention only). The stride-s skip is a max-pool over the
    zero-padded input (−inf only at the tensor border).
    """

    def __init__(self, n_embd: int, n_head: int, n_ds_strides: Sequence[int] = (1, 1),
                 n_out: Optional[int] = None, n_hidden: Optional[int] = None,
                 act_layer: Callable[[], nn.Module] = nn.GELU, attn_pdrop: float = 0.0,
                 proj_pdrop: float = 0.0, path_pdrop: float = 0.0, mha_win_size: int = -1,
                 use_rel_pe: bool = False) -> None:
        super().__init__()
        if len(n_ds_strides) != 2 or n_ds_strides[0] != n_ds_strides[1]:
            raise ValueError(f"n_ds_strides must be two equal strides (query/skip and key/value),"
                             f" got {tuple(n_ds_strides)}")
        stride = n_ds_strides[0]
        n_hidden = 4 * n_embd if n_hidden is None else n_hidden
        n_out = n_embd if n_out is None else n_out
        self.ln1 = LayerNorm(n_embd)
        self.ln2 = LayerNorm(n_embd)
        if mha_win_size > 1:
            self.attn = LocalMaskedMHCA(n_embd, n_head, mha_win_size, stride, stride,
                                        attn_pdrop, proj_pdrop, use_rel_pe)
        else:
            self.attn = MaskedMHCA(n_embd, n_head, stride, stride, attn_pdrop, proj_pdrop)
        if stride > 1:
            self.pool_skip = ChannelsLastMaxPool1d(stride + 1, stride=stride,
                                                   padding=(stride + 1) // 2)
        else:
            self.pool_skip = nn.Identity()
        self.mlp = nn.Sequential(
            FastConv1d(n_embd, n_hidden), act_layer(), Dropout(proj_pdrop),
            FastConv1d(n_hidden, n_out), Dropout(proj_pdrop))
        if path_pdrop > 0.0:
            self.drop_path_attn = AffineDropPath(n_embd, drop_prob=path_pdrop)
            self.drop_path_mlp = AffineDropPath(n_out, drop_prob=path_pdrop)
        else:
            self.drop_path_attn = nn.Identity()
            self.drop_path_mlp = nn.Identity()

    def forward(self, x: Tensor, mask: Tensor, pos_embd: Optional[Tensor] = None,
                extent: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        window, stride = self.attn.window_size, self.attn.stride
        if window > 1 and chunked_inference_applies(x.shape[-1], self.training):
            # output step t reads x on [s·(t - h) - s/2, s·(t + h) + s/2] (window, q/k/v convs
            # of kernel s + 1 or 3, pooled skip); halo rounded up to a multiple of the stride s
            out = map_time_chunks(lambda *xs: self._forward(*xs)[0], (x, mask, extent),
                                  halo=stride * (window // 2 + 1), stride=stride)
            out_mask = downsample_mask(mask, stride)
        else:
            out, out_mask = self._forward(x, mask, extent)
        if pos_embd is not None:
            out = out + pos_embd * out_mask.to(out.dtype)
        return out, out_mask

    def _forward(self, x: Tensor, mask: Tensor, extent: Optional[Tensor]
                 ) -> Tuple[Tensor, Tensor]:
        out, out_mask = self.attn(self.ln1(x), mask, extent)
        keep = out_mask.to(out.dtype)
        out = self.pool_skip(x) * keep + self.drop_path_attn(out)
        if chunked_inference_applies(out.shape[-1], self.training):   # the MLP is step-wise
            mlp_out = map_time_chunks(lambda y: self.mlp(self.ln2(y)), (out,), halo=0)
        else:
            mlp_out = self.mlp(self.ln2(out))
        out = out + self.drop_path_mlp(mlp_out * keep)
        return out, out_mask


class ConvBlock(nn.Module):
    """ResNet basic block for the ``conv`` backbone.

    forward: x ``B×E×T``, mask [, pos_embd (ignored, as in the reference)] ->
    (``B×E_out×T/s``, mask). ``out = act(conv2(act(conv1(x))) + res)`` with res = x (s = 1) or a
    strided 1×1 masked conv; the output is not re-masked.
    """

    def __init__(self, n_embd: int, kernel_size: int = 3, n_ds_stride: int = 1,
                 expansion_factor: int = 2, n_out: Optional[int] = None,
                 act_layer: Callable[[], nn.Module] = nn.ReLU) -> None:
        super().__init__()
        if kernel_size % 2 != 1 or kernel_size <= 1:
            raise ValueError(f"ConvBlock needs an odd kernel size > 1, got {kernel_size}")
        n_out = n_embd if n_out is None else n_out
        width = n_embd * expansion_factor
        padding = kernel_size // 2
        self.stride = n_ds_stride
        self.conv1 = MaskedConv1D(n_embd, width, kernel_size, n_ds_stride, padding=padding)
        self.conv2 = MaskedConv1D(width, n_out, kernel_size, 1, padding=padding)
        self.downsample = MaskedConv1D(n_embd, n_out, 1, n_ds_stride) if n_ds_stride > 1 \
            else None
        self.act = act_layer()

    def forward(self, x: Tensor, mask: Tensor, pos_embd: Optional[Tensor] = None,
                extent: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        out, out_mask = self.conv1(x, mask, extent)
        out, out_mask = self.conv2(self.act(out), out_mask, downsample_mask(extent, self.stride))
        residual = x if self.downsample is None else self.downsample(x, mask)[0]
        return self.act(out + residual), out_mask


class Scale(nn.Module):
    """A learnable scalar multiplier (0-d parameter ``scale``), init 1.0."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(init_value, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False) -> Tensor:
    """Stochastic depth per sample: drop whole samples with prob ``drop_prob``, rescale the rest.
    One uniform draw per sample (``B×1×…``), so the memory layout of ``x`` plays no part."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = (keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)).floor_()
    return x.div(keep_prob) * keep


class DropPath(nn.Module):
    """:func:`drop_path` as a module."""

    def __init__(self, drop_prob: Optional[float] = None) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)


class AffineDropPath(nn.Module):
    """``drop_path(scale · x)`` with a learnable per-channel ``scale`` (``1×C×1``, init 1e-4)."""

    def __init__(self, num_dim: int, drop_prob: float = 0.0,
                 init_scale_value: float = 1e-4) -> None:
        super().__init__()
        self.scale = nn.Parameter(init_scale_value * torch.ones((1, num_dim, 1)))
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(self.scale * x, self.drop_prob, self.training)
