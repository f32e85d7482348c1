"""Loading weights, e.g. a released checkpoint's ``state_dict_ema``, into a model."""
from __future__ import annotations

import os
import pickle
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import Tensor, nn

__all__ = ["strip_prefix", "load_model_weights"]

_MAX_LISTED = 10


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str = "module.") -> Dict[str, Tensor]:
    """Drop ``prefix`` from the keys when *every* key carries it (DataParallel checkpoints)."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _listing(title: str, keys) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:_MAX_LISTED]) + (f", … ({len(keys) - _MAX_LISTED} more)"
                                              if len(keys) > _MAX_LISTED else "")
    return f"{title} ({len(keys)}): {shown}"


def _select(ckpt: Mapping[str, Any], key: Optional[str], source: str) -> Mapping[str, Tensor]:
    """The state dict inside a checkpoint dict (``ckpt[key]``) or the dict itself."""
    if key is not None and key in ckpt:
        return ckpt[key]
    if ckpt and all(isinstance(v, Tensor) for v in ckpt.values()):
        return ckpt
    raise KeyError(f"{source}: no '{key}' entry and not a plain state dict; "
                   f"its keys are {sorted(ckpt)}")


def load_model_weights(model: nn.Module, ckpt_or_path: Union[str, os.PathLike, Mapping[str, Any]],
                       key: Optional[str] = "state_dict_ema",
                       map_location: Union[str, torch.device, None] = None,
                       weights_only: bool = True) -> None:
    """Load weights into ``model`` (the bare model, not a DataParallel / DDP wrapper) strictly.

    ``ckpt_or_path``: a checkpoint file, a checkpoint dict (``key`` picks the state dict, e.g.
    ``state_dict_ema`` or ``state_dict``) or a state dict. A ``module.`` prefix on every key is
    stripped. Storage is mapped to ``map_location`` (default: the model's device). Missing or
    unexpected keys and shape mismatches raise one ``ValueError`` listing them.
    """
    source = str(ckpt_or_path) if isinstance(ckpt_or_path, (str, os.PathLike)) else "checkpoint"
    if map_location is None:
        map_location = next(model.parameters()).device
    if isinstance(ckpt_or_path, (str, os.PathLike)):
        try:
            ckpt = torch.load(ckpt_or_path, map_location=map_location, weights_only=weights_only)
        except pickle.UnpicklingError as exc:
            raise ValueError(f"{source}: cannot be read with weights_only={weights_only} ({exc}); "
                             f"if you trust the file, pass weights_only=False") from None
    else:
        ckpt = ckpt_or_path
    state = strip_prefix(_select(ckpt, key, source))
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        problems = [_listing(title, keys) for title, keys in
                    (("missing keys", missing), ("unexpected keys", unexpected),
                     ("shape mismatches", mismatched)) if keys]
        raise ValueError(f"{source}: weights do not fit the model: " + "; ".join(problems))
    model.load_state_dict({k: v.to(map_location) for k, v in state.items()}, strict=True)
