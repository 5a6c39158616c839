"""The project's one Dice coefficient, with its one rule for empty masks.

Every caller (evaluation, difficulty scoring, the label audit, TMTV-Net's stacking comparison, studies) uses
:func:`dice`, so they agree on the same case.

Rule for empty masks (foreground = label > 0):

- prediction and reference both empty: **1.0** (nothing to find and nothing found: perfect agreement);
- exactly one of them empty: **0.0**;
- otherwise ``2 |P & R| / (|P| + |R|)``.

Summaries that should describe lesion segmentation only (e.g. ``clips-nnunet evaluate``'s mean Dice) select the
cases with a reference lesion; they do not change the rule.
"""
from __future__ import annotations

import numpy as np


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Foreground Dice of two masks or label maps of the same shape (see the module's rule for empty masks)."""
    p, r = np.asarray(prediction) > 0, np.asarray(reference) > 0
    if p.shape != r.shape:
        raise ValueError(f"Dice of masks with different shapes: prediction {p.shape}, reference {r.shape}")
    denominator = int(p.sum()) + int(r.sum())
    if denominator == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / denominator
