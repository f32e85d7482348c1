"""TriDet's Scalable-Granularity Perception (SGP) layer and the SGP backbone (docs/tridet.md).

An SGP block replaces the Transformer block of ActionFormer:

    x  <- downsample(x)                                 (max-pool k=s+1, or avg-pool + 1×1 conv)
    u  = LN(x)
    ψ  = dwconv_w(u)      fc = dwconv_1(u)      φ = ReLU(dwconv_1'(mean_t(u)))
    y  = fc·φ + (dwconv_w'(u) + dwconv_kw(u))·ψ + u     (instant-level + window-level branches)
    y  = x·mask + DropPath(y)
    out = y + DropPath(MLP(GroupNorm_16(y)))

``dwconv_k`` are depthwise convolutions with kernel k (``w`` the level's window
``n_sgp_win_size``, ``kw`` the long kernel of :func:`sgp_long_kernel`). Only the skip ``x`` is
masked: the time mean, the GroupNorm statistics and the depthwise convolutions run over the
whole padded length, so outputs depend on how much padding follows a video (TriDet's
behaviour, kept). ``masked=True`` (config ``model.sgp_masked``, default false) is the opt-in fix:
padded steps are zeroed before the depthwise convolutions and after each residual sum, and the time
mean and GroupNorm statistics are taken over the video's own steps only, so that outputs no longer
depend on the padded length. Tensors are ``B×C×T`` with ``B×1×T`` bool masks.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .backbones import _AbsolutePositionMixin, _EmbeddingBackbone
from .blocks import (AffineDropPath, ChannelsLastMaxPool1d, FastConv1d, LayerNorm,
                     downsample_mask)
from .models import register_backbone

__all__ = ["sgp_long_kernel", "masked_group_norm", "SGPBlock", "SGPBackbone"]

# GroupNorm groups of the block's feed-forward input (TriDet's constant)
_SGP_NORM_GROUPS = 16


def sgp_long_kernel(kernel_size: int, k: float) -> int:
    """Kernel of the window-level branch: ``round((w + 1) · k)``, made odd by adding 1.

    Python's ``round`` (halves to even), as TriDet: ``w = 1, k = 5`` -> 11; ``w = 1, k = 1.25``
    -> ``round(2.5) = 2`` -> 3.
    """
    size = round((kernel_size + 1) * k)
    return size + 1 if size % 2 == 0 else size


def masked_group_norm(x: Tensor, mask: Tensor, norm: nn.GroupNorm) -> Tensor:
    """``norm`` (a GroupNorm) with statistics over the valid steps only.

    x ``B×C×T``, mask ``B×1×T`` (bool); equals ``norm(x)`` where no step is masked.
    """
    batch, channels, steps = x.shape
    groups = norm.num_groups
    grouped = x.reshape(batch, groups, channels // groups, steps)
    weights = mask.reshape(batch, 1, 1, steps).to(x.dtype)
    count = (weights.sum(dim=-1, keepdim=True) * (channels // groups)).clamp(min=1)
    mean = (grouped * weights).sum(dim=(2, 3), keepdim=True) / count
    centred = grouped - mean
    var = (centred.square() * weights).sum(dim=(2, 3), keepdim=True) / count
    normed = (centred * torch.rsqrt(var + norm.eps)).reshape(batch, channels, steps)
    if norm.affine:
        normed = normed * norm.weight[None, :, None] + norm.bias[None, :, None]
    return normed


def _depthwise(channels: int, kernel_size: int) -> FastConv1d:
    return FastConv1d(channels, channels, kernel_size, groups=channels)


class SGPBlock(nn.Module):
    """One SGP layer with optional down-sampling (see the module docstring).

    Args:
        n_embd: channels; kernel_size: window ``w`` of the instant/window branches (odd);
        n_ds_stride: down-sampling stride (1: none); k: long-kernel factor; group: groups of the
        MLP convs; n_out: output channels (default ``n_embd``); n_hidden: MLP width (default
        ``4·n_embd``); path_pdrop: drop-path rate (> 0 adds the two ``AffineDropPath`` scales);
        downsample_type: ``max`` (max-pool, kernel s+1) or ``avg`` (avg-pool s + 1×1 conv);
        init_conv_vars: std of the normal init of the five depthwise convs (0: all zero);
        masked: the opt-in fix of the padding dependence (module docstring), default off.
    forward: x ``B×C×T``, mask ``B×1×T`` -> (``B×C_out×T/s``, mask ``B×1×T/s``).
    """

    def __init__(self, n_embd: int, kernel_size: int = 3, n_ds_stride: int = 1, k: float = 1.5,
                 group: int = 1, n_out: Optional[int] = None, n_hidden: Optional[int] = None,
                 path_pdrop: float = 0.0, downsample_type: str = "max",
                 init_conv_vars: float = 1.0, masked: bool = False) -> None:
        super().__init__()
        self.masked = masked
        if kernel_size % 2 != 1:
            raise ValueError(f"SGP window (kernel size) must be odd, got {kernel_size}")
        n_out = n_embd if n_out is None else n_out
        n_hidden = 4 * n_embd if n_hidden is None else n_hidden
        self.ln = LayerNorm(n_embd)
        self.gn = nn.GroupNorm(_SGP_NORM_GROUPS, n_embd)
        self.psi = _depthwise(n_embd, kernel_size)
        self.fc = _depthwise(n_embd, 1)
        self.convw = _depthwise(n_embd, kernel_size)
        self.convkw = _depthwise(n_embd, sgp_long_kernel(kernel_size, k))
        self.global_fc = _depthwise(n_embd, 1)
        self.stride = n_ds_stride
        self.downsample = self._make_downsample(n_embd, n_ds_stride, downsample_type)
        self.mlp = nn.Sequential(FastConv1d(n_embd, n_hidden, 1, groups=group), nn.GELU(),
                                 FastConv1d(n_hidden, n_out, 1, groups=group))
        if path_pdrop > 0.0:
            self.drop_path_out = AffineDropPath(n_embd, drop_prob=path_pdrop)
            self.drop_path_mlp = AffineDropPath(n_out, drop_prob=path_pdrop)
        else:
            self.drop_path_out = nn.Identity()
            self.drop_path_mlp = nn.Identity()
        self.reset_params(init_conv_vars)

    @staticmethod
    def _make_downsample(n_embd: int, stride: int, kind: str) -> nn.Module:
        if stride == 1:
            return nn.Identity()
        if kind == "max":
            return ChannelsLastMaxPool1d(stride + 1, stride=stride, padding=(stride + 1) // 2)
        if kind == "avg":
            return nn.Sequential(nn.AvgPool1d(stride, stride=stride), FastConv1d(n_embd, n_embd, 1))
        raise ValueError(f"downsample_type must be 'max' or 'avg', got {kind!r}")

    def reset_params(self, init_conv_vars: float) -> None:
        """Depthwise conv weights ~ N(0, init_conv_vars²) (zeros for 0), their biases 0."""
        for conv in (self.psi, self.fc, self.convw, self.convkw, self.global_fc):
            nn.init.normal_(conv.weight, 0.0, init_conv_vars)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor, mask: Tensor, extent: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor]:
        if extent is not None:
            raise ValueError("SGP blocks are not masked inside: run one padded video per "
                             "forward (no per-video extents)")
        if x.shape[-1] % self.stride != 0:
            raise ValueError(f"sequence length {x.shape[-1]} is not divisible by the SGP "
                             f"down-sampling stride {self.stride}")
        x = self.downsample(x)
        out_mask = downsample_mask(mask, self.stride)
        if self.masked:
            return self._forward_masked(x, out_mask), out_mask
        u = self.ln(x)
        psi = self.psi(u)
        phi = torch.relu(self.global_fc(u.mean(dim=-1, keepdim=True)))
        out = self.fc(u) * phi + (self.convw(u) + self.convkw(u)) * psi + u
        out = x * out_mask.to(x.dtype) + self.drop_path_out(out)
        out = out + self.drop_path_mlp(self.mlp(self.gn(out)))
        return out, out_mask

    def _forward_masked(self, x: Tensor, mask: Tensor) -> Tensor:
        """The block with every statistic and convolution confined to the valid steps."""
        valid = mask.to(x.dtype)
        u = self.ln(x) * valid
        psi = self.psi(u)
        mean = u.sum(dim=-1, keepdim=True) / valid.sum(dim=-1, keepdim=True).clamp(min=1)
        phi = torch.relu(self.global_fc(mean))
        out = self.fc(u) * phi + (self.convw(u) + self.convkw(u)) * psi + u
        out = (x + self.drop_path_out(out)) * valid
        out = out + self.drop_path_mlp(self.mlp(masked_group_norm(out, mask, self.gn)))
        return out * valid


@register_backbone("SGP")
class SGPBackbone(_AbsolutePositionMixin, _EmbeddingBackbone):
    """Embedding convs -> [absolute PE] -> ``arch[1]`` SGP blocks (window 1, no drop-path) ->
    ``arch[2]`` down-sampling SGP blocks (window ``sgp_win_size[1 + i]``, drop-path).

    ``sgp_win_size[0]`` is not used: TriDet's stem always has window 1.
    Args follow TriDet: ``n_in``, ``n_embd``, ``sgp_mlp_dim`` (MLP width, None: ``4·n_embd``),
    ``n_embd_ks``, ``max_len`` (PE table length), ``arch``, ``scale_factor``, ``with_ln``,
    ``path_pdrop``, ``downsample_type``, ``sgp_win_size`` (one per level), ``k``,
    ``init_conv_vars``, ``use_abs_pe``; ``masked``: the opt-in padding fix (off: TriDet).
    """

    def __init__(self, n_in: int, n_embd: int, sgp_mlp_dim: Optional[int], n_embd_ks: int,
                 max_len: int, arch: Sequence[int] = (2, 2, 5), scale_factor: int = 2,
                 with_ln: bool = False, path_pdrop: float = 0.0, downsample_type: str = "max",
                 sgp_win_size: Sequence[int] = (-1,) * 6, k: float = 1.5,
                 init_conv_vars: float = 1.0, use_abs_pe: bool = False,
                 masked: bool = False) -> None:
        super().__init__()
        self._set_pyramid(arch, sgp_win_size, max_len, scale_factor, use_abs_pe)
        width = self._build_embedding(n_in, n_embd, n_embd_ks, arch[0], with_ln)
        self._register_position_table(width)
        self.stem = nn.ModuleList([
            SGPBlock(width, 1, 1, n_hidden=sgp_mlp_dim, k=k, init_conv_vars=init_conv_vars,
                     masked=masked)
            for _ in range(arch[1])])
        self.branch = nn.ModuleList([
            SGPBlock(width, sgp_win_size[1 + idx], scale_factor, path_pdrop=path_pdrop,
                     n_hidden=sgp_mlp_dim, downsample_type=downsample_type, k=k,
                     init_conv_vars=init_conv_vars, masked=masked)
            for idx in range(arch[2])])
        self.apply(self._zero_biases)

    def pyramid(self, x: Tensor, mask: Tensor, extent: Optional[Tensor] = None
                ) -> Tuple[List[Tensor], List[Tensor]]:
        if extent is not None:
            raise ValueError("the SGP backbone runs one padded video per forward (no extents)")
        return super().pyramid(x, mask)
