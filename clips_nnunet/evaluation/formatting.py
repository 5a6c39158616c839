"""Numbers in the reports' tables: one way to write a value, a significant-digits value and a p-value."""
from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["fmt_fixed", "fmt_significant", "fmt_p"]


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and not math.isfinite(x))


def fmt_fixed(x: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals, ``str(x)`` for anything else, ``n/a`` for None, NaN or infinity."""
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        x = float(x)
    if _missing(x):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def fmt_significant(x: Any, digits: int = 3) -> str:
    """``x`` with ``digits`` significant digits (scientific from 1e4), ``0`` for float noise below 1e-9,
    ``str(x)`` for a non-float, ``n/a`` for None, NaN or infinity."""
    if _missing(x):
        return "n/a"
    if isinstance(x, float):
        if abs(x) < 1e-9:  # float noise (e.g. the sd of identical values)
            return "0"
        return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.3e}"
    return str(x)


def fmt_p(p: Any) -> str:
    """A p-value: ``<0.001`` below 1e-3, else 3 decimals; ``n/a`` when missing or not finite."""
    if p is None or not isinstance(p, (float, int)) or not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 1e-3 else f"{p:.3f}"
