"""Curriculum schedulers: turn the difficulty state and training progress into per-case sampling weights.

A scheduler's :meth:`CurriculumScheduler.plan` returns a :class:`SamplingPlan` whose ``probabilities`` are the
curriculum's own non-negative weights over the training cases (normalised to sum 1 where possible). The trainer then
applies :func:`finalize_probabilities` (uniform during warm-up; afterwards a mixture with an exploration
probability ``epsilon`` so excluded cases keep being measured; never all zero) before writing them to the data
loader's shared memory. Schedulers are deterministic given their inputs and the ``rng`` they are handed, and keep
anything random they draw in :meth:`state_dict`, so resumed and DDP runs reproduce the same curriculum.

Concrete schedulers here:

- :class:`SelfPacedScheduler`: self-paced learning (Kumar et al. 2010; soft weights Jiang et al. 2014), the
  threshold ``lam`` being the EMA-loss quantile that admits ``pace(t) N`` cases (Wu et al. 2021 pacing).
- :class:`OrderedPacingScheduler`: admit the ``pace(t) N`` cases with the lowest order score, uniformly
  (the "curriculum / random / anti-curriculum" protocol of Wu, Dyer & Neyshabur 2021); with
  :func:`make_random_control` (a fixed random order drawn once) and :func:`make_anti_control` (hardest first).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from clips_nnunet.curriculum.pacing import num_active_cases, pacing_fraction, validate_pacing
from clips_nnunet.curriculum.self_paced import SPL_SCHEMES, spl_weights, threshold_admitting
from clips_nnunet.curriculum.state import DifficultyState
from clips_nnunet.errors import CurriculumConfigError


@dataclass
class SamplingPlan:
    """What a scheduler decided for one epoch.

    ``probabilities``: one non-negative weight per case (order of the scheduler's ``case_ids``);
    ``active_fraction``: fraction of cases the curriculum admits; ``threshold``: the loss/score threshold used
    (None if the scheduler has none); ``extra``: scheduler-specific JSON-safe details for logs.
    """

    probabilities: np.ndarray
    active_fraction: float
    threshold: Optional[float] = None
    extra: dict = field(default_factory=dict)


def finalize_probabilities(raw, epsilon: float, warmup: bool) -> np.ndarray:
    """Sampling distribution actually used: uniform during warm-up, else ``(1 - eps) * raw/sum(raw) + eps / N``.

    The exploration term ``eps / N`` (epsilon-greedy mixing) keeps every case's loss estimate fresh. If ``raw``
    sums to zero the result is uniform, so the probabilities never sum to zero. Result sums to 1.
    """
    raw = np.asarray(raw, dtype=np.float64).reshape(-1)
    n = raw.size
    if n == 0:
        raise CurriculumConfigError("no cases to sample from: the training split is empty")
    if not np.all(np.isfinite(raw)) or np.any(raw < 0):
        raise CurriculumConfigError("curriculum weights must be finite and >= 0")
    epsilon = float(epsilon)
    if not 0.0 <= epsilon <= 1.0:
        raise CurriculumConfigError(f"exploration_epsilon must be in [0, 1], got {epsilon}")
    uniform = np.full(n, 1.0 / n)
    total = raw.sum()
    if warmup or total <= 0:
        return uniform
    p = (1.0 - epsilon) * raw / total + epsilon * uniform
    return p / p.sum()


def sampling_entropy(probabilities) -> float:
    """Shannon entropy ``-sum p log p`` in nats (log N for uniform sampling over N cases)."""
    p = np.asarray(probabilities, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


class CurriculumScheduler(ABC):
    """Base class: ``plan(state, progress, epoch, rng) -> SamplingPlan`` over a fixed list of case ids."""

    def __init__(self, case_ids: Sequence[str]):
        case_ids = [str(c) for c in case_ids]
        if not case_ids:
            raise CurriculumConfigError("case_ids is empty: the training split of this fold has no cases")
        self.case_ids = case_ids

    @abstractmethod
    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        """Sampling weights for ``epoch`` at training progress ``progress`` in [0, 1]."""

    def config(self) -> dict:
        """JSON-safe hyper-parameters, written to curriculum_config.json."""
        return {"class": type(self).__name__}

    def state_dict(self) -> dict:
        """JSON-safe state to save in checkpoints (anything drawn from the rng); default empty."""
        return {}

    def load_state_dict(self, d: dict) -> None:
        """Restore :meth:`state_dict`; default does nothing."""

    def _check_state(self, state: DifficultyState) -> None:
        if list(state.case_ids) != self.case_ids:
            raise CurriculumConfigError("the difficulty state and the scheduler have different case ids; "
                                        "the training split changed since the run started")


class _PacedScheduler(CurriculumScheduler):
    def __init__(self, case_ids: Sequence[str], pacing: str, pacing_a: float, pacing_b: float, min_cases: int):
        super().__init__(case_ids)
        validate_pacing(pacing, pacing_a, pacing_b)
        if int(min_cases) != min_cases or min_cases < 1:
            raise CurriculumConfigError(f"min_cases must be an integer >= 1, got {min_cases!r}")
        self.pacing, self.pacing_a, self.pacing_b = pacing, float(pacing_a), float(pacing_b)
        self.min_cases = int(min_cases)

    def n_active(self, progress: float) -> int:
        """``num_active_cases(pace(progress), N, b, min_cases)``."""
        frac = pacing_fraction(self.pacing, min(1.0, max(0.0, float(progress))), self.pacing_a, self.pacing_b)
        return num_active_cases(frac, len(self.case_ids), self.pacing_b, self.min_cases)

    def config(self) -> dict:
        return {**super().config(), "pacing": self.pacing, "pacing_a": self.pacing_a, "pacing_b": self.pacing_b,
                "min_cases": self.min_cases}


class SelfPacedScheduler(_PacedScheduler):
    """Self-paced learning with a pacing-controlled threshold.

    Each epoch, ``n = num_active_cases(pace(t), N, b, min_cases)`` (Wu et al. 2021 pacing ``pace``) and the
    threshold ``lam = threshold_admitting(d, n)`` on the EMA losses ``d`` of :class:`DifficultyState`; the
    sampling weight of case i is the SPL weight ``v*(d_i; lam)`` of ``scheme`` (Kumar et al. 2010 hard;
    Jiang et al. 2014 linear / logarithmic / mixture). Exactly ``n`` cases are admitted (the n lowest ``d``;
    ties, such as unseen cases that all count as the median, are broken with a permutation drawn from ``rng``). For the linear and mixture schemes losses are shifted to
    ``d - min(d)`` (they need non-negative losses; Dice + CE is negative for good cases); the mixture's lower
    threshold ``lam'`` admits ``lam_prime_quantile`` of the admitted cases with weight 1.
    """

    def __init__(self, case_ids: Sequence[str], pacing: str = "root", pacing_a: float = 0.8,
                 pacing_b: float = 0.3, min_cases: int = 2, scheme: str = "hard", lam_prime_quantile: float = 0.5):
        super().__init__(case_ids, pacing, pacing_a, pacing_b, min_cases)
        if scheme not in SPL_SCHEMES:
            raise CurriculumConfigError(f"spl_scheme must be one of {', '.join(SPL_SCHEMES)}, got {scheme!r}")
        if not 0.0 < float(lam_prime_quantile) < 1.0:
            raise CurriculumConfigError(f"lam_prime_quantile must be in (0, 1), got {lam_prime_quantile}")
        self.scheme = scheme
        self.lam_prime_quantile = float(lam_prime_quantile)
        self._last: Optional[dict] = None

    def config(self) -> dict:
        return {**super().config(), "scheme": self.scheme, "lam_prime_quantile": self.lam_prime_quantile}

    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        self._check_state(state)
        d = state.estimates()
        n = self.n_active(progress)
        lam = threshold_admitting(d, n)
        extra = {"n_active": int(n), "scheme": self.scheme}
        shift = float(d.min())
        last = {"scheme": self.scheme, "lam": lam, "shift": shift, "range": (shift, float(d.max()))}
        if self.scheme in ("hard", "logarithmic"):
            w = spl_weights(d, lam, self.scheme)
        else:
            ds, lam_s = d - shift, lam - shift
            if self.scheme == "linear":
                w = spl_weights(ds, lam_s, "linear")
            else:
                n_prime = min(max(1, int(np.ceil(self.lam_prime_quantile * n - 1e-9))), n - 1)
                lam_prime = threshold_admitting(d, n_prime) - shift if n_prime >= 1 else 0.0
                if 0.0 < lam_prime < lam_s:
                    w = spl_weights(ds, lam_s, "mixture", lam_prime=lam_prime)
                    extra["lam_prime"] = lam_prime + shift
                    last["lam_prime"] = lam_prime + shift
                else:  # too few cases for two thresholds: the mixture degenerates to hard weights
                    w = spl_weights(d, lam, "hard")
                    last["scheme"] = "hard"
        self._last = last
        # exactly n cases are admitted: the n lowest estimates, ties (e.g. unseen cases, which count as the
        # median) broken by a random permutation from the shared rng, so every DDP rank breaks them identically
        tie_break = rng.permutation(d.size) if rng is not None else np.arange(d.size)
        order = np.lexsort((tie_break, d))
        active = np.zeros(d.size, dtype=bool)
        active[order[:n]] = True
        w = np.where(active, np.maximum(w, 0.0), 0.0)
        if self.scheme == "hard" or w.sum() <= 0:
            w = active.astype(np.float64)
        return SamplingPlan(probabilities=_normalise(w), active_fraction=float(active.mean()), threshold=lam,
                            extra=extra)


    def loss_weights(self, losses) -> np.ndarray:
        """SPL weights ``v*(l; lam)`` of individual (batch) losses with the last plan's threshold(s), for soft
        self-paced loss weighting (Jiang et al. 2014). Uses the same shift/rescaling as the last :meth:`plan`;
        before the first plan every weight is 1."""
        losses = np.asarray(losses, dtype=np.float64).reshape(-1)
        if self._last is None:
            return np.ones_like(losses)
        last = self._last
        lam, shift = last["lam"], last["shift"]
        if last["scheme"] == "hard":
            return spl_weights(losses, lam, "hard")
        if last["scheme"] == "logarithmic":
            return spl_weights(losses, lam, "logarithmic", loss_range=last["range"])
        shifted = np.clip(losses - shift, 0.0, None)
        if last["scheme"] == "linear":
            return spl_weights(shifted, lam - shift, "linear")
        return spl_weights(shifted, lam - shift, "mixture", lam_prime=last["lam_prime"] - shift)


class OrderedPacingScheduler(_PacedScheduler):
    """Admit the ``pace(t) N`` cases with the lowest ``order_scores`` (ties: stable by case order), uniformly.

    This is the ordering-plus-pacing protocol of Wu, Dyer & Neyshabur 2021: any difficulty score (a fixed
    ``order_scores`` array, e.g. a TMTV- or model-based difficulty) or, with ``order_scores=None``, the current
    EMA loss of the :class:`DifficultyState` (dynamic). ``descending=True`` admits the highest scores first
    (anti-curriculum).
    """

    def __init__(self, case_ids: Sequence[str], order_scores=None, pacing: str = "root", pacing_a: float = 0.8,
                 pacing_b: float = 0.3, min_cases: int = 2, descending: bool = False):
        super().__init__(case_ids, pacing, pacing_a, pacing_b, min_cases)
        self.order_scores = None if order_scores is None else self._check_scores(order_scores)
        self.descending = bool(descending)

    def _check_scores(self, scores) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if scores.size != len(self.case_ids):
            raise CurriculumConfigError(f"order_scores has {scores.size} values for {len(self.case_ids)} cases")
        if not np.all(np.isfinite(scores)):
            bad = [self.case_ids[i] for i in np.flatnonzero(~np.isfinite(scores))[:5]]
            raise CurriculumConfigError(f"order_scores are not finite for cases {bad}")
        return scores

    def config(self) -> dict:
        return {**super().config(), "descending": self.descending,
                "order": "fixed" if self.order_scores is not None else "ema_loss"}

    def scores(self, state: DifficultyState, rng: np.random.Generator) -> np.ndarray:
        """Scores used for ordering (lower = earlier); subclasses may draw them from ``rng``."""
        return self.order_scores if self.order_scores is not None else state.estimates()

    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        self._check_state(state)
        s = self.scores(state, rng)
        key = -s if self.descending else s
        n = self.n_active(progress)
        order = np.argsort(key, kind="stable")
        w = np.zeros(len(self.case_ids))
        w[order[:n]] = 1.0
        lam = threshold_admitting(key, n)
        return SamplingPlan(probabilities=_normalise(w), active_fraction=n / len(self.case_ids),
                            threshold=-lam if self.descending else lam,
                            extra={"n_active": int(n), "descending": self.descending})


class RandomOrderScheduler(OrderedPacingScheduler):
    """Random-order control: same pacing, with a fixed random order drawn once from the seeded ``rng`` at the
    first plan and kept in :meth:`state_dict` (so a resumed run keeps the same order)."""

    def __init__(self, case_ids: Sequence[str], pacing: str = "root", pacing_a: float = 0.8, pacing_b: float = 0.3,
                 min_cases: int = 2):
        super().__init__(case_ids, None, pacing, pacing_a, pacing_b, min_cases, descending=False)

    def config(self) -> dict:
        return {**super().config(), "order": "random_fixed"}

    def scores(self, state: DifficultyState, rng: np.random.Generator) -> np.ndarray:
        if self.order_scores is None:
            self.order_scores = rng.permutation(len(self.case_ids)).astype(np.float64)
        return self.order_scores

    def state_dict(self) -> dict:
        return {"order_scores": None if self.order_scores is None else self.order_scores.tolist()}

    def load_state_dict(self, d: dict) -> None:
        scores = d.get("order_scores")
        self.order_scores = None if scores is None else self._check_scores(scores)


def make_random_control(case_ids: Sequence[str], pacing: str = "root", pacing_a: float = 0.8,
                        pacing_b: float = 0.3, min_cases: int = 2) -> RandomOrderScheduler:
    """Random control of a curriculum: identical pacing, cases admitted in a fixed random order."""
    return RandomOrderScheduler(case_ids, pacing, pacing_a, pacing_b, min_cases)


def make_anti_control(case_ids: Sequence[str], order_scores=None, pacing: str = "root", pacing_a: float = 0.8,
                      pacing_b: float = 0.3, min_cases: int = 2) -> OrderedPacingScheduler:
    """Anti-curriculum control: identical pacing, hardest cases (highest ``order_scores``, or highest current EMA
    loss when ``order_scores`` is None) admitted first."""
    return OrderedPacingScheduler(case_ids, order_scores, pacing, pacing_a, pacing_b, min_cases, descending=True)


def _normalise(w: np.ndarray) -> np.ndarray:
    w = np.clip(np.asarray(w, dtype=np.float64), 0.0, None)
    total = w.sum()
    return w / total if total > 0 else np.full(w.size, 1.0 / w.size)
