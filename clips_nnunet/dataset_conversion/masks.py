"""Lesion masks from RTSTRUCT, DICOM SEG and NIfTI/NRRD files, on a given image grid (one label: 1).

* :func:`rasterise_rtstruct`: closed planar contours (world mm) are mapped to continuous voxel indices of the
  reference grid and filled slice by slice with the even-odd rule: within one ROI, the contours of a slice are
  XOR-combined, so a contour inside another is a hole (how DICOM RT encodes holes, and what Eclipse, RayStation and
  3D Slicer display); different ROIs are then united. A pixel is inside when its centre is inside the polygon.
* :func:`read_seg_mask`: DICOM SEG read with pydicom (highdicom for compressed pixel data); each frame is placed on the slice of the source instance it
  references (``SourceImageSequence``), segments selected by label are united, FRACTIONAL segments thresholded at
  0.5. The SEG's references must point at the given series. Frames without ``SpatialLocationsPreserved`` (QIICR's
  dcmqi omits it) are accepted only when their position matches the referenced instance's (within
  :data:`POSITION_TOLERANCE_MM`); every failure is a :class:`PatientError` that says why.
* :func:`mask_to_grid`: a mask on one grid (e.g. CT) to another (e.g. PET): the fraction of each target voxel
  occupied by the mask (box average over the target voxel, then linear interpolation) thresholded at 0.5; a
  connected lesion that would vanish entirely keeps the target voxel at its centroid (small lesions survive).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pydicom
import SimpleITK as sitk

from clips_nnunet.io_utils import PathLike, grid_difference, read_image

from ..errors import PatientError
from .read import describe_exception

__all__ = ["rtstruct_roi_names", "rasterise_rtstruct", "read_seg_mask", "seg_segment_labels", "read_mask_file",
           "mask_to_grid", "same_grid", "POSITION_TOLERANCE_MM"]


#: A contour whose points spread over more than twice this (in slices of the reference) is not parallel to them.
SLICE_TOLERANCE = 0.3
#: A SEG frame without SpatialLocationsPreserved is accepted when its ImagePositionPatient lies this close (mm) to
#: the instance it references (a frame on a neighbouring slice is a slice thickness, >= ~1 mm, away).
POSITION_TOLERANCE_MM = 0.1


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """True when two images are on one grid (:func:`clips_nnunet.io_utils.grid_difference`)."""
    return grid_difference(a, b) is None


def _read_dicom(path: PathLike, label: str, what: str) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(str(path))
    except Exception as exc:
        raise PatientError(label, f"the {what} file cannot be read ({describe_exception(exc, path)}); "
                                  f"re-export it") from exc


def rtstruct_roi_names(rtstruct_path: PathLike) -> List[str]:
    """Names of the ROIs (StructureSetROISequence ROIName) in an RTSTRUCT, in file order."""
    ds = pydicom.dcmread(str(rtstruct_path), stop_before_pixels=True)
    return [str(r.get("ROIName", "")) for r in ds.get("StructureSetROISequence", []) or []]


def _fill_polygon(rows: np.ndarray, cols: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    from skimage.draw import polygon

    out = np.zeros(shape, dtype=bool)
    rr, cc = polygon(rows, cols, shape=shape)
    out[rr, cc] = True
    return out


def rasterise_rtstruct(rtstruct_path: PathLike, reference: sitk.Image, roi_pattern: Optional[str] = None,
                       label: str = "") -> np.ndarray:
    """Rasterise the ROIs of an RTSTRUCT whose name matches ``roi_pattern`` on ``reference``'s grid.

    ``roi_pattern`` is a case-insensitive regular expression searched in each ROIName (``None``: every ROI).
    Returns a uint8 array (z, y, x) with 1 inside. Contours outside the grid are skipped. Raises
    :class:`PatientError` when the file cannot be read, no ROI matches (the message lists the ROI names), the frame
    geometry cannot hold the contours (a contour not parallel to the slices) or the structure set has no contours.
    """
    if not isinstance(reference, sitk.Image) or reference.GetDimension() != 3:
        raise TypeError("reference must be a 3-D SimpleITK image")
    ds = _read_dicom(rtstruct_path, label, "RTSTRUCT")
    if str(ds.get("Modality", "")).upper() != "RTSTRUCT":
        raise PatientError(label, f"the RTSTRUCT file is not an RTSTRUCT (Modality {ds.get('Modality')})")
    names: Dict[int, str] = {int(r.ROINumber): str(r.get("ROIName", "")) for r in
                             ds.get("StructureSetROISequence", []) or []}
    try:
        regex = re.compile(roi_pattern, re.IGNORECASE) if roi_pattern else None
    except re.error as exc:
        raise ValueError(f"roi_pattern {roi_pattern!r} is not a valid regular expression: {exc}") from None
    selected = {n for n, name in names.items() if regex is None or regex.search(name)}
    if not selected:
        raise PatientError(label, f"no ROI name matches --roi {roi_pattern!r}; ROIs in the RTSTRUCT: "
                                  f"{sorted(names.values())}. Adjust --roi")
    size = reference.GetSize()  # x, y, z
    shape_zyx = (size[2], size[1], size[0])
    out = np.zeros(shape_zyx, dtype=bool)
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    inv = np.linalg.inv(direction * np.asarray(reference.GetSpacing())[None, :])
    origin = np.asarray(reference.GetOrigin())
    n_contours = 0
    for roi in ds.get("ROIContourSequence", []) or []:
        if int(roi.get("ReferencedROINumber", -1)) not in selected:
            continue
        # contours grouped by their plane (world position along the slice normal, 0.01 mm); even-odd within a plane
        planes: Dict[float, List[np.ndarray]] = {}
        for contour in roi.get("ContourSequence", []) or []:
            if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")).upper() != "CLOSED_PLANAR":
                continue
            data = contour.get("ContourData")
            if isinstance(data, bytes):  # over 64 KiB, written as UN in explicit VR (PS3.5 6.2.2): DS text
                data = data.decode("ascii").strip(" \0").split("\\")
            if data is None or len(data) < 9:
                continue
            pts = np.asarray([float(v) for v in data], dtype=float).reshape(-1, 3)
            idx = (pts - origin) @ inv.T  # continuous index (x, y, z)
            if np.ptp(idx[:, 2]) > 2 * SLICE_TOLERANCE:
                raise PatientError(label, f"a contour of ROI {names.get(int(roi.ReferencedROINumber), '?')!r} is not "
                                          f"parallel to the image slices; rasterise it on the grid it was drawn on")
            n_contours += 1
            planes.setdefault(round(float(np.mean(idx[:, 2])), 3), []).append(idx)
        if not planes:
            continue
        zs = np.asarray(sorted(planes))
        # each plane stands for a slab as thick as the contour spacing (at least one slice of this grid): a grid
        # slice takes the nearest plane within half that thickness. Same grid: exactly the contoured slices;
        # contours drawn on a finer or coarser grid (CT contours on the PET grid) are neither XOR-ed together
        # nor leave gaps between contour planes.
        half = max(0.5, 0.5 * float(np.median(np.diff(zs)))) if len(zs) > 1 else 0.5
        cache: Dict[float, np.ndarray] = {}
        for k in range(max(0, int(np.floor(zs[0] - half))), min(shape_zyx[0], int(np.ceil(zs[-1] + half)) + 1)):
            p = int(np.argmin(np.abs(zs - k)))
            if abs(zs[p] - k) > half + 1e-6:
                continue
            z = float(zs[p])
            if z not in cache:
                filled = np.zeros(shape_zyx[1:], dtype=bool)
                for idx in planes[z]:
                    filled ^= _fill_polygon(idx[:, 1], idx[:, 0], shape_zyx[1:])
                cache[z] = filled
            out[k] |= cache[z]
    if n_contours == 0:
        raise PatientError(label, f"the selected ROI(s) {sorted(names[n] for n in selected)} contain no closed "
                                  f"planar contours")
    return out.astype(np.uint8)


def seg_segment_labels(seg_path: PathLike) -> Dict[int, str]:
    """SegmentNumber -> SegmentLabel of a DICOM SEG."""
    ds = pydicom.dcmread(str(seg_path), stop_before_pixels=True)
    return {int(s.SegmentNumber): str(s.get("SegmentLabel", "")) for s in ds.get("SegmentSequence", []) or []}


def _seg_value(item: pydicom.Dataset, shared: Optional[pydicom.Dataset], sequence: str) -> Optional[pydicom.Dataset]:
    """First item of functional-group ``sequence`` of one frame (per-frame group first, then the shared one)."""
    for group in (item, shared):
        if group is not None and sequence in group and len(group[sequence].value):
            return group[sequence].value[0]
    return None


def _frame_sources(item: pydicom.Dataset, shared: Optional[pydicom.Dataset]) -> List[Tuple[str, Optional[str]]]:
    """(ReferencedSOPInstanceUID, SpatialLocationsPreserved or None) of every source image one frame names
    (DerivationImageSequence > SourceImageSequence, per-frame group first, then the shared one)."""
    for group in (item, shared):
        if group is None or "DerivationImageSequence" not in group:
            continue
        found = [(str(src.ReferencedSOPInstanceUID),
                  str(src.SpatialLocationsPreserved).upper() if src.get("SpatialLocationsPreserved") else None)
                 for derivation in group.DerivationImageSequence
                 for src in derivation.get("SourceImageSequence", []) or [] if "ReferencedSOPInstanceUID" in src]
        if found:
            return found
    return []


def _seg_orientation_problem(seg: pydicom.Dataset, reference: sitk.Image) -> Optional[str]:
    """Why the SEG's plane orientation / pixel spacing cannot lie on ``reference``'s slices (None when they can)."""
    shared = seg.SharedFunctionalGroupsSequence[0] if seg.get("SharedFunctionalGroupsSequence") else None
    orientation = _seg_value(shared, None, "PlaneOrientationSequence") if shared is not None else None
    if orientation is not None and "ImageOrientationPatient" in orientation:
        iop = np.asarray([float(v) for v in orientation.ImageOrientationPatient])
        direction = np.asarray(reference.GetDirection()).reshape(3, 3)
        if not np.allclose(iop, np.concatenate([direction[:, 0], direction[:, 1]]), atol=1e-3):
            return "its ImageOrientationPatient differs from the series' orientation"
    measures = _seg_value(shared, None, "PixelMeasuresSequence") if shared is not None else None
    if measures is not None and "PixelSpacing" in measures:
        row_col = [float(v) for v in measures.PixelSpacing]  # (between rows = y, between columns = x)
        if not np.allclose(row_col, reference.GetSpacing()[1::-1], rtol=1e-3, atol=1e-3):
            return f"its PixelSpacing {row_col} differs from the series' {list(reference.GetSpacing()[1::-1])}"
    return None


_SEG_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")  # SEG, Label Map SEG


class _UncompressedSeg:
    """What :func:`read_seg_mask` needs of a SEG with native (uncompressed) pixel data, read with pydicom alone:
    highdicom would load its copy of the DICOM standard (~0.8 s CPU per process) to read the same frames."""

    def __init__(self, ds: pydicom.Dataset):
        self._ds = ds
        self._frames: Optional[np.ndarray] = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ds, name)

    def __contains__(self, name: str) -> bool:
        return name in self._ds

    def get(self, name: str, default: Any = None) -> Any:
        return self._ds.get(name, default)

    def get_source_image_uids(self) -> List[Tuple[str, str, str]]:
        """(study, series, SOP instance) UIDs the SEG references (ReferencedSeriesSequence and every frame's
        SourceImageSequence)."""
        found = []
        for series in self._ds.get("ReferencedSeriesSequence", []) or []:
            for inst in series.get("ReferencedInstanceSequence", []) or []:
                found.append(("", str(series.get("SeriesInstanceUID", "")), str(inst.ReferencedSOPInstanceUID)))
        shared = self._ds.SharedFunctionalGroupsSequence[0] if self._ds.get("SharedFunctionalGroupsSequence") else None
        for item in self._ds.get("PerFrameFunctionalGroupsSequence", []) or []:
            found.extend(("", "", uid) for uid, _ in _frame_sources(item, shared))
        return found

    def get_stored_frame(self, number: int) -> np.ndarray:
        """Frame ``number`` (1-based) as stored: 0/1 for BINARY, the stored integers otherwise."""
        if self._frames is None:
            ds = self._ds
            rows, cols = int(ds.Rows), int(ds.Columns)
            n = int(ds.get("NumberOfFrames", 1) or 1)
            bits = int(ds.BitsAllocated)
            data = np.frombuffer(ds.PixelData, dtype=np.uint8)
            if bits == 1:  # frames are packed one after the other, not byte-aligned
                flat = np.unpackbits(data, bitorder="little")
            elif bits in (8, 16):
                flat = np.frombuffer(ds.PixelData, dtype=np.uint8 if bits == 8 else "<u2")
            else:
                raise ValueError(f"BitsAllocated {bits} is not a SEG pixel size")
            if flat.size < n * rows * cols:
                raise ValueError(f"PixelData holds {flat.size} values for {n} frames of {rows}x{cols}: the file is "
                                 "truncated")
            self._frames = flat[: n * rows * cols].reshape(n, rows, cols)
        return self._frames[number - 1]


def _read_seg(seg_path: PathLike) -> Any:
    """The SEG for :func:`read_seg_mask`: pydicom for native pixel data, highdicom for compressed ones."""
    ds = pydicom.dcmread(str(seg_path))
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in _SEG_SOP_CLASSES:
        raise ValueError(f"SOPClassUID {sop_class or 'missing'} is not a Segmentation Storage class")
    for keyword in ("Rows", "Columns", "SegmentationType", "SegmentSequence", "BitsAllocated"):
        if keyword not in ds:
            raise ValueError(f"the SEG has no {keyword}")
    if "PixelData" in ds and not ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ExplicitVRLittleEndian
                                                  ).is_compressed:
        return _UncompressedSeg(ds)
    import highdicom as hd
    return hd.seg.Segmentation.from_dataset(ds)


def read_seg_mask(seg_path: PathLike, reference: sitk.Image, reference_files: Sequence[PathLike], label: str = "",
                  segment_pattern: Optional[str] = None,
                  reference_headers: Optional[Sequence[pydicom.Dataset]] = None,
                  position_tolerance_mm: float = POSITION_TOLERANCE_MM) -> np.ndarray:
    """DICOM SEG -> uint8 mask (z, y, x) on ``reference``'s grid (the image series the SEG was drawn on).

    ``reference_files`` are that series' files (any order); each SEG frame goes to the slice of the source
    instance it references (DerivationImageSequence > SourceImageSequence). ``segment_pattern``
    (case-insensitive regex on SegmentLabel, ``None``: all segments) selects the segments that are united.
    FRACTIONAL segments are thresholded at 0.5; LABELMAP frames hold segment numbers.

    A frame whose source reference says ``SpatialLocationsPreserved`` YES is placed on the referenced slice.
    Writers that omit the attribute (QIICR's dcmqi, e.g. TCIA's QIN-HEADNECK SEGs) are accepted after a check: the
    frame's ImagePositionPatient (PlanePositionSequence) must lie within ``position_tolerance_mm`` of the
    referenced instance's, and the SEG's orientation and pixel spacing must be the series'. A frame that references
    no instance at all is placed by its position on ``reference``'s grid (within the same tolerance).

    Raises :class:`PatientError` (one line naming the problem) when the SEG cannot be read, references instances
    that are not in ``reference_files``, its frames do not match the reference's rows/columns, a frame says
    SpatialLocationsPreserved NO / REORIENTED_ONLY, or a frame's position contradicts its reference.
    ``reference_headers``: the already parsed headers of ``reference_files`` (any order; SOPInstanceUID and
    ImagePositionPatient are used), so that they are not parsed again; by default they are read from
    ``reference_files``.
    """
    try:
        seg = _read_seg(seg_path)
    except Exception as exc:
        raise PatientError(label, f"the SEG file cannot be read ({describe_exception(exc, seg_path)}); re-export it"
                           ) from exc
    size = reference.GetSize()
    if (int(seg.Rows), int(seg.Columns)) != (size[1], size[0]):
        raise PatientError(label, f"SEG frames are {seg.Rows}x{seg.Columns} but the reference series is "
                                  f"{size[1]}x{size[0]}; the SEG was drawn on another series")
    labels = {int(s.SegmentNumber): str(s.get("SegmentLabel", "")) for s in seg.SegmentSequence}
    regex = re.compile(segment_pattern, re.IGNORECASE) if segment_pattern else None
    numbers = sorted(n for n, name in labels.items() if regex is None or regex.search(name))
    if not numbers:
        raise PatientError(label, f"no SEG segment label matches {segment_pattern!r}; segments: "
                                  f"{sorted(labels.values())}")
    if reference_headers is None:
        reference_headers = [pydicom.dcmread(str(f), stop_before_pixels=True,
                                             specific_tags=["SOPInstanceUID", "ImagePositionPatient"])
                             for f in reference_files]
    elif len(reference_headers) != len(reference_files):
        raise ValueError(f"reference_headers has {len(reference_headers)} datasets for {len(reference_files)} "
                         "reference_files; pass the headers of exactly those files")
    # slice index and position of each reference instance, from its position on the reference grid
    uid_to_k: Dict[str, int] = {}
    uid_to_position: Dict[str, np.ndarray] = {}
    for h in reference_headers:
        position = np.asarray([float(v) for v in h.ImagePositionPatient])
        uid_to_k[str(h.SOPInstanceUID)] = int(round(reference.TransformPhysicalPointToContinuousIndex(position)[2]))
        uid_to_position[str(h.SOPInstanceUID)] = position
    source_uids = {uid for _, _, uid in seg.get_source_image_uids()}
    if source_uids and not source_uids & set(uid_to_k):
        raise PatientError(label, "the SEG does not reference any instance of the given image series; it was drawn on"
                                  " another series. Check the series pairing (or export the SEG on the chosen series)")
    try:
        return _place_seg_frames(seg, reference, uid_to_k, uid_to_position, numbers, position_tolerance_mm)
    except _SegFrameError as exc:
        raise PatientError(label, f"the SEG cannot be placed on the series: {exc}") from None
    except Exception as exc:  # pixel data a library cannot decode, malformed functional groups, ...
        raise PatientError(label, f"the SEG frames cannot be read ({describe_exception(exc, seg_path)}); "
                                  "re-export it") from exc


class _SegFrameError(Exception):
    """A SEG frame that cannot be placed on the reference series (the message says why)."""


def _place_seg_frames(seg: pydicom.Dataset, reference: sitk.Image, uid_to_k: Dict[str, int],
                      uid_to_position: Dict[str, np.ndarray], numbers: Sequence[int],
                      tolerance: float) -> np.ndarray:
    """The union of the selected segments' frames, each on its slice of ``reference`` (see :func:`read_seg_mask`)."""
    size = reference.GetSize()
    out = np.zeros((size[2], size[1], size[0]), dtype=np.uint8)
    seg_type = str(seg.SegmentationType).upper()
    max_fraction = float(seg.get("MaximumFractionalValue", 255) or 255)
    shared = seg.SharedFunctionalGroupsSequence[0] if seg.get("SharedFunctionalGroupsSequence") else None
    per_frame = seg.get("PerFrameFunctionalGroupsSequence") or []
    n_frames = int(seg.get("NumberOfFrames", 1) or 1)
    wanted = set(numbers)
    geometry_checked = False
    for i in range(n_frames):
        item = per_frame[i] if i < len(per_frame) else pydicom.Dataset()
        if seg_type != "LABELMAP":
            identification = _seg_value(item, shared, "SegmentIdentificationSequence")
            if identification is None or int(identification.ReferencedSegmentNumber) not in wanted:
                continue
        plane = _seg_value(item, shared, "PlanePositionSequence")
        position = (np.asarray([float(v) for v in plane.ImagePositionPatient])
                    if plane is not None and "ImagePositionPatient" in plane else None)
        sources = _frame_sources(item, shared)
        resolved = [(uid, preserved) for uid, preserved in sources if uid in uid_to_k]
        if sources and not resolved:
            raise _SegFrameError(f"frame {i + 1} references only instances that are not in the series")
        if resolved and resolved[0][1] == "YES":
            k = uid_to_k[resolved[0][0]]
        elif resolved and resolved[0][1] is not None:
            raise _SegFrameError(f"frame {i + 1} says SpatialLocationsPreserved {resolved[0][1]}: its pixels are not "
                                 "on the referenced slice; resample the SEG onto the series")
        else:  # no SpatialLocationsPreserved (dcmqi) or no reference: the frame's position decides
            if position is None:
                raise _SegFrameError(f"frame {i + 1} has neither SpatialLocationsPreserved nor a position "
                                     "(PlanePositionSequence); it cannot be placed")
            if not geometry_checked:
                problem = _seg_orientation_problem(seg, reference)
                if problem:
                    raise _SegFrameError(problem)
                geometry_checked = True
            if resolved:
                k = uid_to_k[resolved[0][0]]
                expected = uid_to_position[resolved[0][0]]
                where = "the instance it references"
            else:
                k = int(round(reference.TransformPhysicalPointToContinuousIndex(position.tolist())[2]))
                expected = np.asarray(reference.TransformIndexToPhysicalPoint([0, 0, k]))
                where = "the nearest slice of the series"
            distance = float(np.linalg.norm(position - expected))
            if distance > tolerance:
                raise _SegFrameError(f"frame {i + 1} lies {distance:.2f} mm from {where} (tolerance "
                                     f"{tolerance} mm) and has no SpatialLocationsPreserved; the SEG does not fit "
                                     "this series")
        if not 0 <= k < size[2]:
            continue
        stored = np.asarray(seg.get_stored_frame(i + 1))
        if seg_type == "LABELMAP":
            frame = np.isin(stored, list(wanted))
        elif seg_type == "FRACTIONAL":
            frame = stored.astype(np.float32) / max_fraction >= 0.5
        else:
            frame = stored > 0
        out[k] |= frame.astype(np.uint8)
    return out


def read_mask_file(path: PathLike, reference: sitk.Image) -> np.ndarray:
    """NIfTI / NRRD (anything SimpleITK reads) mask -> uint8 (z, y, x) on ``reference``'s grid; any label > 0 is 1.

    A mask on another grid is brought over with :func:`mask_to_grid`. Raises :class:`FileNotFoundError` /
    :class:`ValueError` for a missing or non-3-D file, :class:`~clips_nnunet.errors.DatasetError` for an
    incomplete or unreadable one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file {path} does not exist")
    img = read_image(path, what="mask file")  # complete (a truncated NIfTI is not read as zeros)
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"mask file {path.name} must be a 3-D single-channel image, got {img.GetDimension()}-D with "
                         f"{img.GetNumberOfComponentsPerPixel()} components")
    arr = (sitk.GetArrayFromImage(img) > 0).astype(np.uint8)
    if same_grid(img, reference):
        return arr
    return mask_to_grid(arr, img, reference)


def _box_size(source: sitk.Image, target: sitk.Image) -> List[int]:
    """Odd box width (source voxels, z y x) covering one target voxel along each source axis."""
    sd = np.asarray(source.GetDirection()).reshape(3, 3)
    td = np.asarray(target.GetDirection()).reshape(3, 3)
    ts = np.asarray(target.GetSpacing())
    extent = np.abs(td * ts[None, :]).sum(axis=1)  # world extent of one target voxel along x, y, z (world)
    along_source = np.abs(sd.T @ extent)  # approximately, along each source axis
    n = np.maximum(1, np.round(along_source / np.asarray(source.GetSpacing())).astype(int))
    n = n + (1 - n % 2)  # odd
    return [int(n[2]), int(n[1]), int(n[0])]


def mask_to_grid(mask: np.ndarray, source: sitk.Image, target: sitk.Image) -> np.ndarray:
    """Bring a binary mask (z, y, x on ``source``'s grid) to ``target``'s grid by occupancy >= 0.5.

    Occupancy is the box average of the mask over one target voxel, interpolated linearly at target voxel centres.
    Each connected lesion (26-connectivity) that would leave no voxel at all keeps the target voxel holding its
    centroid, so lesions smaller than half a target voxel are not lost (TMTV counts them). Returns uint8 (z, y, x).
    """
    mask = np.asarray(mask)
    size = source.GetSize()
    if mask.shape != (size[2], size[1], size[0]):
        raise ValueError(f"mask shape {mask.shape} does not match the source grid (z, y, x) "
                         f"{(size[2], size[1], size[0])}")
    tsize = target.GetSize()
    out = np.zeros((tsize[2], tsize[1], tsize[0]), dtype=np.uint8)
    binary = mask > 0
    if not binary.any():
        return out
    if same_grid(source, target):
        return binary.astype(np.uint8)
    from scipy import ndimage

    box = _box_size(source, target)
    # work on the bounding box of the mask plus a margin: lesion masks are sparse, whole-body CT grids are large
    nz = np.argwhere(binary)
    lo = np.maximum(nz.min(axis=0) - np.asarray(box), 0)
    hi = np.minimum(nz.max(axis=0) + np.asarray(box) + 1, binary.shape)
    crop = binary[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float32)
    occupancy = ndimage.uniform_filter(crop, size=box, mode="constant", cval=0.0)
    crop_img = sitk.GetImageFromArray(occupancy)
    crop_img.SetSpacing(source.GetSpacing())
    crop_img.SetDirection(source.GetDirection())
    crop_img.SetOrigin(source.TransformIndexToPhysicalPoint([int(lo[2]), int(lo[1]), int(lo[0])]))
    resampled = sitk.Resample(crop_img, target, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    out = (sitk.GetArrayFromImage(resampled) >= 0.5).astype(np.uint8)
    # rescue lesions that vanished
    labels, n = ndimage.label(binary, structure=np.ones((3, 3, 3), dtype=bool))
    if n:
        centroids = ndimage.center_of_mass(binary, labels, index=range(1, n + 1))
        slices = ndimage.find_objects(labels)
        for c, sl in zip(centroids, slices):
            corners = []
            for zz in (sl[0].start, sl[0].stop - 1):
                for yy in (sl[1].start, sl[1].stop - 1):
                    for xx in (sl[2].start, sl[2].stop - 1):
                        p = source.TransformIndexToPhysicalPoint([int(xx), int(yy), int(zz)])
                        corners.append(target.TransformPhysicalPointToContinuousIndex(p))
            corners = np.asarray(corners)
            blo = np.clip(np.floor(corners.min(axis=0) + 0.5).astype(int), 0, np.asarray(tsize) - 1)
            bhi = np.clip(np.floor(corners.max(axis=0) + 0.5).astype(int), 0, np.asarray(tsize) - 1)
            if out[blo[2]:bhi[2] + 1, blo[1]:bhi[1] + 1, blo[0]:bhi[0] + 1].any():
                continue
            p = source.TransformContinuousIndexToPhysicalPoint([float(c[2]), float(c[1]), float(c[0])])
            t = np.floor(np.asarray(target.TransformPhysicalPointToContinuousIndex(p)) + 0.5).astype(int)
            if np.all(t >= 0) and np.all(t < np.asarray(tsize)):
                out[t[2], t[1], t[0]] = 1
    return out
