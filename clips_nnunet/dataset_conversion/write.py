"""nnU-Net raw dataset layout: case files, dataset.json, patient-grouped splits, pseudonymous case ids.

Layout written (nnU-Net v2 "raw" format, https://github.com/MIC-DKFZ/nnUNet/blob/master/documentation/dataset_format.md)::

    $nnUNet_raw/Dataset501_Lymphoma/
        dataset.json                      channel_names {"0": "CT", "1": "CT"}, labels background/lesion
        imagesTr/{case}_0000.nii.gz       CT in HU on the PET grid (float32)
        imagesTr/{case}_0001.nii.gz       PET SUVbw (float32)
        labelsTr/{case}.nii.gz            lesion mask (uint8, 0/1)
        imagesTs/{case}_000[01].nii.gz    studies without a mask
        case_metadata.json                per-case lesion descriptors (metadata.py)
        conversion_report.json            what was converted, skipped and why (no identifiers)
    $nnUNet_preprocessed/Dataset501_Lymphoma/splits_final.json   patient-grouped 5-fold split

Privacy: case ids are ``{PREFIX}_{NNNN}``; numbers are handed out in the order of a keyed hash (secret salt kept in
the private mapping), so neither the id nor the order reveals the PatientID. The mapping (PatientID, study ->
case, patient group) lives in the private folder only. Output images are rebuilt from their pixel arrays with
``CopyInformation``, so no DICOM metadata dictionary travels into NIfTI headers.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from clips_nnunet.dataset_conversion.channels import CHANNEL_NAMES
from clips_nnunet.errors import DatasetError
from clips_nnunet.io_utils import (PathLike, atomic_path, atomic_write_json, read_json, verify_nifti,
                                   verify_written_nifti, write_error)

FILE_ENDING = ".nii.gz"
LABELS = {"background": 0, "lesion": 1}
MAPPING_NAME = "case_mapping.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset{id:03d}_{name}``; ``dataset_id`` 1-999 and ``name`` letters/digits/hyphens (no ``_``)."""
    if not isinstance(dataset_id, (int, np.integer)) or not 1 <= int(dataset_id) <= 999:
        raise DatasetError(f"dataset id {dataset_id!r} must be an integer 1-999 (nnU-Net uses 3 digits); "
                           "pick an unused id, e.g. -d 501")
    if not _NAME_RE.match(name or ""):
        raise DatasetError(f"dataset name {name!r} must be letters, digits or hyphens (no '_', '/', spaces), "
                           "e.g. -n Lymphoma")
    return f"Dataset{int(dataset_id):03d}_{name}"


def clean_image(image: sitk.Image, pixel_type: int) -> sitk.Image:
    """``image`` as ``pixel_type`` with geometry only (no metadata dictionary, e.g. DICOM tags): ``image`` itself
    when it already is one (no copy of the voxels; the converter's SUV and resampled CT are built that way),
    else a copy."""
    dtype = {sitk.sitkFloat32: np.float32, sitk.sitkUInt8: np.uint8, sitk.sitkInt16: np.int16}[pixel_type]
    if image.GetPixelID() == pixel_type and not image.GetMetaDataKeys():
        return image
    out = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(image).astype(dtype))
    out.SetOrigin(image.GetOrigin())
    out.SetSpacing(image.GetSpacing())
    out.SetDirection(image.GetDirection())
    return out


def mask_image(mask: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """``mask`` (z, y, x) as a uint8 0/1 image with ``reference``'s geometry."""
    mask = np.asarray(mask)
    expected = tuple(reversed(reference.GetSize()))
    if mask.shape != expected:
        raise ValueError(f"mask shape {mask.shape} differs from the PET grid {expected}")
    out = sitk.GetImageFromArray((mask > 0).astype(np.uint8))
    out.SetOrigin(reference.GetOrigin())
    out.SetSpacing(reference.GetSpacing())
    out.SetDirection(reference.GetDirection())
    return out


def case_files(dataset_dir: PathLike, case_id: str, train: bool) -> List[Path]:
    """The files of one case (images, then the label for training cases)."""
    d = Path(dataset_dir)
    images = d / ("imagesTr" if train else "imagesTs")
    files = [images / f"{case_id}_0000{FILE_ENDING}", images / f"{case_id}_0001{FILE_ENDING}"]
    if train:
        files.append(d / "labelsTr" / f"{case_id}{FILE_ENDING}")
    return files


def write_image(image: sitk.Image, path: Path, compress: bool = True) -> None:
    """Verified atomic SimpleITK write: temporary file beside ``path``, read back, fsync, then rename.

    SimpleITK does not raise when the disk fills (it leaves a truncated file), so the temporary file is checked
    before it is published: a NIfTI's header must give ``image``'s size and its (gzip) data must be complete
    (:func:`clips_nnunet.io_utils.verify_nifti`); other formats get :func:`clips_nnunet.io_utils.verify_file`.
    Raises :class:`clips_nnunet.errors.WriteError` (naming the file and what to do) when the write is incomplete.
    """
    path = Path(path)
    suffix = FILE_ENDING if path.name.endswith(FILE_ENDING) else "".join(path.suffixes)
    is_nifti = path.name.lower().endswith((".nii", ".nii.gz"))

    def same_size(tmp: Path) -> None:
        if is_nifti:  # header size, and the gzip trailer's CRC and length of exactly this image's data
            verify_written_nifti(tmp, tuple(image.GetSize()), sitk.GetArrayViewFromImage(image))

    # the NIfTI check (header size; gzip trailer CRC and length against the image) runs once, not again by name
    with atomic_path(path, suffix=suffix, verify=same_size if is_nifti else None, by_name=not is_nifti) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
        except RuntimeError as e:  # SimpleITK reports a failed open/write as RuntimeError
            raise write_error(path, str(e).strip().splitlines()[-1][:200]) from e


def verify_case(dataset_dir: PathLike, case_id: str, train: bool) -> Optional[str]:
    """None when every file of the case is present and complete, else the reason (used by ``--resume``)."""
    for f in case_files(dataset_dir, case_id, train):
        if not f.is_file():
            return f"{f.name} is missing"
        try:
            verify_nifti(f)
        except ValueError as e:
            return f"{f.name} is incomplete ({e})"
    return None


def remove_case_files(dataset_dir: PathLike, case_id: str) -> List[Path]:
    """Delete every file of one case (both layouts: imagesTr/labelsTr and imagesTs); returns what was removed."""
    removed = []
    for f in case_files(dataset_dir, case_id, True) + case_files(dataset_dir, case_id, False):
        if f.is_file():
            f.unlink()
            removed.append(f)
    return removed


def write_case(dataset_dir: PathLike, case_id: str, ct: sitk.Image, pet: sitk.Image,
               mask: Optional[np.ndarray]) -> List[Path]:
    """Write CT (channel 0), PET (channel 1) and, when ``mask`` is given, the label of one case.

    With a mask the case goes to imagesTr/labelsTr, otherwise to imagesTs. The CT must already be on the PET grid.
    Each file is written atomically; the label is written last, so a case with a label has both images.
    """
    for a, b, what in ((ct.GetSize(), pet.GetSize(), "size"), (ct.GetSpacing(), pet.GetSpacing(), "spacing"),
                       (ct.GetOrigin(), pet.GetOrigin(), "origin")):
        if not np.allclose(a, b, atol=1e-4):
            raise ValueError(f"case {case_id}: CT {what} {a} differs from PET {what} {b}; resample CT onto the PET")
    train = mask is not None
    files = case_files(dataset_dir, case_id, train)
    ct_clean = clean_image(ct, sitk.sitkFloat32)
    if (ct_clean.GetOrigin(), ct_clean.GetSpacing(), ct_clean.GetDirection()) != \
            (pet.GetOrigin(), pet.GetSpacing(), pet.GetDirection()):  # within the tolerance: made exact
        ct_clean = sitk.Image(ct_clean) if ct_clean is ct else ct_clean  # the caller's image is not changed
        ct_clean.CopyInformation(pet)
    write_image(ct_clean, files[0])
    write_image(clean_image(pet, sitk.sitkFloat32), files[1])
    if train:
        write_image(mask_image(mask, pet), files[2])
    return files


def existing_case_ids(dataset_dir: PathLike) -> Dict[str, List[Path]]:
    """All case ids that have any file in imagesTr/labelsTr/imagesTs, with their files."""
    found: Dict[str, List[Path]] = {}
    d = Path(dataset_dir)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        folder = d / sub
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            name = f.name
            if not name.endswith(FILE_ENDING):
                continue
            stem = name[: -len(FILE_ENDING)]
            if sub != "labelsTr":
                stem = re.sub(r"_\d{4}$", "", stem)
            found.setdefault(stem, []).append(f)
    return found


def remove_incomplete(dataset_dir: PathLike, complete: Iterable[str], known: Optional[Iterable[str]] = None
                      ) -> List[str]:
    """Delete the files of cases that are not in ``complete`` (left by a killed run or a failed case) and stray
    temporary files. With ``known`` (the case ids this tool handed out), files of other case ids are left alone."""
    complete = set(complete)
    known = None if known is None else set(known)
    removed = []
    for case_id, files in existing_case_ids(dataset_dir).items():
        if case_id not in complete and (known is None or case_id in known):
            for f in files:
                f.unlink(missing_ok=True)
            removed.append(case_id)
    d = Path(dataset_dir)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "."):
        folder = d / sub
        if folder.is_dir():
            for f in folder.glob(".*.nii.gz"):  # atomic_path temporaries of a killed write
                f.unlink(missing_ok=True)
    return sorted(removed)


def write_dataset_json(dataset_dir: PathLike, name: str, n_training: int, description: str = "") -> dict:
    """Write nnU-Net's dataset.json (channel_names CT/CT: nnU-Net's CT normalisation for both; see docs)."""
    content = {
        "channel_names": dict(CHANNEL_NAMES),
        "labels": dict(LABELS),
        "numTraining": int(n_training),
        "file_ending": FILE_ENDING,
        "name": name,
        "description": description or "Lymphoma FDG PET/CT: channel 0 CT (HU) resampled onto the PET grid, "
                                       "channel 1 PET SUVbw; label 1 = lesion. Written by clips-nnunet.",
        "overwrite_image_reader_writer": "SimpleITKIO",
    }
    atomic_write_json(Path(dataset_dir) / "dataset.json", content)
    return content


def patient_grouped_splits(case_groups: Mapping[str, str], n_folds: int = 5, seed: int = 12345
                           ) -> List[Dict[str, List[str]]]:
    """nnU-Net-style folds where all cases of one patient group land in the same fold.

    Groups are shuffled with ``numpy.random.default_rng(seed)`` and dealt to the currently smallest fold (by case
    count), which balances fold sizes when patients have several studies. ``n_folds`` is reduced to the number of
    groups when there are fewer groups (at least 2 groups are needed).
    """
    groups: Dict[str, List[str]] = {}
    for case, group in sorted(case_groups.items()):
        groups.setdefault(group, []).append(case)
    if len(groups) < 2:
        raise DatasetError(f"{len(groups)} patient(s) with masks: a split needs at least 2; add labelled patients")
    n_folds = min(int(n_folds), len(groups))
    rng = np.random.default_rng(seed)
    order = [sorted(groups)[i] for i in rng.permutation(len(groups))]
    folds: List[List[str]] = [[] for _ in range(n_folds)]
    for g in sorted(order, key=lambda g: -len(groups[g])):  # stable: large groups first, then shuffled order
        smallest = min(range(n_folds), key=lambda i: (len(folds[i]), i))
        folds[smallest].extend(groups[g])
    all_cases = sorted(case_groups)
    return [{"train": sorted(set(all_cases) - set(f)), "val": sorted(f)} for f in folds]


def write_splits(preprocessed_dir: PathLike, splits: List[Dict[str, List[str]]], force: bool = False) -> bool:
    """Write ``splits_final.json`` into ``preprocessed_dir`` unless it exists (``force`` overwrites). True if written."""
    path = Path(preprocessed_dir) / "splits_final.json"
    if path.exists() and not force:
        return False
    atomic_write_json(path, splits)
    return True


def splits_cases(splits: Sequence[Mapping[str, Sequence[str]]]) -> set:
    """Every case id named in an nnU-Net split list (train and val of all folds)."""
    return {c for fold in splits for part in ("train", "val") for c in fold[part]}


@dataclass(frozen=True)
class SplitsOutcome:
    """What :func:`update_splits` did: ``written``, ``rewritten``, ``kept``, ``none`` (too few patients) or
    ``stale`` (an existing file that does not match the cases and may not be replaced: ``message`` says what to
    do; the run must fail)."""
    status: str
    message: Optional[str] = None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def update_splits(preprocessed_dir: PathLike, private_dir: PathLike, case_groups: Mapping[str, str],
                  n_folds: int = 5, force: bool = False) -> SplitsOutcome:
    """Make ``splits_final.json`` list exactly the training cases ``case_groups`` (case -> patient group).

    An existing file that lists exactly these cases is kept (``force`` rewrites it). One that differs is rewritten
    when this tool wrote it (its SHA-256 is kept in ``private_dir/splits_written.json``) or with ``force``; a file
    written or edited by someone else is left alone and reported ``stale``.
    """
    path = Path(preprocessed_dir) / "splits_final.json"
    state_path = Path(private_dir) / "splits_written.json"
    present = set(case_groups)
    listed: Optional[set] = None
    existed = path.is_file()
    if existed:
        try:
            listed = splits_cases(read_json(path))
        except (OSError, ValueError, TypeError, KeyError):
            listed = None
        if listed == present and not force:
            return SplitsOutcome("kept", f"{path} exists and lists the {len(present)} training cases: kept "
                                         "(--force rewrites it)")
        try:
            ours = read_json(state_path).get("sha256") == _sha256(path)
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours and not force:
            diff = ("does not parse" if listed is None else
                    f"lists {len(listed - present)} case(s) not in the dataset and misses {len(present - listed)} "
                    f"training case(s) (e.g. {', '.join(sorted(listed ^ present)[:3])})")
            return SplitsOutcome("stale", f"{path} {diff} and was not written by this tool: rerun with --force to "
                                          "regenerate it from the cases present, or edit or delete it")
    if len(set(case_groups.values())) < 2:
        if not existed:
            return SplitsOutcome("none", "fewer than 2 labelled patients: no splits_final.json written")
        return SplitsOutcome("stale", f"{path} does not match the cases and fewer than 2 labelled patients remain: "
                                      "delete it (nnU-Net needs at least 2 patients to split)")
    splits = patient_grouped_splits(case_groups, n_folds=n_folds)
    atomic_write_json(path, splits)
    atomic_write_json(state_path, {"sha256": _sha256(path)})
    if not existed:
        return SplitsOutcome("written")
    if listed is None or listed == present:
        return SplitsOutcome("rewritten", f"{path} rewritten")
    return SplitsOutcome("rewritten", f"{path} rewritten: {len(present - listed)} training case(s) added, "
                                      f"{len(listed - present)} removed; folds trained before used other splits")


@dataclass
class CaseRegistry:
    """Private, stable assignment of case ids ``{prefix}_{NNNN}`` and patient groups ``G{NNNN}``.

    Stored as ``case_mapping.json`` in the private folder: ``{"salt", "prefix", "cases": {case_id: {"patient",
    "study"}}, "groups": {patient: group}}``. New studies get the next free numbers in the order of
    ``sha256(salt + patient + study)``, so ids never encode the PatientID and re-runs give the same ids. The salt
    of a new registry is a hash of every (patient, study) of its first cohort: secret as they are, and the same
    for the same cohort, so converting one cohort into a fresh folder always gives the same ids.
    """
    path: Path
    prefix: str
    salt: str
    cases: Dict[str, Dict[str, str]]
    groups: Dict[str, str]

    @classmethod
    def load(cls, private_dir: PathLike, prefix: str) -> "CaseRegistry":
        if not _PREFIX_RE.match(prefix or ""):
            raise DatasetError(f"case id prefix {prefix!r} must start with a letter and hold only letters and digits")
        path = Path(private_dir) / MAPPING_NAME
        if path.is_file():
            data = read_json(path)
            if data.get("prefix") != prefix:
                raise DatasetError(f"{path} was written for prefix {data.get('prefix')!r}, not {prefix!r}: use the "
                                   "same dataset name/prefix or another --private-dir")
            return cls(path, prefix, data["salt"], dict(data["cases"]), dict(data["groups"]))
        return cls(path, prefix, "", {}, {})  # the salt is derived from the first cohort (assign)

    def _hash(self, *parts: str) -> str:
        return hashlib.sha256("\x00".join((self.salt,) + parts).encode("utf-8")).hexdigest()

    def assign(self, keys: Iterable[Tuple[str, str]]) -> Dict[Tuple[str, str], str]:
        """Case ids for (patient, study) keys; unseen keys get new numbers. Call :meth:`save` afterwards."""
        keys = list(dict.fromkeys(keys))
        if not self.salt:
            # a new registry: the salt is a hash of the whole cohort's identities (secret like them, never
            # derivable without all of them), so one cohort gets the same ids in any fresh folder, whatever -j,
            # index or completion order; once saved, the salt is reused for patients added later
            text = "\x00".join(sorted(f"{p}\x01{s}" for p, s in keys))
            self.salt = hashlib.sha256(("clips-nnunet case ids\x00" + text).encode("utf-8")).hexdigest()[:32]
        known = {(v["patient"], v["study"]): k for k, v in self.cases.items()}
        used = [int(k.rsplit("_", 1)[1]) for k in self.cases]
        next_number = max(used, default=0) + 1
        for key in sorted((k for k in keys if k not in known), key=lambda k: self._hash(*k)):
            case_id = f"{self.prefix}_{next_number:04d}"
            next_number += 1
            self.cases[case_id] = {"patient": key[0], "study": key[1]}
            known[key] = case_id
        patients = sorted({k[0] for k in keys if k[0] not in self.groups}, key=lambda p: self._hash(p))
        next_group = len(self.groups) + 1
        for p in patients:
            self.groups[p] = f"G{next_group:04d}"
            next_group += 1
        return {k: known[k] for k in keys}

    def group_of_case(self, case_id: str) -> str:
        return self.groups[self.cases[case_id]["patient"]]

    def save(self) -> None:
        atomic_write_json(self.path, {"salt": self.salt, "prefix": self.prefix, "cases": self.cases,
                                      "groups": self.groups})


def default_private_dir(raw_root: PathLike, folder_name: str) -> Path:
    """Default private folder: ``<parent of nnUNet_raw>/clips_private/<DatasetXXX_Name>`` (outside nnUNet_raw)."""
    return Path(raw_root).resolve().parent / "clips_private" / folder_name


def check_private_dir(private_dir: PathLike, raw_root: PathLike) -> Path:
    """Refuse a private folder inside nnUNet_raw (the mapping would travel with the dataset)."""
    p, raw = Path(private_dir).resolve(), Path(raw_root).resolve()
    if p == raw or raw in p.parents:
        raise DatasetError(f"--private-dir {private_dir} is inside nnUNet_raw ({raw_root}); the patient mapping must "
                           "not travel with the dataset: choose a folder outside nnUNet_raw")
    return p


def scrub(text: str, secrets_: Sequence[str]) -> str:
    """Replace each non-empty string of ``secrets_`` (longest first) in ``text`` by ``<redacted>``."""
    for s in sorted({s for s in secrets_ if s and len(s) >= 3}, key=len, reverse=True):
        text = text.replace(s, "<redacted>")
    return text
