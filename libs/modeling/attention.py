"""Attention kernels of the model.

q, k, v: ``B×H×d×T`` (head-major channel split, q already scaled by 1/sqrt(d)); key_mask:
``B×1×T`` bool. Output: ``B×H×d×T``. Rows of padded queries are left to the caller, which zeroes
them with the query mask after the output projection.

``drop`` (optional) multiplies the attention probabilities after the softmax: the attention-map
dropout noise (0 or 1/(1-p)), given in the *reference's* layout of the probabilities, ``B×T×H×w``
(w = 2·(window // 2) + 1) for local attention and ``B×H×T×T`` for global attention, so that a seed
drops the same (query, key) pairs whatever the kernel.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .kernels import chunk_spans

__all__ = ["PADDED_KEY_LOGIT", "key_bias", "local_attention", "local_attention_dense",
           "global_attention"]

# Logit offset of a padded key inside the window (the reference uses -1e4, not -inf).
PADDED_KEY_LOGIT = -1e4


def key_bias(key_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """``B×1×T`` additive logit: 0 for real keys, -1e4 for padded ones."""
    return torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device).masked_fill(
        ~key_mask, PADDED_KEY_LOGIT)


def local_attention_dense(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, window: int,
                          rel_pe: Optional[Tensor] = None) -> Tensor:
    """Readable definition of the local attention, with a ``T×T`` band mask.

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
    logits = logits + key_bias(key_mask, q.dtype)[:, :, None, :]
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
                    rel_pe: Optional[Tensor] = None, drop: Optional[Tensor] = None) -> Tensor:
    """Local attention in O(T·window) time and memory (never a ``T×T`` matrix).

    Same inputs, outputs and numbers as :func:`local_attention_dense` (rows of padded queries
    excepted: they are garbage here and zeroed by the caller). Queries are cut into chunks of
    ``c = 2·window`` steps; each chunk meets its ``c + 2h`` neighbouring keys
    (:func:`~libs.modeling.kernels.chunk_spans`) in one matmul, and the band of ``2h+1`` slots per
    query is cut out of (and pasted back into) that block. Everything runs on step-major
    ``B×H×·×d`` copies (rows of d channels, as the channels-last projections give them).
    Slots outside the sequence get the most negative half of the dtype's range instead of −∞:
    the same zero weight, and no NaN in the rows of the chunk padding. The output is a view of
    a ``B×T×H×d`` buffer: ``flatten(1, 2)`` of it is a channels-last ``B×E×T``.
    """
    h = window // 2
    w = 2 * h + 1
    B, H, d, T = q.shape
    c = 2 * w
    n = -(-T // c)
    tail = n * c - T
    outside = torch.finfo(q.dtype).min / 2
    q_chunks = chunk_spans(q.transpose(2, 3), c)                                  # B×H×n×c×d
    k_spans = chunk_spans(k.transpose(2, 3), c, h)                                # B×H×n×(c+2h)×d
    v_spans = chunk_spans(v.transpose(2, 3), c, h)
    logits = _band_of(q_chunks @ k_spans.transpose(3, 4), w)                      # B×H×n×c×w
    if rel_pe is not None:
        logits = logits + rel_pe.reshape(1, H, 1, 1, w)
    bias = F.pad(key_bias(key_mask, q.dtype), (h, h + tail), value=outside).unfold(-1, w, 1)
    probs = (logits + bias.unflatten(2, (n, c))).softmax(dim=-1)                  # B×H×n×c×w
    if drop is not None:                                  # B×T×H×w -> B×H×n×c×w
        probs = probs * F.pad(drop.transpose(1, 2), (0, 0, 0, tail)).unflatten(2, (n, c))
    out = _band_to_chunk(probs) @ v_spans                                         # B×H×n×c×d
    return out.permute(0, 2, 3, 1, 4).flatten(1, 2)[:, :T].contiguous().permute(0, 2, 3, 1)


def global_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor,
                     drop: Optional[Tensor] = None) -> Tensor:
    """Full attention over the real keys."""
    logits = q.transpose(-2, -1) @ k                                    # B×H×T×T
    logits = logits.masked_fill(~key_mask[:, :, None, :], float("-inf"))
    probs = logits.softmax(dim=-1)
    if drop is not None:
        probs = probs * drop
    return (v * key_mask[:, :, None, :].to(v.dtype)) @ probs.transpose(-2, -1)
