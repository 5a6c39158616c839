"""``clips-nnunet demo``: the main job end to end on a synthetic DICOM cohort. Only argument parsing here; the
work is in :mod:`clips_nnunet.demo`."""
from __future__ import annotations

import argparse
from pathlib import Path

#: the demo's default number of epochs (clips_nnunet.demo.pipeline.DEFAULT_EPOCHS; kept here so that the help
#: does not import the demo; tests/test_demo.py checks that both agree)
DEFAULT_EPOCHS = 50


def run_demo(args: argparse.Namespace) -> int:
    from clips_nnunet.demo import DemoOptions, run_demo as _run

    options = DemoOptions(workdir=Path(args.workdir), patients=args.patients, epochs=args.epochs, seed=args.seed,
                          tmtv=args.tmtv, device=args.device, dataset_id=args.dataset_id, dry_run=args.dry_run,
                          phantom=args.phantom)
    return _run(options)


def register(subparsers) -> None:
    """Add ``demo``."""
    p = subparsers.add_parser(
        "demo", help="the main job end to end on a synthetic DICOM cohort (23-34 min measured on 2 shared CPU cores)",
        description="Synthetic PET/CT DICOM cohort -> clips-nnunet convert -> nnUNetv2_plan_and_preprocess -> "
                    "nnUNetv2_train nnUNetTrainerCLSelfPaced (a fixed number of epochs, seeded) -> clips-nnunet "
                    "predict on two held-out DICOM patients (mask, DICOM SEG, RTSTRUCT, report, MIP) -> "
                    "clips-nnunet evaluate -> self-check. Each command is printed before it runs so you can copy "
                    "it for your own data. Re-running skips finished steps. Exit code 0 only for a useful model "
                    "(held-out mean Dice >= 0.5); 1 when the model fails that check (the cause is printed).")
    p.add_argument("--workdir", default="clips_demo", help="folder for everything the demo writes (default: "
                   "./clips_demo); nnUNet_raw/preprocessed/results live inside it")
    p.add_argument("--patients", type=int, default=14, help="synthetic training patients (default 14; two more "
                   "are generated as held-out patients)")
    p.add_argument("--phantom", choices=("box", "twin"), default="box",
                   help="synthetic patients: box (default; the analytic box phantom, on which the demo's budget passes "
                        "its self-check) or twin (the whole-body lymphoma twin of clips-nnunet synth; at the demo's "
                        "budget it does not yet reach held-out Dice 0.5, docs/demo.md)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs of 25 iterations (50 on GPU) per "
                   "model (default %d): a fixed amount of learning, whatever the machine's speed; a slower "
                   "machine takes longer" % DEFAULT_EPOCHS)
    p.add_argument("--seed", type=int, default=0, help="training seed, passed to nnU-Net as CLIPS_SEED "
                   "(default 0); the synthetic cohort is always the same")
    p.add_argument("--tmtv", action="store_true", help="also train the TMTV-Net recipe (nnUNetTrainerTMTV) and "
                   "predict with it")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="training/prediction device (auto: cuda when available)")
    p.add_argument("--dataset-id", type=int, default=981, help="nnU-Net dataset id for the demo (default 981)")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    p.set_defaults(func=run_demo)
