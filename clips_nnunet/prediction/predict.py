"""Predict new patients from DICOM: mask NIfTI, DICOM SEG, RTSTRUCT, TMTV report and coronal MIP per patient.

Pipeline (one call, many patients, one failure never stops the others):

1. **Find studies** in the input folders with the converter's own indexing and series choice
   (:func:`clips_nnunet.dataset_conversion.index.index_dicom_folder` and
   :func:`clips_nnunet.dataset_conversion.select.select_studies`), so the CT and
   PET chosen for prediction are the ones the training conversion would choose.
2. **Convert** each study with the training converter (``convert.prepare_study``): PET in body-weight SUV and CT
   resampled onto the PET grid, exactly as for the training data (identical SUV and geometry).
3. **Predict** with nnU-Net's own :class:`nnunetv2.inference.predict_from_raw_data.nnUNetPredictor`
   (``initialize_from_trained_model_folder`` with all chosen folds, which it ensembles by softmax averaging;
   nnU-Net's defaults: Gaussian-weighted sliding window with step 0.5 and mirroring test-time augmentation). The
   two volumes go to ``predict_single_npy_array`` as the arrays nnU-Net's ``SimpleITKIO`` would read from the
   converter's NIfTI files (channel 0 CT in HU, channel 1 PET in SUV, spacing z, y, x), so nothing is written and
   read back; nnU-Net pre-processes, predicts and resamples the segmentation back onto the PET grid as for files.
   For a cascade (a configuration whose plans name a ``previous_stage``, e.g. TMTV-Net's ``3d_tmtv_refine``),
   stage 1 is predicted first and its segmentation goes to stage 2 as ``segmentation_previous_stage``, what
   ``nnUNetv2_predict -prev_stage_predictions`` does with files. :meth:`clips_nnunet.prediction.models.CasePredictor.predict_images` is the one
   place that calls nnU-Net.
4. **Write** into ``OUT/{pseudonym}/`` (:mod:`clips_nnunet.prediction.outputs`): ``mask.nii.gz``,
   ``seg.dcm``, ``rtstruct.dcm``, ``report.md``, ``mip_coronal.png`` and last ``report.json``, which marks the
   patient as complete, so a re-run skips complete patients.

Worker processes (:mod:`clips_nnunet.prediction.study_workers`) read the headers for step 1 (while the model loads
in a thread), convert the next studies (step 2) and write the previous ones' outputs (step 4) while nnU-Net
predicts one study in this process (step 3).

One run at a time per output folder (and per private folder): a second ``predict`` into the same folder fails at
once naming the running one (:class:`clips_nnunet.io_utils.DirectoryLock`).

Privacy: output folders are pseudonyms ``PRED_0001``... (stable across re-runs); the mapping pseudonym -> patient
and study lives only in ``prediction_pseudonyms.json`` in the private folder (default: ``OUT_private`` beside
``OUT``). No identifier goes into a file name, report, NIfTI header, MIP or log line. ``--keep-patient-names`` names
folders by PatientID instead, unique and stable. The DICOM SEG and RTSTRUCT belong to the source patient and study
(as DICOM requires); ``--deidentify-dicom`` makes them a de-identified export instead (see
:mod:`clips_nnunet.prediction.outputs`).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import SimpleITK as sitk

from clips_nnunet.dataset_conversion.index import SeriesInfo
from clips_nnunet.dataset_conversion.select import StudySelection
from clips_nnunet.dataset_conversion.write import scrub as scrub_secrets
from clips_nnunet.errors import ClipsError, PatientError
from clips_nnunet.prediction.ensemble import Model, load_predictor
from clips_nnunet.prediction.models import CasePredictor
from clips_nnunet.prediction.study_workers import StudyWorkers, WorkerReply, default_workers, run_pipeline
from clips_nnunet.prediction.outputs import (MAPPING_FILE, OUTPUT_FILES, PSEUDONYM_PREFIX, PseudonymMap,
                                                     is_complete, remove_stale_temporaries, report_case,
                                                     safe_folder_name, uid_salt, write_nifti, write_patient_outputs)
from clips_nnunet.io_utils import DirectoryLock, PathLike, atomic_write_json, read_json

__all__ = ["PatientResult", "PredictionRun", "predict_dicom", "find_studies", "default_private_dir", "scrub",
           "OUTPUT_FILES", "MAPPING_FILE", "PSEUDONYM_PREFIX", "PseudonymMap", "is_complete", "safe_folder_name",
           "write_nifti", "write_patient_outputs"]

# --------------------------------------------------------------------------------------------------------------------
# Many patients
# --------------------------------------------------------------------------------------------------------------------
#: Conversion warnings (``dataset_conversion.read.check_coverage``) that the console summary repeats per case: a CT
#: that covers only part of the PET changes what the model sees there (filled with air).
COVERAGE_WARNINGS = ("CT does not cover the PET", "CT covers ")


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
    #: where the run's wall time went, in seconds (:data:`TIMING_KEYS`; not written to the summary file)
    timings: Dict[str, float] = field(default_factory=dict)
    #: ``(kind, study number, start, end)``: every ``convert`` and ``outputs`` job in the worker processes, every
    #: ``wait_conversion`` and ``wait_outputs`` of the main process (``time.perf_counter``, the machine's monotonic
    #: clock; study numbers count the studies predicted in this run from 0; not written to the summary file)
    events: List[Tuple[str, int, float, float]] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return sum(r.status == "failed" for r in self.results) + len(self.problems)

    def to_dict(self) -> Dict[str, Any]:
        return {"results": [asdict(r) for r in self.results], "problems": list(self.problems),
                "n_done": sum(r.status == "done" for r in self.results),
                "n_skipped": sum(r.status == "skipped" for r in self.results), "n_failed": self.n_failed}

    def summary_table(self) -> str:
        width = max([12] + [len(r.case) for r in self.results])
        lines = [f"{'case':<{width}} {'status':<8} {'TMTV ml':>9} {'lesions':>7}  message"]
        for r in self.results:
            tmtv = f"{r.tmtv_ml:9.2f}" if r.tmtv_ml is not None else f"{'-':>9}"
            n = f"{r.n_lesions:7d}" if r.n_lesions is not None else f"{'-':>7}"
            lines.append(f"{r.case:<{width}} {r.status:<8} {tmtv} {n}  {r.message}")
            lines += [f"{'':<{width}} WARNING: {w}" for w in r.warnings if w.startswith(COVERAGE_WARNINGS)]
        for p in self.problems:
            lines.append(f"{'-':<{width}} {'failed':<8} {'-':>9} {'-':>7}  {p}")
        return "\n".join(lines)


#: :attr:`PredictionRun.timings`: the main process's wall time by what it did. ``index``: finding the studies;
#: ``model``: waiting for the model, which loads in a thread during the index and the first conversions;
#: ``wait_conversion``: waiting for a study's
#: conversion (a worker process; the first study's always) and receiving its images; ``nnunet``: nnU-Net's
#: prediction; ``wait_outputs``: waiting for the last studies' outputs (the worker processes); ``total``: the whole
#: run. Everything but ``nnunet`` is time in which nnU-Net (on a GPU: the GPU) waits for us. In the worker
#: processes (summed over studies, overlapping the main process): ``convert`` / ``outputs`` wall seconds and
#: ``convert_cpu`` / ``outputs_cpu`` their CPU seconds; ``index_cpu`` the CPU seconds they spent reading headers.
TIMING_KEYS = ("index", "model", "wait_conversion", "nnunet", "wait_outputs", "total", "index_cpu", "convert",
               "convert_cpu", "outputs", "outputs_cpu")
#: the keys of :data:`TIMING_KEYS` that are the main process's own time (they add up to at most ``total``)
MAIN_KEYS = ("index", "model", "wait_conversion", "nnunet", "wait_outputs")


def default_private_dir(output_dir: PathLike) -> Path:
    """``OUT_private`` beside ``OUT``: outside the output tree, so sharing OUT never shares identities."""
    output_dir = Path(output_dir).resolve()
    return output_dir.parent / f"{output_dir.name}_private"


def find_studies(inputs: Sequence[PathLike], workers: int = 1, map_chunks: Optional[Any] = None
                 ) -> Tuple[List[StudySelection], List[str]]:
    """Index every input folder and choose CT/PET per study with the converter's rules.

    ``workers > 1`` reads the headers in that many processes, ``map_chunks`` in the caller's own (both as in
    :func:`clips_nnunet.dataset_conversion.index.index_dicom_folder`). Returns
    ``(selections, problems)``: problems are readable lines (a folder without DICOM, a study without a usable
    PET) that do not stop the other studies.
    """
    from clips_nnunet.dataset_conversion.index import index_dicom_folder
    from clips_nnunet.dataset_conversion.select import select_studies
    selections: List[StudySelection] = []
    problems: List[str] = []
    seen = set()
    for n, folder in enumerate(inputs):
        folder = Path(folder)
        if not folder.is_dir():
            problems.append(f"input #{n + 1} is not a folder; give DICOM folders or a cohort folder")
            continue
        index = index_dicom_folder(folder, progress=False, workers=workers, map_chunks=map_chunks)
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
                if key not in seen:
                    seen.add(key)
                    selections.append(sel)
    return selections, problems


def _series_files(series: Optional[SeriesInfo]) -> List[Path]:
    return list(series.files) if series is not None else []


def scrub(message: str, inputs: Sequence[PathLike], selection: Optional[StudySelection] = None) -> str:
    """``message`` with input paths, file paths and the PatientID replaced, for the shared summary and the log
    (paths often carry patient names; library errors quote them)."""
    secrets: List[str] = []
    if selection is not None:
        secrets.append(str(selection.patient_key))
        for f in _series_files(selection.pet) + _series_files(selection.ct):
            secrets += [str(f), str(Path(f).parent)]
    secrets += [str(Path(p)) for p in inputs] + [str(Path(p).resolve()) for p in inputs]
    return scrub_secrets(message, secrets)


def _output_names(selections: Sequence[StudySelection], mapping: PseudonymMap, output_dir: Path,
                  keep_patient_names: bool) -> List[Tuple[str, str, StudySelection]]:
    """(pseudonym, folder name, selection) per study: the pseudonym, or with ``keep_patient_names`` a unique,
    stable PatientID-based name (:meth:`PseudonymMap.folder_for`)."""
    pseudonyms = [mapping.get(str(s.patient_key), str(s.study_uid), str(s.patient_key)) for s in selections]
    if not keep_patient_names:
        return [(p, p, s) for p, s in zip(pseudonyms, selections)]
    recorded = {e.get("folder", "").casefold() for e in mapping.entries.values()}
    existing = [d.name for d in output_dir.iterdir() if d.is_dir() and d.name.casefold() not in recorded] \
        if output_dir.is_dir() else []
    claims = [safe_folder_name(str(s.patient_key)) for s in selections]  # the rule does not depend on the order
    return [(p, mapping.folder_for(p, claims, existing), s) for p, s in zip(pseudonyms, selections)]


def _write_outputs(folder: Path, pseudonym: str, label: str, selection: StudySelection, mask: sitk.Image,
                   prepared: Any, model: Dict[str, Any], deidentify_salt: Optional[str],
                   inputs: Sequence[PathLike], started: float) -> PatientResult:
    """Write one study's outputs (runs in the worker process that converted the study); never raises.

    The SEG and RTSTRUCT reference the PET headers the conversion parsed (``prepared.pet_headers``); they are
    parsed here only for a ``prepared`` that does not carry them."""
    try:
        pet_datasets = list(prepared.pet_headers) or _read_pet_headers(selection)
        report = write_patient_outputs(folder, pseudonym, mask, prepared.pet_suv, pet_datasets, model,
                                       list(prepared.warnings), deidentify_salt=deidentify_salt)
        return PatientResult(label, "done", time.perf_counter() - started, tmtv_ml=_get(report, "tmtv_ml"),
                             n_lesions=_get(report, "n_lesions"), warnings=list(prepared.warnings))
    except Exception as e:  # one patient never stops the cohort
        return _failure(label, e, inputs, selection, started)


def _read_pet_headers(selection: StudySelection) -> List[Any]:
    import pydicom
    return [pydicom.dcmread(str(f), stop_before_pixels=True) for f in selection.pet.files]


def _failure(label: str, error: Exception, inputs: Sequence[PathLike], selection: StudySelection,
             started: float) -> PatientResult:
    message = error.reason if isinstance(error, PatientError) else f"{type(error).__name__}: {error}"
    return PatientResult(label, "failed", time.perf_counter() - started, message=scrub(message, inputs, selection))


def predict_dicom(inputs: Sequence[PathLike], output_dir: PathLike, spec: Model, device: str = "auto",
                  private_dir: Optional[PathLike] = None, keep_patient_names: bool = False,
                  overrides: Optional[PathLike] = None, overwrite: bool = False, use_mirroring: bool = True,
                  progress: bool = True, predictor: Optional[CasePredictor] = None,
                  deidentify_dicom: bool = False, workers: Optional[int] = None) -> PredictionRun:
    """Predict every PET/CT study found in ``inputs`` (DICOM folders of patients or cohort folders).

    Writes ``output_dir/{pseudonym}/`` per study (see module docstring), ``output_dir/prediction_summary.json``
    and the private pseudonym mapping in ``private_dir`` (default :func:`default_private_dir`). The SEG and RTSTRUCT
    belong to the source patient and study unless ``deidentify_dicom`` (an explicit de-identified export: pseudonym,
    replaced UIDs; :mod:`clips_nnunet.prediction.outputs`). Complete studies are
    skipped unless ``overwrite``. A failing study is recorded and the others go on; check ``run.n_failed``.
    ``workers``: processes that convert studies and write outputs beside the inference (default
    :func:`.study_workers.default_workers`), which also read the headers for the index.
    Raises :class:`clips_nnunet.errors.LockedError` at once when another run uses ``output_dir`` or
    ``private_dir``.
    """
    if not inputs:
        raise ClipsError("no input given: name DICOM folders of patients or a cohort folder")
    missing = [str(n + 1) for n, folder in enumerate(inputs) if not Path(folder).is_dir()]
    if missing:  # before anything is created; by position, since folder names may name patients
        raise ClipsError(f"input #{', #'.join(missing)} does not exist or is not a folder: name DICOM folders of "
                         "patients or a cohort folder")
    overrides_table = _load_overrides(overrides) or {}  # a bad file is an error before anything is created
    output_dir = Path(output_dir)
    private_dir = Path(private_dir) if private_dir else default_private_dir(output_dir)
    if private_dir.resolve() == output_dir.resolve() or output_dir.resolve() in private_dir.resolve().parents:
        raise ClipsError(f"--private-dir {private_dir} is inside the output folder {output_dir}: the mapping to "
                         "patient identities must live outside the folder you share; choose another folder")
    with DirectoryLock(output_dir, what="prediction output folder"), \
            DirectoryLock(private_dir, what="private pseudonym folder"):
        salt = uid_salt(private_dir) if deidentify_dicom else None
        return _predict_locked(inputs, output_dir, private_dir, spec, device, keep_patient_names,
                               overrides_table, overwrite, use_mirroring, progress, predictor, salt,
                               workers or default_workers())


def _convert_study(context: Tuple[Sequence[PathLike], Dict[str, Any]], k: int,
                   item: Tuple[int, str, str, str, StudySelection]) -> Tuple[Any, Any]:
    """(PreparedStudy or None, (CT on the PET grid, SUV PET, start time) or the study's failure); runs in a worker
    process (:mod:`.study_workers`). ``context``: the inputs and the overrides table."""
    from clips_nnunet.dataset_conversion.convert import prepare_study

    inputs, overrides_table = context
    i, pseudonym, name, label, sel = item
    t0 = time.perf_counter()
    try:
        prepared = prepare_study(sel, overrides_table.get(str(sel.patient_key)), labels="none", label=pseudonym)
    except Exception as e:  # one patient never stops the cohort
        return None, _failure(label, e, inputs, sel, t0)
    return prepared, (prepared.ct_on_pet, prepared.pet_suv, t0)


def _write_study(context: Tuple[Sequence[PathLike], Path, Optional[str]], k: int,
                 item: Tuple[int, str, str, str, StudySelection], prepared: Any,
                 outputs: Tuple[sitk.Image, Dict[str, Any], float]) -> PatientResult:
    """Write a study's outputs from (mask, model description, start time); runs in the worker process that
    converted it, so the PET headers it parsed are at hand. ``context``: the inputs, OUT and the UID salt."""
    inputs, output_dir, salt = context
    i, pseudonym, name, label, sel = item
    mask, model, t0 = outputs
    return _write_outputs(output_dir / name, pseudonym, label, sel, mask, prepared, model, salt, inputs, t0)


def _predict_locked(inputs: Sequence[PathLike], output_dir: Path, private_dir: Path, spec: Model, device: str,
                    keep_patient_names: bool, overrides_table: Dict[str, Any], overwrite: bool, use_mirroring: bool,
                    progress: bool, predictor: Optional[CasePredictor], salt: Optional[str], workers: int
                    ) -> PredictionRun:
    from functools import partial

    import clips_nnunet.dataset_conversion.convert  # noqa: F401 - before the workers fork: they inherit it

    started = time.perf_counter()
    todo: List[Tuple[int, str, str, str, StudySelection]] = []
    # worker processes (study_workers.py) start first: their imports overlap the index; later they convert the next
    # studies and write the previous ones' outputs while nnU-Net predicts one in this process
    with StudyWorkers(workers, partial(_convert_study, (inputs, overrides_table)),
                      partial(_write_study, (inputs, output_dir, salt)),
                      lambda k, kind, reason: PatientResult(todo[k][3], "failed", message=reason)) as pool:
        return _predict_with(pool, todo, inputs, output_dir, private_dir, spec, device, keep_patient_names,
                             overwrite, use_mirroring, progress, predictor, started)


def _predict_with(pool: StudyWorkers, todo: List[Tuple[int, str, str, str, StudySelection]],
                  inputs: Sequence[PathLike], output_dir: Path, private_dir: Path, spec: Model, device: str,
                  keep_patient_names: bool, overwrite: bool, use_mirroring: bool, progress: bool,
                  predictor: Optional[CasePredictor], started: float) -> PredictionRun:
    """:func:`_predict_locked` once its worker processes run: index, choose what to predict, run the pipeline."""
    from tqdm import tqdm

    mapping = PseudonymMap(private_dir / MAPPING_FILE)
    run = PredictionRun(output_dir=output_dir, mapping_file=mapping.path)
    timings = run.timings = dict.fromkeys(TIMING_KEYS, 0.0)
    loading = None
    if predictor is None:  # the model loads in a thread while the workers read the headers (nothing forks now)
        from concurrent.futures import ThreadPoolExecutor
        loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clips-predict-model")
        loading = loader.submit(load_predictor, spec, device=device, use_mirroring=use_mirroring)
        loader.shutdown(wait=False)
    selections, run.problems = find_studies(inputs, workers=pool.n, map_chunks=pool.map_chunks)
    timings["index"] = time.perf_counter() - started
    timings["index_cpu"] = pool.index_cpu
    cases = _output_names(selections, mapping, output_dir, keep_patient_names)
    mapping.save()

    results: Dict[int, PatientResult] = {}
    owners = {e["folder"].casefold(): p for p, e in mapping.entries.items() if e.get("folder")}
    for i, (pseudonym, name, sel) in enumerate(cases):
        label = name if keep_patient_names else pseudonym
        other = _other_study(output_dir / name, pseudonym, owners.get(name.casefold()))
        if other is not None:  # never skip on, or write over, another study's outputs
            results[i] = PatientResult(label, "failed", message=f"output folder {name} holds the outputs of "
                                       f"another study ({other}); predict into another output folder, or do not "
                                       "mix --keep-patient-names and pseudonymised runs in one folder")
            continue
        remove_stale_temporaries(output_dir / name)  # a killed run's .seg.dcm.*.dcm and the like
        if not overwrite and is_complete(output_dir / name, pseudonym):
            report = read_json(output_dir / name / "report.json")
            results[i] = PatientResult(label, "skipped", message="outputs already complete",
                                       tmtv_ml=_get(report, "tmtv_ml"), n_lesions=_get(report, "n_lesions"),
                                       warnings=[str(w) for w in report.get("warnings", []) or []])
        else:
            todo.append((i, pseudonym, name, label, sel))

    def predict(k: int, images: Tuple[sitk.Image, sitk.Image, float]) -> Optional[tuple]:
        """nnU-Net on study ``k`` in this process: (mask, model description, start time) for its worker, or None
        (the failure recorded)."""
        i, pseudonym, name, label, sel = todo[k]
        t = time.perf_counter()
        try:
            mask = predictor.predict_images([images[0], images[1]], pseudonym)
            return mask, predictor.model_description(), images[2]
        except Exception as e:  # one patient never stops the cohort
            results[i] = _failure(label, e, inputs, sel, images[2])
            return None
        finally:
            timings["nnunet"] += time.perf_counter() - t

    def on_reply(reply: WorkerReply) -> None:
        key = "convert" if reply.kind == "converted" else "outputs"
        timings[key] += reply.end - reply.start
        timings[f"{key}_cpu"] += reply.cpu
        run.events.append((key, reply.k, reply.start, reply.end))
        if isinstance(reply.payload, PatientResult):
            results[todo[reply.k][0]] = reply.payload

    def waited(key: str, k: int, start: float, end: float) -> None:
        timings[key] += end - start
        run.events.append((key, k, start, end))

    if todo:  # the first conversions overlap the rest of the model's loading
        bar = tqdm(total=len(todo), desc="predict", unit="study", disable=not progress)
        queued = min(pool.n, len(todo))
        for k in range(queued):
            pool.convert(k, todo[k])
        if loading is not None:  # one model or an Ensemble
            t = time.perf_counter()
            predictor = loading.result()
            timings["model"] = time.perf_counter() - t
        run_pipeline(pool, todo, predict, on_reply, waited, progress=bar.update, queued=queued)
        bar.close()
    run.results = [results[i] for i in sorted(results)]
    atomic_write_json(output_dir / "prediction_summary.json",
                      {"model": predictor.model_description() if predictor else None, **run.to_dict()})
    timings["total"] = time.perf_counter() - started
    return run


def _other_study(folder: Path, pseudonym: str, recorded_owner: Optional[str]) -> Optional[str]:
    """The pseudonym of another study whose outputs ``folder`` holds or whose folder it is by the private
    mapping (a ``--keep-patient-names`` folder named like a pseudonym); None when it is free or this study's."""
    if recorded_owner is not None and recorded_owner != pseudonym:
        return recorded_owner
    found = report_case(folder)
    return found if found is not None and found != pseudonym else None


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
