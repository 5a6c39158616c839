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

from clips_nnunet.errors import ClipsError
from clips_nnunet.io_utils import PathLike

from .convert import CaseJob, ConversionReport, _execute, _setup, finish_dataset

CT_NAME, SUV_NAME, SEG_NAME = "CTres.nii.gz", "SUV.nii.gz", "SEG.nii.gz"


def find_autopet_studies(root: PathLike) -> List[Tuple[str, str, Dict[str, str]]]:
    """(patient, study, {"ct", "pet", "seg"}) for every folder below ``root`` holding SUV.nii.gz (sorted).

    ``seg`` is absent when SEG.nii.gz is missing (the study goes to imagesTs); a missing CTres.nii.gz is kept
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
        paths = {"pet": str(suv), "ct": str(suv.parent / CT_NAME)}
        if (suv.parent / SEG_NAME).is_file():
            paths["seg"] = str(suv.parent / SEG_NAME)
        studies.append((patient, study, paths))
    if not studies:
        raise ClipsError(f"no {SUV_NAME} found below {root}: is this the NIfTI release of FDG-PET-CT-Lesions?")
    return studies


def convert_autopet(root: PathLike, dataset_id: int, name: str, workers: int = 1, resume: bool = False,
                    force: bool = False, private_dir: Optional[PathLike] = None, prefix: Optional[str] = None,
                    raw_root: Optional[PathLike] = None, preprocessed_root: Optional[PathLike] = None,
                    progress: bool = True, n_folds: int = 5) -> ConversionReport:
    """Convert an autoPET NIfTI tree to ``<nnUNet_raw>/Dataset{id}_{name}`` (arguments as ``convert_cohort``)."""
    if not isinstance(workers, int) or workers < 1:
        raise ClipsError(f"-j/--workers must be a positive integer, got {workers!r}")
    studies = find_autopet_studies(root)
    dataset_dir, private, pre, registry = _setup(dataset_id, name, private_dir, raw_root, preprocessed_root, prefix)
    case_of = registry.assign([(p, s) for p, s, _ in studies])
    registry.save()
    records: Dict[str, Dict] = {}
    jobs: List[CaseJob] = []
    for patient, study, paths in studies:
        cid = case_of[(patient, study)]
        group = registry.groups[patient]
        if not Path(paths["ct"]).is_file():
            records[cid] = {"case_id": cid, "patient_group": group, "status": "failed",
                            "reason": f"{CT_NAME} is missing beside {SUV_NAME}; re-download this study"}
            continue
        jobs.append(CaseJob(cid, group, False, "autopet", paths, f"{cid} (patient {group})",
                            [patient] + [p for p in study.split("/") if len(p) >= 3]))
    options = {"dataset_dir": str(dataset_dir), "private_dir": str(private)}
    secrets_ = _execute(jobs, records, dataset_dir, private, options, resume, workers, progress)
    return finish_dataset(dataset_dir, private, name, records, [], pre, force, n_folds, secrets_,
                          extra_report={"options": {"source": "autoPET NIfTI", "workers": workers,
                                                    "resume": resume}})
