"""The study arm of a curriculum trainer: the curriculum itself, or its Random or Anti control, expressed one way.

A curriculum with an order subclasses :class:`nnUNetTrainerCurriculumArm` and implements
:meth:`~nnUNetTrainerCurriculumArm.build_arm_scheduler` (the published method); the class attribute ``order``
selects the arm, and :func:`clips_nnunet.curriculum.schedulers.with_control` wraps the method's scheduler for
``"random"`` and ``"anti"``: every epoch the control admits exactly as many cases as the curriculum (the same
probabilities, moved to a fixed random order or to the reversed order; see
:mod:`clips_nnunet.curriculum.schedulers.controls`). ``nnUNetTrainerCL<Method>Random`` and
``nnUNetTrainerCL<Method>Anti`` are one-line subclasses that set ``order``.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from clips_nnunet.curriculum.schedulers import ARMS, CurriculumScheduler, with_control
from clips_nnunet.errors import CurriculumConfigError
from clips_nnunet.trainers.curriculum import nnUNetTrainerCurriculum


class nnUNetTrainerCurriculumArm(nnUNetTrainerCurriculum):
    """Base of the curricula that have an order (and so a Random and an Anti control)."""

    #: study arm: "curriculum" (the method as published), "random" (a fixed random order) or "anti" (reversed)
    order: str = "curriculum"

    @abstractmethod
    def build_arm_scheduler(self, case_ids: List[str]) -> CurriculumScheduler:
        """The scheduler of the method itself (the ``"curriculum"`` arm) for the training cases ``case_ids``."""

    def build_scheduler(self, case_ids: List[str]) -> CurriculumScheduler:
        if self.order not in ARMS:
            raise CurriculumConfigError(f"{type(self).__name__}.order must be one of {ARMS}, got {self.order!r} "
                                        f"(set it on your trainer subclass)")
        return with_control(self.build_arm_scheduler(case_ids), self.order)

    def curriculum_config(self) -> Dict[str, Any]:
        config = super().curriculum_config()
        config["order"] = self.order
        return config


def scheduler_sample_weights(trainer: nnUNetTrainerCurriculum, keys: Sequence[str], losses: np.ndarray,
                             recorded: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """``sample_weights`` of the weighting curricula (SuperLoss; soft self-paced learning with
    ``spl_soft_mechanism = "loss"``) and their controls.

    None (no weighting: the unweighted loss) during warm-up and while the scheduler has no threshold yet; else the
    scheduler's raw :meth:`~clips_nnunet.curriculum.schedulers.CurriculumScheduler.loss_weights` (the trainer
    normalises them): weight 0 for a non-finite loss (the trainer names and counts it), and all zeros when the
    batch must contribute no gradient.
    """
    if trainer.current_epoch < trainer.warmup_epochs:
        return None
    return trainer._cl_scheduler.loss_weights(losses, [str(k) for k in keys], recorded)
