"""Backbones: embedding convs followed by a stem and a down-sampling branch.

forward(x ``B×D×T``, mask ``B×1×T``, extent) -> (features, masks), one pair per pyramid level
l = 0 … arch[2]: ``B×E×T/2^l`` and ``B×1×T/2^l``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import (ConvBlock, LayerNorm, MaskedConv1D, TransformerBlock,
                     chunked_inference_applies, downsample_mask, map_time_chunks,
                     sinusoid_position_table)
from .models import register_backbone

__all__ = ["ConvTransformerBackbone", "ConvBackbone"]

Dims = Union[int, Sequence[int]]


class _EmbeddingBackbone(nn.Module):
    """Shared structure: the optional per-source 1×1 projection, the embedding convs
    (masked conv -> LayerNorm -> ReLU), then ``stem`` (stride 1) and ``branch``
    (stride ``scale_factor`` each) block lists that sub-classes build."""

    def _build_embedding(self, n_in: Dims, n_embd: Dims, kernel_size: int, n_layers: int,
                         with_ln: bool) -> int:
        """Create ``proj``, ``embd``, ``embd_norm``; return the embedding width."""
        self.n_in = n_in
        if isinstance(n_in, (list, tuple)):
            if not isinstance(n_embd, (list, tuple)) or len(n_in) != len(n_embd):
                raise ValueError(f"a list input_dim {list(n_in)} needs an embd_dim list of the "
                                 f"same length, got {n_embd}")
            self.proj = nn.ModuleList([MaskedConv1D(c_in, c_out, 1)
                                       for c_in, c_out in zip(n_in, n_embd)])
            n_in = n_embd = sum(n_embd)
        else:
            self.proj = None
        self.embd = nn.ModuleList()
        self.embd_norm = nn.ModuleList()
        for idx in range(n_layers):
            self.embd.append(MaskedConv1D(n_in if idx == 0 else n_embd, n_embd, kernel_size,
                                          padding=kernel_size // 2, bias=not with_ln))
            self.embd_norm.append(LayerNorm(n_embd) if with_ln else nn.Identity())
        # in place only without autograd: in training, ReLU in place on the LayerNorm's
        # channels-last view makes autograd copy the gradient twice and mix layouts
        self.relu = nn.ReLU()
        return n_embd

    def _embed(self, x: Tensor, mask: Tensor, extent: Optional[Tensor]) -> Tensor:
        if chunked_inference_applies(x.shape[-1], self.training):
            halo = sum(conv.conv.kernel_size[0] // 2 for conv in self.embd)
            return map_time_chunks(self._embed_steps, (x, mask, extent), halo)
        return self._embed_steps(x, mask, extent)

    def _embed_steps(self, x: Tensor, mask: Tensor, extent: Optional[Tensor]) -> Tensor:
        if self.proj is not None:
            x = torch.cat([proj(part, mask)[0]
                           for proj, part in zip(self.proj, x.split(list(self.n_in), dim=1))],
                          dim=1)
        for conv, norm in zip(self.embd, self.embd_norm):
            x, mask = conv(x, mask, extent)
            x = norm(x)
            x = x.relu_() if not torch.is_grad_enabled() else self.relu(x)
        return x

    def _add_position(self, x: Tensor, mask: Tensor, extent: Optional[Tensor]) -> Tensor:
        """Hook for position encodings added after the embedding; none by default."""
        return x

    def forward(self, x: Tensor, mask: Tensor, extent: Optional[Tensor] = None
                ) -> Tuple[List[Tensor], List[Tensor]]:
        return self.pyramid(self.embed(x, mask, extent), mask, extent)

    def embed(self, x: Tensor, mask: Tensor, extent: Optional[Tensor] = None) -> Tensor:
        """Input features ``B×D×T`` -> embedded ``B×E×T`` (embedding convs, position encoding).
        The first half of :meth:`forward`; a caller that drops its input after this call frees
        the largest tensor of inference early."""
        return self._add_position(self._embed(x, mask, extent), mask, extent)

    def pyramid(self, x: Tensor, mask: Tensor, extent: Optional[Tensor] = None
                ) -> Tuple[List[Tensor], List[Tensor]]:
        """Embedded ``B×E×T`` -> (features, masks) per level: the second half of :meth:`forward`."""
        for block in self.stem:
            x, mask = block(x, mask, extent=extent)
        feats, masks = [x], [mask]
        for block in self.branch:
            x, mask = block(x, mask, extent=extent)
            extent = downsample_mask(extent, self.scale_factor)
            feats.append(x)
            masks.append(mask)
        return feats, masks

    @staticmethod
    def _zero_biases(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv1d)) and module.bias is not None:
            nn.init.zeros_(module.bias)


class _AbsolutePositionMixin:
    """Sinusoidal absolute position embedding added after the embedding convs.

    Needs ``use_abs_pe``, ``max_len``, ``training`` and (when enabled) the ``pos_embd`` buffer,
    made by :meth:`_register_position_table`.
    """

    def _set_pyramid(self, arch: Sequence[int], windows: Sequence[int], max_len: int,
                     scale_factor: int, use_abs_pe: bool) -> None:
        """Check ``arch`` (#embd, #stem, #branch) against one window per level; keep the fields."""
        if len(arch) != 3 or len(windows) != 1 + arch[2]:
            raise ValueError(f"backbone_arch must be (#embd, #stem, #branch) and give one window "
                             f"per level: arch={tuple(arch)}, windows={list(windows)}")
        self.arch = tuple(arch)
        self.max_len = max_len
        self.scale_factor = scale_factor
        self.use_abs_pe = use_abs_pe

    def _register_position_table(self, width: int) -> None:
        if self.use_abs_pe:
            table = sinusoid_position_table(self.max_len, width) / (width ** 0.5)
            self.register_buffer("pos_embd", table, persistent=False)

    def _position_embedding(self, T: int, extent: Optional[Tensor]) -> Tensor:
        """Absolute PE for a padded batch: ``1×E×T``, or ``B×E×T`` when videos in the batch have
        different extents (each gets the table stretched to its own extent)."""
        if self.training:
            if T > self.max_len:
                raise ValueError(f"training sequence of {T} steps is longer than max_seq_len "
                                 f"{self.max_len}")
            return self.pos_embd[:, :, :T]
        if extent is None:
            return self._inference_table(T)
        lengths = extent.sum(dim=-1).flatten().tolist()
        return torch.cat([F.pad(self._inference_table(n), (0, T - n)) for n in lengths], dim=0)

    def _inference_table(self, T: int) -> Tensor:
        if T > self.max_len:
            return F.interpolate(self.pos_embd, T, mode="linear", align_corners=False)
        return self.pos_embd[:, :, :T]

    def _add_position(self, x: Tensor, mask: Tensor, extent: Optional[Tensor]) -> Tensor:
        if not self.use_abs_pe:
            return x
        pe = self._position_embedding(x.shape[-1], extent)
        return x + pe.to(x.dtype) * mask.to(x.dtype)


@register_backbone("convTransformer")
class ConvTransformerBackbone(_AbsolutePositionMixin, _EmbeddingBackbone):
    """Embedding convs -> [absolute PE] -> ``arch[1]`` stem blocks -> ``arch[2]`` strided blocks.

    Args follow the reference: ``n_in`` input channels (or per-source list), ``n_embd`` width
    (or per-source list), ``n_head``, ``n_embd_ks`` embedding kernel, ``max_len`` (= max_seq_len,
    length of the PE table), ``arch``, ``mha_win_size`` (one window per level, ≤ 1 = global),
    ``scale_factor`` (branch stride), ``with_ln``, ``attn_pdrop`` (attention-map dropout),
    ``proj_pdrop`` (dropout), ``path_pdrop`` (drop-path), ``use_abs_pe``, ``use_rel_pe``.
    """

    def __init__(self, n_in: Dims, n_embd: Dims, n_head: int, n_embd_ks: int, max_len: int,
                 arch: Sequence[int] = (2, 2, 5), mha_win_size: Sequence[int] = (-1,) * 6,
                 scale_factor: int = 2, with_ln: bool = False, attn_pdrop: float = 0.0,
                 proj_pdrop: float = 0.0, path_pdrop: float = 0.0, use_abs_pe: bool = False,
                 use_rel_pe: bool = False) -> None:
        super().__init__()
        self._set_pyramid(arch, mha_win_size, max_len, scale_factor, use_abs_pe)
        width = self._build_embedding(n_in, n_embd, n_embd_ks, arch[0], with_ln)
        self._register_position_table(width)
        drops = {"attn_pdrop": attn_pdrop, "proj_pdrop": proj_pdrop, "path_pdrop": path_pdrop}
        self.stem = nn.ModuleList([
            TransformerBlock(width, n_head, (1, 1), mha_win_size=mha_win_size[0],
                             use_rel_pe=use_rel_pe, **drops) for _ in range(arch[1])])
        self.branch = nn.ModuleList([
            TransformerBlock(width, n_head, (scale_factor, scale_factor),
                             mha_win_size=mha_win_size[1 + idx], use_rel_pe=use_rel_pe, **drops)
            for idx in range(arch[2])])
        self.apply(self._zero_biases)


@register_backbone("conv")
class ConvBackbone(_EmbeddingBackbone):
    """Embedding convs -> ``arch[1]`` ConvBlocks -> ``arch[2]`` strided ConvBlocks."""

    def __init__(self, n_in: Dims, n_embd: Dims, n_embd_ks: int,
                 arch: Sequence[int] = (2, 2, 5), scale_factor: int = 2,
                 with_ln: bool = False) -> None:
        super().__init__()
        if len(arch) != 3:
            raise ValueError(f"backbone_arch must be (#embd, #stem, #branch), got {tuple(arch)}")
        self.arch = tuple(arch)
        self.scale_factor = scale_factor
        width = self._build_embedding(n_in, n_embd, n_embd_ks, arch[0], with_ln)
        self.stem = nn.ModuleList([ConvBlock(width, 3, 1) for _ in range(arch[1])])
        self.branch = nn.ModuleList([ConvBlock(width, 3, scale_factor) for _ in range(arch[2])])
        self.apply(self._zero_biases)
