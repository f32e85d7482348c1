"""Engine pieces on tiny stand-in modules: optimiser groups, EMA, seeds, checkpoints, loops."""
import os
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from libs.utils.train_utils import (AverageMeter, ModelEma, add_module_prefix, fix_random_seed,
                                    get_rng_state, inference, load_checkpoint, make_optimizer,
                                    save_checkpoint, set_rng_state, train_one_epoch, valid_one_epoch)
from libs.utils.lr_schedulers import make_scheduler


# --------------------------------------------------------------------------- stand-in modules
class LayerNorm(nn.Module):  # same name and parameters as the model's channel LayerNorm
    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, c, 1))
        self.bias = nn.Parameter(torch.zeros(1, c, 1))


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))


class MaskedConv(nn.Module):
    def __init__(self, i, o, bias):
        super().__init__()
        self.conv = nn.Conv1d(i, o, 3, padding=1, bias=bias)


class Attn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.query_conv = MaskedConv(c, c, bias=False)
        self.query_norm = LayerNorm(c)
        self.proj = nn.Conv1d(c, c, 1)
        self.rel_pe = nn.Parameter(torch.zeros(1, 1, 2, 3))


class GroupModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embd = MaskedConv(3, 4, bias=True)
        self.attn = Attn(4)
        self.scale = nn.ModuleList([Scale(), Scale()])
        self.fc = nn.Linear(4, 2)
        self.gn = nn.GroupNorm(2, 4)


class TinyLocModel(nn.Module):
    """Takes a list of item dicts; training: loss dict; eval: one prediction dict per video."""

    def __init__(self, dim=4):
        super().__init__()
        self.conv = nn.Conv1d(dim, 1, 1)
        self.loss_normalizer = 1.0

    def forward(self, video_list):
        x = torch.stack([v["feats"] for v in video_list])          # B x C x T
        pred = self.conv(x)[:, 0]                                   # B x T
        if self.training:
            target = torch.stack([v["target"] for v in video_list])
            cls_loss = ((pred - target) ** 2).mean()
            reg_loss = 0.1 * pred.abs().mean()
            return {"cls_loss": cls_loss, "reg_loss": reg_loss, "final_loss": cls_loss + reg_loss}
        out = []
        for v, p in zip(video_list, pred):
            n = int(v["num_preds"])
            out.append({"video_id": v["video_id"], "segments": torch.arange(2 * n, dtype=torch.float32).view(n, 2),
                        "scores": torch.sigmoid(p[:n]), "labels": torch.zeros(n, dtype=torch.int64)})
        return out


def _toy_items(n=16, dim=4, t=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=g)
    items = []
    for i in range(n):
        feats = torch.randn(dim, t, generator=g)
        items.append({"video_id": f"v{i}", "feats": feats, "target": w @ feats, "num_preds": i % 3})
    return items


def _loader(items, batch_size):
    return torch.utils.data.DataLoader(items, batch_size=batch_size, shuffle=False, collate_fn=lambda b: b)


class FakeWriter:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, float(value), step))

    def add_scalars(self, tag, values, step):
        self.scalars.append((tag, dict(values), step))


OPT = {"type": "AdamW", "learning_rate": 0.2, "weight_decay": 0.05, "momentum": 0.9,
       "epochs": 6, "warmup": True, "warmup_epochs": 1, "schedule_type": "cosine"}


# --------------------------------------------------------------------------- optimiser
def test_optimizer_groups_follow_the_reference_rule():
    model = GroupModel()
    opt = make_optimizer(model, OPT)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = [names[id(p)] for p in opt.param_groups[0]["params"]]
    no_decay = [names[id(p)] for p in opt.param_groups[1]["params"]]
    assert decay == ["attn.proj.weight", "attn.query_conv.conv.weight", "embd.conv.weight", "fc.weight"]
    assert no_decay == ["attn.proj.bias", "attn.query_norm.bias", "attn.query_norm.weight", "attn.rel_pe",
                        "embd.conv.bias", "fc.bias", "gn.bias", "gn.weight", "scale.0.scale", "scale.1.scale"]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    assert opt.defaults["eps"] == 1e-8 and opt.defaults["lr"] == 0.2
    sgd = make_optimizer(model, dict(OPT, type="SGD"))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9


def test_optimizer_rejects_unclassified_parameters():
    model = GroupModel()
    model.fc.mystery = nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="fc.mystery"):
        make_optimizer(model, OPT)


# --------------------------------------------------------------------------- EMA
def test_ema_matches_reference_formula_bitwise():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5))
    ema = ModelEma(model, decay=0.999)
    assert not ema.module.training
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model[1].num_batches_tracked += 7
        ema.update(model)
        for k, m in model.state_dict().items():
            expected[k] = (0.999 * expected[k] + (1.0 - 0.999) * m) if m.is_floating_point() else m.clone()
    for k, v in ema.module.state_dict().items():
        assert torch.equal(v, expected[k]), k
    assert ema.module.state_dict()["1.num_batches_tracked"].item() == 21


# --------------------------------------------------------------------------- seeds / RNG
def test_fix_random_seed_reproduces_all_generators():
    def draws():
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]

    gen = fix_random_seed(1234, include_cuda=False)
    first = draws()
    assert gen is torch.default_generator and torch.initial_seed() == 1234
    fix_random_seed(1234, include_cuda=True)
    assert draws() == first
    assert os.environ["PYTHONHASHSEED"] == "1234"
    torch.use_deterministic_algorithms(False)


def test_rng_state_round_trip_through_a_weights_only_checkpoint(tmp_path):
    fix_random_seed(7, include_cuda=False)
    np.random.randn()  # a cached gaussian is part of numpy's state
    state = get_rng_state()
    after = (torch.rand(4), np.random.randn(4), random.random())
    save_checkpoint({"rng_state": state}, False, str(tmp_path), "s.pth.tar")
    set_rng_state(load_checkpoint(str(tmp_path / "s.pth.tar"))["rng_state"])
    again = (torch.rand(4), np.random.randn(4), random.random())
    assert torch.equal(after[0], again[0]) and np.array_equal(after[1], again[1]) and after[2] == again[2]


# --------------------------------------------------------------------------- checkpoints
def test_save_checkpoint_is_atomic_and_writes_best(tmp_path):
    state = {"epoch": 3, "state_dict": {"module.w": torch.ones(2)}, "optimizer": {}, "scheduler": {}}
    save_checkpoint(state, True, str(tmp_path), "epoch_003.pth.tar")
    assert sorted(os.listdir(tmp_path)) == ["epoch_003.pth.tar", "model_best.pth.tar"]
    assert set(load_checkpoint(str(tmp_path / "model_best.pth.tar"))) == {"epoch", "state_dict"}
    with pytest.raises(Exception):
        save_checkpoint({"epoch": 4, "bad": lambda: 0}, False, str(tmp_path), "epoch_003.pth.tar")
    # the failed write left the previous file intact and no temporary file behind
    assert sorted(os.listdir(tmp_path)) == ["epoch_003.pth.tar", "model_best.pth.tar"]
    assert load_checkpoint(str(tmp_path / "epoch_003.pth.tar"))["epoch"] == 3


def test_load_checkpoint_errors_name_file_and_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth.tar"):
        load_checkpoint(str(tmp_path / "nope.pth.tar"))
    save_checkpoint({"epoch": 1, "state_dict": {}}, False, str(tmp_path), "a.pth.tar")
    with pytest.raises(KeyError, match="a.pth.tar.*state_dict_ema"):
        load_checkpoint(str(tmp_path / "a.pth.tar"), required=("state_dict_ema",))
    (tmp_path / "junk.pth.tar").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth.tar: cannot read"):
        load_checkpoint(str(tmp_path / "junk.pth.tar"))


def test_add_module_prefix_is_idempotent():
    sd = {"a.weight": 1, "module.b": 2}
    assert add_module_prefix(sd) == {"module.a.weight": 1, "module.b": 2}
    assert add_module_prefix(add_module_prefix(sd)) == add_module_prefix(sd)


def test_average_meter():
    m = AverageMeter()
    m.update(1.0)
    m.update(4.0, n=2)
    assert (m.val, m.sum, m.count, m.avg) == (4.0, 9.0, 3, 3.0)


# --------------------------------------------------------------------------- loops
def _train(amp=None, epochs=6, print_freq=2):
    torch.manual_seed(0)
    items = _toy_items()
    model = TinyLocModel()
    ema = ModelEma(model)
    opt = make_optimizer(model, OPT)
    loader = _loader(items, batch_size=4)
    sched = make_scheduler(opt, OPT, len(loader))
    writer = FakeWriter()
    history = []
    for epoch in range(epochs):
        history += train_one_epoch(loader, model, opt, sched, epoch, model_ema=ema, clip_grad_l2norm=1.0,
                                   tb_writer=writer, print_freq=print_freq, amp=amp, max_epochs=epochs)
    return model, ema, sched, writer, history


def test_train_one_epoch_learns_and_logs():
    model, ema, sched, writer, history = _train()
    assert len(history) == 6 * 4 and sched.last_epoch == 6 * 4
    for h in history:
        assert h["final_loss"] == pytest.approx(h["cls_loss"] + h["reg_loss"], rel=1e-6)
    assert np.mean([h["final_loss"] for h in history[-4:]]) < 0.2 * np.mean([h["final_loss"] for h in history[:4]])
    steps = [s for tag, _, s in writer.scalars if tag == "train/final_loss"]
    assert steps == [e * 4 + 2 for e in range(6)]        # every print_freq iterations, not at iteration 0
    lrs = [v for tag, v, _ in writer.scalars if tag == "train/learning_rate"]
    assert lrs[0] == pytest.approx(0.2 * 3 / 3)  # lr after the third step: eta * 3 / (W - 1), W = 4
    # the EMA trails the model: it moved away from the initial weights but is not the model
    assert not torch.equal(ema.module.conv.weight, model.conv.weight)


def test_first_update_uses_lr_zero():
    torch.manual_seed(0)
    model = TinyLocModel()
    before = model.conv.weight.detach().clone()
    opt = make_optimizer(model, OPT)
    loader = _loader(_toy_items(n=4), batch_size=4)
    sched = make_scheduler(opt, OPT, 1)
    train_one_epoch(loader, model, opt, sched, 0)
    assert torch.equal(model.conv.weight, before)


def test_gradient_clipping_bounds_the_update():
    torch.manual_seed(0)
    model = TinyLocModel()
    for item in (items := _toy_items(n=4)):
        item["target"] = item["target"] * 1e3
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    train_one_epoch(_loader(items, 4), model, opt, sched, 0, clip_grad_l2norm=0.5)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm().item() == pytest.approx(0.5, rel=1e-4)


def test_bf16_autocast_training_learns():
    _, _, _, _, history = _train(amp="bf16")
    assert np.mean([h["final_loss"] for h in history[-4:]]) < 0.3 * np.mean([h["final_loss"] for h in history[:4]])


def test_inference_and_valid_one_epoch(tmp_path):
    items = _toy_items(n=5)  # num_preds 0, 1, 2, 0, 1
    model = TinyLocModel()
    res = inference(_loader(items, 2), model)
    assert res["video-id"] == ["v1", "v2", "v2", "v4"]
    assert res["t-start"].tolist() == [0, 0, 2, 0] and res["t-end"].tolist() == [1, 1, 3, 1]
    assert (res["t-start"].dtype, res["label"].dtype, res["score"].dtype) == (np.float32, np.int64, np.float32)
    empty = inference(_loader([items[0], items[3]], 1), model)
    assert empty["video-id"] == [] and empty["score"].shape == (0,) and empty["label"].dtype == np.int64

    out = tmp_path / "eval_results.pkl"
    assert valid_one_epoch(_loader(items, 1), model, 0, output_file=str(out)) == 0.0
    with open(out, "rb") as fd:
        assert pickle.load(fd)["video-id"] == res["video-id"]

    class FakeEvaluator:
        def evaluate(self, preds, verbose=True):
            self.seen = preds
            return np.array([0.5, 0.25]), 0.375, None

    writer, evaluator = FakeWriter(), FakeEvaluator()
    assert valid_one_epoch(_loader(items, 3), model, 4, evaluator=evaluator, tb_writer=writer) == 0.375
    assert evaluator.seen["video-id"] == res["video-id"]
    assert writer.scalars == [("validation/mAP", 0.375, 4), ("validation/epoch", 5, 4)]
    writer = FakeWriter()
    valid_one_epoch(_loader(items, 3), model, 4, evaluator=evaluator, tb_writer=writer, global_step=50)
    assert writer.scalars == [("validation/mAP", 0.375, 50), ("validation/epoch", 5, 50)]
    with pytest.raises(ValueError):
        valid_one_epoch(_loader(items, 1), model, 0)
