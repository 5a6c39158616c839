"""The threshold ceiling of a cohort: how well the best single global SUV threshold segments it.

The threshold is chosen on training patients (highest mean Dice against the clean masks over :data:`THRESHOLDS`) and
scored on held-out patients, optionally with the bladder and brain masked out (their tissue voxels and everything
within :data:`MASK_OUT_MARGIN_MM` of them set to background before thresholding). Dice is the project's one Dice
(:func:`clips_nnunet.metrics.overlap.dice`). Used by ``benchmarks/bench_twin.py`` and the tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
from scipy import ndimage

from clips_nnunet.metrics.overlap import dice
from clips_nnunet.synthetic.twin_anatomy import TISSUES

THRESHOLDS = np.round(np.arange(1.0, 20.01, 0.25), 2)
MASK_OUT = ("bladder", "brain_gm", "brain_wm")
MASK_OUT_MARGIN_MM = 10.0


@dataclass
class CeilingCase:
    """One patient for the ceiling: PET SUV, clean mask, tissue map (for masking out) and spacing (z, y, x) mm."""
    pet: np.ndarray
    label: np.ndarray
    tissue: np.ndarray
    spacing: Sequence[float]


def masked_pet(case: CeilingCase, tissues: Sequence[str] = MASK_OUT, margin_mm: float = MASK_OUT_MARGIN_MM
               ) -> np.ndarray:
    """The PET with ``tissues`` and a margin around them set to 0 (a copy)."""
    region = np.isin(case.tissue, [TISSUES[t] for t in tissues])
    if region.any() and margin_mm > 0:
        region = ndimage.distance_transform_edt(~region, sampling=case.spacing) <= margin_mm
    out = case.pet.copy()
    out[region] = 0.0
    return out


def dice_curve(pet: np.ndarray, label: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> np.ndarray:
    """Dice of ``pet >= t`` against ``label`` for every threshold ``t``."""
    return np.array([dice(pet >= t, label) for t in thresholds])


def threshold_ceiling(train: List[CeilingCase], test: List[CeilingCase], mask_out: bool = False,
                      thresholds: Sequence[float] = THRESHOLDS) -> Dict[str, object]:
    """Best global threshold on ``train`` (mean Dice), scored on ``test``: ``{threshold, train_dice, test_dice,
    test_dice_per_case}``; ``mask_out`` removes bladder and brain first."""
    if not train or not test:
        raise ValueError("the threshold ceiling needs training and held-out patients")
    pick = (lambda c: masked_pet(c)) if mask_out else (lambda c: c.pet)
    curves = np.array([dice_curve(pick(c), c.label, thresholds) for c in train])
    mean = curves.mean(axis=0)
    best = int(np.argmax(mean))
    t = float(thresholds[best])
    per_case = [dice(pick(c) >= t, c.label) for c in test]
    return {"threshold": t, "train_dice": float(mean[best]), "test_dice": float(np.mean(per_case)),
            "test_dice_per_case": [round(float(d), 4) for d in per_case], "mask_out": bool(mask_out)}
