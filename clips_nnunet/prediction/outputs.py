"""Per-patient outputs of ``clips-nnunet predict`` and the names of their folders.

* :func:`write_patient_outputs`: ``mask.nii.gz``, ``seg.dcm``, ``rtstruct.dcm``, ``mip_coronal.png``, ``report.md``
  and, last, ``report.json`` (the completion marker) into one folder; every file is written atomically.
* :class:`PseudonymMap`: stable pseudonyms ``PRED_0001``... and, with ``--keep-patient-names``, stable and unique
  folder names, kept in the private mapping file (never under the output folder).
* :func:`pseudonymise_sources`: what of the source PET headers goes into the SEG and RTSTRUCT.

Identity of the DICOM outputs. By default the SEG and RTSTRUCT belong to the source study and patient, as DICOM
requires of a derived object: the source's PatientName, PatientID, StudyInstanceUID and references, so a PACS files
them with the PET they were drawn on. ``mask.nii.gz``, the report and the MIP never carry an identifier. A
de-identified DICOM export (``predict --deidentify-dicom``) is an explicit choice: PatientName and PatientID become
the pseudonym, the other identifying attributes (:data:`DEIDENTIFY_BLANK`) are emptied, and every UID the objects
carry or reference (study, series, SOP instances, frame of reference) is replaced consistently by
:func:`deidentified_uid` (``2.25.<128-bit hash of a private salt and the UID>``; the salt lives in the private
folder), so the SEG and RTSTRUCT of one study still belong together and to the same replaced PET UIDs, and a PET
de-identified with the same salt matches them.

Folder names with ``--keep-patient-names`` (:meth:`PseudonymMap.folder_for`): the PatientID made safe as one
folder name (:func:`safe_folder_name`: characters other than ``A-Z a-z 0-9 _ . -`` become ``_``). Two studies that
would get the same name (``Müller`` and ``Mäller`` both give ``M_ller``; names that differ only in case, which
are one folder on case-insensitive filesystems; several studies of one patient) get the pseudonym as a suffix
(``M_ller_PRED_0002``), so no study ever writes into another's folder. A name, once given, is recorded in the
private mapping and reused on every later run, so it never changes when patients are added.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from clips_nnunet.dataset_conversion.write import write_image
from clips_nnunet.errors import PatientError
from clips_nnunet.io_utils import PathLike, atomic_write_json, check_nifti_complete, read_json

#: Files written per patient; ``report.json`` is written last and marks completion.
OUTPUT_FILES = ("mask.nii.gz", "seg.dcm", "rtstruct.dcm", "mip_coronal.png", "report.md", "report.json")
MAPPING_FILE = "prediction_pseudonyms.json"
PSEUDONYM_PREFIX = "PRED"

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_folder_name(text: str) -> str:
    """A header value made harmless as one folder name (no separators, no leading dots, not empty)."""
    name = _SAFE.sub("_", str(text)).strip("._")
    return name[:64] or "unnamed"


class PseudonymMap:
    """Stable pseudonyms ``PRED_0001``... for (patient, study) keys, stored in the private mapping file.

    The file maps each pseudonym to ``{"patient_id", "study_instance_uid", "patient_key"}`` and, once a
    ``--keep-patient-names`` run has named its folder, ``"folder"``. It is written atomically and only ever in
    the private folder, never under the output folder.
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

    def folder_for(self, pseudonym: str, claims: Iterable[str] = (), existing: Iterable[str] = ()) -> str:
        """The ``--keep-patient-names`` folder of ``pseudonym``'s study (recorded in the mapping; see the module
        docstring for the rule).

        ``claims``: the plain names (:func:`safe_folder_name` of the PatientID) of every study of this run, one
        entry per study (a name listed twice is contested). ``existing``: folder names already present in the
        output folder. A name recorded for this study earlier is returned unchanged.
        """
        entry = self.entries[pseudonym]
        if entry.get("folder"):
            return entry["folder"]
        plain = safe_folder_name(entry.get("patient_id", ""))
        key = plain.casefold()
        contested = sum(1 for c in claims if c.casefold() == key) > 1
        taken = {e["folder"].casefold() for p, e in self.entries.items() if p != pseudonym and e.get("folder")}
        taken |= {name.casefold() for name in existing}
        folder = f"{plain}_{pseudonym}" if contested or key in taken else plain
        entry["folder"] = folder
        return folder

    def save(self) -> None:
        atomic_write_json(self.path, self.entries)


def remove_stale_temporaries(folder: Path) -> List[str]:
    """Delete the temporary files a killed run left in one patient's folder: ``.<output>.<random><suffix>`` for the
    names in :data:`OUTPUT_FILES` (what :func:`clips_nnunet.io_utils.atomic_path` creates; nothing else is
    touched). Returns the names removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for f in folder.iterdir():
        if f.is_file() and any(f.name.startswith(f".{name}.") for name in OUTPUT_FILES):
            f.unlink(missing_ok=True)
            removed.append(f.name)
    return removed


def report_case(folder: Path) -> Optional[str]:
    """The pseudonym (``case``) in ``folder/report.json``: whose outputs the folder holds; None when there is no
    readable report."""
    try:
        report = read_json(Path(folder) / "report.json")
    except (OSError, ValueError):
        return None
    case = report.get("case") if isinstance(report, dict) else None
    return str(case) if case else None


def is_complete(folder: Path, case: Optional[str] = None) -> bool:
    """True when every output of one patient exists (``report.json``, written last, included), the report parses
    and, with ``case`` (the study's pseudonym, i.e. its identity through the private mapping), is that study's:
    completion is keyed by the study, never by the folder name alone. The mask must be complete too."""
    folder = Path(folder)
    if not all((folder / name).is_file() for name in OUTPUT_FILES):
        return False
    found = report_case(folder)
    if found is None or (case is not None and found != case):
        return False
    try:
        check_nifti_complete(folder / "mask.nii.gz")
    except (ValueError, OSError):
        return False
    return True


# --------------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------------
def _clean_copy(image: sitk.Image) -> sitk.Image:
    """Copy of ``image`` with geometry only: the metadata dictionary (which could hold DICOM values) is dropped."""
    out = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(image))
    out.CopyInformation(image)
    return out


def write_nifti(image: sitk.Image, path: PathLike) -> Path:
    """Write ``image`` (geometry only, no metadata) as compressed NIfTI, atomically and verified."""
    path = Path(path)
    write_image(_clean_copy(image), path)
    return path


# --------------------------------------------------------------------------------------------------------------------
# DICOM sources
# --------------------------------------------------------------------------------------------------------------------
#: Patient/study attributes blanked in the DICOM outputs unless the user keeps identities (PatientName and PatientID
#: become the pseudonym; UIDs are kept so that SEG and RTSTRUCT still reference the source PET series).
DEIDENTIFY_BLANK = ("PatientBirthDate", "PatientBirthTime", "PatientAge", "OtherPatientIDs", "OtherPatientNames",
                    "AccessionNumber", "ReferringPhysicianName", "StudyDate", "StudyTime", "StudyID",
                    "StudyDescription", "PatientAddress", "PatientTelephoneNumbers", "InstitutionName")

#: Type 2 patient/study attributes that highdicom copies from the source images and so must exist (empty is valid).
TYPE2_REQUIRED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                  "ReferringPhysicianName", "StudyID", "StudyDate", "StudyTime")


#: UIDs of the source headers that the SEG and RTSTRUCT copy or reference; replaced in a de-identified export.
DEIDENTIFY_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
#: Private file (in the prediction's private folder) holding the salt of :func:`deidentified_uid`.
UID_SALT_FILE = "dicom_uid_salt.json"


def deidentified_uid(uid: str, salt: str) -> str:
    """The replacement of ``uid`` in a de-identified export: ``2.25.`` and the decimal value of 128 bits of
    ``sha256(salt, uid)`` (PS3.5 B.2 UUID-derived form; at most 44 characters). One salt maps one UID to one
    replacement, so every object of an export references the same replaced study, series and instances."""
    import hashlib
    digest = hashlib.sha256(f"{salt}\x00{uid}".encode("utf-8")).hexdigest()
    return f"2.25.{int(digest[:32], 16)}"


def uid_salt(private_dir: PathLike) -> str:
    """The private folder's de-identification salt (created once, then reused: re-runs give the same UIDs)."""
    import secrets
    path = Path(private_dir) / UID_SALT_FILE
    if path.is_file():
        salt = read_json(path).get("uid_salt")
        if salt:
            return str(salt)
    salt = secrets.token_hex(16)
    atomic_write_json(path, {"uid_salt": salt})
    return salt


def pseudonymise_sources(datasets: Sequence[Any], pseudonym: Optional[str], salt: Optional[str] = None) -> None:
    """Prepare source PET headers (in place) before they are copied into SEG and RTSTRUCT.

    With a ``pseudonym`` (a de-identified export; ``salt`` required): PatientName and PatientID become
    ``pseudonym``, :data:`DEIDENTIFY_BLANK` attributes become empty and :data:`DEIDENTIFY_UIDS` are replaced by
    :func:`deidentified_uid`. Without: the source identity stays (the outputs belong to the source study). Always:
    absent :data:`TYPE2_REQUIRED` attributes are added empty (some scanners and phantoms omit e.g.
    AccessionNumber, which highdicom requires to be present).
    """
    if pseudonym is not None and not salt:
        raise ValueError("a de-identified export needs the private salt (uid_salt) to replace the UIDs")
    for ds in datasets:
        if pseudonym is not None:
            ds.PatientName = f"{pseudonym}^"  # family-name component only (DICOM PN)
            ds.PatientID = pseudonym
            for keyword in DEIDENTIFY_BLANK:
                if keyword in ds:
                    setattr(ds, keyword, "")
            for keyword in DEIDENTIFY_UIDS:
                if keyword in ds:
                    setattr(ds, keyword, deidentified_uid(str(getattr(ds, keyword)), salt))
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


# --------------------------------------------------------------------------------------------------------------------
# One patient
# --------------------------------------------------------------------------------------------------------------------
def write_patient_outputs(out_dir: Path, pseudonym: str, mask: sitk.Image, pet_suv: sitk.Image,
                          pet_datasets: Sequence[Any], model: Dict[str, Any], warnings: Sequence[str] = (),
                          deidentify_salt: Optional[str] = None) -> Dict[str, Any]:
    """Write every output of one patient into ``out_dir``; ``report.json`` last. Returns the report dict.

    ``mask`` is the predicted label map on the grid of ``pet_suv``; ``pet_datasets`` are the source PET series'
    pydicom datasets (headers suffice; they are changed in place by :func:`pseudonymise_sources`). The DICOM SEG and
    the RTSTRUCT (one ROI ``lesion`` holding the contours of every lesion on every PET slice) reference the source
    PET instances and, by default, belong to the source patient and study; with ``deidentify_salt`` (from
    :func:`uid_salt`) they are a de-identified export (see the module docstring). An existing
    ``report.json`` is removed first, so a folder is never complete with outputs of two predictions.
    """
    from clips_nnunet.dataset_conversion.dicom_out import write_dicom_seg, write_rtstruct
    from clips_nnunet.prediction.mip import save_coronal_mip
    from clips_nnunet.prediction.patient_report import build_report, write_report
    from clips_nnunet.metrics.lesions import measure_lesions

    if mask.GetSize() != pet_suv.GetSize():
        raise PatientError(pseudonym, f"predicted mask size {mask.GetSize()} differs from the PET size "
                                      f"{pet_suv.GetSize()}; the model output is not on the PET grid")
    check_pet_geometry(pet_suv, pet_datasets, pseudonym)
    pseudonymise_sources(pet_datasets, pseudonym if deidentify_salt else None, deidentify_salt)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)  # of a killed earlier run (this run holds the output folder's lock)
    (out_dir / "report.json").unlink(missing_ok=True)  # --overwrite: incomplete until the new report is written
    mask_arr = (sitk.GetArrayViewFromImage(mask) > 0).astype(np.uint8)
    mask_u8 = sitk.GetImageFromArray(mask_arr)
    mask_u8.CopyInformation(pet_suv)
    write_image(mask_u8, out_dir / "mask.nii.gz")
    suv_arr = sitk.GetArrayViewFromImage(pet_suv)
    spacing_zyx = tuple(float(s) for s in pet_suv.GetSpacing()[::-1])
    summary = measure_lesions(mask_arr, spacing_zyx, suv=suv_arr)

    write_dicom_seg(mask_arr, pet_datasets, out_dir / "seg.dcm", segment_label="lesion",
                    series_description="clips-nnunet predicted lesions")
    write_rtstruct(mask_arr, pet_datasets, out_dir / "rtstruct.dcm", roi_name="lesion",
                   series_description="clips-nnunet predicted lesion contours")
    save_coronal_mip(pet_suv, mask_u8, out_dir / "mip_coronal.png",
                     title=f"{pseudonym}: coronal SUV MIP, prediction outlined", lesions=summary.lesions)
    report = build_report(summary, case_id=pseudonym, model=model, warnings=list(warnings),
                          spacing_zyx=spacing_zyx, image=pet_suv)  # lesion centroids in LPS mm and PET slices
    write_report(report, out_dir)  # report.md then report.json (completion marker)
    return report
