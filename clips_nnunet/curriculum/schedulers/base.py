"""The scheduler interface every curriculum implements, and what all of them share.

A scheduler's :meth:`CurriculumScheduler.plan` turns the per-case difficulty state and the training progress into a
:class:`SamplingPlan`: non-negative sampling weights over the training cases (normalised to sum 1) and the arm's
*ranking* of the cases (most preferred first; the admitted cases come first). The ranking is what the Random and
Anti controls (:mod:`clips_nnunet.curriculum.schedulers.controls`) permute, so every curriculum with an order gets
its controls in one way. The trainer applies :func:`finalize_probabilities` (uniform during warm-up; afterwards a
mixture with an exploration probability ``epsilon``) before writing the probabilities to the data loader.

Weighting curricula (SuperLoss, soft self-paced learning) also implement :meth:`CurriculumScheduler.loss_weights`:
per-sample loss weights of one batch, or ``None`` for "no weighting" (use the unweighted loss). Non-finite per-case
losses get weight 0 (the trainer names and counts them from the losses it passed in); an all-zero result means the
batch contributes no gradient (the trainer skips the step, as in self-paced learning, Kumar et al. 2010).

Schedulers are deterministic given their inputs and the ``rng`` they are handed (identical on every DDP rank), and
keep anything they draw or accumulate in a JSON-safe :meth:`CurriculumScheduler.state_dict`, so ``--c`` resumes
reproduce the same curriculum.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from clips_nnunet.curriculum.pacing import num_active_cases, pacing_fraction, validate_pacing
from clips_nnunet.curriculum.state import DifficultyState
from clips_nnunet.errors import CurriculumConfigError


@dataclass
class SamplingPlan:
    """What a scheduler decided for one epoch.

    ``probabilities``: one non-negative weight per case (order of the scheduler's ``case_ids``), summing to 1;
    ``active_fraction``: fraction of cases with positive probability; ``threshold``: the loss/score threshold used
    (None if the scheduler has none); ``extra``: scheduler-specific JSON-safe details for logs; ``ranking``: case
    indices from the arm's most to least preferred, admitted cases first (None: the scheduler has no order, e.g.
    curriculum by smoothing, and therefore no Random/Anti control).
    """

    probabilities: np.ndarray
    active_fraction: float
    threshold: Optional[float] = None
    extra: dict = field(default_factory=dict)
    ranking: Optional[np.ndarray] = None


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


def normalise(w) -> np.ndarray:
    """``w / sum(w)`` after clipping at 0; uniform when nothing is positive."""
    w = np.clip(np.asarray(w, dtype=np.float64), 0.0, None)
    total = w.sum()
    return w / total if total > 0 else np.full(w.size, 1.0 / w.size)


def rank_cases(scores, tie_break=None) -> np.ndarray:
    """Case indices by ascending ``scores``; ties by ascending ``tie_break`` (a permutation), else by case order."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if tie_break is None:
        return np.argsort(scores, kind="stable")
    return np.lexsort((np.asarray(tie_break).reshape(-1), scores))


def admit_first(ranking, n: int, size: int) -> np.ndarray:
    """Boolean mask of the first ``n`` cases of ``ranking`` (exactly ``n`` admitted, ties already broken)."""
    mask = np.zeros(int(size), dtype=bool)
    mask[np.asarray(ranking)[: int(n)]] = True
    return mask


def check_difficulty(difficulty, case_ids: Sequence[str]) -> np.ndarray:
    """A finite 1-D difficulty per case (higher = harder), else :class:`CurriculumConfigError` naming cases."""
    d = np.asarray(difficulty, dtype=np.float64).reshape(-1)
    if d.size != len(case_ids):
        raise CurriculumConfigError(f"difficulty has {d.size} values for {len(case_ids)} training cases")
    if not np.all(np.isfinite(d)):
        bad = [case_ids[i] for i in np.flatnonzero(~np.isfinite(d))[:5]]
        raise CurriculumConfigError(f"difficulty is not finite for cases {bad}")
    return d


class CurriculumScheduler(ABC):
    """Base class: ``plan(state, progress, epoch, rng) -> SamplingPlan`` over a fixed list of case ids."""

    #: False for schedulers without a case order (curriculum by smoothing): they have no Random/Anti control
    has_order: bool = True
    #: True when the arm draws a new admitted set every epoch (DIH): its Random control then draws a new random
    #: order every epoch too, instead of keeping one fixed random order
    random_control_redraws: bool = False

    def __init__(self, case_ids: Sequence[str]):
        case_ids = [str(c) for c in case_ids]
        if not case_ids:
            raise CurriculumConfigError("case_ids is empty: the training split of this fold has no cases")
        self.case_ids = case_ids

    @abstractmethod
    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        """Sampling weights for ``epoch`` at training progress ``progress`` in [0, 1]."""

    #: True for schedulers whose :meth:`loss_weights` can return weights (SuperLoss; soft self-paced learning with
    #: ``soft_mechanism="loss"``): the trainer then computes per-sample losses on the host every step
    weights_losses: bool = False

    def loss_weights(self, losses, keys: Optional[Sequence[str]] = None,
                     recorded=None) -> Optional[np.ndarray]:
        """Raw per-sample loss weights of one batch (non-finite losses: 0), or None for "no weighting" (default).

        ``losses`` are on the scale of the difficulty estimates (centred per patch type); ``recorded`` (bool per
        sample, default all True) says whether a sample's patch is of the type its case's estimate is measured
        on (a background-only patch of a lesion case is not). The trainer normalises the weights
        (:class:`~clips_nnunet.curriculum.weighting.LossWeightNormaliser`)."""
        return None

    def set_num_epochs(self, num_epochs: int) -> None:
        """The trainer's ``num_epochs`` changed after the scheduler was built (e.g. set by a subclass at the
        start of training); schedulers that depend on it (DIH, smoothing) override this."""

    def control_strata(self) -> Optional[np.ndarray]:
        """Labels within which a control permutes the plan (SPLD groups), or None for one stratum (default)."""
        return None

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

    def _uniform_plan(self, ranking, threshold=None, extra=None) -> SamplingPlan:
        n = len(self.case_ids)
        return SamplingPlan(np.full(n, 1.0 / n), 1.0, threshold, dict(extra or {}),
                            None if ranking is None else np.asarray(ranking))


class PacedScheduler(CurriculumScheduler):
    """A scheduler whose admitted count follows a pacing function of Wu, Dyer & Neyshabur (2021, ICLR, section 2):
    ``n(t) = num_active_cases(g(t), N, b, min_cases)``; ``n(1) = N`` for every pacing (``a <= 1``)."""

    def __init__(self, case_ids: Sequence[str], pacing: str, pacing_a: float, pacing_b: float, min_cases: int):
        super().__init__(case_ids)
        validate_pacing(pacing, pacing_a, pacing_b)
        if int(min_cases) != min_cases or min_cases < 1:
            raise CurriculumConfigError(f"min_cases must be an integer >= 1, got {min_cases!r}")
        self.pacing, self.pacing_a, self.pacing_b = pacing, float(pacing_a), float(pacing_b)
        self.min_cases = int(min_cases)

    def n_active(self, progress: float) -> int:
        """``num_active_cases(g(progress), N, b, min_cases)`` (Wu et al. 2021 pacing ``g``)."""
        frac = pacing_fraction(self.pacing, min(1.0, max(0.0, float(progress))), self.pacing_a, self.pacing_b)
        return num_active_cases(frac, len(self.case_ids), self.pacing_b, self.min_cases)

    def config(self) -> dict:
        return {**super().config(), "pacing": self.pacing, "pacing_a": self.pacing_a, "pacing_b": self.pacing_b,
                "min_cases": self.min_cases}
