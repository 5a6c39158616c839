"""Schedulers of the curriculum family, on the engine's :class:`CurriculumScheduler` interface.

Every scheduler is plain numpy, deterministic given the ``rng`` the engine hands to :meth:`plan`, and keeps
everything it draws or accumulates in a JSON-safe :meth:`state_dict`, so ``--c`` resumes and DDP ranks agree.

``order`` selects the study arm (Wu, Dyer & Neyshabur 2021: the gain of a curriculum may come from pacing alone,
so every ordering needs controls):

- ``"curriculum"``: easy first (the method as published);
- ``"random"``: identical pacing / mechanism, with a fixed random order (a permutation drawn once from the seeded
  rng and saved) in place of the difficulty, or random instead of loss-driven choices for dynamic methods;
- ``"anti"``: identical pacing / mechanism, hardest first.

Schedulers (see docs/curricula.md for the table):

- :class:`FixedOrderPacingScheduler`: a fixed difficulty (metadata, CSV, teacher) + a Wu et al. pacing function or
  Hacohen & Weinshall's fixed exponential pacing (Predefined, TransferTeacher);
- :class:`CompetenceScheduler` (Platanios et al. 2019), :class:`BabyStepsScheduler` (Bengio 2009 / Spitkovsky 2010);
- :class:`DIHScheduler` (Zhou et al. 2020), :class:`SuperLossScheduler` (Castells et al. 2020),
  :class:`SPLDScheduler` (Jiang et al. 2014), :class:`TeacherStudentScheduler` (Matiisen et al. 2017),
  :class:`SmoothingScheduler` (Sinha et al. 2020; uniform sampling, only the blur width changes).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from clips_nnunet.curriculum.baby_steps import active_bucket_count, difficulty_buckets
from clips_nnunet.curriculum.bandit import case_probabilities, task_probabilities, window_slope
from clips_nnunet.curriculum.competence import competence_probabilities
from clips_nnunet.curriculum.dih import dih_weights, sample_subset, subset_size, update_hardness
from clips_nnunet.curriculum.pacing import competence_root_p, hacohen_exponential_pacing, num_active_cases
from clips_nnunet.curriculum.schedulers import CurriculumScheduler, SamplingPlan, _PacedScheduler
from clips_nnunet.curriculum.self_paced import threshold_admitting
from clips_nnunet.curriculum.smoothing import smoothing_sigma
from clips_nnunet.curriculum.spld import spld_select
from clips_nnunet.curriculum.state import DifficultyState
from clips_nnunet.curriculum.superloss import superloss_sigma
from clips_nnunet.errors import CurriculumConfigError

ORDERS = ("curriculum", "random", "anti")


def _check_order(order: str) -> str:
    if order not in ORDERS:
        raise CurriculumConfigError(f"order must be one of {ORDERS}, got {order!r}")
    return order


def _uniform_over(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, dtype=float)
    return mask / mask.sum() if mask.sum() > 0 else np.full(mask.size, 1.0 / mask.size)


class _FixedDifficultyMixin:
    """A fixed per-case difficulty, turned into the arm's effective difficulty: as given (curriculum), negated
    (anti), or a fixed random permutation of ranks drawn once from the rng (random)."""

    def _init_difficulty(self, difficulty, order: str) -> None:
        d = np.asarray(difficulty, dtype=np.float64).reshape(-1)
        if d.size != len(self.case_ids):
            raise CurriculumConfigError(f"difficulty has {d.size} values for {len(self.case_ids)} training cases")
        if not np.all(np.isfinite(d)):
            bad = [self.case_ids[i] for i in np.flatnonzero(~np.isfinite(d))[:5]]
            raise CurriculumConfigError(f"difficulty is not finite for cases {bad}")
        self.difficulty = d
        self.order = _check_order(order)
        self.random_order: Optional[np.ndarray] = None

    def effective_difficulty(self, rng: np.random.Generator) -> np.ndarray:
        if self.order == "anti":
            return -self.difficulty
        if self.order == "random":
            if self.random_order is None:
                self.random_order = rng.permutation(len(self.case_ids)).astype(np.float64)
            return self.random_order
        return self.difficulty

    def _difficulty_state(self) -> dict:
        return {"random_order": None if self.random_order is None else self.random_order.tolist()}

    def _load_difficulty_state(self, d: dict) -> None:
        order = d.get("random_order")
        self.random_order = None if order is None else np.asarray(order, dtype=np.float64)
        if self.random_order is not None and self.random_order.size != len(self.case_ids):
            raise CurriculumConfigError("saved random order does not match the number of training cases")


class FixedOrderPacingScheduler(_FixedDifficultyMixin, _PacedScheduler):
    """Admit the ``n(t)`` easiest cases by a fixed difficulty, uniformly (Predefined and TransferTeacher).

    ``n(t) = num_active_cases(pace(t), N, b, min_cases)`` with a Wu et al. (2021) pacing ``pacing``; or, with
    ``pacing="hacohen"``, Hacohen & Weinshall (2019)'s fixed exponential pacing per epoch ``i``:
    ``g(i) = min(s * inc^floor(i / step), 1) * N`` (``hacohen_start``, ``hacohen_increase``, ``hacohen_step``
    epochs). Ties in difficulty are admitted by case order (stable sort).
    """

    def __init__(self, case_ids: Sequence[str], difficulty, pacing: str = "root", pacing_a: float = 0.8,
                 pacing_b: float = 0.3, min_cases: int = 2, order: str = "curriculum",
                 hacohen_start: float = 0.3, hacohen_increase: float = 1.5, hacohen_step: int = 10):
        self.hacohen = pacing == "hacohen"
        super().__init__(case_ids, "linear" if self.hacohen else pacing, pacing_a,
                         hacohen_start if self.hacohen else pacing_b, min_cases)
        if self.hacohen:
            hacohen_exponential_pacing(0, hacohen_start, hacohen_increase, hacohen_step)  # validates
            self.pacing = "hacohen"
        self.hacohen_start, self.hacohen_increase = float(hacohen_start), float(hacohen_increase)
        self.hacohen_step = int(hacohen_step)
        self._init_difficulty(difficulty, order)

    def config(self) -> dict:
        c = {**super().config(), "order": self.order}
        if self.hacohen:
            c.update(hacohen_start=self.hacohen_start, hacohen_increase=self.hacohen_increase,
                     hacohen_step=self.hacohen_step)
        return c

    def n_admitted(self, progress: float, epoch: int) -> int:
        if self.hacohen:
            g = hacohen_exponential_pacing(int(epoch), self.hacohen_start, self.hacohen_increase, self.hacohen_step)
            return num_active_cases(g, len(self.case_ids), 0.0, self.min_cases)
        return self.n_active(progress)

    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        self._check_state(state)
        d = self.effective_difficulty(rng)
        n = self.n_admitted(progress, epoch)
        chosen = np.argsort(d, kind="stable")[:n]
        w = np.zeros(len(self.case_ids))
        w[chosen] = 1.0
        return SamplingPlan(probabilities=w / w.sum(), active_fraction=n / len(self.case_ids),
                            threshold=threshold_admitting(d, n), extra={"n_active": int(n), "order": self.order})

    def state_dict(self) -> dict:
        return self._difficulty_state()

    def load_state_dict(self, d: dict) -> None:
        self._load_difficulty_state(d)


class CompetenceScheduler(_FixedDifficultyMixin, CurriculumScheduler):
    """Platanios et al. (2019): uniform sampling among cases whose difficulty CDF is ``<= c(t)``, with the
    competence root-p ``c(t) = min(1, (t (1 - c0^p) / T + c0^p)^(1/p))``; ``t`` = training progress and
    ``T = competence_T`` the fraction of training after which competence is 1."""

    def __init__(self, case_ids: Sequence[str], difficulty, c0: float = 0.1, p: float = 2.0,
                 competence_T: float = 0.8, min_cases: int = 2, order: str = "curriculum"):
        super().__init__(case_ids)
        competence_root_p(0.0, c0, p, competence_T)  # validates
        self.c0, self.p, self.competence_T, self.min_cases = float(c0), float(p), float(competence_T), int(min_cases)
        self._init_difficulty(difficulty, order)

    def config(self) -> dict:
        return {**super().config(), "c0": self.c0, "p": self.p, "competence_T": self.competence_T,
                "min_cases": self.min_cases, "order": self.order}

    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        self._check_state(state)
        c = competence_root_p(max(0.0, float(progress)), self.c0, self.p, self.competence_T)
        p = competence_probabilities(self.effective_difficulty(rng), c, self.min_cases)
        return SamplingPlan(probabilities=p, active_fraction=float((p > 0).mean()), threshold=c,
                            extra={"competence": c, "order": self.order})

    def state_dict(self) -> dict:
        return self._difficulty_state()

    def load_state_dict(self, d: dict) -> None:
        self._load_difficulty_state(d)


class BabyStepsScheduler(_FixedDifficultyMixin, CurriculumScheduler):
    """Bengio et al. (2009) / Spitkovsky et al. (2010) baby steps: ``n_buckets`` difficulty buckets added
    cumulatively, ``k(t) = min(K, 1 + floor(K t / a))`` buckets active, uniform within them."""

    def __init__(self, case_ids: Sequence[str], difficulty, n_buckets: int = 4, pacing_a: float = 0.8,
                 order: str = "curriculum"):
        super().__init__(case_ids)
        self._init_difficulty(difficulty, order)
        difficulty_buckets(self.difficulty, n_buckets)  # validates
        active_bucket_count(0.0, n_buckets, pacing_a)
        self.n_buckets, self.pacing_a = int(n_buckets), float(pacing_a)

    def config(self) -> dict:
        return {**super().config(), "n_buckets": self.n_buckets, "pacing_a": self.pacing_a, "order": self.order}

    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        self._check_state(state)
        buckets = difficulty_buckets(self.effective_difficulty(rng), self.n_buckets)
        k = active_bucket_count(min(1.0, max(0.0, float(progress))), self.n_buckets, self.pacing_a)
        mask = np.zeros(len(self.case_ids))
        mask[np.concatenate(buckets[:k])] = 1.0
        return SamplingPlan(probabilities=_uniform_over(mask), active_fraction=float(mask.mean()), threshold=None,
                            extra={"active_buckets": int(k), "order": self.order})

    def state_dict(self) -> dict:
        return self._difficulty_state()

    def load_state_dict(self, d: dict) -> None:
        self._load_difficulty_state(d)


class DIHScheduler(CurriculumScheduler):
    """Zhou, Wang & Bilmes (2020) dynamic instance hardness.

    After each epoch, for every case trained on again (more visits than at the last plan), the instantaneous
    hardness ``a(i) = |d_t(i) - d_{t-1}(i)|`` is the change of its EMA loss (the engine's per-case estimate) since
    the last plan, and ``r(i) <- gamma a(i) + (1 - gamma) r(i)`` (Zhou eq. 1). Cases without a measured change get
    the largest hardness (optimistic exploration). A subset of ``k_t = subset_size(N, epoch - warmup, shrink,
    floor)`` cases is drawn without replacement with ``p ∝ exp(beta r / max r)`` and sampled uniformly.
    Controls: ``random`` draws the subset uniformly (same sizes), ``anti`` prefers the least-hard cases
    (``exp(-beta r / max r)``).
    """

    def __init__(self, case_ids: Sequence[str], gamma: float = 0.5, beta: float = 3.0, shrink: float = 0.9,
                 floor: float = 0.3, warmup_epochs: int = 0, min_cases: int = 2, order: str = "curriculum"):
        super().__init__(case_ids)
        update_hardness(np.zeros(1), np.zeros(1), np.zeros(1, bool), gamma)  # validates gamma
        dih_weights(np.zeros(1), beta)
        subset_size(len(self.case_ids), 0, shrink, floor, min_cases)
        self.gamma, self.beta, self.shrink, self.floor = float(gamma), float(beta), float(shrink), float(floor)
        self.warmup_epochs, self.min_cases, self.order = int(warmup_epochs), int(min_cases), _check_order(order)
        n = len(self.case_ids)
        self.hardness = np.zeros(n)
        self.measured = np.zeros(n, dtype=bool)
        self.prev_estimates: Optional[np.ndarray] = None
        self.prev_visits = np.zeros(n, dtype=np.int64)

    def config(self) -> dict:
        return {**super().config(), "gamma": self.gamma, "beta": self.beta, "shrink": self.shrink,
                "floor": self.floor, "warmup_epochs": self.warmup_epochs, "min_cases": self.min_cases,
                "order": self.order}

    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        self._check_state(state)
        est = state.estimates()
        visits = np.asarray(state.visits, dtype=np.int64)
        if self.prev_estimates is not None:
            updated = (visits > self.prev_visits) & (self.prev_visits > 0)
            change = np.abs(est - self.prev_estimates)
            first = updated & ~self.measured
            self.hardness[first] = change[first]  # first measured change initialises r
            self.hardness = update_hardness(self.hardness, change, updated & ~first, self.gamma)
            self.measured |= updated
        self.prev_estimates, self.prev_visits = est.copy(), visits.copy()
        r = self.hardness.copy()
        if self.measured.any():
            r[~self.measured] = r[self.measured].max()
        k = subset_size(len(self.case_ids), int(epoch) - self.warmup_epochs, self.shrink, self.floor,
                        self.min_cases)
        if self.order == "random":
            weights = np.full(r.size, 1.0 / r.size)
        else:
            weights = dih_weights(-r if self.order == "anti" else r, self.beta)
        subset = sample_subset(weights, k, rng)
        mask = np.zeros(len(self.case_ids))
        mask[subset] = 1.0
        return SamplingPlan(probabilities=mask / mask.sum(), active_fraction=k / len(self.case_ids), threshold=None,
                            extra={"n_active": int(k), "mean_hardness": float(r.mean()), "order": self.order})

    def state_dict(self) -> dict:
        return {"hardness": self.hardness.tolist(), "measured": self.measured.tolist(),
                "prev_estimates": None if self.prev_estimates is None else self.prev_estimates.tolist(),
                "prev_visits": self.prev_visits.tolist()}

    def load_state_dict(self, d: dict) -> None:
        n = len(self.case_ids)
        self.hardness = np.asarray(d["hardness"], dtype=np.float64)
        self.measured = np.asarray(d["measured"], dtype=bool)
        self.prev_estimates = None if d["prev_estimates"] is None else np.asarray(d["prev_estimates"], float)
        self.prev_visits = np.asarray(d["prev_visits"], dtype=np.int64)
        if self.hardness.size != n or self.measured.size != n or self.prev_visits.size != n:
            raise CurriculumConfigError("saved DIH state does not match the number of training cases")


class SuperLossScheduler(CurriculumScheduler):
    """Castells et al. (2020) SuperLoss: uniform sampling; each sample's loss is weighted by its confidence
    ``sigma* = exp(-W0(0.5 max(-2/e, (l - tau)/lam)))`` (see :mod:`clips_nnunet.curriculum.superloss`).

    ``tau`` is the running mean loss: the mean EMA loss of the seen cases at the last plan (identical on every DDP
    rank because the engine gathers the losses); before any case is seen the weights are 1. Controls:
    ``anti`` reflects the loss around ``tau`` (``sigma*(2 tau - l)``: hard samples up-weighted); ``random`` gives
    each batch the same multiset of weights in a random order (a permutation from a generator seeded at each plan).
    """

    def __init__(self, case_ids: Sequence[str], lam: float = 1.0, order: str = "curriculum"):
        super().__init__(case_ids)
        superloss_sigma([0.0], 0.0, lam)  # validates
        self.lam, self.order = float(lam), _check_order(order)
        self.tau: Optional[float] = None
        self.batch_seed: Optional[int] = None
        self._batch_rng: Optional[np.random.Generator] = None

    def config(self) -> dict:
        return {**super().config(), "lam": self.lam, "order": self.order}

    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        self._check_state(state)
        seen = state.seen
        self.tau = float(state.estimates()[seen].mean()) if seen.any() else None
        self.batch_seed = int(rng.integers(0, 2 ** 31 - 1))
        self._batch_rng = np.random.default_rng(self.batch_seed)
        return SamplingPlan(probabilities=np.full(len(self.case_ids), 1.0 / len(self.case_ids)),
                            active_fraction=1.0, threshold=self.tau, extra={"tau": self.tau, "order": self.order})

    def weights(self, losses) -> np.ndarray:
        """Per-sample loss weights for one batch of per-sample losses."""
        losses = np.asarray(losses, dtype=np.float64).reshape(-1)
        if self.tau is None:
            return np.ones_like(losses)
        finite = np.isfinite(losses)
        l = np.where(finite, losses, self.tau)
        if self.order == "anti":
            l = 2.0 * self.tau - l
        w = superloss_sigma(l, self.tau, self.lam)
        if self.order == "random":
            if self._batch_rng is None:
                self._batch_rng = np.random.default_rng(self.batch_seed or 0)
            w = self._batch_rng.permutation(w)
        return np.where(finite, w, 1.0)

    def state_dict(self) -> dict:
        return {"tau": self.tau, "batch_seed": self.batch_seed}

    def load_state_dict(self, d: dict) -> None:
        self.tau, self.batch_seed = d.get("tau"), d.get("batch_seed")
        self._batch_rng = None if self.batch_seed is None else np.random.default_rng(self.batch_seed)


class SPLDScheduler(_PacedScheduler):
    """Jiang et al. (2014) self-paced learning with diversity, rank rule per group:
    select case of rank ``r`` in its group if ``l < lam + gamma / (sqrt(r) + sqrt(r - 1))``.

    Scale-free parameters: ``lam`` is the EMA-loss quantile admitting ``pace(t) N`` cases (as the engine's
    self-paced learning), ``gamma = gamma_rel * (max d - min d)`` (diversity bonus relative to the loss spread).
    The selected cases are sampled uniformly; at least ``min_cases`` easiest stay in. Controls: ``anti`` applies the
    rule to the reflected losses ``max + min - d`` (hardest first, still diverse); ``random`` selects the same
    number of cases per group at random.
    """

    def __init__(self, case_ids: Sequence[str], groups: Sequence[str], pacing: str = "root", pacing_a: float = 0.8,
                 pacing_b: float = 0.3, min_cases: int = 2, gamma_rel: float = 0.2, order: str = "curriculum"):
        super().__init__(case_ids, pacing, pacing_a, pacing_b, min_cases)
        groups = [str(g) for g in groups]
        if len(groups) != len(self.case_ids):
            raise CurriculumConfigError(f"{len(groups)} group labels for {len(self.case_ids)} training cases")
        if gamma_rel < 0:
            raise CurriculumConfigError(f"spld_gamma_rel must be >= 0, got {gamma_rel}")
        self.groups, self.gamma_rel, self.order = groups, float(gamma_rel), _check_order(order)

    def config(self) -> dict:
        return {**super().config(), "gamma_rel": self.gamma_rel, "order": self.order,
                "n_groups": len(set(self.groups))}

    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        self._check_state(state)
        d = state.estimates()
        if self.order == "anti":
            d = d.max() + d.min() - d
        n = self.n_active(progress)
        lam = threshold_admitting(d, n)
        gamma = self.gamma_rel * float(d.max() - d.min())
        selected = spld_select(d, self.groups, lam, gamma)
        if selected.sum() < self.min_cases:
            selected[np.argsort(d, kind="stable")[: self.min_cases]] = True
        if self.order == "random":
            groups = np.asarray(self.groups)
            random_sel = np.zeros_like(selected)
            for g in sorted(set(self.groups)):
                members = np.flatnonzero(groups == g)
                k = int(selected[members].sum())
                random_sel[rng.choice(members, size=k, replace=False)] = True
            selected = random_sel
        return SamplingPlan(probabilities=_uniform_over(selected), active_fraction=float(selected.mean()),
                            threshold=lam, extra={"gamma": gamma, "n_selected": int(selected.sum()),
                                                  "order": self.order})


class TeacherStudentScheduler(_FixedDifficultyMixin, CurriculumScheduler):
    """Matiisen et al. (2017) teacher-student curriculum, Window algorithm: ``n_buckets`` difficulty buckets are
    the tasks; after each epoch the mean EMA loss of each bucket's cases trained on in that epoch is recorded; the
    last ``window`` records give a least-squares slope per task, and task probabilities are
    ``(1 - eps) softmax(|slope| / (tau max|slope|)) + eps / K`` (within a task, uniform).

    Controls: ``random`` uses buckets of a fixed random order; ``anti`` prefers the tasks with the *smallest*
    learning progress (``softmax(-|slope| ...)``)."""

    def __init__(self, case_ids: Sequence[str], difficulty, n_buckets: int = 3, window: int = 5,
                 temperature: float = 0.5, epsilon: float = 0.1, order: str = "curriculum"):
        super().__init__(case_ids)
        self._init_difficulty(difficulty, order)
        difficulty_buckets(self.difficulty, n_buckets)
        task_probabilities([0.0], temperature, epsilon)
        if int(window) != window or window < 2:
            raise CurriculumConfigError(f"bandit window must be an integer >= 2, got {window!r}")
        self.n_buckets, self.window = int(n_buckets), int(window)
        self.temperature, self.epsilon = float(temperature), float(epsilon)
        self.history: List[List[List[float]]] = [[] for _ in range(self.n_buckets)]  # per task [epoch, loss]
        self.prev_visits: Optional[np.ndarray] = None

    def config(self) -> dict:
        return {**super().config(), "n_buckets": self.n_buckets, "window": self.window,
                "temperature": self.temperature, "epsilon": self.epsilon, "order": self.order}

    def slopes(self) -> np.ndarray:
        out = []
        for records in self.history:
            recent = records[-self.window:]
            out.append(window_slope([r[0] for r in recent], [r[1] for r in recent]))
        return np.asarray(out)

    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        self._check_state(state)
        buckets = difficulty_buckets(self.effective_difficulty(rng), self.n_buckets)
        visits = np.asarray(state.visits, dtype=np.int64)
        est = state.estimates()
        if self.prev_visits is not None:
            trained = visits > self.prev_visits
            for task, members in enumerate(buckets):
                fresh = members[trained[members]]
                if fresh.size:
                    self.history[task].append([float(epoch), float(est[fresh].mean())])
        self.prev_visits = visits.copy()
        s = self.slopes()
        if self.order == "anti":
            known = np.isfinite(s)
            top = np.abs(s[known]).max() if known.any() else 1.0
            s = np.where(known, top - np.abs(s), np.nan)
        task_p = task_probabilities(s, self.temperature, self.epsilon)
        p = case_probabilities(task_p, buckets, len(self.case_ids))
        return SamplingPlan(probabilities=p, active_fraction=1.0, threshold=None,
                            extra={"task_probabilities": task_p.tolist(),
                                   "slopes": [None if not np.isfinite(x) else float(x) for x in s],
                                   "order": self.order})

    def state_dict(self) -> dict:
        return {**self._difficulty_state(), "history": self.history,
                "prev_visits": None if self.prev_visits is None else self.prev_visits.tolist()}

    def load_state_dict(self, d: dict) -> None:
        self._load_difficulty_state(d)
        self.history = [[list(map(float, r)) for r in task] for task in d["history"]]
        if len(self.history) != self.n_buckets:
            raise CurriculumConfigError("saved teacher-student history does not match n_buckets")
        self.prev_visits = None if d.get("prev_visits") is None else np.asarray(d["prev_visits"], np.int64)


class SmoothingScheduler(CurriculumScheduler):
    """Sinha et al. (2020) curriculum by smoothing: uniform sampling; the plan carries the blur width
    ``sigma = smoothing_sigma(epoch, num_epochs, ...)`` that the trainer applies to encoder feature maps."""

    def __init__(self, case_ids: Sequence[str], num_epochs: int, sigma0: float = 1.0, decay: float = 0.9,
                 every: int = 5, sigma_min: float = 0.1, zero_after: float = 0.5):
        super().__init__(case_ids)
        smoothing_sigma(0, num_epochs, sigma0, decay, every, sigma_min, zero_after)  # validates
        self.num_epochs, self.sigma0, self.decay, self.every = int(num_epochs), float(sigma0), float(decay), int(every)
        self.sigma_min, self.zero_after = float(sigma_min), float(zero_after)

    def config(self) -> dict:
        return {**super().config(), "num_epochs": self.num_epochs, "sigma0": self.sigma0, "decay": self.decay,
                "every": self.every, "sigma_min": self.sigma_min, "zero_after": self.zero_after}

    def sigma(self, epoch: int) -> float:
        return smoothing_sigma(int(epoch), self.num_epochs, self.sigma0, self.decay, self.every, self.sigma_min,
                               self.zero_after)

    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        sigma = self.sigma(epoch)
        return SamplingPlan(probabilities=np.full(len(self.case_ids), 1.0 / len(self.case_ids)),
                            active_fraction=1.0, threshold=sigma, extra={"sigma": sigma})
