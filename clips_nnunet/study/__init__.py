"""Curriculum study harness: does a curriculum beat the baseline at the same training budget?

A study is one YAML file (see ``benchmarks/learning/``). The harness

1. prepares the dataset (an existing nnU-Net dataset id, the tiny synthetic generator
   :func:`clips_nnunet.synthetic.raw.make_synthetic_raw_dataset`, or the DICOM cohort generator
   ``clips-nnunet synth`` + ``clips-nnunet convert``), runs ``nnUNetv2_plan_and_preprocess`` and optionally writes a
   difficulty-stratified ``splits_final.json`` (:mod:`.dataset`);
2. writes one *budget subclass* per arm in ``study_dir/ext/clips_study_trainers.py`` (:mod:`.arms`): imports and
   class attributes only; the budget and the record of drawn case keys are the mixins of
   :mod:`clips_nnunet.trainers.mixins`, seeding is the clips trainers' ``CLIPS_SEED``;
3. runs every (arm, fold, seed) through nnU-Net's own ``nnUNetv2_train`` as a subprocess, each seed into its own
   results root ``study_dir/seed_S/nnUNet_results`` with ``CLIPS_SEED=S`` (:mod:`.layout`, :mod:`.runner`); a
   finished run is skipped, an interrupted one continues with ``--c``; on a cluster, one SLURM array task per run
   (:mod:`.slurm`, ``--run-index``);
4. for transfer-teacher arms, first trains the teacher on *all* folds at the teacher seed and scores each case by
   the fold model that never saw it (``clips-nnunet score``), passed in ``CLIPS_DIFFICULTY_CSV`` (:mod:`.teacher`);
5. compares the out-of-fold predictions (Dice, TMTV, autoPET FP/FN volumes) run by run and writes one Markdown +
   PNG report with budgets, the convergence ladder, take-off, the A/A check and run-level mean differences with
   95 % intervals against the baseline and the controls, and ``per_run_case.csv`` (:mod:`.report`,
   :mod:`.report_sections`).

Every nnU-Net command is printed before it runs, so it can be copied.
"""
from clips_nnunet.study.arms import GENERATED_MODULE, resolve_arms, study_trainer_classes, write_study_trainers
from clips_nnunet.study.config import (StudyConfig, StudyConfigError, TrainerSpec, load_study_config,
                                       parse_study_config, study_class_name)
from clips_nnunet.study.dataset import (add_derived_configuration, case_difficulty_from_metadata, prepare_dataset,
                                        resolve_device, write_stratified_splits)
from clips_nnunet.study.layout import (RunSpec, build_train_command, fold_dir, plan_runs, run_is_finished,
                                       run_role, seed_results_root, study_environment, teacher_folds,
                                       teacher_results_root, trainer_output_dir)
from clips_nnunet.study.report import publish_report, study_groups, write_report
from clips_nnunet.study.runner import read_status, report_config, run_index, run_study, set_up_study
from clips_nnunet.study.slurm import GpuEstimate, array_spec, gpu_estimate, write_slurm_scripts
from clips_nnunet.study.teacher import compute_teacher_difficulty, training_cases_difficulty_csv

__all__ = [
    "StudyConfigError", "TrainerSpec", "StudyConfig", "load_study_config", "parse_study_config",
    "study_class_name", "write_study_trainers", "study_trainer_classes", "resolve_arms", "GENERATED_MODULE",
    "RunSpec", "plan_runs", "run_role", "run_is_finished", "build_train_command", "study_environment", "fold_dir",
    "seed_results_root", "teacher_results_root", "teacher_folds", "trainer_output_dir", "run_study", "run_index",
    "set_up_study", "read_status", "report_config", "study_groups", "write_report", "publish_report",
    "add_derived_configuration", "prepare_dataset", "case_difficulty_from_metadata", "write_stratified_splits",
    "resolve_device", "compute_teacher_difficulty", "training_cases_difficulty_csv", "array_spec",
    "write_slurm_scripts", "GpuEstimate", "gpu_estimate",
]
