"""YAML configuration: reference defaults, recursive merge, validation and overrides.

``load_config(path)`` returns a plain nested dict, exactly the reference's: the YAML
merged over :data:`DEFAULTS`, then the derived fields filled in (``model.input_dim``,
``model.num_classes``, ``model.max_seq_len`` copied from ``dataset``; ``model.train_cfg`` and
``model.test_cfg`` being the very same dict objects as the top-level sections).

On top of the reference it validates before any data is read: unknown keys (with the closest
known key suggested), wrong types for numeric fields, and impossible values such as a
``max_seq_len`` that the attention windows cannot tile.
"""
from __future__ import annotations

import copy
import difflib
import os
import pprint
from typing import Any, Dict, Iterable, List, Optional, Sequence

import yaml

__all__ = ["DEFAULTS", "EXTRA_DEFAULTS", "TRIDET_DEFAULTS", "ConfigError", "load_config",
           "config_from_dict", "load_default_config", "apply_overrides", "validate_config",
           "save_config", "max_div_factor", "schema_defaults"]

# --------------------------------------------------------------------------------------------
# Defaults: identical in keys and values to the reference.
# --------------------------------------------------------------------------------------------
DEFAULTS: Dict[str, Any] = {
    "init_rand_seed": 1234567891,
    "dataset_name": "epic",
    "devices": ["cuda:0"],
    "train_split": ("training",),
    "val_split": ("validation",),
    "model_name": "LocPointTransformer",
    "dataset": {
        "feat_stride": 16,        # frames between two consecutive features
        "num_frames": 32,         # frames covered by one feature window
        "default_fps": None,      # None: per-video fps from the annotation JSON
        "input_dim": 2304,        # feature channels (int, or list for multi-source Ego4D)
        "num_classes": 97,
        "downsample_rate": 1,     # temporal sub-sampling of the features
        "max_seq_len": 2304,      # training length / inference pad length (feature steps)
        "trunc_thresh": 0.5,      # min fraction of an action kept by random truncation
        "crop_ratio": None,       # e.g. [0.9, 1.0]: random crop of short videos
        "force_upsampling": False,  # ActivityNet: resize every video to max_seq_len steps
    },
    "loader": {
        "batch_size": 8,
        "num_workers": 4,
    },
    "model": {
        "backbone_type": "convTransformer",   # convTransformer | conv
        "fpn_type": "identity",               # identity | fpn
        "backbone_arch": (2, 2, 5),           # #embedding convs, #stem blocks, #branch blocks
        "scale_factor": 2,                    # stride ratio between pyramid levels
        "regression_range": [(0, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 10000)],
        "n_head": 4,
        "n_mha_win_size": -1,                 # int or per-level list; <= 1 means global attention
        "embd_kernel_size": 3,
        "embd_dim": 512,
        "embd_with_ln": True,
        "fpn_dim": 512,
        "fpn_with_ln": True,
        "fpn_start_level": 0,
        "head_dim": 512,
        "head_kernel_size": 3,
        "head_num_layers": 3,                 # including the final classifier / regressor
        "head_with_ln": True,
        # Accepted and ignored: the reference sizes its point buffer as max_seq_len × this
        # factor and stops on longer inputs; here points are made on demand for any length
        # (the model warns once when an input exceeds what the reference would have taken).
        "max_buffer_len_factor": 6.0,
        "use_abs_pe": False,
        "use_rel_pe": False,
    },
    "train_cfg": {
        "center_sample": "radius",            # radius | none
        "center_sample_radius": 1.5,
        "loss_weight": 1.0,                   # <= 0: automatic balancing
        "cls_prior_prob": 0.01,
        "init_loss_norm": 2000,
        "clip_grad_l2norm": -1,               # <= 0 disables clipping
        "head_empty_cls": [],
        "dropout": 0.0,
        "droppath": 0.1,
        "label_smoothing": 0.0,
    },
    "test_cfg": {
        "pre_nms_thresh": 0.001,
        "pre_nms_topk": 5000,                 # per pyramid level
        "iou_threshold": 0.1,                 # hard NMS only
        "min_score": 0.01,
        "max_seg_num": 1000,
        "nms_method": "soft",                 # soft | hard | none
        "nms_sigma": 0.5,
        "duration_thresh": 0.05,              # feature-grid steps
        "multiclass_nms": True,
        "ext_score_file": None,
        "voting_thresh": 0.75,                # class-agnostic NMS only
    },
    "opt": {
        "type": "AdamW",                      # AdamW | SGD
        "momentum": 0.9,
        "weight_decay": 0.0,
        "learning_rate": 1e-3,                # per device
        "epochs": 30,                         # excluding warm-up
        "warmup": True,
        "warmup_epochs": 5,
        "schedule_type": "cosine",            # cosine | multistep
        "schedule_steps": [],
        "schedule_gamma": 0.1,
    },
}

# Keys this project adds on top of the reference. Their defaults reproduce the reference; they
# are filled in like the defaults, so a resolved config always shows them.
EXTRA_DEFAULTS: Dict[str, Any] = {
    "dataset": {
        "widen_truncation": None,  # training crop clips actions to its window widened by half a
                                   # feature window (true) or not (false); null: the loader's rule
        "exclude_videos": [],      # video ids left out of training and evaluation, e.g. THUMOS14's
    },                             # mislabelled video_test_0000270 and video_test_0001292
    "amp": None,                  # None | 'bf16' | 'fp16': autocast around the model's forward
    "ema_decay": 0.999,           # model EMA decay per iteration (the reference's constant)
    "test_cfg": {
        "tight_padding": False,   # True: pad each video only to a multiple of max_div_factor
    },                            # (changes outputs near video ends; faster on short videos)
    # Less padded work in training (changes what the coarse levels see near video ends):
    # pad each batch to its longest video rounded up to max_div_factor instead of max_seq_len,
    # and (length_bucketing) batch videos of similar length together.
    "train_cfg": {
        "pad_to_batch_max": False,
    },
    "loader": {
        "length_bucketing": False,
    },
    # How the features were made from videos (tools/extract_features.py options); lets
    # tools/predict.py run on video files. backbone None: not recorded (feature files only).
    "features": {
        "backbone": None, "clip_len": 16, "stride": 4, "fps": None, "weights": "default",
        "rgb_weights": None, "flow_weights": None, "two_stream": False, "flow": "tvl1",
        "short_side": 256, "crop_size": 224,
    },
}

# --------------------------------------------------------------------------------------------
# TriDet schema (issue 13): TriDet's own defaults (its libs/core/config.py), used for configs
# with ``model_name: TriDet``, or with no ``model_name`` and any TriDet-only model key.
# --------------------------------------------------------------------------------------------
TRIDET_NAME = "TriDet"
TRIDET_DEFAULTS: Dict[str, Any] = {
    **{k: v for k, v in DEFAULTS.items() if k not in ("model", "opt")},
    "model_name": TRIDET_NAME,
    "dataset": {**DEFAULTS["dataset"], "widen_truncation": False},   # TriDet's loaders' crop
    "model": {
        "backbone_type": "SGP",               # SGP | conv
        "fpn_type": "identity",               # identity | fpn
        "backbone_arch": (2, 2, 5),           # #embedding convs, #stem SGP, #branch SGP
        "scale_factor": 2,
        "regression_range": [(0, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 10000)],
        "n_sgp_win_size": -1,                 # int or per-level list: window w of each level
        "embd_kernel_size": 3,
        "embd_dim": 512,
        "embd_with_ln": True,
        "sgp_mlp_dim": None,                  # SGP MLP width; None: 4 x embd_dim (no TriDet default)
        "fpn_dim": 512,
        "fpn_with_ln": True,
        "head_dim": 512,
        "head_kernel_size": 3,
        "boudary_kernel_size": 3,             # (sic, TriDet's key) start / end heads' kernel
        "head_num_layers": 3,
        "head_with_ln": True,
        "max_buffer_len_factor": 6.0,
        "use_abs_pe": False,
        "use_trident_head": True,
        "downsample_type": "max",             # max | avg
        "k": 1.5,                             # long-kernel factor of SGP
        "init_conv_vars": 0,                  # std of SGP depthwise conv init (0: all zero)
        "num_bins": 16,                       # Trident bins (excluding 0)
        "iou_weight_power": 1.0,              # focal loss x IoU**power on positives
        "input_noise": 0,                     # std of Gaussian noise added to training inputs
        "sgp_masked": False,                  # opt-in fix: SGP statistics/convs over valid steps
    },
    "opt": {**DEFAULTS["opt"], "eta_min": 1e-8},
}
# Keys only TriDet's model block has: their presence (and no model_name) selects TriDet's schema.
_TRIDET_ONLY_MODEL_KEYS = frozenset(TRIDET_DEFAULTS["model"]) - frozenset(DEFAULTS["model"])
# --- end TriDet schema ---

# Keys with no default that a YAML may (or, for data paths, should) carry.
_OPTIONAL_KEYS = {
    "output_folder": (str,),
    "dataset.json_file": (str,),
    "dataset.feat_folder": (str, list),
    "dataset.file_prefix": (str, type(None)),
    "dataset.file_ext": (str, type(None)),
    "opt.early_stop_epochs": (int,),
    # --- TemporalMaxer: SimOTA label assignment (absent or null: ActionFormer's assignment) ---
    "model.assigner": (dict, type(None)),
    "model.assigner.center_radius": (int, float),
    "model.assigner.iou_weight": (int, float),
    "model.assigner.cls_weight": (int, float),
    "model.assigner.keep_percent": (int, float),
    "model.assigner.confuse_weight": (int, float),
    "model.fpn_norm": (str, type(None)),          # TemporalMaxerArchitecture's neck only
    # --- end TemporalMaxer ---
    "dataset.backbone_type": (str,),   # HACS (TriDet's configs): feature type i3d | slowfast | tsp
}
# Derived keys (present in a saved resolved config); recomputed on every load.
_DERIVED_KEYS = ("model.input_dim", "model.num_classes", "model.max_seq_len",
                 "model.train_cfg", "model.test_cfg")

# Fields whose default is None or whose type the default alone does not tell.
_NUMBER = (int, float)
_EXPLICIT_TYPES = {
    "dataset.default_fps": _NUMBER + (type(None),),
    "dataset.input_dim": (int, list),
    "dataset.crop_ratio": (list, type(None)),
    "model.n_mha_win_size": (int, list),
    "model.embd_dim": (int, list),
    "test_cfg.ext_score_file": (str, type(None)),
    "amp": (str, type(None)),
    "features.backbone": (str, type(None)),
    "features.fps": _NUMBER + (type(None),),
    "features.rgb_weights": (str, type(None)),
    "features.flow_weights": (str, type(None)),
    "model.n_sgp_win_size": (int, list),          # TriDet
    "model.sgp_mlp_dim": (int, type(None)),       # TriDet
    "dataset.widen_truncation": (bool, type(None)),
}
# Integer-valued fields (counts, sizes); other fields with an integer default accept any number.
_INTEGER_KEYS = {
    "init_rand_seed", "dataset.num_classes", "dataset.downsample_rate", "dataset.max_seq_len",
    "loader.batch_size", "loader.num_workers", "model.scale_factor", "model.n_head",
    "model.embd_kernel_size", "model.fpn_dim", "model.fpn_start_level", "model.head_dim",
    "model.head_kernel_size", "model.head_num_layers", "test_cfg.pre_nms_topk",
    "test_cfg.max_seg_num", "opt.epochs", "opt.warmup_epochs", "opt.early_stop_epochs",
    "features.clip_len", "features.stride", "features.short_side", "features.crop_size",
    "model.boudary_kernel_size", "model.num_bins",                           # TriDet
}
_CHOICES = {
    "train_cfg.center_sample": ("radius", "none"),
    "test_cfg.nms_method": ("soft", "hard", "none"),
    "opt.type": ("AdamW", "SGD"),
    "opt.schedule_type": ("cosine", "multistep"),
    "amp": (None, "bf16", "fp16"),
    "model.downsample_type": ("max", "avg"),      # TriDet
    "model.fpn_norm": ("groupnorm", "layernorm", None),
    "dataset.backbone_type": ("i3d", "slowfast", "tsp"),
}


class ConfigError(ValueError):
    """Raised with one line per problem found in a configuration."""


# --------------------------------------------------------------------------------------------
# Helpers over nested dicts
# --------------------------------------------------------------------------------------------
def _as_lists(value: Any) -> Any:
    """Tuples -> lists, recursively (YAML has no tuples; keeps load -> save -> load exact)."""
    if isinstance(value, dict):
        return {k: _as_lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value


def _merge_defaults(defaults: Dict[str, Any], cfg: Dict[str, Any]) -> None:
    """Insert (deep copies of) missing default keys into ``cfg``, recursively, in place."""
    for key, value in defaults.items():
        if key not in cfg:
            cfg[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(cfg[key], dict):
            _merge_defaults(value, cfg[key])


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; sections stay as keys of their own too."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        flat[path] = value
        if isinstance(value, dict) and path not in ("model.train_cfg", "model.test_cfg"):
            flat.update(_flatten(value, path + "."))
    return flat


def schema_defaults(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The defaults table of ``cfg``'s schema: TriDet's when ``model_name`` is ``TriDet``, or
    when no ``model_name`` is given and the model block has a key only TriDet has; else the
    reference's."""
    name = cfg.get("model_name")
    model = cfg.get("model")
    if name == TRIDET_NAME or (name is None and isinstance(model, dict)
                               and _TRIDET_ONLY_MODEL_KEYS & set(model)):
        return TRIDET_DEFAULTS
    return DEFAULTS


def _known_paths(defaults: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Every accepted dotted key of a schema (the reference's by default), mapped to its default
    (None where there is none)."""
    known = _flatten(DEFAULTS if defaults is None else defaults)
    known.update(_flatten(EXTRA_DEFAULTS))
    for key in list(_OPTIONAL_KEYS) + list(_DERIVED_KEYS):
        known.setdefault(key, None)
    return known


_SECTIONS = {k for k, v in {**_flatten(DEFAULTS), **_flatten(EXTRA_DEFAULTS)}.items()
             if isinstance(v, dict)}


def _suggest(path: str, known: Iterable[str]) -> str:
    """The closest known key, preferring siblings in the same section."""
    section, _, leaf = path.rpartition(".")
    siblings = [k for k in known if k.rpartition(".")[0] == section]
    match = difflib.get_close_matches(leaf, [k.rpartition(".")[2] for k in siblings], n=1, cutoff=0.6)
    if match:
        return f"{section}.{match[0]}" if section else match[0]
    match = difflib.get_close_matches(path, list(known), n=1, cutoff=0.6)
    return match[0] if match else ""


def _type_name(types: Sequence[type]) -> str:
    names = {int: "an integer", float: "a number", bool: "true/false", str: "a string",
             list: "a list", dict: "a mapping", type(None): "null"}
    if set(types) >= {int, float}:
        types = [t for t in types if t is not int]
    return " or ".join(names.get(t, t.__name__) for t in types)


def _expected_types(path: str, default: Any) -> Optional[tuple]:
    if path in _EXPLICIT_TYPES:
        return _EXPLICIT_TYPES[path]
    if path in _OPTIONAL_KEYS:
        return _OPTIONAL_KEYS[path]
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, float):
        return _NUMBER
    if isinstance(default, int):
        return (int,) if path in _INTEGER_KEYS else _NUMBER
    if isinstance(default, (list, tuple)):
        return (list,)
    if isinstance(default, str):
        return (str,)
    return None


def _check_type(path: str, value: Any, types: tuple) -> Optional[str]:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    # a YAML int is fine where a float is expected
    if ok:
        return None
    hint = ""
    if isinstance(value, str) and float in types:
        try:
            float(value)
            hint = (f" (YAML reads '{value}' as a string; write the number with a dot, "
                    f"e.g. 1.0e-4 instead of 1e-4)")
        except ValueError:
            pass
    return f"{path}: expected {_type_name(types)}, got {value!r}{hint}"


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def max_div_factor(scale_factor: int, num_levels: int, win_sizes: Sequence[int]) -> int:
    """Largest length every pyramid level's attention needs to divide.

    Level ``l`` (stride ``s = scale_factor**l``) needs ``s * 2 * (w // 2)`` for a local window
    ``w > 1`` and ``s`` for global attention.
    """
    factor = 1
    for level in range(num_levels):
        stride = scale_factor ** level
        win = win_sizes[level]
        factor = max(factor, stride * 2 * (win // 2) if win > 1 else stride)
    return factor


def _check_values(cfg: Dict[str, Any]) -> List[str]:
    """Cross-field checks; assumes types are already right."""
    if cfg["model_name"] == TRIDET_NAME:
        return _check_tridet_values(cfg) + _check_common_values(cfg)
    errors = []
    model, data = cfg["model"], cfg["dataset"]
    arch = model["backbone_arch"]
    if model["backbone_type"] == "convPooler":   # TemporalMaxer: no stem
        if len(arch) != 2 or any(not isinstance(a, int) or a < 0 for a in arch):
            return [f"model.backbone_arch: expected two non-negative integers for convPooler "
                    f"(embedding convs, pooling levels), got {arch!r}"]
    elif len(arch) != 3 or any(not isinstance(a, int) or a < 0 for a in arch):
        return [f"model.backbone_arch: expected three non-negative integers "
                f"(embedding convs, stem blocks, branch blocks), got {arch!r}"]
    num_levels = arch[-1] + 1
    if "fpn_norm" in model and cfg["model_name"] != "TemporalMaxerArchitecture":
        errors.append("model.fpn_norm: only TemporalMaxerArchitecture has this key")
    if "backbone_type" in data and cfg["dataset_name"] != "hacs":
        errors.append("dataset.backbone_type: only the hacs data set has this key")
    wins = model["n_mha_win_size"]
    if isinstance(wins, list):
        if len(wins) != num_levels:
            errors.append(f"model.n_mha_win_size: a list needs one window per pyramid level "
                          f"({num_levels} for backbone_arch {arch}), got {len(wins)}")
            wins = None
    else:
        wins = [wins] * num_levels
    ranges = model["regression_range"]
    if len(ranges) != num_levels - model["fpn_start_level"]:
        errors.append(f"model.regression_range: expected {num_levels - model['fpn_start_level']} "
                      f"[min, max] pairs (one per pyramid level), got {len(ranges)}")
    elif any(len(r) != 2 or r[0] > r[1] for r in ranges):
        errors.append(f"model.regression_range: every entry must be [min, max] with min <= max, got {ranges}")
    if wins is not None:                  # the reference checks this for every backbone
        factor = max_div_factor(model["scale_factor"], num_levels, wins)
        if data["max_seq_len"] % factor:
            errors.append(
                f"dataset.max_seq_len: {data['max_seq_len']} is not divisible by {factor} "
                f"(largest stride x window of the attention pyramid: scale_factor "
                f"{model['scale_factor']}, {num_levels} levels, windows {wins}); "
                f"use a multiple of {factor}")
    embd = model["embd_dim"]
    in_dim = data["input_dim"]
    if isinstance(in_dim, list) != isinstance(embd, list):
        errors.append("model.embd_dim: must be a list exactly when dataset.input_dim is a list "
                      f"(multi-source input), got input_dim {in_dim!r} and embd_dim {embd!r}")
    elif isinstance(in_dim, list) and len(in_dim) != len(embd):
        errors.append(f"model.embd_dim: needs one width per input source ({len(in_dim)}), got {embd!r}")
    embd_total = sum(embd) if isinstance(embd, list) else embd
    if model["backbone_type"] == "convTransformer" and embd_total % model["n_head"]:
        errors.append(f"model.n_head: embedding width {embd_total} is not divisible by {model['n_head']} heads")
    if model["fpn_type"] == "identity" and embd_total != model["fpn_dim"]:
        errors.append(f"model.fpn_dim: the identity neck needs fpn_dim == embd_dim ({embd_total}), "
                      f"got {model['fpn_dim']}")
    if model["n_head"] <= 0:
        errors.append(f"model.n_head: must be > 0, got {model['n_head']}")
    return errors + _check_common_values(cfg)


def _check_common_values(cfg: Dict[str, Any]) -> List[str]:
    """Checks of the data, loader, optimiser and training values every model shares."""
    errors = []
    data, opt = cfg["dataset"], cfg["opt"]
    positive = [("dataset.max_seq_len", data["max_seq_len"]), ("dataset.num_classes", data["num_classes"]),
                ("dataset.feat_stride", data["feat_stride"]), ("dataset.num_frames", data["num_frames"]),
                ("dataset.downsample_rate", data["downsample_rate"]),
                ("loader.batch_size", cfg["loader"]["batch_size"]),
                ("model.scale_factor", cfg["model"]["scale_factor"])]
    errors += [f"{k}: must be > 0, got {v}" for k, v in positive if v <= 0]
    if cfg["loader"]["num_workers"] < 0:
        errors.append(f"loader.num_workers: must be >= 0, got {cfg['loader']['num_workers']}")
    if not 0.0 <= data["trunc_thresh"] <= 1.0:
        errors.append(f"dataset.trunc_thresh: must lie in [0, 1], got {data['trunc_thresh']}")
    crop = data["crop_ratio"]
    if crop is not None and (len(crop) != 2 or not 0 < crop[0] <= crop[1] <= 1):
        errors.append(f"dataset.crop_ratio: expected [r0, r1] with 0 < r0 <= r1 <= 1, got {crop!r}")
    if opt["learning_rate"] <= 0:
        errors.append(f"opt.learning_rate: must be > 0, got {opt['learning_rate']}")
    if opt["epochs"] < 0 or opt["warmup_epochs"] < 0:
        errors.append(f"opt.epochs / opt.warmup_epochs: must be >= 0, got {opt['epochs']} / {opt['warmup_epochs']}")
    for rate_key in ("dropout", "droppath", "label_smoothing"):
        if not 0.0 <= cfg["train_cfg"][rate_key] < 1.0:
            errors.append(f"train_cfg.{rate_key}: must lie in [0, 1), got {cfg['train_cfg'][rate_key]}")
    if cfg["loader"].get("length_bucketing") and not cfg["train_cfg"].get("pad_to_batch_max"):
        errors.append("loader.length_bucketing: only saves work with train_cfg.pad_to_batch_max: "
                      "true (every batch is padded to max_seq_len otherwise)")
    return errors



# --- TriDet schema checks (issue 13) ---
def _check_tridet_values(cfg: Dict[str, Any]) -> List[str]:
    """Cross-field checks of a TriDet config's model block."""
    model, data = cfg["model"], cfg["dataset"]
    arch = model["backbone_arch"]
    if len(arch) != 3 or any(not isinstance(a, int) or a < 0 for a in arch):
        return [f"model.backbone_arch: expected three non-negative integers "
                f"(embedding convs, stem SGP blocks, branch SGP blocks), got {arch!r}"]
    errors = []
    num_levels = arch[2] + 1
    wins = model["n_sgp_win_size"]
    wins = wins if isinstance(wins, list) else [wins] * num_levels
    if len(wins) != num_levels:
        errors.append(f"model.n_sgp_win_size: a list needs one window per pyramid level "
                      f"({num_levels} for backbone_arch {arch}), got {len(wins)}")
    elif model["backbone_type"] == "SGP" and any(w % 2 == 0 for w in wins[1:]):
        errors.append(f"model.n_sgp_win_size: SGP windows must be odd, got {wins}")
    if len(model["regression_range"]) != num_levels:
        errors.append(f"model.regression_range: expected {num_levels} [min, max] pairs "
                      f"(one per pyramid level), got {len(model['regression_range'])}")
    if model["backbone_type"] not in ("SGP", "conv"):
        errors.append(f"model.backbone_type: expected one of SGP, conv, got {model['backbone_type']!r}")
    if not isinstance(data["input_dim"], int) or not isinstance(model["embd_dim"], int):
        errors.append("dataset.input_dim / model.embd_dim: TriDet takes one feature source (integers)")
    elif model["backbone_type"] == "SGP" and model["embd_dim"] % 16:
        errors.append(f"model.embd_dim: SGP's GroupNorm needs a multiple of 16, got {model['embd_dim']}")
    if model["fpn_type"] == "identity" and model["embd_dim"] != model["fpn_dim"]:
        errors.append(f"model.fpn_dim: the identity neck needs fpn_dim == embd_dim "
                      f"({model['embd_dim']}), got {model['fpn_dim']}")
    coarsest = model["scale_factor"] ** arch[2]
    if data["max_seq_len"] % coarsest:
        errors.append(f"dataset.max_seq_len: {data['max_seq_len']} is not divisible by the "
                      f"coarsest pyramid stride {coarsest}")
    for key in ("num_bins", "boudary_kernel_size", "head_kernel_size", "embd_kernel_size"):
        if model[key] < 0 or (key != "num_bins" and model[key] % 2 == 0):
            errors.append(f"model.{key}: expected a{'n odd' if key != 'num_bins' else ''} "
                          f"non-negative integer, got {model[key]}")
    return errors
# --- end TriDet schema checks ---


def validate_config(cfg: Dict[str, Any], source: str = "config") -> None:
    """Raise :class:`ConfigError` listing every unknown key, wrong type and impossible value.

    ``source`` (a file name or ``--opts``) prefixes each line. The schema (reference or TriDet)
    follows ``cfg['model_name']``.
    """
    known = _known_paths(schema_defaults(cfg))
    errors = []
    for path, value in _flatten(cfg).items():
        if path not in known:
            close = _suggest(path, known)
            hint = f"; did you mean {close}?" if close else ""
            errors.append(f"{path}: unknown key{hint}")
            continue
        if path in _SECTIONS:
            if not isinstance(value, dict):
                errors.append(f"{path}: expected a mapping (a section of keys), got {value!r}")
            continue
        types = _expected_types(path, known[path])
        if types is not None:
            problem = _check_type(path, value, types)
            if problem:
                errors.append(problem)
                continue
        if path in _CHOICES and value not in _CHOICES[path]:
            choices = ", ".join(str(c) for c in _CHOICES[path])
            errors.append(f"{path}: expected one of {choices}, got {value!r}")
    if not errors:
        errors = _check_values(cfg)
    if errors:
        raise ConfigError("\n".join(f"{source}: {e}" for e in errors))


# --------------------------------------------------------------------------------------------
# Loading, overrides, saving
# --------------------------------------------------------------------------------------------
def load_default_config() -> Dict[str, Any]:
    """A fresh copy of the reference defaults plus this project's extra keys (derived fields filled)."""
    cfg = _as_lists(copy.deepcopy(DEFAULTS))
    _merge_defaults(_as_lists(EXTRA_DEFAULTS), cfg)
    return _update_derived(cfg)


def _update_derived(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Fill the derived model fields: copies of dataset fields and shared sections."""
    cfg["model"]["input_dim"] = cfg["dataset"]["input_dim"]
    cfg["model"]["num_classes"] = cfg["dataset"]["num_classes"]
    cfg["model"]["max_seq_len"] = cfg["dataset"]["max_seq_len"]
    cfg["model"]["train_cfg"] = cfg["train_cfg"]
    cfg["model"]["test_cfg"] = cfg["test_cfg"]
    return cfg


def _normalise_splits(cfg: Dict[str, Any]) -> None:
    """A split given as a single string means a one-element list (the reference would substring-match)."""
    for key in ("train_split", "val_split"):
        if isinstance(cfg.get(key), str):
            cfg[key] = [cfg[key]]


def _parse_override(item: str) -> tuple:
    if "=" not in item:
        raise ConfigError(f"--opts: '{item}': expected KEY=VALUE, e.g. opt.epochs=10")
    path, _, text = item.partition("=")
    path = path.strip()
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--opts: {path}: cannot parse value '{text}' ({exc.problem})") from None
    if isinstance(value, str):
        try:  # YAML 1.1 reads 1e-4 as a string; on a command line it surely means a number
            value = float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
        except ValueError:
            pass
    return path, _as_lists(value)


def apply_overrides(cfg: Dict[str, Any], overrides: Optional[Sequence[str]]) -> Dict[str, Any]:
    """Apply dotted ``key=value`` pairs (values parsed with YAML typing), then re-validate.

    ``apply_overrides(cfg, ["opt.epochs=10", "model.n_head=8"])``. Unknown keys are rejected
    with the closest known key, like keys in a file. ``model.train_cfg.*`` and ``train_cfg.*``
    name the same values.
    """
    if not overrides:
        return cfg
    known = _known_paths(schema_defaults(cfg))
    for item in overrides:
        path, value = _parse_override(item)
        path = path.replace("model.train_cfg.", "train_cfg.").replace("model.test_cfg.", "test_cfg.")
        if path not in known or path in _DERIVED_KEYS:
            close = _suggest(path, [k for k in known if k not in _DERIVED_KEYS])
            hint = f"; did you mean {close}?" if close else ""
            raise ConfigError(f"--opts: {path}: unknown key{hint}")
        if path in _SECTIONS:
            raise ConfigError(f"--opts: {path}: is a section; set one of its keys, e.g. {path}.<key>=value")
        node = cfg
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    _normalise_splits(cfg)
    _update_derived(cfg)
    validate_config(cfg, source="--opts")
    return cfg


def load_config(config_file: str, overrides: Optional[Sequence[str]] = None,
                defaults: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Load a YAML config, merge it over the defaults, validate, fill derived fields.

    Args:
        config_file: path of a YAML file (a shipped config or a saved ``config.yaml``).
        overrides: optional ``["section.key=value", ...]`` applied after the file.
        defaults: the table to merge over (when omitted: the reference's defaults, or TriDet's
            for a TriDet config, see :func:`schema_defaults`).
    Returns:
        a plain nested dict; ``cfg['model']['train_cfg'] is cfg['train_cfg']``.
    """
    if not os.path.isfile(config_file):
        raise ConfigError(f"{config_file}: config file not found")
    with open(config_file, "r") as fd:
        try:
            cfg = yaml.load(fd, Loader=yaml.FullLoader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{config_file}: not valid YAML ({exc})") from None
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{config_file}: expected a mapping of config keys at the top level")
    return config_from_dict(cfg, overrides, defaults, source=config_file)


def config_from_dict(cfg: Dict[str, Any], overrides: Optional[Sequence[str]] = None,
                     defaults: Optional[Dict[str, Any]] = None,
                     source: str = "config") -> Dict[str, Any]:
    """:func:`load_config` for a config already in memory (nested dict, as in a YAML file).

    The single place where a config gets its defaults and checks: the model and the other
    modules take the result as it is. ``cfg`` is not modified; ``source`` prefixes errors.
    ``config_from_dict({"dataset": {"input_dim": 6}, "model": {"n_head": 2}})["model"]`` is the
    full keyword set of ``make_meta_arch``.
    """
    cfg = _as_lists(cfg)                       # a new tree: the caller's dict stays as it is
    _normalise_splits(cfg)
    # a saved resolved config carries the derived sections: they are recomputed below
    for section in ("train_cfg", "test_cfg"):
        if isinstance(cfg.get("model"), dict) and section in cfg["model"]:
            saved = cfg["model"].pop(section)
            if isinstance(saved, dict):
                cfg.setdefault(section, saved)
    for item in overrides or ():   # --opts model_name=... chooses the schema (and its defaults)
        path, value = _parse_override(item)
        if path == "model_name":
            cfg["model_name"] = value
    _merge_defaults(_as_lists(schema_defaults(cfg) if defaults is None else defaults), cfg)
    _merge_defaults(_as_lists(EXTRA_DEFAULTS), cfg)
    _update_derived(cfg)
    validate_config(cfg, source=source)
    return apply_overrides(cfg, overrides)


def _without_derived(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """A copy that a YAML dump can write (no shared dict objects: the derived sections are dropped)."""
    out = copy.deepcopy(cfg)
    for section in ("train_cfg", "test_cfg"):
        out["model"].pop(section, None)
    return out


def save_config(cfg: Dict[str, Any], folder: str) -> None:
    """Write ``config.yaml`` (loadable again, giving the same config) and ``config.txt`` (pprint,
    as the reference writes it) into ``folder``."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.yaml"), "w") as fd:
        yaml.safe_dump(_as_lists(_without_derived(cfg)), fd, sort_keys=False, default_flow_style=None)
    with open(os.path.join(folder, "config.txt"), "w") as fd:
        pprint.pprint(cfg, stream=fd)
