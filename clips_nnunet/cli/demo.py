"""``clips-nnunet demo`` (the main job end to end on a synthetic DICOM cohort) and ``clips-nnunet study`` (the
curriculum study harness). Only argument parsing here; the work is in :mod:`clips_nnunet.demo` and
:mod:`clips_nnunet.study`."""
from __future__ import annotations

import argparse
from pathlib import Path


def run_demo(args: argparse.Namespace) -> int:
    from clips_nnunet.demo import DemoOptions, run_demo as _run

    options = DemoOptions(workdir=Path(args.workdir), patients=args.patients, minutes=args.minutes, tmtv=args.tmtv,
                          device=args.device, dataset_id=args.dataset_id, dry_run=args.dry_run)
    return _run(options)


def run_study(args: argparse.Namespace) -> int:
    from clips_nnunet.study import load_study_config, run_study as _run, write_report

    config = load_study_config(Path(args.config), Path(args.study_dir) if args.study_dir else None)
    if args.report_only:
        path = write_report(config, _read_status(config.study_dir))
        print(f"report: {path}")
        if args.publish:
            from clips_nnunet.study import publish_report

            print(f"published: {publish_report(config, Path(args.publish))}")
        return 0
    status = _run(config, dry_run=args.dry_run, max_runs=args.max_runs)
    failed = [k for k, v in status["runs"].items() if str(v).startswith("failed")]
    if status.get("report"):
        print(f"report: {status['report']}")
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)} (logs in {config.study_dir / 'logs'})")
    return 1 if failed else 0


def _read_status(study_dir: Path):
    from clips_nnunet.io_utils import read_json

    path = study_dir / "study_status.json"
    return read_json(path) if path.is_file() else None


def register(subparsers) -> None:
    """Add ``demo`` and ``study``."""
    p = subparsers.add_parser(
        "demo", help="the main job end to end on a synthetic DICOM cohort (about 15 min on 2 CPU cores)",
        description="Synthetic PET/CT DICOM cohort -> clips-nnunet convert -> nnUNetv2_plan_and_preprocess -> "
                    "nnUNetv2_train nnUNetTrainerCLSelfPaced (bounded budget) -> clips-nnunet predict on two "
                    "held-out DICOM patients (mask, DICOM SEG, RTSTRUCT, report, MIP) -> clips-nnunet evaluate. "
                    "Each command is printed before it runs so you can copy it for your own data. Re-running "
                    "skips finished steps.")
    p.add_argument("--workdir", default="clips_demo", help="folder for everything the demo writes (default: "
                   "./clips_demo); nnUNet_raw/preprocessed/results live inside it")
    p.add_argument("--patients", type=int, default=14, help="synthetic training patients (default 14; two more "
                   "are generated as held-out patients)")
    p.add_argument("--minutes", type=float, default=14.0, help="time budget of the whole demo in minutes; training gets what "
                   "the other steps leave (about 8 min on 2 CPU cores), fitted from timed iterations (default 14)")
    p.add_argument("--tmtv", action="store_true", help="also train the TMTV-Net recipe (nnUNetTrainerTMTV) and "
                   "predict with it")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="training/prediction device (auto: cuda when available)")
    p.add_argument("--dataset-id", type=int, default=981, help="nnU-Net dataset id for the demo (default 981)")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    p.set_defaults(func=run_demo)

    s = subparsers.add_parser(
        "study", help="run a curriculum study (trainers x folds x seeds at equal budget) and write its report",
        description="Runs every (trainer, fold, seed) of a study YAML through nnUNetv2_train (each seed in its own "
                    "nnUNet_results root, CLIPS_SEED set), skipping finished runs, then evaluates the out-of-fold "
                    "predictions and writes report.md/report.png with paired Wilcoxon tests against the baseline "
                    "and the controls, overall and on the hardest third. See benchmarks/learning/README.md.")
    s.add_argument("config", help="study YAML (e.g. benchmarks/learning/synthetic_cpu.yaml)")
    s.add_argument("--study-dir", help="output folder (overrides the config's study_dir)")
    s.add_argument("--dry-run", action="store_true", help="print the nnUNetv2_train commands, run nothing")
    s.add_argument("--max-runs", type=int, default=None, help="stop after starting this many runs (resume later)")
    s.add_argument("--report-only", action="store_true", help="only (re)write the report from finished runs")
    s.add_argument("--publish", metavar="DIR", help="with --report-only: copy the report to DIR (e.g. "
                   "docs/results/NAME) with the study folder written as <study_dir>")
    s.set_defaults(func=run_study)
