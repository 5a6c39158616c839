"""``clips-nnunet env``: check nnU-Net's folders and how the clips trainers are found; print the
``export nnUNet_extTrainer=...`` line for environments without the installed discovery file.

The installation puts ``clips_nnunet_autodiscovery.pth`` into site-packages; it appends the trainer shim to
``nnUNet_extTrainer`` at every interpreter start (:mod:`clips_nnunet.nnunet_ext`), so nothing needs to be exported.
This command says whether that is in effect here (or switched off with ``CLIPS_NNUNET_NO_AUTODISCOVERY``) and
still prints the export line, for the cases where it is not (an opt-out, a copied checkout used through
``PYTHONPATH``, another interpreter than the one the package was installed into).

The values come from :mod:`clips_nnunet.nnunet_env` (``EXT_TRAINER_DIR`` and ``ext_trainer_value`` are re-exported
here for existing imports)."""
from __future__ import annotations

import argparse
import os
import site
from pathlib import Path
from typing import List, Optional

from clips_nnunet.nnunet_env import EXT_TRAINER_DIR, NNUNET_FOLDERS, ext_trainer_value
from clips_nnunet.nnunet_ext import OPT_OUT_VARIABLE, PTH_NAME, autodiscovery_disabled

__all__ = ["EXT_TRAINER_DIR", "NNUNET_FOLDERS", "ext_trainer_value", "installed_pth", "run", "register"]


def installed_pth(site_dirs: Optional[List[str]] = None) -> Optional[Path]:
    """The discovery ``.pth`` file in this interpreter's site-packages, or ``None``."""
    dirs = site.getsitepackages() + [site.getusersitepackages()] if site_dirs is None else site_dirs
    return next((Path(d) / PTH_NAME for d in dirs if (Path(d) / PTH_NAME).is_file()), None)


def _discovery_line() -> str:
    listed = any(Path(p).resolve() == EXT_TRAINER_DIR
                 for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p.strip())
    pth = installed_pth()
    if autodiscovery_disabled():
        state = f"automatic discovery is off ({OPT_OUT_VARIABLE} is set)"
    elif pth is None:
        state = f"{PTH_NAME} is not installed in this interpreter's site-packages (reinstall: pip install -e .)"
    else:
        state = f"automatic discovery on ({pth})"
    found = "the clips trainers are found" if listed else "the clips trainers are NOT found: run the export line"
    return f"# nnUNet_extTrainer: {state}; {found}"


def run(args: argparse.Namespace) -> int:
    value = ext_trainer_value(os.environ.get("nnUNet_extTrainer"))
    print(f"export nnUNet_extTrainer={value}")
    print(_discovery_line())
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
        "env", help="check nnU-Net's folders and the trainer discovery; print the nnUNet_extTrainer export line",
        description="Checks nnUNet_raw/preprocessed/results and whether nnU-Net finds the clips-nnunet trainers. "
                    "After pip install nothing needs exporting (the installed clips_nnunet_autodiscovery.pth adds "
                    f"the trainer shim to nnUNet_extTrainer at interpreter start; {OPT_OUT_VARIABLE}=1 turns that "
                    "off). The printed export line (your folders kept) is for environments without it: "
                    "eval \"$(clips-nnunet env)\".")
    p.add_argument("--check", action="store_true", help="exit with 1 when nnUNet_raw/preprocessed/results are unusable")
    p.set_defaults(func=run)
