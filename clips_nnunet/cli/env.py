"""``clips-nnunet env``: print the ``export nnUNet_extTrainer=...`` line and check nnU-Net's folders.

The values come from :mod:`clips_nnunet.nnunet_env` (``EXT_TRAINER_DIR`` and ``ext_trainer_value`` are re-exported
here for existing imports)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from clips_nnunet.nnunet_env import EXT_TRAINER_DIR, NNUNET_FOLDERS, ext_trainer_value

__all__ = ["EXT_TRAINER_DIR", "NNUNET_FOLDERS", "ext_trainer_value", "run", "register"]


def run(args: argparse.Namespace) -> int:
    value = ext_trainer_value(os.environ.get("nnUNet_extTrainer"))
    print(f"export nnUNet_extTrainer={value}")
    problems = 0
    for name in NNUNET_FOLDERS:
        path = os.environ.get(name)
        if not path:
            print(f"# {name} is not set: export {name}=/path/to/{name} (see nnU-Net's setting_up_paths.md)")
            problems += 1
        elif not Path(path).is_dir():
            print(f"# {name}={path} does not exist: create it with mkdir -p {path}")
            problems += 1
        else:
            print(f"# {name}={path} (ok)")
    return 1 if (problems and args.check) else 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "env", help="print the nnUNet_extTrainer export line and check nnU-Net's folders",
        description="Prints `export nnUNet_extTrainer=...` so that nnUNetv2_train/-predict find the clips-nnunet "
                    "trainers, keeping folders you already list there. Use: eval \"$(clips-nnunet env)\".")
    p.add_argument("--check", action="store_true", help="exit with 1 when nnUNet_raw/preprocessed/results are unusable")
    p.set_defaults(func=run)
