"""Learning-rate schedules stepped once per *iteration*.

Both warm-up schedules are written in PyTorch's recursive ("chainable") form, i.e. each
step derives the new lr from the lr of the previous step, exactly as the reference does;
the closed forms they equal (up to float rounding) are

* warm-up (t = global iteration, 0-based; W = warm-up iterations, M = total iterations)::

      lr(0) = warmup_start_lr
      lr(t) = warmup_start_lr + (base - warmup_start_lr) * t / (W - 1)     1 <= t <  W
      lr(W) = base

* cosine, W < t <= M::

      lr(t) = eta_min + (base - eta_min) * (1 + cos(pi * (t - W) / (M - W))) / 2

* multistep, t > W: ``base * gamma ** (#milestones <= t - W)``.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Dict, Iterable, List, Optional

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, MultiStepLR

from libs.core.registry import Registry

SCHEDULERS = Registry("lr schedule")


class _LinearWarmup(LRScheduler):
    """Shared warm-up part: lr 0 at step 0, linear ramp reaching ``base`` at step ``W - 1``."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_iters: int,
                 warmup_start_lr: float = 0.0, last_epoch: int = -1) -> None:
        if warmup_iters < 1:
            raise ValueError(f"linear warm-up needs at least one warm-up iteration, got {warmup_iters}; "
                             "set opt.warmup: False for no warm-up")
        self.warmup_iters = warmup_iters
        self.warmup_start_lr = warmup_start_lr
        super().__init__(optimizer, last_epoch)

    def _warmup_lr(self):
        """The warm-up lr list, or None once the warm-up is over (t > W)."""
        t, w = self.last_epoch, self.warmup_iters
        if t == 0:
            return [self.warmup_start_lr] * len(self.base_lrs)
        if t < w:
            return [group["lr"] + (base - self.warmup_start_lr) / (w - 1)
                    for base, group in zip(self.base_lrs, self.optimizer.param_groups)]
        if t == w:
            return list(self.base_lrs)
        return None


class LinearWarmupCosineAnnealingLR(_LinearWarmup):
    """Linear warm-up over ``warmup_iters`` steps then cosine decay to ``eta_min`` at ``max_iters``.

    Past ``max_iters`` the cosine continues periodically (period ``2 (M - W)``), as the reference.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_iters: int, max_iters: int,
                 warmup_start_lr: float = 0.0, eta_min: float = 1e-8, last_epoch: int = -1) -> None:
        if max_iters <= warmup_iters:
            raise ValueError(f"cosine schedule needs max_iters > warmup_iters, got {max_iters} <= {warmup_iters}")
        self.max_iters = max_iters
        self.eta_min = eta_min
        super().__init__(optimizer, warmup_iters, warmup_start_lr, last_epoch)

    def get_lr(self) -> List[float]:
        lrs = self._warmup_lr()
        if lrs is not None:
            return lrs
        t, w, m = self.last_epoch, self.warmup_iters, self.max_iters
        groups = self.optimizer.param_groups
        if (t - 1 - m) % (2 * (m - w)) == 0:
            # restart of the periodic continuation: chained ratio would divide by 0
            return [group["lr"] + (base - self.eta_min) * (1 - math.cos(math.pi / (m - w))) / 2
                    for base, group in zip(self.base_lrs, groups)]
        ratio = (1 + math.cos(math.pi * (t - w) / (m - w))) / (1 + math.cos(math.pi * (t - w - 1) / (m - w)))
        return [ratio * (group["lr"] - self.eta_min) + self.eta_min for group in groups]


class LinearWarmupMultiStepLR(_LinearWarmup):
    """Linear warm-up then multiply the lr by ``gamma`` at each milestone (iterations after warm-up).

    A milestone listed k times multiplies by ``gamma ** k``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_iters: int, milestones: Iterable[int],
                 gamma: float = 0.1, warmup_start_lr: float = 0.0, last_epoch: int = -1) -> None:
        self.milestones = Counter(milestones)
        self.gamma = gamma
        super().__init__(optimizer, warmup_iters, warmup_start_lr, last_epoch)

    def get_lr(self) -> List[float]:
        lrs = self._warmup_lr()
        if lrs is not None:
            return lrs
        k = self.milestones.get(self.last_epoch - self.warmup_iters, 0)
        return [group["lr"] * self.gamma ** k for group in self.optimizer.param_groups]


@SCHEDULERS.register("cosine")
def _build_cosine(optimizer, warmup_iters: int, max_iters: int, eta_min: Optional[float] = None,
                  **_) -> LRScheduler:
    """``eta_min`` None (no ``opt.eta_min`` key): the reference's 1e-8 with warm-up, 0 without;
    a value (TriDet's configs): that floor in both cases, as TriDet."""
    if warmup_iters > 0:
        if eta_min is None:
            return LinearWarmupCosineAnnealingLR(optimizer, warmup_iters, max_iters)
        return LinearWarmupCosineAnnealingLR(optimizer, warmup_iters, max_iters, eta_min=eta_min)
    # no warm-up: PyTorch's cosine (eta_min 0), as the reference
    return CosineAnnealingLR(optimizer, max_iters, eta_min=eta_min or 0.0)


@SCHEDULERS.register("multistep")
def _build_multistep(optimizer, warmup_iters: int, milestones: List[int], gamma: float, **_) -> LRScheduler:
    if warmup_iters > 0:
        return LinearWarmupMultiStepLR(optimizer, warmup_iters, milestones, gamma)
    # the reference crashes on this path (undefined name); we use PyTorch's multistep instead
    return MultiStepLR(optimizer, milestones, gamma)


def make_scheduler(optimizer: torch.optim.Optimizer, optimizer_config: Dict,
                   num_iters_per_epoch: int) -> LRScheduler:
    """Build the per-iteration schedule of ``optimizer_config`` (the ``opt`` config section).

    ``warmup_epochs``, ``epochs`` and ``schedule_steps`` are in epochs and are converted to
    iterations with ``num_iters_per_epoch``. With warm-up the schedule spans
    ``epochs + warmup_epochs`` epochs, without it ``epochs``; ``schedule_type`` names a
    registered schedule. To resume, restore ``scheduler.load_state_dict`` (which also restores
    the chained lr).
    """
    epochs = optimizer_config["epochs"]
    warmup_epochs = optimizer_config.get("warmup_epochs", 0) if optimizer_config.get("warmup", True) else 0
    if optimizer_config.get("warmup", True) and warmup_epochs * num_iters_per_epoch < 1:
        raise ValueError("opt.warmup is True but opt.warmup_epochs * iterations per epoch is "
                         f"{warmup_epochs * num_iters_per_epoch}; set opt.warmup: False for no warm-up")
    milestones = [int(num_iters_per_epoch * s) for s in optimizer_config.get("schedule_steps", [])]
    return SCHEDULERS.build(optimizer_config.get("schedule_type", "cosine"), optimizer,
                            warmup_iters=int(warmup_epochs * num_iters_per_epoch),
                            max_iters=int((epochs + warmup_epochs) * num_iters_per_epoch),
                            milestones=milestones, gamma=optimizer_config.get("schedule_gamma", 0.1),
                            eta_min=optimizer_config.get("eta_min"))
