"""``clips-nnunet demo``: the main job end to end on a synthetic DICOM cohort. Only argument parsing here; the
work is in :mod:`clips_nnunet.demo`."""
from __future__ import annotations

import argparse
from pathlib import Path


def run_demo(args: argparse.Namespace) -> int:
    from clips_nnunet.demo import DemoOptions, run_demo as _run

    options = DemoOptions(workdir=Path(args.workdir), patients=args.patients, minutes=args.minutes, tmtv=args.tmtv,
                          device=args.device, dataset_id=args.dataset_id, dry_run=args.dry_run)
    return _run(options)


def register(subparsers) -> None:
    """Add ``demo``."""
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
