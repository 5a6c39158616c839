"""Predict new patients from DICOM: mask NIfTI, DICOM SEG, RTSTRUCT, TMTV report and coronal MIP per patient.

Pipeline (one call, many patients, one failure never stops the others):

1. **Find studies** in the input folders with the converter's own indexing and series choice
   (:func:`clips_nnunet.dataset_conversion.index.index_dicom_folder` and
   :func:`clips_nnunet.dataset_conversion.select.select_studies`), so the CT and
   PET chosen for prediction are the ones the training conversion would choose.
2. **Convert** each study with the training converter (``convert.prepare_study``): PET in body-weight SUV and CT
   resampled onto the PET grid, exactly as for the training data (identical SUV and geometry). The two volumes are
   written as nnU-Net input images ``{case}_0000.nii.gz`` (CT, HU) and ``{case}_0001.nii.gz`` (PET, SUV) to a
   temporary folder.
3. **Predict** with nnU-Net's own :class:`nnunetv2.inference.predict_from_raw_data.nnUNetPredictor`
   (``initialize_from_trained_model_folder`` with all chosen folds, which it ensembles by softmax averaging;
   nnU-Net's defaults: Gaussian-weighted sliding window with step 0.5 and mirroring test-time augmentation). For a
   cascade (a configuration whose plans name a ``previous_stage``, e.g. TMTV-Net's ``3d_tmtv_refine``), stage 1
   is predicted first and its segmentation is passed to stage 2 as ``folder_with_segs_from_prev_stage``, exactly as
   ``nnUNetv2_predict -prev_stage_predictions`` does. nnU-Net resamples the prediction back to the input grid, so
   the mask is on the PET grid.
4. **Write** into ``OUT/{pseudonym}/``: ``mask.nii.gz`` (uint8, PET grid), ``seg.dcm`` (DICOM SEG referencing the
   source PET series), ``rtstruct.dcm`` (one ROI per lesion, contours on the PET slices), ``report.json`` /
   ``report.md`` (TMTV, lesion count, SUVmax, SUVmean, TLG, Dmax, per-lesion table) and ``mip_coronal.png``.
   ``report.json`` is written last and marks the patient as complete, so a re-run skips complete patients.

Privacy: output folders are pseudonyms ``PRED_0001``... (stable across re-runs); the mapping pseudonym -> patient
and study lives only in ``prediction_pseudonyms.json`` in the private folder (default: ``OUT_private`` beside
``OUT``). No identifier goes into a file name, report, NIfTI header or log line.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from clips_nnunet.dataset_conversion.write import scrub as scrub_secrets, write_image
from clips_nnunet.errors import ClipsError, DatasetError, PatientError
from clips_nnunet.io_utils import PathLike, atomic_write_json, read_json

#: Files written per patient; ``report.json`` is written last and marks completion.
OUTPUT_FILES = ("mask.nii.gz", "seg.dcm", "rtstruct.dcm", "mip_coronal.png", "report.md", "report.json")
MAPPING_FILE = "prediction_pseudonyms.json"
PSEUDONYM_PREFIX = "PRED"
FILE_ENDING = ".nii.gz"


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class ModelSpec:
    """Which trained nnU-Net model to use, named as on ``nnUNetv2_predict``'s command line.

    ``prev_stage_configuration`` / ``prev_stage_trainer`` / ``prev_stage_plans`` name stage 1 of a cascade; when the
    configuration's plans name a ``previous_stage`` and these are None, the configuration from the plans, the same
    trainer and the same plans are used.
    """

    dataset: Union[int, str]
    configuration: str
    trainer: str = "nnUNetTrainer"
    plans: str = "nnUNetPlans"
    folds: Optional[Sequence[Union[int, str]]] = None
    checkpoint: str = "checkpoint_final.pth"
    prev_stage_configuration: Optional[str] = None
    prev_stage_trainer: Optional[str] = None
    prev_stage_plans: Optional[str] = None
    prev_stage_folds: Optional[Sequence[Union[int, str]]] = None

    def __post_init__(self) -> None:
        if not self.configuration:
            raise ValueError("ModelSpec: `configuration` is required (e.g. 3d_fullres)")
        if "__" in self.trainer:
            raise ValueError(f"ModelSpec: trainer name {self.trainer!r} must not contain '__' (nnU-Net uses it as "
                             "the separator of results folder names)")
        if self.folds is not None:
            self.folds = [f if str(f) == "all" else int(f) for f in self.folds]


def model_folder(dataset: Union[int, str], trainer: str, plans: str, configuration: str) -> Path:
    """The results folder ``$nnUNet_results/DatasetXXX_Name/trainer__plans__configuration``; clear error if absent."""
    if not os.environ.get("nnUNet_results"):
        raise DatasetError("nnUNet_results is not set: export nnUNet_results=/path/to/nnUNet_results "
                           "(the folder nnUNetv2_train wrote the model to)")
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    try:
        folder = Path(get_output_folder(dataset, trainer, plans, configuration))
    except (RuntimeError, AssertionError) as e:
        raise DatasetError(f"dataset {dataset!r} is not found under nnUNet_raw/nnUNet_preprocessed/nnUNet_results "
                           f"({e}); check -d and the nnUNet_* environment variables") from e
    if not (folder / "plans.json").is_file():
        raise DatasetError(f"no trained model at {folder}: train it with nnUNetv2_train {dataset} {configuration} "
                           f"FOLD -tr {trainer} -p {plans}, or check -d/-c/-tr/-p")
    return folder


def available_folds(folder: Path, checkpoint: str) -> List[Union[int, str]]:
    """Folds of ``folder`` that hold ``checkpoint`` (numbered folds first, ``all`` only if nothing else)."""
    numbered = sorted(int(p.name.split("_")[1]) for p in folder.glob("fold_*")
                      if p.name.split("_")[1].isdigit() and (p / checkpoint).is_file())
    if numbered:
        return list(numbered)
    return ["all"] if (folder / "fold_all" / checkpoint).is_file() else []


def resolve_device(device: str = "auto"):
    """``torch.device`` for ``cuda``, ``cpu`` or ``auto`` (CUDA when available, else CPU)."""
    import torch
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"--device must be auto, cuda or cpu, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ClipsError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(device)


def _make_predictor(folder: Path, folds: Optional[Sequence], checkpoint: str, device, use_mirroring: bool):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    if folds is None:
        folds = available_folds(folder, checkpoint)
    if not folds:
        raise DatasetError(f"no fold of {folder} holds {checkpoint}: finish training (nnUNetv2_train) or name "
                           "another checkpoint with --chk (e.g. checkpoint_best.pth)")
    for f in folds:
        if not (folder / f"fold_{f}" / checkpoint).is_file():
            raise DatasetError(f"{folder / f'fold_{f}' / checkpoint} does not exist: train fold {f}, drop it from "
                               "-f, or name another checkpoint with --chk")
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=tuple(folds), checkpoint_name=checkpoint)
    n_channels = len(predictor.dataset_json["channel_names"])
    if n_channels != 2:
        raise DatasetError(f"the model in {folder} expects {n_channels} input channels; clips-nnunet predict feeds "
                           "2 (CT in HU, PET in SUV) as the converter writes them")
    if predictor.dataset_json.get("file_ending", FILE_ENDING) != FILE_ENDING:
        raise DatasetError(f"the model in {folder} was trained on {predictor.dataset_json['file_ending']} files; "
                           f"clips-nnunet predict writes {FILE_ENDING}")
    return predictor, list(folds)


class CasePredictor:
    """nnU-Net predictor(s) of one model (one or two cascade stages), loaded once, applied case by case.

    ``predict(image_files, workdir, case_id)`` returns the predicted label map as a SimpleITK image on the grid of
    the input images.
    """

    def __init__(self, spec: ModelSpec, device: str = "auto", use_mirroring: bool = True):
        import torch
        self.spec = spec
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            torch.set_num_threads(1)
        folder = model_folder(spec.dataset, spec.trainer, spec.plans, spec.configuration)
        self.stages: List[Any] = []
        self.stage_info: List[Dict[str, Any]] = []
        plans = read_json(folder / "plans.json")
        config = plans.get("configurations", {}).get(spec.configuration)
        if config is None:
            raise DatasetError(f"configuration {spec.configuration!r} is not in {folder / 'plans.json'}; "
                               f"it has {sorted(plans.get('configurations', {}))}")
        previous = spec.prev_stage_configuration or config.get("previous_stage")
        if previous:
            prev_folder = model_folder(spec.dataset, spec.prev_stage_trainer or spec.trainer,
                                       spec.prev_stage_plans or spec.plans, previous)
            prev, prev_folds = _make_predictor(prev_folder, spec.prev_stage_folds or spec.folds, spec.checkpoint,
                                               self.device, use_mirroring)
            self.stages.append(prev)
            self.stage_info.append({"model": prev_folder.name, "folds": prev_folds, "stage": 1})
        main, folds = _make_predictor(folder, spec.folds, spec.checkpoint, self.device, use_mirroring)
        if main.configuration_manager.previous_stage_name is not None and not previous:
            raise DatasetError(f"{folder.name} is stage 2 of a cascade: name stage 1 with --prev-stage-config")
        self.stages.append(main)
        self.stage_info.append({"model": folder.name, "folds": folds, "stage": len(self.stages)})

    def model_description(self) -> Dict[str, Any]:
        """Model, folds, checkpoint and device, for reports (no paths, no identifiers)."""
        return {"dataset": str(self.spec.dataset), "checkpoint": self.spec.checkpoint,
                "device": self.device.type, "stages": self.stage_info}

    def predict(self, image_files: Sequence[Path], workdir: Path, case_id: str) -> sitk.Image:
        previous_folder: Optional[str] = None
        out_file = None
        for i, predictor in enumerate(self.stages):
            out_dir = workdir / f"stage{i + 1}"
            out_dir.mkdir(parents=True, exist_ok=True)
            needs_previous = predictor.configuration_manager.previous_stage_name is not None
            with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints per case; keep the progress bar clean
                predictor.predict_from_files_sequential(
                    [[str(f) for f in image_files]], [str(out_dir / case_id)], save_probabilities=False,
                    overwrite=True, folder_with_segs_from_prev_stage=previous_folder if needs_previous else None)
            out_file = out_dir / f"{case_id}{FILE_ENDING}"
            if not out_file.is_file():
                raise ClipsError(f"{case_id}: nnU-Net wrote no prediction (expected {out_file.name})")
            previous_folder = str(out_dir)
        return sitk.ReadImage(str(out_file))


# --------------------------------------------------------------------------------------------------------------------
# Pseudonyms and resumption
# --------------------------------------------------------------------------------------------------------------------
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_folder_name(text: str) -> str:
    """A header value made harmless as one folder name (no separators, no leading dots, not empty)."""
    name = _SAFE.sub("_", str(text)).strip("._")
    return name[:64] or "unnamed"


class PseudonymMap:
    """Stable pseudonyms ``PRED_0001``... for (patient, study) keys, stored in the private mapping file.

    The file maps each pseudonym to ``{"patient_id", "study_instance_uid", "patient_key"}``; it is written
    atomically and only ever in the private folder, never under the output folder.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.entries: Dict[str, Dict[str, str]] = read_json(self.path) if self.path.is_file() else {}

    def _key(self, patient_key: str, study_uid: str) -> Optional[str]:
        for pseudonym, entry in self.entries.items():
            if entry.get("patient_key") == patient_key and entry.get("study_instance_uid") == study_uid:
                return pseudonym
        return None

    def get(self, patient_key: str, study_uid: str, patient_id: str = "") -> str:
        found = self._key(patient_key, study_uid)
        if found:
            return found
        numbers = [int(p.rsplit("_", 1)[1]) for p in self.entries if p.rsplit("_", 1)[-1].isdigit()]
        pseudonym = f"{PSEUDONYM_PREFIX}_{(max(numbers) + 1) if numbers else 1:04d}"
        self.entries[pseudonym] = {"patient_key": str(patient_key), "study_instance_uid": str(study_uid),
                                   "patient_id": str(patient_id)}
        return pseudonym

    def save(self) -> None:
        atomic_write_json(self.path, self.entries)


def is_complete(folder: Path) -> bool:
    """True when every output of one patient exists (``report.json``, written last, included)."""
    return all((folder / name).is_file() for name in OUTPUT_FILES)


# --------------------------------------------------------------------------------------------------------------------
# One patient
# --------------------------------------------------------------------------------------------------------------------
def _clean_copy(image: sitk.Image, pixel_type=None) -> sitk.Image:
    """Copy of ``image`` with geometry only: the metadata dictionary (which could hold DICOM values) is dropped."""
    arr = sitk.GetArrayFromImage(image)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    if pixel_type is not None:
        out = sitk.Cast(out, pixel_type)
    return out


def write_nifti(image: sitk.Image, path: PathLike) -> Path:
    """Write ``image`` (geometry only, no metadata) as compressed NIfTI, atomically."""
    path = Path(path)
    write_image(_clean_copy(image), path)
    return path


#: Patient/study attributes blanked in the DICOM outputs unless the user keeps identities (PatientName and PatientID
#: become the pseudonym; UIDs are kept so that SEG and RTSTRUCT still reference the source PET series).
DEIDENTIFY_BLANK = ("PatientBirthDate", "PatientBirthTime", "PatientAge", "OtherPatientIDs", "OtherPatientNames",
                    "AccessionNumber", "ReferringPhysicianName", "StudyDate", "StudyTime", "StudyID",
                    "StudyDescription", "PatientAddress", "PatientTelephoneNumbers", "InstitutionName")


#: Type 2 patient/study attributes that highdicom copies from the source images and so must exist (empty is valid).
TYPE2_REQUIRED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                  "ReferringPhysicianName", "StudyID", "StudyDate", "StudyTime")


def pseudonymise_sources(datasets: Sequence[Any], pseudonym: Optional[str]) -> None:
    """Prepare source PET headers (in place) before they are copied into SEG and RTSTRUCT.

    With a ``pseudonym``: PatientName and PatientID become ``pseudonym`` and :data:`DEIDENTIFY_BLANK` attributes
    become empty. Always: absent :data:`TYPE2_REQUIRED` attributes are added empty (some scanners and phantoms omit
    e.g. AccessionNumber, which highdicom requires to be present).
    """
    for ds in datasets:
        if pseudonym is not None:
            ds.PatientName = f"{pseudonym}^"  # family-name component only (DICOM PN)
            ds.PatientID = pseudonym
            for keyword in DEIDENTIFY_BLANK:
                if keyword in ds:
                    setattr(ds, keyword, "")
        for keyword in TYPE2_REQUIRED:
            if keyword not in ds:
                setattr(ds, keyword, "")


def check_pet_geometry(pet_suv: sitk.Image, pet_datasets: Sequence[Any], case: str) -> None:
    """Check that ``pet_suv``'s grid is the source PET series' grid (what SEG/RTSTRUCT reference): same slice count,
    rows, columns and first-slice position; a converter configured to resample would break the references."""
    from clips_nnunet.dataset_conversion.dicom_out import sort_source_datasets
    ordered = sort_source_datasets(pet_datasets)
    expected = (int(ordered[0].Columns), int(ordered[0].Rows), len(ordered))
    if tuple(pet_suv.GetSize()) != expected:
        raise PatientError(case, f"the converted PET grid {pet_suv.GetSize()} is not the source PET series grid "
                                 f"{expected} (columns, rows, slices); predict on the native PET grid (no target "
                                 "spacing) so that DICOM SEG and RTSTRUCT can reference the PET slices")
    first = np.array([float(v) for v in ordered[0].ImagePositionPatient])
    if not np.allclose(first, pet_suv.GetOrigin(), atol=1e-2):
        raise PatientError(case, "the converted PET origin differs from the first PET slice position; the PET "
                                 "series is not in the order SimpleITK reads it, report this as a bug")


def write_patient_outputs(out_dir: Path, pseudonym: str, mask: sitk.Image, pet_suv: sitk.Image,
                          pet_datasets: Sequence[Any], model: Dict[str, Any], warnings: Sequence[str] = (),
                          keep_identity: bool = False) -> Dict[str, Any]:
    """Write every output of one patient into ``out_dir``; ``report.json`` last. Returns the report dict.

    ``mask`` is the predicted label map on the grid of ``pet_suv``; ``pet_datasets`` are the source PET series'
    pydicom datasets (headers suffice). The DICOM SEG and the RTSTRUCT (one ROI ``lesion`` holding the contours of
    every lesion on every PET slice) reference the source PET instances. Unless ``keep_identity``, their patient
    attributes are pseudonymised (:func:`pseudonymise_sources`).
    """
    from clips_nnunet.dataset_conversion.dicom_out import write_dicom_seg, write_rtstruct
    from clips_nnunet.lesions import measure_lesions
    from clips_nnunet.evaluation.mip import save_coronal_mip
    from clips_nnunet.evaluation.report import build_report, write_report

    if mask.GetSize() != pet_suv.GetSize():
        raise PatientError(pseudonym, f"predicted mask size {mask.GetSize()} differs from the PET size "
                                      f"{pet_suv.GetSize()}; the model output is not on the PET grid")
    check_pet_geometry(pet_suv, pet_datasets, pseudonym)
    pseudonymise_sources(pet_datasets, None if keep_identity else pseudonym)
    out_dir.mkdir(parents=True, exist_ok=True)
    mask_u8 = sitk.Cast(mask > 0, sitk.sitkUInt8)
    mask_u8.CopyInformation(pet_suv)
    write_nifti(mask_u8, out_dir / "mask.nii.gz")
    mask_arr = sitk.GetArrayFromImage(mask_u8).astype(np.uint8)
    suv_arr = sitk.GetArrayFromImage(pet_suv).astype(np.float32)
    spacing_zyx = tuple(float(s) for s in pet_suv.GetSpacing()[::-1])
    summary = measure_lesions(mask_arr, spacing_zyx, suv=suv_arr)

    write_dicom_seg(mask_arr, pet_datasets, out_dir / "seg.dcm", segment_label="lesion",
                    series_description="clips-nnunet predicted lesions")
    write_rtstruct(mask_arr, pet_datasets, out_dir / "rtstruct.dcm", roi_name="lesion",
                   series_description="clips-nnunet predicted lesion contours")
    save_coronal_mip(pet_suv, mask_u8, out_dir / "mip_coronal.png",
                     title=f"{pseudonym}: coronal SUV MIP, prediction outlined")
    report = build_report(summary, case_id=pseudonym, model=model, warnings=list(warnings),
                          spacing_zyx=spacing_zyx)
    write_report(report, out_dir)  # report.md then report.json (completion marker)
    return report


# --------------------------------------------------------------------------------------------------------------------
# Many patients
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class PatientResult:
    """Outcome for one study: ``status`` is ``done``, ``skipped`` (already complete) or ``failed``."""

    case: str
    status: str
    seconds: float = 0.0
    message: str = ""
    tmtv_ml: Optional[float] = None
    n_lesions: Optional[int] = None
    warnings: List[str] = field(default_factory=list)


@dataclass
class PredictionRun:
    """Results of :func:`predict_dicom`: one :class:`PatientResult` per study, plus discovery problems."""

    output_dir: Path
    mapping_file: Path
    results: List[PatientResult] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return sum(r.status == "failed" for r in self.results) + len(self.problems)

    def to_dict(self) -> Dict[str, Any]:
        return {"results": [asdict(r) for r in self.results], "problems": list(self.problems),
                "n_done": sum(r.status == "done" for r in self.results),
                "n_skipped": sum(r.status == "skipped" for r in self.results), "n_failed": self.n_failed}

    def summary_table(self) -> str:
        lines = [f"{'case':<12} {'status':<8} {'TMTV ml':>9} {'lesions':>7}  message"]
        for r in self.results:
            tmtv = f"{r.tmtv_ml:9.2f}" if r.tmtv_ml is not None else f"{'-':>9}"
            n = f"{r.n_lesions:7d}" if r.n_lesions is not None else f"{'-':>7}"
            lines.append(f"{r.case:<12} {r.status:<8} {tmtv} {n}  {r.message}")
        for p in self.problems:
            lines.append(f"{'-':<12} {'failed':<8} {'-':>9} {'-':>7}  {p}")
        return "\n".join(lines)


def default_private_dir(output_dir: PathLike) -> Path:
    """``OUT_private`` beside ``OUT``: outside the output tree, so sharing OUT never shares identities."""
    output_dir = Path(output_dir).resolve()
    return output_dir.parent / f"{output_dir.name}_private"


def find_studies(inputs: Sequence[PathLike]) -> Tuple[List[Any], List[str]]:
    """Index every input folder and choose CT/PET per study with the converter's rules.

    Returns ``(selections, problems)``: problems are readable lines (a folder without DICOM, a study without a
    usable PET) that do not stop the other studies.
    """
    from clips_nnunet.dataset_conversion.index import index_dicom_folder
    from clips_nnunet.dataset_conversion.select import select_studies
    selections: List[Any] = []
    problems: List[str] = []
    seen = set()
    for n, folder in enumerate(inputs):
        folder = Path(folder)
        if not folder.is_dir():
            problems.append(f"input #{n + 1} is not a folder; give DICOM folders or a cohort folder")
            continue
        index = index_dicom_folder(folder, progress=False)
        if not index.patients:
            problems.append(f"input #{n + 1}: no readable DICOM PET/CT in this folder")
            continue
        for p_i, (patient_key, studies) in enumerate(sorted(index.patients.items())):
            try:
                chosen = select_studies(studies, patient_label=f"input {n + 1} patient {p_i + 1}")
            except ClipsError as e:
                problems.append(str(e))
                continue
            for sel in chosen:
                key = (sel.patient_key, sel.study_uid)
                if key in seen:
                    continue
                seen.add(key)
                if getattr(sel, "pet", None) is None:
                    problems.append(f"input {n + 1} patient {p_i + 1}: study without a usable PET series "
                                    f"({'; '.join(getattr(sel, 'decisions', []) or [])})")
                    continue
                selections.append(sel)
    return selections, problems


def _patient_id(selection: Any) -> str:
    """The PatientID (the index's private ``patient_key``); only for the private mapping and --keep-patient-names."""
    return str(selection.patient_key)


def _pet_files(selection: Any) -> List[Path]:
    pet = selection.pet
    files = getattr(pet, "files", None) or getattr(pet, "paths", None)
    if not files:
        raise ClipsError("the PET series lists no files")
    return [Path(f) for f in files]


def scrub(message: str, inputs: Sequence[PathLike], selection: Any = None) -> str:
    """``message`` with input paths, file paths and the PatientID replaced, for the shared summary and the log
    (paths often carry patient names; library errors quote them)."""
    secrets: List[str] = []
    if selection is not None:
        secrets.append(str(selection.patient_key))
        for series in (getattr(selection, "pet", None), getattr(selection, "ct", None)):
            for f in (getattr(series, "files", None) or []):
                secrets += [str(f), str(Path(f).parent)]
    secrets += [str(Path(p)) for p in inputs] + [str(Path(p).resolve()) for p in inputs]
    return scrub_secrets(message, secrets)


def predict_dicom(inputs: Sequence[PathLike], output_dir: PathLike, spec: ModelSpec, device: str = "auto",
                  private_dir: Optional[PathLike] = None, keep_patient_names: bool = False,
                  overrides: Optional[PathLike] = None, overwrite: bool = False, use_mirroring: bool = True,
                  progress: bool = True, predictor: Optional[CasePredictor] = None) -> PredictionRun:
    """Predict every PET/CT study found in ``inputs`` (DICOM folders of patients or cohort folders).

    Writes ``output_dir/{pseudonym}/`` per study (see module docstring), ``output_dir/prediction_summary.json``
    and the private pseudonym mapping in ``private_dir`` (default :func:`default_private_dir`). Complete studies are
    skipped unless ``overwrite``. A failing study is recorded and the others go on; check ``run.n_failed``.
    """
    import pydicom
    from tqdm import tqdm

    from clips_nnunet.dataset_conversion.convert import prepare_study

    if not inputs:
        raise ClipsError("no input given: name DICOM folders of patients or a cohort folder")
    output_dir = Path(output_dir)
    private_dir = Path(private_dir) if private_dir else default_private_dir(output_dir)
    if private_dir.resolve() == output_dir.resolve() or output_dir.resolve() in private_dir.resolve().parents:
        raise ClipsError(f"--private-dir {private_dir} is inside the output folder {output_dir}: the mapping to "
                         "patient identities must live outside the folder you share; choose another folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    mapping = PseudonymMap(private_dir / MAPPING_FILE)
    run = PredictionRun(output_dir=output_dir, mapping_file=mapping.path)

    selections, run.problems = find_studies(inputs)
    cases = []
    for sel in selections:
        pseudonym = mapping.get(str(sel.patient_key), str(sel.study_uid), _patient_id(sel))
        name = pseudonym
        if keep_patient_names:
            same_patient = sum(1 for s in selections if s.patient_key == sel.patient_key)
            name = safe_folder_name(_patient_id(sel)) + (f"_{pseudonym}" if same_patient > 1 else "")
        cases.append((pseudonym, name, sel))
    mapping.save()

    todo = []
    for pseudonym, name, sel in cases:
        if not overwrite and is_complete(output_dir / name):
            report = read_json(output_dir / name / "report.json")
            run.results.append(PatientResult(pseudonym if not keep_patient_names else name, "skipped",
                                             message="outputs already complete",
                                             tmtv_ml=_get(report, "tmtv_ml"), n_lesions=_get(report, "n_lesions")))
        else:
            todo.append((pseudonym, name, sel))

    if todo and predictor is None:
        predictor = CasePredictor(spec, device=device, use_mirroring=use_mirroring)
    overrides_table = _load_overrides(overrides)
    for pseudonym, name, sel in tqdm(todo, desc="predict", unit="study", disable=not progress):
        label = name if keep_patient_names else pseudonym
        t0 = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix="clips_predict_") as tmp:
                work = Path(tmp)
                prepared = prepare_study(sel, (overrides_table or {}).get(str(sel.patient_key)), labels="none",
                                         label=pseudonym)
                images = [write_nifti(prepared.ct_on_pet, work / f"{pseudonym}_0000{FILE_ENDING}"),
                          write_nifti(prepared.pet_suv, work / f"{pseudonym}_0001{FILE_ENDING}")]
                mask = predictor.predict(images, work, pseudonym)
                pet_datasets = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in _pet_files(sel)]
                report = write_patient_outputs(output_dir / name, pseudonym, mask, prepared.pet_suv, pet_datasets,
                                               predictor.model_description(), list(prepared.warnings or []),
                                               keep_identity=keep_patient_names)
            run.results.append(PatientResult(label, "done", time.perf_counter() - t0,
                                             tmtv_ml=_get(report, "tmtv_ml"), n_lesions=_get(report, "n_lesions"),
                                             warnings=list(prepared.warnings or [])))
        except Exception as e:  # one patient never stops the cohort
            message = e.reason if isinstance(e, PatientError) else f"{type(e).__name__}: {e}"
            run.results.append(PatientResult(label, "failed", time.perf_counter() - t0,
                                             message=scrub(message, inputs, sel)))
    atomic_write_json(output_dir / "prediction_summary.json",
                      {"model": predictor.model_description() if predictor else None, **run.to_dict()})
    return run


def _get(report: Dict[str, Any], key: str) -> Any:
    if key in report:
        return report[key]
    return report.get("summary", {}).get(key)


def _load_overrides(path: Optional[PathLike]) -> Any:
    """The converter's overrides table (``{PatientID: SuvOverrides}``), or None."""
    if path is None:
        return None
    from clips_nnunet.dataset_conversion.overrides import load_overrides
    return load_overrides(path)
