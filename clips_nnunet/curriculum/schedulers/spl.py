"""Self-paced curricula on the per-case EMA loss: self-paced learning (hard and soft) and SPL with diversity.

- :class:`SelfPacedScheduler`: Kumar, Packer & Koller (2010) hard SPL and the soft regularisers of Jiang et al.
  (2014), with the threshold ``lam`` = the EMA-loss quantile that admits ``n(t)`` cases (Wu et al. 2021 pacing).
- :class:`SPLDScheduler`: Jiang et al. (2014) self-paced learning with diversity, rank rule per group.

Both rank the cases by ascending EMA loss (plan ``ranking``), so :func:`~.controls.with_control` gives their
Random and Anti controls; every admitted case has a positive weight and all cases are admitted at progress 1.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from clips_nnunet.curriculum.schedulers.base import PacedScheduler, SamplingPlan, admit_first, normalise, rank_cases
from clips_nnunet.curriculum.self_paced import SPL_SCHEMES, spl_weights, threshold_admitting
from clips_nnunet.curriculum.spld import spld_select
from clips_nnunet.curriculum.state import DifficultyState
from clips_nnunet.errors import CurriculumConfigError

#: how a soft self-paced weight is applied (once): by the sampling probability or by the loss
SOFT_MECHANISMS = ("sampling", "loss")


def _positive_on(w: np.ndarray, active: np.ndarray) -> np.ndarray:
    """``w`` on the admitted cases, 0 elsewhere; an admitted case whose weight rounds to 0 keeps a tiny positive
    weight (``1e-12`` of the largest), so "admitted" always means "sampled with positive probability"."""
    w = np.where(active, np.clip(np.nan_to_num(w, nan=0.0), 0.0, None), 0.0)
    top = float(w.max()) if w.size else 0.0
    floor = 1e-12 * top if top > 0 else 1.0
    return np.where(active & (w <= 0), floor, w)


class SelfPacedScheduler(PacedScheduler):
    """Self-paced learning with a pacing-controlled threshold (Kumar et al. 2010, eq. 4 with ``1/K = lam``; soft
    regularisers of Jiang et al. 2014, ACM MM, table 1).

    Each epoch ``n = num_active_cases(g(t), N, b, min_cases)`` and ``lam = threshold_admitting(d, n)`` on the EMA
    losses ``d``; exactly the ``n`` lowest ``d`` are admitted (ties, e.g. unseen cases counting as the median, broken
    by a permutation drawn from ``rng``, identical on every DDP rank). The linear and mixture schemes use
    ``d - min(d)`` (they need losses >= 0; Dice + CE is negative for good cases); the mixture's lower threshold
    ``lam'`` admits ``lam_prime_quantile`` of the admitted cases with weight 1; the logarithmic scheme rescales the
    losses to [0, 1] over ``[min d, max(max d, lam + gap))`` so that the hardest admitted case keeps a positive
    weight at ``t = 1``.

    A soft scheme applies its weight ``v*`` ONCE, by ``soft_mechanism``:

    - ``"sampling"`` (default): the admitted cases are sampled with probability ``∝ v*(d; lam)`` and trained with
      nnU-Net's unweighted loss (:meth:`loss_weights` returns None). The objective of Kumar et al. / Jiang et al.,
      ``sum_i v_i l_i``, has the gradient ``sum_i v_i dl_i = (sum_j v_j) E_{i ~ v}[dl_i]``: sampling ``∝ v``
      gives the same expected direction at nnU-Net's step size, with ``v`` from the per-case estimate rather than
      from one random patch of the case;
    - ``"loss"``: the admitted cases are sampled uniformly and each sample's loss is weighted by ``v*(l; lam)`` of
      its current (centred) loss (the engine normalises the weights to a mean of 1 per sampled case).

    The hard scheme only samples (its weight is 0 or 1: admission).
    """

    def __init__(self, case_ids: Sequence[str], pacing: str = "root", pacing_a: float = 0.8,
                 pacing_b: float = 0.3, min_cases: int = 2, scheme: str = "hard", lam_prime_quantile: float = 0.5,
                 soft_mechanism: str = "sampling"):
        super().__init__(case_ids, pacing, pacing_a, pacing_b, min_cases)
        if scheme not in SPL_SCHEMES:
            raise CurriculumConfigError(f"spl_scheme must be one of {', '.join(SPL_SCHEMES)}, got {scheme!r}")
        if soft_mechanism not in SOFT_MECHANISMS:
            raise CurriculumConfigError(f"spl_soft_mechanism must be one of {SOFT_MECHANISMS}, got "
                                        f"{soft_mechanism!r} (how a soft weight is applied: once, by sampling or "
                                        f"by the loss)")
        self.soft_mechanism = soft_mechanism
        if not 0.0 < float(lam_prime_quantile) < 1.0:
            raise CurriculumConfigError(f"lam_prime_quantile must be in (0, 1), got {lam_prime_quantile}")
        self.scheme = scheme
        self.lam_prime_quantile = float(lam_prime_quantile)
        self._last: Optional[dict] = None

    def config(self) -> dict:
        return {**super().config(), "scheme": self.scheme, "lam_prime_quantile": self.lam_prime_quantile,
                "soft_mechanism": self.soft_mechanism}

    @property
    def weights_losses(self) -> bool:
        """True when this scheduler weights the loss (a soft scheme with ``soft_mechanism == "loss"``)."""
        return self.scheme != "hard" and self.soft_mechanism == "loss"

    def _weights(self, d: np.ndarray, n: int, lam: float, extra: dict) -> np.ndarray:
        shift = float(d.min())
        top = float(d.max())
        gap = max((top - shift) / max(d.size - 1, 1), 1e-6)
        hi = top if lam < top else lam + gap
        last = {"scheme": self.scheme, "lam": lam, "shift": shift, "range": (shift, hi), "top": top,
                "all": n >= d.size}
        if self.scheme == "hard":
            w = spl_weights(d, lam, "hard")
        elif self.scheme == "logarithmic":
            w = spl_weights(d, lam, "logarithmic", loss_range=(shift, hi))
        elif self.scheme == "linear":
            w = spl_weights(d - shift, lam - shift, "linear")
        else:
            n_prime = min(max(1, int(np.ceil(self.lam_prime_quantile * n - 1e-9))), n - 1)
            lam_prime = threshold_admitting(d, n_prime) - shift if n_prime >= 1 else 0.0
            if 0.0 < lam_prime < lam - shift:
                w = spl_weights(d - shift, lam - shift, "mixture", lam_prime=lam_prime)
                extra["lam_prime"] = last["lam_prime"] = lam_prime + shift
            else:  # too few cases for two thresholds: the mixture degenerates to hard weights
                w = spl_weights(d, lam, "hard")
                last["scheme"] = "hard"
        self._last = last
        return w

    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        self._check_state(state)
        d = state.estimates()
        n = self.n_active(progress)
        lam = threshold_admitting(d, n)
        extra = {"n_active": int(n), "scheme": self.scheme}
        w = self._weights(d, n, lam, extra)
        tie_break = rng.permutation(d.size) if rng is not None else None
        ranking = rank_cases(d, tie_break)
        active = admit_first(ranking, n, d.size)
        sample_by_weight = self.scheme != "hard" and not self.weights_losses
        w = _positive_on(w, active) if sample_by_weight else active.astype(np.float64)
        return SamplingPlan(normalise(w), float(active.mean()), lam, extra, ranking)

    def loss_weights(self, losses, keys: Optional[Sequence[str]] = None,
                     recorded=None) -> Optional[np.ndarray]:
        """Raw SPL weights ``v*(l; lam)`` of one batch's losses with the last plan's threshold(s) and rescaling
        (``soft_mechanism == "loss"`` only; None otherwise, and before the first plan: "no weighting"). A
        non-finite loss gets weight 0; all zeros: the batch contributes no gradient (the trainer skips the step).
        When the plan admitted every case (``t = 1``) a loss above the largest estimate is clipped to it, so every
        case keeps a positive weight, whatever its noise."""
        losses = np.asarray(losses, dtype=np.float64).reshape(-1)
        if self._last is None or not self.weights_losses:
            return None
        out = np.zeros(losses.size)
        finite = np.isfinite(losses)
        if not finite.any():
            return out
        l = losses[finite]
        last = self._last
        if last["all"]:
            l = np.minimum(l, last["top"])
        lam, shift = last["lam"], last["shift"]
        if last["scheme"] == "hard":
            w = spl_weights(l, lam, "hard")
        elif last["scheme"] == "logarithmic":
            w = spl_weights(l, lam, "logarithmic", loss_range=last["range"])
        else:
            shifted = np.clip(l - shift, 0.0, None)
            if last["scheme"] == "linear":
                w = spl_weights(shifted, lam - shift, "linear")
            else:
                w = spl_weights(shifted, lam - shift, "mixture", lam_prime=last["lam_prime"] - shift)
        out[finite] = w
        return out


class SPLDScheduler(PacedScheduler):
    """Jiang et al. (2014, NIPS, "Self-paced learning with diversity", algorithm 1) rank rule per group: select the
    case of rank ``r`` (by loss) in its group if ``l < lam + gamma / (sqrt(r) + sqrt(r - 1))``.

    Scale-free parameters: ``lam`` is the EMA-loss quantile admitting ``n(t)`` cases (Wu et al. 2021 pacing, as the
    engine's self-paced learning); ``gamma`` grows with ``lam`` as in algorithm 1 (``lam <- mu lam``,
    ``gamma <- mu gamma``, the same factor): ``gamma_t = gamma_rel (max d - min d) n(t) / n(0)``, i.e. in
    proportion to the admitted count. The selected cases are sampled uniformly; at least ``min_cases`` easiest
    stay in. Controls permute within groups (:meth:`control_strata`), so they select as many cases per group.
    """

    def __init__(self, case_ids: Sequence[str], groups: Sequence[str], pacing: str = "root", pacing_a: float = 0.8,
                 pacing_b: float = 0.3, min_cases: int = 2, gamma_rel: float = 0.2):
        super().__init__(case_ids, pacing, pacing_a, pacing_b, min_cases)
        groups = [str(g) for g in groups]
        if len(groups) != len(self.case_ids):
            raise CurriculumConfigError(f"{len(groups)} group labels for {len(self.case_ids)} training cases")
        if not gamma_rel >= 0:
            raise CurriculumConfigError(f"spld_gamma_rel must be >= 0, got {gamma_rel}")
        self.groups, self.gamma_rel = groups, float(gamma_rel)

    def config(self) -> dict:
        return {**super().config(), "gamma_rel": self.gamma_rel, "n_groups": len(set(self.groups))}

    def control_strata(self) -> np.ndarray:
        return np.asarray(self.groups)

    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        self._check_state(state)
        d = state.estimates()
        n = self.n_active(progress)
        lam = threshold_admitting(d, n)
        gamma = self.gamma_rel * float(d.max() - d.min()) * n / self.n_active(0.0)
        selected = spld_select(d, self.groups, lam, gamma)
        ranking = rank_cases(d)
        if selected.sum() < self.min_cases:
            selected[ranking[: self.min_cases]] = True
        return SamplingPlan(normalise(selected), float(selected.mean()), lam,
                            {"gamma": gamma, "n_selected": int(selected.sum())}, ranking)
