"""Index a DICOM folder of any layout: patient -> study -> series, from headers only.

Every file below ``root`` is opened with ``pydicom.dcmread(stop_before_pixels=True)``; pixel data are never read
here. Files that are not DICOM (no ``DICM`` preamble) are counted and skipped; DICOM files whose header cannot be
parsed, or that lack the UIDs needed to group them, are listed in :attr:`DicomIndex.unreadable` with the reason.

The resulting :class:`DicomIndex` is what :func:`clips_nnunet.dataset_conversion.select.select_studies` chooses the
CT, PET and mask series from. ``SeriesInfo.patient_key`` is the DICOM PatientID: it is private, used for grouping
only, and must never be written to any output (file name, JSON, NIfTI header, log).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError

from clips_nnunet.io_utils import PathLike

from .workers import process_pool

from .read import GEOMETRY_TAGS

__all__ = ["SeriesInfo", "DicomIndex", "index_dicom_folder", "read_header_record", "read_chunk", "slice_position"]

#: Header attributes kept in :attr:`SeriesInfo.attributes` (from the first instance of the series) because series
#: selection, SUV conversion or the report need them.
SELECTION_ATTRIBUTES: Tuple[str, ...] = (
    "Units", "CorrectedImage", "SeriesType", "ImageType", "Manufacturer", "ManufacturerModelName",
    "DecayCorrection", "SeriesNumber", "SeriesDate", "SeriesTime", "StudyDate", "StudyTime", "AcquisitionDate",
    "AcquisitionTime", "SliceThickness", "Rows", "Columns", "PixelSpacing", "ImageOrientationPatient",
    "ConvolutionKernel", "NumberOfFrames", "ContentLabel", "StructureSetLabel", "SegmentationType",
)

#: SOP classes of DICOMDIR media directories (not images).
_MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
_DIRECTORY_RECORDS = 0x00041220  # DirectoryRecordSequence



@dataclass
class SeriesInfo:
    """Header summary of one DICOM series (all instances sharing a SeriesInstanceUID).

    ``files`` and ``sop_instance_uids`` are parallel lists in file-path order (not slice order; the reader sorts).
    ``attributes`` holds :data:`SELECTION_ATTRIBUTES` of the first instance (multi-valued ones as tuples) plus
    ``SliceExtent`` (min, max position along the slice normal in mm, image series only).
    ``referenced_series_uids`` / ``referenced_sop_uids`` are, for SEG and RTSTRUCT, the image series and instances
    the object was drawn on (empty for images).
    """

    series_uid: str
    study_uid: str
    patient_key: str
    modality: str
    sop_class_uid: str
    frame_of_reference_uid: str
    series_description: str
    image_type: Tuple[str, ...]
    files: List[Path]
    n_instances: int
    attributes: Dict[str, Any] = field(default_factory=dict)
    referenced_series_uids: Set[str] = field(default_factory=set)
    referenced_sop_uids: Set[str] = field(default_factory=set)
    sop_instance_uids: List[str] = field(default_factory=list)
    #: per file (parallel to ``files``): the geometry elements the series reader checks (see
    #: :data:`GEOMETRY_KEYWORDS`), so that a series needing nothing else (the CT) is not parsed a second time.
    slice_geometry: List[Optional[Dict[str, Any]]] = field(default_factory=list)

    def geometry_headers(self) -> Optional[List[Dict[str, Any]]]:
        """``slice_geometry`` as header-like objects for :func:`clips_nnunet.dataset_conversion.read.read_ct_with_headers`
        (``None`` when the index did not record them, e.g. for a non-image series)."""
        if len(self.slice_geometry) != len(self.files) or any(g is None for g in self.slice_geometry):
            return None
        from .read import HeaderValues

        series = {"SOPClassUID": self.sop_class_uid, "SeriesInstanceUID": self.series_uid,
                  "FrameOfReferenceUID": self.frame_of_reference_uid}
        return [HeaderValues({**g, **{k: v for k, v in series.items() if v}}, filename=str(f))
                for g, f in zip(self.slice_geometry, self.files)]


#: Header elements recorded per file in :attr:`SeriesInfo.slice_geometry` (the series reader's checks and the
#: SEG frame placement need them; values as plain Python: DS -> float, IS -> int, multi-valued -> tuple). The
#: series-level UIDs of :data:`.read.GEOMETRY_TAGS` are not repeated per file (memory for large cohorts):
#: :meth:`SeriesInfo.geometry_headers` adds them from the series.
_SERIES_LEVEL = ("SOPClassUID", "SeriesInstanceUID", "FrameOfReferenceUID")
GEOMETRY_KEYWORDS: Tuple[str, ...] = tuple(k for k in GEOMETRY_TAGS if k not in _SERIES_LEVEL)


def _slice_geometry(values: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """:data:`GEOMETRY_KEYWORDS` of one file's plain values (:func:`plain_values`); None for a non-image file."""
    if values.get("ImagePositionPatient") is None:
        return None
    return {k: values[k] for k in GEOMETRY_KEYWORDS if values.get(k) is not None}


@dataclass
class DicomIndex:
    """Result of :func:`index_dicom_folder`.

    ``patients`` maps the private PatientID to ``{study_uid: [SeriesInfo, ...]}`` (series sorted by SeriesNumber,
    then UID). ``unreadable`` lists ``(path, reason)`` for DICOM-looking files that could not be used.
    ``n_non_dicom`` counts files without a DICOM preamble (skipped silently: README, .DS_Store, NIfTI, ...).
    """

    patients: Dict[str, Dict[str, List[SeriesInfo]]]
    unreadable: List[Tuple[Path, str]]
    n_non_dicom: int

    @property
    def n_series(self) -> int:
        return sum(len(s) for st in self.patients.values() for s in st.values())


#: The elements of every file that the index reads (:func:`read_header_record`), besides PatientID and
#: SeriesDescription (text whose decoding depends on the character set: pydicom decodes those).
_RECORD_KEYWORDS: Tuple[str, ...] = tuple(dict.fromkeys((
    "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SOPInstanceUID", "FrameOfReferenceUID",
    "ImageType") + GEOMETRY_KEYWORDS))
#: Value representations decoded from the raw bytes by :func:`_decode_raw` (ASCII by the standard, PS3.5 6.2).
_RAW_VRS = frozenset({"UI", "CS", "DS", "IS", "US"})
_NOT_DECODED = object()


def _decode_raw(elem: RawDataElement, vr: str) -> Any:
    """The value of a not yet converted element as :func:`_as_tuple` gives it for pydicom's conversion (one value
    plain, several a tuple), decoded straight from its bytes; :data:`_NOT_DECODED` for anything unusual (empty,
    non-ASCII, a number pydicom would read differently), which the caller hands to pydicom instead."""
    raw = elem.value
    if not raw or (elem.VR is not None and elem.VR != vr):
        return _NOT_DECODED
    try:
        if vr == "US":
            if len(raw) != 2:
                return _NOT_DECODED
            return int.from_bytes(raw, "little" if elem.is_little_endian else "big")
        items = raw.decode("ascii").rstrip(" \x00").split("\\")
        if vr == "DS":
            values: List[Any] = [float(v) for v in items]
            if not all(np.isfinite(values)):
                return _NOT_DECODED
        elif vr == "IS":
            values = [int(v) for v in items]
        else:  # UI, CS: pydicom strips trailing spaces and NULs only
            values = items
    except (UnicodeDecodeError, ValueError):
        return _NOT_DECODED
    return values[0] if len(values) == 1 else tuple(values)


_TAG_AND_VR: Dict[str, Tuple[int, str]] = {k: (int(tag_for_keyword(k)), dictionary_VR(tag_for_keyword(k)))
                                           for k in _RECORD_KEYWORDS}


def plain_values(ds: pydicom.Dataset, keywords: Sequence[str] = _RECORD_KEYWORDS) -> Dict[str, Any]:
    """``{keyword: value}`` of the elements present in ``ds``, as plain Python (:func:`_as_tuple`: DS -> float,
    IS/US -> int, several values -> tuple). The common case (ASCII UI/CS/DS/IS values, US numbers) is decoded
    from the element's bytes, about ten times cheaper than pydicom's conversion with its value objects and
    checks; every other element, and every value that is not well formed, goes through pydicom and gives the
    same result as before."""
    out: Dict[str, Any] = {}
    for k in keywords:
        tag, vr = _TAG_AND_VR.get(k) or (int(tag_for_keyword(k)), dictionary_VR(tag_for_keyword(k)))
        elem = ds.get_item(tag)
        if elem is None:
            continue
        value = _decode_raw(elem, vr) if isinstance(elem, RawDataElement) and vr in _RAW_VRS else _NOT_DECODED
        if value is _NOT_DECODED:
            value = _as_tuple(ds.get(k))
        if value is not None:
            out[k] = value
    return out


def _as_tuple(value: Any) -> Any:
    """pydicom MultiValue / DS / IS -> plain Python (tuples of str/float) so records pickle and compare."""
    if value is None:
        return None
    if isinstance(value, (pydicom.multival.MultiValue, list, tuple)):
        return tuple(_as_plain(v) for v in value)
    return _as_plain(value)


def _as_plain(v: Any) -> Any:
    if isinstance(v, (pydicom.valuerep.DSfloat, pydicom.valuerep.DSdecimal)):
        return float(v)
    if isinstance(v, pydicom.valuerep.IS):
        return int(v)
    if isinstance(v, (int, float)):
        return v
    return str(v)


def slice_position(ds: Any) -> Optional[float]:
    """Position of an image slice along its normal (mm), from ImagePositionPatient and ImageOrientationPatient
    (``ds``: a pydicom header or the dict of :func:`plain_values`)."""
    ipp = ds.get("ImagePositionPatient")
    iop = ds.get("ImageOrientationPatient")
    if ipp is None or iop is None or isinstance(ipp, str) or isinstance(iop, str):
        return None
    try:
        if len(ipp) != 3 or len(iop) != 6:
            return None
    except TypeError:  # a single number
        return None
    r0, r1, r2, c0, c1, c2 = (float(x) for x in iop)
    normal = (r1 * c2 - r2 * c1, r2 * c0 - r0 * c2, r0 * c1 - r1 * c0)  # row x column
    return float(sum(n * float(x) for n, x in zip(normal, ipp)))


def _references(ds: pydicom.Dataset) -> Tuple[Set[str], Set[str]]:
    """Image series / instances referenced by a SEG (ReferencedSeriesSequence) or RTSTRUCT (frame-of-reference
    tree and contour image sequences)."""
    series: Set[str] = set()
    sops: Set[str] = set()
    for item in ds.get("ReferencedSeriesSequence", []) or []:
        if "SeriesInstanceUID" in item:
            series.add(str(item.SeriesInstanceUID))
        for inst in item.get("ReferencedInstanceSequence", []) or []:
            if "ReferencedSOPInstanceUID" in inst:
                sops.add(str(inst.ReferencedSOPInstanceUID))
    for rfor in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        for study in rfor.get("RTReferencedStudySequence", []) or []:
            for ser in study.get("RTReferencedSeriesSequence", []) or []:
                if "SeriesInstanceUID" in ser:
                    series.add(str(ser.SeriesInstanceUID))
                for img in ser.get("ContourImageSequence", []) or []:
                    if "ReferencedSOPInstanceUID" in img:
                        sops.add(str(img.ReferencedSOPInstanceUID))
    for roi in ds.get("ROIContourSequence", []) or []:
        for contour in roi.get("ContourSequence", []) or []:
            for img in contour.get("ContourImageSequence", []) or []:
                if "ReferencedSOPInstanceUID" in img:
                    sops.add(str(img.ReferencedSOPInstanceUID))
    return series, sops


def _frame_of_reference(ds: pydicom.Dataset) -> str:
    if "FrameOfReferenceUID" in ds:
        return str(ds.FrameOfReferenceUID)
    for rfor in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        if "FrameOfReferenceUID" in rfor:
            return str(rfor.FrameOfReferenceUID)
    for roi in ds.get("StructureSetROISequence", []) or []:
        if "ReferencedFrameOfReferenceUID" in roi:
            return str(roi.ReferencedFrameOfReferenceUID)
    return ""


def _read_without_preamble(path: Path) -> Optional[pydicom.Dataset]:
    """Old DICOM files without the 128-byte preamble and ``DICM``: accepted when the first bytes are a group 0x0002
    or 0x0008 tag (little endian) and the header then parses with the grouping UIDs; else None (not DICOM)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if len(head) < 4 or head[:2] not in (b"\x02\x00", b"\x08\x00"):
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
        return ds if ds.get("SeriesInstanceUID") and ds.get("Modality") else None
    except Exception:
        return None


def read_header_record(path: PathLike, attributes: bool = True) -> Tuple[str, Any]:
    """Read one file's header. Returns ``("ok", record)``, ``("non_dicom", None)`` or ``("unreadable", reason)``.

    ``record`` is a plain, picklable dict (so that worker processes can return it). ``attributes=False`` leaves
    out :data:`SELECTION_ATTRIBUTES` (an empty dict): a series keeps those of its first file only, so the index
    decodes them once per series (:func:`index_dicom_folder`), not once per file (about a third of its time).
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():  # invalid values are reported by the checks below, not as warnings
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except InvalidDicomError:
        ds = _read_without_preamble(path)
        if ds is None:
            return "non_dicom", None
    except Exception as exc:  # truncated or corrupted header: pydicom raises many different types
        return "unreadable", f"header cannot be parsed ({type(exc).__name__}: {exc}); re-export the file"
    try:
        v = plain_values(ds)  # each element decoded once
        v["PatientID"] = ds.get("PatientID")  # text in the file's character set: pydicom decodes it
        sop_class = str(v.get("SOPClassUID", "") or getattr(ds.get("file_meta", None), "MediaStorageSOPClassUID", ""))
        if sop_class == _MEDIA_DIRECTORY or _DIRECTORY_RECORDS in ds:
            return "non_dicom", None
        missing = [k for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality") if not v.get(k)]
        if missing:
            return "unreadable", f"DICOM header lacks {', '.join(missing)}; cannot group this file into a series; re-export it"
        values = ((k, ds.get(k)) for k in (SELECTION_ATTRIBUTES if attributes else ()))  # each decoded once
        attrs = {k: _as_tuple(x) for k, x in values if x is not None}
        ref_series, ref_sops = _references(ds)
        image_type = v.get("ImageType") or ()
        record = {
            "path": str(path),
            "patient_key": str(v["PatientID"]),
            "study_uid": str(v["StudyInstanceUID"]),
            "series_uid": str(v["SeriesInstanceUID"]),
            "modality": str(v["Modality"]).upper(),
            "sop_class_uid": sop_class,
            "sop_instance_uid": str(v.get("SOPInstanceUID", "")),
            "frame_of_reference_uid": (str(v["FrameOfReferenceUID"]) if "FrameOfReferenceUID" in v
                                       else _frame_of_reference(ds)),
            "series_description": str(ds.get("SeriesDescription", "") or ""),
            "image_type": (str(image_type).upper(),) if isinstance(image_type, str) else tuple(
                str(x).upper() for x in image_type),
            "attributes": attrs,
            "position": slice_position(v),
            "referenced_series_uids": sorted(ref_series),
            "referenced_sop_uids": sorted(ref_sops),
            "geometry": _slice_geometry(v),
        }
        return "ok", record
    except Exception as exc:
        return "unreadable", f"header values cannot be interpreted ({type(exc).__name__}: {exc})"


def read_chunk(paths: Sequence[str]) -> List[Tuple[str, str, Any]]:
    """``(path, status, record or reason)`` of each file (:func:`read_header_record` without the selection
    attributes, which :func:`index_dicom_folder` adds per series)."""
    return [(p, *read_header_record(p, attributes=False)) for p in paths]


def _add_series_attributes(records: List[Dict[str, Any]]) -> None:
    """Give the first file (by path, as :func:`_group` orders them) of each series its selection attributes."""
    first: Dict[Tuple[str, str, str], Dict[str, Any]] = {}
    for r in records:
        key = (r["patient_key"], r["study_uid"], r["series_uid"])
        if key not in first or r["path"] < first[key]["path"]:
            first[key] = r
    for r in first.values():
        status, payload = read_header_record(r["path"], attributes=True)
        if status == "ok":
            r["attributes"] = payload["attributes"]


def _iter_files(root: Path) -> List[Path]:
    files: List[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            files.append(Path(dirpath) / name)
    return files


def _group(records: Iterable[Dict[str, Any]]) -> Dict[str, Dict[str, List[SeriesInfo]]]:
    by_series: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
    for r in records:
        by_series.setdefault((r["patient_key"], r["study_uid"], r["series_uid"]), []).append(r)
    patients: Dict[str, Dict[str, List[SeriesInfo]]] = {}
    for (pkey, study, series), recs in by_series.items():
        recs.sort(key=lambda r: r["path"])
        # the same SOP instance copied twice (e.g. two exports) counts once
        seen: Set[str] = set()
        unique = []
        for r in recs:
            uid = r["sop_instance_uid"] or r["path"]
            if uid in seen:
                continue
            seen.add(uid)
            unique.append(r)
        first = unique[0]
        attrs = dict(first["attributes"])
        positions = [r["position"] for r in unique if r["position"] is not None]
        if positions:
            attrs["SliceExtent"] = (min(positions), max(positions))
        ref_series: Set[str] = set()
        ref_sops: Set[str] = set()
        for r in unique:
            ref_series.update(r["referenced_series_uids"])
            ref_sops.update(r["referenced_sop_uids"])
        info = SeriesInfo(
            series_uid=series, study_uid=study, patient_key=pkey, modality=first["modality"],
            sop_class_uid=first["sop_class_uid"], frame_of_reference_uid=first["frame_of_reference_uid"],
            series_description=first["series_description"], image_type=tuple(first["image_type"]),
            files=[Path(r["path"]) for r in unique], n_instances=len(unique), attributes=attrs,
            referenced_series_uids=ref_series, referenced_sop_uids=ref_sops,
            sop_instance_uids=[r["sop_instance_uid"] for r in unique],
            slice_geometry=[r.get("geometry") for r in unique])
        patients.setdefault(pkey, {}).setdefault(study, []).append(info)
    for studies in patients.values():
        for lst in studies.values():
            lst.sort(key=lambda s: (series_number(s), s.series_uid))
    return patients


def series_number(s: SeriesInfo) -> int:
    """The series' SeriesNumber (10**9 when missing or not a number): the one rule used to order series."""
    try:
        return int(s.attributes.get("SeriesNumber"))
    except (TypeError, ValueError):
        return 10 ** 9


def _chunks(files: Sequence[Path], parts: int) -> List[List[str]]:
    """``files`` as about ``parts`` consecutive lists of paths of at least 16 files (the units of parallel reading)."""
    size = max(16, len(files) // parts)
    return [[str(p) for p in files[i:i + size]] for i in range(0, len(files), size)]


def index_dicom_folder(root: PathLike, progress: bool = True, workers: int = 1,
                       map_chunks: Optional[Callable[[List[List[str]]], Iterable[List[Tuple[str, str, Any]]]]] = None
                       ) -> DicomIndex:
    """Index every DICOM file below ``root`` (any folder layout; symbolic links followed).

    Headers only (``stop_before_pixels``). ``workers > 1`` reads headers in that many processes (useful on network
    storage). ``map_chunks``: the caller's own workers instead (e.g. ``predict``'s worker processes): called with
    the lists of file paths, it returns :func:`read_chunk` of each, in order. Raises ``FileNotFoundError`` when
    ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"DICOM folder {root} does not exist or is not a folder; pass the cohort's root folder")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    files = _iter_files(root)
    from tqdm.auto import tqdm

    results: List[Tuple[str, str, Any]] = []
    bar = tqdm(total=len(files), desc="indexing DICOM headers", unit="file", disable=not progress)
    if map_chunks is not None and len(files) >= 64:
        for part in map_chunks(_chunks(files, workers * 4)):
            results.extend(part)
            bar.update(len(part))
    elif workers == 1 or len(files) < 64:
        for p in files:
            results.append((str(p), *read_header_record(p, attributes=False)))
            bar.update(1)
    else:
        with process_pool(workers) as pool:  # workers end with this process; Ctrl-C stops them at once
            for part in pool.map(read_chunk, _chunks(files, workers * 8)):
                results.extend(part)
                bar.update(len(part))
    bar.close()
    records = []
    unreadable: List[Tuple[Path, str]] = []
    n_non_dicom = 0
    for path, status, payload in results:
        if status == "ok":
            records.append(payload)
        elif status == "non_dicom":
            n_non_dicom += 1
        else:
            unreadable.append((Path(path), payload))
    _add_series_attributes(records)
    return DicomIndex(patients=_group(records), unreadable=unreadable, n_non_dicom=n_non_dicom)
