"""DICOM PET/CT cohort -> nnU-Net raw dataset (``clips-nnunet convert``); the per-study and cohort pipelines.

Per study (:func:`prepare_study`, also used for new patients at prediction time, so they get identical SUV and
geometry):

1. PET series -> float32 SUVbw volume (:func:`clips_nnunet.dataset_conversion.suv.read_pet_suv`, QIBA/IBSI).
2. CT series (HU, float32) -> resampled onto the PET grid, linear, filled with -1024 HU outside the CT; a warning
   when the CT does not cover the PET.
3. Lesion mask onto the PET grid: DICOM SEG (frames mapped through their referenced instances), RTSTRUCT
   (even-odd rule) or a NIfTI/NRRD file; a mask drawn on the CT is brought to the PET grid by occupancy >= 0.5.
4. Optional common target spacing (CT and PET linear, mask by occupancy).

Cohort (:func:`convert_cohort`): check the arguments and the cohort (nothing is created for bad input), index the
folder(s), take the dataset lock, choose series per study (:mod:`.select`), give each study a pseudonymous case id
(:class:`.write.CaseRegistry`), convert studies in parallel, then write dataset.json, case_metadata.json,
conversion_report.json and the patient-grouped splits (:mod:`.cohort`). One study's failure is recorded and the
others go on. A per-case completion record in the private folder makes ``resume`` skip finished cases whose files
re-verify; files of unfinished cases (a killed run) are deleted; cases converted by earlier runs stay unless
``prune``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from clips_nnunet.errors import ClipsError, PatientError
from clips_nnunet.io_utils import PathLike, atomic_write_json, read_json

from . import cohort as C
from .cohort import ConversionReport, LabelOption, PreparedStudy

__all__ = ["ConversionReport", "LabelOption", "PreparedStudy", "convert_cohort", "prepare_study",
           "resample_to_spacing", "vendor_name"]

MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


# ----------------------------------------------------------------------------------------------------------------------
# per study
# ----------------------------------------------------------------------------------------------------------------------
def vendor_name(manufacturer: Optional[str]) -> Optional[str]:
    """Short vendor name from DICOM Manufacturer (SIEMENS, GE, PHILIPS, CANON, UIH or the text itself)."""
    if not manufacturer:
        return None
    m = str(manufacturer).upper()
    for key, names in (("SIEMENS", ("SIEMENS",)), ("GE", ("GE ", "GE_", "GENERAL ELECTRIC", "GEMS")),
                       ("PHILIPS", ("PHILIPS",)), ("CANON", ("CANON", "TOSHIBA")), ("UIH", ("UIH", "UNITED IMAGING"))):
        if any(m.startswith(n) or n in m for n in names) or m == key:
            return key
    return str(manufacturer).strip()[:32]


def resample_to_spacing(pet: sitk.Image, spacing_xyz: Sequence[float]) -> sitk.Image:
    """An empty reference grid covering ``pet``'s extent at ``spacing_xyz`` (mm, SimpleITK x, y, z order)."""
    spacing_xyz = [float(s) for s in spacing_xyz]
    if len(spacing_xyz) != 3 or min(spacing_xyz) <= 0:
        raise ClipsError(f"target spacing {spacing_xyz} must be three positive numbers (mm)")
    old_sp, old_size = np.asarray(pet.GetSpacing()), np.asarray(pet.GetSize())
    new_size = np.maximum(1, np.round(old_size * old_sp / np.asarray(spacing_xyz))).astype(int)
    ref = sitk.Image([int(v) for v in new_size], sitk.sitkFloat32)
    direction = np.asarray(pet.GetDirection()).reshape(3, 3)
    # keep the field of view: first voxel centre moves by half the spacing change
    shift = direction @ ((np.asarray(spacing_xyz) - old_sp) / 2.0)
    ref.SetOrigin(tuple(np.asarray(pet.GetOrigin()) + shift))
    ref.SetSpacing(spacing_xyz)
    ref.SetDirection(pet.GetDirection())
    return ref


def _find_nifti_mask(folder: Path, patient_key: str, study_uid: str) -> Optional[Path]:
    """Look the mask up by comparing listed file names with the keys (header values never build a path)."""
    wanted = {f"{patient_key}_{study_uid}", patient_key}
    best: Optional[Path] = None
    for f in sorted(folder.iterdir()):
        name = f.name
        suffix = next((s for s in MASK_SUFFIXES if name.lower().endswith(s)), None)
        if suffix is None or not f.is_file():
            continue
        stem = name[: -len(suffix)]
        if stem == f"{patient_key}_{study_uid}":
            return f
        if stem in wanted:
            best = f
    return best


def _mask_from_object(obj, selection, pet: sitk.Image, pet_headers: Sequence[Any], roi: Optional[str],
                      label: str, ct_cache: Dict[str, Any]) -> Tuple[np.ndarray, str]:
    """Mask of one SEG/RTSTRUCT object on the PET grid. ``pet_headers`` and ``ct_cache["ct_headers"]`` are the
    series' already parsed headers (the SEG reader places frames by their SOPInstanceUID and position)."""
    from .masks import mask_to_grid, rasterise_rtstruct, read_seg_mask
    from .read import read_ct_with_headers

    on_pet = selection.pet.series_uid in obj.referenced_series_uids
    on_ct = selection.ct is not None and selection.ct.series_uid in obj.referenced_series_uids
    if not on_pet and not on_ct:
        same_frame = selection.ct is not None and obj.frame_of_reference_uid == selection.ct.frame_of_reference_uid
        if same_frame and obj.modality == "RTSTRUCT":
            on_pet = True  # contours are in patient mm: rasterise directly on the PET grid
        else:
            raise PatientError(label, f"{obj.modality} object does not reference the chosen PET or CT series")
    if on_pet:
        reference, headers, where = pet, pet_headers, "PET"
    else:
        if "ct_headers" not in ct_cache:
            ct_cache["ct"], _, ct_cache["ct_headers"] = read_ct_with_headers(selection.ct.files, label,
                                                                             selection.ct.geometry_headers())
        reference, headers, where = ct_cache["ct"], ct_cache["ct_headers"], "CT"
    path = obj.files[0]
    if obj.modality == "SEG":
        mask = read_seg_mask(path, reference, [Path(h.filename) for h in headers], label=label,
                             segment_pattern=roi, reference_headers=headers)
    else:
        mask = rasterise_rtstruct(path, reference, roi_pattern=roi, label=label)
    if where == "CT":
        mask = mask_to_grid(mask, reference, pet)
    return mask.astype(np.uint8), f"{obj.modality.lower()} on {where}"


def prepare_study(selection, overrides=None, labels: LabelOption | str = "auto", roi_pattern: Optional[str] = None,
                  target_spacing: Optional[Sequence[float]] = None, label: str = "") -> PreparedStudy:
    """Read, convert and co-register one study chosen by :func:`.select.select_studies`.

    Args:
        selection: a :class:`.select.StudySelection` (PET, CT and candidate mask objects of one study).
        overrides: :class:`.overrides.SuvOverrides` for this patient, or None.
        labels: ``auto`` (first usable of the selection's masks: SEG before RTSTRUCT, on-PET before on-CT),
            ``seg``, ``rtstruct``, ``none`` (no mask), or ``nifti:DIR`` / :class:`LabelOption`.
        roi_pattern: case-insensitive regex on RTSTRUCT ROI names / SEG segment labels (None: all).
        target_spacing: optional (x, y, z) mm spacing for CT, PET and mask (default: the PET's own grid).
        label: pseudonymous patient label for error messages (never the PatientID).

    Returns a :class:`PreparedStudy`; raises :class:`PatientError` with the reason when the study cannot be used.
    """
    from .read import check_coverage, describe_exception, read_ct_with_headers, resample_to_reference
    from .suv import read_pet_suv_with_headers

    option = labels if isinstance(labels, LabelOption) else LabelOption.parse(labels)
    if selection.ct is None:
        raise PatientError(label, "no CT series pairs with the PET (same FrameOfReferenceUID); both channels are "
                                  "needed: add the CT series of this PET/CT session to the cohort folder")
    warnings: List[str] = []
    pet_files = list(selection.pet.files)
    # the CT is read in a second thread while the PET is read and converted (SimpleITK's reader releases the GIL)
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=1) as background:
        # the CT's geometry comes from the index's records: its headers are not parsed a second time
        ct_future = background.submit(read_ct_with_headers, selection.ct.files, label,
                                      selection.ct.geometry_headers())
        try:
            pet, _, pet_headers = read_pet_suv_with_headers(pet_files, overrides, label=label)
        except BaseException:
            ct_future.cancel()
            raise
        ct, _, ct_headers = ct_future.result()
    warnings.extend(check_coverage(ct, pet))
    ct_on_pet = resample_to_reference(ct, pet, "linear", -1024.0)
    ct_cache: Dict[str, Any] = {"ct": ct, "ct_headers": ct_headers}

    mask: Optional[np.ndarray] = None
    source: Optional[str] = None
    if option.mode == "nifti":
        from .masks import read_mask_file
        f = _find_nifti_mask(option.folder, selection.patient_key, selection.study_uid)
        if f is not None:
            try:
                mask, source = read_mask_file(f, pet), "nifti"
            except (ClipsError, ValueError, OSError) as e:  # the file name is the PatientID: not in the report
                raise PatientError(label, "the --labels nifti mask file of this study cannot be used ("
                                          f"{describe_exception(e, f)}); write or copy it again") from e
        else:
            warnings.append("no mask file for this study in the --labels nifti folder: written to imagesTs")
    elif option.mode != "none":
        wanted = {"auto": ("SEG", "RTSTRUCT"), "seg": ("SEG",), "rtstruct": ("RTSTRUCT",)}[option.mode]
        problems = []
        for obj in selection.masks:
            if obj.modality not in wanted:
                continue
            try:
                mask, source = _mask_from_object(obj, selection, pet, pet_headers, roi_pattern, label, ct_cache)
                break
            except PatientError as e:
                problems.append(e.reason)
        if mask is None and problems:
            raise PatientError(label, "no usable mask: " + "; ".join(problems))
        if mask is not None and problems:  # a fallback (e.g. unreadable SEG -> RTSTRUCT) is always reported
            warnings.append(f"--labels {option.mode}: used the {source} because " + "; ".join(problems))
        if mask is None and selection.masks:
            warnings.append(f"--labels {option.mode}: none of the study's {len(selection.masks)} mask object(s) is "
                            f"of that kind ({', '.join(sorted({m.modality for m in selection.masks}))}): written to "
                            "imagesTs")
    if mask is not None and not mask.any():
        warnings.append("mask is empty (lesion-free study): kept as a training case with an all-zero label")

    if target_spacing is not None:
        from .masks import mask_to_grid
        ref = resample_to_spacing(pet, target_spacing)
        if mask is not None:
            mask = mask_to_grid(mask, pet, ref)
        ct_on_pet = resample_to_reference(ct_on_pet, ref, "linear", -1024.0)
        pet = sitk.Resample(pet, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    vendor = vendor_name(selection.pet.attributes.get("Manufacturer"))
    return PreparedStudy(ct_on_pet, pet, mask, source, vendor, warnings, list(selection.decisions),
                         pet_headers=list(pet_headers))


# ----------------------------------------------------------------------------------------------------------------------
# cohort
# ----------------------------------------------------------------------------------------------------------------------
def _check_inputs(cohort_dir: PathLike, test_dirs: Sequence[PathLike], workers: int, labels: str,
                  roi: Optional[str], overrides_csv: Optional[PathLike], target_spacing: Optional[Sequence[float]],
                  prefix: Optional[str]) -> Tuple[LabelOption, Dict[str, Any]]:
    """Every argument check that needs no DICOM reading; raises :class:`ClipsError` before anything is created."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ClipsError(f"-j/--workers must be a positive integer, got {workers!r}")
    for folder, what in [(cohort_dir, "cohort folder")] + [(t, "--test cohort folder") for t in test_dirs]:
        if not Path(folder).is_dir():
            raise ClipsError(f"{what} {folder} does not exist or is not a folder: pass the folder that holds the "
                             "cohort's DICOM files")
    option = LabelOption.parse(labels)
    if roi is not None:
        try:
            re.compile(roi)
        except re.error as e:
            raise ClipsError(f"--roi {roi!r} is not a valid regular expression ({e})") from e
    if target_spacing is not None:
        spacing = [float(v) for v in target_spacing]
        if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise ClipsError(f"--target-spacing {spacing} must be three positive numbers (mm)")
    if prefix is not None and not re.match(r"^[A-Za-z][A-Za-z0-9]*$", prefix):
        raise ClipsError(f"--prefix {prefix!r} must start with a letter and hold only letters and digits")
    overrides: Dict[str, Any] = {}
    if overrides_csv:
        from .overrides import load_overrides
        overrides = load_overrides(overrides_csv)
    return option, overrides


def _jobs_and_records(indexes, registry, case_of, overrides) -> Tuple[List[C.CaseJob], Dict[str, C.Record]]:
    from .select import select_studies

    records: Dict[str, C.Record] = {}
    jobs: List[C.CaseJob] = []
    for idx, test_only in indexes:
        for patient_key in sorted(idx.patients):
            studies = idx.patients[patient_key]
            group = registry.groups[patient_key]
            plabel = f"patient {group}"
            try:
                selections = select_studies(studies, plabel)
            except PatientError as e:
                for study_uid in studies:
                    cid = case_of[(patient_key, study_uid)]
                    records[cid] = {"case_id": cid, "patient_group": group, "status": "failed", "reason": e.reason}
                continue
            chosen = {sel.study_uid for sel in selections}
            for study_uid in studies:
                if study_uid not in chosen:
                    cid = case_of[(patient_key, study_uid)]
                    records[cid] = {"case_id": cid, "patient_group": group, "status": "skipped",
                                    "reason": "no usable PET series in this study",
                                    "decisions": list(selections[0].decisions) if selections else []}
            for sel in selections:
                cid = case_of[(patient_key, sel.study_uid)]
                jobs.append(C.CaseJob(cid, group, test_only, sel, f"{cid} ({plabel})", [patient_key],
                                      overrides.get(patient_key)))
    return jobs, records


def convert_cohort(cohort_dir: PathLike, dataset_id: int, name: str, labels: str = "auto",
                   roi: Optional[str] = None, test_dirs: Sequence[PathLike] = (), workers: int = 1,
                   resume: bool = False, force: bool = False, private_dir: Optional[PathLike] = None,
                   overrides_csv: Optional[PathLike] = None, target_spacing: Optional[Sequence[float]] = None,
                   prefix: Optional[str] = None, raw_root: Optional[PathLike] = None,
                   preprocessed_root: Optional[PathLike] = None, progress: bool = True,
                   n_folds: int = 5, add: bool = False, prune: bool = False) -> ConversionReport:
    """Convert a DICOM PET/CT cohort into ``<nnUNet_raw>/Dataset{id}_{name}`` (see the module docstring).

    ``test_dirs``: further cohorts whose studies all go to imagesTs. ``raw_root`` / ``preprocessed_root`` default to
    ``$nnUNet_raw`` / ``$nnUNet_preprocessed``; ``private_dir`` defaults to ``<parent of nnUNet_raw>/clips_private/
    Dataset{id}_{name}``. Cases converted by earlier runs stay in the dataset; ``add`` lets new patients join a
    dataset that already has converted cases; ``prune`` removes the cases that are not in this run's cohort(s).

    Raises :class:`ClipsError` for bad arguments, a missing or empty cohort, a dataset id taken by another name,
    a dataset locked by another run, or new patients without ``add`` (nothing is created for these). Returns the
    :class:`ConversionReport`; failed studies are in it (nothing raised for them).
    """
    from .index import index_dicom_folder

    option, overrides = _check_inputs(cohort_dir, test_dirs, workers, labels, roi, overrides_csv,
                                      target_spacing, prefix)
    target = C.resolve_target(dataset_id, name, private_dir, raw_root, preprocessed_root)
    target.lock().check_free()  # a busy dataset fails at once, not after indexing the cohort
    warnings: List[str] = []
    indexes = []
    for root, test_only in [(cohort_dir, False)] + [(t, True) for t in test_dirs]:
        idx = index_dicom_folder(root, progress=progress, workers=workers)  # headers read in parallel too
        if not idx.patients:
            raise ClipsError(f"no DICOM series found in {root} ({len(idx.unreadable)} unreadable DICOM file(s), "
                             f"{idx.n_non_dicom} other file(s)): pass the folder that holds the cohort's DICOM files")
        indexes.append((idx, test_only))
        if idx.unreadable:
            warnings.append(f"{len(idx.unreadable)} unreadable DICOM file(s) in {'a --test' if test_only else 'the'} "
                            f"cohort (listed in the private report)")
    keys = [(p, s) for idx, _ in indexes for p in sorted(idx.patients) for s in sorted(idx.patients[p])]
    unreadable = [str(p) for idx, _ in indexes for p, _ in idx.unreadable]

    with target.lock():
        members = C.admit_cases(target, prefix or name.replace("-", ""), keys, add, prune)
        registry, case_of, earlier, pruned = members.registry, members.case_of, members.earlier, members.pruned
        jobs, records = _jobs_and_records(indexes, registry, case_of, overrides)
        options = C.ConversionOptions(target.dataset_dir, target.private_dir, option, roi,
                                      None if target_spacing is None else tuple(float(v) for v in target_spacing))
        secrets_all = C.execute(jobs, records, options, resume, workers, progress)
        secrets_all += list(registry.groups)  # every PatientID seen
        report = C.finish_dataset(target, records, warnings, force, n_folds, secrets_all, earlier=earlier,
                                  known_cases=list(registry.cases), pruned=pruned,
                                  extra_report={"options": {"labels": option.mode, "roi": roi, "workers": workers,
                                                            "resume": resume, "add": add, "prune": prune,
                                                            "target_spacing": options.target_spacing}})
        if unreadable:
            data = read_json(target.private_dir / C.REPORT_NAME)
            data["unreadable_files"] = unreadable
            atomic_write_json(target.private_dir / C.REPORT_NAME, data)
    return report
