"""Curriculum mathematics in plain numpy (no torch, no nnunetv2): pacing functions, self-paced weights,
per-case difficulty state and schedulers that turn state + training progress into per-case sampling probabilities.
"""
from clips_nnunet.curriculum.pacing import (PACING_NAMES, competence_root_p, hacohen_exponential_pacing,
                                            num_active_cases, pacing_fraction, validate_pacing)
from clips_nnunet.curriculum.schedulers import (CurriculumScheduler, OrderedPacingScheduler, RandomOrderScheduler,
                                                SamplingPlan, SelfPacedScheduler, finalize_probabilities,
                                                make_anti_control, make_random_control, sampling_entropy)
from clips_nnunet.curriculum.self_paced import SPL_SCHEMES, spl_weights, threshold_admitting
from clips_nnunet.curriculum.state import DifficultyState

__all__ = ["PACING_NAMES", "competence_root_p", "hacohen_exponential_pacing", "num_active_cases", "pacing_fraction",
           "validate_pacing", "CurriculumScheduler", "OrderedPacingScheduler", "RandomOrderScheduler", "SamplingPlan",
           "SelfPacedScheduler", "finalize_probabilities", "make_anti_control", "make_random_control",
           "sampling_entropy", "SPL_SCHEMES", "spl_weights", "threshold_admitting", "DifficultyState"]
