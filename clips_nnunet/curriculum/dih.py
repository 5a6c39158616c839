"""Dynamic instance hardness (Zhou, Wang & Bilmes 2020, "Curriculum learning by dynamic instance hardness",
NeurIPS; DIHCL).

The instantaneous hardness of case ``i`` is the change of its loss between two visits, ``a_t(i) = |l_t(i) -
l_{t-1}(i)|`` (eq. 2, the "loss change" variant). Its running average, the dynamic instance hardness, is updated only
for cases trained on in the epoch: ``r_{t+1}(i) = gamma a_t(i) + (1 - gamma) r_t(i)`` (eq. 1). Each epoch trains on a
subset of ``k_t`` cases drawn without replacement with probability proportional to a softmax of the hardness
(harder = more often; Zhou et al. also use EXP3-style ``exp`` weights), where ``k_t`` shrinks geometrically from all
cases to a floor: ``k_t = max(ceil(floor N), ceil(N mu^(t - warmup)))`` (their ``k_{t+1} = mu k_t``).

The softmax is scale-free: ``w_i = exp(beta r_i / max_j r_j)``, so the loss scale of Dice+CE does not matter.
Cases never measured twice get the largest current hardness (optimistic, so they get visited).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from clips_nnunet.errors import CurriculumConfigError


def update_hardness(hardness: np.ndarray, change: np.ndarray, updated: np.ndarray, gamma: float) -> np.ndarray:
    """``r <- gamma a + (1 - gamma) r`` for the ``updated`` cases; others keep ``r``. Returns a new array."""
    if not 0.0 < gamma <= 1.0:
        raise CurriculumConfigError(f"dih_gamma must be in (0, 1], got {gamma}")
    r = np.asarray(hardness, dtype=float).copy()
    mask = np.asarray(updated, dtype=bool)
    r[mask] = gamma * np.asarray(change, dtype=float)[mask] + (1.0 - gamma) * r[mask]
    return r


def dih_weights(hardness: Sequence[float], beta: float) -> np.ndarray:
    """Normalised softmax weights ``exp(beta r_i / max r) / sum``; uniform when all hardness is 0."""
    r = np.asarray(hardness, dtype=float)
    if beta < 0:
        raise CurriculumConfigError(f"dih_beta must be >= 0, got {beta}")
    scale = float(np.max(np.abs(r))) if r.size else 0.0
    z = beta * r / scale if scale > 0 else np.zeros_like(r)
    w = np.exp(z - z.max())
    return w / w.sum()


def subset_size(n_cases: int, epochs_since_warmup: int, shrink: float, floor: float, min_cases: int = 1) -> int:
    """``k_t = min(N, max(ceil(floor N), min_cases, ceil(N shrink^e)))`` with ``e`` = epochs after the warm-up."""
    if not 0.0 < shrink <= 1.0:
        raise CurriculumConfigError(f"dih_shrink must be in (0, 1], got {shrink}")
    if not 0.0 < floor <= 1.0:
        raise CurriculumConfigError(f"dih_floor must be in (0, 1], got {floor}")
    e = max(0, int(epochs_since_warmup))
    k = math.ceil(n_cases * shrink ** e - 1e-9)
    return int(min(n_cases, max(math.ceil(floor * n_cases - 1e-9), int(min_cases), k)))


def sample_subset(weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``k`` cases drawn without replacement with probability proportional to ``weights``."""
    w = np.asarray(weights, dtype=float)
    return np.sort(rng.choice(w.size, size=int(k), replace=False, p=w / w.sum()))
