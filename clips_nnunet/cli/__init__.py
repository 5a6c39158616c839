"""The ``clips-nnunet`` command: argparse sub-commands, like nnU-Net's own tools.

Each module in this package is named after the sub-command it adds (``convert`` also adds ``convert-autopet``;
``lesion_options`` holds options shared by ``evaluate`` and ``compare``) and exposes ``register(subparsers)``, which
adds its parsers and sets ``func`` (called with the parsed namespace, returning an exit code). The modules only
parse arguments and call library functions; heavy imports (torch, nnunetv2) happen inside ``func``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from clips_nnunet import __version__
from clips_nnunet.errors import ClipsError

# Order = order in ``clips-nnunet --help``.
COMMAND_MODULES = (
    "clips_nnunet.cli.env",
    "clips_nnunet.cli.synth",
    "clips_nnunet.cli.convert",
    "clips_nnunet.cli.plan_tmtv",
    "clips_nnunet.cli.stack",
    "clips_nnunet.cli.import_tmtv",
    "clips_nnunet.cli.score",
    "clips_nnunet.cli.predict",
    "clips_nnunet.cli.evaluate",
    "clips_nnunet.cli.compare",
    "clips_nnunet.cli.audit",
    "clips_nnunet.cli.demo",
    "clips_nnunet.cli.study",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clips-nnunet",
        description="Curriculum learning and TMTV-Net trainers for nnU-Net v2: DICOM PET/CT conversion, "
                    "training helpers, prediction, evaluation and comparison.",
    )
    parser.add_argument("--version", action="version", version=f"clips-nnunet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: Optional[List[str]] = None) -> int:
    """Run one sub-command and return its exit code.

    Exit codes (the policy of :mod:`clips_nnunet.errors`): 0 done; 1 the command ran but some cases failed (the
    sub-command returns it) or an internal error (with its traceback, to be reported); 2 the command could not run
    as asked: bad arguments or input (:class:`ClipsError`, e.g. a missing folder, an empty cohort, a locked
    dataset) or an unusable environment (:class:`OSError`: full disk, read-only folder, missing file), printed as
    one line without a traceback; 130 interrupted (Ctrl-C).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    prog = f"clips-nnunet {args.command}"
    try:
        return int(args.func(args) or 0)
    except ClipsError as e:
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"{prog}: error: {_one_line(e.strerror or e)}{where}; check the path, free disk space and "
              "permissions, then run again", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
