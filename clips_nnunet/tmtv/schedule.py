"""Learning-rate schedules of the TMTV-Net recipe, with nnU-Net's scheduler interface (``step(current_epoch)``).

Stage 1: cosine annealing with warm restarts (Loshchilov & Hutter 2017, "SGDR: Stochastic gradient descent with warm
restarts") whose peak decays by ``decay`` at each restart, as in TMTV-Net. For step ``t`` in restart cycle ``i``
(cycle lengths ``T_i = period * t_mult ** i``, position ``tau`` in the cycle):

    lr(t) = min_lr + 0.5 * (base_lr * decay ** i - min_lr) * (1 + cos(pi * tau / T_i))

nnU-Net steps schedulers once per epoch (``on_train_epoch_start`` calls ``lr_scheduler.step(current_epoch)``;
``train_step`` belongs to the shared trainer base), so the schedule is stepped per epoch and the period is given in
epochs: TMTV-Net's first period of ~3800 iterations becomes ``round(3800 / num_iterations_per_epoch)`` epochs
(15 with nnU-Net's 250 iterations per epoch). Within an epoch the learning rate is constant.

Refiner: step decay, ``lr = base_lr * gamma ** (epoch // step_epochs)``.
"""
from __future__ import annotations

import math
from typing import Optional

from torch.optim import Optimizer
from torch.optim.lr_scheduler import _LRScheduler


def cosine_warm_restarts_lr(step: int, base_lr: float, period: int, decay: float = 0.9, min_lr: float = 0.0,
                            t_mult: int = 1) -> float:
    """Learning rate at ``step`` (0-based) of cosine annealing with warm restarts and peak decay (formula above)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if period < 1:
        raise ValueError(f"period must be >= 1 step, got {period}")
    if t_mult < 1:
        raise ValueError(f"t_mult must be an integer >= 1, got {t_mult}")
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    cycle, length, tau = 0, int(period), int(step)
    while tau >= length:
        tau -= length
        cycle += 1
        length *= int(t_mult)
    peak = base_lr * decay ** cycle
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * tau / length))


def restart_period_epochs(period_iterations: int, iterations_per_epoch: int) -> int:
    """TMTV-Net's restart period in iterations converted to whole nnU-Net epochs (at least 1)."""
    if iterations_per_epoch < 1:
        raise ValueError(f"iterations_per_epoch must be >= 1, got {iterations_per_epoch}")
    return max(1, int(round(period_iterations / iterations_per_epoch)))


class _EpochScheduler(_LRScheduler):
    """nnU-Net style: ``step(current_epoch)`` sets the learning rate of every parameter group."""

    def __init__(self, optimizer: Optimizer, current_step: Optional[int] = None):
        self.optimizer = optimizer
        self.ctr = 0
        super().__init__(optimizer, current_step if current_step is not None else -1)

    def lr_at(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, current_step: Optional[int] = None) -> None:
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        new_lr = self.lr_at(int(current_step))
        for group in self.optimizer.param_groups:
            group["lr"] = new_lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        return self._last_lr


class CosineWarmRestartsDecayLR(_EpochScheduler):
    """Cosine annealing with warm restarts, peak x ``decay`` at each restart; one step per nnU-Net epoch."""

    def __init__(self, optimizer: Optimizer, base_lr: float, period: int, decay: float = 0.9, min_lr: float = 0.0,
                 t_mult: int = 1, current_step: Optional[int] = None):
        cosine_warm_restarts_lr(0, base_lr, period, decay, min_lr, t_mult)  # validates the arguments
        self.base_lr, self.period, self.decay, self.min_lr, self.t_mult = base_lr, int(period), decay, min_lr, t_mult
        super().__init__(optimizer, current_step)

    def lr_at(self, step: int) -> float:
        return cosine_warm_restarts_lr(step, self.base_lr, self.period, self.decay, self.min_lr, self.t_mult)


class StepDecayLR(_EpochScheduler):
    """``lr = base_lr * gamma ** (epoch // step_epochs)`` (the refiner's step decay)."""

    def __init__(self, optimizer: Optimizer, base_lr: float, step_epochs: int, gamma: float = 0.5,
                 current_step: Optional[int] = None):
        if step_epochs < 1:
            raise ValueError(f"step_epochs must be >= 1, got {step_epochs}")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        self.base_lr, self.step_epochs, self.gamma = base_lr, int(step_epochs), gamma
        super().__init__(optimizer, current_step)

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.gamma ** (max(0, step) // self.step_epochs)
