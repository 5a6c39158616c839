"""DICOM PET/CT cohort -> nnU-Net raw dataset (``clips-nnunet convert``); the per-study and cohort pipelines.

Per study (:func:`prepare_study`, also used for new patients at prediction time, so they get identical SUV and
geometry):

1. PET series -> float32 SUVbw volume (:func:`clips_nnunet.dataset_conversion.suv.read_pet_suv`, QIBA/IBSI).
2. CT series (HU, float32) -> resampled onto the PET grid, linear, filled with -1024 HU outside the CT; a warning
   when the CT does not cover the PET.
3. Lesion mask onto the PET grid: DICOM SEG (frames mapped through their referenced instances), RTSTRUCT
   (even-odd rule) or a NIfTI/NRRD file; a mask drawn on the CT is brought to the PET grid by occupancy >= 0.5.
4. Optional common target spacing (CT and PET linear, mask by occupancy).

Cohort (:func:`convert_cohort`): index the folder(s), choose series per study (:mod:`.select`), give each study a
pseudonymous case id (:class:`.write.CaseRegistry`), convert studies in parallel (``workers`` processes, one
SimpleITK thread each), write cases atomically, then dataset.json, case_metadata.json, conversion_report.json and
the patient-grouped splits. One study's failure is recorded and the others go on. A per-case completion record in
the private folder makes ``resume`` skip finished cases; files of unfinished cases (a killed run) are deleted.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from clips_nnunet.errors import ClipsError, PatientError
from clips_nnunet.io_utils import PathLike, atomic_write_json, atomic_write_text, dumps_json, read_json

from . import write as W
from .metadata import case_metadata, write_case_metadata

REPORT_NAME = "conversion_report.json"
STATE_DIR = "cases"
MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


# ----------------------------------------------------------------------------------------------------------------------
# per study
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class PreparedStudy:
    """One study on the PET grid: CT (HU) and PET (SUVbw) float32 images, mask (z, y, x uint8) or None."""
    ct_on_pet: sitk.Image
    pet_suv: sitk.Image
    mask: Optional[np.ndarray]
    mask_source: Optional[str] = None
    vendor: Optional[str] = None
    warnings: List[str] = field(default_factory=list)
    decisions: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class LabelOption:
    """Parsed ``--labels``: mode ``auto``, ``seg``, ``rtstruct``, ``none`` or ``nifti`` (with ``folder``)."""
    mode: str = "auto"
    folder: Optional[Path] = None

    @classmethod
    def parse(cls, text: str) -> "LabelOption":
        text = (text or "auto").strip()
        if text.lower().startswith("nifti:"):
            folder = Path(text.split(":", 1)[1]).expanduser()
            if not folder.is_dir():
                raise ClipsError(f"--labels {text}: folder {folder} does not exist; pass nifti:DIR with the mask "
                                 "files named <PatientID>.nii.gz or <PatientID>_<StudyInstanceUID>.nii.gz")
            return cls("nifti", folder)
        if text.lower() not in ("auto", "seg", "rtstruct", "none"):
            raise ClipsError(f"--labels {text!r} is not one of auto, seg, rtstruct, none, nifti:DIR")
        return cls(text.lower(), None)


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
        if selection.ct is not None and obj.frame_of_reference_uid == selection.ct.frame_of_reference_uid \
                and obj.modality == "RTSTRUCT":
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
    from .read import check_coverage, read_ct_with_headers, resample_to_reference
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
            mask, source = read_mask_file(f, pet), "nifti"
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
    return PreparedStudy(ct_on_pet, pet, mask, source, vendor, warnings, list(selection.decisions))


# ----------------------------------------------------------------------------------------------------------------------
# cohort
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class CaseJob:
    """One study to convert. ``kind`` ``dicom`` (payload: StudySelection) or ``autopet`` (payload: file paths)."""
    case_id: str
    group: str
    test_only: bool
    kind: str
    payload: Any
    label: str
    secrets: List[str] = field(default_factory=list)
    overrides: Any = None


@dataclass
class ConversionReport:
    """Outcome of a cohort conversion; ``cases`` maps case id -> record (status converted/failed/skipped)."""
    dataset_dir: Path
    private_dir: Path
    cases: Dict[str, Dict[str, Any]]
    warnings: List[str]
    splits_written: bool

    @property
    def failed(self) -> List[str]:
        return sorted(c for c, r in self.cases.items() if r["status"] == "failed")

    @property
    def converted(self) -> List[str]:
        return sorted(c for c, r in self.cases.items() if r["status"] == "converted")

    def summary_table(self) -> str:
        """Plain-text table: one row per case (status, split, TMTV, lesions, reason/warnings)."""
        rows = [("case", "status", "split", "TMTV ml", "lesions", "notes")]
        for case, r in sorted(self.cases.items()):
            md = r.get("metadata") or {}
            tmtv = md.get("tmtv_ml")
            notes = r.get("reason") or "; ".join(r.get("warnings", []))
            rows.append((case, r["status"] + (" (resumed)" if r.get("resumed") else ""), r.get("split", "-"),
                         "-" if tmtv is None else f"{tmtv:.1f}", str(md.get("n_lesions", "-")),
                         (notes[:110] + "...") if len(notes) > 113 else notes))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = ["  ".join(v.ljust(w) for v, w in zip(row[:5], widths)) + "  " + row[5] for row in rows]
        n_ok = len(self.converted)
        lines.append(f"converted {n_ok}, failed {len(self.failed)}, skipped "
                     f"{sum(r['status'] == 'skipped' for r in self.cases.values())} -> {self.dataset_dir}")
        return "\n".join(lines)


def _init_worker() -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _prepare_autopet(paths: Dict[str, str], label: str) -> PreparedStudy:
    from .masks import read_mask_file
    from .read import resample_to_reference

    try:
        pet = sitk.ReadImage(paths["pet"], sitk.sitkFloat32)
        ct = sitk.ReadImage(paths["ct"], sitk.sitkFloat32)
    except RuntimeError as e:
        raise PatientError(label, f"cannot read the NIfTI files ({str(e).splitlines()[0][:200]}); re-download "
                                  "the study") from e
    warnings = []
    if ct.GetSize() != pet.GetSize() or not np.allclose(ct.GetSpacing(), pet.GetSpacing(), atol=1e-4) \
            or not np.allclose(ct.GetOrigin(), pet.GetOrigin(), atol=1e-3):
        warnings.append("CTres is not on the SUV grid: resampled (linear, -1024 HU fill)")
        ct = resample_to_reference(ct, pet, "linear", -1024.0)
    mask = read_mask_file(paths["seg"], pet) if paths.get("seg") else None
    return PreparedStudy(ct, pet, mask, "nifti" if mask is not None else None, None, warnings, [])


def _state_path(private_dir: Path, case_id: str) -> Path:
    return private_dir / STATE_DIR / f"{case_id}.json"


def run_case(job: CaseJob, options: Dict[str, Any]) -> Dict[str, Any]:
    """Convert one case and write its files and completion record; never raises (failures become records)."""
    t0 = time.perf_counter()
    dataset_dir, private_dir = Path(options["dataset_dir"]), Path(options["private_dir"])
    record: Dict[str, Any] = {"case_id": job.case_id, "patient_group": job.group}
    try:
        if job.kind == "dicom":
            prepared = prepare_study(job.payload, job.overrides, options["labels"], options["roi"],
                                     options["target_spacing"], label=job.label)
        else:
            prepared = _prepare_autopet(job.payload, job.label)
        mask = None if job.test_only else prepared.mask
        split = "train" if mask is not None else "test"
        spacing_zyx = tuple(reversed(prepared.pet_suv.GetSpacing()))
        suv = sitk.GetArrayViewFromImage(prepared.pet_suv)
        # the (gzip-bound) NIfTI writes run in a second thread while the lesion metadata is computed: SimpleITK
        # releases the GIL while writing. The completion record below is written only after both have finished.
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=1) as writer:
            written = writer.submit(W.write_case, dataset_dir, job.case_id, prepared.ct_on_pet, prepared.pet_suv,
                                    mask)
            metadata = case_metadata(prepared.mask, suv, spacing_zyx, vendor=prepared.vendor, split=split,
                                     group=job.group)
            written.result()
        record.update(status="converted", split=split, mask_source=prepared.mask_source,
                      warnings=list(prepared.warnings), decisions=list(prepared.decisions), metadata=metadata)
        if job.test_only and prepared.mask is not None:
            record["warnings"].append("from a --test cohort: written to imagesTs; its mask is used only in metadata")
        record["seconds"] = round(time.perf_counter() - t0, 2)
        atomic_write_json(_state_path(private_dir, job.case_id), record)
    except PatientError as e:
        record.update(status="failed", reason=e.reason)
    except Exception as e:  # one study never stops the cohort: record and go on
        record.update(status="failed", reason=f"unexpected {type(e).__name__}: {e}")
    record.setdefault("seconds", round(time.perf_counter() - t0, 2))
    record["secrets"] = job.secrets
    return record


def _run_jobs(jobs: List[CaseJob], options: Dict[str, Any], workers: int, progress: bool) -> List[Dict[str, Any]]:
    from tqdm.auto import tqdm

    results: List[Dict[str, Any]] = []
    bar = tqdm(total=len(jobs), desc="converting", unit="study", disable=not progress)
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            results.append(run_case(job, options))
            bar.update()
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
            futures = [pool.submit(run_case, job, options) for job in jobs]
            for fut in as_completed(futures):
                results.append(fut.result())
                bar.update()
    bar.close()
    return results


def finish_dataset(dataset_dir: Path, private_dir: Path, name: str, records: Dict[str, Dict[str, Any]],
                   warnings: List[str], preprocessed_root: Optional[Path], force: bool, n_folds: int = 5,
                   secrets_: Sequence[str] = (), extra_report: Optional[Dict[str, Any]] = None) -> ConversionReport:
    """dataset.json, case_metadata.json, conversion_report.json (scrubbed) and splits after the cases are written."""
    converted = {c: r for c, r in records.items() if r["status"] == "converted"}
    train = {c: r for c, r in converted.items() if r["split"] == "train"}
    W.remove_incomplete(dataset_dir, converted)
    W.write_dataset_json(dataset_dir, name, len(train))
    write_case_metadata(dataset_dir, {c: r["metadata"] for c, r in converted.items()})
    splits_written = False
    if preprocessed_root is not None and len({r["patient_group"] for r in train.values()}) >= 2:
        splits = W.patient_grouped_splits({c: r["patient_group"] for c, r in train.items()}, n_folds=n_folds)
        splits_written = W.write_splits(preprocessed_root / dataset_dir.name, splits, force=force)
        if not splits_written:
            warnings.append("splits_final.json exists in nnUNet_preprocessed and was kept (use --force to rewrite)")
    elif preprocessed_root is not None:
        warnings.append("fewer than 2 labelled patients: no splits_final.json written")
    public_cases = {}
    for c, r in sorted(records.items()):
        r = {k: v for k, v in r.items() if k != "secrets"}
        public_cases[c] = r
    report = {"cases": public_cases, "warnings": warnings,
              "counts": {"converted": len(converted), "train": len(train), "test": len(converted) - len(train),
                         "failed": sum(r["status"] == "failed" for r in records.values()),
                         "skipped": sum(r["status"] == "skipped" for r in records.values())},
              **(extra_report or {})}
    atomic_write_json(private_dir / REPORT_NAME, report)
    atomic_write_text(dataset_dir / REPORT_NAME, W.scrub(dumps_json(report), secrets_))
    return ConversionReport(dataset_dir, private_dir, public_cases, warnings, splits_written)


def _setup(dataset_id: int, name: str, private_dir: Optional[PathLike], raw_root: Optional[PathLike],
           preprocessed_root: Optional[PathLike], prefix: Optional[str]):
    folder = W.dataset_folder_name(dataset_id, name)
    raw = Path(raw_root) if raw_root else W.nnunet_folder("nnUNet_raw")
    pre = Path(preprocessed_root) if preprocessed_root else (
        Path(os.environ["nnUNet_preprocessed"]) if os.environ.get("nnUNet_preprocessed") else None)
    dataset_dir = raw / folder
    private = W.check_private_dir(Path(private_dir) if private_dir else W.default_private_dir(raw, folder), raw)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    private.mkdir(parents=True, exist_ok=True)
    registry = W.CaseRegistry.load(private, prefix or name.replace("-", ""))
    return dataset_dir, private, pre, registry


def _resumable(private: Path, dataset_dir: Path, case_id: str) -> Optional[Dict[str, Any]]:
    state = _state_path(private, case_id)
    if not state.is_file():
        return None
    try:
        record = read_json(state)
    except (OSError, ValueError):
        return None
    if record.get("status") != "converted":
        return None
    files = W.case_files(dataset_dir, case_id, record.get("split") == "train")
    if not all(f.is_file() for f in files):
        return None
    return record


def _execute(jobs: List[CaseJob], records: Dict[str, Dict[str, Any]], dataset_dir: Path, private: Path,
             options: Dict[str, Any], resume: bool, workers: int, progress: bool) -> List[str]:
    """Resume bookkeeping + run; fills ``records``; returns the secrets of all jobs (for scrubbing)."""
    secrets_: List[str] = []
    todo: List[CaseJob] = []
    for job in jobs:
        secrets_.extend(job.secrets)
        done = _resumable(private, dataset_dir, job.case_id) if resume else None
        if done is not None:
            done["resumed"] = True
            records[job.case_id] = done
        else:
            _state_path(private, job.case_id).unlink(missing_ok=True)
            todo.append(job)
    W.remove_incomplete(dataset_dir, [c for c, r in records.items() if r.get("resumed")])
    for r in _run_jobs(todo, options, workers, progress):
        r.pop("secrets", None)
        records[r["case_id"]] = r
    return secrets_


def convert_cohort(cohort_dir: PathLike, dataset_id: int, name: str, labels: str = "auto",
                   roi: Optional[str] = None, test_dirs: Sequence[PathLike] = (), workers: int = 1,
                   resume: bool = False, force: bool = False, private_dir: Optional[PathLike] = None,
                   overrides_csv: Optional[PathLike] = None, target_spacing: Optional[Sequence[float]] = None,
                   prefix: Optional[str] = None, raw_root: Optional[PathLike] = None,
                   preprocessed_root: Optional[PathLike] = None, progress: bool = True,
                   n_folds: int = 5) -> ConversionReport:
    """Convert a DICOM PET/CT cohort into ``<nnUNet_raw>/Dataset{id}_{name}`` (see the module docstring).

    ``test_dirs``: further cohorts whose studies all go to imagesTs. ``raw_root`` / ``preprocessed_root`` default to
    ``$nnUNet_raw`` / ``$nnUNet_preprocessed``; ``private_dir`` defaults to ``<parent of nnUNet_raw>/clips_private/
    Dataset{id}_{name}``. Returns the :class:`ConversionReport`; failures are in it (nothing raised for them).
    """
    from .index import index_dicom_folder
    from .select import select_studies

    if not isinstance(workers, int) or workers < 1:
        raise ClipsError(f"-j/--workers must be a positive integer, got {workers!r}")
    option = LabelOption.parse(labels)
    if roi is not None:
        try:
            re.compile(roi)
        except re.error as e:
            raise ClipsError(f"--roi {roi!r} is not a valid regular expression ({e})") from e
    overrides: Dict[str, Any] = {}
    if overrides_csv:
        from .overrides import load_overrides
        overrides = load_overrides(overrides_csv)
    dataset_dir, private, pre, registry = _setup(dataset_id, name, private_dir, raw_root, preprocessed_root, prefix)

    warnings: List[str] = []
    indexes = []
    for root, test_only in [(cohort_dir, False)] + [(t, True) for t in test_dirs]:
        idx = index_dicom_folder(root, progress=progress, workers=workers)  # headers read in parallel too
        indexes.append((idx, test_only))
        if idx.unreadable:
            warnings.append(f"{len(idx.unreadable)} unreadable DICOM file(s) in {'a --test' if test_only else 'the'} "
                            f"cohort (listed in the private report)")
    keys = [(p, s) for idx, _ in indexes for p in sorted(idx.patients) for s in sorted(idx.patients[p])]
    case_of = registry.assign(keys)
    registry.save()
    unreadable = [str(p) for idx, _ in indexes for p, _ in idx.unreadable]

    records: Dict[str, Dict[str, Any]] = {}
    jobs: List[CaseJob] = []
    for idx, test_only in indexes:
        for patient_key in sorted(idx.patients):
            studies = idx.patients[patient_key]
            group = registry.groups[patient_key]
            plabel = f"patient {group}"
            secrets_ = [patient_key]
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
                jobs.append(CaseJob(cid, group, test_only, "dicom", sel, f"{cid} ({plabel})", secrets_,
                                    overrides.get(patient_key)))
    options = {"dataset_dir": str(dataset_dir), "private_dir": str(private), "labels": option, "roi": roi,
               "target_spacing": None if target_spacing is None else [float(v) for v in target_spacing]}
    secrets_all = _execute(jobs, records, dataset_dir, private, options, resume, workers, progress)
    secrets_all += list(registry.groups)  # every PatientID seen
    report = finish_dataset(dataset_dir, private, name, records, warnings, pre, force, n_folds, secrets_all,
                            extra_report={"options": {"labels": option.mode, "roi": roi, "workers": workers,
                                                      "resume": resume, "target_spacing": options["target_spacing"]}})
    if unreadable:
        data = read_json(private / REPORT_NAME)
        data["unreadable_files"] = unreadable
        atomic_write_json(private / REPORT_NAME, data)
    return report
