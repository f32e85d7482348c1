"""tools/model_summary.py: parameter counts equal the model's own (and spec C.1), MACs equal
hand-computed layer formulas, the CLI output."""
import json

import pytest
import torch

from libs.core import load_config
from libs.core.config import config_from_dict
from libs.modeling import make_meta_arch
from tools.model_summary import block_name, main, model_summary

E, D, C, H = 16, 8, 3, 2


def tiny_model(windows):
    """3 levels (strides 1, 2, 4), one stem block, two branch blocks."""
    cfg = config_from_dict({
        "dataset": {"input_dim": D, "num_classes": C, "max_seq_len": 64},
        "model": {"backbone_arch": [2, 1, 2], "n_head": H, "n_mha_win_size": windows,
                  "embd_dim": E, "fpn_dim": E, "head_dim": E,
                  "regression_range": [[0, 4], [4, 8], [8, 10000]]}})
    return make_meta_arch(cfg["model_name"], **cfg["model"])


def block_macs(T, keys):
    """One Transformer block producing T steps: depthwise q/k/v (k=3), four 1x1 projections,
    the 4E MLP, and q.k + p.v over ``keys`` keys."""
    return 3 * T * E * 3 + 4 * T * E * E + 2 * T * E * 4 * E + 2 * T * keys * E


def test_block_names():
    assert block_name("backbone.embd.1.conv") == "backbone.embd"
    assert block_name("backbone.proj.2.conv") == "backbone.embd"
    assert block_name("backbone.embd_norm.0") == "backbone.embd"
    assert block_name("backbone.branch.3.attn.key_conv.conv") == "backbone.branch.3"
    assert block_name("reg_head.scale.2") == "reg_head"


@pytest.mark.parametrize("length,padded", [(64, 64), (40, 64), (70, 72)])
def test_macs_match_hand_formulas(length, padded):
    # level 2 uses global attention; padding multiple max(1·4, 2·4, 4) = 8 (spec C.11)
    model = tiny_model([5, 5, -1])
    rows = {r["block"]: r for r in model_summary(model, length)}
    T = padded                                # the model computes on the padded length
    assert model.padded_length(length) == padded
    assert rows["backbone.embd"]["macs"] == T * E * D * 3 + T * E * E * 3
    assert rows["backbone.stem.0"]["macs"] == block_macs(T, 5)
    assert rows["backbone.branch.0"]["macs"] == block_macs(T // 2, 5)
    assert rows["backbone.branch.1"]["macs"] == block_macs(T // 4, T // 4)   # global
    levels = T + T // 2 + T // 4
    assert rows["cls_head"]["macs"] == levels * (E * E * 3 * 2 + C * E * 3)
    assert rows["reg_head"]["macs"] == levels * (E * E * 3 * 2 + 2 * E * 3)
    assert rows["neck"]["macs"] == 0 and rows["neck"]["params"] == 3 * 2 * E
    assert rows["backbone.branch.0"]["output"] == (E, T // 2)
    assert "point_generator" not in rows


def test_parameter_counts_partition_the_model():
    model = tiny_model(5)
    rows = model_summary(model, 64)
    assert sum(r["params"] for r in rows) == sum(p.numel() for p in model.parameters())
    # the embedding block by hand: two bias-free k=3 convs and two LayerNorms
    embd = next(r for r in rows if r["block"] == "backbone.embd")
    assert embd["params"] == D * E * 3 + E * E * 3 + 4 * E
    assert [r["block"] for r in rows] == ["backbone.embd", "backbone.stem.0", "backbone.branch.0",
                                         "backbone.branch.1", "neck", "cls_head", "reg_head"]


def test_thumos_parameter_count_is_the_reference_one():
    """Spec C.1: the THUMOS model has 29,251,612 parameters (computed here on a 576-step input)."""
    cfg = load_config("configs/thumos_i3d.yaml", ["dataset.max_seq_len=576"])
    torch.manual_seed(0)
    model = make_meta_arch(cfg["model_name"], **cfg["model"])
    rows = model_summary(model, 576)
    assert sum(r["params"] for r in rows) == sum(p.numel() for p in model.parameters()) \
        == 29_251_612
    # a stem block by hand at T = 576, window 19
    stem = next(r for r in rows if r["block"] == "backbone.stem.0")
    E_th, T = 512, 576
    assert stem["macs"] == 3 * T * E_th * 3 + 4 * T * E_th ** 2 + 8 * T * E_th ** 2 + 2 * T * 19 * E_th


def test_cli_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "summary.json"
    assert main(["configs/demo.yaml", "--length", "100", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "input length 100 steps (computed on 256 padded steps)" in text
    total = text.strip().splitlines()[-1].split()
    saved = json.loads(out.read_text())
    cfg = load_config("configs/demo.yaml")
    model = make_meta_arch(cfg["model_name"], **cfg["model"])
    assert total[0] == "total" and int(total[1].replace(",", "")) == \
        sum(p.numel() for p in model.parameters())
    assert float(total[3]) == pytest.approx(2 * sum(b["macs"] for b in saved["blocks"]) / 1e9,
                                            abs=1e-3)
