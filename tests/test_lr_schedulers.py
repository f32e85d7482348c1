"""LR schedules against the reference's vectors (spec J) and their closed forms (spec D.4)."""
import math

import pytest
import torch

from libs.utils.lr_schedulers import (LinearWarmupCosineAnnealingLR, LinearWarmupMultiStepLR,
                                      make_scheduler)


def _optimizer(lr=1.0, groups=1):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(groups)]
    return torch.optim.SGD([{"params": [p]} for p in params], lr=lr)


def _lrs_used(opt, sched, n):
    """lr used by iterations 0..n-1 (the scheduler steps after each optimiser step)."""
    out = []
    for _ in range(n):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def test_cosine_matches_reference_vector():
    # spec J: eta = 1, W = 4, M = 12
    expected = [0, 0.333333, 0.666667, 1, 1, 0.961940, 0.853553, 0.691342, 0.500000005,
                0.308658, 0.146447, 0.038060, 1e-8]
    opt = _optimizer()
    sched = LinearWarmupCosineAnnealingLR(opt, warmup_iters=4, max_iters=12)
    got = [lrs[0] for lrs in _lrs_used(opt, sched, 13)]
    assert got == pytest.approx(expected, abs=5e-7)
    assert got[8] == pytest.approx(0.500000005, abs=1e-12)


def test_cosine_equals_closed_form_for_long_run():
    eta, w, m, eta_min = 3e-4, 25, 400, 1e-8
    opt = _optimizer(lr=eta, groups=2)
    sched = LinearWarmupCosineAnnealingLR(opt, warmup_iters=w, max_iters=m)
    for t, lrs in enumerate(_lrs_used(opt, sched, m + 1)):
        if t == 0:
            ref = 0.0
        elif t < w:
            ref = eta * t / (w - 1)
        else:
            ref = eta_min + (eta - eta_min) * (1 + math.cos(math.pi * (t - w) / (m - w))) / 2
        assert lrs == pytest.approx([ref, ref], rel=1e-9, abs=1e-15), t


def test_multistep_matches_reference_vector():
    # spec J: same warm-up, iters_per_epoch = 1, schedule_steps [2, 5]
    expected = [0, 1 / 3, 2 / 3, 1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01]
    opt = _optimizer()
    sched = LinearWarmupMultiStepLR(opt, warmup_iters=4, milestones=[2, 5], gamma=0.1)
    assert [lrs[0] for lrs in _lrs_used(opt, sched, 12)] == pytest.approx(expected, rel=1e-9)


def test_make_scheduler_converts_epochs_to_iterations():
    cfg = {"type": "AdamW", "learning_rate": 1.0, "epochs": 2, "warmup": True, "warmup_epochs": 1,
           "schedule_type": "cosine", "schedule_steps": [], "schedule_gamma": 0.1}
    opt = _optimizer()
    sched = make_scheduler(opt, cfg, num_iters_per_epoch=3)
    assert (sched.warmup_iters, sched.max_iters) == (3, 9)
    cfg.update(schedule_type="multistep", schedule_steps=[1, 1])
    sched = make_scheduler(_optimizer(), cfg, num_iters_per_epoch=3)
    assert sched.milestones == {3: 2}  # a repeated step multiplies by gamma twice


def test_make_scheduler_without_warmup():
    cfg = {"epochs": 2, "warmup": False, "warmup_epochs": 5, "schedule_type": "cosine"}
    opt = _optimizer()
    sched = make_scheduler(opt, cfg, num_iters_per_epoch=4)
    lrs = [x[0] for x in _lrs_used(opt, sched, 9)]
    assert lrs[0] == 1.0 and lrs[4] == pytest.approx(0.5) and lrs[8] == pytest.approx(0.0, abs=1e-12)
    cfg["schedule_type"] = "multistep"
    cfg["schedule_steps"] = [1]
    opt = _optimizer()
    lrs = [x[0] for x in _lrs_used(opt, make_scheduler(opt, cfg, num_iters_per_epoch=4), 6)]
    assert lrs == pytest.approx([1, 1, 1, 1, 0.1, 0.1])


def test_bad_schedule_names_are_reported():
    cfg = {"epochs": 2, "warmup": True, "warmup_epochs": 1, "schedule_type": "cosin"}
    with pytest.raises(KeyError, match="cosine"):
        make_scheduler(_optimizer(), cfg, num_iters_per_epoch=2)
    cfg.update(schedule_type="cosine", warmup_epochs=0)
    with pytest.raises(ValueError, match="warmup"):
        make_scheduler(_optimizer(), cfg, num_iters_per_epoch=2)


def test_state_dict_round_trip_continues_the_chain():
    opt = _optimizer()
    sched = LinearWarmupCosineAnnealingLR(opt, warmup_iters=3, max_iters=10)
    _lrs_used(opt, sched, 5)
    state_o, state_s = opt.state_dict(), sched.state_dict()
    rest = _lrs_used(opt, sched, 5)
    opt2 = _optimizer()
    sched2 = LinearWarmupCosineAnnealingLR(opt2, warmup_iters=3, max_iters=10)
    opt2.load_state_dict(state_o)
    sched2.load_state_dict(state_s)
    assert _lrs_used(opt2, sched2, 5) == rest
