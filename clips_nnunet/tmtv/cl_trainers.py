"""``nnUNetTrainerTMTVCL<Method>``: the TMTV-Net recipe (:class:`~clips_nnunet.tmtv.recipe.TMTVRecipe`) combined with
every curriculum trainer ``nnUNetTrainerCL<Method>`` and its controls, one explicit subclass each.

Each class holds no code of its own: ``class nnUNetTrainerTMTVCLX(TMTVRecipe, nnUNetTrainerCLX)``, so the recipe and
the curriculum can never drift apart. Written out (not generated at import time) so that ``grep`` finds every
trainer name and a broken import is an ImportError, not a warning. ``tests/test_tmtv_cl_trainers.py`` checks that
every curriculum trainer of :mod:`clips_nnunet.trainers` has exactly one combination here and that
:data:`TMTV_CL_TRAINERS` lists them all. A new curriculum trainer: add one class below.
"""
from __future__ import annotations

from typing import Tuple

from clips_nnunet.tmtv.recipe import TMTVRecipe
from clips_nnunet.trainers.family import (
    nnUNetTrainerCLBabySteps, nnUNetTrainerCLBabyStepsAnti, nnUNetTrainerCLBabyStepsRandom,
    nnUNetTrainerCLCompetence, nnUNetTrainerCLCompetenceAnti, nnUNetTrainerCLCompetenceRandom, nnUNetTrainerCLDIH,
    nnUNetTrainerCLDIHAnti, nnUNetTrainerCLDIHRandom, nnUNetTrainerCLPredefined, nnUNetTrainerCLPredefinedAnti,
    nnUNetTrainerCLPredefinedRandom, nnUNetTrainerCLSelfPacedDiversity, nnUNetTrainerCLSelfPacedDiversityAnti,
    nnUNetTrainerCLSelfPacedDiversityRandom, nnUNetTrainerCLSmoothing, nnUNetTrainerCLSuperLoss,
    nnUNetTrainerCLSuperLossAnti, nnUNetTrainerCLSuperLossRandom, nnUNetTrainerCLTeacherStudent,
    nnUNetTrainerCLTeacherStudentAnti, nnUNetTrainerCLTeacherStudentRandom, nnUNetTrainerCLTransferTeacher,
    nnUNetTrainerCLTransferTeacherAnti, nnUNetTrainerCLTransferTeacherRandom)
from clips_nnunet.trainers.self_paced_trainers import (
    nnUNetTrainerCLSelfPaced, nnUNetTrainerCLSelfPacedAnti, nnUNetTrainerCLSelfPacedLinear,
    nnUNetTrainerCLSelfPacedLinearAnti, nnUNetTrainerCLSelfPacedLinearRandom, nnUNetTrainerCLSelfPacedLog,
    nnUNetTrainerCLSelfPacedLogAnti, nnUNetTrainerCLSelfPacedLogRandom, nnUNetTrainerCLSelfPacedMixture,
    nnUNetTrainerCLSelfPacedMixtureAnti, nnUNetTrainerCLSelfPacedMixtureRandom, nnUNetTrainerCLSelfPacedRandom)

CURRICULUM_PREFIX = "nnUNetTrainerCL"
TMTV_PREFIX = "nnUNetTrainerTMTVCL"


class nnUNetTrainerTMTVCLBabySteps(TMTVRecipe, nnUNetTrainerCLBabySteps):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLBabySteps`."""


class nnUNetTrainerTMTVCLBabyStepsAnti(TMTVRecipe, nnUNetTrainerCLBabyStepsAnti):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLBabyStepsAnti`."""


class nnUNetTrainerTMTVCLBabyStepsRandom(TMTVRecipe, nnUNetTrainerCLBabyStepsRandom):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLBabyStepsRandom`."""


class nnUNetTrainerTMTVCLCompetence(TMTVRecipe, nnUNetTrainerCLCompetence):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLCompetence`."""


class nnUNetTrainerTMTVCLCompetenceAnti(TMTVRecipe, nnUNetTrainerCLCompetenceAnti):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLCompetenceAnti`."""


class nnUNetTrainerTMTVCLCompetenceRandom(TMTVRecipe, nnUNetTrainerCLCompetenceRandom):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLCompetenceRandom`."""


class nnUNetTrainerTMTVCLDIH(TMTVRecipe, nnUNetTrainerCLDIH):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLDIH`."""


class nnUNetTrainerTMTVCLDIHAnti(TMTVRecipe, nnUNetTrainerCLDIHAnti):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLDIHAnti`."""


class nnUNetTrainerTMTVCLDIHRandom(TMTVRecipe, nnUNetTrainerCLDIHRandom):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLDIHRandom`."""


class nnUNetTrainerTMTVCLPredefined(TMTVRecipe, nnUNetTrainerCLPredefined):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLPredefined`."""


class nnUNetTrainerTMTVCLPredefinedAnti(TMTVRecipe, nnUNetTrainerCLPredefinedAnti):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLPredefinedAnti`."""


class nnUNetTrainerTMTVCLPredefinedRandom(TMTVRecipe, nnUNetTrainerCLPredefinedRandom):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLPredefinedRandom`."""


class nnUNetTrainerTMTVCLSelfPaced(TMTVRecipe, nnUNetTrainerCLSelfPaced):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLSelfPaced`."""


class nnUNetTrainerTMTVCLSelfPacedAnti(TMTVRecipe, nnUNetTrainerCLSelfPacedAnti):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLSelfPacedAnti`."""


class nnUNetTrainerTMTVCLSelfPacedDiversity(TMTVRecipe, nnUNetTrainerCLSelfPacedDiversity):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLSelfPacedDiversity`."""


class nnUNetTrainerTMTVCLSelfPacedDiversityAnti(TMTVRecipe, nnUNetTrainerCLSelfPacedDiversityAnti):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLSelfPacedDiversityAnti`."""


class nnUNetTrainerTMTVCLSelfPacedDiversityRandom(TMTVRecipe, nnUNetTrainerCLSelfPacedDiversityRandom):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLSelfPacedDiversityRandom`."""


class nnUNetTrainerTMTVCLSelfPacedLinear(TMTVRecipe, nnUNetTrainerCLSelfPacedLinear):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLSelfPacedLinear`."""


class nnUNetTrainerTMTVCLSelfPacedLinearAnti(TMTVRecipe, nnUNetTrainerCLSelfPacedLinearAnti):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLSelfPacedLinearAnti`."""


class nnUNetTrainerTMTVCLSelfPacedLinearRandom(TMTVRecipe, nnUNetTrainerCLSelfPacedLinearRandom):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLSelfPacedLinearRandom`."""


class nnUNetTrainerTMTVCLSelfPacedLog(TMTVRecipe, nnUNetTrainerCLSelfPacedLog):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLSelfPacedLog`."""


class nnUNetTrainerTMTVCLSelfPacedLogAnti(TMTVRecipe, nnUNetTrainerCLSelfPacedLogAnti):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLSelfPacedLogAnti`."""


class nnUNetTrainerTMTVCLSelfPacedLogRandom(TMTVRecipe, nnUNetTrainerCLSelfPacedLogRandom):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLSelfPacedLogRandom`."""


class nnUNetTrainerTMTVCLSelfPacedMixture(TMTVRecipe, nnUNetTrainerCLSelfPacedMixture):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLSelfPacedMixture`."""


class nnUNetTrainerTMTVCLSelfPacedMixtureAnti(TMTVRecipe, nnUNetTrainerCLSelfPacedMixtureAnti):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLSelfPacedMixtureAnti`."""


class nnUNetTrainerTMTVCLSelfPacedMixtureRandom(TMTVRecipe, nnUNetTrainerCLSelfPacedMixtureRandom):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLSelfPacedMixtureRandom`."""


class nnUNetTrainerTMTVCLSelfPacedRandom(TMTVRecipe, nnUNetTrainerCLSelfPacedRandom):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLSelfPacedRandom`."""


class nnUNetTrainerTMTVCLSmoothing(TMTVRecipe, nnUNetTrainerCLSmoothing):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLSmoothing`."""


class nnUNetTrainerTMTVCLSuperLoss(TMTVRecipe, nnUNetTrainerCLSuperLoss):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLSuperLoss`."""


class nnUNetTrainerTMTVCLSuperLossAnti(TMTVRecipe, nnUNetTrainerCLSuperLossAnti):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLSuperLossAnti`."""


class nnUNetTrainerTMTVCLSuperLossRandom(TMTVRecipe, nnUNetTrainerCLSuperLossRandom):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLSuperLossRandom`."""


class nnUNetTrainerTMTVCLTeacherStudent(TMTVRecipe, nnUNetTrainerCLTeacherStudent):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLTeacherStudent`."""


class nnUNetTrainerTMTVCLTeacherStudentAnti(TMTVRecipe, nnUNetTrainerCLTeacherStudentAnti):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLTeacherStudentAnti`."""


class nnUNetTrainerTMTVCLTeacherStudentRandom(TMTVRecipe, nnUNetTrainerCLTeacherStudentRandom):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLTeacherStudentRandom`."""


class nnUNetTrainerTMTVCLTransferTeacher(TMTVRecipe, nnUNetTrainerCLTransferTeacher):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLTransferTeacher`."""


class nnUNetTrainerTMTVCLTransferTeacherAnti(TMTVRecipe, nnUNetTrainerCLTransferTeacherAnti):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLTransferTeacherAnti`."""


class nnUNetTrainerTMTVCLTransferTeacherRandom(TMTVRecipe, nnUNetTrainerCLTransferTeacherRandom):
    """TMTV-Net recipe + :class:`nnUNetTrainerCLTransferTeacherRandom`."""


def tmtv_name(curriculum_name: str) -> str:
    """``nnUNetTrainerCLSelfPaced`` -> ``nnUNetTrainerTMTVCLSelfPaced``."""
    if not curriculum_name.startswith(CURRICULUM_PREFIX):
        raise ValueError(f"{curriculum_name!r} does not start with {CURRICULUM_PREFIX}")
    return TMTV_PREFIX + curriculum_name[len(CURRICULUM_PREFIX):]


#: every combination of this module, in name order
TMTV_CL_TRAINERS: Tuple[type, ...] = tuple(sorted(
    (obj for name, obj in list(globals().items()) if name.startswith(TMTV_PREFIX) and isinstance(obj, type)),
    key=lambda c: c.__name__))
