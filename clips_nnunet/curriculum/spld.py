"""Self-paced learning with diversity (Jiang et al. 2014, "Self-paced learning with diversity", NIPS), rank rule.

Cases are partitioned into groups (e.g. scanner vendor, lesion-count band). Within each group, cases are sorted by
loss ascending, rank ``r = 1, 2, ...``; a case is selected when

    ``l < lam + gamma / (sqrt(r) + sqrt(r - 1))``

(the closed-form solution of the SPLD objective with the negative l2,1 diversity term, algorithm 1). The first case
of every group gets the largest bonus ``gamma``, so every group contributes its easiest cases before one group
contributes many: diversity. In algorithm 1 ``lam`` and ``gamma`` are multiplied by the same factor ``mu`` each
iteration; :class:`clips_nnunet.curriculum.schedulers.SPLDScheduler` grows both with the admitted count.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from clips_nnunet.errors import CurriculumConfigError


def spld_select(losses: Sequence[float], groups: Sequence[str], lam: float, gamma: float) -> np.ndarray:
    """Boolean selection of the SPLD rank rule ``l < lam + gamma / (sqrt(r) + sqrt(r - 1))`` within each group
    (Jiang et al. 2014, algorithm 1, the closed-form selection step); ties in loss broken by case order."""
    losses = np.asarray(losses, dtype=float)
    groups = np.asarray([str(g) for g in groups])
    if losses.shape != groups.shape:
        raise CurriculumConfigError(f"{losses.size} losses but {groups.size} group labels")
    if gamma < 0:
        raise CurriculumConfigError(f"spld gamma must be >= 0, got {gamma}")
    selected = np.zeros(losses.size, dtype=bool)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        order = members[np.argsort(losses[members], kind="stable")]
        ranks = np.arange(1, order.size + 1, dtype=float)
        bonus = gamma / (np.sqrt(ranks) + np.sqrt(ranks - 1.0))
        selected[order] = losses[order] < lam + bonus
    return selected
