"""Curricula over a fixed per-case difficulty (higher = harder; from case metadata, a CSV or a teacher).

Each admits or weights cases by the difficulty's order; its plan's ranking is the stable ascending order of the
difficulty (ties by case order), so the Random and Anti controls
(:func:`clips_nnunet.curriculum.schedulers.controls.with_control`) admit exactly as many cases every epoch.

- :class:`FixedOrderPacingScheduler`: the ``n(t)`` easiest, with a Wu et al. (2021) pacing or Hacohen & Weinshall's
  (2019) fixed exponential pacing (Predefined, TransferTeacher);
- :class:`CompetenceScheduler`: Platanios et al. (2019) competence;
- :class:`BabyStepsScheduler`: Bengio et al. (2009) / Spitkovsky et al. (2010) cumulative buckets;
- :class:`TeacherStudentScheduler`: Matiisen et al. (2017) Window teacher over difficulty buckets.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from clips_nnunet.curriculum.baby_steps import active_bucket_count, difficulty_buckets
from clips_nnunet.curriculum.bandit import case_probabilities, task_probabilities, window_slope
from clips_nnunet.curriculum.competence import competence_count
from clips_nnunet.curriculum.pacing import competence_root_p, hacohen_exponential_pacing, num_active_cases
from clips_nnunet.curriculum.schedulers.base import (CurriculumScheduler, PacedScheduler, SamplingPlan, admit_first,
                                                     check_difficulty, normalise, rank_cases)
from clips_nnunet.curriculum.self_paced import threshold_admitting
from clips_nnunet.curriculum.state import DifficultyState
from clips_nnunet.errors import CurriculumConfigError


def _admission_plan(difficulty: np.ndarray, n: int, threshold, extra: dict) -> SamplingPlan:
    ranking = rank_cases(difficulty)
    active = admit_first(ranking, n, difficulty.size)
    return SamplingPlan(normalise(active), n / difficulty.size, threshold, {"n_active": int(n), **extra}, ranking)


class FixedOrderPacingScheduler(PacedScheduler):
    """Admit the ``n(t)`` easiest cases by a fixed difficulty, uniformly (Predefined and TransferTeacher).

    ``n(t) = num_active_cases(g(t), N, b, min_cases)`` with a Wu, Dyer & Neyshabur (2021, section 2) pacing ``g``;
    or, with ``pacing="hacohen"``, Hacohen & Weinshall (2019, ICML, section 2, "fixed exponential pacing") per epoch
    ``i``: ``g(i) = min(s * inc^floor(i / step), 1)`` (``hacohen_start``, ``hacohen_increase``, ``hacohen_step``
    epochs), and all cases at progress 1. Ties in difficulty are admitted by case order.
    """

    def __init__(self, case_ids: Sequence[str], difficulty, pacing: str = "root", pacing_a: float = 0.8,
                 pacing_b: float = 0.3, min_cases: int = 2, hacohen_start: float = 0.3,
                 hacohen_increase: float = 1.5, hacohen_step: int = 10):
        self.hacohen = pacing == "hacohen"
        super().__init__(case_ids, "linear" if self.hacohen else pacing, pacing_a,
                         hacohen_start if self.hacohen else pacing_b, min_cases)
        if self.hacohen:
            hacohen_exponential_pacing(0, hacohen_start, hacohen_increase, hacohen_step)  # validates
            self.pacing = "hacohen"
        self.hacohen_start, self.hacohen_increase = float(hacohen_start), float(hacohen_increase)
        self.hacohen_step = int(hacohen_step)
        self.difficulty = check_difficulty(difficulty, self.case_ids)

    def config(self) -> dict:
        c = super().config()
        if self.hacohen:
            c.update(hacohen_start=self.hacohen_start, hacohen_increase=self.hacohen_increase,
                     hacohen_step=self.hacohen_step)
        return c

    def n_admitted(self, progress: float, epoch: int) -> int:
        """Admitted count of this epoch (all cases from progress 1 on)."""
        if self.hacohen:
            if float(progress) >= 1.0:
                return len(self.case_ids)
            g = hacohen_exponential_pacing(int(epoch), self.hacohen_start, self.hacohen_increase, self.hacohen_step)
            return num_active_cases(g, len(self.case_ids), 0.0, self.min_cases)
        return self.n_active(progress)

    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        self._check_state(state)
        n = self.n_admitted(progress, epoch)
        return _admission_plan(self.difficulty, n, threshold_admitting(self.difficulty, n), {})


class CompetenceScheduler(CurriculumScheduler):
    """Platanios et al. (2019, NAACL, algorithm 1): uniform sampling among the cases whose (rank) difficulty CDF is
    ``<= c(t)``, i.e. the ``floor(c(t) N)`` easiest (at least ``min_cases``), with the competence root-p of eq. 7
    generalised, ``c(t) = min(1, (t (1 - c0^p) / T + c0^p)^(1/p))``; ``t`` = training progress and
    ``T = competence_T`` in (0, 1] the fraction of training after which competence is 1."""

    def __init__(self, case_ids: Sequence[str], difficulty, c0: float = 0.1, p: float = 2.0,
                 competence_T: float = 0.8, min_cases: int = 2):
        super().__init__(case_ids)
        competence_root_p(0.0, c0, p, competence_T)  # validates
        if not 0.0 < float(competence_T) <= 1.0:
            raise CurriculumConfigError(f"competence_T must be in (0, 1] (fraction of training after which all "
                                        f"cases are in), got {competence_T}")
        if int(min_cases) != min_cases or min_cases < 1:
            raise CurriculumConfigError(f"min_cases must be an integer >= 1, got {min_cases!r}")
        self.c0, self.p, self.competence_T, self.min_cases = float(c0), float(p), float(competence_T), int(min_cases)
        self.difficulty = check_difficulty(difficulty, self.case_ids)

    def config(self) -> dict:
        return {**super().config(), "c0": self.c0, "p": self.p, "competence_T": self.competence_T,
                "min_cases": self.min_cases}

    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        self._check_state(state)
        c = competence_root_p(min(1.0, max(0.0, float(progress))), self.c0, self.p, self.competence_T)
        n = competence_count(c, len(self.case_ids), self.min_cases)
        return _admission_plan(self.difficulty, n, c, {"competence": c})


class BabyStepsScheduler(CurriculumScheduler):
    """Bengio et al. (2009, ICML, section 2) / Spitkovsky et al. (2010, NAACL, "baby steps") cumulative buckets:
    ``n_buckets`` equal-size buckets of the sorted difficulty, ``k(t) = min(K, 1 + floor(K t / a))`` of them active
    (all from ``t >= a (K-1)/K``), uniform within them."""

    def __init__(self, case_ids: Sequence[str], difficulty, n_buckets: int = 4, pacing_a: float = 0.8):
        super().__init__(case_ids)
        self.difficulty = check_difficulty(difficulty, self.case_ids)
        difficulty_buckets(self.difficulty, n_buckets)  # validates
        active_bucket_count(0.0, n_buckets, pacing_a)
        self.n_buckets, self.pacing_a = int(n_buckets), float(pacing_a)

    def config(self) -> dict:
        return {**super().config(), "n_buckets": self.n_buckets, "pacing_a": self.pacing_a}

    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        self._check_state(state)
        buckets = difficulty_buckets(self.difficulty, self.n_buckets)
        k = active_bucket_count(min(1.0, max(0.0, float(progress))), self.n_buckets, self.pacing_a)
        n = int(sum(len(b) for b in buckets[:k]))
        return _admission_plan(self.difficulty, n, None, {"active_buckets": int(k)})


class TeacherStudentScheduler(CurriculumScheduler):
    """Matiisen et al. (2017, IEEE TNNLS) teacher-student curriculum, Window algorithm (algorithm 3):
    ``n_buckets`` difficulty buckets are the tasks; after each epoch the mean EMA loss of each bucket's cases
    trained on in that epoch is recorded; the last ``window`` records give a least-squares slope per task, and the
    task probabilities follow ONE exploration rule, ``"boltzmann"`` (temperature) or ``"epsilon_greedy"``
    (:func:`clips_nnunet.curriculum.bandit.task_probabilities`); within a task, uniform."""

    def __init__(self, case_ids: Sequence[str], difficulty, n_buckets: int = 3, window: int = 5,
                 exploration: str = "boltzmann", temperature: float = 0.5, epsilon: float = 0.1):
        super().__init__(case_ids)
        self.difficulty = check_difficulty(difficulty, self.case_ids)
        difficulty_buckets(self.difficulty, n_buckets)
        task_probabilities([0.0], exploration, temperature, epsilon)  # validates
        if int(window) != window or window < 2:
            raise CurriculumConfigError(f"bandit window must be an integer >= 2, got {window!r}")
        self.n_buckets, self.window, self.exploration = int(n_buckets), int(window), exploration
        self.temperature, self.epsilon = float(temperature), float(epsilon)
        self.history: List[List[List[float]]] = [[] for _ in range(self.n_buckets)]  # per task [epoch, loss]
        self.prev_visits: Optional[np.ndarray] = None

    def config(self) -> dict:
        return {**super().config(), "n_buckets": self.n_buckets, "window": self.window,
                "exploration": self.exploration, "temperature": self.temperature, "epsilon": self.epsilon}

    def slopes(self) -> np.ndarray:
        out = []
        for records in self.history:
            recent = records[-self.window:]
            out.append(window_slope([r[0] for r in recent], [r[1] for r in recent]))
        return np.asarray(out)

    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        self._check_state(state)
        buckets = difficulty_buckets(self.difficulty, self.n_buckets)
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
        task_p = task_probabilities(s, self.exploration, self.temperature, self.epsilon)
        p = case_probabilities(task_p, buckets, len(self.case_ids))
        return SamplingPlan(p, float((p > 0).mean()), None,
                            {"task_probabilities": task_p.tolist(),
                             "slopes": [None if not np.isfinite(x) else float(x) for x in s]},
                            rank_cases(self.difficulty))

    def state_dict(self) -> dict:
        return {"history": self.history,
                "prev_visits": None if self.prev_visits is None else self.prev_visits.tolist()}

    def load_state_dict(self, d: dict) -> None:
        self.history = [[list(map(float, r)) for r in task] for task in d["history"]]
        if len(self.history) != self.n_buckets:
            raise CurriculumConfigError("saved teacher-student history does not match n_buckets")
        self.prev_visits = None if d.get("prev_visits") is None else np.asarray(d["prev_visits"], np.int64)
