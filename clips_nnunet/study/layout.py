"""Where a study's runs live, in which order they run, and the command and environment of each.

Layout of ``study_dir``::

    nnUNet_raw/, nnUNet_preprocessed/         the dataset (shared by every run)
    ext/clips_study_trainers.py               generated budget subclasses (nnUNet_extTrainer)
    seed_S/nnUNet_results/                    the runs of seed S (CLIPS_SEED=S)
    teacher_seed_T/nnUNet_results/            a teacher's extra folds (folds the study does not evaluate)
    difficulty_<teacher>.csv                  the teacher's out-of-fold difficulty
    logs/, status/, report/, slurm/
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from clips_nnunet.io_utils import read_json
from clips_nnunet.nnunet_env import nnunet_environment
from clips_nnunet.study.config import StudyConfig, TrainerSpec

__all__ = ["RunSpec", "seed_results_root", "teacher_results_root", "trainer_output_dir", "fold_dir",
           "run_is_finished", "plan_runs", "teacher_folds", "split_count", "run_role", "build_train_command",
           "study_environment", "run_log_path", "teacher_csv_path", "status_path", "runs_by_role", "ROLES"]

#: Roles of a run in the execution order (SLURM: one array job per role).
ROLES = ("teacher", "independent", "student")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One nnUNetv2_train run: arm, fold, seed and the results root it writes into."""

    trainer: TrainerSpec
    fold: int
    seed: int
    results_root: Path
    purpose: str = "study"  # or "teacher"

    @property
    def label(self) -> str:
        return f"{self.trainer.name} fold {self.fold} seed {self.seed}" + (
            " (teacher)" if self.purpose == "teacher" else "")


def seed_results_root(config: StudyConfig, seed: int) -> Path:
    return config.study_dir / f"seed_{seed}" / "nnUNet_results"


def teacher_results_root(config: StudyConfig) -> Path:
    return config.study_dir / f"teacher_seed_{config.teacher_seed}" / "nnUNet_results"


def trainer_output_dir(config: StudyConfig, results_root: Path, spec: TrainerSpec) -> Path:
    return Path(results_root) / config.dataset_folder_name / f"{spec.class_name}__{config.plans}__{config.configuration}"


def fold_dir(config: StudyConfig, run: RunSpec) -> Path:
    return trainer_output_dir(config, run.results_root, run.trainer) / f"fold_{run.fold}"


def run_log_path(config: StudyConfig, run: RunSpec) -> Path:
    return config.study_dir / "logs" / f"{run.trainer.name}_fold{run.fold}_seed{run.seed}_{run.purpose}.log"


def teacher_csv_path(config: StudyConfig, teacher: str) -> Path:
    """The teacher's out-of-fold difficulty of every case (``case_id,difficulty``)."""
    return config.study_dir / f"difficulty_{teacher}.csv"


def run_is_finished(folder: Path) -> bool:
    """A run is finished when nnU-Net wrote its final checkpoint and its validation summary."""
    folder = Path(folder)
    return (folder / "checkpoint_final.pth").is_file() and (folder / "validation" / "summary.json").is_file()


def split_count(config: StudyConfig) -> int:
    """Folds of the split: ``dataset.n_splits``, else those of an existing ``splits_final.json``, else nnU-Net's 5."""
    if config.n_splits is not None:
        return config.n_splits
    splits = config.study_dir / "nnUNet_preprocessed" / config.dataset_folder_name / "splits_final.json"
    return len(read_json(splits)) if splits.is_file() else 5


def teacher_folds(config: StudyConfig, n_splits: Optional[int] = None) -> Tuple[int, ...]:
    """Every fold of the split: a teacher must have predicted each case out of fold."""
    return tuple(range(n_splits or config.n_splits or 5))


def plan_runs(config: StudyConfig, available: Optional[Iterable[str]] = None, n_splits: Optional[int] = None
              ) -> List[RunSpec]:
    """All runs in execution order. Teachers first: their study folds at the teacher seed (in the seed root; they
    are also the teacher's runs for those folds), then their other folds (teacher root); then seed by seed (so an
    interrupted study has whole seeds), within a seed the arms in config order. The position of a run in this list
    is its run index (``clips-nnunet study --run-index I``)."""
    names = set(available) if available is not None else {t.name for t in config.trainers}
    runs: List[RunSpec] = []
    teachers = sorted({t.teacher for t in config.trainers if t.teacher and t.name in names and t.teacher in names})
    for teacher in teachers:
        spec = config.trainer(teacher)
        for fold in teacher_folds(config, n_splits):
            if fold in config.folds and config.teacher_seed in config.seeds:
                runs.append(RunSpec(spec, fold, config.teacher_seed, seed_results_root(config, config.teacher_seed)))
            else:
                runs.append(RunSpec(spec, fold, config.teacher_seed, teacher_results_root(config), "teacher"))
    for seed in config.seeds:
        for spec in config.trainers:
            if spec.name not in names:
                continue
            for fold in config.folds:
                run = RunSpec(spec, fold, seed, seed_results_root(config, seed))
                if run not in runs:
                    runs.append(run)
    return runs


def run_role(config: StudyConfig, run: RunSpec) -> str:
    """``teacher`` (a teacher's fold at the teacher seed: needed before its students), ``student`` (needs a
    teacher's difficulty) or ``independent``."""
    if run.trainer.name in config.teachers and run.seed == config.teacher_seed:
        return "teacher"
    return "student" if run.trainer.teacher else "independent"


def build_train_command(config: StudyConfig, run: RunSpec, device: str, resume: bool = False) -> List[str]:
    """The ``nnUNetv2_train`` command line of one run (what a user would type)."""
    cmd = ["nnUNetv2_train", str(config.dataset_id), config.configuration, str(run.fold), "-tr",
           run.trainer.class_name, "-p", config.plans, "-device", device]
    if resume:
        cmd.append("--c")
    return cmd


def study_environment(config: StudyConfig, run: Optional[RunSpec] = None,
                      difficulty_csv: Optional[Path] = None, base_env: Optional[Mapping[str, str]] = None
                      ) -> Dict[str, str]:
    """Environment of the nnU-Net subprocesses: the study's nnUNet_raw/preprocessed, the run's results root,
    the study ext folder after ours, ``CLIPS_SEED`` and (teacher students) ``CLIPS_DIFFICULTY_CSV``."""
    results = run.results_root if run else seed_results_root(config, config.seeds[0])
    env = nnunet_environment(config.study_dir, ext_folders=[config.study_dir / "ext"], results=results,
                             base_env=base_env)
    env.setdefault("nnUNet_def_n_proc", "1")
    env["nnUNet_n_proc_DA"] = str(config.n_proc_da)
    env.setdefault("OMP_NUM_THREADS", "1" if config.device != "cuda" else env.get("OMP_NUM_THREADS", "4"))
    if run is not None:
        env["CLIPS_SEED"] = str(run.seed)
    if difficulty_csv is not None:
        env["CLIPS_DIFFICULTY_CSV"] = str(difficulty_csv)
    return env


def status_path(config: StudyConfig, run: RunSpec) -> Path:
    """Per-run status file written by ``--run-index`` (array tasks never write one shared file)."""
    safe = f"{run.trainer.name}_fold{run.fold}_seed{run.seed}_{run.purpose}"
    return config.study_dir / "status" / f"{safe}.json"


def runs_by_role(config: StudyConfig, runs: Sequence[RunSpec]) -> Dict[str, List[int]]:
    """Run indices per role (:data:`ROLES`), each in execution order."""
    out: Dict[str, List[int]] = {role: [] for role in ROLES}
    for i, run in enumerate(runs):
        out[run_role(config, run)].append(i)
    return out

