"""``clips-nnunet demo``: the main job end to end on a synthetic DICOM cohort. Only argument parsing here; the
work is in :mod:`clips_nnunet.demo`."""
from __future__ import annotations

import argparse
from pathlib import Path

#: the demo's defaults per phantom (clips_nnunet.demo.pipeline's; kept here so that the help does not import the
#: demo; tests/test_demo.py checks that both agree)
DEFAULT_PHANTOM = "box"
DEFAULT_EPOCHS = {"box": 50, "twin": 150}
DEFAULT_PATIENTS = {"box": 14, "twin": 24}


def run_demo(args: argparse.Namespace) -> int:
    from clips_nnunet.demo import DemoOptions, run_demo as _run

    options = DemoOptions(workdir=Path(args.workdir), patients=args.patients, epochs=args.epochs, seed=args.seed,
                          tmtv=args.tmtv, device=args.device, dataset_id=args.dataset_id, dry_run=args.dry_run,
                          phantom=args.phantom)
    return _run(options)


def _per_phantom(values) -> str:
    return ", ".join(f"{v} {k}" for k, v in values.items())


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
    p.add_argument("--patients", type=int, default=None, help="synthetic training patients (default %s; two "
                   "more are generated as held-out patients)" % _per_phantom(DEFAULT_PATIENTS))
    p.add_argument("--phantom", choices=tuple(DEFAULT_EPOCHS), default=DEFAULT_PHANTOM,
                   help="synthetic patients (default %s): box (the analytic box phantom) or twin (the lymphoma "
                        "twin of clips-nnunet synth, skull base to thighs at 8 mm; docs/demo.md)" % DEFAULT_PHANTOM)
    p.add_argument("--epochs", type=int, default=None, help="training epochs of 25 iterations (50 on GPU) per "
                   "model (default %s): a fixed amount of learning, whatever the machine's speed; a slower "
                   "machine takes longer" % _per_phantom(DEFAULT_EPOCHS))
    p.add_argument("--seed", type=int, default=0, help="training seed, passed to nnU-Net as CLIPS_SEED "
                   "(default 0); the synthetic cohort is always the same")
    p.add_argument("--tmtv", action="store_true", help="also train the TMTV-Net recipe (nnUNetTrainerTMTV) and "
                   "predict with it")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="training/prediction device (auto: cuda when available)")
    p.add_argument("--dataset-id", type=int, default=981, help="nnU-Net dataset id for the demo (default 981)")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    p.set_defaults(func=run_demo)
