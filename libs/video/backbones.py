"""Clip feature extractors, by name: ``i3d`` and torchvision's video classifiers.

An extractor turns decoded frames into per-frame inputs (:meth:`frame_inputs`, run where the
video is decoded; every preprocessing step is per frame, so overlapping clips share it) and a
batch of clips into features (:meth:`forward`: tuple of ``(B, C, T, H, W)`` -> ``(B, D)``).
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..core.registry import Registry
from .flow import FLOW_METHODS, flow_fields, flow_to_input
from .i3d import I3D_FEATURE_DIM, InceptionI3d, load_i3d_weights
from .options import ExtractorOptions
from .tv_import import torchvision_models

__all__ = ["ClipExtractor", "VIDEO_BACKBONES", "build_extractor", "resize_short_side",
           "centre_crop"]

VIDEO_BACKBONES = Registry("video backbone")
FrameInputs = Tuple[torch.Tensor, ...]


def resize_short_side(image: np.ndarray, short: int) -> np.ndarray:
    """``H x W x C`` uint8 image with its shorter side resized to ``short`` (area filter when
    shrinking, bilinear when enlarging; unchanged when already that size)."""
    import cv2

    height, width = image.shape[:2]
    if min(height, width) == short:
        return image
    scale = short / min(height, width)
    size = (max(short, round(width * scale)), max(short, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size x size`` of ``(..., H, W)``."""
    height, width = x.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"frames of {height}x{width} are smaller than the {size}x{size} crop")
    top, left = (height - size) // 2, (width - size) // 2
    return x[..., top:top + size, left:left + size]


class ClipExtractor(nn.Module):
    """Base class: ``dim`` features per clip from ``frame_inputs`` streams."""

    dim: int

    def frame_inputs(self, frames: Iterator[np.ndarray]) -> Iterator[FrameInputs]:
        raise NotImplementedError


class I3dExtractor(ClipExtractor):
    """I3D RGB stream, optionally followed by the flow stream (features concatenated)."""

    def __init__(self, opts: ExtractorOptions, device: torch.device) -> None:
        super().__init__()
        self.opts = opts
        self.rgb = self._stream(3, opts.rgb_weights, "--rgb-weights")
        self.flow = self._stream(2, opts.flow_weights, "--flow-weights") if opts.two_stream \
            else None
        self.flow_fn = FLOW_METHODS.get(opts.flow)(device, opts.weights) if opts.two_stream \
            else None
        self.dim = I3D_FEATURE_DIM * (2 if opts.two_stream else 1)

    def _stream(self, in_channels: int, path: Optional[str], option: str) -> InceptionI3d:
        model = InceptionI3d(in_channels)
        if self.opts.weights != "none":
            if path is None:
                raise ValueError(f"i3d needs {option} FILE (pytorch-i3d layout), or "
                                 f"--weights none for random weights")
            load_i3d_weights(model, path)
        return model.eval()

    def frame_inputs(self, frames: Iterator[np.ndarray]) -> Iterator[FrameInputs]:
        resized = (resize_short_side(f, self.opts.short_side) for f in frames)
        if self.flow is None:
            for image in resized:
                yield (self._rgb_input(image),)
            return
        images: list = []

        def remember() -> Iterator[np.ndarray]:
            for image in resized:
                images.append(image)
                yield image

        for field in flow_fields(remember(), self.flow_fn, pairs_per_call=8):
            yield self._rgb_input(images.pop(0)), centre_crop(flow_to_input(field),
                                                              self.opts.crop_size)

    def _rgb_input(self, image: np.ndarray) -> torch.Tensor:
        """``(3, crop, crop)`` in [-1, 1]."""
        x = centre_crop(torch.from_numpy(image).permute(2, 0, 1), self.opts.crop_size)
        return x.float() / 127.5 - 1.0

    def forward(self, clips: FrameInputs) -> torch.Tensor:
        feats = self.rgb(clips[0])
        return feats if self.flow is None else torch.cat([feats, self.flow(clips[1])], dim=1)


VIDEO_BACKBONES.register("i3d")(I3dExtractor)


class TorchvisionExtractor(ClipExtractor):
    """A torchvision video classifier with its classification layer removed, fed through its
    weights' published transform (resize, centre crop, scale, normalise), one frame at a time."""

    # name -> (attribute holding the classifier, feature dimension)
    HEADS = {"r2plus1d_18": ("fc", 512), "r3d_18": ("fc", 512), "mc3_18": ("fc", 512),
             "s3d": ("classifier", 1024), "mvit_v1_b": ("head", 768), "mvit_v2_s": ("head", 768),
             "swin3d_t": ("head", 768), "swin3d_s": ("head", 768), "swin3d_b": ("head", 1024)}

    def __init__(self, name: str, opts: ExtractorOptions, device: torch.device) -> None:
        super().__init__()
        models = torchvision_models()
        weights_enum = models.get_model_weights(name)
        member = "DEFAULT" if opts.weights == "default" else opts.weights
        if member != "none" and member not in weights_enum.__members__:
            raise ValueError(f"--weights {opts.weights}: {name} has weights "
                             f"{', '.join(weights_enum.__members__)} (or default, none)")
        chosen = None if member == "none" else weights_enum[member]
        shortest = weights_enum.DEFAULT.meta.get("min_temporal_size") or 1
        if opts.clip_len < shortest or (name.startswith("mvit") and opts.clip_len != 16):
            need = "exactly 16" if name.startswith("mvit") else f"at least {shortest}"
            raise ValueError(f"--clip-len {opts.clip_len}: {name} needs {need} frames per clip")
        self.transform = (chosen or weights_enum.DEFAULT).transforms()
        self.model = models.get_model(name, weights=chosen).eval()
        head, self.dim = self.HEADS[name]
        setattr(self.model, head, nn.Identity())

    def frame_inputs(self, frames: Iterator[np.ndarray]) -> Iterator[FrameInputs]:
        for image in frames:
            frame = torch.from_numpy(image).permute(2, 0, 1)[None]      # (T=1, 3, H, W)
            yield (self.transform(frame)[:, 0],)                          # (3, h, w)

    def forward(self, clips: FrameInputs) -> torch.Tensor:
        out = self.model(clips[0])
        return out.mean(dim=(2, 3, 4)) if out.dim() == 5 else out


def _torchvision_builder(name: str) -> Callable[[ExtractorOptions, torch.device], ClipExtractor]:
    def build(opts: ExtractorOptions, device: torch.device) -> ClipExtractor:
        return TorchvisionExtractor(name, opts, device)
    return build


for _name in TorchvisionExtractor.HEADS:
    VIDEO_BACKBONES.register(_name)(_torchvision_builder(_name))


def build_extractor(opts: ExtractorOptions, device: torch.device) -> ClipExtractor:
    """The named extractor in eval mode on ``device``; bad names / weights raise ValueError."""
    try:
        builder = VIDEO_BACKBONES.get(opts.backbone)
        if opts.two_stream:
            FLOW_METHODS.get(opts.flow)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    if opts.two_stream and opts.backbone != "i3d":
        raise ValueError(f"--two-stream: only i3d has a flow stream, not {opts.backbone}")
    return builder(opts, device).to(device).eval()
