"""The reference's own formulation of local attention, kept as the benchmark baseline.

:func:`local_attention_chunked` is the Longformer-style chunked computation of the reference's
``LocalMaskedMHCA``. Production code runs :func:`libs.modeling.attention.local_attention`
(O(T·w), any length); the model switches to this formulation only inside
:func:`libs.modeling.blocks.reference_formulation` (``tools/benchmark.py --impl reference`` and the
equivalence tests). It lives in the package, not in ``tools/``, because that switch, read by the
model's attention module, needs it: imports flow attention -> reference_formulation -> blocks.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention import key_bias

__all__ = ["local_attention_chunked"]


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
                            rel_pe: Optional[Tensor] = None, drop: Optional[Tensor] = None
                            ) -> Tensor:
    """The reference's formulation of local attention (Longformer-style chunks).

    Sequences are cut into chunks of ``2h`` steps overlapping by ``h``; each chunk computes all
    ``2h × 2h`` query-key scores (about twice the band), the band is copied out of them, and
    the key mask goes through the same chunked product (a ones "query" against the mask bias).
    Probabilities meet the values in chunks of ``3h`` keys. Needs ``T`` divisible by ``2h``.
    Same inputs and outputs as :func:`libs.modeling.attention.local_attention` (padded query rows
    are 0 here).
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
    bias = key_bias(key_mask, q.dtype).view(B, T, 1)
    mask_scores = _overlapping_chunks(torch.ones_like(bias), h) @ \
        _overlapping_chunks(bias, h).transpose(2, 3)
    logits = logits + _chunk_scores_to_band(mask_scores, h).view(B, T, 1, w)
    probs = logits.softmax(dim=-1).masked_fill(~key_mask.view(B, T, 1, 1), 0.0)
    if drop is not None:                                  # same layout: B×T×H×w
        probs = probs * drop
    # probabilities of each h-query group shifted onto the 3h keys [start - h, start + 2h)
    probs = probs.transpose(1, 2).reshape(B * H, T // h, h, w)
    shifted = F.pad(probs, (0, h + 1)).flatten(-2)[..., :-h].view(B * H, T // h, h, 3 * h + 1)
    values = F.pad(v, (0, 0, h, h), value=-1.0).unfold(1, 3 * h, h)       # N×(T/h)×d×3h
    out = shifted[..., :-1] @ values.transpose(2, 3)                       # N×(T/h)×h×d
    return out.view(B, H, T, d).transpose(2, 3)
