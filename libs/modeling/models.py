"""Registries of the pluggable model parts, with the reference's helper names."""
from __future__ import annotations

from torch import nn

from libs.core.registry import Registry

__all__ = ["BACKBONES", "NECKS", "GENERATORS", "META_ARCHS",
           "register_backbone", "register_neck", "register_generator", "register_meta_arch",
           "make_backbone", "make_neck", "make_generator", "make_meta_arch"]

BACKBONES = Registry("backbone")
NECKS = Registry("neck")
GENERATORS = Registry("point generator")
META_ARCHS = Registry("meta architecture")

register_backbone = BACKBONES.register
register_neck = NECKS.register
register_generator = GENERATORS.register
register_meta_arch = META_ARCHS.register


def make_backbone(name: str, **kwargs) -> nn.Module:
    """Build the backbone registered as ``name`` (``convTransformer`` or ``conv``)."""
    return BACKBONES.build(name, **kwargs)


def make_neck(name: str, **kwargs) -> nn.Module:
    """Build the neck registered as ``name`` (``identity`` or ``fpn``)."""
    return NECKS.build(name, **kwargs)


def make_generator(name: str, **kwargs) -> nn.Module:
    """Build the location generator registered as ``name`` (``point``)."""
    return GENERATORS.build(name, **kwargs)


def make_meta_arch(name: str, **kwargs) -> nn.Module:
    """Build the detector registered as ``name``: ``make_meta_arch(cfg['model_name'], **cfg['model'])``."""
    return META_ARCHS.build(name, **kwargs)
