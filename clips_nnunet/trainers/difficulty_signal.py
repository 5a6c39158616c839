"""The per-case difficulty signal: what one training patch says about its patient (plain numpy).

nnU-Net trains on patches, not patients. With nnU-Net's per-sample Dice + CE (:func:`per_sample_dice_ce`) a
near-perfect background-only patch scores about +0.0025 (CE ~ 0, and the soft Dice of an empty target is ~0, not 1)
while a mediocre lesion patch scores about -0.485; with batch size 2 the last slot is always foreground-forced by
nnU-Net's oversampling and the first is random. Averaging raw patch losses per case therefore ranks a case by the
patch types it happened to draw, not by how well its lesions are segmented.

Estimator (:class:`PatchDifficulty`), for a patch ``b`` of case ``i`` with loss ``l_b`` in epoch ``e``:

1. **patch type**: foreground (its target has a voxel of a foreground label) or background-only;
2. **selection**: if case ``i`` has any foreground (nnU-Net's preprocessed ``class_locations``), only its
   foreground patches are recorded; its background-only patches are skipped (counted). A lesion-free case is
   recorded from its (background-only) patches;
3. **centring per patch type**: the recorded value is ``l_b - m_type``, with ``m_type`` the mean finite loss of the
   patches of that type in epoch ``e`` over every DDP rank (identical on all ranks), **each patch weighted by
   ``1 / p_i``**, the inverse of the probability its case was sampled with in that epoch (a self-normalised
   inverse-probability, Horvitz-Thompson, mean). ``m_type`` then estimates the mean a *uniform* sampler would see,
   whichever cases the curriculum favours: an arm that samples easy cases no longer lowers the centre and so
   raises everybody's estimate (without the weights the centre moved by about a quarter of the difficulty range
   between hard SPL, its Anti control and uniform sampling with no learning at all; tests/test_fair_arms.py).
   The foreground centre is a difference estimator, which has a smaller variance when the weights are uneven:
   ``m_fg = sum_b w_b (l_b - d_b) / sum_b w_b + mean_i d_i`` over the foreground patches of lesion cases, with
   ``d`` the estimates the epoch was planned from and the mean over all lesion cases (a patch's loss minus its
   case's known level is nearly the same for every case, so the weights no longer amplify the spread between
   cases; if ``l = mu_i + M + noise`` and ``d_i = mu_i + c``, both terms together give ``mean_i mu_i + M``
   whatever ``c``, i.e. the mean a uniform sampler would see). Lesion cases are then compared
   with lesion cases on lesion patches, and lesion-free cases sit around 0, the middle of the scale (the
   "lesion-free at the median" convention of the metadata difficulties). Centring also removes the common drift of
   the loss over epochs from the per-case EMA, so a case seen long ago is not penalised for having been measured by
   an earlier, worse model. Centring needs both types in the epoch; otherwise (e.g. every recorded patch has
   foreground) values are raw losses, which are then comparable already.

The per-sample losses given to loss-weighting curricula during epoch ``e`` (SuperLoss, soft self-paced learning)
are centred with the means of epoch ``e - 1`` (raw in the first epoch), so they live on the scale of the estimates.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from clips_nnunet.errors import CurriculumConfigError

TYPES = ("foreground", "background")


class PatchDifficulty:
    """Patch losses -> per-case difficulty observations (see the module docstring).

    ``case_ids`` and ``case_has_foreground`` (bool per case) describe the training split.
    """

    def __init__(self, case_ids: Sequence[str], case_has_foreground: Sequence[bool]):
        case_ids = [str(c) for c in case_ids]
        has_fg = np.asarray(case_has_foreground, dtype=bool).reshape(-1)
        if has_fg.size != len(case_ids):
            raise CurriculumConfigError(f"case_has_foreground has {has_fg.size} entries for {len(case_ids)} cases")
        self.case_has_foreground: Dict[str, bool] = dict(zip(case_ids, has_fg.tolist()))
        self._index: Dict[str, int] = {c: i for i, c in enumerate(case_ids)}
        #: per-type mean loss of the last completed epoch (None before the first epoch with both types)
        self.means: Optional[Dict[str, float]] = None

    def centre(self, losses: np.ndarray, patch_foreground: np.ndarray,
               means: Optional[Dict[str, float]] = None) -> np.ndarray:
        """``l_b - m_type(b)`` with ``means`` (default: the last epoch's); raw losses when no means are known."""
        means = self.means if means is None else means
        losses = np.asarray(losses, dtype=np.float64).reshape(-1)
        if means is None:
            return losses.copy()
        fg = np.asarray(patch_foreground, dtype=bool).reshape(-1)
        return losses - np.where(fg, means["foreground"], means["background"])

    @staticmethod
    def epoch_means(losses: np.ndarray, patch_foreground: np.ndarray,
                    patch_weights: Optional[np.ndarray] = None) -> Optional[Dict[str, float]]:
        """Mean finite loss per patch type (weighted by ``patch_weights``, default equal), or None unless both types
        have at least one finite loss."""
        losses = np.asarray(losses, dtype=np.float64).reshape(-1)
        fg = np.asarray(patch_foreground, dtype=bool).reshape(-1)
        w = np.ones(losses.size) if patch_weights is None else np.asarray(patch_weights, np.float64).reshape(-1)
        finite = np.isfinite(losses)
        if not (finite & fg).any() or not (finite & ~fg).any():
            return None
        return {name: float(np.average(losses[finite & sel], weights=w[finite & sel]))
                for name, sel in (("foreground", fg), ("background", ~fg))}

    def _difference_centre(self, keys, losses, fg, patch_weights, estimates) -> float:
        """``sum_b w_b (l_b - d_b) / sum_b w_b + mean_{lesion cases} d`` over the finite foreground patches of lesion
        cases (``d`` the planned estimates, ``w`` the inverse-probability weights)."""
        d = np.asarray(estimates, dtype=np.float64).reshape(-1)
        rows = np.asarray([self._index[k] for k in keys], dtype=np.int64)
        lesion = np.asarray([self.case_has_foreground[c] for c in self._index], dtype=bool)
        sel = np.isfinite(losses) & fg & lesion[rows]
        if not sel.any() or d.size != lesion.size or not np.all(np.isfinite(d)):
            w = np.ones(losses.size) if patch_weights is None else patch_weights
            sel = np.isfinite(losses) & fg
            return float(np.average(losses[sel], weights=w[sel]))
        w = np.ones(losses.size) if patch_weights is None else patch_weights
        return float(np.average(losses[sel] - d[rows[sel]], weights=w[sel]) + d[lesion].mean())

    def recorded(self, keys: Sequence[str], patch_foreground) -> np.ndarray:
        """Bool per patch: is it of the type its case is measured on (a foreground patch of a lesion case, any
        patch of a lesion-free case)?"""
        fg = np.asarray(patch_foreground, dtype=bool).reshape(-1)
        return np.asarray([bool(f) or not self.case_has_foreground[str(k)] for k, f in zip(keys, fg)], dtype=bool)

    def observations(self, keys: Sequence[str], losses, patch_foreground, probabilities: Optional[np.ndarray] = None,
                     estimates: Optional[np.ndarray] = None) -> Tuple[List[str], np.ndarray, int]:
        """One epoch's gathered patches -> ``(keys, values, n_skipped)`` to fold into the difficulty state.

        ``probabilities``: the epoch's sampling probability of each case (order of ``case_ids``); the per-type means
        weight each patch by ``1 / p`` of its case (module docstring); None: equal weights. ``estimates``: the
        per-case estimates the epoch was planned from (order of ``case_ids``); given, the foreground centre is the
        difference estimator (module docstring). Updates :attr:`means`
        with this epoch's per-type means (kept when the epoch lacks a type). Non-finite losses are passed through
        (the state skips them with a warning naming the case) and do not enter the means.
        """
        keys = [str(k) for k in keys]
        losses = np.asarray(losses, dtype=np.float64).reshape(-1)
        fg = np.asarray(patch_foreground, dtype=bool).reshape(-1)
        if not (len(keys) == losses.size == fg.size):
            raise CurriculumConfigError(f"got {len(keys)} keys, {losses.size} losses and {fg.size} patch types")
        unknown = [k for k in keys if k not in self.case_has_foreground]
        if unknown:
            raise CurriculumConfigError(f"unknown case ids {sorted(set(unknown))[:5]}: not in this fold's training "
                                        f"split")
        patch_weights = None
        if probabilities is not None:
            p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
            if p.size != len(self._index) or not np.all(np.isfinite(p)) or not (p > 0).any():
                raise CurriculumConfigError(f"inverse-probability centring needs one sampling probability per case "
                                            f"({len(self._index)}), got {p.size}")
            # a case with probability 0 can still appear in a batch drawn before the plan changed (the lag)
            p = np.maximum(p, p[p > 0].min())
            patch_weights = 1.0 / p[[self._index[k] for k in keys]]
        means = self.epoch_means(losses, fg, patch_weights)
        if means is not None and estimates is not None:
            means["foreground"] = self._difference_centre(keys, losses, fg, patch_weights, estimates)
        if means is not None:
            self.means = means
        recorded = self.recorded(keys, fg)
        values = self.centre(losses[recorded], fg[recorded], means)
        return [k for k, r in zip(keys, recorded) if r], values, int((~recorded).sum())

    def state_dict(self) -> dict:
        return {"means": self.means}

    def load_state_dict(self, d: dict) -> None:
        means = d.get("means")
        self.means = None if means is None else {t: float(means[t]) for t in TYPES}
