"""Evaluate a folder of predicted masks against reference masks: per-case CSV, summary JSON and plots.

This is the library behind ``clips-nnunet evaluate PRED_DIR GT_DIR [--pet-dir DIR] [-o OUT]``.

* Cases are matched by file name: ``PRED_DIR/{case}{ending}`` with ``GT_DIR/{case}{ending}`` (nnU-Net's layout;
  ``ending`` comes from ``PRED_DIR/dataset.json`` when nnU-Net wrote one, else is guessed from the files:
  ``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd``). Predictions without reference are reported and skipped; references
  without prediction are listed as missing in the summary.
* The optional PET (SUV) image of a case is ``PET_DIR/{case}_0001{ending}`` (nnU-Net raw layout, channel 1 = PET,
  as ``imagesTs``) or ``PET_DIR/{case}{ending}``. When its grid differs from the mask grid it is resampled onto it
  (linear).
* Prediction and reference must share the voxel grid (size, spacing, origin, direction) like nnU-Net's outputs do;
  otherwise that case fails with a message and the others go on.
* Per case the metrics of :mod:`clips_nnunet.metrics.case_metrics` are computed; results are cached in
  ``OUT/cases/{case}.json`` with the input files' size and modification time and the parameters, so a re-run only
  recomputes cases whose inputs changed.
* Outputs: ``OUT/per_case.csv`` (one row per case, empty cell = undefined), ``OUT/summary.json`` (sorted keys,
  ``null`` = undefined) and PNG plots in ``OUT/plots/``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from clips_nnunet.errors import DatasetError, PatientError
from clips_nnunet.metrics.case_metrics import AUTOPET_CONNECTIVITY, CaseMetrics, compute_case_metrics
from clips_nnunet.io_utils import PathLike, atomic_path, atomic_write_json, grid_difference, read_image, read_json

KNOWN_ENDINGS = (".nii.gz", ".nii", ".mha", ".nrrd", ".nhdr")
CACHE_VERSION = 1

#: Metrics summarised (mean, sd, median, quartiles) and compared; ``dice`` only over cases with a true lesion.
SUMMARY_METRICS = (
    "dice", "tmtv_pred_ml", "tmtv_true_ml", "tmtv_error_ml", "tmtv_abs_error_ml", "tmtv_rel_error",
    "tmtv_abs_rel_error", "dmax_error_mm", "dmax_abs_error_mm", "fp_volume_ml", "fn_volume_ml",
    "lesion_sensitivity", "lesion_precision", "lesion_f1", "tlg_abs_error",
)


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case (``pet`` optional)."""

    case_id: str
    pred: Path
    gt: Path
    pet: Optional[Path] = None


@dataclass
class EvaluationResult:
    """Rows (one dict per case, ``status`` 'ok' or 'error'), the summary dict and where things were written."""

    rows: List[Dict[str, Any]]
    summary: Dict[str, Any]
    out_dir: Optional[Path] = None
    files: Dict[str, Path] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------- files
def detect_file_ending(folder: PathLike) -> str:
    """File ending of the masks in ``folder``: from nnU-Net's ``dataset.json`` if present, else the most common
    known ending; raises :class:`DatasetError` when the folder holds none."""
    folder = Path(folder)
    ds = folder / "dataset.json"
    if ds.is_file():
        try:
            ending = read_json(ds).get("file_ending")
            if ending:
                return str(ending)
        except (ValueError, OSError):
            pass
    counts: Dict[str, int] = {}
    for f in folder.iterdir() if folder.is_dir() else ():
        if f.name.startswith(".") or not f.is_file():
            continue
        for e in KNOWN_ENDINGS:
            if f.name.endswith(e):
                counts[e] = counts.get(e, 0) + 1
                break
    if not counts:
        raise DatasetError(f"{folder}: no segmentation files ({', '.join(KNOWN_ENDINGS)}) found; pass the folder "
                           f"that holds the predicted masks (e.g. fold_0/validation or the nnUNetv2_predict output)")
    return max(sorted(counts), key=counts.get)  # type: ignore[arg-type]


def list_cases(folder: PathLike, ending: str) -> Dict[str, Path]:
    """``{case_id: path}`` of the files in ``folder`` ending with ``ending`` (hidden/temporary files skipped)."""
    folder = Path(folder)
    out = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.name.endswith(ending):
            out[f.name[: -len(ending)]] = f
    return out


def find_pet(pet_dir: PathLike, case_id: str, ending: str, channel: int = 1) -> Optional[Path]:
    """``PET_DIR/{case}_{channel:04d}{ending}`` or ``PET_DIR/{case}{ending}``; ``None`` when neither exists."""
    pet_dir = Path(pet_dir)
    for name in (f"{case_id}_{channel:04d}{ending}", f"{case_id}{ending}"):
        if (pet_dir / name).is_file():
            return pet_dir / name
    return None


def match_case_files(pred_dir: PathLike, gt_dir: PathLike, pet_dir: Optional[PathLike] = None,
                     file_ending: Optional[str] = None, pet_channel: int = 1
                     ) -> Tuple[List[CaseFiles], List[str], List[str]]:
    """Pair predictions with references (and PET). Returns ``(cases, preds_without_gt, gts_without_pred)``."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for name, d in (("prediction folder", pred_dir), ("reference folder", gt_dir)):
        if not d.is_dir():
            raise DatasetError(f"{name} {d} does not exist or is not a folder")
    if pet_dir is not None and not Path(pet_dir).is_dir():
        raise DatasetError(f"PET folder {pet_dir} does not exist; give the nnU-Net imagesTs/imagesTr folder that "
                           f"holds {{case}}_0001 PET images, or leave --pet-dir out")
    ending = file_ending or detect_file_ending(pred_dir)
    preds, gts = list_cases(pred_dir, ending), list_cases(gt_dir, ending)
    cases = []
    for cid, p in preds.items():
        if cid in gts:
            pet = find_pet(pet_dir, cid, ending, pet_channel) if pet_dir is not None else None
            cases.append(CaseFiles(cid, p, gts[cid], pet))
    return cases, sorted(set(preds) - set(gts)), sorted(set(gts) - set(preds))


# -------------------------------------------------------------------------------------------------------- per case
def _read(path: Path):
    """The image, verified complete (:func:`clips_nnunet.io_utils.read_image`: a truncated NIfTI is an error, not
    zeros); :class:`DatasetError` naming the file."""
    return read_image(path, what="file")


def _same_grid(a, b) -> Optional[str]:
    return grid_difference(a, b)


def _to_mask(arr: np.ndarray, labels: Optional[Sequence[int]]) -> np.ndarray:
    if labels:
        return np.isin(arr, list(labels))
    return arr > 0


def evaluate_case(files: CaseFiles, labels: Optional[Sequence[int]] = None,
                  connectivity: int = AUTOPET_CONNECTIVITY, lesion_connectivity: int = 26) -> Dict[str, Any]:
    """Metrics of one case as a flat dict (``case_id``, ``status``='ok', spacing, every :class:`CaseMetrics` field).

    Raises :class:`PatientError` (naming the case and file) for unreadable files or mismatched grids.
    """
    import SimpleITK as sitk

    try:
        gt_img, pred_img = _read(files.gt), _read(files.pred)
    except (OSError, DatasetError) as e:
        raise PatientError(files.case_id, f"{e}; check the file is a complete image") from e
    why = _same_grid(pred_img, gt_img)
    if why:
        raise PatientError(files.case_id, f"prediction {files.pred.name} and reference {files.gt.name} are on "
                                          f"different voxel grids ({why}); resample the prediction onto the "
                                          f"reference image (nnU-Net's exports already match)")
    spacing_zyx = tuple(float(s) for s in gt_img.GetSpacing()[::-1])
    pred = _to_mask(sitk.GetArrayViewFromImage(pred_img), labels)
    true = _to_mask(sitk.GetArrayViewFromImage(gt_img), labels)
    suv = None
    pet_resampled = False
    if files.pet is not None:
        try:
            pet_img = _read(files.pet)
        except (OSError, DatasetError) as e:
            raise PatientError(files.case_id, f"PET {e}") from e
        if pet_img.GetNumberOfComponentsPerPixel() != 1:
            raise PatientError(files.case_id, f"PET {files.pet.name} has several components; give a scalar SUV image")
        if _same_grid(pet_img, gt_img):
            pet_img = sitk.Resample(pet_img, gt_img, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            pet_resampled = True
        suv = sitk.GetArrayFromImage(pet_img).astype(np.float32)
    m: CaseMetrics = compute_case_metrics(pred, true, spacing_zyx, suv=suv, connectivity=connectivity,
                                          lesion_connectivity=lesion_connectivity)
    row: Dict[str, Any] = {"case_id": files.case_id, "status": "ok", "error": "",
                           "spacing_z_mm": spacing_zyx[0], "spacing_y_mm": spacing_zyx[1],
                           "spacing_x_mm": spacing_zyx[2], "has_pet": suv is not None, "pet_resampled": pet_resampled}
    row.update(m.to_dict())
    return row


def _signature(files: CaseFiles, params: Dict[str, Any]) -> Dict[str, Any]:
    def st(p: Optional[Path]):
        if p is None:
            return None
        s = p.stat()
        return [str(p.resolve()), s.st_size, s.st_mtime_ns]

    return {"version": CACHE_VERSION, "pred": st(files.pred), "gt": st(files.gt), "pet": st(files.pet),
            "params": params}


def evaluate_cases(cases: Sequence[CaseFiles], labels: Optional[Sequence[int]] = None,
                   connectivity: int = AUTOPET_CONNECTIVITY, lesion_connectivity: int = 26,
                   cache_dir: Optional[PathLike] = None, progress: bool = True,
                   desc: str = "evaluating") -> List[Dict[str, Any]]:
    """Evaluate many cases; a failing case becomes a row with ``status='error'`` and its message, the others go on.

    With ``cache_dir``, each case's row is stored as ``{cache_dir}/{case}.json`` and reused while the input files
    (size, mtime) and parameters are unchanged.
    """
    from tqdm.auto import tqdm

    params = {"labels": sorted(int(x) for x in labels) if labels else None, "connectivity": connectivity,
              "lesion_connectivity": lesion_connectivity}
    rows = []
    for cf in tqdm(cases, desc=desc, unit="case", disable=not progress):
        cache = Path(cache_dir) / f"{cf.case_id}.json" if cache_dir is not None else None
        try:
            sig = _signature(cf, params)
        except OSError as e:
            rows.append(_error_row(cf.case_id, f"{cf.case_id}: {e}"))
            continue
        if cache is not None and cache.is_file():
            try:
                cached = read_json(cache)
                if cached.get("signature") == sig:
                    rows.append(_from_json(cached["row"]))
                    continue
            except (ValueError, OSError, KeyError):
                pass
        try:
            row = evaluate_case(cf, labels=labels, connectivity=connectivity, lesion_connectivity=lesion_connectivity)
        except PatientError as e:
            row = _error_row(cf.case_id, str(e))
        except Exception as e:  # one bad case never stops the cohort; the row says what went wrong
            row = _error_row(cf.case_id, f"{cf.case_id}: {type(e).__name__}: {e}")
        if cache is not None and row["status"] == "ok":
            atomic_write_json(cache, {"row": _to_json(row), "signature": sig})
        rows.append(row)
    return rows


def _error_row(case_id: str, message: str) -> Dict[str, Any]:
    return {"case_id": case_id, "status": "error", "error": message}


def _to_json(obj: Any) -> Any:
    """NaN/inf -> None recursively (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _from_json(row: Dict[str, Any]) -> Dict[str, Any]:
    nullable_float = set(CaseMetrics.__dataclass_fields__) - {"has_true_lesion", "n_lesions_pred", "n_lesions_true",
                                                              "lesion_tp", "lesion_fp", "lesion_fn",
                                                              "lesion_pred_tp"}
    return {k: (float("nan") if v is None and k in nullable_float else v) for k, v in row.items()}


# --------------------------------------------------------------------------------------------------------- summary
def describe(values: Iterable[float]) -> Dict[str, Any]:
    """n, mean, sd (ddof=1), median, q25, q75 of the finite values (``None`` when there are none)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"n": 0, "mean": None, "sd": None, "median": None, "q25": None, "q75": None}
    return {"n": int(len(v)), "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
            "median": float(np.median(v)), "q25": float(np.percentile(v, 25)), "q75": float(np.percentile(v, 75))}


def summarize(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Cohort summary: per-metric statistics, pooled lesion detection, TMTV agreement, failed cases.

    Dice statistics use only cases with a true lesion (autoPET convention); ``fp_volume_ml_negative_cases``
    summarises the false-positive volume of cases without a true lesion. ``pooled_detection`` sums TP/FP/FN over
    all cases before computing sensitivity/precision/F1.
    """
    ok = [r for r in rows if r.get("status") == "ok"]
    pos = [r for r in ok if r["has_true_lesion"]]
    neg = [r for r in ok if not r["has_true_lesion"]]
    metrics: Dict[str, Any] = {}
    for k in SUMMARY_METRICS:
        src = pos if k == "dice" else ok
        if any(r.get(k) is not None for r in src):
            metrics[k] = describe(r.get(k) for r in src)
    tp = sum(r["lesion_tp"] for r in ok)
    fp = sum(r["lesion_fp"] for r in ok)
    fn = sum(r["lesion_fn"] for r in ok)
    pred_tp = sum(r["lesion_pred_tp"] for r in ok)
    sens = tp / (tp + fn) if tp + fn else None
    prec = pred_tp / (pred_tp + fp) if pred_tp + fp else None
    if sens is None and prec is None:
        f1 = None
    elif not sens or not prec:
        f1 = 0.0
    else:
        f1 = 2 * sens * prec / (sens + prec)
    t_true = np.array([r["tmtv_true_ml"] for r in ok], float)
    t_pred = np.array([r["tmtv_pred_ml"] for r in ok], float)
    agreement: Dict[str, Any] = {"n": int(len(ok))}
    if len(ok) >= 1:
        d = t_pred - t_true
        sd = float(d.std(ddof=1)) if len(d) > 1 else None
        agreement.update(bias_ml=float(d.mean()), sd_ml=sd,
                         loa_low_ml=None if sd is None else float(d.mean() - 1.96 * sd),
                         loa_high_ml=None if sd is None else float(d.mean() + 1.96 * sd))
    if len(ok) >= 3 and np.ptp(t_true) > 0 and np.ptp(t_pred) > 0:
        from scipy import stats

        agreement["pearson_r"] = float(stats.pearsonr(t_true, t_pred)[0])
        agreement["spearman_rho"] = float(stats.spearmanr(t_true, t_pred)[0])
    return _to_json({
        "n_cases": len(rows), "n_evaluated": len(ok), "n_failed": len(rows) - len(ok),
        "failed": {r["case_id"]: r.get("error", "") for r in rows if r.get("status") != "ok"},
        "n_with_true_lesion": len(pos), "n_without_true_lesion": len(neg),
        "n_negative_cases_with_false_positives": sum(1 for r in neg if r["fp_volume_ml"] > 0),
        "metrics": metrics,
        "fp_volume_ml_negative_cases": describe(r["fp_volume_ml"] for r in neg),
        "pooled_detection": {"tp": tp, "fp": fp, "fn": fn, "sensitivity": sens, "precision": prec, "f1": f1,
                             "pred_tp": pred_tp},
        "tmtv_agreement": agreement,
    })


# ---------------------------------------------------------------------------------------------------------- output
def write_rows_csv(rows: Sequence[Dict[str, Any]], path: PathLike) -> Path:
    """Write rows as CSV (columns in first-seen order, empty cell = undefined/NaN) atomically."""
    import pandas as pd

    path = Path(path)
    df = pd.DataFrame(list(rows))
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False, na_rep="", float_format="%.6g")
    return path


def write_plots(rows: Sequence[Dict[str, Any]], plot_dir: PathLike, title_prefix: str = "") -> Dict[str, Path]:
    """Bland-Altman of TMTV, predicted-vs-true TMTV scatter, Dice histogram (cases with a true lesion)."""
    from clips_nnunet.evaluation import plots

    ok = [r for r in rows if r.get("status") == "ok"]
    plot_dir = Path(plot_dir)
    t = [r["tmtv_true_ml"] for r in ok]
    p = [r["tmtv_pred_ml"] for r in ok]
    return {
        "bland_altman_tmtv": plots.bland_altman_tmtv(t, p, plot_dir / "bland_altman_tmtv.png",
                                                     title=f"{title_prefix}Bland-Altman: TMTV (n={len(ok)})"),
        "tmtv_scatter": plots.tmtv_scatter(t, p, plot_dir / "tmtv_scatter.png",
                                           title=f"{title_prefix}Predicted vs true TMTV"),
        "dice_distribution": plots.plot_dice_histogram([r["dice"] for r in ok if r["has_true_lesion"]],
                                                     plot_dir / "dice_distribution.png",
                                                     title=f"{title_prefix}Dice (cases with lesion)"),
    }


def evaluate_folder(pred_dir: PathLike, gt_dir: PathLike, pet_dir: Optional[PathLike] = None,
                    out_dir: Optional[PathLike] = None, labels: Optional[Sequence[int]] = None,
                    connectivity: int = AUTOPET_CONNECTIVITY, lesion_connectivity: int = 26,
                    file_ending: Optional[str] = None, pet_channel: int = 1, plots: bool = True,
                    progress: bool = True) -> EvaluationResult:
    """Evaluate ``pred_dir`` against ``gt_dir`` and write ``per_case.csv``, ``summary.json`` and plots to
    ``out_dir`` (default ``pred_dir/evaluation``). See the module docstring for file matching and outputs.

    Raises :class:`DatasetError` when the folders are missing or no case can be paired.
    """
    cases, no_gt, no_pred = match_case_files(pred_dir, gt_dir, pet_dir, file_ending, pet_channel)
    if not cases:
        raise DatasetError(f"no prediction in {pred_dir} has a reference of the same file name in {gt_dir} "
                           f"({len(no_gt)} predictions, {len(no_pred)} references); check both folders and the "
                           f"file ending")
    out = Path(out_dir) if out_dir is not None else Path(pred_dir) / "evaluation"
    rows = evaluate_cases(cases, labels=labels, connectivity=connectivity, lesion_connectivity=lesion_connectivity,
                          cache_dir=out / "cases", progress=progress)
    summary = summarize(rows)
    summary.update(_to_json({
        "predictions_without_reference": no_gt, "references_without_prediction": no_pred,
        "n_with_pet": sum(1 for c in cases if c.pet is not None),
        "parameters": {"labels": list(labels) if labels else "all > 0", "connectivity_fp_fn_detection": connectivity,
                       "connectivity_lesions_dmax": lesion_connectivity, "pet_channel": pet_channel},
    }))
    files = {"per_case_csv": write_rows_csv(rows, out / "per_case.csv")}
    atomic_write_json(out / "summary.json", summary)
    files["summary_json"] = out / "summary.json"
    if plots and summary["n_evaluated"]:
        files.update(write_plots(rows, out / "plots"))
    return EvaluationResult(rows=rows, summary=summary, out_dir=out, files=files)
