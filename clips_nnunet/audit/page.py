"""``clips-nnunet audit``: read finished cross-validations, score every case (:mod:`clips_nnunet.audit.evidence`)
and write ``audit.csv``, ``audit.json`` and a self-contained ``index.html``.

Inputs, as nnU-Net lays them out:

* one or more results folders ``nnUNet_results/DatasetXXX_NAME/TRAINER__PLANS__CONFIG`` holding
  ``fold_X/validation/{case}{file_ending}`` (out-of-fold predictions; ``{case}.npz`` with ``probabilities`` (C, z, y,
  x) when trained or validated with ``--npz``), ``dataset.json`` (file ending) and ``plans.json`` (dataset name);
  a case predicted by several folders or folds gets their consensus (mean vote >= 0.5), and its probability is the
  mean of the softmax foreground (all with ``.npz``) or, without, the vote fraction when there are several votes;
* reference masks: ``--gt`` or ``$nnUNet_preprocessed/DatasetXXX_NAME/gt_segmentations`` (what nnU-Net's own
  validation compares against);
* optional PET: ``--images`` folder with ``{case}_{channel:04d}{ending}`` (SUV; channel 1 as the converter writes);
* optional per-fold curriculum histories (:func:`clips_nnunet.trainers.curriculum_history.read_history`): the
  per-case difficulty estimates over epochs give the loss-trajectory evidence.

One unreadable case is reported in ``audit.json`` (``failed``) and skipped; the others are scored. Outputs hold case
ids only (no file paths, no header values).
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from clips_nnunet.errors import DatasetError
from clips_nnunet.audit.evidence import AuditParams, case_evidence, strongest_finding
from clips_nnunet.audit.scoring import loss_evidence, model_quality_warning, score_cohort
from clips_nnunet.audit.html_page import ANNOTATION_KINDS, render_html
from clips_nnunet.audit.views import mip_picture, planes_picture
from clips_nnunet.nnunet_env import reference_masks_for_results
from clips_nnunet.io_utils import PathLike, atomic_write_json, atomic_write_text, read_image, read_json

KNOWN_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".tif")
CSV_FIRST = ("rank", "case_id", "suspicion", "error_kind", "missed_lesion_score", "extra_region_score",
             "boundary_score", "loss_score", "hardness", "finding_x_mm", "finding_y_mm", "finding_z_mm",
             "finding_slice", "finding_ml")


def _file_ending(results_dir: Path) -> str:
    ds = results_dir / "dataset.json"
    if ds.is_file():
        try:
            ending = read_json(ds).get("file_ending")
        except (ValueError, OSError):
            ending = None
        if ending:
            return str(ending)
    return ".nii.gz"


def find_validation(results_dir: PathLike) -> Tuple[Dict[str, List[Tuple[Path, Optional[Path]]]], List[Path], str]:
    """``({case: [(prediction, npz or None), ...]}, fold folders, file ending)`` of one results folder."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise DatasetError(f"results folder {results_dir} does not exist; give nnUNet_results/DatasetXXX_NAME/"
                           f"TRAINER__PLANS__CONFIG of a finished cross-validation")
    folds = sorted(p for p in results_dir.glob("fold_*") if (p / "validation").is_dir())
    if not folds:
        raise DatasetError(f"{results_dir} has no fold_X/validation folder: run the cross-validation (nnUNetv2_train "
                           f"... FOLD, or --val to redo the validation) before auditing")
    ending = _file_ending(results_dir)
    cases: Dict[str, List[Tuple[Path, Optional[Path]]]] = {}
    for fold in folds:
        for f in sorted((fold / "validation").iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.name.endswith(ending):
                case = f.name[: -len(ending)]
                npz = f.with_name(case + ".npz")
                cases.setdefault(case, []).append((f, npz if npz.is_file() else None))
    if not cases:
        raise DatasetError(f"{results_dir}: the fold_X/validation folders hold no {ending} predictions")
    return cases, folds, ending


def _lps(image, path: Path):
    """``image`` (read from ``path``) reoriented to LPS."""
    import SimpleITK as sitk

    try:
        return sitk.DICOMOrient(image, "LPS")
    except RuntimeError as e:
        raise DatasetError(f"cannot orient {path.name}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}"
                           ) from None


def _read(path: Path):
    """The image at ``path`` in LPS, read completely (:func:`clips_nnunet.io_utils.read_image`: a truncated NIfTI is
    an error naming the file, not zeros)."""
    return _lps(read_image(path, what="image"), path)


def _foreground_probability(npz: Path, shape_zyx: Tuple[int, ...], image) -> np.ndarray:
    import SimpleITK as sitk

    try:
        with np.load(npz) as data:
            probs = np.asarray(data["probabilities"], dtype=np.float32)
    except (OSError, KeyError, ValueError) as e:
        raise DatasetError(f"cannot read probabilities from {npz.name} ({e}); rerun the validation with --npz"
                           ) from None
    if probs.ndim != 4 or probs.shape[0] < 2:
        raise DatasetError(f"{npz.name}: probabilities must be (classes, z, y, x), got shape {probs.shape}")
    fg = 1.0 - probs[0]
    # nnU-Net stores them in the prediction file's own array order: orient like the mask (LPS)
    img = sitk.GetImageFromArray(fg)
    img.CopyInformation(image)
    fg = sitk.GetArrayFromImage(sitk.DICOMOrient(img, "LPS"))
    if fg.shape != shape_zyx:
        raise DatasetError(f"{npz.name}: probability shape {fg.shape} differs from the mask shape {shape_zyx}")
    return fg


def read_case(case: str, entries: Sequence[Tuple[Path, Optional[Path]]], gt: Path, pet: Optional[Path],
              use_npz: bool, ct: Optional[Path] = None) -> Dict[str, Any]:
    """Arrays of one case, all in LPS (z, y, x): reference, consensus prediction, probability, SUV, CT (when ``ct``
    exists), spacing; ``lps_image`` and ``source_image`` (the PET, else the reference, as stored: its slices are
    the ones a viewer numbers) carry the geometry, without voxels."""
    import SimpleITK as sitk

    ref_raw = read_image(gt, what="image")
    ref_img = _lps(ref_raw, gt)
    ref = sitk.GetArrayFromImage(ref_img) > 0
    votes, probs = [], []
    for pred_path, npz in entries:
        pred_raw = read_image(pred_path, what="prediction")
        raw_img = pred_raw if use_npz and npz is not None else None
        img = _lps(pred_raw, pred_path)
        if img.GetSize() != ref_img.GetSize():
            raise DatasetError(f"{case}: prediction size {img.GetSize()} differs from the reference size "
                               f"{ref_img.GetSize()}; is --gt the right dataset?")
        votes.append(sitk.GetArrayFromImage(img) > 0)
        if raw_img is not None:
            probs.append(_foreground_probability(npz, ref.shape, raw_img))
    vote = np.mean(votes, axis=0)
    prediction = vote >= 0.5
    probability = None
    if use_npz and probs and len(probs) == len(votes):
        probability = np.mean(probs, axis=0)
    elif len(votes) > 1:
        probability = vote
    suv = None
    if pet is not None:
        pet_raw = read_image(pet, what="image")
        pet_img = _lps(pet_raw, pet)
        if pet_img.GetSize() != ref_img.GetSize():
            raise DatasetError(f"{case}: PET size {pet_img.GetSize()} differs from the mask size {ref_img.GetSize()}; "
                               f"--images must hold the PET on the mask grid (nnU-Net imagesTr)")
        suv = sitk.GetArrayFromImage(pet_img).astype(np.float32)
    ct_arr = None
    if ct is not None and ct.is_file():
        try:
            ct_img = _read(ct)
        except DatasetError:  # the CT only helps the eye: an unreadable one is left out, the PET is shown alone
            ct_img = None
        if ct_img is not None and ct_img.GetSize() == ref_img.GetSize():  # a CT on another grid is left out too
            ct_arr = sitk.GetArrayFromImage(ct_img).astype(np.float32)
    spacing = tuple(float(s) for s in ref_img.GetSpacing()[::-1])
    source = _geometry(pet_raw if pet is not None else ref_raw)
    return {"reference": ref, "prediction": prediction, "probability": probability, "suv": suv, "spacing": spacing,
            "n_votes": len(votes), "ct": ct_arr, "lps_image": _geometry(ref_img), "source_image": source}


def _geometry(image):
    """A one-voxel-per-slice-free copy: same size, origin, spacing and direction, no voxels kept in memory."""
    import SimpleITK as sitk

    out = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    out.SetOrigin(image.GetOrigin())
    out.SetSpacing(image.GetSpacing())
    out.SetDirection(image.GetDirection())
    return _Geometry(out, tuple(image.GetSize()))


class _Geometry:
    """Index <-> patient coordinates of an image (SimpleITK's transforms do not depend on its size)."""

    def __init__(self, image, size):
        self.image, self.size = image, size

    def GetSize(self):
        return self.size

    def TransformContinuousIndexToPhysicalPoint(self, index):
        return self.image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index])

    def TransformPhysicalPointToContinuousIndex(self, point):
        return self.image.TransformPhysicalPointToContinuousIndex([float(v) for v in point])


def locate(finding: Dict[str, Any], lps_image, source_image) -> Dict[str, Any]:
    """``finding`` (from :func:`strongest_finding`, in LPS array indices) with its place added: ``lps_mm``
    (DICOM patient coordinates), ``slice``/``n_slices``/``slice_z_mm`` in the source PET's own slice order."""
    from clips_nnunet.prediction.patient_report import location_of

    point = lps_image.TransformContinuousIndexToPhysicalPoint(finding["centre_zyx"][::-1])
    xyz = source_image.TransformPhysicalPointToContinuousIndex(point)
    return {**finding, **location_of(source_image, [xyz[2], xyz[1], xyz[0]])}


def _history_reader():
    try:
        from clips_nnunet.trainers.curriculum_history import read_history
        return read_history
    except ImportError:
        return None


def gather_losses(fold_dirs: Sequence[Path]) -> Dict[str, Dict[str, float]]:
    """Loss-trajectory evidence per case, averaged over the folds whose curriculum history holds the case; empty
    when no fold has a history (stock trainers) or the reader is not available."""
    read_history = _history_reader()
    if read_history is None:
        return {}
    per_case: Dict[str, List[Dict[str, float]]] = {}
    for fold in fold_dirs:
        try:
            history = read_history(fold)
        except (DatasetError, OSError, ValueError, KeyError):
            continue
        values = history.estimates if history.estimates is not None else None
        if values is None or not len(history.epochs):
            continue
        fold_ev = loss_evidence({c: values[:, i].tolist() for i, c in enumerate(history.case_ids)})
        for c, ev in fold_ev.items():
            per_case.setdefault(c, []).append(ev)
    return {c: {k: float(np.nanmean([e[k] for e in evs])) if any(np.isfinite(e[k]) for e in evs) else math.nan
                for k in evs[0]} for c, evs in per_case.items()}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def _write_csv(rows: Sequence[Dict[str, Any]], path: Path) -> None:
    keys = list(CSV_FIRST) + sorted({k for r in rows for k in r} - set(CSV_FIRST) - {"finding"})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for i, r in enumerate(rows, 1):
        writer.writerow({k: _fmt(v) for k, v in {**r, "rank": i}.items() if k != "finding"})
    atomic_write_text(path, buf.getvalue())


def _metadata_numbers(path: Optional[PathLike]) -> Dict[str, Dict[str, float]]:
    if path is None:
        return {}
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise DatasetError(f"--metadata {path}: cannot read it as JSON ({e})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"--metadata {path}: expected a JSON object case_id -> {{measure: value}}")
    try:
        from clips_nnunet.curriculum.difficulty import METADATA_MEASURES
        allowed = set(METADATA_MEASURES) | {"planted_difficulty"}
    except ImportError:
        allowed = {"tmtv_ml", "n_lesions", "suv_max", "planted_difficulty"}
    return {str(c): {f"meta_{k}": float(v) for k, v in m.items() if k in allowed and isinstance(v, (int, float))
                     and not isinstance(v, bool)} for c, m in data.items() if isinstance(m, dict)}


def run_audit(results_dirs: Sequence[PathLike], out_dir: PathLike, gt_dir: Optional[PathLike] = None,
              images_dir: Optional[PathLike] = None, metadata: Optional[PathLike] = None, use_npz: bool = True,
              write_html: bool = True, pet_channel: int = 1, params: AuditParams = AuditParams(),
              progress: bool = False, ct_channel: Optional[int] = 0) -> List[Dict[str, Any]]:
    """Audit the cross-validation(s) in ``results_dirs``; write OUT/audit.csv, audit.json, index.html; return the
    rows (sorted by suspicion). Raises :class:`DatasetError` for unusable input (no case could be read).

    Each suspect case (an annotation error kind) gets ``finding``: its strongest region (:func:`strongest_finding`
    of that kind's evidence) with its place (:func:`locate`); the page shows planes through it, PET over the CT
    ``{case}_{ct_channel:04d}`` of ``images_dir`` where that exists (None: PET alone). A warning is added
    (``audit.json`` ``warnings``, the page's top) when the models are poor (:func:`model_quality_warning`)."""
    if not results_dirs:
        raise DatasetError("give at least one nnU-Net results folder")
    dirs = [Path(d) for d in results_dirs]
    predictions: Dict[str, List[Tuple[Path, Optional[Path]]]] = {}
    fold_dirs: List[Path] = []
    endings = set()
    for d in dirs:
        cases, folds, ending = find_validation(d)
        endings.add(ending)
        fold_dirs += folds
        for c, e in cases.items():
            predictions.setdefault(c, []).extend(e)
    if len(endings) > 1:
        raise DatasetError(f"the results folders use different file endings {sorted(endings)}; audit one dataset")
    ending = endings.pop()
    gt = Path(gt_dir) if gt_dir is not None else reference_masks_for_results(dirs[0])
    if not gt.is_dir():
        raise DatasetError(f"reference folder {gt} does not exist")
    if images_dir is not None and not Path(images_dir).is_dir():
        raise DatasetError(f"--images {images_dir} does not exist; give the nnU-Net imagesTr folder with the PET")
    meta = _metadata_numbers(metadata)
    losses = gather_losses(fold_dirs)
    evidence: Dict[str, Dict[str, float]] = {}
    pictures: Dict[str, Dict[str, Optional[str]]] = {}
    inputs: Dict[str, Tuple[Path, Optional[Path], Optional[Path]]] = {}
    failed: Dict[str, str] = {}
    n_ct = 0
    for case in sorted(predictions):
        ref_path = gt / f"{case}{ending}"
        if not ref_path.is_file():
            failed[case] = f"{case}: no reference {ref_path.name} in {gt.name}"
            continue
        pet = ct = None
        if images_dir is not None:
            pet = Path(images_dir) / f"{case}_{pet_channel:04d}{ending}"
            if not pet.is_file():
                failed[case] = f"{case}: no PET {pet.name} in the --images folder"
                continue
            if ct_channel is not None and ct_channel != pet_channel:
                ct = Path(images_dir) / f"{case}_{ct_channel:04d}{ending}"
        try:
            arrays = read_case(case, predictions[case], ref_path, pet, use_npz)
            ev = case_evidence(arrays["reference"], arrays["prediction"], arrays["spacing"],
                               probability=arrays["probability"], suv=arrays["suv"], params=params)
        except (DatasetError, ValueError, OSError) as e:
            failed[case] = str(e)
            continue
        ev["n_votes"] = float(arrays["n_votes"])
        ev.update(losses.get(case, {}))
        ev.update(meta.get(case, {}))
        evidence[case] = ev
        inputs[case] = (ref_path, pet, ct)
        if write_html:
            pictures[case] = {"mip": mip_picture(arrays["suv"], arrays["reference"], arrays["prediction"],
                                                 arrays["spacing"]), "planes": None}
    if not evidence:
        first = next(iter(failed.values()), "no case")
        raise DatasetError(f"no case could be audited ({len(failed)} failed; first: {first})")
    rows = score_cohort(evidence, params)
    for row in rows:
        if row["error_kind"] in ANNOTATION_KINDS:
            ref_path, pet, ct = inputs[row["case_id"]]
            try:
                n_ct += _describe_finding(row, predictions[row["case_id"]], ref_path, pet, ct, use_npz, params,
                                          pictures if write_html else None)
            except (DatasetError, ValueError, OSError) as e:  # the case was read once: say so, keep the row
                row["finding_error"] = str(e)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes = [f"{len(rows)} cases audited from {len(dirs)} results folder(s), {len(fold_dirs)} fold(s); "
             f"probabilities: {'yes' if any(r['has_probabilities'] for r in rows) else 'no'}; "
             f"PET: {'yes' if images_dir is not None else 'no'}; "
             f"CT under the planes: {n_ct} of {sum(r['error_kind'] in ANNOTATION_KINDS for r in rows)} suspect "
             f"case(s); loss history: {'yes' if losses else 'no'}."]
    if failed:
        notes.append(f"{len(failed)} case(s) could not be audited: {', '.join(sorted(failed))} (see audit.json).")
    warning = model_quality_warning(rows)
    warnings = [warning] if warning else []
    _write_csv(rows, out / "audit.csv")
    atomic_write_json(out / "audit.json", {
        "results_folders": [d.name for d in dirs], "n_cases": len(rows), "failed": failed, "warnings": warnings,
        "inputs": {"probabilities": bool(use_npz), "pet": images_dir is not None, "loss_history": bool(losses)},
        "params": params.to_dict(), "cases": rows})
    if write_html:
        page_id = "|".join([d.name for d in dirs] + [str(len(rows))] + sorted(evidence))
        page_id = hashlib.sha256(page_id.encode("utf-8")).hexdigest()[:16]
        atomic_write_text(out / "index.html", render_html(rows, pictures, "clips-nnunet audit", notes, warnings,
                                                          page_id=page_id))
    return rows


def _describe_finding(row: Dict[str, Any], entries, ref_path: Path, pet: Optional[Path], ct: Optional[Path],
                      use_npz: bool, params: AuditParams, pictures: Optional[Dict[str, Dict[str, Optional[str]]]]
                      ) -> int:
    """Read a suspect case again, locate its finding into ``row`` (``finding`` and the ``finding_*`` columns) and,
    with ``pictures``, draw the MIP with the finding ringed and the planes through it. Returns 1 when a CT was
    drawn under the planes."""
    case = row["case_id"]
    arrays = read_case(case, entries, ref_path, pet, use_npz, ct=ct)
    regions: Dict[str, np.ndarray] = {}
    case_evidence(arrays["reference"], arrays["prediction"], arrays["spacing"], probability=arrays["probability"],
                  suv=arrays["suv"], params=params, regions=regions)
    finding = strongest_finding(regions[row["error_kind"]], arrays["spacing"], params.connectivity)
    if finding is None:
        return 0
    finding = locate(finding, arrays["lps_image"], arrays["source_image"])
    row["finding"] = finding
    row.update({"finding_x_mm": finding["lps_mm"][0], "finding_y_mm": finding["lps_mm"][1],
                "finding_z_mm": finding["lps_mm"][2], "finding_slice": finding["slice"],
                "finding_ml": finding["volume_ml"]})
    if pictures is not None:
        pictures[case] = {
            "mip": mip_picture(arrays["suv"], arrays["reference"], arrays["prediction"], arrays["spacing"],
                               finding_zyx=finding["centre_zyx"]),
            "planes": planes_picture(arrays["suv"], arrays["ct"], arrays["reference"], arrays["prediction"],
                                     arrays["spacing"], finding["voxel_zyx"])}
    return int(arrays["ct"] is not None and pictures is not None)
