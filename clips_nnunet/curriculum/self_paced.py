"""Self-paced learning (SPL) weights and the loss threshold that admits a given number of cases.

Self-paced learning (Kumar, Packer & Koller 2010, "Self-paced learning for latent variable models", NeurIPS)
minimises ``sum_i v_i l_i + f(v; lam)`` over weights ``v`` in [0, 1]; the closed-form minimiser ``v*(l; lam)``
depends on the self-paced regulariser ``f``. The soft regularisers are those of Jiang et al. 2014 ("Easy samples
first: self-paced reranking for zero-example multimedia search", ACM MM) as tabulated by Wang, Chen & Zhu 2022
("A survey on curriculum learning", TPAMI, table 5):

=============  ==========================================================================================
hard           ``v = 1[l < lam]``                                                   (Kumar et al. 2010)
linear         ``v = max(0, 1 - l / lam)``                                          (Jiang et al. 2014)
logarithmic    ``v = log(l + zeta) / log(zeta)`` if ``l < lam`` else 0, ``zeta = 1 - lam``, ``0 < lam < 1``
mixture        ``v = 1`` if ``l <= lam'``; ``0`` if ``l >= lam``; else ``zeta / l - zeta / lam`` with
               ``zeta = lam lam' / (lam - lam')`` and ``lam > lam' > 0``
=============  ==========================================================================================

In an nnU-Net curriculum the age parameter ``lam`` of each epoch is not a hand-tuned constant: it is the loss
quantile that admits ``pace(t) * N`` cases (:func:`threshold_admitting`), so the scale of nnU-Net's Dice + CE loss
(which is negative for good cases) does not matter.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from clips_nnunet.errors import CurriculumConfigError

SPL_SCHEMES = ("hard", "linear", "logarithmic", "mixture")


def _as_losses(losses) -> np.ndarray:
    arr = np.asarray(losses, dtype=np.float64)
    if arr.ndim != 1:
        raise CurriculumConfigError(f"losses must be a 1-D array (one loss per case), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise CurriculumConfigError("losses must be finite; drop or impute non-finite per-case losses first")
    return arr


def spl_weights(losses, lam: float, scheme: str = "hard", lam_prime: Optional[float] = None,
                loss_range: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """Closed-form self-paced weights ``v*(l; lam)`` in [0, 1], one per loss (see the module table).

    - ``hard`` (Kumar 2010): 1 for losses strictly below ``lam``, else 0. Any loss scale.
    - ``linear`` (Jiang 2014): ``max(0, 1 - l/lam)``; needs losses >= 0 and ``lam > 0``.
    - ``logarithmic`` (Jiang 2014): losses are first rescaled to [0, 1] with ``(l - min) / (max - min)`` and
      ``lam`` with the same map (clipped into (0, 1)); then ``zeta = 1 - lam`` and
      ``v = log(l + zeta) / log(zeta)`` below ``lam``, 0 above. Any loss scale. ``loss_range=(min, max)``
      fixes the rescaling range (e.g. that of the per-case estimates when weighting a batch's losses); values
      outside it are clipped into [0, 1].
    - ``mixture`` (Jiang 2014): needs ``lam > lam_prime > 0`` and losses >= 0; ``zeta = lam lam'/(lam - lam')``.
    """
    arr = _as_losses(losses)
    if scheme not in SPL_SCHEMES:
        raise CurriculumConfigError(f"scheme must be one of {', '.join(SPL_SCHEMES)}, got {scheme!r}")
    lam = float(lam)
    if not np.isfinite(lam):
        raise CurriculumConfigError(f"lam (self-paced threshold) must be finite, got {lam}")
    if scheme == "hard":
        return (arr < lam).astype(np.float64)
    if scheme == "linear":
        if lam <= 0:
            raise CurriculumConfigError(f"lam must be > 0 for the linear scheme, got {lam}; shift losses to >= 0")
        if np.any(arr < 0):
            raise CurriculumConfigError("the linear scheme needs losses >= 0; shift them (l - min(l)) first")
        return np.maximum(0.0, 1.0 - arr / lam)
    if scheme == "logarithmic":
        if loss_range is not None:
            lo, hi = float(loss_range[0]), float(loss_range[1])
        else:
            lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 1.0)
        span = hi - lo if hi > lo else 1.0
        scaled = np.clip((arr - lo) / span, 0.0, 1.0)
        lam_s = float(np.clip((lam - lo) / span, 1e-6, 1 - 1e-6))
        zeta = 1.0 - lam_s
        v = np.where(scaled < lam_s, np.log(np.clip(scaled + zeta, 1e-300, None)) / np.log(zeta), 0.0)
        return np.clip(v, 0.0, 1.0)
    # mixture
    if lam_prime is None:
        raise CurriculumConfigError("the mixture scheme needs lam_prime (lower threshold, 0 < lam_prime < lam)")
    lam_prime = float(lam_prime)
    if not 0 < lam_prime < lam:
        raise CurriculumConfigError(f"the mixture scheme needs 0 < lam_prime < lam, got lam_prime={lam_prime}, "
                                    f"lam={lam}")
    if np.any(arr < 0):
        raise CurriculumConfigError("the mixture scheme needs losses >= 0; shift them (l - min(l)) first")
    zeta = lam * lam_prime / (lam - lam_prime)
    with np.errstate(divide="ignore"):
        middle = zeta / np.where(arr > 0, arr, 1.0) - zeta / lam
    v = np.where(arr <= lam_prime, 1.0, np.where(arr >= lam, 0.0, middle))
    return np.clip(v, 0.0, 1.0)


def threshold_admitting(losses, n_admitted: int) -> float:
    """The loss threshold ``lam`` for which ``1[l < lam]`` admits the ``n_admitted`` lowest losses (the age
    parameter of Kumar et al. 2010, chosen so that the pacing ``n(t)`` of Wu et al. 2021 is met).

    With sorted losses ``s``: ``n = 0`` gives ``s[0]`` (admits none); ``0 < n < N`` gives the midpoint
    ``(s[n-1] + s[n]) / 2`` (cases tied with ``s[n-1]`` are admitted together, so ties may admit more);
    ``n = N`` gives ``s[N-1] + max(gap, 1e-6 max(1, |s[N-1]|))`` where gap is the mean spacing of the sorted losses, so even the
    hardest case gets a positive soft weight. Being a quantile of the losses, the threshold is independent of the
    loss scale (Dice + CE can be negative).
    """
    arr = _as_losses(losses)
    n_total = arr.size
    if n_total == 0:
        raise CurriculumConfigError("losses is empty: the training split has no cases")
    if int(n_admitted) != n_admitted or not 0 <= n_admitted <= n_total:
        raise CurriculumConfigError(f"n_admitted must be an integer in [0, {n_total}], got {n_admitted!r}")
    n = int(n_admitted)
    s = np.sort(arr)
    if n == 0:
        return float(s[0])
    if n < n_total:
        if s[n] > s[n - 1]:
            return float((s[n - 1] + s[n]) / 2.0)
        return float(np.nextafter(s[n - 1], np.inf))
    gap = (s[-1] - s[0]) / (n_total - 1) if n_total > 1 else 0.0
    # tied losses (gap 0) far from 0: 1e-6 alone can vanish in the rounding of s[-1] + 1e-6
    return float(max(s[-1] + max(gap, 1e-6 * max(1.0, abs(float(s[-1])))), np.nextafter(s[-1], np.inf)))
