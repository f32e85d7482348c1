"""Building blocks of the ActionFormer model (spec C.2, C.4-C.7).

Every tensor is channel-first: features ``B×C×T``, masks ``B×1×T`` (bool, True on real steps).
Lengths are feature-grid steps of the level the tensor lives on.

Padding semantics (spec C.2, C.11). A *padded* step lies inside a video's padded extent but after
its last real step; the reference leaves LayerNorm biases there and convolutions at the end of
the video read them. A step *beyond the extent* exists only because a shorter video shares a
batch with a longer one; it must look like the tensor border. Modules therefore take an optional
``extent`` mask (``B×1×T`` bool, True inside each video's own padded extent; ``None`` = the whole
tensor): convolutions with a kernel wider than 1 see zeros beyond it. Nothing else needs it:
stride-2 convolutions and max-pools of an even extent never read past it, attention masks those
keys anyway, and every masked output is zero there.

Memory layout (GitHub issue #7). Shapes stay ``B×C×T``, but the fast paths keep the *memory*
channels-last (strides ``(T·C, 1, C)``, i.e. a ``B×T×C`` buffer seen through ``transpose(1, 2)``):
1×1 convolutions become one GEMM (``F.linear``), LayerNorm becomes the fused ``F.layer_norm``,
depthwise convolutions, max-pools and k-tap convolutions after a LayerNorm run channels-last
(NHWC); element-wise ops keep the layout. Only the first embedding convolution reads the model's
channel-first features as they are. Local attention is an O(T·w) band (:func:`local_attention`).
The reference's plain channel-first formulation is kept next to each fast path as
``forward_reference`` (attention: :func:`local_attention_chunked`); :func:`reference_formulation`
runs the whole model with it (benchmark baseline; ``tests/test_fast_paths.py`` proves both agree
to 1e-5, outputs and gradients).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "reference_formulation", "inference_chunk_steps", "chunked_inference_applies",
    "map_time_chunks", "downsample_mask", "MaskedConv1D", "FastConv1d",
    "ChannelsLastMaxPool1d", "LayerNorm", "sinusoid_position_table",
    "local_attention", "local_attention_dense", "local_attention_chunked", "global_attention",
    "MaskedMHCA",
    "TransformerBlock", "ConvBlock", "Scale", "drop_path", "AffineDropPath",
]

# Logit offset of a padded key inside the window (spec C.6); the reference uses -1e4, not -inf.
PADDED_KEY_LOGIT = -1e4

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
    channel-first formulation, spec C.2-C.6) and local attention runs
    :func:`local_attention_chunked`, instead of the fast paths. For benchmarks and equivalence
    tests; not thread-safe."""
    return _overridden(_REFERENCE_MODE, enabled)


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


def downsample_mask(mask: Optional[Tensor], stride: int) -> Optional[Tensor]:
    """Nearest-neighbour down-sampling of a ``B×1×T`` mask: ``out[i] = mask[stride·i]``."""
    if mask is None or stride == 1:
        return mask
    return mask[:, :, ::stride]


class MaskedConv1D(nn.Module):
    """``Conv1d`` (odd kernel k, padding k//2) whose output is zeroed on padded steps (spec C.2).

    forward: x ``B×C_in×T``, mask ``B×1×T`` -> (``B×C_out×T/s``, mask ``B×1×T/s``).
    The input itself is not masked, so padded steps carrying non-zero values (LayerNorm biases)
    are read at the end of the video exactly as in the reference. The bias starts at 0.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"MaskedConv1D needs an odd kernel size, got {kernel_size}")
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
    on the (strided) steps; depthwise kernels, and dense k-tap kernels on channels-last input
    (head and second embedding convs, after a LayerNorm), as a channels-last (NHWC) 2-D conv;
    all of these return channels-last memory. A dense kernel on channel-first input (the raw
    features) stays a channel-first ``conv1d``. Measured on this CPU (fp32 and bf16, forward and
    backward), each beats both the other layout and a GEMM over a k-step window.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 stride: int = 1, groups: int = 1, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         padding=kernel_size // 2, groups=groups, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if _REFERENCE_MODE[0]:
            return self.forward_reference(x)
        k, stride = self.kernel_size[0], self.stride[0]
        if k == 1 and self.groups == 1:
            return F.linear(_channels_last(x)[:, ::stride], self.weight.squeeze(-1),
                            self.bias).transpose(1, 2)
        if self.groups > 1 or _is_channels_last(x):
            x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
            return F.conv2d(x4, self.weight.unsqueeze(2), self.bias, (1, stride), (0, k // 2),
                            groups=self.groups).squeeze(2)
        return super().forward(x)

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
    have shape ``1×C×1`` (checkpoint layout, spec C.12). Computed by the fused ``F.layer_norm``
    on the channels-last buffer (output channels-last); :meth:`forward_reference` writes it out
    as the reference does.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        if affine:
            self.weight = nn.Parameter(torch.ones(1, num_channels, 1))
            self.bias = nn.Parameter(torch.zeros(1, num_channels, 1))
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
    """Absolute position table ``1×dim×length`` (float32), spec C.4 (before the 1/sqrt(dim)).

    ``PE[2i, pos] = sin(pos / 10000^(2i/dim))``, ``PE[2i+1, pos] = cos(same)``; computed in
    float64.
    """
    pos = np.arange(length, dtype=np.float64)[:, None]
    denom = np.power(10000, 2 * (np.arange(dim) // 2) / dim)
    angles = pos / denom
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return torch.from_numpy(angles).float().T.unsqueeze(0).contiguous()


# --------------------------------------------------------------------------------------------
# Attention kernels. q, k, v: B×H×d×T (head-major channel split, q already scaled by 1/sqrt(d));
# key_mask: B×1×T bool. Output: B×H×d×T. Rows of padded queries are left to the caller, which
# zeroes them with the query mask after the output projection.
# --------------------------------------------------------------------------------------------
def _key_bias(key_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """``B×1×T`` additive logit: 0 for real keys, -1e4 for padded ones."""
    return torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device).masked_fill(
        ~key_mask, PADDED_KEY_LOGIT)


def local_attention_dense(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, window: int,
                          rel_pe: Optional[Tensor] = None) -> Tensor:
    """Readable definition of the local attention of spec C.6, with a ``T×T`` band mask.

    Query i attends to keys ``j ∈ [i-h, i+h] ∩ [0, T)``, ``h = window // 2``; logit
    ``q_i·k_j + rel_pe[j-i+h] + (-1e4 if key j is padded)``; slots outside the sequence are
    excluded; padded query rows are set to 0. O(T²): for tests only, see :func:`local_attention`.
    """
    h = window // 2
    T = q.shape[-1]
    logits = q.transpose(-2, -1) @ k                                    # B×H×T×T
    offset = torch.arange(T, device=q.device)[None, :] - torch.arange(T, device=q.device)[:, None]
    in_band = offset.abs() <= h                                         # [i, j]: |j - i| <= h
    if rel_pe is not None:
        slot = (offset + h).clamp(0, 2 * h)
        logits = logits + rel_pe.reshape(1, -1, 2 * h + 1)[:, :, slot] * in_band
    logits = logits + _key_bias(key_mask, q.dtype)[:, :, None, :]
    logits = logits.masked_fill(~in_band, float("-inf"))
    probs = logits.softmax(dim=-1) * key_mask[:, :, :, None].to(q.dtype)  # zero padded queries
    return v @ probs.transpose(-2, -1)


def _band_of(scores: Tensor, window: int) -> Tensor:
    """``(…, c, c+w-1)`` chunk scores -> ``(…, c, w)`` band: ``out[a, o] = scores[a, a+o]``."""
    c = scores.shape[-2]
    return F.pad(scores.flatten(-2), (0, c)).unflatten(-1, (c, c + window))[..., :window]


def _band_to_chunk(band: Tensor) -> Tensor:
    """Inverse of :func:`_band_of`: ``(…, c, w)`` -> ``(…, c, c+w-1)`` with zeros off the band."""
    c, window = band.shape[-2:]
    flat = F.pad(band, (0, c)).flatten(-2)[..., :-c]
    return flat.unflatten(-1, (c, c + window - 1))


def local_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, window: int,
                    rel_pe: Optional[Tensor] = None) -> Tensor:
    """Local attention of spec C.6 in O(T·window) time and memory (never a ``T×T`` matrix).

    Same inputs, outputs and numbers as :func:`local_attention_dense` (rows of padded queries
    excepted: they are garbage here and zeroed by the caller). Queries are cut into chunks of
    ``c = 2·window`` steps; each chunk meets its ``c + 2h`` neighbouring keys in one matmul, and
    the band of ``2h+1`` slots per query is cut out of (and pasted back into) that block.
    Slots outside the sequence get the most negative half of the dtype's range instead of −∞:
    the same zero weight, and no NaN in the rows of the chunk padding.
    """
    h = window // 2
    w = 2 * h + 1
    B, H, d, T = q.shape
    c = 2 * w
    n = -(-T // c)
    tail = n * c - T
    outside = torch.finfo(q.dtype).min / 2
    q_chunks = F.pad(q, (0, tail)).unflatten(-1, (n, c)).permute(0, 1, 3, 4, 2)   # B×H×n×c×d
    k_spans = F.pad(k, (h, h + tail)).unfold(-1, c + 2 * h, c)                    # B×H×d×n×(c+2h)
    v_spans = F.pad(v, (h, h + tail)).unfold(-1, c + 2 * h, c)
    logits = _band_of(q_chunks @ k_spans.transpose(2, 3), w)                      # B×H×n×c×w
    if rel_pe is not None:
        logits = logits + rel_pe.reshape(1, H, 1, 1, w)
    bias = F.pad(_key_bias(key_mask, q.dtype), (h, h + tail), value=outside).unfold(-1, w, 1)
    probs = (logits + bias.unflatten(2, (n, c))).softmax(dim=-1)                  # B×1×n×c×w
    out = _band_to_chunk(probs) @ v_spans.permute(0, 1, 3, 4, 2)                  # B×H×n×c×d
    # B×H×d×T seen on a B×T×H×d buffer: heads.flatten(1, 2) is channels-last B×E×T, no copy
    return out.permute(0, 2, 3, 1, 4).reshape(B, n * c, H, d)[:, :T].permute(0, 2, 3, 1)


def _overlapping_chunks(x: Tensor, h: int) -> Tensor:
    """``N×T×d`` -> ``N×(T/h - 1)×2h×d`` view: chunks of ``2h`` steps, neighbours overlapping
    by h."""
    return x.unfold(1, 2 * h, h).transpose(2, 3)


def _chunk_scores_to_band(scores: Tensor, h: int) -> Tensor:
    """All-pairs chunk scores ``N×n×2h×2h`` -> window band ``N×T×(2h+1)`` (``T = (n+1)·h``).

    Slot ``h + o`` of query p holds its score with key ``p + o``. Offsets ``0…h`` come from the
    chunk in whose first half p lies (the last h queries: the second half of the last chunk),
    offsets ``-h…-1`` from the chunk in whose second half it lies. Slots of keys outside the
    sequence are −∞.
    """
    N, n, c, _ = scores.shape
    # re-read every chunk with rows of 2h+1: column s is the diagonal at offset s (row r) or,
    # for s > 2h - 1 - r, the diagonal at offset s - 2h - 1 (row r + 1)
    skewed = F.pad(scores, (0, 0, 0, 1)).view(N, n, c, c + 1)
    band = scores.new_empty(N, n + 1, h, 2 * h + 1)
    band[:, :-1, :, h:] = skewed[:, :, :h, :h + 1]
    band[:, -1, :, h:] = skewed[:, -1, h:, :h + 1]
    band[:, 1:, :, :h] = skewed[:, :, h - 1:-1, h + 1:]
    band[:, 0, 1:h, 1:h] = skewed[:, 0, :h - 1, h + 2:]
    band = band.view(N, (n + 1) * h, 2 * h + 1)
    outside = torch.arange(2 * h + 1, device=scores.device)[None, :] < (
        h - torch.arange(h, device=scores.device))[:, None]           # row i: slots < h - i
    band[:, :h].masked_fill_(outside, float("-inf"))
    band[:, -h:].masked_fill_(outside.flip(0, 1), float("-inf"))
    return band


def local_attention_chunked(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, window: int,
                            rel_pe: Optional[Tensor] = None) -> Tensor:
    """The reference's formulation of :func:`local_attention` (Longformer-style chunks, spec C.6),
    kept as the benchmark baseline (:func:`reference_formulation`).

    Sequences are cut into chunks of ``2h`` steps overlapping by ``h``; each chunk computes all
    ``2h × 2h`` query-key scores (about twice the band), the band is copied out of them, and
    the key mask goes through the same chunked product (a ones "query" against the mask bias).
    Probabilities meet the values in chunks of ``3h`` keys. Needs ``T`` divisible by ``2h``.
    Same inputs and outputs as :func:`local_attention` (padded query rows are 0 here).
    """
    h = window // 2
    B, H, d, T = q.shape
    if T % (2 * h) != 0:
        raise ValueError(f"chunked local attention needs a length divisible by {2 * h}, got {T}")
    q, k, v = (x.transpose(2, 3).reshape(B * H, T, d) for x in (q, k, v))   # N×T×d copies
    scores = _overlapping_chunks(q, h) @ _overlapping_chunks(k, h).transpose(2, 3)
    w = 2 * h + 1                                         # band slots (2h + 1 for even windows too)
    logits = _chunk_scores_to_band(scores, h).view(B, H, T, w).transpose(1, 2)       # B×T×H×w
    if rel_pe is not None:
        logits = logits + rel_pe
    key_bias = _key_bias(key_mask, q.dtype).view(B, T, 1)
    mask_scores = _overlapping_chunks(torch.ones_like(key_bias), h) @ \
        _overlapping_chunks(key_bias, h).transpose(2, 3)
    logits = logits + _chunk_scores_to_band(mask_scores, h).view(B, T, 1, w)
    probs = logits.softmax(dim=-1).masked_fill(~key_mask.view(B, T, 1, 1), 0.0)
    # probabilities of each h-query group shifted onto the 3h keys [start - h, start + 2h)
    probs = probs.transpose(1, 2).reshape(B * H, T // h, h, w)
    shifted = F.pad(probs, (0, h + 1)).flatten(-2)[..., :-h].view(B * H, T // h, h, 3 * h + 1)
    values = F.pad(v, (0, 0, h, h), value=-1.0).unfold(1, 3 * h, h)       # N×(T/h)×d×3h
    out = shifted[..., :-1] @ values.transpose(2, 3)                       # N×(T/h)×h×d
    return out.view(B, H, T, d).transpose(2, 3)


def global_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor) -> Tensor:
    """Full attention over the real keys (spec C.6, global variant)."""
    logits = q.transpose(-2, -1) @ k                                    # B×H×T×T
    logits = logits.masked_fill(~key_mask[:, :, None, :], float("-inf"))
    probs = logits.softmax(dim=-1)
    return (v * key_mask[:, :, None, :].to(v.dtype)) @ probs.transpose(-2, -1)


class MaskedMHCA(nn.Module):
    """Multi-head *conv* attention with masking and optional down-sampling (spec C.6).

    forward: x ``B×E×T`` (the block's LayerNorm output), mask ``B×1×T`` ->
    (``B×E×T/s``, mask ``B×1×T/s``). Depthwise strided convs + LayerNorm give q, k, v; 1×1 convs
    project them; attention is local (``window_size > 1``) or global; output 1×1 conv ``proj``.
    """

    def __init__(self, n_embd: int, n_head: int, window_size: int = -1, stride: int = 1,
                 proj_pdrop: float = 0.0, use_rel_pe: bool = False) -> None:
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(f"embedding width {n_embd} is not divisible by {n_head} heads")
        if stride > 1 and stride % 2 != 0:
            raise ValueError(f"attention down-sampling stride must be 1 or even, got {stride}")
        if use_rel_pe and (window_size <= 1 or window_size % 2 == 0):
            raise ValueError(f"relative position encoding needs an odd local window, got "
                             f"{window_size}")
        self.n_head = n_head
        self.head_dim = n_embd // n_head
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.window_size = window_size
        self.stride = stride

        kernel = stride + 1 if stride > 1 else 3
        self.query_conv = MaskedConv1D(n_embd, n_embd, kernel, stride, groups=n_embd, bias=False)
        self.query_norm = LayerNorm(n_embd)
        self.key_conv = MaskedConv1D(n_embd, n_embd, kernel, stride, groups=n_embd, bias=False)
        self.key_norm = LayerNorm(n_embd)
        self.value_conv = MaskedConv1D(n_embd, n_embd, kernel, stride, groups=n_embd, bias=False)
        self.value_norm = LayerNorm(n_embd)
        self.key = FastConv1d(n_embd, n_embd)
        self.query = FastConv1d(n_embd, n_embd)
        self.value = FastConv1d(n_embd, n_embd)
        self.proj_drop = nn.Dropout(proj_pdrop)
        self.proj = FastConv1d(n_embd, n_embd)
        if use_rel_pe:
            self.rel_pe = nn.Parameter(torch.zeros(1, 1, n_head, window_size))
            std = (2.0 / n_embd) ** 0.5
            nn.init.trunc_normal_(self.rel_pe, std=std, a=-2.0, b=2.0)
        else:
            self.rel_pe = None

    def forward(self, x: Tensor, mask: Tensor, extent: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor]:
        q, out_mask = self.query_conv(x, mask, extent)
        k, _ = self.key_conv(x, mask, extent)
        v, _ = self.value_conv(x, mask, extent)
        q = self.query(self.query_norm(q))
        k = self.key(self.key_norm(k))
        v = self.value(self.value_norm(v))
        heads = (self.n_head, self.head_dim)        # channel c -> head c // d (any layout)
        q, k, v = q.unflatten(1, heads) * self.scale, k.unflatten(1, heads), v.unflatten(1, heads)
        if self.window_size > 1:
            attend = local_attention_chunked if _REFERENCE_MODE[0] else local_attention
            out = attend(q, k, v, out_mask, self.window_size, self.rel_pe)
        else:
            out = global_attention(q, k, v, out_mask)
        out = self.proj_drop(self.proj(out.flatten(1, 2)))
        return out * out_mask.to(out.dtype), out_mask


class TransformerBlock(nn.Module):
    """Pre-LN Transformer block with optional strided down-sampling (spec C.5).

    forward: x ``B×E×T``, mask ``B×1×T`` -> (``B×E×T/s``, mask ``B×1×T/s``); outputs are exactly
    zero on padded steps. The stride-s skip is a max-pool over the zero-padded input (−inf only
    at the tensor border, spec C.2 / I.21).
    """

    def __init__(self, n_embd: int, n_head: int, stride: int = 1, window_size: int = -1,
                 proj_pdrop: float = 0.0, path_pdrop: float = 0.0,
                 use_rel_pe: bool = False) -> None:
        super().__init__()
        self.ln1 = LayerNorm(n_embd)
        self.ln2 = LayerNorm(n_embd)
        self.attn = MaskedMHCA(n_embd, n_head, window_size, stride, proj_pdrop, use_rel_pe)
        if stride > 1:
            self.pool_skip = ChannelsLastMaxPool1d(stride + 1, stride=stride,
                                                   padding=(stride + 1) // 2)
        else:
            self.pool_skip = nn.Identity()
        self.mlp = nn.Sequential(
            FastConv1d(n_embd, 4 * n_embd), nn.GELU(), nn.Dropout(proj_pdrop),
            FastConv1d(4 * n_embd, n_embd), nn.Dropout(proj_pdrop))
        if path_pdrop > 0.0:
            self.drop_path_attn = AffineDropPath(n_embd, drop_prob=path_pdrop)
            self.drop_path_mlp = AffineDropPath(n_embd, drop_prob=path_pdrop)
        else:
            self.drop_path_attn = nn.Identity()
            self.drop_path_mlp = nn.Identity()

    def forward(self, x: Tensor, mask: Tensor, extent: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor]:
        window, stride = self.attn.window_size, self.attn.stride
        if window > 1 and chunked_inference_applies(x.shape[-1], self.training):
            # output step t reads x on [s·(t - h) - s/2, s·(t + h) + s/2] (window, q/k/v convs
            # of kernel s + 1 or 3, pooled skip); halo rounded up to a multiple of the stride s
            out = map_time_chunks(lambda *xs: self._forward(*xs)[0], (x, mask, extent),
                                  halo=stride * (window // 2 + 1), stride=stride)
            return out, downsample_mask(mask, stride)
        return self._forward(x, mask, extent)

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
    """ResNet basic block for the ``conv`` backbone (spec C.7).

    forward: x ``B×E×T``, mask -> (``B×E×T/s``, mask). ``out = ReLU(conv2(ReLU(conv1(x))) + res)``
    with res = x (s = 1) or a strided 1×1 masked conv; the output is not re-masked.
    """

    def __init__(self, n_embd: int, kernel_size: int = 3, stride: int = 1,
                 expansion_factor: int = 2) -> None:
        super().__init__()
        width = n_embd * expansion_factor
        self.stride = stride
        self.conv1 = MaskedConv1D(n_embd, width, kernel_size, stride)
        self.conv2 = MaskedConv1D(width, n_embd, kernel_size, 1)
        self.downsample = MaskedConv1D(n_embd, n_embd, 1, stride) if stride > 1 else None
        self.act = nn.ReLU()

    def forward(self, x: Tensor, mask: Tensor, extent: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor]:
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
    """Stochastic depth per sample: drop whole samples with prob ``drop_prob``, rescale the rest."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = (keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)).floor_()
    return x.div(keep_prob) * keep


class AffineDropPath(nn.Module):
    """``drop_path(scale · x)`` with a learnable per-channel ``scale`` (``1×C×1``, init 1e-4)."""

    def __init__(self, num_dim: int, drop_prob: float = 0.0,
                 init_scale_value: float = 1e-4) -> None:
        super().__init__()
        self.scale = nn.Parameter(init_scale_value * torch.ones((1, num_dim, 1)))
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(self.scale * x, self.drop_prob, self.training)
