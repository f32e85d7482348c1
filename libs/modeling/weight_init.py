"""Weight initialisation routines with the reference's random draws."""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["trunc_normal_"]


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


@torch.no_grad()
def trunc_normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0,
                  b: float = 2.0) -> Tensor:
    """Fill ``tensor`` in place with N(mean, std²) truncated to [a, b]; returns it.

    Inverse-CDF sampling, one uniform draw per element: ``u ~ U[2Φ(α) - 1, 2Φ(β) - 1]`` with
    ``α = (a - mean)/std``, ``β = (b - mean)/std``, then ``mean + std·√2·erfinv(u)``, clamped to
    [a, b]. These are the reference's values for a given seed; ``torch.nn.init.trunc_normal_`` of
    recent PyTorch versions samples by rejection and gives other values.
    """
    low = _normal_cdf((a - mean) / std)
    high = _normal_cdf((b - mean) / std)
    tensor.uniform_(2 * low - 1, 2 * high - 1)
    tensor.erfinv_()
    tensor.mul_(std * math.sqrt(2.0))
    tensor.add_(mean)
    tensor.clamp_(min=a, max=b)
    return tensor
