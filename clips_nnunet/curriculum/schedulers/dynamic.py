"""Curricula driven by the training dynamics or by the network: DIH, SuperLoss, curriculum by smoothing.

- :class:`DIHScheduler`: Zhou, Wang & Bilmes (2020) dynamic instance hardness (a shrinking subset, hardest first);
- :class:`SuperLossScheduler`: Castells, Weinzaepfel & Revaud (2020) SuperLoss (uniform sampling, loss weights);
- :class:`SmoothingScheduler`: Sinha, Garg & Larochelle (2020) curriculum by smoothing (uniform sampling, blur width;
  no order, hence no controls).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from clips_nnunet.curriculum.dih import (dih_weights, instantaneous_hardness, poly_learning_rate, sample_subset,
                                         subset_size, update_hardness)
from clips_nnunet.curriculum.schedulers.base import CurriculumScheduler, SamplingPlan, normalise, rank_cases
from clips_nnunet.curriculum.smoothing import smoothing_sigma
from clips_nnunet.curriculum.state import DifficultyState
from clips_nnunet.curriculum.superloss import superloss_sigma
from clips_nnunet.errors import CurriculumConfigError


class DIHScheduler(CurriculumScheduler):
    """Zhou, Wang & Bilmes (2020, NeurIPS) dynamic instance hardness (:mod:`clips_nnunet.curriculum.dih`).

    At each plan, for every case trained on again since the last plan (more visits) and measured before, the
    instantaneous hardness is its raw loss change divided by the learning rates applied in between (eq. 2 with the
    authors' normalisation): ``a(i) = |l(i) - l'(i)| / sum_{e = e'(i)}^{e(i) - 1} lr(e)``, with ``l'``, ``e'`` the
    raw loss and epoch of the previous measurement and ``lr`` nnU-Net's poly schedule (``initial_lr``,
    ``num_epochs``); then ``r(i) <- gamma a(i) + (1 - gamma) r(i)`` (eq. 1; the first change initialises ``r``).
    Cases without a measured change get the largest hardness (optimistic exploration). A subset of
    ``k_t = subset_size(N, epoch - warmup, shrink, floor)`` cases is drawn without replacement with
    ``p ∝ exp(beta r / mean r)`` and sampled uniformly. The ranking puts the subset first (by hardness, hardest
    first); the arm draws a new subset every epoch, so its Random control draws a new random order every epoch.
    """

    random_control_redraws = True

    def __init__(self, case_ids: Sequence[str], gamma: float = 0.5, beta: float = 3.0, shrink: float = 0.9,
                 floor: float = 0.3, warmup_epochs: int = 0, min_cases: int = 2, initial_lr: float = 1e-2,
                 num_epochs: int = 1000):
        super().__init__(case_ids)
        update_hardness(np.zeros(1), np.zeros(1), np.zeros(1, bool), gamma)  # validates gamma
        dih_weights(np.zeros(1), beta)
        subset_size(len(self.case_ids), 0, shrink, floor, min_cases)
        poly_learning_rate(0, initial_lr, num_epochs)
        self.gamma, self.beta, self.shrink, self.floor = float(gamma), float(beta), float(shrink), float(floor)
        self.warmup_epochs, self.min_cases = int(warmup_epochs), int(min_cases)
        self.initial_lr, self.num_epochs = float(initial_lr), int(num_epochs)
        n = len(self.case_ids)
        self.hardness = np.zeros(n)
        self.measured = np.zeros(n, dtype=bool)
        self.prev_losses: Optional[np.ndarray] = None
        self.prev_seen = np.full(n, -1, dtype=np.int64)
        self.prev_visits = np.zeros(n, dtype=np.int64)

    def config(self) -> dict:
        return {**super().config(), "gamma": self.gamma, "beta": self.beta, "shrink": self.shrink,
                "floor": self.floor, "warmup_epochs": self.warmup_epochs, "min_cases": self.min_cases,
                "initial_lr": self.initial_lr, "num_epochs": self.num_epochs}

    def set_num_epochs(self, num_epochs: int) -> None:
        """nnU-Net's poly schedule decays over the trainer's (possibly calibrated) ``num_epochs``."""
        poly_learning_rate(0, self.initial_lr, num_epochs)  # validates
        self.num_epochs = int(num_epochs)

    def lr_sum(self, since, until) -> np.ndarray:
        """``sum_{e=since}^{until-1} lr(e)`` per case (at least the learning rate of epoch ``since``)."""
        lrs = np.asarray([poly_learning_rate(e, self.initial_lr, self.num_epochs)
                          for e in range(self.num_epochs + 1)])
        cum = np.concatenate([[0.0], np.cumsum(lrs)])
        lo = np.clip(np.asarray(since, dtype=np.int64), 0, self.num_epochs)
        hi = np.clip(np.maximum(np.asarray(until, dtype=np.int64), lo + 1), 0, self.num_epochs + 1)
        return cum[hi] - cum[lo]

    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        self._check_state(state)
        raw = state.last_losses()
        visits = np.asarray(state.visits, dtype=np.int64)
        seen = np.asarray(state.last_seen, dtype=np.int64)
        if self.prev_losses is not None:
            updated = (visits > self.prev_visits) & (self.prev_visits > 0)
            change = instantaneous_hardness(raw, self.prev_losses, self.lr_sum(self.prev_seen, seen))
            first = updated & ~self.measured
            self.hardness[first] = change[first]
            self.hardness = update_hardness(self.hardness, change, updated & ~first, self.gamma)
            self.measured |= updated
        self.prev_losses, self.prev_seen, self.prev_visits = raw.copy(), seen.copy(), visits.copy()
        r = self.hardness.copy()
        if self.measured.any():
            r[~self.measured] = r[self.measured].max()
        k = subset_size(len(self.case_ids), int(epoch) - self.warmup_epochs, self.shrink, self.floor,
                        self.min_cases)
        subset = sample_subset(dih_weights(r, self.beta), k, rng)
        mask = np.zeros(len(self.case_ids), dtype=bool)
        mask[subset] = True
        by_hardness = rank_cases(-r)
        ranking = by_hardness[np.argsort(~mask[by_hardness], kind="stable")]  # subset first, each hardest first
        return SamplingPlan(normalise(mask), k / len(self.case_ids), None,
                            {"n_active": int(k), "mean_hardness": float(r.mean())}, ranking)

    def state_dict(self) -> dict:
        return {"hardness": self.hardness.tolist(), "measured": self.measured.tolist(),
                "prev_losses": None if self.prev_losses is None else self.prev_losses.tolist(),
                "prev_seen": self.prev_seen.tolist(), "prev_visits": self.prev_visits.tolist()}

    def load_state_dict(self, d: dict) -> None:
        n = len(self.case_ids)
        self.hardness = np.asarray(d["hardness"], dtype=np.float64)
        self.measured = np.asarray(d["measured"], dtype=bool)
        prev = d.get("prev_losses")
        self.prev_losses = None if prev is None else np.asarray(prev, dtype=np.float64)
        self.prev_seen = np.asarray(d.get("prev_seen", [-1] * n), dtype=np.int64)
        self.prev_visits = np.asarray(d["prev_visits"], dtype=np.int64)
        if {self.hardness.size, self.measured.size, self.prev_visits.size, self.prev_seen.size} != {n}:
            raise CurriculumConfigError("saved DIH state does not match the number of training cases")


class SuperLossScheduler(CurriculumScheduler):
    """Castells, Weinzaepfel & Revaud (2020, NeurIPS) SuperLoss: uniform sampling; each sample's loss is weighted by
    its confidence ``sigma* = exp(-W0(0.5 max(-2/e, (l - tau)/lam)))`` (section 3, closed-form optimal confidence;
    :mod:`clips_nnunet.curriculum.superloss`).

    ``tau`` is the running mean loss: the mean EMA loss of the seen cases at the last plan (identical on every DDP
    rank because the engine gathers the losses). Before ``tau`` exists :meth:`loss_weights` returns None: no
    weighting, the unweighted loss is trained.
    """

    def __init__(self, case_ids: Sequence[str], lam: float = 1.0):
        super().__init__(case_ids)
        superloss_sigma([0.0], 0.0, lam)  # validates
        self.lam = float(lam)
        self.tau: Optional[float] = None

    def config(self) -> dict:
        return {**super().config(), "lam": self.lam}

    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        self._check_state(state)
        seen = state.seen
        est = state.estimates()
        self.tau = float(est[seen].mean()) if seen.any() else None
        return self._uniform_plan(rank_cases(est), self.tau, {"tau": self.tau})

    weights_losses = True

    def loss_weights(self, losses, keys: Optional[Sequence[str]] = None,
                     recorded=None) -> Optional[np.ndarray]:
        """Raw ``sigma*(l; tau, lam)`` per sample; None before ``tau`` exists; 0 for a non-finite loss."""
        losses = np.asarray(losses, dtype=np.float64).reshape(-1)
        if self.tau is None:
            return None
        finite = np.isfinite(losses)
        out = np.zeros(losses.size)
        out[finite] = superloss_sigma(losses[finite], self.tau, self.lam)
        return out

    def state_dict(self) -> dict:
        return {"tau": self.tau}

    def load_state_dict(self, d: dict) -> None:
        tau = d.get("tau")
        self.tau = None if tau is None else float(tau)


class SmoothingScheduler(CurriculumScheduler):
    """Sinha, Garg & Larochelle (2020, NeurIPS) curriculum by smoothing: uniform sampling; the plan carries the blur
    width ``sigma = smoothing_sigma(epoch, num_epochs, ...)`` that the trainer applies to feature maps. No case
    order (ranking None), hence no Random/Anti control."""

    has_order = False

    def __init__(self, case_ids: Sequence[str], num_epochs: int, sigma0: float = 1.0, decay: float = 0.9,
                 every: int = 5, sigma_min: float = 0.1, zero_after: float = 0.5):
        super().__init__(case_ids)
        smoothing_sigma(0, num_epochs, sigma0, decay, every, sigma_min, zero_after)  # validates
        self.num_epochs, self.sigma0, self.decay, self.every = int(num_epochs), float(sigma0), float(decay), int(every)
        self.sigma_min, self.zero_after = float(sigma_min), float(zero_after)

    def config(self) -> dict:
        return {**super().config(), "num_epochs": self.num_epochs, "sigma0": self.sigma0, "decay": self.decay,
                "every": self.every, "sigma_min": self.sigma_min, "zero_after": self.zero_after}

    def set_num_epochs(self, num_epochs: int) -> None:
        """The blur schedule's ``zero_after`` is a fraction of the trainer's (possibly calibrated) ``num_epochs``."""
        smoothing_sigma(0, num_epochs, self.sigma0, self.decay, self.every, self.sigma_min, self.zero_after)
        self.num_epochs = int(num_epochs)

    def sigma(self, epoch: int) -> float:
        return smoothing_sigma(int(epoch), self.num_epochs, self.sigma0, self.decay, self.every, self.sigma_min,
                               self.zero_after)

    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        sigma = self.sigma(epoch)
        return self._uniform_plan(None, sigma, {"sigma": sigma})
