"""Segmentation metrics for lesion masks: Dice, TMTV and Dmax errors, autoPET false-positive / false-negative
volumes and lesion-wise detection. Arrays and spacing in, numbers out (no I/O).

Conventions (all volumes in ml, all distances in mm, computed with the per-axis ``spacing_zyx`` so anisotropic
voxels are right):

* **Foreground** is ``mask > 0`` (every label counts as lesion); select labels before calling if needed.
* **Dice** = ``2 |P & T| / (|P| + |T|)``. When both masks are empty it is undefined and returned as ``NaN``
  (not 1, which would reward doing nothing on negative cases); when only the truth is empty it is 0. Summaries
  average Dice over cases *with* a true lesion, like the autoPET challenge; negative cases are judged by their
  false-positive volume.
* **TMTV** errors: ``tmtv_error_ml = pred - true`` (signed), ``tmtv_abs_error_ml = |pred - true|``,
  ``tmtv_rel_error = (pred - true) / true`` and ``tmtv_abs_rel_error`` (``NaN`` when the true TMTV is 0).
* **Dmax** (largest distance between lesion centroids, mm; 0 for 0 or 1 lesion, see
  :mod:`clips_nnunet.metrics.lesions`): ``dmax_error_mm = pred - true`` and its absolute value. Lesions for
  TMTV, counts and Dmax use ``lesion_connectivity`` (26 by default, like the prediction reports).
* **False-positive volume** (autoPET, Gatidis et al. 2022, ``val_script.py`` of lab-midas/autoPET): total volume
  of *predicted* connected components that share no voxel with the true mask. **False-negative volume**: total
  volume of *true* connected components that share no voxel with the prediction. Components use
  ``connectivity`` = 18 by default, exactly as that script (cc3d, 18-connectivity in 3D).
* **Lesion-wise detection** (same 18-connected components): a true lesion is *detected* (true positive) when any
  predicted voxel overlaps it, otherwise it is a false negative; a predicted component overlapping no true lesion
  is a false positive. ``sensitivity = TP / n_true_lesions`` (``NaN`` without true lesions),
  ``precision = n_pred_components_overlapping_truth / n_pred_components`` (``NaN`` without predicted lesions),
  ``F1 = 2 P R / (P + R)`` (0 when either is 0, also when the other is undefined; ``NaN`` when both masks are
  empty).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from clips_nnunet.metrics.overlap import dice
from clips_nnunet.metrics.lesions import (LesionSummary, as_binary_mask, label_components, measure_lesions,
                                             validate_connectivity, validate_spacing)

AUTOPET_CONNECTIVITY = 18
NAN = float("nan")


@dataclass(frozen=True)
class DetectionResult:
    """Lesion-wise detection counts (components with the autoPET connectivity) and FP/FN volumes."""

    n_true_lesions: int
    n_pred_lesions: int
    tp: int  # true lesions touched by the prediction
    fn: int  # true lesions not touched
    fp: int  # predicted components touching no true lesion
    pred_tp: int  # predicted components touching a true lesion
    fp_volume_ml: float
    fn_volume_ml: float
    sensitivity: float
    precision: float
    f1: float


@dataclass(frozen=True)
class CaseMetrics:
    """All metrics of one case; ``NaN`` marks an undefined value (see module docstring)."""

    has_true_lesion: bool
    dice: float
    tmtv_pred_ml: float
    tmtv_true_ml: float
    tmtv_error_ml: float
    tmtv_abs_error_ml: float
    tmtv_rel_error: float
    tmtv_abs_rel_error: float
    dmax_pred_mm: float
    dmax_true_mm: float
    dmax_error_mm: float
    dmax_abs_error_mm: float
    n_lesions_pred: int
    n_lesions_true: int
    fp_volume_ml: float
    fn_volume_ml: float
    lesion_tp: int
    lesion_fp: int
    lesion_fn: int
    lesion_pred_tp: int
    lesion_sensitivity: float
    lesion_precision: float
    lesion_f1: float
    suv_max_pred: Optional[float] = None
    suv_max_true: Optional[float] = None
    suv_mean_pred: Optional[float] = None
    suv_mean_true: Optional[float] = None
    tlg_pred: Optional[float] = None
    tlg_true: Optional[float] = None
    tlg_abs_error: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict (floats may be NaN; :func:`clips_nnunet.io_utils.dumps_json` writes NaN as ``NaN``)."""
        return asdict(self)


def _check_same_shape(p: np.ndarray, t: np.ndarray) -> None:
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground-truth shape {t.shape}; both must be on "
                         f"the same voxel grid (resample the prediction onto the reference image)")


def detection_metrics(pred: np.ndarray, true: np.ndarray, spacing_zyx: Sequence[float],
                      connectivity: int = AUTOPET_CONNECTIVITY) -> DetectionResult:
    """autoPET false-positive / false-negative volumes and lesion-wise detection (see module docstring).

    Vectorised equivalent of autoPET's per-component loops: a component is "touched" when at least one of its
    voxels lies in the other mask.
    """
    p, t = as_binary_mask(pred, "pred"), as_binary_mask(true, "true")
    _check_same_shape(p, t)
    sp = validate_spacing(spacing_zyx)
    validate_connectivity(connectivity)
    voxel_ml = sp[0] * sp[1] * sp[2] / 1000.0

    p_lab, n_p = label_components(p, connectivity)
    t_lab, n_t = label_components(t, connectivity)
    p_sizes = np.bincount(p_lab.ravel(), minlength=n_p + 1)
    t_sizes = np.bincount(t_lab.ravel(), minlength=n_t + 1)
    p_touch = np.zeros(n_p + 1, bool)
    p_touch[np.unique(p_lab[t])] = True
    t_touch = np.zeros(n_t + 1, bool)
    t_touch[np.unique(t_lab[p])] = True
    p_touch[0] = t_touch[0] = True  # background is never a lesion
    fp_vox = int(p_sizes[~p_touch].sum())
    fn_vox = int(t_sizes[~t_touch].sum())
    tp = int(t_touch[1:].sum())
    fn = n_t - tp
    pred_hits = int(p_touch[1:].sum())
    fp = n_p - pred_hits
    sens = tp / n_t if n_t else NAN
    prec = pred_hits / n_p if n_p else NAN
    if n_t == 0 and n_p == 0:
        f1 = NAN
    elif (not math.isnan(sens) and sens == 0) or (not math.isnan(prec) and prec == 0):
        f1 = 0.0
    else:
        f1 = 2 * prec * sens / (prec + sens)
    return DetectionResult(n_true_lesions=n_t, n_pred_lesions=n_p, tp=tp, fn=fn, fp=fp, pred_tp=pred_hits,
                           fp_volume_ml=fp_vox * voxel_ml, fn_volume_ml=fn_vox * voxel_ml,
                           sensitivity=sens, precision=prec, f1=f1)


def compute_case_metrics(pred: np.ndarray, true: np.ndarray, spacing_zyx: Tuple[float, float, float],
                         suv: Optional[np.ndarray] = None, connectivity: int = AUTOPET_CONNECTIVITY,
                         lesion_connectivity: int = 26) -> CaseMetrics:
    """Every metric of one case.

    Args:
        pred, true: (z, y, x) masks on the same grid (``> 0`` is lesion).
        spacing_zyx: voxel size in mm, array axis order.
        suv: optional PET (SUV) on the same grid, for SUVmax / SUVmean / TLG of prediction and truth.
        connectivity: components for FP/FN volumes and detection (18 = autoPET).
        lesion_connectivity: components for lesion counts and Dmax (26 = reports of ``clips-nnunet predict``).
    """
    p, t = as_binary_mask(pred, "pred"), as_binary_mask(true, "true")
    _check_same_shape(p, t)
    sp = validate_spacing(spacing_zyx)
    sp_summary_p: LesionSummary = measure_lesions(p, sp, suv=suv, connectivity=lesion_connectivity)
    sp_summary_t: LesionSummary = measure_lesions(t, sp, suv=suv, connectivity=lesion_connectivity)
    det = detection_metrics(p, t, sp, connectivity=connectivity)
    tp_ml, tt_ml = sp_summary_p.tmtv_ml, sp_summary_t.tmtv_ml
    err = tp_ml - tt_ml
    rel = err / tt_ml if tt_ml > 0 else NAN
    derr = sp_summary_p.dmax_mm - sp_summary_t.dmax_mm
    extra: Dict[str, Optional[float]] = {}
    if suv is not None:
        tlg_p = sp_summary_p.tlg if sp_summary_p.tlg is not None else 0.0
        tlg_t = sp_summary_t.tlg if sp_summary_t.tlg is not None else 0.0
        extra = dict(suv_max_pred=_none_to_nan(sp_summary_p.suv_max), suv_max_true=_none_to_nan(sp_summary_t.suv_max),
                     suv_mean_pred=_none_to_nan(sp_summary_p.suv_mean),
                     suv_mean_true=_none_to_nan(sp_summary_t.suv_mean),
                     tlg_pred=tlg_p, tlg_true=tlg_t, tlg_abs_error=abs(tlg_p - tlg_t))
    return CaseMetrics(
        has_true_lesion=bool(t.any()), dice=dice(p, t),
        tmtv_pred_ml=tp_ml, tmtv_true_ml=tt_ml, tmtv_error_ml=err, tmtv_abs_error_ml=abs(err),
        tmtv_rel_error=rel, tmtv_abs_rel_error=abs(rel),
        dmax_pred_mm=sp_summary_p.dmax_mm, dmax_true_mm=sp_summary_t.dmax_mm, dmax_error_mm=derr,
        dmax_abs_error_mm=abs(derr), n_lesions_pred=sp_summary_p.n_lesions, n_lesions_true=sp_summary_t.n_lesions,
        fp_volume_ml=det.fp_volume_ml, fn_volume_ml=det.fn_volume_ml, lesion_tp=det.tp, lesion_fp=det.fp,
        lesion_fn=det.fn, lesion_pred_tp=det.pred_tp, lesion_sensitivity=det.sensitivity, lesion_precision=det.precision, lesion_f1=det.f1,
        **extra)


def _none_to_nan(x: Optional[float]) -> float:
    return NAN if x is None else float(x)
