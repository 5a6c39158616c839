"""Running a study: set it up, run every (arm, fold, seed) through ``nnUNetv2_train`` (a few at a time, teachers
before their students), or exactly one run by its index (what a SLURM array task calls).

A finished run (``checkpoint_final.pth`` and ``validation/summary.json``) is skipped; an interrupted one
continues with ``--c``; one that trained but lost its validation gets ``--val``. One failed run never stops the
study: its status says where its log is.
"""
from __future__ import annotations

import dataclasses
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from clips_nnunet.errors import ClipsError
from clips_nnunet.io_utils import atomic_write_json, read_json
from clips_nnunet.nnunet_env import ext_trainer_value, run_logged, shell_line, split_folders
from clips_nnunet.study.arms import resolve_arms, write_study_trainers
from clips_nnunet.study.config import StudyConfig
from clips_nnunet.study.dataset import prepare_dataset, resolve_device, with_dataset_name
from clips_nnunet.study.layout import (RunSpec, build_train_command, fold_dir, plan_runs, run_is_finished,
                                       run_log_path, split_count, status_path, study_environment, teacher_csv_path)
from clips_nnunet.study.teacher import teacher_difficulty_csv, training_cases_difficulty_csv

__all__ = ["StudyPlan", "set_up_study", "run_study", "run_index", "train_run", "read_status", "SLURM_INDEX_VARIABLE"]

SLURM_INDEX_VARIABLE = "SLURM_ARRAY_TASK_ID"
FINISHED, WAITING, READY = "finished", "waiting", "ready"


@dataclasses.dataclass
class StudyPlan:
    """A set-up study: the config (dataset name resolved), the device, the split's fold count, the runs in order
    and the status (``runs``: label -> state, ``missing_trainers``)."""

    config: StudyConfig
    device: str
    n_splits: int
    runs: List[RunSpec]
    status: Dict[str, Any]


def set_up_study(config: StudyConfig, prepare: bool = True, echo: bool = True) -> StudyPlan:
    """Find the arms' trainer classes, write the budget subclasses and ``study_config.json``, prepare the dataset
    (``prepare``; else only resolve its name) and list the runs in execution order."""
    config.study_dir.mkdir(parents=True, exist_ok=True)
    (config.study_dir / "ext").mkdir(exist_ok=True)
    ext_folders = split_folders(ext_trainer_value(os.environ.get("nnUNet_extTrainer")))
    modules, missing = resolve_arms(config, ext_folders, echo=echo)
    write_study_trainers(config, modules, config.study_dir / "ext")
    atomic_write_json(config.study_dir / "study_config.json", dataclasses.asdict(config))
    config = prepare_dataset(config, echo=echo) if prepare else config
    device = resolve_device(config.device) if prepare else config.device
    n_splits = split_count(config)
    status = {"runs": {}, "missing_trainers": missing, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return StudyPlan(config, device, n_splits, plan_runs(config, modules.keys(), n_splits), status)


def start_state(config: StudyConfig, run: RunSpec, n_splits: int, echo: bool = True) -> Tuple[str, Optional[Path]]:
    """``(finished | waiting | ready, difficulty CSV of the run or None)``: ``waiting`` while the run's teacher has
    unfinished folds (its difficulty is scored once they are all finished)."""
    if run_is_finished(fold_dir(config, run)):
        return FINISHED, None
    if run.trainer.teacher_csv is not None:  # an external teacher (e.g. an imported model): nothing to wait for
        if not Path(run.trainer.teacher_csv).is_file():
            raise ClipsError(f"teacher_csv {run.trainer.teacher_csv} of arm {run.trainer.name} does not exist: make it "
                             "with `clips-nnunet score MODEL --predict -i imagesTr -l labelsTr -o FILE`")
        return READY, training_cases_difficulty_csv(config, Path(run.trainer.teacher_csv), run.fold)
    if not run.trainer.teacher:
        return READY, None
    teacher_csv = teacher_difficulty_csv(config, run.trainer.teacher, n_splits, echo=echo)
    if teacher_csv is None:
        return WAITING, None
    return READY, training_cases_difficulty_csv(config, teacher_csv, run.fold)


def train_run(config: StudyConfig, run: RunSpec, device: str, difficulty_csv: Optional[Path] = None,
              echo: bool = True) -> str:
    """Train one run through ``nnUNetv2_train`` (``--c`` when a checkpoint exists, ``--val`` when only the
    validation is missing); returns its state (``finished in N s`` or ``failed (exit N, log NAME)``)."""
    folder = fold_dir(config, run)
    env = study_environment(config, run, difficulty_csv)
    cmd = build_train_command(config, run, device, resume=(folder / "checkpoint_latest.pth").is_file())
    log = run_log_path(config, run)
    t0 = time.time()
    rc = run_logged(cmd, env, log, config.run_timeout_s, echo)
    if rc == 0 and not run_is_finished(folder):
        # trained but validation missing (e.g. killed while validating): nnU-Net's --val redoes only that
        rc = run_logged([*build_train_command(config, run, device), "--val"], env, log, config.run_timeout_s, echo)
    if rc == 0 and run_is_finished(folder):
        return f"finished in {time.time() - t0:.0f} s"
    if echo:
        print(f"[study] {run.label} failed with exit code {rc}; see {log}", flush=True)
    return f"failed (exit {rc}, log {log.name})"


class _Scheduler:
    """Runs of a plan, ``parallel_runs`` at a time, in order; a run whose teacher is unfinished waits."""

    def __init__(self, plan: StudyPlan, echo: bool, max_runs: Optional[int]):
        from tqdm import tqdm

        self.plan, self.echo, self.max_runs = plan, echo, max_runs
        self.slots = max(1, plan.config.parallel_runs)
        self.pending: List[RunSpec] = list(plan.runs)
        self.running: Dict[Future, RunSpec] = {}
        self.started = 0
        self.bar = tqdm(total=len(plan.runs), desc=f"study {plan.config.name}", unit="run", disable=not echo)

    def record(self, run: RunSpec, state: str) -> None:
        self.plan.status["runs"][run.label] = state
        self.bar.update(1)

    def fill(self, pool: ThreadPoolExecutor) -> bool:
        """Start ready runs while slots are free; True when any run left the queue."""
        progressed = False
        for run in list(self.pending):
            if len(self.running) >= self.slots:
                break
            state, difficulty_csv = start_state(self.plan.config, run, self.plan.n_splits, self.echo)
            if state == WAITING:
                continue
            self.pending.remove(run)
            progressed = True
            if state == FINISHED:
                self.record(run, "skipped (finished)")
            elif self.max_runs is not None and self.started >= self.max_runs:
                self.record(run, "not started (max_runs)")
            else:
                self.started += 1
                future = pool.submit(train_run, self.plan.config, run, self.plan.device, difficulty_csv, self.echo)
                self.running[future] = run
        return progressed

    def collect(self) -> None:
        """Wait for one running run to end and record it."""
        done, _ = wait(list(self.running), return_when=FIRST_COMPLETED)
        for future in done:
            run = self.running.pop(future)
            try:
                self.record(run, future.result())
            except Exception as e:  # noqa: BLE001 - one broken run never stops the study
                self.record(run, f"failed ({type(e).__name__}: {e})")
            self.bar.set_postfix_str(run.label)
        atomic_write_json(self.plan.config.study_dir / "study_status.json", self.plan.status)

    def give_up_waiting(self) -> None:
        """Nothing runs and nothing can start: the runs left wait for a teacher that did not finish."""
        for run in self.pending:
            self.record(run, f"not run: teacher {run.trainer.teacher} has unfinished folds")
        self.pending.clear()

    def run(self) -> None:
        with ThreadPoolExecutor(max_workers=self.slots) as pool:
            while self.pending or self.running:
                progressed = self.fill(pool)
                if self.running:
                    self.collect()
                elif not progressed:
                    self.give_up_waiting()
        self.bar.close()


def _dry_run(plan: StudyPlan) -> None:
    """Print the command of every unfinished run (students with the CSV they will read); run nothing."""
    config = plan.config
    for run in plan.runs:
        if run_is_finished(fold_dir(config, run)):
            plan.status["runs"][run.label] = "skipped (finished)"
            continue
        csv_path = None
        if run.trainer.teacher:
            teacher_csv = teacher_csv_path(config, run.trainer.teacher)
            csv_path = teacher_csv.with_name(f"{teacher_csv.stem}_fold{run.fold}_train.csv")
        cmd = build_train_command(config, run, plan.device,
                                  resume=(fold_dir(config, run) / "checkpoint_latest.pth").is_file())
        print(f"$ {shell_line(cmd, study_environment(config, run, csv_path))}", flush=True)
        plan.status["runs"][run.label] = ("dry run" if csv_path is None else
                                          f"dry run (after teacher {run.trainer.teacher})")


def run_study(config: StudyConfig, dry_run: bool = False, echo: bool = True, max_runs: Optional[int] = None,
              report: bool = True) -> Dict[str, Any]:
    """Run the whole study (resumable) and write the report; returns a status dictionary
    (``runs``: per run label -> finished / skipped / failed / not run, ``report``: report path)."""
    plan = set_up_study(config, prepare=not dry_run, echo=echo)
    if dry_run:
        _dry_run(plan)
        return plan.status
    _Scheduler(plan, echo, max_runs).run()
    atomic_write_json(plan.config.study_dir / "study_status.json", plan.status)
    if report:
        from clips_nnunet.study.report import write_report

        plan.status["report"] = str(write_report(plan.config, plan.status))
    return plan.status


def index_from_environment(index: Optional[int]) -> int:
    """``index``, or the SLURM array task id (``SLURM_ARRAY_TASK_ID``) when ``index`` is None."""
    if index is not None:
        return int(index)
    value = os.environ.get(SLURM_INDEX_VARIABLE, "").strip()
    if not value.isdigit():
        raise ClipsError(f"--run-index without a number needs {SLURM_INDEX_VARIABLE} (set by SLURM in array "
                         f"tasks), got {value!r}; pass the index: --run-index I")
    return int(value)


def run_index(config: StudyConfig, index: Optional[int] = None, echo: bool = True) -> Dict[str, Any]:
    """Run exactly run ``index`` of the plan (``None``: ``SLURM_ARRAY_TASK_ID``); its state goes to
    ``study_dir/status/<run>.json``. A student whose teacher is unfinished fails with a message (the SLURM
    script starts students only after every teacher task succeeded)."""
    index = index_from_environment(index)
    plan = set_up_study(config, prepare=False, echo=echo)  # a wrong index fails before any data is touched
    if not 0 <= index < len(plan.runs):
        raise ClipsError(f"run index {index} is out of range: this study has {len(plan.runs)} runs "
                         f"(0..{len(plan.runs) - 1}); `clips-nnunet study CONFIG --dry-run` lists them")
    run = plan.runs[index]
    _check_submitted_plan(plan.config, index, run)
    plan.config = prepare_dataset(plan.config, echo=echo)  # done by the prepare job: only checks then
    plan.device = resolve_device(plan.config.device)
    state, difficulty_csv = start_state(plan.config, run, plan.n_splits, echo)
    if state == FINISHED:
        outcome = "skipped (finished)"
    elif state == WAITING:
        outcome = f"not run: teacher {run.trainer.teacher} has unfinished folds"
    else:
        outcome = train_run(plan.config, run, plan.device, difficulty_csv, echo)
    atomic_write_json(status_path(plan.config, run), {"index": index, "label": run.label, "state": outcome})
    plan.status["runs"][run.label] = outcome
    return plan.status


def _check_submitted_plan(config: StudyConfig, index: int, run: RunSpec) -> None:
    """When a SLURM submission wrote ``slurm/runs.json``, the run at ``index`` must still be the same run."""
    path = config.study_dir / "slurm" / "runs.json"
    if not path.is_file():
        return
    labels = read_json(path).get("runs", [])
    if index >= len(labels) or labels[index] != run.label:
        raise ClipsError(f"run index {index} is {run.label!r} now but was "
                         f"{labels[index] if index < len(labels) else 'absent'!r} when the SLURM scripts were written "
                         f"({path}); the study's arms or folds changed: write the scripts again with --slurm")


def read_status(config: StudyConfig) -> Optional[Dict[str, Any]]:
    """The study's status: ``study_status.json`` (whole-study runs) updated with the per-run files of
    ``--run-index`` (array tasks), in plan order where known; None when neither exists."""
    path = config.study_dir / "study_status.json"
    status: Optional[Dict[str, Any]] = read_json(path) if path.is_file() else None
    per_run = sorted((config.study_dir / "status").glob("*.json")) if (config.study_dir / "status").is_dir() else []
    if not per_run:
        return status
    status = status or {"runs": {}}
    entries = sorted((read_json(p) for p in per_run), key=lambda e: int(e.get("index", 0)))
    for entry in entries:
        status["runs"][entry["label"]] = entry["state"]
    return status


def report_config(config: StudyConfig) -> StudyConfig:
    """The config as the report needs it (the name of an ``existing`` dataset resolved)."""
    return with_dataset_name(config)
