"""``clips-nnunet study``: the curriculum study harness (whole study, one run by index, SLURM scripts, report).
Only argument parsing here; the work is in the :mod:`clips_nnunet.study` package."""
from __future__ import annotations

import argparse
from pathlib import Path


def run_study(args: argparse.Namespace) -> int:
    from clips_nnunet.study import load_study_config

    config = load_study_config(Path(args.config), Path(args.study_dir) if args.study_dir else None)
    if args.slurm is not None:
        from clips_nnunet.study import write_slurm_scripts

        print(f"submit with: bash {write_slurm_scripts(config, Path(args.config), args.slurm)}")
        return 0
    if args.report_only:
        return _report_only(config, args.publish)
    if args.prepare_only:
        from clips_nnunet.study import set_up_study

        plan = set_up_study(config, prepare=True)
        print(f"prepared: {len(plan.runs)} runs ({plan.config.study_dir})")
        return 0
    if args.run_index is not None:
        from clips_nnunet.study import run_index

        index = None if args.run_index == "slurm" else _index(args.run_index)
        status = run_index(config, index)
    else:
        from clips_nnunet.study import run_study as _run

        status = _run(config, dry_run=args.dry_run, max_runs=args.max_runs)
    failed = [k for k, v in status["runs"].items() if str(v).startswith(("failed", "not run"))]
    if status.get("report"):
        print(f"report: {status['report']}")
        if args.publish:
            from clips_nnunet.study import publish_report

            print(f"published: {publish_report(config, Path(args.publish))}")
    for label, state in status["runs"].items() if args.run_index is not None else ():
        print(f"{label}: {state}")
    if failed:
        print(f"{len(failed)} run(s) failed or not run: {', '.join(failed)} (logs in {config.study_dir / 'logs'})")
    return 1 if failed else 0


def _index(text: str) -> int:
    from clips_nnunet.errors import ClipsError

    if not text.isdigit():
        raise ClipsError(f"--run-index must be a run number >= 0, got {text!r}")
    return int(text)


def _report_only(config, publish) -> int:
    from clips_nnunet.study import publish_report, read_status, report_config, write_report

    config = report_config(config)
    print(f"report: {write_report(config, read_status(config))}")
    if publish:
        print(f"published: {publish_report(config, Path(publish))}")
    return 0


def register(subparsers) -> None:
    """Add ``study``."""
    s = subparsers.add_parser(
        "study", help="run a curriculum study (trainers x folds x seeds) and write its run-level report",
        description="Runs every (trainer, fold, seed) of a study YAML through nnUNetv2_train (each seed in its own "
                    "nnUNet_results root, CLIPS_SEED set), skipping finished runs, then evaluates the out-of-fold "
                    "predictions and writes report.md/report.png/per_run_case.csv: budgets, convergence ladder, "
                    "take-off, A/A check, and run-level mean differences with 95 % intervals against the baseline "
                    "and the controls, overall and on the hardest third (Holm over every comparison). See "
                    "benchmarks/learning/README.md.")
    s.add_argument("config", help="study YAML (e.g. benchmarks/learning/synthetic_cpu.yaml)")
    s.add_argument("--study-dir", help="output folder (overrides the config's study_dir)")
    s.add_argument("--dry-run", action="store_true", help="print the nnUNetv2_train commands, run nothing")
    s.add_argument("--max-runs", type=int, default=None, help="stop after starting this many runs (resume later)")
    s.add_argument("--report-only", action="store_true", help="only (re)write the report from finished runs")
    s.add_argument("--publish", metavar="DIR", help="once the report is written, copy it to DIR (e.g. "
                   "docs/results/NAME) with the study folder written as <study_dir>")
    s.add_argument("--prepare-only", action="store_true", help="only prepare the dataset (generate, plan and "
                   "preprocess, splits) and the budget subclasses; what a SLURM study runs first")
    s.add_argument("--run-index", nargs="?", const="slurm", metavar="I", help="run exactly run I of the study "
                   "(the order of --dry-run); without I, the SLURM array task id SLURM_ARRAY_TASK_ID")
    s.add_argument("--slurm", nargs=argparse.REMAINDER, metavar="SBATCH_OPTION", help="write SLURM scripts into "
                   "<study_dir>/slurm (prepare job, one array task per run with teachers first, report job); the "
                   "options after --slurm go to every sbatch call, e.g. --slurm --partition gpu --gres gpu:1. "
                   "Must come last")
    s.set_defaults(func=run_study)
