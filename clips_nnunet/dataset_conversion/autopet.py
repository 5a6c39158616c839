"""Import the public autoPET FDG-PET-CT-Lesions NIfTI release (``clips-nnunet convert-autopet``).

The release (TCIA FDG-PET-CT-Lesions, NIfTI version) holds one folder per patient, one sub-folder per study, each
with ``CTres.nii.gz`` (CT already resampled onto the PET grid, HU), ``SUV.nii.gz`` (SUVbw) and ``SEG.nii.gz``
(lesions > 0). Studies are found wherever an ``SUV.nii.gz`` lies, at any depth; the patient is the first folder
below ``DIR``. Output: the same raw layout, case_metadata.json, report and patient-grouped splits as
:func:`clips_nnunet.dataset_conversion.convert.convert_cohort`. The study folder names (which carry scan dates in
the release) are used only for the private mapping, never in the dataset.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import SimpleITK as sitk

from clips_nnunet.errors import ClipsError, PatientError
from clips_nnunet.io_utils import PathLike, grid_difference, read_image

from . import cohort as C

CT_NAME, SUV_NAME, SEG_NAME = "CTres.nii.gz", "SUV.nii.gz", "SEG.nii.gz"


def find_autopet_studies(root: PathLike) -> List[Tuple[str, str, C.AutopetFiles]]:
    """(patient, study, files) for every folder below ``root`` holding SUV.nii.gz (sorted).

    ``files.seg`` is None when SEG.nii.gz is missing (the study goes to imagesTs); a missing CTres.nii.gz is kept
    and reported as that study's failure.
    """
    root = Path(root)
    if not root.is_dir():
        raise ClipsError(f"autoPET folder {root} does not exist: pass the folder that holds the patient folders")
    studies = []
    for suv in sorted(root.rglob(SUV_NAME)):
        rel = suv.parent.relative_to(root)
        if not rel.parts:
            raise ClipsError(f"{suv} lies directly in {root}: expected DIR/<patient>/<study>/{SUV_NAME}")
        patient, study = rel.parts[0], "/".join(rel.parts[1:]) or "."
        seg = suv.parent / SEG_NAME
        studies.append((patient, study, C.AutopetFiles(str(suv), str(suv.parent / CT_NAME),
                                                       str(seg) if seg.is_file() else None)))
    if not studies:
        raise ClipsError(f"no {SUV_NAME} found below {root}: is this the NIfTI release of FDG-PET-CT-Lesions?")
    return studies


def _reason(error: BaseException, path: PathLike) -> str:
    """The error's text with the study's path removed (the release's folder names carry scan dates)."""
    text = " ".join(str(error).split())
    for form in (str(path), str(Path(path).resolve()), str(Path(path).parent)):
        text = text.replace(form, "<study folder>")
    return text


def _read(path: str, name: str, label: str) -> sitk.Image:
    """A float32 image of the study, verified complete (a truncated NIfTI fails the study, naming the file)."""
    try:
        return read_image(path, sitk.sitkFloat32, what=name)
    except ClipsError as e:
        raise PatientError(label, f"{name}: {_reason(e, path)}; re-download the study") from e


def prepare_autopet(files: C.AutopetFiles, label: str) -> C.PreparedStudy:
    """Read one autoPET study (SUV grid; CTres resampled onto it when it is not on it already)."""
    from .masks import read_mask_file
    from .read import resample_to_reference

    pet = _read(files.pet, SUV_NAME, label)
    ct = _read(files.ct, CT_NAME, label)
    warnings = []
    if grid_difference(ct, pet) is not None:
        warnings.append("CTres is not on the SUV grid: resampled (linear, -1024 HU fill)")
        ct = resample_to_reference(ct, pet, "linear", -1024.0)
    try:
        mask = read_mask_file(files.seg, pet) if files.seg else None
    except (ClipsError, ValueError, OSError) as e:
        raise PatientError(label, f"{SEG_NAME}: {_reason(e, files.seg)}") from e
    return C.PreparedStudy(ct, pet, mask, "nifti" if mask is not None else None, None, warnings, [])


def convert_autopet(root: PathLike, dataset_id: int, name: str, workers: int = 1, resume: bool = False,
                    force: bool = False, private_dir: Optional[PathLike] = None, prefix: Optional[str] = None,
                    raw_root: Optional[PathLike] = None, preprocessed_root: Optional[PathLike] = None,
                    progress: bool = True, n_folds: int = 5, add: bool = False,
                    prune: bool = False) -> C.ConversionReport:
    """Convert an autoPET NIfTI tree to ``<nnUNet_raw>/Dataset{id}_{name}`` (arguments as ``convert_cohort``)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ClipsError(f"-j/--workers must be a positive integer, got {workers!r}")
    studies = find_autopet_studies(root)
    target = C.resolve_target(dataset_id, name, private_dir, raw_root, preprocessed_root)
    target.lock().check_free()  # a busy dataset fails at once
    keys = [(p, s) for p, s, _ in studies]
    with target.lock():
        members = C.admit_cases(target, prefix or name.replace("-", ""), keys, add, prune)
        registry, case_of, earlier, pruned = members.registry, members.case_of, members.earlier, members.pruned
        records: Dict[str, C.Record] = {}
        jobs: List[C.CaseJob] = []
        for patient, study, files in studies:
            cid = case_of[(patient, study)]
            group = registry.groups[patient]
            if not Path(files.ct).is_file():
                records[cid] = {"case_id": cid, "patient_group": group, "status": "failed",
                                "reason": f"{CT_NAME} is missing beside {SUV_NAME}; re-download this study"}
                continue
            jobs.append(C.CaseJob(cid, group, False, files, f"{cid} (patient {group})",
                                  [patient] + [p for p in study.split("/") if len(p) >= 3]))
        options = C.ConversionOptions(target.dataset_dir, target.private_dir)
        secrets_ = C.execute(jobs, records, options, resume, workers, progress)
        return C.finish_dataset(target, records, [], force, n_folds, secrets_, earlier=earlier,
                                known_cases=list(registry.cases), pruned=pruned,
                                extra_report={"options": {"source": "autoPET NIfTI", "workers": workers,
                                                          "resume": resume, "add": add, "prune": prune}})
