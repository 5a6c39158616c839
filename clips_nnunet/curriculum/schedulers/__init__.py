"""Curriculum schedulers, one family in one place: turn the difficulty state and the training progress into
per-case sampling probabilities (and, for weighting curricula, per-sample loss weights).

- :mod:`.base`: :class:`SamplingPlan`, :class:`CurriculumScheduler`, :class:`PacedScheduler`,
  :func:`finalize_probabilities`, :func:`sampling_entropy`;
- :mod:`.controls`: :func:`with_control` / :class:`ControlScheduler`, the Random and Anti controls of every
  curriculum with an order (same admitted count every epoch, other cases);
- :mod:`.spl`: self-paced learning (hard and soft) and SPL with diversity;
- :mod:`.ordered`: fixed-difficulty curricula (pacing, Hacohen, competence, baby steps, teacher-student);
- :mod:`.dynamic`: DIH, SuperLoss, curriculum by smoothing.
"""
from clips_nnunet.curriculum.schedulers.base import (CurriculumScheduler, PacedScheduler, SamplingPlan,
                                                     finalize_probabilities, sampling_entropy)
from clips_nnunet.curriculum.schedulers.controls import ARMS, CONTROLS, ControlScheduler, with_control
from clips_nnunet.curriculum.schedulers.dynamic import DIHScheduler, SmoothingScheduler, SuperLossScheduler
from clips_nnunet.curriculum.schedulers.ordered import (BabyStepsScheduler, CompetenceScheduler,
                                                        FixedOrderPacingScheduler, TeacherStudentScheduler)
from clips_nnunet.curriculum.schedulers.spl import SelfPacedScheduler, SPLDScheduler

__all__ = ["CurriculumScheduler", "PacedScheduler", "SamplingPlan", "finalize_probabilities", "sampling_entropy",
           "ARMS", "CONTROLS", "ControlScheduler", "with_control", "DIHScheduler", "SmoothingScheduler",
           "SuperLossScheduler", "BabyStepsScheduler", "CompetenceScheduler", "FixedOrderPacingScheduler",
           "TeacherStudentScheduler", "SelfPacedScheduler", "SPLDScheduler"]
