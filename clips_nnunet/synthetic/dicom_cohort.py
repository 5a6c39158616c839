"""Synthetic lymphoma PET/CT DICOM cohort with known ground truth (``clips-nnunet synth``).

Each patient is an analytic body phantom (trunk, neck, head; lungs, spine, liver, kidneys, heart, brain, bladder)
with physiological FDG uptake, and lymphoma lesions at lymph-node stations (cervical, supraclavicular, axillary,
mediastinal, hilar, para-aortic, mesenteric, splenic, iliac, inguinal). A per-patient *planted difficulty*
``d`` in [0, 1] (spread evenly over the cohort, then shuffled) sets the lesions: easy patients carry a few large,
bright lesions (lesion-to-background ratio 6-10), hard patients many small, faint ones (ratio 1.6-3), some beside
the heart or hilum. Large lesions may have a necrotic (cold) core, which the mask leaves out, so masks have holes.

The phantom itself (grids, organs, lesion stations, study specs) is :mod:`clips_nnunet.synthetic.phantom`.

CT (HU) and PET are written as real DICOM with pydicom, in one frame of reference, at realistic spacings
(``small``: PET 48x48x64 at 4 mm, CT 96x96 at 2 mm in-plane and 3 mm slices; ``wholebody``: PET 200x200x350 at
2.5x2.5x4 mm, CT 512x512x700 at 0.98x0.98x2 mm). PET headers follow three vendor conventions in turn:

* Siemens: Units BQML, RadiopharmaceuticalStartDateTime.
* GE: Units BQML, only RadiopharmaceuticalStartTime, SeriesTime later than the acquisition (re-reconstructed
  series), decay-correction datetime in the private tag (0009,100D) (creator ``GEMS_PETD_01``).
* Philips: Units CNTS with the SUV factor (7053,1000) and the Bq/ml factor (7053,1009)
  (creator ``Philips PET Private Group``).

All use DecayCorrection START, and weight, dose, half-life and times are consistent with the planted SUV, so the
SUVbw that a correct QIBA/IBSI conversion gives is known exactly: the ground truth
``ground_truth/<study>_suv.nii.gz`` is computed from the *stored* integers and the header values as written
(``SUV = (stored * slope + intercept) * f``, with ``f = weight_g / (dose * 2^-(t_ref - t_inj)/T_half)`` for BQML and
``f = (7053,1000)`` for CNTS). Lesion masks are written as a DICOM SEG (highdicom) and an RTSTRUCT, both on the PET
series; ``ground_truth/<study>_label.nii.gz`` holds the same mask on the PET grid. ``ground_truth/manifest.json``
(private: it holds the fake identifiers) lists each study, its difficulty descriptors and the planted faults.

Patients carry PatientName/PatientID/PatientBirthDate so privacy checks have something to look for; patient 0's
PatientID contains ``../`` so that code which turns header values into paths is caught.

Faults (``faults=``): ``nac`` (an extra non-attenuation-corrected PET series; must be ignored), ``localizer``
(an extra one-image CT localizer series; must be ignored), ``missing-weight`` (PatientWeight removed; that patient
must fail naming the tag, except a Philips one, whose SUV factor (7053,1000) needs no weight), ``second-study`` (a follow-up study for the same patient; two cases, one patient
group), ``corrupted`` (one PET slice file truncated; that patient must fail, the rest convert).

``phantom="twin"`` (``clips-nnunet synth --phantom twin``) replaces the box phantom by the whole-body lymphoma twin
(:mod:`clips_nnunet.synthetic.twin_cohort`, docs/synthetic.md) on the vendor's clinical grids (``wholebody``) or an
8 mm PET (``small``), with the same specs (identity, vendor, dose, faults), the same writers and the same ground
truth, plus ``<study>_tissue.nii.gz`` and the twin's per-lesion records; its annotation errors are the realistic
annotators of :mod:`clips_nnunet.synthetic.twin_annotators`.

Annotation errors (``label_error_fraction=``, ``label_error_kinds=``; :mod:`clips_nnunet.synthetic.annotation_errors`):
SEG and RTSTRUCT are written from the erroneous mask (also in ``ground_truth/<study>_label_annotated.nii.gz``);
``<study>_label.nii.gz`` stays the clean mask and the manifest entry's ``annotation_error`` says what was planted.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from clips_nnunet.dataset_conversion.write import write_image
from clips_nnunet.errors import UsageError
from clips_nnunet.io_utils import PathLike, atomic_path, atomic_write_bytes, atomic_write_json, read_json
from clips_nnunet.synthetic.annotation_errors import ERROR_KINDS, choose_error_cases, plant_annotation_error
from clips_nnunet.synthetic.phantom import (FAULTS, F18_HALF_LIFE_S, SIZES, VENDORS, GridSize, LesionSpec,  # noqa: F401
                                            StudySpec, _Frame, _ct_slice, _grid_coordinates, _pet_suv_volume,
                                            make_study_specs)

CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
PET_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.128"
MANIFEST_NAME = "manifest.json"
GROUND_TRUTH_DIR = "ground_truth"

# ----------------------------------------------------------------------------------------------------------------------
# DICOM writing
# ----------------------------------------------------------------------------------------------------------------------
def _ds_str(value: float) -> str:
    """A DICOM DS string (<= 16 characters) for ``value``; callers use ``float()`` of it for ground truth."""
    for digits in (12, 11, 10, 9, 8, 7, 6):
        s = f"{value:.{digits}g}"
        if len(s) <= 16:
            return s
    raise ValueError(f"cannot write {value} as DS")


def _common(ds: Dataset, spec: StudySpec, study_uid: str, frame_uid: str, modality: str) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    for k, v in spec.identity.items():
        setattr(ds, k, v)
    ds.PatientSex = spec.sex
    ds.PatientAge = f"{max(1, spec.study_datetime.year - int(spec.identity['PatientBirthDate'][:4])):03d}Y"
    ds.PatientSize = f"{spec.height_m:.2f}"
    if "missing-weight" not in spec.faults:
        ds.PatientWeight = _ds_str(spec.weight_kg)
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = spec.study_datetime.strftime("%Y%m%d")
    ds.StudyTime = spec.study_datetime.strftime("%H%M%S")
    ds.StudyID = f"{spec.study_number}"
    ds.AccessionNumber = f"ACC{spec.identity['PatientID'][-8:].replace('/', '')}{spec.study_number}"
    ds.ReferringPhysicianName = "ZZREFERRER^SYNTH"
    ds.StudyDescription = "PET/CT whole body FDG (synthetic)"
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.Modality = modality
    ds.InstitutionName = "Synthetic Lymphoma Centre"


def _pixel_module(ds: Dataset, pixels: np.ndarray) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()


def _save(ds: Dataset, path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    with atomic_path(path, suffix=".dcm") as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def _tm(t: dt.datetime) -> str:
    return t.strftime("%H%M%S.%f")[:13]


def _ct_series(spec: StudySpec, grid: GridSize, frame: Optional[_Frame], out_dir: Path, study_uid: str,
               frame_uid: str, rng: np.random.Generator, localizer: bool = False,
               hu_volume: Optional[np.ndarray] = None) -> str:
    """Write the CT series: slices of the box phantom (``frame``) or of ``hu_volume`` (int16 HU, on ``grid``'s CT
    grid) plus Gaussian noise of 12 HU (eight noise slices drawn once, rolled by a random shift per slice)."""
    series_uid = generate_uid()
    nz, ny, nx = grid.ct_shape
    sz, sy, sx = grid.ct_spacing
    z_axis, y_axis, x_axis = _grid_coordinates(grid.ct_shape, grid.ct_spacing)
    y2, x2 = np.broadcast_arrays(y_axis[0], x_axis[0])
    acq = spec.study_datetime + dt.timedelta(seconds=spec.uptake_s - 300)
    names = rng.permutation(nz)
    bank = None if hu_volume is None else rng.normal(0.0, 12.0, (8, ny, nx)).astype(np.float32)
    for k in range(nz):
        z = float(z_axis[k, 0, 0])
        if bank is None:
            hu = _ct_slice(x2, y2, z, spec, frame, rng)
        else:
            shift = (int(rng.integers(0, ny)), int(rng.integers(0, nx)))
            hu = hu_volume[k].astype(np.float32) + np.roll(bank[k % 8], shift, axis=(0, 1))
        stored = np.clip(np.round(hu + 1024.0), -32768, 32767).astype(np.int16)
        ds = Dataset()
        _common(ds, spec, study_uid, frame_uid, "CT")
        ds.SOPClassUID = CT_SOP_CLASS
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 2
        ds.SeriesDescription = "CT WB 3.0 attenuation"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Manufacturer = _manufacturer(spec.vendor)
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = acq.strftime("%Y%m%d")
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _tm(acq)
        ds.InstanceNumber = nz - k
        ds.ImagePositionPatient = [f"{float(x_axis[0, 0, 0]):.4f}", f"{float(y_axis[0, 0, 0]):.4f}", f"{z:.4f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = [_ds_str(sy), _ds_str(sx)]
        ds.SliceThickness = _ds_str(sz)
        ds.KVP = "120"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        _pixel_module(ds, stored)
        _save(ds, out_dir / f"IM{names[k]:05d}.dcm")
    if localizer:
        loc_dir = out_dir.parent / "CT_TOPOGRAM"
        ds = Dataset()
        _common(ds, spec, study_uid, frame_uid, "CT")
        ds.SOPClassUID = CT_SOP_CLASS
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SeriesNumber = 1
        ds.SeriesDescription = "Topogram 0.6"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.Manufacturer = _manufacturer(spec.vendor)
        ds.SeriesDate = acq.strftime("%Y%m%d")
        ds.SeriesTime = _tm(acq - dt.timedelta(minutes=2))
        ds.InstanceNumber = 1
        ds.ImagePositionPatient = [f"{-0.5 * nx * sx:.4f}", "0", f"{0.5 * nz * sz:.4f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
        ds.PixelSpacing = [_ds_str(sz), _ds_str(sx)]
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        _pixel_module(ds, np.full((nz, nx), 900, dtype=np.int16))
        _save(ds, loc_dir / "IM00000.dcm")
    return series_uid


def _manufacturer(vendor: str) -> str:
    return {"SIEMENS": "SIEMENS", "GE": "GE MEDICAL SYSTEMS", "PHILIPS": "Philips Medical Systems"}[vendor]


def _pet_series(spec: StudySpec, grid: GridSize, suv_true: np.ndarray, out_dir: Path, study_uid: str,
                frame_uid: str, rng: np.random.Generator, nac: bool = False
                ) -> Tuple[str, List[Dataset], np.ndarray, Dict[str, Any]]:
    """Write the PET series; return (series uid, datasets, ground-truth SUV as a converter must compute it, info)."""
    series_uid = generate_uid()
    nz, ny, nx = grid.pet_shape
    sz, sy, sx = grid.pet_spacing
    z_axis, y_axis, x_axis = _grid_coordinates(grid.pet_shape, grid.pet_spacing)
    t_inj = spec.study_datetime
    t_start = t_inj + dt.timedelta(seconds=spec.uptake_s)
    half_life = F18_HALF_LIFE_S
    weight_kg = spec.weight_kg
    dose_str = _ds_str(spec.dose_bq)
    elapsed = (t_start.replace(microsecond=0) - t_inj.replace(microsecond=0)).total_seconds()
    decayed_dose = float(dose_str) * 2.0 ** (-elapsed / half_life)
    bq_per_suv = decayed_dose / (float(_ds_str(weight_kg)) * 1000.0)  # Bq/ml of SUV 1
    info: Dict[str, Any] = {"vendor": spec.vendor, "units": "CNTS" if spec.vendor == "PHILIPS" else "BQML",
                            "decay_correction": "START", "elapsed_s": elapsed, "half_life_s": half_life}
    activity = suv_true.astype(np.float64) * bq_per_suv
    if nac:
        activity = activity * 0.35 + 500.0  # NAC images: different scale, must not be used
    if spec.vendor == "PHILIPS":
        bqml_per_count = 3.7
        suv_factor = float(_ds_str(bqml_per_count / bq_per_suv))
        values = activity / bqml_per_count
        info.update(bqml_factor=bqml_per_count, suv_factor=suv_factor)
    else:
        values = activity
    slices_per_bed = max(1, int(round(160.0 / sz)))
    names = rng.permutation(nz)
    gt = np.zeros(grid.pet_shape, dtype=np.float32)
    datasets: List[Dataset] = []
    n_beds = int(np.ceil(nz / slices_per_bed))
    series_dt = t_start + (dt.timedelta(minutes=35) if spec.vendor == "GE" else dt.timedelta(0))
    for k in range(nz):
        z = float(z_axis[k, 0, 0])
        v = values[k]
        slope = float(_ds_str(max(float(v.max()), 1e-3) / 32000.0))
        stored = np.clip(np.round(v / slope), 0, 32767).astype(np.int16)
        rescaled = stored.astype(np.float64) * slope
        if spec.vendor == "PHILIPS":
            gt[k] = (rescaled * suv_factor).astype(np.float32)
        else:
            gt[k] = (rescaled / bq_per_suv).astype(np.float32)
        bed = (nz - 1 - k) // slices_per_bed  # beds from head to feet
        acq = t_start + dt.timedelta(seconds=150 * bed)
        ds = Dataset()
        _common(ds, spec, study_uid, frame_uid, "PT")
        ds.SOPClassUID = PET_SOP_CLASS
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 5 if nac else 4
        ds.SeriesDescription = "PET WB NAC" if nac else "PET WB AC"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.Manufacturer = _manufacturer(spec.vendor)
        ds.SeriesDate = series_dt.strftime("%Y%m%d")
        ds.SeriesTime = _tm(series_dt)
        ds.AcquisitionDate = acq.strftime("%Y%m%d")
        ds.AcquisitionTime = _tm(acq)
        ds.ContentDate = ds.SeriesDate
        ds.ContentTime = ds.SeriesTime
        ds.InstanceNumber = nz - k
        ds.ImageIndex = nz - k
        ds.NumberOfSlices = nz
        ds.ImagePositionPatient = [f"{float(x_axis[0, 0, 0]):.4f}", f"{float(y_axis[0, 0, 0]):.4f}", f"{z:.4f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = [_ds_str(sy), _ds_str(sx)]
        ds.SliceThickness = _ds_str(sz)
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = _ds_str(slope)
        ds.Units = info["units"]
        ds.CountsSource = "EMISSION"
        ds.SeriesType = ["WHOLE BODY", "IMAGE"]
        ds.CorrectedImage = (["NORM", "DTIM", "DECY", "RAN"] if nac
                             else ["NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"])
        ds.AttenuationCorrectionMethod = "" if nac else "CTAC"
        ds.DecayCorrection = "START"
        ds.ActualFrameDuration = 150000
        ds.FrameReferenceTime = str(150000 * bed)
        ds.DecayFactor = _ds_str(2.0 ** ((acq - t_start).total_seconds() / half_life))
        ds.DoseCalibrationFactor = "1"
        ds.NumberOfTimeSlices = 1
        ds.SUVType = "BW"
        rp = Dataset()
        rp.Radiopharmaceutical = "Fluorodeoxyglucose"
        rp.RadionuclideTotalDose = dose_str
        rp.RadionuclideHalfLife = _ds_str(half_life)
        rp.RadionuclidePositronFraction = "0.97"
        rp.RadiopharmaceuticalStartTime = _tm(t_inj)
        if spec.vendor == "SIEMENS":
            rp.RadiopharmaceuticalStartDateTime = t_inj.strftime("%Y%m%d%H%M%S.%f")[:21]
        code = Dataset()
        code.CodeValue = "C-111A1"
        code.CodingSchemeDesignator = "SRT"
        code.CodeMeaning = "^18^Fluorine"
        rp.RadionuclideCodeSequence = DicomSequence([code])
        ds.RadiopharmaceuticalInformationSequence = DicomSequence([rp])
        if spec.vendor == "GE":
            ds.add_new((0x0009, 0x0010), "LO", "GEMS_PETD_01")
            ds.add_new((0x0009, 0x100D), "DT", t_start.strftime("%Y%m%d%H%M%S.00"))
        elif spec.vendor == "PHILIPS":
            ds.add_new((0x7053, 0x0010), "LO", "Philips PET Private Group")
            ds.add_new((0x7053, 0x1000), "DS", _ds_str(suv_factor))
            ds.add_new((0x7053, 0x1009), "DS", _ds_str(bqml_per_count))
        _pixel_module(ds, stored)
        _save(ds, out_dir / f"PT{names[k]:05d}.dcm")
        datasets.append(ds)
    info["n_beds"] = n_beds
    return series_uid, datasets, gt, info


def _write_nifti(array: np.ndarray, grid: GridSize, path: Path) -> None:
    img = sitk.GetImageFromArray(array)
    z_axis, y_axis, x_axis = _grid_coordinates(grid.pet_shape, grid.pet_spacing)
    img.SetOrigin((float(x_axis[0, 0, 0]), float(y_axis[0, 0, 0]), float(z_axis[0, 0, 0])))
    img.SetSpacing(tuple(float(s) for s in reversed(grid.pet_spacing)))
    write_image(img, path)


PHANTOMS = ("box", "twin")


def write_study(spec: StudySpec, cohort_dir: PathLike, size: str = "small",
                mask_formats: Sequence[str] = ("seg", "rtstruct"), phantom: str = "box") -> Dict[str, Any]:
    """Write one study's DICOM (CT, PET, masks, planted faults) and ground truth; return its manifest entry.

    ``phantom``: ``box`` (the analytic phantom of :mod:`~clips_nnunet.synthetic.phantom`, grids :data:`SIZES`) or
    ``twin`` (the whole-body twin of :mod:`~clips_nnunet.synthetic.twin_cohort`: ``size`` ``wholebody`` gives the
    vendor's clinical grids, ``small`` an 8 mm PET; annotation errors are the realistic annotators' kinds).
    """
    from clips_nnunet.dataset_conversion.dicom_out import write_dicom_seg, write_rtstruct

    cohort_dir = Path(cohort_dir)
    rng = np.random.default_rng(spec.seed)
    study_dir = cohort_dir / f"patient_{spec.patient_index:03d}" / f"study_{spec.study_number}"
    study_uid, frame_uid = generate_uid(), generate_uid()
    twin = None
    if phantom == "twin":
        from clips_nnunet.synthetic.twin_cohort import render_twin_study

        twin = render_twin_study(spec, size)
        grid, frame, suv_true, label = twin.grid, None, twin.suv, twin.label
    elif phantom == "box":
        grid = SIZES[size]
        frame = _Frame(tuple(n * s for n, s in zip(grid.pet_shape, grid.pet_spacing)))
        suv_true, label = _pet_suv_volume(grid, spec, frame, rng)
    else:
        raise ValueError(f"unknown phantom {phantom!r}: choose from {', '.join(PHANTOMS)}")
    ct_uid = _ct_series(spec, grid, frame, study_dir / "CT", study_uid, frame_uid, rng,
                        localizer="localizer" in spec.faults, hu_volume=None if twin is None else twin.hu)
    pet_uid, pet_ds, gt_suv, info = _pet_series(spec, grid, suv_true, study_dir / "PET", study_uid, frame_uid, rng)
    if "nac" in spec.faults:
        _pet_series(spec, grid, suv_true, study_dir / "PET_NAC", study_uid, frame_uid, rng, nac=True)
    entry: Dict[str, Any] = {"key": spec.key, "patient_index": spec.patient_index, "study_number": spec.study_number,
                             "study_dir": str(study_dir.relative_to(cohort_dir)), "study_uid": study_uid,
                             "ct_series_uid": ct_uid, "pet_series_uid": pet_uid, "frame_of_reference_uid": frame_uid,
                             "identity": dict(spec.identity), "study_date": spec.study_datetime.strftime("%Y%m%d"),
                             "vendor": spec.vendor, "difficulty": spec.difficulty, "faults": list(spec.faults),
                             "weight_kg": spec.weight_kg, "dose_bq": spec.dose_bq, "pet": info,
                             "lesions": [dataclasses.asdict(l) for l in spec.lesions],
                             "has_hole": bool(any(l.core_fraction > 0 for l in spec.lesions)),
                             "n_label_voxels": int(label.sum()),
                             "tmtv_ml": float(label.sum() * np.prod(grid.pet_spacing) / 1000.0)}
    if twin is not None:
        entry.update(twin.manifest_fields(), phantom="twin", grid=dataclasses.asdict(grid))
    annotated, entry["annotation_error"] = label, {"kind": None}
    if spec.annotation_error and twin is not None:
        from clips_nnunet.synthetic.twin_cohort import annotate_study

        annotated, entry["annotation_error"] = annotate_study(twin, gt_suv, spec.annotation_error, spec.seed)
    elif spec.annotation_error:
        annotated, entry["annotation_error"] = plant_annotation_error(
            label, spec.annotation_error, np.random.default_rng([spec.seed, 1]), suv=gt_suv)
    if annotated.any():
        if "seg" in mask_formats:
            write_dicom_seg(annotated, pet_ds, study_dir / "SEG" / "lesions_seg.dcm", segment_label="lymphoma",
                            algorithm_type="MANUAL", series_description="Lymphoma lesions (expert)")
        if "rtstruct" in mask_formats:
            write_rtstruct(annotated, pet_ds, study_dir / "RTSTRUCT" / "lesions_rtstruct.dcm", roi_name="Lymphoma",
                           roi_generation_algorithm="MANUAL", series_description="Lymphoma contours (expert)")
    if "corrupted" in spec.faults:
        victim = sorted((study_dir / "PET").glob("*.dcm"))[len(pet_ds) // 2]
        atomic_write_bytes(victim, victim.read_bytes()[:300])
        entry["corrupted_file"] = str(victim.relative_to(cohort_dir))
    gt_dir = cohort_dir / GROUND_TRUTH_DIR
    _write_nifti(gt_suv, grid, gt_dir / f"{spec.key}_suv.nii.gz")
    _write_nifti(label, grid, gt_dir / f"{spec.key}_label.nii.gz")
    entry["suv_path"] = f"{GROUND_TRUTH_DIR}/{spec.key}_suv.nii.gz"
    entry["label_path"] = f"{GROUND_TRUTH_DIR}/{spec.key}_label.nii.gz"
    if twin is not None:
        _write_nifti(twin.case.tissue, grid, gt_dir / f"{spec.key}_tissue.nii.gz")
        entry["tissue_path"] = f"{GROUND_TRUTH_DIR}/{spec.key}_tissue.nii.gz"
    if spec.annotation_error:
        _write_nifti(annotated, grid, gt_dir / f"{spec.key}_label_annotated.nii.gz")
        entry["annotated_label_path"] = f"{GROUND_TRUTH_DIR}/{spec.key}_label_annotated.nii.gz"
    entry["expected"] = _expected_outcome(spec)
    return entry


def _expected_outcome(spec: StudySpec) -> Dict[str, Any]:
    if "missing-weight" in spec.faults and spec.vendor != "PHILIPS":
        return {"converts": False, "error_contains": ["PatientWeight"]}
    # Philips CNTS with a SUV scale factor (7053,1000) needs no weight: that study must still convert
    if "corrupted" in spec.faults:
        return {"converts": False, "error_contains": ["missing"]}  # the truncated slice leaves a gap
    return {"converts": True, "error_contains": []}


def spec_size(size: str) -> str:
    """The box grid on which :func:`~clips_nnunet.synthetic.phantom.make_study_specs` draws a cohort's specs for
    ``size``: the size itself, and ``small`` for the twin's ``trunk``. The twin ignores the specs' box lesions, but
    their draws come before each spec's ``seed``, which seeds the twin: so a trunk twin is the same patient as the
    small one, and small and wholebody twins stay the patients they were before ``trunk`` existed."""
    return size if size in SIZES else "small"


def make_synthetic_cohort(cohort_dir: PathLike, n_patients: int = 16, seed: int = 0, size: str = "small",
                          faults: Iterable[str] = (), mask_formats: Sequence[str] = ("seg", "rtstruct"),
                          progress: bool = True, label_error_fraction: float = 0.0,
                          label_error_kinds: Optional[Sequence[str]] = None, phantom: str = "box"
                          ) -> Dict[str, Any]:
    """Write a synthetic PET/CT DICOM cohort to ``cohort_dir`` and return its manifest.

    Layout: ``patient_NNN/study_K/{CT,PET,SEG,RTSTRUCT[,PET_NAC,CT_TOPOGRAM]}/*.dcm`` and the private
    ``ground_truth/`` folder (manifest.json, per-study SUV and label NIfTI on the PET grid). Deterministic for a
    given ``seed`` (pixel data and lesions; UIDs are new on each run). ``faults``: any of :data:`FAULTS`.
    ``phantom``: ``box`` or ``twin`` (see :func:`write_study`); ``label_error_kinds`` default to all kinds of that
    phantom (:data:`~clips_nnunet.synthetic.annotation_errors.ERROR_KINDS` for the box,
    :data:`~clips_nnunet.synthetic.twin_annotators.TWIN_ERROR_KINDS` for the twin).
    """
    from tqdm import tqdm

    mask_formats = tuple(mask_formats)
    for m in mask_formats:
        if m not in ("seg", "rtstruct"):
            raise ValueError(f"unknown mask format {m!r}: use 'seg' and/or 'rtstruct'")
    if phantom not in PHANTOMS:
        raise ValueError(f"unknown phantom {phantom!r}: choose from {', '.join(PHANTOMS)}")
    known, sizes = ERROR_KINDS, tuple(SIZES)
    if phantom == "twin":
        from clips_nnunet.synthetic.twin import TWIN_SIZES as sizes
        from clips_nnunet.synthetic.twin_annotators import TWIN_ERROR_KINDS as known
    label_error_kinds = tuple(label_error_kinds or known)
    if size not in sizes:
        raise UsageError(f"size {size!r} is not a size of the {phantom} phantom: choose {', '.join(sizes)}")
    specs = make_study_specs(n_patients, seed=seed, size=spec_size(size), faults=faults)
    planned = choose_error_cases([s.key for s in specs], label_error_fraction, label_error_kinds,
                                 np.random.default_rng([seed, 1]), known=known)  # studies with an annotation error
    for s in specs:
        s.annotation_error = planned.get(s.key, "")
    cohort_dir = Path(cohort_dir)
    cohort_dir.mkdir(parents=True, exist_ok=True)
    studies = [write_study(s, cohort_dir, size=size, mask_formats=mask_formats, phantom=phantom)
               for s in tqdm(specs, desc="synth", unit="study", disable=not progress)]
    grid = dataclasses.asdict(SIZES[size]) if phantom == "box" else None  # twin: per study (vendor grids)
    manifest = {"generator": {"n_patients": n_patients, "seed": seed, "size": size, "faults": list(faults),
                              "label_error_fraction": float(label_error_fraction),
                              "label_error_kinds": list(label_error_kinds), "phantom": phantom,
                              "mask_formats": list(mask_formats), "grid": grid},
                "studies": studies}
    atomic_write_json(cohort_dir / GROUND_TRUTH_DIR / MANIFEST_NAME, manifest)
    return load_manifest(cohort_dir)  # JSON types (lists, not tuples), as later readers see it


def load_manifest(cohort_dir: PathLike) -> Dict[str, Any]:
    """The manifest written by :func:`make_synthetic_cohort`."""
    path = Path(cohort_dir) / GROUND_TRUTH_DIR / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: generate the cohort with `clips-nnunet synth {cohort_dir}`")
    return read_json(path)
