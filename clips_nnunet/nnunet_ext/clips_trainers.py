"""Shim for nnU-Net's trainer lookup (nnUNet_extTrainer): imports only; the classes live in clips_nnunet.

nnU-Net imports every module of each nnUNet_extTrainer folder as a top-level module and then removes it from
sys.modules, so the classes must keep their real ``__module__`` (clips_nnunet.trainers...) to pickle and to be found
again by DDP rank processes and spawned workers. Append one import line per new trainer module.
"""
from clips_nnunet.trainers.base import nnUNetTrainerClipsBase  # noqa: F401
from clips_nnunet.trainers.self_paced_trainers import (nnUNetTrainerCLSelfPaced, nnUNetTrainerCLSelfPacedAnti,  # noqa: F401
                                              nnUNetTrainerCLSelfPacedLinear, nnUNetTrainerCLSelfPacedLinearAnti,
                                              nnUNetTrainerCLSelfPacedLinearRandom, nnUNetTrainerCLSelfPacedLog,
                                              nnUNetTrainerCLSelfPacedLogAnti, nnUNetTrainerCLSelfPacedLogRandom,
                                              nnUNetTrainerCLSelfPacedMixture, nnUNetTrainerCLSelfPacedMixtureAnti,
                                              nnUNetTrainerCLSelfPacedMixtureRandom, nnUNetTrainerCLSelfPacedRandom)
from clips_nnunet.tmtv.recipe import (nnUNetTrainerTMTV, nnUNetTrainerTMTVFinetune,  # noqa: F401
                                              nnUNetTrainerTMTVRefiner)
from clips_nnunet.tmtv.cl_trainers import *  # noqa: F401,F403  (nnUNetTrainerTMTVCL<Method>)
from clips_nnunet.trainers.family import (  # noqa: F401  (curriculum family and controls)
    nnUNetTrainerCLBabySteps, nnUNetTrainerCLBabyStepsAnti, nnUNetTrainerCLBabyStepsRandom,
    nnUNetTrainerCLCompetence, nnUNetTrainerCLCompetenceAnti, nnUNetTrainerCLCompetenceRandom,
    nnUNetTrainerCLDIH, nnUNetTrainerCLDIHAnti, nnUNetTrainerCLDIHRandom, nnUNetTrainerCLPredefined,
    nnUNetTrainerCLPredefinedAnti, nnUNetTrainerCLPredefinedRandom, nnUNetTrainerCLSelfPacedDiversity,
    nnUNetTrainerCLSelfPacedDiversityAnti, nnUNetTrainerCLSelfPacedDiversityRandom, nnUNetTrainerCLSmoothing,
    nnUNetTrainerCLSuperLoss, nnUNetTrainerCLSuperLossAnti, nnUNetTrainerCLSuperLossRandom,
    nnUNetTrainerCLTeacherStudent, nnUNetTrainerCLTeacherStudentAnti, nnUNetTrainerCLTeacherStudentRandom,
    nnUNetTrainerCLTransferTeacher, nnUNetTrainerCLTransferTeacherAnti, nnUNetTrainerCLTransferTeacherRandom)
