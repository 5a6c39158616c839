"""Options shared by ``evaluate`` and ``compare``: which label is a lesion, connectivities, plots, progress."""
from __future__ import annotations

import argparse


def add_lesion_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label", type=int, action="append", dest="labels", metavar="VALUE",
                   help="label value counted as lesion (repeatable); default: every value > 0")
    p.add_argument("--connectivity", type=int, default=18, choices=(6, 18, 26),
                   help="3D connectivity of components for false-positive/negative volumes and lesion detection "
                        "(default 18, as the autoPET evaluation)")
    p.add_argument("--lesion-connectivity", type=int, default=26, choices=(6, 18, 26),
                   help="connectivity for lesion counts and Dmax (default 26, as clips-nnunet predict reports)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
