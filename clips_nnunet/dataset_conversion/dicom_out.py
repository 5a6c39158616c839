"""Write a binary lesion mask as DICOM: a DICOM SEG (highdicom) or an RTSTRUCT (pydicom).

Both writers take the mask on the grid of a referenced image series (the "source series": ground-truth PET for the
synthetic cohort, the PET of a new patient for predictions) and reference that series' SOP instances, so viewers and
the converter's own readers (``clips_nnunet.dataset_conversion.masks``) map the mask back onto the same voxels.

Mask layout: ``mask[k, r, c]`` is slice ``k`` of the source series sorted by position along the slice normal
(ascending, i.e. the order SimpleITK's series reader uses), row ``r`` and column ``c`` of that slice's pixel data.

RTSTRUCT contours follow the DICOM convention that a point is inside a region when a ray from it crosses the
region's contours an odd number of times (even-odd rule). Each slice's region boundary is traced on the pixel-edge
mid-points (marching squares at level 0.5 on the zero-padded slice), which gives outer contours *and* the inner
contours of holes; filling them with the even-odd rule at the pixel centres reproduces the mask exactly.
"""
from __future__ import annotations

import datetime as _dt
import struct
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from clips_nnunet import __version__
from clips_nnunet.io_utils import PathLike, atomic_path

RTSTRUCT_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.481.3"
_TAG_CONTOUR_SEQUENCE = BaseTag(0x30060040)
DEFAULT_ALGORITHM = "clips-nnunet"
DEFAULT_MANUFACTURER = "clips-nnunet"

# Patient/study attributes copied from the source series so that the new object belongs to the same study.
_PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight", "PatientSize",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription",
)


# ----------------------------------------------------------------------------------------------------------------------
# geometry helpers
# ----------------------------------------------------------------------------------------------------------------------
def _slice_normal(ds: Dataset) -> np.ndarray:
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    return np.cross(iop[:3], iop[3:])


def sort_source_datasets(source_datasets: Sequence[Dataset]) -> List[Dataset]:
    """The source series' slices sorted by position along the slice normal (ascending).

    Raises ``ValueError`` naming what is missing when the datasets are not one single-frame image series.
    """
    if not source_datasets:
        raise ValueError("source_datasets is empty: pass the pydicom datasets of the image series the mask is drawn on")
    for i, ds in enumerate(source_datasets):
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
                        "SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            if keyword not in ds:
                raise ValueError(f"source dataset {i} lacks {keyword}: pass complete image datasets "
                                 "(read without stop_before_pixels is not needed, but geometry tags are)")
    series = {ds.SeriesInstanceUID for ds in source_datasets}
    if len(series) != 1:
        raise ValueError(f"source_datasets come from {len(series)} series; pass the slices of exactly one series")
    normal = _slice_normal(source_datasets[0])
    return sorted(source_datasets, key=lambda d: float(np.dot(normal, [float(v) for v in d.ImagePositionPatient])))


def _check_mask(mask: np.ndarray, sorted_ds: Sequence[Dataset]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3-D (slices, rows, columns), got shape {mask.shape}")
    expected = (len(sorted_ds), int(sorted_ds[0].Rows), int(sorted_ds[0].Columns))
    if mask.shape != expected:
        raise ValueError(f"mask shape {mask.shape} does not match the source series (slices, rows, columns) "
                         f"{expected}: resample the mask onto the source series grid first")
    return mask.astype(bool)


def _copy_patient_study(src: Dataset, dst: Dataset) -> None:
    for keyword in _PATIENT_STUDY_KEYWORDS:
        if keyword in src:
            setattr(dst, keyword, getattr(src, keyword))


#: Display colour of the lesion segment / ROI (red): RTSTRUCT ROIDisplayColor (RGB) and, converted to CIELab, the
#: SEG's RecommendedDisplayCIELabValue, so viewers show both objects alike.
LESION_COLOR_RGB = (255, 0, 0)


def new_series_number(source_datasets: Sequence[Dataset], offset: int = 0) -> int:
    """A SeriesNumber for a new derived series: 9000 + twice the tens of seconds of the day (so re-runs rarely
    repeat a number) + ``offset`` (0 for the SEG, 1 for the RTSTRUCT of one prediction), moved past the source
    series' own number. Series numbers are not identifiers in DICOM (the UIDs are), but viewers list series by
    number, and two results with one number are easy to confuse."""
    now = _dt.datetime.now()
    number = 9000 + ((now.hour * 3600 + now.minute * 60 + now.second) // 10) * 2 + int(offset)
    used = {int(d.SeriesNumber) for d in source_datasets if str(d.get("SeriesNumber", "")).strip().isdigit()}
    while number in used:
        number += 2
    return number


# ----------------------------------------------------------------------------------------------------------------------
# DICOM SEG
# ----------------------------------------------------------------------------------------------------------------------
def write_dicom_seg(mask: np.ndarray, source_datasets: Sequence[Dataset], output_path: PathLike,
                    segment_label: str = "lesion", algorithm_name: str = DEFAULT_ALGORITHM,
                    manufacturer: str = DEFAULT_MANUFACTURER, series_description: str = "Lesion segmentation",
                    series_number: Optional[int] = None, algorithm_type: str = "AUTOMATIC",
                    series_instance_uid: Optional[str] = None,
                    color: Tuple[int, int, int] = LESION_COLOR_RGB) -> Path:
    """Write ``mask`` (slices, rows, columns; non-zero = lesion) as a BINARY DICOM SEG with one segment.

    The SEG references every instance of the source series (highdicom builds the Referenced Series and the
    per-frame Source Image references), has the source's frame of reference and patient/study attributes, and
    omits empty frames. ``algorithm_type`` is ``"AUTOMATIC"`` (predictions) or ``"MANUAL"`` (expert ground
    truth); for ``"MANUAL"`` no algorithm identification is written, as the standard requires. The segment has a
    display colour (``color``, RGB, stored as CIELab), a TrackingID and a TrackingUID (new for every written
    object); ``series_number`` defaults to :func:`new_series_number` (900 for a MANUAL segmentation). Returns the
    path.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sorted_ds = sort_source_datasets(source_datasets)
    binary = _check_mask(mask, sorted_ds)
    algorithm_type = str(algorithm_type).upper()
    if algorithm_type not in ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"):
        raise ValueError(f"algorithm_type {algorithm_type!r} must be AUTOMATIC, SEMIAUTOMATIC or MANUAL")
    algorithm = None
    if algorithm_type != "MANUAL":
        algorithm = hd.AlgorithmIdentificationSequence(name=algorithm_name, family=codes.cid7162.ArtificialIntelligence,
                                                        version=__version__)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=segment_label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm if hasattr(codes.SCT, "Neoplasm") else codes.SCT.Lesion,
        algorithm_type=algorithm_type, algorithm_identification=algorithm,
        tracking_id=f"{segment_label} (all lesions)"[:64], tracking_uid=hd.UID(),
        display_color=hd.color.CIELabColor.from_rgb(*(int(v) for v in color)))
    if series_number is None:  # an expert's (synthetic ground truth) keeps the fixed number it always had
        series_number = 900 if algorithm_type == "MANUAL" else new_series_number(sorted_ds, 0)
    seg = hd.seg.Segmentation(
        source_images=sorted_ds, pixel_array=binary.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[description],
        series_instance_uid=series_instance_uid or hd.UID(), series_number=int(series_number),
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=manufacturer,
        manufacturer_model_name=algorithm_name, software_versions=__version__, device_serial_number="0",
        series_description=series_description, omit_empty_frames=True)
    output_path = Path(output_path)
    with atomic_path(output_path, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    return output_path


# ----------------------------------------------------------------------------------------------------------------------
# RTSTRUCT
# ----------------------------------------------------------------------------------------------------------------------
def slice_contours(mask_2d: np.ndarray) -> List[np.ndarray]:
    """Closed contours (each an (N, 2) array of (row, column) pixel coordinates) of a 2-D binary mask.

    Outer boundaries and hole boundaries are both returned; filling them with the even-odd rule at pixel centres
    gives back ``mask_2d``. Contours run through pixel-edge mid-points (marching squares at 0.5), so no pixel
    centre lies on a contour.
    """
    from skimage import measure

    padded = np.pad(np.asarray(mask_2d, dtype=np.float32), 1)
    contours = []
    for c in measure.find_contours(padded, 0.5):
        c = c - 1.0  # undo the padding
        if len(c) > 1 and np.abs(c[0] - c[-1]).max() < 1e-6:
            c = c[:-1]  # DICOM CLOSED_PLANAR contours are implicitly closed
        if len(c) >= 3:
            contours.append(c)
    return contours


def _pixel_to_patient_affine(ds: Dataset) -> Tuple[np.ndarray, np.ndarray]:
    """``(offset, matrix)`` mapping (row, column) pixel positions of slice ``ds`` to patient coordinates (mm):
    ``points = offset + rows_cols @ matrix``."""
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    row_dir, col_dir = iop[:3], iop[3:]  # row_dir: direction of increasing column index
    spacing_between_rows, spacing_between_cols = (float(v) for v in ds.PixelSpacing)
    ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
    return ipp, np.stack([spacing_between_rows * col_dir, spacing_between_cols * row_dir])


# Pre-encoded RTSTRUCT ContourSequence (explicit VR little endian, the transfer syntax write_rtstruct uses).
# pydicom creates and validates one element object per value and walks every item again when it writes; with the
# thousands of contours of a fragmented prediction that made write_rtstruct the slowest step of ``predict``. The
# ContourSequence is therefore encoded here, once, into the bytes pydicom itself would write (PS3.5 7.1.2 data
# elements, 7.5 items with defined lengths), and handed to pydicom as one raw element that it writes unchanged.
_ITEM_TAG = struct.pack("<HH", 0xFFFE, 0xE000)
_MAX_DS_COORDINATE = 1e10  # "%.4f" of anything smaller in magnitude fits DS's 16 characters


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element; ``value`` is padded to even length already.

    A value longer than the 16-bit length field of its VR (a ContourData of thousands of points) is written with VR
    UN and a 32-bit length, as PS3.5 6.2.2 prescribes and pydicom's own writer does (pydicom then reads it back as
    UN bytes; :func:`clips_nnunet.dataset_conversion.masks.rasterise_rtstruct` decodes them as DS).
    """
    if vr == b"SQ" or len(value) > 0xFFFF:
        return struct.pack("<HH2sHI", group, element, b"SQ" if vr == b"SQ" else b"UN", 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _item(value: bytes) -> bytes:
    return _ITEM_TAG + struct.pack("<I", len(value)) + value


def _pad(value: bytes, pad: bytes = b" ") -> bytes:
    """Pad to even length (PS3.5 6.2: NUL for UI, space for text and number strings)."""
    return value + pad if len(value) % 2 else value


def _encode_ds(values: np.ndarray) -> bytes:
    """Multi-valued DS: each value with at most 4 decimals, trailing zeros dropped (at most 16 characters each)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(values)) or np.abs(values).max(initial=0.0) >= _MAX_DS_COORDINATE:
        raise ValueError("contour coordinates must be finite and below 1e10 mm in magnitude to be written as DS; "
                         "check the source series' ImagePositionPatient and PixelSpacing")
    text = "\\".join([f"{v:.4f}".rstrip("0").rstrip(".") for v in values.tolist()])
    return _pad(text.encode("ascii"))


def _encode_contour_item(points: np.ndarray, image_ref: bytes, number: int) -> bytes:
    """One CLOSED_PLANAR ContourSequence item for ``points`` (N, 3, patient mm); ``image_ref`` is the encoded
    ContourImageSequence element referencing the slice. Elements in ascending tag order, as DICOM requires."""
    return _item(image_ref
                 + _element(0x3006, 0x0042, b"CS", b"CLOSED_PLANAR ")
                 + _element(0x3006, 0x0046, b"IS", _pad(str(len(points)).encode("ascii")))
                 + _element(0x3006, 0x0048, b"IS", _pad(str(number).encode("ascii")))
                 + _element(0x3006, 0x0050, b"DS", _encode_ds(points)))


def _encode_image_reference(sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """The ContourImageSequence element (one item: ReferencedSOPClassUID, ReferencedSOPInstanceUID)."""
    item = _item(_element(0x0008, 0x1150, b"UI", _pad(str(sop_class_uid).encode("ascii"), b"\0"))
                 + _element(0x0008, 0x1155, b"UI", _pad(str(sop_instance_uid).encode("ascii"), b"\0")))
    return _element(0x3006, 0x0016, b"SQ", item)


def _mark_explicit_little(ds: Dataset) -> None:
    """Mark ``ds`` as already in explicit VR little endian with its current character set, so that pydicom writes
    its raw elements unchanged (``Dataset.set_original_encoding``) instead of decoding them first."""
    charset = ds.get("SpecificCharacterSet")
    ds.set_original_encoding(False, True, convert_encodings(charset) if charset else default_encoding)


def write_rtstruct(mask: np.ndarray, source_datasets: Sequence[Dataset], output_path: PathLike,
                   roi_name: str = "lesion", manufacturer: str = DEFAULT_MANUFACTURER,
                   series_description: str = "Lesion contours", series_number: Optional[int] = None,
                   roi_generation_algorithm: str = "AUTOMATIC", color: Tuple[int, int, int] = LESION_COLOR_RGB,
                   series_instance_uid: Optional[str] = None) -> Path:
    """Write ``mask`` (slices, rows, columns) as an RTSTRUCT with one ROI named ``roi_name``.

    Every non-empty slice gets its outer and hole contours (CLOSED_PLANAR, points in patient mm computed from that
    slice's ImagePositionPatient, ImageOrientationPatient and PixelSpacing), each with a ContourImageSequence item
    referencing the slice's SOP instance. The Referenced Frame of Reference Sequence lists every source instance.
    ``roi_generation_algorithm`` is ``AUTOMATIC``, ``SEMIAUTOMATIC`` or ``MANUAL``. An empty mask gives an ROI
    without a ContourSequence (when present it needs at least one item). An automatic or semi-automatic result
    carries ApprovalStatus UNAPPROVED (Approval module: nobody has reviewed it); ``series_number`` defaults to
    :func:`new_series_number` (901 for MANUAL contours). Returns the path.

    The parts, in the order of the object: :func:`_rtstruct_header` (patient, study, series, structure set),
    :func:`_referenced_frame_of_reference` (every source instance), :func:`_structure_set_roi` and
    :func:`_roi_observation` (the one ROI), :func:`_roi_contour` (the contours, pre-encoded by
    :func:`_encoded_contour_sequence`), :func:`_save_explicit_little` (the file).
    """
    sorted_ds = sort_source_datasets(source_datasets)
    binary = _check_mask(mask, sorted_ds)
    roi_generation_algorithm = str(roi_generation_algorithm).upper()
    if roi_generation_algorithm not in ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"):
        raise ValueError(f"roi_generation_algorithm {roi_generation_algorithm!r} must be AUTOMATIC, "
                         "SEMIAUTOMATIC or MANUAL")
    if not roi_name or len(roi_name) > 64:
        raise ValueError(f"roi_name {roi_name!r} must be 1-64 characters (DICOM LO)")
    if series_number is None:
        series_number = 901 if roi_generation_algorithm == "MANUAL" else new_series_number(sorted_ds, 1)
    ref = sorted_ds[0]
    ds = _rtstruct_header(ref, roi_name, manufacturer, series_description, int(series_number), series_instance_uid)
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([_referenced_frame_of_reference(sorted_ds)])
    ds.StructureSetROISequence = DicomSequence([_structure_set_roi(ref, roi_name, roi_generation_algorithm)])
    ds.ROIContourSequence = DicomSequence([_roi_contour(_encoded_contour_sequence(binary, sorted_ds), color)])
    ds.RTROIObservationsSequence = DicomSequence([_roi_observation()])
    if roi_generation_algorithm != "MANUAL":
        ds.ApprovalStatus = "UNAPPROVED"  # Approval module (PS3.3 C.8.8.16): an AI result nobody has reviewed
    return _save_explicit_little(ds, Path(output_path))


def _rtstruct_header(ref: Dataset, roi_name: str, manufacturer: str, series_description: str,
                     series_number: int, series_instance_uid: Optional[str]) -> Dataset:
    """The RTSTRUCT's SOP, patient, study (copied from the source slice ``ref``), series, frame of reference,
    equipment and structure set attributes; a new SOP instance UID and, unless given, series instance UID."""
    now = _dt.datetime.now()
    ds = Dataset()
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS_UID
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    _copy_patient_study(ref, ds)
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = ref.FrameOfReferenceUID
    ds.Manufacturer = manufacturer
    ds.SoftwareVersions = __version__
    ds.StructureSetLabel = roi_name[:16]
    ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.StructureSetTime = now.strftime("%H%M%S")
    ds.SpecificCharacterSet = "ISO_IR 100"
    # Type 2 attributes of the RT Series and Frame of Reference modules (PS3.3 C.8.8.1, C.7.4.1): present, empty
    # when unknown. The position reference is the source series' (same frame of reference).
    ds.OperatorsName = ""
    ds.PositionReferenceIndicator = ref.get("PositionReferenceIndicator", "") or ""
    return ds


def _referenced_frame_of_reference(sorted_ds: Sequence[Dataset]) -> Dataset:
    """The Referenced Frame of Reference Sequence item: frame of reference -> study -> series -> Contour Image
    Sequence listing every source instance."""
    ref = sorted_ds[0]
    contour_images = []
    for src in sorted_ds:
        item = Dataset()
        item.ReferencedSOPClassUID = src.SOPClassUID
        item.ReferencedSOPInstanceUID = src.SOPInstanceUID
        contour_images.append(item)
    rt_series = Dataset()
    rt_series.SeriesInstanceUID = ref.SeriesInstanceUID
    rt_series.ContourImageSequence = DicomSequence(contour_images)
    rt_study = Dataset()
    rt_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired, customary)
    rt_study.ReferencedSOPInstanceUID = ref.StudyInstanceUID
    rt_study.RTReferencedSeriesSequence = DicomSequence([rt_series])
    frame = Dataset()
    frame.FrameOfReferenceUID = ref.FrameOfReferenceUID
    frame.RTReferencedStudySequence = DicomSequence([rt_study])
    return frame


def _structure_set_roi(ref: Dataset, roi_name: str, roi_generation_algorithm: str) -> Dataset:
    """The Structure Set ROI Sequence item of the one ROI (number 1)."""
    roi = Dataset()
    roi.ROINumber = 1
    roi.ReferencedFrameOfReferenceUID = ref.FrameOfReferenceUID
    roi.ROIName = roi_name
    roi.ROIGenerationAlgorithm = roi_generation_algorithm
    return roi


def _encoded_contour_sequence(binary: np.ndarray, sorted_ds: Sequence[Dataset]) -> bytes:
    """The ContourSequence's items, encoded (see the pre-encoding note above): the outer and hole contours of every
    non-empty slice in patient mm, numbered from 1; empty bytes for an empty mask."""
    items: List[bytes] = []
    for k, src in enumerate(sorted_ds):
        if not binary[k].any():
            continue
        image_ref = _encode_image_reference(src.SOPClassUID, src.SOPInstanceUID)
        to_patient = _pixel_to_patient_affine(src)
        for c in slice_contours(binary[k]):
            points = to_patient[0] + c @ to_patient[1]
            items.append(_encode_contour_item(points, image_ref, len(items) + 1))
    return b"".join(items)


def _roi_contour(contour_sequence: bytes, color: Tuple[int, int, int]) -> Dataset:
    """The ROI Contour Sequence item of ROI 1, holding ``contour_sequence`` as one raw element.

    An empty ``contour_sequence`` gives no ContourSequence at all (Type 3, but 1-n items when present)."""
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = 1
    roi_contour.ROIDisplayColor = [int(v) for v in color]
    if contour_sequence:
        roi_contour[_TAG_CONTOUR_SEQUENCE] = RawDataElement(_TAG_CONTOUR_SEQUENCE, "SQ", len(contour_sequence),
                                                            contour_sequence, 0, False, True)
    _mark_explicit_little(roi_contour)
    return roi_contour


def _roi_observation() -> Dataset:
    """The RT ROI Observations Sequence item of ROI 1 (interpreted type GTV, interpreter unknown)."""
    observation = Dataset()
    observation.ObservationNumber = 1
    observation.ReferencedROINumber = 1
    observation.RTROIInterpretedType = "GTV"
    observation.ROIInterpreter = ""
    return observation


def _save_explicit_little(ds: Dataset, output_path: Path) -> Path:
    """Write ``ds`` atomically as a DICOM file in explicit VR little endian, its raw elements unchanged."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    # written as is: pydicom must neither decode the raw ContourSequence nor walk it looking for ambiguous VRs
    _mark_explicit_little(ds)
    with atomic_path(output_path, suffix=".dcm") as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return output_path
