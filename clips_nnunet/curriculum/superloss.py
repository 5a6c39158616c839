"""SuperLoss (Castells, Weinzaepfel & Revaud 2020, "SuperLoss: a generic loss for robust curriculum learning",
NeurIPS).

``SL(l, sigma) = (l - tau) sigma + lam (log sigma)^2`` is minimised in closed form by the per-sample confidence

    ``sigma* = exp(-W0(0.5 max(-2/e, (l - tau) / lam)))``

with ``W0`` the principal branch of the Lambert W function (``scipy.special.lambertw``). Easy samples (``l < tau``)
get ``sigma* > 1`` (at most ``e``), hard ones ``sigma* < 1``, a sample at the threshold ``sigma* = 1``. With
``sigma*`` held constant (detached), the gradient of SL is ``sigma* dl/dtheta``: SuperLoss is a per-sample loss
weight, applied here to every deep-supervision output. ``tau`` is the running mean of the training loss.
"""
from __future__ import annotations

import math

import numpy as np

from clips_nnunet.errors import CurriculumConfigError


def superloss_sigma(losses, tau: float, lam: float) -> np.ndarray:
    """Optimal confidence ``sigma* = exp(-W0(0.5 max(-2/e, (l - tau)/lam)))`` for each loss ``l`` (Castells et al.
    2020, section 3: the closed-form minimiser over sigma of ``(l - tau) sigma + lam (log sigma)^2``)."""
    from scipy.special import lambertw

    if not lam > 0:
        raise CurriculumConfigError(f"superloss_lambda must be > 0, got {lam}")
    beta = (np.asarray(losses, dtype=float) - float(tau)) / float(lam)
    y = 0.5 * np.maximum(-2.0 / math.e, beta)
    # at the branch point y = -1/e, W0 = -1 exactly; scipy returns NaN there (rounding), so set it directly
    at_branch = y <= -1.0 / math.e + 1e-15
    w = np.where(at_branch, -1.0, np.real(lambertw(np.where(at_branch, 0.0, y), k=0)))
    return np.exp(-w)

