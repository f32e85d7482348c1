"""Optical flow between consecutive frames for I3D's flow stream: TV-L1 (OpenCV contrib) or
RAFT (torchvision). Flow is in pixels of the frames given, ``(2, H, W)`` as (x, y); the stream
input is the flow clipped to [-20, 20] and divided by 20 (:func:`flow_to_input`).
"""
from __future__ import annotations

from typing import Callable, Iterator, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..core.registry import Registry

__all__ = ["FLOW_BOUND", "FLOW_METHODS", "flow_fields", "flow_to_input"]

FLOW_BOUND = 20.0
FLOW_METHODS = Registry("flow method")
FlowFn = Callable[[List[np.ndarray]], List[torch.Tensor]]


def flow_to_input(flow: torch.Tensor) -> torch.Tensor:
    """Clip to [-20, 20] pixels and scale to [-1, 1]."""
    return flow.clamp(-FLOW_BOUND, FLOW_BOUND) / FLOW_BOUND


@FLOW_METHODS.register("tvl1")
def tvl1_flow(device: torch.device, weights: Optional[str]) -> FlowFn:
    """TV-L1 (Zach, Pock & Bischof) with OpenCV's default parameters, on grey frames."""
    import cv2

    if not hasattr(cv2, "optflow"):
        raise RuntimeError("TV-L1 flow needs OpenCV's contrib modules: "
                           "pip install opencv-contrib-python-headless")
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()

    def compute(frames: List[np.ndarray]) -> List[torch.Tensor]:
        grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        return [torch.from_numpy(tvl1.calc(a, b, None)).permute(2, 0, 1)
                for a, b in zip(grey[:-1], grey[1:])]

    return compute


@FLOW_METHODS.register("raft")
def raft_flow(device: torch.device, weights: Optional[str]) -> FlowFn:
    """torchvision's RAFT-large (12 refinement steps); ``weights``: a ``Raft_Large_Weights`` name,
    ``default``, or ``none`` (random). Frames are padded (edge) to a multiple of 8."""
    from .tv_import import torchvision_models

    models = torchvision_models()
    chosen = None if weights == "none" else models.optical_flow.Raft_Large_Weights[
        "DEFAULT" if weights in (None, "default") else weights]
    model = models.optical_flow.raft_large(weights=chosen).to(device).eval()

    def compute(frames: List[np.ndarray]) -> List[torch.Tensor]:
        images = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).to(device)
        images = images.float() / 127.5 - 1.0           # the weights' transform: [-1, 1]
        height, width = images.shape[-2:]
        images = F.pad(images, (0, -width % 8, 0, -height % 8), mode="replicate")
        with torch.no_grad():
            flow = model(images[:-1], images[1:])[-1]
        return list(flow[..., :height, :width].float().cpu())

    return compute


def flow_fields(frames: Iterator[np.ndarray], compute: FlowFn,
                pairs_per_call: int = 1) -> Iterator[torch.Tensor]:
    """One flow field per frame: field ``i`` goes from frame ``i`` to ``i + 1``; the last frame
    repeats the previous field (a one-frame video gives a zero field). Streams ``pairs_per_call``
    pairs at a time."""
    window: List[np.ndarray] = []
    last: Optional[torch.Tensor] = None
    for frame in frames:
        window.append(frame)
        if len(window) > pairs_per_call:
            for last in compute(window):
                yield last
            window = window[-1:]
    if len(window) > 1:
        for last in compute(window):
            yield last
    if window:
        yield last if last is not None else torch.zeros(2, *window[0].shape[:2])

