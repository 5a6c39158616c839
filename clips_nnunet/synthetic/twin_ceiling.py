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


def cross_validated_ceiling(cases: List[CeilingCase], folds: int = 3, mask_out: bool = False,
                            thresholds: Sequence[float] = THRESHOLDS) -> Dict[str, object]:
    """:func:`threshold_ceiling` rotated over ``folds`` contiguous folds (each held out once, the threshold chosen on
    the others): ``{test_dice (mean over all held-out patients), fold_thresholds, fold_test_dice}``."""
    pick = (lambda c: masked_pet(c)) if mask_out else (lambda c: c.pet)
    curves = np.array([dice_curve(pick(c), c.label, thresholds) for c in cases])
    return {**ceiling_from_curves(curves, folds, thresholds), "mask_out": bool(mask_out)}


def ceiling_from_curves(curves: np.ndarray, folds: int = 3, thresholds: Sequence[float] = THRESHOLDS
                        ) -> Dict[str, object]:
    """The rotated ceiling from per-patient Dice curves (rows: patients, columns: ``thresholds``), so that a
    benchmark can keep only the curves of large patients, not their volumes."""
    curves = np.asarray(curves, dtype=float)
    if folds < 2 or len(curves) < folds:
        raise ValueError(f"{len(curves)} patients cannot be split into {folds} folds")
    bounds = np.linspace(0, len(curves), folds + 1).astype(int)
    held, fold_t, fold_d = [], [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        train = np.r_[0:a, b:len(curves)]
        best = int(np.argmax(curves[train].mean(axis=0)))
        fold_t.append(float(thresholds[best]))
        fold_d.append(float(curves[a:b, best].mean()))
        held += list(curves[a:b, best])
    return {"test_dice": float(np.mean(held)), "fold_thresholds": fold_t,
            "fold_test_dice": [round(d, 4) for d in fold_d]}


def split_ceiling_from_curves(curves: np.ndarray, n_train: int, thresholds: Sequence[float] = THRESHOLDS
                              ) -> Dict[str, object]:
    """:func:`threshold_ceiling` from per-patient Dice curves: the first ``n_train`` rows choose, the rest score."""
    curves = np.asarray(curves, dtype=float)
    mean = curves[:n_train].mean(axis=0)
    best = int(np.argmax(mean))
    return {"threshold": float(thresholds[best]), "train_dice": float(mean[best]),
            "test_dice": float(curves[n_train:, best].mean()),
            "test_dice_per_case": [round(float(d), 4) for d in curves[n_train:, best]]}
