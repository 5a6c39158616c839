"""Sub-commands of `clips-nnunet` (module owner fills in)."""
from __future__ import annotations


def register(subparsers) -> None:
    """Add this module's sub-commands to ``subparsers``."""
