"""Baby steps (Bengio et al. 2009, "Curriculum learning", ICML; Spitkovsky, Alshawi & Jurafsky 2010, "From baby
steps to leapfrog", NAACL).

Cases are sorted by difficulty and split into ``K`` buckets of (nearly) equal size, easiest first. Training starts on
bucket 1 and adds the next bucket at equal intervals, cumulatively (earlier buckets stay in): at progress ``t`` the
first ``k(t) = min(K, 1 + floor(K t / a))`` buckets are active, all of them from ``t >= a (K-1)/K``, and cases are
drawn uniformly from the active buckets.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import numpy as np

from clips_nnunet.errors import CurriculumConfigError


def difficulty_buckets(difficulty: Sequence[float], n_buckets: int) -> List[np.ndarray]:
    """Indices of the cases in each of ``K`` equal-size buckets of the sorted difficulty, easiest bucket first
    (Spitkovsky et al. 2010, baby steps; stable sort, so ties keep case order)."""
    d = np.asarray(difficulty, dtype=float)
    if d.ndim != 1 or d.size == 0:
        raise CurriculumConfigError("difficulty must be a non-empty 1-D array")
    if int(n_buckets) != n_buckets or not 1 <= n_buckets <= d.size:
        raise CurriculumConfigError(f"n_buckets must be an integer in [1, number of cases = {d.size}], "
                                    f"got {n_buckets!r}")
    order = np.argsort(d, kind="stable")
    return [np.sort(b) for b in np.array_split(order, int(n_buckets))]


def active_bucket_count(t: float, n_buckets: int, a: float = 0.8) -> int:
    """``k(t) = min(K, 1 + floor(K t / a))``: number of buckets in use at progress ``t`` in [0, 1] (baby steps of
    Bengio et al. 2009 / Spitkovsky et al. 2010, one bucket added at equal intervals until ``t = a (K-1)/K``)."""
    if not 0.0 <= t <= 1.0:
        raise CurriculumConfigError(f"t (training progress) must be in [0, 1], got {t}")
    if not 0.0 < a <= 1.0:
        raise CurriculumConfigError(f"a (fraction of training after which all buckets are in) must be in (0, 1], "
                                    f"got {a}")
    return int(min(n_buckets, 1 + math.floor(n_buckets * t / a + 1e-9)))

