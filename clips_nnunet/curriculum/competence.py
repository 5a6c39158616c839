"""Competence-based sampling (Platanios et al. 2019, "Competence-based curriculum learning for neural machine
translation", NAACL, algorithm 1).

Each case has a difficulty ``d_i``; its difficulty CDF value is ``cdf_i = #{j : d_j <= d_i} / N``. At time ``t`` the
model's competence is ``c(t)`` (:func:`clips_nnunet.curriculum.pacing.competence_root_p`,
``c(t) = min(1, (t (1 - c0^p) / T + c0^p)^(1/p))``), and training samples uniformly among the cases with
``cdf_i <= c(t)``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from clips_nnunet.errors import CurriculumConfigError


def difficulty_cdf(difficulty: Sequence[float]) -> np.ndarray:
    """Empirical CDF of each case's difficulty: ``#{j : d_j <= d_i} / N`` (ties share the larger value)."""
    d = np.asarray(difficulty, dtype=float)
    if d.ndim != 1 or d.size == 0 or not np.all(np.isfinite(d)):
        raise CurriculumConfigError("difficulty must be a non-empty 1-D array of finite numbers")
    return np.searchsorted(np.sort(d), d, side="right") / d.size


def competence_probabilities(difficulty: Sequence[float], competence: float, min_cases: int = 1) -> np.ndarray:
    """Uniform probabilities over the cases whose difficulty CDF is ``<= competence``, zero elsewhere.

    At least the ``min_cases`` easiest cases stay in (ties at the boundary included), so the probabilities never sum
    to zero even at ``c0`` below ``1/N``.
    """
    if not 0.0 <= float(competence) <= 1.0:
        raise CurriculumConfigError(f"competence must be in [0, 1], got {competence}")
    cdf = difficulty_cdf(difficulty)
    active = cdf <= float(competence) + 1e-12
    if active.sum() < min_cases:
        k = min(int(min_cases), cdf.size)
        threshold = np.sort(cdf)[k - 1]
        active = cdf <= threshold
    return active / active.sum()
