"""Self-paced learning trainers (Kumar, Packer & Koller 2010; soft weights of Jiang et al. 2014), paced by the
pacing functions of Wu, Dyer & Neyshabur 2021, and the two controls every curriculum study needs.

``nnUNetTrainerCLSelfPaced`` (hard SPL): each epoch admits the ``pace(t) N`` cases with the lowest EMA training
loss (threshold ``lam`` = the loss quantile admitting them) and samples them uniformly, plus exploration epsilon.
Defaults (class attributes; change them by subclassing):

- ``pacing = "root"``, ``pacing_a = 0.8``, ``pacing_b = 0.3``: start with 30 % of the cases, all cases in after
  80 % of the post-warm-up epochs, growing fast early (root pacing, Wu et al. 2021);
- ``spl_scheme = "hard"`` (v = 1[l < lam]); ``lam_prime_quantile = 0.5`` (mixture scheme only);
- inherited: ``warmup_epochs = 10``, ``exploration_epsilon = 0.05``, ``loss_ema_alpha = 0.3``, ``min_cases = 2``.

The soft variants (Linear, Log, Mixture) sample proportionally to the SPL weight of each case's EMA loss AND weight
each training sample's loss with the SPL weight of its current loss (``sample_weights``). ``...Random`` admits the
same number of cases in a fixed random order; ``...Anti`` admits the hardest (highest EMA loss) first.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from clips_nnunet.curriculum.schedulers import (CurriculumScheduler, SelfPacedScheduler, make_anti_control,
                                                make_random_control)
from clips_nnunet.trainers.curriculum import nnUNetTrainerCurriculum


class nnUNetTrainerCLSelfPaced(nnUNetTrainerCurriculum):
    """Hard self-paced learning with root pacing (defaults in the module docstring)."""

    #: pacing function g(t) of Wu et al. 2021 (linear, quadratic, root, step, exponential, logarithmic)
    pacing: str = "root"
    #: a: fraction of (post-warm-up) training after which all cases are admitted
    pacing_a: float = 0.8
    #: b: initial fraction of admitted cases
    pacing_b: float = 0.3
    #: self-paced regulariser: hard (Kumar 2010), linear, logarithmic, mixture (Jiang 2014)
    spl_scheme: str = "hard"
    #: mixture only: lam' admits this fraction of the admitted cases with weight 1
    lam_prime_quantile: float = 0.5

    def build_scheduler(self, case_ids: List[str]) -> CurriculumScheduler:
        return SelfPacedScheduler(case_ids, pacing=self.pacing, pacing_a=self.pacing_a, pacing_b=self.pacing_b,
                                  min_cases=self.min_cases, scheme=self.spl_scheme,
                                  lam_prime_quantile=self.lam_prime_quantile)


def soft_spl_sample_weights(trainer: nnUNetTrainerCLSelfPaced, keys: Sequence[str],
                            losses: np.ndarray) -> Optional[np.ndarray]:
    """Soft SPL loss weights ``v*(l_b; lam)`` of this batch's losses with the epoch's threshold(s); None (nnU-Net's
    loss) during warm-up or when every weight is 0 (a step is never wasted on a zero loss)."""
    if trainer.current_epoch < trainer.warmup_epochs:
        return None
    weights = trainer._cl_scheduler.loss_weights(losses)
    return weights if weights.sum() > 0 else None


class nnUNetTrainerCLSelfPacedLinear(nnUNetTrainerCLSelfPaced):
    """Soft SPL with the linear regulariser: v = max(0, 1 - l / lam) (Jiang et al. 2014)."""

    spl_scheme = "linear"
    sample_weights = soft_spl_sample_weights


class nnUNetTrainerCLSelfPacedLog(nnUNetTrainerCLSelfPaced):
    """Soft SPL with the logarithmic regulariser: v = log(l + zeta) / log(zeta), zeta = 1 - lam (Jiang 2014)."""

    spl_scheme = "logarithmic"
    sample_weights = soft_spl_sample_weights


class nnUNetTrainerCLSelfPacedMixture(nnUNetTrainerCLSelfPaced):
    """Soft SPL with the mixture regulariser: 1 below lam', zeta / l - zeta / lam between (Jiang et al. 2014)."""

    spl_scheme = "mixture"
    sample_weights = soft_spl_sample_weights


class nnUNetTrainerCLSelfPacedRandom(nnUNetTrainerCLSelfPaced):
    """Random control: the same pacing, cases admitted in a fixed random order drawn once (saved in checkpoints)."""

    def build_scheduler(self, case_ids: List[str]) -> CurriculumScheduler:
        return make_random_control(case_ids, self.pacing, self.pacing_a, self.pacing_b, self.min_cases)


class nnUNetTrainerCLSelfPacedAnti(nnUNetTrainerCLSelfPaced):
    """Anti-curriculum control: the same pacing, hardest cases (highest current EMA loss) admitted first."""

    def build_scheduler(self, case_ids: List[str]) -> CurriculumScheduler:
        return make_anti_control(case_ids, None, self.pacing, self.pacing_a, self.pacing_b, self.min_cases)
