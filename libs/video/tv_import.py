"""Import torchvision even where its C++ operators cannot load.

The torchvision 0.28.0 wheels on PyPI are built for CUDA builds of torch 2.13; with the CPU
build their ``_C`` library does not load, and ``import torchvision`` then fails while
registering fake kernels for ``torchvision::nms`` / ``qnms``. When that library is missing we
declare the two operator schemas (no kernels) first, so the pure-Python parts this package uses
(video classifiers, RAFT, transforms) import and run; torchvision's own C++ operators (NMS,
RoIAlign, ...) stay unavailable, and nothing here uses them.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

import torch

__all__ = ["torchvision_models"]

_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_library = None


def _c_ops_load() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.submodule_search_locations is None:
        return False
    folder = list(spec.submodule_search_locations)[0]
    names = [n for n in os.listdir(folder) if n.startswith("_C.") and n.endswith((".so", ".pyd"))]
    try:
        torch.ops.load_library(os.path.join(folder, names[0]))
        return True
    except (IndexError, OSError, RuntimeError):
        return False


def torchvision_models() -> ModuleType:
    """``torchvision.models``, importing torchvision as described above."""
    global _library
    if _library is None and "torchvision" not in sys.modules and not _c_ops_load():
        if not hasattr(torch.ops.torchvision, "nms"):
            _library = torch.library.Library("torchvision", "DEF")
            for schema in _SCHEMAS:
                _library.define(schema)
    return importlib.import_module("torchvision.models")
