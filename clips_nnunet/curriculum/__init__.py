"""Curriculum mathematics in plain numpy (no torch, no nnunetv2, no SimpleITK): pacing functions, self-paced weights,
per-case difficulty state, and the schedulers (:mod:`clips_nnunet.curriculum.schedulers`) that turn state + training
progress into per-case sampling probabilities, with the Random and Anti controls of every curriculum.
"""
from clips_nnunet.curriculum.pacing import (PACING_NAMES, competence_root_p, hacohen_exponential_pacing,
                                            num_active_cases, pacing_fraction, validate_pacing)
from clips_nnunet.curriculum.schedulers import (ARMS, CONTROLS, ControlScheduler, CurriculumScheduler, PacedScheduler,
                                                SamplingPlan, SelfPacedScheduler, finalize_probabilities,
                                                sampling_entropy, with_control)
from clips_nnunet.curriculum.self_paced import SPL_SCHEMES, spl_weights, threshold_admitting
from clips_nnunet.curriculum.state import DifficultyState

__all__ = ["PACING_NAMES", "competence_root_p", "hacohen_exponential_pacing", "num_active_cases", "pacing_fraction",
           "validate_pacing", "ARMS", "CONTROLS", "ControlScheduler", "CurriculumScheduler", "PacedScheduler",
           "SamplingPlan", "SelfPacedScheduler", "finalize_probabilities", "sampling_entropy", "with_control",
           "SPL_SCHEMES", "spl_weights", "threshold_admitting", "DifficultyState"]
