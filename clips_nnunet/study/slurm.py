"""A study on a SLURM cluster: array jobs, one task per run (``clips-nnunet study CONFIG --slurm [sbatch options]``).

Written into ``<study_dir>/slurm/``:

- ``prepare.sbatch``: ``clips-nnunet study CONFIG --prepare-only`` (dataset, plans, preprocessing, splits: once);
- ``run.sbatch``: ``clips-nnunet study CONFIG --run-index`` (the run whose index is ``SLURM_ARRAY_TASK_ID``);
- ``report.sbatch``: ``clips-nnunet study CONFIG --report-only``;
- ``runs.json``: the run list the indices refer to (an array task refuses to run if the plan changed since);
- ``submit.sh``: submits prepare, then three arrays of ``run.sbatch`` (teachers, runs without a teacher, then the
  teachers' students after every teacher task succeeded), then the report after all of them ended.

The sbatch options given on the command line (``--partition gpu --gres gpu:1 --time 2:00:00``...) go to every job.
The jobs inherit the submitting shell's environment (sbatch's default ``--export=ALL``): activate the Python
environment and set ``nnUNet_extTrainer`` extras before ``bash submit.sh``.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from clips_nnunet.io_utils import atomic_write_json, atomic_write_text
from clips_nnunet.nnunet_env import bin_path
from clips_nnunet.study.config import StudyConfig
from clips_nnunet.study.layout import RunSpec, runs_by_role

__all__ = ["array_spec", "write_slurm_scripts", "SLURM_DIR", "GpuEstimate", "gpu_estimate"]

SLURM_DIR = "slurm"
#: submit.sh variable and array-job comment for each run role, in submission order
ROLE_JOBS = (("teacher", "teachers", "teacher arms on every fold at the teacher seed"),
             ("independent", "runs", "runs that need no teacher"),
             ("student", "students", "runs that read a teacher's difficulty (after every teacher task succeeded)"))


@dataclasses.dataclass(frozen=True)
class GpuEstimate:
    """The GPU time of a study's runs: training iterations (each run's budget, ``budget_factor`` and the teachers'
    extra folds included), the per-epoch validation iterations (counted at the training rate: an upper bound for
    forward-only steps), ``gpu_seconds_per_run`` per run (start-up, final validation), and the hours they make."""

    n_jobs: int
    train_iterations: int
    val_iterations: int
    seconds_per_iteration: float
    seconds_per_run: float

    @property
    def gpu_hours(self) -> float:
        return ((self.train_iterations + self.val_iterations) * self.seconds_per_iteration
                + self.n_jobs * self.seconds_per_run) / 3600.0

    def line(self) -> str:
        return (f"{self.n_jobs} array jobs (one run each); GPU-hour estimate: {self.gpu_hours:,.1f} h = "
                f"({self.train_iterations:,} training + {self.val_iterations:,} per-epoch validation iterations) x "
                f"{self.seconds_per_iteration:g} s (gpu_seconds_per_iteration) + {self.n_jobs} x "
                f"{self.seconds_per_run:g} s per run (gpu_seconds_per_run); plus the prepare and report jobs")


def gpu_estimate(config: StudyConfig, runs: Sequence[RunSpec]) -> GpuEstimate:
    """:class:`GpuEstimate` of ``runs`` (the study's run list, :func:`clips_nnunet.study.layout.plan_runs`)."""
    train = sum(config.run_iterations(r.trainer.name) for r in runs)
    val = sum(config.epochs * config.val_iterations_per_epoch * config.trainer(r.trainer.name).budget_factor
              for r in runs)
    return GpuEstimate(len(runs), train, val, config.gpu_seconds_per_iteration, config.gpu_seconds_per_run)


def array_spec(indices: Sequence[int]) -> str:
    """sbatch ``--array`` value of sorted unique indices, consecutive ones as ranges: ``[0, 1, 2, 5] -> "0-2,5"``."""
    values = sorted(set(int(i) for i in indices))
    if not values or values[0] < 0:
        raise ValueError(f"array indices must be a non-empty list of integers >= 0, got {list(indices)}")
    parts: List[str] = []
    start = prev = values[0]
    for v in values[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ",".join(parts)


def _job_script(study_cmd: Sequence[str], output: Path, workdir: Path, comment: str) -> str:
    """A batch script: the log file, ``set -euo pipefail``, the working folder, the one clips-nnunet command."""
    lines = ["#!/bin/bash", f"#SBATCH --output={output}", f"# {comment}", "set -euo pipefail",
             f"cd {shlex.quote(str(workdir))}", f"exec {shlex.join(study_cmd)}", ""]
    return "\n".join(lines)


def _submit_script(config: StudyConfig, roles: Dict[str, List[int]], sbatch_options: Sequence[str],
                   folder: Path) -> str:
    """``submit.sh``: one sbatch call per job with its array indices and dependencies."""
    n_runs = sum(len(v) for v in roles.values())
    lines = ["#!/bin/bash",
             f"# Generated by clips-nnunet study --slurm for study {config.name!r}: {n_runs} runs "
             f"({', '.join(f'{len(roles[r])} {r}' for r, _, _ in ROLE_JOBS)}). Submit with: bash {folder}/submit.sh",
             "set -euo pipefail",
             f"SBATCH_OPTIONS=({shlex.join(sbatch_options)})",
             f"SLURM_SCRIPTS={shlex.quote(str(folder))}",
             "submit() {  # prints the job id (sbatch --parsable may add ';cluster')",
             '    local id',
             '    id=$(sbatch --parsable "${SBATCH_OPTIONS[@]}" "$@")',
             '    echo "${id%%;*}"',
             "}",
             f"prepare=$(submit --job-name {shlex.quote(f'clips-{config.name}-prepare')} "
             '"$SLURM_SCRIPTS/prepare.sbatch")']
    after_all = []
    for role, var, comment in ROLE_JOBS:
        if not roles[role]:
            continue
        depends = "afterok:$teachers --kill-on-invalid-dep=yes" if role == "student" and roles["teacher"] \
            else "afterok:$prepare"
        lines += [f"# {comment}",
                  f"{var}=$(submit --job-name {shlex.quote(f'clips-{config.name}-{var}')} "
                  f"--array {array_spec(roles[role])} --dependency {depends} \"$SLURM_SCRIPTS/run.sbatch\")"]
        after_all.append(f"${var}")
    report_after = ":".join(after_all) if after_all else "$prepare"
    lines += [f"report=$(submit --job-name {shlex.quote(f'clips-{config.name}-report')} "
              f"--dependency afterany:{report_after} \"$SLURM_SCRIPTS/report.sbatch\")",
              'echo "submitted study ' + config.name + ': prepare $prepare'
              + "".join(f", {var} ${var}" for role, var, _ in ROLE_JOBS if roles[role])
              + ', report $report (logs in $SLURM_SCRIPTS/logs)"', ""]
    return "\n".join(lines)


def write_slurm_scripts(config: StudyConfig, config_path: Path, sbatch_options: Sequence[str] = (),
                        workdir: Optional[Path] = None, echo: bool = True) -> Path:
    """Write the SLURM scripts of the study into ``<study_dir>/slurm`` (see the module docstring); returns the path
    of ``submit.sh``. ``config_path`` is the study YAML the jobs read; ``workdir`` the folder the jobs start in
    (default: the current one)."""
    from clips_nnunet.study.runner import set_up_study

    plan = set_up_study(config, prepare=False, echo=echo)
    print(f"[study] {config.name}: {gpu_estimate(config, plan.runs).line()}", flush=True)
    roles = runs_by_role(plan.config, plan.runs)
    folder = config.study_dir / SLURM_DIR
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "runs.json", {"runs": [r.label for r in plan.runs], "roles": roles,
                                             "n_splits": plan.n_splits})
    base = [bin_path("clips-nnunet"), "study", str(Path(config_path).resolve()), "--study-dir", str(config.study_dir)]
    workdir = Path(workdir or os.getcwd()).resolve()
    logs = folder / "logs"
    scripts = {"prepare.sbatch": _job_script([*base, "--prepare-only"], logs / "%x_%j.out", workdir,
                                             "dataset, plans, preprocessing and splits (once, before the runs)"),
               "run.sbatch": _job_script([*base, "--run-index"], logs / "%x_%A_%a.out", workdir,
                                         "one run: the run index is SLURM_ARRAY_TASK_ID (see runs.json)"),
               "report.sbatch": _job_script([*base, "--report-only"], logs / "%x_%j.out", workdir,
                                            "evaluation and report of the finished runs"),
               "submit.sh": _submit_script(config, roles, sbatch_options, folder)}
    for name, text in scripts.items():
        atomic_write_text(folder / name, text)
        os.chmod(folder / name, 0o755)
    if echo:
        print(f"[study] SLURM scripts for {len(plan.runs)} runs in {folder}; submit with: bash {folder / 'submit.sh'}",
              flush=True)
    return folder / "submit.sh"
