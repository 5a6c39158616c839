"""Teacher-student curriculum learning (Matiisen, Oliver, Cohen & Schulman 2017, "Teacher-student curriculum
learning", IEEE TNNLS), "Window" teacher (algorithm 3).

Tasks are difficulty buckets. The teacher keeps, per task, the last ``K`` (epoch, mean loss) observations; the
learning progress of a task is the slope of a least-squares line through them (algorithm 3: the regression
coefficient), and the teacher prefers tasks with the largest absolute slope (fast learning, or forgetting: both
deserve practice). As in the paper, the task is then chosen with ONE exploration rule (section 3.1):

- ``"boltzmann"``: ``p_k = softmax(|s_k| / (tau max_j |s_j|))`` (the paper's ``exp(Q_k / tau)``, with the slopes
  divided by their largest magnitude so that ``tau`` does not depend on the loss scale);
- ``"epsilon_greedy"``: ``p_k = (1 - eps) 1[k = argmax |s|] + eps / K`` (ties in the maximum share it).

Tasks with fewer than two observations get the largest slope (optimistic: they are explored first).
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from clips_nnunet.errors import CurriculumConfigError

EXPLORATION_RULES = ("boltzmann", "epsilon_greedy")


def window_slope(epochs: Sequence[float], losses: Sequence[float]) -> float:
    """Least-squares slope of ``losses`` over ``epochs`` (NaN with fewer than two distinct epochs); Matiisen et al.
    2017, algorithm 3 (Window)."""
    x = np.asarray(epochs, dtype=float)
    y = np.asarray(losses, dtype=float)
    if x.size < 2 or np.ptp(x) == 0:
        return float("nan")
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc ** 2).sum())


def _magnitudes(slopes: Sequence[float]) -> np.ndarray:
    s = np.abs(np.asarray(slopes, dtype=float))
    known = np.isfinite(s)
    top = float(s[known].max()) if known.any() else 0.0
    s[~known] = top if top > 0 else 1.0
    return s


def task_probabilities(slopes: Sequence[float], rule: str = "boltzmann", tau: float = 0.5,
                       epsilon: float = 0.1) -> np.ndarray:
    """Task probabilities of Matiisen et al. 2017 (section 3.1) from the learning-progress slopes; NaN slopes count
    as the largest. ``rule`` is ``"boltzmann"`` (uses ``tau`` > 0) or ``"epsilon_greedy"`` (uses ``epsilon`` in
    [0, 1]); see the module docstring for the formulas."""
    if rule not in EXPLORATION_RULES:
        raise CurriculumConfigError(f"bandit exploration must be one of {EXPLORATION_RULES}, got {rule!r}")
    s = _magnitudes(slopes)
    if rule == "boltzmann":
        if not tau > 0:
            raise CurriculumConfigError(f"bandit temperature must be > 0, got {tau}")
        scale = float(s.max())
        z = s / (tau * scale) if scale > 0 else np.zeros_like(s)
        w = np.exp(z - z.max())
        return w / w.sum()
    if not 0.0 <= epsilon <= 1.0:
        raise CurriculumConfigError(f"bandit epsilon must be in [0, 1], got {epsilon}")
    best = (s == s.max()).astype(float)
    return (1.0 - epsilon) * best / best.sum() + epsilon / s.size


def case_probabilities(task_p: Sequence[float], buckets: List[np.ndarray], n_cases: int) -> np.ndarray:
    """Spread each task's probability uniformly over its cases (Matiisen et al. 2017: a task is trained on its own
    examples, here the cases of a difficulty bucket): ``p_i = p_task(i) / |task(i)|``."""
    p = np.zeros(int(n_cases))
    for prob, members in zip(task_p, buckets):
        p[members] += prob / len(members)
    return p / p.sum()
