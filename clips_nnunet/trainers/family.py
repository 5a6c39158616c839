"""The curriculum family as nnU-Net trainers (``nnUNetv2_train ... -tr nnUNetTrainerCL<Method>``).

Each trainer is a small subclass of :class:`~clips_nnunet.trainers.arms.nnUNetTrainerCurriculumArm` that builds one
scheduler of :mod:`clips_nnunet.curriculum.schedulers` (``build_arm_scheduler``); hyper-parameters are class
attributes (subclass to change them). Every ordering has a ``...Random`` and a ``...Anti`` control that set only
``order``: the control admits exactly the curriculum's number of cases every epoch, in a fixed random order or in
the reversed order (:mod:`clips_nnunet.curriculum.schedulers.controls`). Curriculum by smoothing has no order and no
controls. See docs/curricula.md for the table of methods, papers, formulas, defaults and deviations.

Difficulty of fixed-order curricula (``difficulty_source``):

- ``"metadata"``: ``difficulty_measure`` of ``$nnUNet_raw/DatasetXXX/case_metadata.json`` (direction per measure in
  :data:`clips_nnunet.curriculum.difficulty.METADATA_MEASURES`; lesion-free cases by ``lesion_free``);
- ``"csv"``: the file in the environment variable ``CLIPS_DIFFICULTY_CSV``, else the class attribute
  ``difficulty_csv``, else ``$nnUNet_raw/DatasetXXX/difficulty.csv`` (written by ``clips-nnunet score``).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from clips_nnunet.curriculum.difficulty import (difficulty_from_metadata, groups_from_metadata, load_case_metadata,
                                                read_difficulty_csv)
from clips_nnunet.curriculum.schedulers import (BabyStepsScheduler, CompetenceScheduler, DIHScheduler,
                                                FixedOrderPacingScheduler, SmoothingScheduler, SPLDScheduler,
                                                SuperLossScheduler, TeacherStudentScheduler)
from clips_nnunet.errors import CurriculumConfigError, DatasetError
from clips_nnunet.nnunet_env import nnunet_folder
from clips_nnunet.trainers.arms import nnUNetTrainerCurriculumArm, scheduler_sample_weights
from clips_nnunet.trainers.curriculum import nnUNetTrainerCurriculum

DIFFICULTY_CSV_ENV = "CLIPS_DIFFICULTY_CSV"


class _FamilyTrainer(nnUNetTrainerCurriculumArm):
    """Shared helpers: raw dataset folder, fixed difficulty; the arm (``order``) comes from the base."""

    #: where a fixed difficulty comes from: "metadata" or "csv"
    difficulty_source: str = "metadata"
    #: case_metadata.json measure (see METADATA_MEASURES for its direction)
    difficulty_measure: str = "tmtv_ml"
    #: rank of lesion-free cases for lesion measures: "median", "easiest" or "hardest"
    lesion_free: str = "median"
    #: CSV path used when difficulty_source == "csv" and CLIPS_DIFFICULTY_CSV is not set
    difficulty_csv: Optional[str] = None

    _family_difficulty: Optional[Dict[str, float]] = None
    _family_difficulty_origin: str = ""

    def raw_dataset_folder(self) -> str:
        """``$nnUNet_raw/DatasetXXX_Name`` of the dataset being trained."""
        return str(nnunet_folder("nnUNet_raw") / self.plans_manager.dataset_name)

    def difficulty_csv_path(self) -> str:
        """``CLIPS_DIFFICULTY_CSV``, else ``difficulty_csv``, else ``difficulty.csv`` in the raw dataset folder."""
        env = os.environ.get(DIFFICULTY_CSV_ENV, "").strip()
        if env:
            return env
        if self.difficulty_csv:
            return str(self.difficulty_csv)
        return os.path.join(self.raw_dataset_folder(), "difficulty.csv")

    def load_difficulty(self, case_ids: Sequence[str]) -> np.ndarray:
        """Rank-normalised difficulty (higher = harder) of ``case_ids`` from ``difficulty_source``."""
        if self.difficulty_source == "metadata":
            metadata = load_case_metadata(self.raw_dataset_folder())
            table = difficulty_from_metadata(metadata, case_ids, self.difficulty_measure, self.lesion_free)
            origin = f"case_metadata.json:{self.difficulty_measure}"
        elif self.difficulty_source == "csv":
            path = self.difficulty_csv_path()
            tr_keys, val_keys = self.do_split()
            table = read_difficulty_csv(path, case_ids, known_ids=list(tr_keys) + list(val_keys))
            origin = f"csv:{path}"
        else:
            raise CurriculumConfigError(f"difficulty_source must be 'metadata' or 'csv', got "
                                        f"{self.difficulty_source!r} (set it on your trainer subclass)")
        self._family_difficulty, self._family_difficulty_origin = table, origin
        self.print_to_log_file(f"curriculum difficulty from {origin} ({self.order} arm)")
        return np.asarray([table[c] for c in case_ids], dtype=np.float64)

    def curriculum_config(self) -> Dict[str, Any]:
        config = super().curriculum_config()
        if self._family_difficulty is not None:
            config["difficulty_source"] = self._family_difficulty_origin
            config["difficulty"] = {c: self._family_difficulty[c] for c in sorted(self._family_difficulty)}
        return config


# ------------------------------------------------------------------------------------ fixed order + pacing

class nnUNetTrainerCLPredefined(_FamilyTrainer):
    """Predefined difficulty (case metadata or a CSV) + a Wu et al. (2021) pacing function: admit the ``n(t)``
    easiest cases, uniformly. No warm-up is needed (the difficulty is known before training)."""

    warmup_epochs = 0
    pacing: str = "root"
    pacing_a: float = 0.8
    pacing_b: float = 0.3
    hacohen_start: float = 0.3
    hacohen_increase: float = 1.5
    hacohen_step: int = 100

    def build_arm_scheduler(self, case_ids: List[str]) -> FixedOrderPacingScheduler:
        return FixedOrderPacingScheduler(case_ids, self.load_difficulty(case_ids), pacing=self.pacing,
                                         pacing_a=self.pacing_a, pacing_b=self.pacing_b, min_cases=self.min_cases,
                                         hacohen_start=self.hacohen_start,
                                         hacohen_increase=self.hacohen_increase, hacohen_step=self.hacohen_step)


class nnUNetTrainerCLPredefinedRandom(nnUNetTrainerCLPredefined):
    order = "random"


class nnUNetTrainerCLPredefinedAnti(nnUNetTrainerCLPredefined):
    order = "anti"


class nnUNetTrainerCLTransferTeacher(nnUNetTrainerCLPredefined):
    """Transfer teacher / bootstrapping (Hacohen & Weinshall 2019): difficulty from a teacher's CSV, e.g. out-of-fold
    1 - Dice of a baseline cross-validation (``clips-nnunet score``). ``pacing = "hacohen"`` selects their fixed
    exponential pacing ``g(i) = min(s inc^floor(i / step), 1) N`` (``hacohen_*`` attributes, ``i`` = epoch)."""

    difficulty_source = "csv"


class nnUNetTrainerCLTransferTeacherRandom(nnUNetTrainerCLTransferTeacher):
    order = "random"


class nnUNetTrainerCLTransferTeacherAnti(nnUNetTrainerCLTransferTeacher):
    order = "anti"


class nnUNetTrainerCLCompetence(_FamilyTrainer):
    """Competence-based curriculum (Platanios et al. 2019): uniform among the ``floor(c(t) N)`` easiest cases (rank
    CDF ``<= c(t)``), ``c(t) = min(1, (t (1 - c0^p) / T + c0^p)^(1/p))``."""

    warmup_epochs = 0
    competence_c0: float = 0.1
    competence_p: float = 2.0
    competence_T: float = 0.8

    def build_arm_scheduler(self, case_ids: List[str]) -> CompetenceScheduler:
        return CompetenceScheduler(case_ids, self.load_difficulty(case_ids), c0=self.competence_c0,
                                   p=self.competence_p, competence_T=self.competence_T, min_cases=self.min_cases)


class nnUNetTrainerCLCompetenceRandom(nnUNetTrainerCLCompetence):
    order = "random"


class nnUNetTrainerCLCompetenceAnti(nnUNetTrainerCLCompetence):
    order = "anti"


class nnUNetTrainerCLBabySteps(_FamilyTrainer):
    """Baby steps (Bengio et al. 2009; Spitkovsky et al. 2010): ``baby_steps_buckets`` sorted buckets added
    cumulatively, ``k(t) = min(K, 1 + floor(K t / a))``."""

    warmup_epochs = 0
    baby_steps_buckets: int = 4
    pacing_a: float = 0.8

    def build_arm_scheduler(self, case_ids: List[str]) -> BabyStepsScheduler:
        return BabyStepsScheduler(case_ids, self.load_difficulty(case_ids),
                                  n_buckets=min(int(self.baby_steps_buckets), len(case_ids)), pacing_a=self.pacing_a)


class nnUNetTrainerCLBabyStepsRandom(nnUNetTrainerCLBabySteps):
    order = "random"


class nnUNetTrainerCLBabyStepsAnti(nnUNetTrainerCLBabySteps):
    order = "anti"


# ------------------------------------------------------------------------------------ dynamic curricula

class nnUNetTrainerCLDIH(_FamilyTrainer):
    """Dynamic instance hardness (Zhou, Wang & Bilmes 2020): running average of each case's raw loss change per unit
    of learning rate, a subset drawn ∝ ``exp(beta r / mean r)`` shrinking from all cases to ``dih_floor``."""

    warmup_epochs = 5
    dih_gamma: float = 0.5
    dih_beta: float = 3.0
    dih_shrink: float = 0.95
    dih_floor: float = 0.3

    def build_arm_scheduler(self, case_ids: List[str]) -> DIHScheduler:
        return DIHScheduler(case_ids, gamma=self.dih_gamma, beta=self.dih_beta, shrink=self.dih_shrink,
                            floor=self.dih_floor, warmup_epochs=self.warmup_epochs, min_cases=self.min_cases,
                            initial_lr=float(self.initial_lr), num_epochs=int(self.num_epochs))


class nnUNetTrainerCLDIHRandom(nnUNetTrainerCLDIH):
    order = "random"


class nnUNetTrainerCLDIHAnti(nnUNetTrainerCLDIH):
    order = "anti"


class nnUNetTrainerCLSuperLoss(_FamilyTrainer):
    """SuperLoss (Castells et al. 2020): uniform sampling, each sample's loss (every deep-supervision output)
    weighted by ``sigma* = exp(-W0(0.5 max(-2/e, (l - tau)/lam)))``, ``tau`` the running mean loss. One warm-up
    epoch measures the losses ``tau`` starts from (no weighting until then: nnU-Net's loss)."""

    warmup_epochs = 1
    exploration_epsilon = 0.0
    superloss_lambda: float = 1.0

    sample_weights = scheduler_sample_weights

    def build_arm_scheduler(self, case_ids: List[str]) -> SuperLossScheduler:
        return SuperLossScheduler(case_ids, lam=self.superloss_lambda)


class nnUNetTrainerCLSuperLossRandom(nnUNetTrainerCLSuperLoss):
    order = "random"


class nnUNetTrainerCLSuperLossAnti(nnUNetTrainerCLSuperLoss):
    order = "anti"


class nnUNetTrainerCLSelfPacedDiversity(_FamilyTrainer):
    """Self-paced learning with diversity (Jiang et al. 2014), SPLD rank rule within groups of
    ``spld_group_key`` (``"lesion_band"``, ``"vendor"`` or any case_metadata.json field)."""

    warmup_epochs = 5
    pacing: str = "root"
    pacing_a: float = 0.8
    pacing_b: float = 0.3
    spld_gamma_rel: float = 0.2
    spld_group_key: str = "lesion_band"

    def case_groups(self, case_ids: List[str]) -> List[str]:
        try:
            metadata = load_case_metadata(self.raw_dataset_folder())
        except DatasetError as e:
            self.print_to_log_file(f"curriculum WARNING: {e}; SPLD uses a single group")
            return ["all"] * len(case_ids)
        groups = groups_from_metadata(metadata, case_ids, self.spld_group_key)
        self.print_to_log_file(f"curriculum SPLD groups by {self.spld_group_key}: "
                               f"{ {g: list(groups.values()).count(g) for g in sorted(set(groups.values()))} }")
        return [groups[c] for c in case_ids]

    def build_arm_scheduler(self, case_ids: List[str]) -> SPLDScheduler:
        return SPLDScheduler(case_ids, self.case_groups(case_ids), pacing=self.pacing, pacing_a=self.pacing_a,
                             pacing_b=self.pacing_b, min_cases=self.min_cases, gamma_rel=self.spld_gamma_rel)


class nnUNetTrainerCLSelfPacedDiversityRandom(nnUNetTrainerCLSelfPacedDiversity):
    order = "random"


class nnUNetTrainerCLSelfPacedDiversityAnti(nnUNetTrainerCLSelfPacedDiversity):
    order = "anti"


class nnUNetTrainerCLTeacherStudent(_FamilyTrainer):
    """Teacher-student curriculum (Matiisen et al. 2017), Window teacher over ``bandit_buckets`` difficulty buckets
    (fixed difficulty as in Predefined): tasks chosen by the absolute slope of their recent loss, with one
    exploration rule, ``bandit_exploration`` = ``"boltzmann"`` (``bandit_temperature``) or ``"epsilon_greedy"``
    (``bandit_epsilon``)."""

    warmup_epochs = 1
    exploration_epsilon = 0.0  # the bandit explores on its own
    bandit_buckets: int = 3
    bandit_window: int = 5
    bandit_exploration: str = "boltzmann"
    bandit_temperature: float = 0.5
    bandit_epsilon: float = 0.1

    def build_arm_scheduler(self, case_ids: List[str]) -> TeacherStudentScheduler:
        return TeacherStudentScheduler(case_ids, self.load_difficulty(case_ids),
                                       n_buckets=min(int(self.bandit_buckets), len(case_ids)),
                                       window=self.bandit_window, exploration=self.bandit_exploration,
                                       temperature=self.bandit_temperature, epsilon=self.bandit_epsilon)


class nnUNetTrainerCLTeacherStudentRandom(nnUNetTrainerCLTeacherStudent):
    order = "random"


class nnUNetTrainerCLTeacherStudentAnti(nnUNetTrainerCLTeacherStudent):
    order = "anti"


# ------------------------------------------------------------------------------------ curriculum by smoothing

class nnUNetTrainerCLSmoothing(nnUNetTrainerCurriculum):
    """Curriculum by smoothing (Sinha et al. 2020): the output of every spatial convolution (encoder and decoder;
    ``smoothing_where = "stages"``: only each encoder stage's output) blurred with a Gaussian whose ``sigma``
    (feature-map voxels) decays ``sigma0 decay^floor(epoch / every)`` and is 0 below ``sigma_min`` or from progress
    ``zero_after`` on; sampling stays uniform. No Random/Anti controls: there is no order; compare with
    ``nnUNetTrainerClipsBase``. ``torch.compile`` is off (forward hooks)."""

    warmup_epochs = 0
    exploration_epsilon = 0.0
    smoothing_sigma0: float = 1.0
    smoothing_decay: float = 0.9
    smoothing_every: int = 5
    smoothing_sigma_min: float = 0.1
    smoothing_zero_after: float = 0.5
    #: "conv": after every spatial convolution (the paper); "stages": after each encoder stage only
    smoothing_where: str = "conv"

    _blur = None

    def _do_i_compile(self):
        return False

    def build_scheduler(self, case_ids: List[str]) -> SmoothingScheduler:
        return SmoothingScheduler(case_ids, num_epochs=self.num_epochs, sigma0=self.smoothing_sigma0,
                                  decay=self.smoothing_decay, every=self.smoothing_every,
                                  sigma_min=self.smoothing_sigma_min, zero_after=self.smoothing_zero_after)

    def on_train_start(self):
        super().on_train_start()
        from clips_nnunet.trainers.smoothing_trainer import FeatureBlur

        self._blur = FeatureBlur(self.network, where=self.smoothing_where)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._blur.sigma = self._cl_scheduler.sigma(int(self.current_epoch))
        self.print_to_log_file(f"curriculum by smoothing: feature blur sigma {self._blur.sigma:.4g}")

    def on_train_end(self):
        if self._blur is not None:
            self._blur.remove()
        super().on_train_end()


#: every trainer of the family (for the shim, docs and tests)
FAMILY_TRAINERS = sorted(name for name, obj in list(globals().items())
                         if name.startswith("nnUNetTrainerCL") and isinstance(obj, type))
