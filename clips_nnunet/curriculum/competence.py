"""Competence-based sampling (Platanios et al. 2019, "Competence-based curriculum learning for neural machine
translation", NAACL, algorithm 1).

Each case has a difficulty ``d_i`` and a difficulty CDF value; at time ``t`` the model's competence is ``c(t)``
(:func:`clips_nnunet.curriculum.pacing.competence_root_p`, eq. 7 generalised:
``c(t) = min(1, (t (1 - c0^p) / T + c0^p)^(1/p))``), and training samples uniformly among the cases with
``CDF(d_i) <= c(t)`` (algorithm 1, line 4).

The CDF here is the rank CDF ``CDF_i = rank_i / N`` with ranks 1..N and ties broken by case order, so exactly
``floor(c N)`` cases are admitted. The empirical CDF ``#{j : d_j <= d_i} / N`` of the paper gives tied cases the
larger value: with many tied difficulties (e.g. lesion-free cases) the admitted count then jumps by the size of the
tie and no control can admit the same number (a documented deviation, docs/curricula.md).
"""
from __future__ import annotations

import math

from clips_nnunet.errors import CurriculumConfigError


def competence_count(competence: float, n_cases: int, min_cases: int = 1) -> int:
    """Number of cases with rank CDF ``rank / N <= c``: ``min(N, max(floor(c N), min_cases))``."""
    c = float(competence)
    if not 0.0 <= c <= 1.0:
        raise CurriculumConfigError(f"competence must be in [0, 1], got {competence}")
    if int(n_cases) != n_cases or n_cases < 1:
        raise CurriculumConfigError(f"n_cases must be an integer >= 1, got {n_cases!r}")
    if int(min_cases) != min_cases or min_cases < 0:
        raise CurriculumConfigError(f"min_cases must be an integer >= 0, got {min_cases!r}")
    return int(min(int(n_cases), max(math.floor(c * n_cases + 1e-9), int(min_cases))))

