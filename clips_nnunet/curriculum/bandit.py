"""Teacher-student curriculum learning (Matiisen, Oliver, Cohen & Schulman 2017, "Teacher-student curriculum
learning", IEEE TNNLS), "Window" teacher.

Tasks are difficulty buckets. The teacher keeps, per task, the last ``K`` (epoch, mean loss) observations; the
learning progress of a task is the slope of a least-squares line through them, and the teacher prefers tasks with
the largest absolute slope (fast learning, or forgetting: both deserve practice). Task probabilities are a
Boltzmann distribution over ``|slope| / max |slope|`` with temperature ``tau``, mixed with ``epsilon`` uniform
exploration: ``p_k = (1 - eps) softmax(|s_k| / (tau max|s|)) + eps / K``. Tasks with fewer than two observations get
the largest slope (optimistic: they are explored first).
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from clips_nnunet.errors import CurriculumConfigError


def window_slope(epochs: Sequence[float], losses: Sequence[float]) -> float:
    """Least-squares slope of ``losses`` over ``epochs`` (NaN with fewer than two distinct epochs)."""
    x = np.asarray(epochs, dtype=float)
    y = np.asarray(losses, dtype=float)
    if x.size < 2 or np.ptp(x) == 0:
        return float("nan")
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc ** 2).sum())


def task_probabilities(slopes: Sequence[float], tau: float, epsilon: float) -> np.ndarray:
    """Boltzmann-over-|slope| with epsilon exploration; NaN slopes count as the largest."""
    if not tau > 0:
        raise CurriculumConfigError(f"bandit temperature must be > 0, got {tau}")
    if not 0.0 <= epsilon <= 1.0:
        raise CurriculumConfigError(f"bandit epsilon must be in [0, 1], got {epsilon}")
    s = np.abs(np.asarray(slopes, dtype=float))
    known = np.isfinite(s)
    top = float(s[known].max()) if known.any() else 0.0
    s[~known] = top if top > 0 else 1.0
    scale = float(s.max())
    z = s / (tau * scale) if scale > 0 else np.zeros_like(s)
    w = np.exp(z - z.max())
    return (1.0 - epsilon) * w / w.sum() + epsilon / s.size


def case_probabilities(task_p: Sequence[float], buckets: List[np.ndarray], n_cases: int) -> np.ndarray:
    """Spread each task's probability uniformly over its cases."""
    p = np.zeros(int(n_cases))
    for prob, members in zip(task_p, buckets):
        p[members] += prob / len(members)
    return p / p.sum()
