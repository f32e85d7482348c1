"""Helpers for the video tests: synthetic videos (PyAV) and reproducible random I3D weights."""
from __future__ import annotations

from fractions import Fraction
from typing import Dict, Union

import numpy as np
import torch


def moving_square_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """``(N, H, W, 3)`` uint8: a bright square moving right over a vertical colour gradient."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    frames[..., 2] = np.linspace(0, 200, height, dtype=np.uint8)[None, :, None]
    side = max(4, min(height, width) // 4)
    for i in range(num_frames):
        left = (3 * i) % max(1, width - side)
        top = (height - side) // 2
        frames[i, top:top + side, left:left + side] = (250, 240, 30)
    return frames


def write_video(path: str, num_frames: int, fps: Union[int, Fraction] = 30, height: int = 64,
                width: int = 80) -> np.ndarray:
    """Encode :func:`moving_square_frames` with MPEG-4 at ``fps``; returns the frames written."""
    from libs.video.encoding import write_frames

    frames = moving_square_frames(num_frames, height, width)
    write_frames(path, frames, fps, height, width)
    return frames


def random_i3d_state_dict(model: torch.nn.Module, seed: int,
                          num_classes: int = 400) -> Dict[str, torch.Tensor]:
    """Seeded random weights for every tensor of ``model`` (sorted key order) plus a
    ``logits`` classifier, scaled so that activations stay O(1) through the network."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, ref in sorted(model.state_dict().items()):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("conv3d.weight"):
            fan_in = ref[0].numel()
            state[key] = torch.randn(ref.shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(ref.shape, generator=gen)
        elif key.endswith("bn.weight"):
            state[key] = 1.0 + 0.1 * torch.randn(ref.shape, generator=gen)
        else:                                   # bn.bias, running_mean
            state[key] = 0.1 * torch.randn(ref.shape, generator=gen)
    state["logits.conv3d.weight"] = 0.01 * torch.randn((num_classes, 1024, 1, 1, 1), generator=gen)
    state["logits.conv3d.bias"] = torch.zeros(num_classes)
    return state
