"""Dynamic instance hardness (Zhou, Wang & Bilmes 2020, "Curriculum learning by dynamic instance hardness",
NeurIPS; DIHCL).

The instantaneous hardness of case ``i`` is the change of its raw loss between two visits (eq. 2, the loss-change
variant), divided as in the authors' code (github.com/tianyizhou/DIHCL, ``acc_diff_loss += diff_loss / all_pace``)
by the sum of the learning rates applied since the previous visit, so a change made by a large step counts less:
``a_t(i) = |l_t(i) - l_t'(i)| / sum_{e=t'}^{t-1} lr(e)``. Its running average, the dynamic instance hardness, is
updated only for cases trained on (eq. 1): ``r_{t+1}(i) = gamma a_t(i) + (1 - gamma) r_t(i)``. Each epoch trains on
a subset of ``k_t`` cases drawn without replacement with probability ``p_i ∝ exp(beta r_i / mean_j r_j)`` (the
authors' code: ``utility = r / mean(r)``, ``exp(tmpt * utility)``), where ``k_t`` shrinks geometrically from all
cases to a floor: ``k_t = max(ceil(floor N), ceil(N mu^(t - warmup)))`` (their ``k <- max(k (1 - dk), mk)``).
Cases never measured twice get the largest current hardness (optimistic, so they get visited).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from clips_nnunet.errors import CurriculumConfigError


def poly_learning_rate(epoch: int, initial_lr: float, num_epochs: int, exponent: float = 0.9) -> float:
    """nnU-Net's poly schedule ``lr(e) = lr0 (1 - e / E)^0.9`` (``PolyLRScheduler``, stepped once per epoch)."""
    if not initial_lr > 0 or int(num_epochs) != num_epochs or num_epochs < 1:
        raise CurriculumConfigError(f"poly learning rate needs initial_lr > 0 and num_epochs >= 1, got "
                                    f"{initial_lr}, {num_epochs}")
    e = min(max(int(epoch), 0), int(num_epochs))
    return float(initial_lr * (1.0 - e / num_epochs) ** exponent)


def instantaneous_hardness(loss_now, loss_before, lr_sum) -> np.ndarray:
    """``a = |l_now - l_before| / lr_sum`` (Zhou et al. 2020, eq. 2 with the code's learning-rate normalisation);
    0 where ``lr_sum`` is not positive."""
    change = np.abs(np.asarray(loss_now, dtype=float) - np.asarray(loss_before, dtype=float))
    lr_sum = np.asarray(lr_sum, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(lr_sum > 0, change / np.where(lr_sum > 0, lr_sum, 1.0), 0.0)


def update_hardness(hardness: np.ndarray, change: np.ndarray, updated: np.ndarray, gamma: float) -> np.ndarray:
    """``r <- gamma a + (1 - gamma) r`` for the ``updated`` cases; others keep ``r`` (Zhou et al. 2020, eq. 1).
    Returns a new array."""
    if not 0.0 < gamma <= 1.0:
        raise CurriculumConfigError(f"dih_gamma must be in (0, 1], got {gamma}")
    r = np.asarray(hardness, dtype=float).copy()
    mask = np.asarray(updated, dtype=bool)
    r[mask] = gamma * np.asarray(change, dtype=float)[mask] + (1.0 - gamma) * r[mask]
    return r


def dih_weights(hardness: Sequence[float], beta: float) -> np.ndarray:
    """Sampling weights ``exp(beta r_i / mean r) / sum`` (Zhou et al. 2020, section 3, EXP3-style softmax of the
    mean-normalised hardness as in the authors' code); uniform when all hardness is 0."""
    r = np.asarray(hardness, dtype=float)
    if beta < 0:
        raise CurriculumConfigError(f"dih_beta must be >= 0, got {beta}")
    scale = float(np.mean(np.abs(r))) if r.size else 0.0
    z = beta * r / scale if scale > 0 else np.zeros_like(r)
    w = np.exp(z - z.max())
    return w / w.sum()


def subset_size(n_cases: int, epochs_since_warmup: int, shrink: float, floor: float, min_cases: int = 1) -> int:
    """``k_t = min(N, max(ceil(floor N), min_cases, ceil(N shrink^e)))`` with ``e`` = epochs after the warm-up
    (Zhou et al. 2020, algorithm 1: ``k_{t+1} = mu k_t`` down to a floor)."""
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
