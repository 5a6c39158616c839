"""The cohort pipeline shared by ``clips-nnunet convert`` and ``convert-autopet``.

* Typed records: :class:`CaseJob` (one study to convert), :class:`ConversionOptions` (what every job shares),
  :class:`AutopetFiles`, :class:`PreparedStudy`, :class:`LabelOption`.
* :class:`DatasetTarget`: the dataset's folders, resolved and validated before anything is created; refuses a
  second dataset name under an id that nnU-Net already knows.
* The dataset lock (:meth:`DatasetTarget.lock`): one run per dataset id at a time; a second one fails at once
  naming the holder.
* Membership (:func:`check_membership`): cases converted by earlier runs stay unless ``prune``; new patients join
  an existing dataset only with ``add`` (or ``prune``).
* :func:`execute` converts the jobs (``workers`` processes that end with their parent) and :func:`finish_dataset`
  writes dataset.json, case_metadata.json, the report and splits that list exactly the training cases present.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from clips_nnunet.errors import ClipsError, DatasetError, PatientError
from clips_nnunet.nnunet_env import nnunet_folder, nnunet_folder_if_set
from clips_nnunet.io_utils import (DirectoryLock, PathLike, atomic_write_json, atomic_write_text,
                                   dumps_json, read_json)

from . import write as W
from .metadata import case_metadata, write_case_metadata
from .overrides import SuvOverrides
from .workers import process_pool
from .select import StudySelection

REPORT_NAME = "conversion_report.json"
STATE_DIR = "cases"
Record = Dict[str, Any]


# ----------------------------------------------------------------------------------------------------------------------
# typed records
# ----------------------------------------------------------------------------------------------------------------------
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
    #: the PET series' headers (pydicom datasets without pixels) in slice order, as the reader parsed them
    pet_headers: List[Any] = field(default_factory=list)


@dataclass(frozen=True)
class AutopetFiles:
    """The NIfTI files of one autoPET study (``seg`` None: no label, the study goes to imagesTs)."""
    pet: str
    ct: str
    seg: Optional[str] = None


@dataclass(frozen=True)
class ConversionOptions:
    """What every job of one run shares (sent to the worker processes with each job)."""
    dataset_dir: Path
    private_dir: Path
    labels: LabelOption = LabelOption()
    roi: Optional[str] = None
    target_spacing: Optional[Tuple[float, float, float]] = None


@dataclass
class CaseJob:
    """One study to convert: a DICOM :class:`.select.StudySelection` or :class:`AutopetFiles`.

    ``label`` is the pseudonymous label used in messages; ``secrets`` are identifiers scrubbed from the public
    report; ``overrides`` replace missing or wrong SUV header values (DICOM only).
    """
    case_id: str
    group: str
    test_only: bool
    source: Union[StudySelection, AutopetFiles]
    label: str
    secrets: List[str] = field(default_factory=list)
    overrides: Optional[SuvOverrides] = None


# ----------------------------------------------------------------------------------------------------------------------
# the dataset's folders, lock and membership
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetTarget:
    """Resolved folders of one dataset (see :func:`resolve_target`)."""
    dataset_id: int
    name: str
    raw_root: Path
    preprocessed_root: Optional[Path]
    private_dir: Path

    @property
    def folder(self) -> str:
        return W.dataset_folder_name(self.dataset_id, self.name)

    @property
    def dataset_dir(self) -> Path:
        return self.raw_root / self.folder

    def lock(self) -> DirectoryLock:
        """The lock of this dataset id (a hidden file in nnUNet_raw, so two names of one id share it)."""
        return DirectoryLock(self.raw_root, what=f"dataset {self.dataset_id:03d}",
                             lock_name=f".Dataset{self.dataset_id:03d}.clips-lock")


def resolve_target(dataset_id: int, name: str, private_dir: Optional[PathLike] = None,
                   raw_root: Optional[PathLike] = None, preprocessed_root: Optional[PathLike] = None) -> DatasetTarget:
    """Validate the dataset id and name and find the folders; creates nothing.

    Raises :class:`DatasetError` when the id already belongs to a dataset of another name in nnUNet_raw,
    nnUNet_preprocessed or nnUNet_results (nnU-Net would then refuse the id), or the private folder is inside
    nnUNet_raw.
    """
    folder = W.dataset_folder_name(dataset_id, name)
    raw = Path(raw_root) if raw_root else nnunet_folder("nnUNet_raw")  # the one owner of nnU-Net's folders
    pre = Path(preprocessed_root) if preprocessed_root else nnunet_folder_if_set("nnUNet_preprocessed")
    private = W.check_private_dir(Path(private_dir) if private_dir else W.default_private_dir(raw, folder), raw)
    target = DatasetTarget(int(dataset_id), name, raw, pre, private)
    check_name_free(target)  # early, so that nothing is created; again under the lock (admit_cases)
    return target


def check_name_free(target: DatasetTarget) -> None:
    """:class:`DatasetError` when the dataset id already belongs to a dataset of another name in nnUNet_raw,
    nnUNet_preprocessed or nnUNet_results (nnU-Net would then refuse the id). Checked before anything is created
    and again under the dataset lock: two runs with one id and different names cannot both pass."""
    prefix = f"Dataset{target.dataset_id:03d}_"
    for root in (target.raw_root, target.preprocessed_root, nnunet_folder_if_set("nnUNet_results")):
        if root is None or not root.is_dir():
            continue
        others = sorted(p.name for p in root.iterdir()
                        if p.is_dir() and p.name.startswith(prefix) and p.name != target.folder)
        if others:
            raise DatasetError(f"dataset id {target.dataset_id} already belongs to {others[0]} in {root}: nnU-Net "
                               f"accepts one name per id; use -n {others[0][len(prefix):]} to update that dataset, or "
                               "choose an unused id")


def _state_path(private_dir: Path, case_id: str) -> Path:
    return Path(private_dir) / STATE_DIR / f"{case_id}.json"


def converted_before(private_dir: Path) -> Dict[str, Record]:
    """Completion records (status converted) of every case converted by an earlier run of this dataset."""
    found: Dict[str, Record] = {}
    folder = Path(private_dir) / STATE_DIR
    if not folder.is_dir():
        return found
    for f in sorted(folder.glob("*.json")):
        try:
            record = read_json(f)
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("status") == "converted":
            found[f.stem] = record
    return found


def check_membership(target: DatasetTarget, registry: W.CaseRegistry, keys: Sequence[Tuple[str, str]],
                     add: bool, prune: bool) -> Dict[str, Record]:
    """Earlier cases of the dataset; refuses new studies in a dataset with converted cases unless ``add``/``prune``.

    Returns the earlier completion records (case id -> record). ``keys`` are this run's (patient, study) keys.
    """
    earlier = converted_before(target.private_dir)
    known = {(v["patient"], v["study"]) for v in registry.cases.values()}
    new = [k for k in keys if k not in known]
    if earlier and new and not (add or prune):
        n_patients = len({p for p, _ in new})
        raise DatasetError(f"{target.folder} already holds {len(earlier)} converted case(s) and this cohort brings "
                           f"{len(new)} new stud(ies) of {n_patients} patient(s): pass --add to add them to the "
                           "dataset, --prune to make the dataset hold exactly this cohort (removes the cases not "
                           "in it), or choose another dataset id")
    return earlier


def prune_cases(target: DatasetTarget, case_ids: Sequence[str]) -> List[str]:
    """Remove the files and completion records of ``case_ids`` (``--prune``); returns the case ids removed."""
    for case_id in case_ids:
        W.remove_case_files(target.dataset_dir, case_id)
        _state_path(target.private_dir, case_id).unlink(missing_ok=True)
    return sorted(case_ids)


@dataclass
class Membership:
    """Which case each (patient, study) of this run gets, what the dataset held before, what ``--prune`` removed."""

    registry: W.CaseRegistry
    case_of: Dict[Tuple[str, str], str]
    earlier: Dict[str, Record]
    pruned: List[str]


def admit_cases(target: DatasetTarget, prefix: str, keys: Sequence[Tuple[str, str]], add: bool,
                prune: bool) -> Membership:
    """Under the dataset lock: check membership (:func:`check_membership`), create the dataset folders, give each
    (patient, study) key its pseudonymous case id (saved in the private registry) and, with ``prune``, remove the
    earlier cases this cohort does not hold."""
    check_name_free(target)  # under the lock: another run may have created another name since resolve_target
    registry = W.CaseRegistry.load(target.private_dir, prefix)
    earlier = check_membership(target, registry, keys, add, prune)
    open_dataset(target)
    case_of = registry.assign(keys)
    registry.save()
    pruned: List[str] = []
    if prune:
        kept = set(case_of.values())
        pruned = prune_cases(target, [c for c in earlier if c not in kept])
        earlier = {c: r for c, r in earlier.items() if c not in pruned}
    return Membership(registry, case_of, earlier, pruned)


# ----------------------------------------------------------------------------------------------------------------------
# running the jobs
# ----------------------------------------------------------------------------------------------------------------------
def _init_worker() -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _prepare(job: CaseJob, options: ConversionOptions) -> PreparedStudy:
    if isinstance(job.source, AutopetFiles):
        from .autopet import prepare_autopet
        return prepare_autopet(job.source, job.label)
    from .convert import prepare_study
    return prepare_study(job.source, job.overrides, options.labels, options.roi, options.target_spacing,
                         label=job.label)


def run_case(job: CaseJob, options: ConversionOptions) -> Record:
    """Convert one case and write its files and completion record; never raises (failures become records).

    A case that fails has none of its files left in the dataset (a file written before the failure is removed).
    """
    t0 = time.perf_counter()
    record: Record = {"case_id": job.case_id, "patient_group": job.group}
    writing = False
    try:
        prepared = _prepare(job, options)
        mask = None if job.test_only else prepared.mask
        split = "train" if mask is not None else "test"
        spacing_zyx = tuple(reversed(prepared.pet_suv.GetSpacing()))
        suv = sitk.GetArrayViewFromImage(prepared.pet_suv)
        # from here on the earlier files are replaced: the case is incomplete until its new record is written
        _state_path(options.private_dir, job.case_id).unlink(missing_ok=True)
        writing = True
        # the (gzip-bound) NIfTI writes run in a second thread while the lesion metadata is computed: SimpleITK
        # releases the GIL while writing. The completion record below is written only after both have finished.
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=1) as writer:
            written = writer.submit(W.write_case, options.dataset_dir, job.case_id, prepared.ct_on_pet,
                                    prepared.pet_suv, mask)
            metadata = case_metadata(prepared.mask, suv, spacing_zyx, vendor=prepared.vendor, split=split,
                                     group=job.group)
            written.result()
        for f in W.case_files(options.dataset_dir, job.case_id, split != "train"):  # the other layout, if any
            f.unlink(missing_ok=True)
        record.update(status="converted", split=split, mask_source=prepared.mask_source,
                      warnings=list(prepared.warnings), decisions=list(prepared.decisions), metadata=metadata)
        if job.test_only and prepared.mask is not None:
            record["warnings"].append("from a --test cohort: written to imagesTs; its mask is used only in metadata")
        record["seconds"] = round(time.perf_counter() - t0, 2)
        atomic_write_json(_state_path(options.private_dir, job.case_id), record)
    except PatientError as e:
        record = {**record, "status": "failed", "reason": e.reason}
    except ClipsError as e:  # e.g. WriteError: a full disk fails this case with the file named
        record = {**record, "status": "failed", "reason": str(e)}
    except Exception as e:  # one study never stops the cohort: record and go on
        record = {**record, "status": "failed", "reason": f"unexpected {type(e).__name__}: {e}"}
    if record["status"] == "failed" and writing:  # before writing, an earlier conversion's files are untouched
        try:
            W.remove_case_files(options.dataset_dir, job.case_id)
        except OSError:
            pass
    record.setdefault("seconds", round(time.perf_counter() - t0, 2))
    record["secrets"] = job.secrets
    return record


def _run_jobs(jobs: List[CaseJob], options: ConversionOptions, workers: int, progress: bool) -> List[Record]:
    from tqdm.auto import tqdm

    results: List[Record] = []
    bar = tqdm(total=len(jobs), desc="converting", unit="study", disable=not progress)
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            results.append(run_case(job, options))
            bar.update()
    else:
        from concurrent.futures import as_completed
        # Ctrl-C: the queue is dropped and the workers end within seconds (process_pool), before the dataset lock
        # around this call is released
        with process_pool(workers, initializer=_init_worker) as pool:
            futures = [pool.submit(run_case, job, options) for job in jobs]
            for fut in as_completed(futures):
                results.append(fut.result())
                bar.update()
    bar.close()
    return results


def execute(jobs: List[CaseJob], records: Dict[str, Record], options: ConversionOptions, resume: bool,
            workers: int, progress: bool) -> List[str]:
    """Resume bookkeeping + run; fills ``records``; returns the secrets of all jobs (for scrubbing).

    With ``resume`` a case is skipped only when its completion record exists and every file re-verifies
    (:func:`.write.verify_case`: header and complete gzip data); otherwise it is converted again.
    """
    secrets_: List[str] = []
    todo: List[CaseJob] = []
    for job in jobs:
        secrets_.extend(job.secrets)
        done = _resumable(options, job.case_id) if resume else None
        if done is not None:
            done["resumed"] = True
            records[job.case_id] = done
        else:  # its completion record goes when its files are first replaced (run_case), not before
            todo.append(job)
    for r in _run_jobs(todo, options, workers, progress):
        r.pop("secrets", None)
        records[r["case_id"]] = r
    return secrets_


def _resumable(options: ConversionOptions, case_id: str) -> Optional[Record]:
    state = _state_path(options.private_dir, case_id)
    if not state.is_file():
        return None
    try:
        record = read_json(state)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") != "converted":
        return None
    if W.verify_case(options.dataset_dir, case_id, record.get("split") == "train") is not None:
        return None
    return record


# ----------------------------------------------------------------------------------------------------------------------
# dataset-level files and the report
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class ConversionReport:
    """Outcome of a cohort conversion; ``cases`` maps case id -> record (status converted/failed/skipped, or kept:
    converted by an earlier run and still in the dataset). ``splits_error`` is set when splits_final.json does
    not match the cases and could not be rewritten (the run counts as failed)."""
    dataset_dir: Path
    private_dir: Path
    cases: Dict[str, Record]
    warnings: List[str]
    splits_written: bool
    splits_error: Optional[str] = None
    pruned: List[str] = field(default_factory=list)

    @property
    def failed(self) -> List[str]:
        return sorted(c for c, r in self.cases.items() if r["status"] == "failed")

    @property
    def not_reconverted(self) -> List[str]:
        """Cases this run could not convert again whose earlier conversion was kept (the run counts as failed)."""
        return sorted(c for c, r in self.cases.items() if r.get("reconversion_failed"))

    @property
    def converted(self) -> List[str]:
        return sorted(c for c, r in self.cases.items() if r["status"] == "converted")

    def summary_table(self) -> str:
        """Plain-text table: one row per case (status, split, TMTV, lesions, reason/warnings)."""
        rows = [("case", "status", "split", "TMTV ml", "lesions", "notes")]
        for case, r in sorted(self.cases.items()):
            md = r.get("metadata") or {}
            tmtv = md.get("tmtv_ml")
            notes = r.get("reason") or ("not converted again, earlier conversion kept: " + r["reconversion_failed"]
                                        if r.get("reconversion_failed") else "; ".join(r.get("warnings", [])))
            rows.append((case, r["status"] + (" (resumed)" if r.get("resumed") else ""), r.get("split", "-"),
                         "-" if tmtv is None else f"{tmtv:.1f}", str(md.get("n_lesions", "-")),
                         (notes[:110] + "...") if len(notes) > 113 else notes))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = ["  ".join(v.ljust(w) for v, w in zip(row[:5], widths)) + "  " + row[5] for row in rows]
        n_kept = sum(r["status"] == "kept" for r in self.cases.values())
        lines.append(f"converted {len(self.converted)}, failed {len(self.failed)}, skipped "
                     f"{sum(r['status'] == 'skipped' for r in self.cases.values())}"
                     + (f", kept from earlier runs {n_kept}" if n_kept else "") + f" -> {self.dataset_dir}")
        return "\n".join(lines)


def _keep_earlier_on_failure(target: DatasetTarget, records: Dict[str, Record], earlier: Dict[str, Record]
                             ) -> Dict[str, Record]:
    """A case that fails or is skipped in this run (its study cannot be read or chosen now) but was converted by an earlier run
    whose completion record and files are untouched and verify keeps that conversion: its record becomes
    ``kept`` with ``reconversion_failed`` (the reason), so the dataset, metadata and splits stay as they were.
    Changes ``records`` in place; returns the kept records."""
    kept: Dict[str, Record] = {}
    for c, r in list(records.items()):
        if r["status"] not in ("failed", "skipped") or c not in earlier or not _state_path(target.private_dir, c).is_file():
            continue
        if W.verify_case(target.dataset_dir, c, earlier[c].get("split") == "train") is not None:
            continue
        reason = r.get("reason", "")
        kept[c] = records[c] = {**{k: v for k, v in earlier[c].items() if k != "resumed"}, "status": "kept",
                                "reconversion_failed": reason,
                                "warnings": list(earlier[c].get("warnings", [])) + [
                                    f"this run could not convert it again ({reason}); the conversion of an "
                                    "earlier run is kept"]}
    return kept


def finish_dataset(target: DatasetTarget, records: Dict[str, Record], warnings: List[str], force: bool,
                   n_folds: int = 5, secrets_: Sequence[str] = (), earlier: Optional[Dict[str, Record]] = None,
                   known_cases: Optional[Sequence[str]] = None, pruned: Sequence[str] = (),
                   extra_report: Optional[Dict[str, Any]] = None) -> ConversionReport:
    """dataset.json, case_metadata.json, conversion_report.json (scrubbed) and splits after the cases are written.

    The dataset holds this run's converted cases plus the ``earlier`` ones not in this run (kept, status
    ``kept``). Files of cases without a completion record (a killed run, a failed case) are removed, but only for
    ``known_cases`` (ids this tool handed out); other files are reported and left alone.
    """
    dataset_dir, private_dir = target.dataset_dir, target.private_dir
    converted = {c: r for c, r in records.items() if r["status"] == "converted"}
    kept = _keep_earlier_on_failure(target, records, earlier or {})
    if kept:
        warnings.append(f"{len(kept)} case(s) could not be converted again and keep their earlier conversion: "
                        + ", ".join(sorted(kept)))
    for c, r in (earlier or {}).items():
        if c in records:
            continue
        reason = W.verify_case(dataset_dir, c, r.get("split") == "train")
        if reason is None:
            kept[c] = {**r, "status": "kept"}
        else:
            _state_path(private_dir, c).unlink(missing_ok=True)
            warnings.append(f"case {c} (converted by an earlier run) dropped from the dataset: {reason}; convert "
                            "its patient again")
    present = {**kept, **converted}
    W.remove_incomplete(dataset_dir, present, known=known_cases)
    strangers = sorted(set(W.existing_case_ids(dataset_dir)) - set(present))
    if strangers:
        warnings.append(f"{len(strangers)} case(s) in the dataset folder were not written by clips-nnunet and were "
                        f"left alone (e.g. {strangers[0]}): they are not counted in dataset.json")
    n_absent = sum(1 for r in kept.values() if "reconversion_failed" not in r)
    if n_absent:
        warnings.append(f"{n_absent} case(s) converted by earlier runs are not in this run and were kept "
                        "(--prune removes them)")
    train = {c: r for c, r in present.items() if r["split"] == "train"}
    W.write_dataset_json(dataset_dir, target.name, len(train))
    write_case_metadata(dataset_dir, {c: r["metadata"] for c, r in present.items()})
    splits_written, splits_error = False, None
    if target.preprocessed_root is not None:
        outcome = W.update_splits(target.preprocessed_root / target.folder, private_dir,
                                  {c: r["patient_group"] for c, r in train.items()}, n_folds=n_folds, force=force)
        splits_written = outcome.status in ("written", "rewritten")
        if outcome.status == "stale":
            splits_error = outcome.message
        elif outcome.message:
            warnings.append(outcome.message)
    public_cases = {c: {k: v for k, v in r.items() if k != "secrets"} for c, r in sorted({**kept, **records}.items())}
    report = {"cases": public_cases, "warnings": warnings,
              "counts": {"converted": len(converted), "train": sum(r["split"] == "train" for r in converted.values()),
                         "test": sum(r["split"] != "train" for r in converted.values()),
                         "failed": sum(r["status"] == "failed" for r in records.values()),
                         "skipped": sum(r["status"] == "skipped" for r in records.values())},
              "dataset": {"cases": len(present), "train": len(train), "kept_from_earlier_runs": sorted(kept),
                          "pruned": sorted(pruned)},
              "splits_error": splits_error, **(extra_report or {})}
    atomic_write_json(private_dir / REPORT_NAME, report)
    atomic_write_text(dataset_dir / REPORT_NAME, W.scrub(dumps_json(report), secrets_))
    return ConversionReport(dataset_dir, private_dir, public_cases, warnings, splits_written, splits_error,
                            list(pruned))


def open_dataset(target: DatasetTarget) -> None:
    """Create the dataset and private folders (call while holding the lock, after the input was checked).

    The private folder (patient mapping, unscrubbed report) is made accessible to its owner only (mode 0700).
    """
    target.dataset_dir.mkdir(parents=True, exist_ok=True)
    (target.private_dir / STATE_DIR).mkdir(parents=True, exist_ok=True)
    os.chmod(target.private_dir, 0o700)
