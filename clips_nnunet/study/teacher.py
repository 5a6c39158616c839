"""Transfer-teacher difficulty: the teacher arm trained on every fold, each case scored by the fold model that never
saw it (``clips-nnunet score``), and the per-fold CSV a student run reads from ``CLIPS_DIFFICULTY_CSV``."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Optional

from clips_nnunet.errors import DatasetError
from clips_nnunet.io_utils import atomic_write_text, read_json
from clips_nnunet.nnunet_env import run_logged
from clips_nnunet.study.config import StudyConfig, TrainerSpec
from clips_nnunet.study.layout import (RunSpec, fold_dir, run_is_finished, seed_results_root, study_environment,
                                       teacher_csv_path, teacher_folds, teacher_results_root, trainer_output_dir)

__all__ = ["compute_teacher_difficulty", "training_cases_difficulty_csv", "ensure_teacher_fold_links",
           "teacher_difficulty_csv", "teacher_is_finished"]


def compute_teacher_difficulty(config: StudyConfig, teacher: TrainerSpec, out_csv: Path, echo: bool = True) -> Path:
    """Difficulty of every case from the teacher's out-of-fold predictions with ``clips-nnunet score`` (1 - Dice of
    the fold model that never trained on the case; CSV ``case_id,difficulty``, higher = harder)."""
    results = trainer_output_dir(config, teacher_results_root(config), teacher)
    env = study_environment(config, RunSpec(teacher, 0, config.teacher_seed, teacher_results_root(config),
                                            "teacher"))
    cmd = ["clips-nnunet", "score", str(results), "-o", str(out_csv), "--metric", "dice"]
    log = config.study_dir / "logs" / "score.log"
    if run_logged(cmd, env, log, echo=echo) != 0 or not out_csv.is_file():
        raise DatasetError(f"clips-nnunet score failed for teacher {teacher.name} ({results}); see {log}")
    return out_csv


def training_cases_difficulty_csv(config: StudyConfig, teacher_csv: Path, fold: int) -> Path:
    """The teacher CSV restricted to the training cases of ``fold`` (the trainer rejects ids it does not train on),
    written into the study folder (an external CSV's folder is left untouched)."""
    splits = read_json(config.study_dir / "nnUNet_preprocessed" / config.dataset_folder_name / "splits_final.json")
    train = set(splits[fold]["train"])
    with open(teacher_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    out = config.study_dir / f"{teacher_csv.stem}_fold{fold}_train.csv"
    text = "case_id,difficulty\n" + "".join(f"{r['case_id']},{r['difficulty']}\n" for r in rows
                                             if r["case_id"] in train)
    atomic_write_text(out, text)
    return out


def ensure_teacher_fold_links(config: StudyConfig, teacher: TrainerSpec) -> None:
    """Teacher folds that are also study folds at the teacher seed are the same run: link, do not train twice."""
    if config.teacher_seed not in config.seeds:
        return
    for fold in config.folds:
        src = fold_dir(config, RunSpec(teacher, fold, config.teacher_seed,
                                       seed_results_root(config, config.teacher_seed)))
        dst = fold_dir(config, RunSpec(teacher, fold, config.teacher_seed, teacher_results_root(config), "teacher"))
        if run_is_finished(src) and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.symlink(src, dst, target_is_directory=True)
            except FileExistsError:  # another array task linked it first
                pass


def teacher_is_finished(config: StudyConfig, teacher: TrainerSpec, n_splits: int) -> bool:
    """Every fold of the teacher finished (its study folds linked into the teacher root first)."""
    ensure_teacher_fold_links(config, teacher)
    runs = [RunSpec(teacher, f, config.teacher_seed, teacher_results_root(config), "teacher")
            for f in teacher_folds(config, n_splits)]
    return all(run_is_finished(fold_dir(config, r)) for r in runs)


def teacher_difficulty_csv(config: StudyConfig, teacher_name: str, n_splits: int, echo: bool = True
                           ) -> Optional[Path]:
    """The teacher's difficulty CSV, scored now if the teacher finished every fold and it is missing; ``None``
    while the teacher has unfinished folds."""
    teacher = config.trainer(teacher_name)
    path = teacher_csv_path(config, teacher_name)
    if path.is_file():
        return path
    if not teacher_is_finished(config, teacher, n_splits):
        return None
    return compute_teacher_difficulty(config, teacher, path, echo=echo)
