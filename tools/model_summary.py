"""Parameters and FLOPs per block of a config's model at a given input length.

    python tools/model_summary.py CONFIG [--length T] [--json OUT] [--opts KEY=VALUE ...]

One inference pass (backbone, neck and heads; random weights and features, batch 1) records
every layer's input and output shapes; the counts follow from those shapes, no extra package:

* convolution (``Conv1d``, incl. 1x1 projections and MLPs): ``T_out x C_out x (C_in / groups) x k``
  multiply-accumulates (MACs);
* attention: ``2 x T_q x keys x E`` MACs (``q . k`` and ``p . v``), ``keys`` = the window size
  for local attention (every window slot is computed, also at the borders) or ``T`` for global;
* LayerNorm, activations, softmax, max-pooling, masking, decoding and NMS are not counted.

FLOPs = 2 x MACs. ``T`` is the padded length the model computes on (padded as the model pads; default
``max_seq_len``); the heads count once per pyramid level.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict
from typing import Dict, List, Optional

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.core import ConfigError, load_config  # noqa: E402
from libs.modeling import MaskedMHCA, make_meta_arch  # noqa: E402
from libs.modeling.blocks import inference_chunk_steps  # noqa: E402
from libs.utils.io import write_json  # noqa: E402

__all__ = ["block_name", "model_summary", "format_summary"]


def block_name(module_name: str) -> str:
    """The block a module (or parameter owner) belongs to: ``backbone.embd`` (input projection
    and embedding convs), ``backbone.stem.i``, ``backbone.branch.j``, ``neck``, ``cls_head``,
    ``reg_head`` (TriDet: also ``start_head``, ``end_head``)."""
    parts = module_name.split(".")
    if parts[0] == "backbone":
        return ".".join(parts[:3]) if parts[1] in ("stem", "branch") else "backbone.embd"
    return parts[0]


def _conv_macs(conv: nn.Conv1d, output: torch.Tensor) -> int:
    return output.numel() // output.shape[0] * (conv.in_channels // conv.groups) * \
        conv.kernel_size[0]


def _attention_macs(attn: MaskedMHCA, output: torch.Tensor) -> int:
    _, width, length = output.shape
    keys = attn.window_size if attn.window_size > 1 else length
    return 2 * length * keys * width


@torch.no_grad()
def model_summary(model: nn.Module, length: int) -> List[Dict[str, object]]:
    """Rows ``{'block', 'params', 'macs', 'output'}`` in model order for an input of ``length``
    steps: MACs per video, ``output`` = ``(C, T)`` of a backbone block's first layer (None for
    the neck and the heads, which run on every level). Blocks without parameters or MACs (the
    point generator) are left out."""
    rows: "OrderedDict[str, Dict[str, object]]" = OrderedDict()
    for name, _ in model.named_modules():
        if name and (name.count(".") >= 2 or not name.startswith("backbone")):
            rows.setdefault(block_name(name), {"block": block_name(name), "params": 0,
                                               "macs": 0, "output": None})
    for name, param in model.named_parameters():
        rows[block_name(name.rsplit(".", 1)[0])]["params"] += param.numel()

    def hook(name: str):
        def record(module: nn.Module, _inputs, output) -> None:
            out = output[0] if isinstance(output, tuple) else output
            row = rows[block_name(name)]
            if isinstance(module, nn.Conv1d):
                row["macs"] += _conv_macs(module, out)
            elif isinstance(module, MaskedMHCA):
                row["macs"] += _attention_macs(module, out)
            if row["output"] is None and row["block"].startswith("backbone"):
                row["output"] = tuple(out.shape[1:])
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules()
               if isinstance(module, (nn.Conv1d, MaskedMHCA))]
    try:
        model.eval()
        device = next(model.parameters()).device
        dim = sum(model.input_dim) if isinstance(model.input_dim, (list, tuple)) else model.input_dim
        item = {"video_id": "summary", "feats": torch.randn(dim, length, device=device),
                "fps": 30.0, "duration": 1e8, "feat_stride": 4, "feat_num_frames": 16}
        test_cfg = model.test_cfg   # the whole inference pass; decoding kept tiny, no NMS
        model.test_cfg = {**test_cfg, "pre_nms_topk": 1, "nms_method": "none"}
        with inference_chunk_steps(None):            # one hook call per layer, whole length
            model([item])
        model.test_cfg = test_cfg
    finally:
        for handle in handles:
            handle.remove()
    return [row for row in rows.values() if row["params"] or row["macs"]]


def format_summary(rows: List[Dict[str, object]], length: int, padded: int) -> str:
    lines = [f"input length {length} steps (computed on {padded} padded steps)",
             f"{'block':<20} {'params':>12} {'GMACs':>10} {'GFLOPs':>10}  output (C x T)"]
    for row in rows:
        shape = " x ".join(map(str, row["output"])) if row["output"] else "every level"
        lines.append(f"{row['block']:<20} {row['params']:>12,} {row['macs'] / 1e9:>10.3f} "
                     f"{2 * row['macs'] / 1e9:>10.3f}  {shape}")
    params = sum(r["params"] for r in rows)
    macs = sum(r["macs"] for r in rows)
    lines.append(f"{'total':<20} {params:>12,} {macs / 1e9:>10.3f} {2 * macs / 1e9:>10.3f}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="model_summary.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("config", help="config file (YAML)")
    parser.add_argument("--length", type=int, default=None,
                        help="input length in feature steps (default: dataset.max_seq_len)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.opts)
    length = args.length or cfg["dataset"]["max_seq_len"]
    if length < 1:
        raise ValueError(f"--length: expected >= 1 steps, got {length}")
    torch.manual_seed(0)
    model = make_meta_arch(cfg["model_name"], **cfg["model"])
    rows = model_summary(model, length)
    total = sum(p.numel() for p in model.parameters())
    assert sum(r["params"] for r in rows) == total, "every parameter belongs to one block"
    print(f"{args.config}: input {cfg['dataset']['input_dim']} x {length}")
    print(format_summary(rows, length, model.padded_length(length)))
    if args.json:
        write_json({"config": args.config, "length": length, "blocks": rows}, args.json, indent=2)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ConfigError, ValueError) as exc:
        print(f"model_summary.py: error: {exc}", file=sys.stderr)
        sys.exit(2)
