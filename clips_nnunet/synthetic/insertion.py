"""Lymphoma lesions inserted into a real, lesion-free PET/CT study (``clips-nnunet synth OUT --background DIR``).

:func:`insert_lesions` reads the background through the converter (the PET series as SUVbw with
:func:`clips_nnunet.dataset_conversion.suv.read_pet_suv_with_headers`), finds plausible sites, paints lesions with
the twin's partial-volume painter and PSF, and writes a semi-synthetic study with its truth:

* sites: voxels inside the body outline (PET SUV > 0.2, holes filled, largest component) at least
  :data:`EDGE_MM` from the skin, at least :data:`EXCLUDE_MM` from any region that a mask of the background marks
  (every ROI of every RTSTRUCT on the PET's frame of reference, e.g. the real GE patient's GTV), in cool tissue
  (SUV smoothed over ~1 cm below 2.5: not brain, heart, kidneys, bladder or tumour) and :data:`SEPARATION_MM`
  apart; a lesion's volume is capped so that it stays 8 mm from the excluded regions, half of ``EDGE_MM`` inside the
  body and clear of the other lesions. When a CT of the study covers a site, the site is named from it (``lung`` below -500 HU, ``bone`` above
  250 HU, ``soft_tissue`` otherwise); without CT coverage it is ``soft_tissue (no CT)``.
* lesions: volume log-normal (median 4 ml, clipped to 0.5-40 ml), uptake SUV 4-15, one ball (``lobulated=False``)
  or 1-9 lobules as in :mod:`~clips_nnunet.synthetic.twin_disease`; the lesion replaces the tissue it covers
  (partial volume), the difference to the background is blurred by a Gaussian PSF (FWHM 5-7 mm) and given
  activity-dependent correlated noise (CoV 12 % at the background's median SUV); voxels in the excluded regions keep
  their values exactly.
* output: ``patient_000/study_1/PET`` (the background's PET headers with new pixel data, new SOP/series UIDs,
  ImageType DERIVED), ``CT`` (the background's CT files, unchanged), ``SEG`` and ``RTSTRUCT`` of the inserted lesions,
  and ``ground_truth/`` (manifest.json, ``<key>_suv.nii.gz`` as the converter computes it, ``<key>_label.nii.gz``,
  ``<key>_excluded.nii.gz``).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from clips_nnunet.errors import UsageError
from clips_nnunet.io_utils import PathLike, atomic_write_json

EDGE_MM = 15.0
EXCLUDE_MM = 20.0
SEPARATION_MM = 60.0
KEY = "p000_s1"


def _headers(folder: Path) -> List[Tuple[Path, pydicom.Dataset]]:
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            out.append((path, pydicom.dcmread(path, stop_before_pixels=True)))
        except Exception:  # not DICOM: skipped, as the converter's index does
            continue
    return out


def find_background_series(folder: PathLike) -> Dict[str, List[Path]]:
    """``{"PT": files, "CT": files, "RTSTRUCT": files}`` of a background study: the PET series with most slices,
    the CT series of its frame of reference with most slices, every RTSTRUCT on that frame of reference."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"background {folder} is not a folder of DICOM files")
    series: Dict[Tuple[str, str], List[Tuple[Path, pydicom.Dataset]]] = {}
    for path, ds in _headers(folder):
        series.setdefault((str(ds.get("Modality", "")), str(ds.get("SeriesInstanceUID", ""))), []).append((path, ds))
    pets = [v for (m, _), v in series.items() if m == "PT"]
    if not pets:
        raise UsageError(f"no PET series in {folder}: --background needs a PET/CT study")
    pet = max(pets, key=len)
    frame = str(pet[0][1].get("FrameOfReferenceUID", ""))
    cts = [v for (m, _), v in series.items() if m == "CT" and str(v[0][1].get("FrameOfReferenceUID", "")) == frame]
    rts = [p for (m, _), v in series.items() if m == "RTSTRUCT" for p, ds in v
           if frame in {str(r.get("FrameOfReferenceUID", "")) for r in ds.get("ReferencedFrameOfReferenceSequence", [])}]
    return {"PT": [p for p, _ in pet], "CT": [p for p, _ in max(cts, key=len)] if cts else [], "RTSTRUCT": rts}


def _grid_of(image: sitk.Image):
    from clips_nnunet.synthetic.twin_render import Grid

    if not np.allclose(np.asarray(image.GetDirection()), np.eye(3).ravel(), atol=1e-4):
        raise UsageError("background PET is not axial with identity orientation; insertion supports axial series only")
    size, spacing, origin = image.GetSize(), image.GetSpacing(), image.GetOrigin()
    shape = tuple(int(n) for n in reversed(size))
    sp = tuple(float(s) for s in reversed(spacing))
    centre = tuple(float(o) + (n - 1) / 2.0 * s for o, n, s in zip(reversed(origin), shape, sp))
    return Grid(shape, sp, centre)


def _ct_on_pet(ct_files: Sequence[Path], pet: sitk.Image) -> Optional[np.ndarray]:
    """The CT resampled onto the PET grid (HU, NaN outside the CT's extent), or None without CT."""
    if not ct_files:
        return None
    from clips_nnunet.dataset_conversion.read import read_series_with_headers

    ct = read_series_with_headers(ct_files, "background CT")[0]
    out = sitk.Resample(sitk.Cast(ct, sitk.sitkFloat32), pet, sitk.Transform(), sitk.sitkLinear, float("nan"))
    return sitk.GetArrayFromImage(out)


def _excluded(rt_files: Sequence[Path], pet: sitk.Image) -> Tuple[np.ndarray, List[Dict[str, str]]]:
    from clips_nnunet.dataset_conversion.masks import rasterise_rtstruct, rtstruct_roi_names
    from clips_nnunet.errors import PatientError

    mask = np.zeros(tuple(reversed(pet.GetSize())), dtype=bool)
    used = []
    for path in rt_files:
        try:
            mask |= rasterise_rtstruct(path, pet, None, label=path.name) > 0
            used.append({"file": path.name, "rois": ", ".join(rtstruct_roi_names(path))})
        except PatientError as exc:
            used.append({"file": path.name, "skipped": str(exc)})
    return mask, used


def choose_sites(suv: np.ndarray, spacing: Sequence[float], excluded: np.ndarray, ct: Optional[np.ndarray],
                 n: int, rng: np.random.Generator) -> List[Tuple[Tuple[int, int, int], str, float]]:
    """Up to ``n`` sites: voxel (z, y, x), name, and the largest lesion radius (mm) that stays
    :data:`EDGE_MM` / 2 inside the body, 8 mm from the excluded regions and clear of the other sites."""
    smooth = ndimage.gaussian_filter(suv, [4.0 / s for s in spacing])
    body = ndimage.binary_fill_holes(ndimage.gaussian_filter(suv, 1.0) > 0.2)
    comps, count = ndimage.label(body)
    if count:
        body = comps == (1 + int(np.argmax(np.bincount(comps.ravel())[1:])))
    inside = ndimage.distance_transform_edt(body, sampling=spacing)
    ok = inside > EDGE_MM
    away = (ndimage.distance_transform_edt(~excluded, sampling=spacing) if excluded.any()
            else np.full(suv.shape, np.inf))
    ok &= away > EXCLUDE_MM
    ok &= smooth < 2.5
    candidates = np.argwhere(ok)
    chosen: List[np.ndarray] = []
    for index in rng.permutation(len(candidates)):
        p = candidates[index]
        if all(np.linalg.norm((p - q) * np.asarray(spacing)) >= SEPARATION_MM for q in chosen):
            chosen.append(p)
        if len(chosen) == n:
            break
    out = []
    for p in chosen:
        hu = float(ct[tuple(p)]) if ct is not None else float("nan")
        site = ("soft_tissue (no CT)" if not np.isfinite(hu) else
                "lung" if hu < -500 else "bone" if hu > 250 else "soft_tissue")
        room = min(float(inside[tuple(p)]) - 0.5 * EDGE_MM, float(away[tuple(p)]) - 8.0, 0.5 * SEPARATION_MM - 3.0)
        out.append((tuple(int(v) for v in p), site, room))
    return out


def _mark_derived(ds: pydicom.Dataset) -> None:
    ds.ImageType = ["DERIVED", "PRIMARY"] + [str(v) for v in list(ds.get("ImageType", []))[2:]]
    ds.SeriesDescription = (str(ds.get("SeriesDescription", "PET")) + " + synthetic lesions")[:64]
    ds.DerivationDescription = "synthetic lymphoma lesions inserted by clips-nnunet synth --background"


def _write_pet(files: Sequence[Path], suv_new: np.ndarray, suv_old: np.ndarray, out_dir: Path
               ) -> Tuple[List[pydicom.Dataset], np.ndarray]:
    """Write the PET with new pixel data (per slice: the background's SUV factor, a new slope); return the datasets
    and the SUV that a converter computes from them."""
    from clips_nnunet.synthetic.dicom_cohort import _ds_str, _save

    series_uid = generate_uid()
    datasets, gt = [], np.zeros(suv_new.shape, dtype=np.float32)
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        rescaled = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) + float(
            ds.get("RescaleIntercept", 0) or 0)
        total = float(rescaled.sum())
        factor = float(suv_old[k].astype(np.float64).sum()) / total if total > 0 else 1.0
        if np.array_equal(suv_new[k], suv_old[k]):  # no lesion on this slice: the stored pixels stay as they were
            gt[k] = suv_old[k]
            ds.SOPInstanceUID, ds.SeriesInstanceUID = generate_uid(), series_uid
            if pydicom.uid.UID(str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))).is_compressed:
                ds.PixelData = ds.pixel_array.tobytes()  # written uncompressed below
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            _mark_derived(ds)
            _save(ds, out_dir / f"PT{k:05d}.dcm")
            datasets.append(ds)
            continue
        values = suv_new[k].astype(np.float64) / factor
        slope = _ds_str(max(float(values.max()), 1e-3) / 32000.0)
        stored = np.clip(np.round(values / float(slope)), 0, 32767).astype(np.int16)
        gt[k] = (stored.astype(np.float64) * float(slope) * factor).astype(np.float32)
        for tag in ("SmallestImagePixelValue", "LargestImagePixelValue"):
            if tag in ds:
                delattr(ds, tag)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(stored, dtype="<i2").tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = slope, "0"
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        _mark_derived(ds)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        _save(ds, out_dir / f"PT{k:05d}.dcm")
        datasets.append(ds)
    return datasets, gt


def _image_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.CopyInformation(reference)
    return img


def insert_lesions(background: PathLike, out_dir: PathLike, seed: int = 0, n_lesions: Optional[int] = None,
                   lobulated: bool = True, psf_fwhm_mm: Optional[float] = None,
                   mask_formats: Sequence[str] = ("seg", "rtstruct")) -> Dict[str, Any]:
    """Insert lesions into the PET/CT study in ``background`` and write the semi-synthetic study and its truth to
    ``out_dir``; return the manifest (``ground_truth/manifest.json``). ``n_lesions``: default 3-8 (drawn)."""
    from clips_nnunet.dataset_conversion.dicom_out import write_dicom_seg, write_rtstruct
    from clips_nnunet.dataset_conversion.suv import read_pet_suv_with_headers
    from clips_nnunet.dataset_conversion.write import write_image
    from clips_nnunet.synthetic.dicom_cohort import GROUND_TRUTH_DIR, MANIFEST_NAME
    from clips_nnunet.synthetic.twin_anatomy import TISSUES
    from clips_nnunet.synthetic.twin_disease import TwinLesion, make_lobules
    from clips_nnunet.synthetic.twin_physics import add_pet_noise, apply_psf
    from clips_nnunet.synthetic.twin_render import PetCanvas

    out_dir = Path(out_dir)
    rng = np.random.default_rng([int(seed), 41])
    found = find_background_series(background)
    pet_img, files, _ = read_pet_suv_with_headers(found["PT"], label="background")
    suv = sitk.GetArrayFromImage(pet_img).astype(np.float32)
    grid = _grid_of(pet_img)
    excluded, masks_used = _excluded(found["RTSTRUCT"], pet_img)
    ct = _ct_on_pet(found["CT"], pet_img)
    n = int(n_lesions) if n_lesions else int(rng.integers(3, 9))
    sites = choose_sites(suv, grid.spacing, excluded, ct, n, rng)
    if not sites:
        raise UsageError(f"no room for a lesion in {background}: no cool voxel {EDGE_MM:.0f} mm inside the body and "
                         f"{EXCLUDE_MM:.0f} mm from its masks")
    canvas = PetCanvas(grid, TISSUES)
    canvas.activity[:] = suv
    axes = [grid.axis(i) for i in range(3)]
    lesions = []
    for i, (voxel, site, room) in enumerate(sites, start=1):
        centre = (float(axes[2][voxel[2]]), float(axes[1][voxel[1]]), float(axes[0][voxel[0]]))
        volume = float(np.clip(np.exp(rng.normal(np.log(4.0), 0.8)), 0.5, 40.0))
        volume = min(volume, 4.0 / 3.0 * np.pi * (room / 1.3) ** 3 / 1000.0)  # lobules reach ~1.3 r_eq
        value = float(rng.uniform(4.0, 15.0))
        lesion = TwinLesion(i, site, "inserted", volume, value, centre,
                            make_lobules(centre, volume, value, rng, lobulated=lobulated))
        for shape in lesion.shapes():
            canvas.paint(shape)
        lesions.append(lesion)
    fwhm = float(psf_fwhm_mm) if psf_fwhm_mm else float(rng.uniform(5.0, 7.0))
    delta = apply_psf(canvas.activity - suv, grid.spacing, fwhm)
    body_median = float(np.median(suv[suv > 0.2])) if (suv > 0.2).any() else 1.0
    noisy = add_pet_noise(np.maximum(delta, 0.0), grid.spacing, 0.12, body_median, 7.0,
                          np.random.default_rng([int(seed), 43]))
    new = np.maximum(suv + noisy + np.minimum(delta, 0.0), 0.0).astype(np.float32)
    new[excluded] = suv[excluded]
    label = ((canvas.lesion > 0) & ~excluded).astype(np.uint8)
    study_dir = out_dir / "patient_000" / "study_1"
    pet_ds, gt = _write_pet(files, new, suv, study_dir / "PET")
    for k, path in enumerate(found["CT"]):
        (study_dir / "CT").mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, study_dir / "CT" / f"CT{k:05d}.dcm")
    if "seg" in mask_formats:
        write_dicom_seg(label, pet_ds, study_dir / "SEG" / "lesions_seg.dcm", segment_label="lymphoma",
                        algorithm_type="MANUAL", series_description="Inserted lymphoma lesions (truth)")
    if "rtstruct" in mask_formats:
        write_rtstruct(label, pet_ds, study_dir / "RTSTRUCT" / "lesions_rtstruct.dcm", roi_name="Lymphoma",
                       roi_generation_algorithm="MANUAL", series_description="Inserted lymphoma lesions (truth)")
    gt_dir = out_dir / GROUND_TRUTH_DIR
    write_image(_image_like(gt, pet_img), gt_dir / f"{KEY}_suv.nii.gz")
    write_image(_image_like(label, pet_img), gt_dir / f"{KEY}_label.nii.gz")
    write_image(_image_like(excluded.astype(np.uint8), pet_img), gt_dir / f"{KEY}_excluded.nii.gz")
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    rows = []
    for lesion in lesions:
        inside = canvas.lesion == lesion.lesion_id
        rows.append({**lesion.record(), "background_suv": round(float(np.median(suv[inside])), 4) if inside.any()
                     else None, "voxels": int(inside.sum()), "measured_ml": round(int(inside.sum()) * voxel_ml, 4),
                     "measured_suvmax": round(float(gt[inside].max()), 4) if inside.any() else None})
    entry = {"key": KEY, "patient_index": 0, "study_number": 1, "study_dir": str(study_dir.relative_to(out_dir)),
             "background": str(Path(background).resolve()), "vendor": str(pet_ds[0].get("Manufacturer", "")),
             "psf_fwhm_mm": fwhm, "lesions": rows, "masks_excluded": masks_used, "faults": [],
             "n_label_voxels": int(label.sum()), "tmtv_ml": float(label.sum()) * voxel_ml,
             "annotation_error": {"kind": None}, "suv_path": f"{GROUND_TRUTH_DIR}/{KEY}_suv.nii.gz",
             "label_path": f"{GROUND_TRUTH_DIR}/{KEY}_label.nii.gz",
             "excluded_path": f"{GROUND_TRUTH_DIR}/{KEY}_excluded.nii.gz",
             "ct_files": len(found["CT"]), "expected": {"converts": True, "error_contains": []}}
    manifest = {"generator": {"background": entry["background"], "seed": int(seed), "phantom": "insertion",
                              "lobulated": bool(lobulated), "mask_formats": list(mask_formats)},
                "studies": [entry]}
    atomic_write_json(gt_dir / MANIFEST_NAME, manifest)
    return manifest
