"""Self-paced learning trainers (Kumar, Packer & Koller 2010; soft weights of Jiang et al. 2014), paced by the
pacing functions of Wu, Dyer & Neyshabur 2021, and the two controls of each.

``nnUNetTrainerCLSelfPaced`` (hard SPL): each epoch admits the ``pace(t) N`` cases with the lowest EMA training
loss (threshold ``lam`` = the loss quantile admitting them) and samples them uniformly, plus exploration epsilon.
Defaults (class attributes; change them by subclassing):

- ``pacing = "root"``, ``pacing_a = 0.8``, ``pacing_b = 0.3``: start with 30 % of the cases, all cases in after
  80 % of the post-warm-up epochs, growing fast early (root pacing, Wu et al. 2021);
- ``spl_scheme = "hard"`` (v = 1[l < lam]); ``lam_prime_quantile = 0.5`` (mixture scheme only);
- inherited: ``warmup_epochs = 10``, ``exploration_epsilon = 0.05``, ``loss_ema_alpha = 0.3``, ``min_cases = 2``.

The soft variants (Linear, Log, Mixture) apply their SPL weight once: by default (``spl_soft_mechanism =
"sampling"``) the admitted cases are sampled proportionally to the SPL weight of their EMA loss and trained with
nnU-Net's unweighted loss; ``spl_soft_mechanism = "loss"`` samples the admitted cases uniformly and weights each
training sample's loss with the SPL weight of its current loss instead (``sample_weights``, normalised to a mean of
1 per sampled case; a batch whose weights are all 0 contributes no gradient). Every variant has ``...Random`` (the same admitted count and weights, moved to a
fixed random order) and ``...Anti`` (moved to the reversed order: hardest first); see
:mod:`clips_nnunet.trainers.arms`.
"""
from __future__ import annotations

from typing import List

from clips_nnunet.curriculum.schedulers import SelfPacedScheduler
from clips_nnunet.trainers.arms import nnUNetTrainerCurriculumArm, scheduler_sample_weights

class nnUNetTrainerCLSelfPaced(nnUNetTrainerCurriculumArm):
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
    #: soft schemes: apply the SPL weight by the sampling probability ("sampling") or by the loss ("loss"), once
    spl_soft_mechanism: str = "sampling"

    def build_arm_scheduler(self, case_ids: List[str]) -> SelfPacedScheduler:
        return SelfPacedScheduler(case_ids, pacing=self.pacing, pacing_a=self.pacing_a, pacing_b=self.pacing_b,
                                  min_cases=self.min_cases, scheme=self.spl_scheme,
                                  lam_prime_quantile=self.lam_prime_quantile, soft_mechanism=self.spl_soft_mechanism)


class nnUNetTrainerCLSelfPacedRandom(nnUNetTrainerCLSelfPaced):
    """Random control: the same admitted count every epoch, cases in a fixed random order (saved in checkpoints)."""

    order = "random"


class nnUNetTrainerCLSelfPacedAnti(nnUNetTrainerCLSelfPaced):
    """Anti-curriculum control: the same admitted count, hardest (highest EMA loss) cases first."""

    order = "anti"


class nnUNetTrainerCLSelfPacedLinear(nnUNetTrainerCLSelfPaced):
    """Soft SPL with the linear regulariser: v = max(0, 1 - l / lam) (Jiang et al. 2014)."""

    spl_scheme = "linear"
    sample_weights = scheduler_sample_weights


class nnUNetTrainerCLSelfPacedLinearRandom(nnUNetTrainerCLSelfPacedLinear):
    order = "random"


class nnUNetTrainerCLSelfPacedLinearAnti(nnUNetTrainerCLSelfPacedLinear):
    order = "anti"


class nnUNetTrainerCLSelfPacedLog(nnUNetTrainerCLSelfPaced):
    """Soft SPL with the logarithmic regulariser: v = log(l + zeta) / log(zeta), zeta = 1 - lam (Jiang 2014)."""

    spl_scheme = "logarithmic"
    sample_weights = scheduler_sample_weights


class nnUNetTrainerCLSelfPacedLogRandom(nnUNetTrainerCLSelfPacedLog):
    order = "random"


class nnUNetTrainerCLSelfPacedLogAnti(nnUNetTrainerCLSelfPacedLog):
    order = "anti"


class nnUNetTrainerCLSelfPacedMixture(nnUNetTrainerCLSelfPaced):
    """Soft SPL with the mixture regulariser: 1 below lam', zeta / l - zeta / lam between (Jiang et al. 2014)."""

    spl_scheme = "mixture"
    sample_weights = scheduler_sample_weights


class nnUNetTrainerCLSelfPacedMixtureRandom(nnUNetTrainerCLSelfPacedMixture):
    order = "random"


class nnUNetTrainerCLSelfPacedMixtureAnti(nnUNetTrainerCLSelfPacedMixture):
    order = "anti"


#: every self-paced trainer (for the shim, docs and tests)
SELF_PACED_TRAINERS = sorted(name for name, obj in list(globals().items())
                             if name.startswith("nnUNetTrainerCL") and isinstance(obj, type))
