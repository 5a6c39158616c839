"""Read one DICOM image series into a float32 SimpleITK image, with the checks the scanners' quirks need.

Why not just ``sitk.ReadImage(files)``: SimpleITK (ITK's series reader) takes the pixel type from the first slice
and, unless float output is forced, truncates slices whose RescaleSlope/Intercept differ (PET series often have one
slope per slice); it also assumes the file order is the slice order and that slices are equally spaced.
:func:`read_series_volume` therefore

1. reads every header (``stop_before_pixels``; only the geometry elements for a CT, or none when the index's
   per-slice records are passed in) and checks that all slices share orientation, size and pixel spacing;
2. sorts slices by their position along the slice normal (``n = row x col`` of ImageOrientationPatient);
3. rejects gantry tilt (slice origins not moving along the normal, or GantryDetectorTilt != 0), duplicate
   positions, missing slices (a gap that is a multiple of the usual spacing) and irregular spacing, each with a
   :class:`PatientError` naming the patient label and what to do;
4. reads pixels with SimpleITK forced to float32, so every slice gets its own RescaleSlope/Intercept, and sets the
   geometry (origin of the first sorted slice, measured slice spacing, direction) from the headers.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pydicom
import SimpleITK as sitk

from clips_nnunet.io_utils import PathLike

from ..errors import PatientError

__all__ = ["describe_exception", "SeriesGeometry", "load_series_headers", "read_series_volume", "read_series_with_headers", "read_ct",
           "read_ct_with_headers", "GEOMETRY_TAGS", "HeaderValues",
           "resample_to_reference", "check_coverage"]


#: Relative tolerance of each gap between neighbouring slices against the median gap. Real whole-body PET has
#: small steps at bed-position boundaries (GE Discovery ST: 3.19 / 3.29 mm in a 3.27 mm series), so 1 % is too tight.
SPACING_RTOL = 0.1
#: Largest accepted distance of a slice from the uniform grid that replaces the positions, in units of the spacing.
GRID_RESIDUAL_TOL = 0.2
#: Largest accepted angle (degrees) between the slice normal and the line through the slice origins.
TILT_TOLERANCE_DEG = 0.1


def describe_exception(exc: BaseException, *paths: PathLike) -> str:
    """``Type: message`` of an exception with file paths removed (paths may hold patient names; reports must not)."""
    text = str(exc)
    for p in paths:
        for form in {str(p), str(Path(p).resolve()) if Path(p).exists() else str(p), Path(p).name}:
            if form:
                text = text.replace(form, "<file>")
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


@dataclass
class SeriesGeometry:
    """Geometry derived from the sorted headers (SimpleITK conventions: spacing x, y, z in mm)."""

    origin: Tuple[float, float, float]
    spacing: Tuple[float, float, float]
    direction: Tuple[float, ...]
    size: Tuple[int, int, int]


#: The header elements the series checks and :func:`read_ct` use (geometry, tilt, modality, instance UID): what
#: a CT read parses (``specific_tags``) instead of every element.
GEOMETRY_TAGS = ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns",
                 "GantryDetectorTilt", "Modality", "SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID",
                 "FrameOfReferenceUID")


class HeaderValues(dict):
    """Header values already read elsewhere (the index's :attr:`.index.SeriesInfo.slice_geometry`), usable where
    the series reader and the SEG reader use a pydicom header: ``h.get("Rows")``, ``h.Rows``, ``"Rows" in h``."""

    def __init__(self, values: Dict[str, Any], filename: str = "") -> None:
        super().__init__(values)
        self.filename = filename

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"header of {self.filename or 'a slice'} has no {name}") from None


_REQUIRED_TAGS = ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns")


def _parse_headers(files: List[Path], label: str, specific_tags: Optional[List[str]],
                   headers: Optional[Sequence[Any]]) -> List[Any]:
    """The files' headers: ``headers`` when given (one per file), else parsed (only ``specific_tags`` when given).
    Raises :class:`PatientError` naming the slice number for a header that cannot be read."""
    if headers is not None:
        if len(headers) != len(files):
            raise ValueError(f"{len(headers)} headers for {len(files)} files; pass one header per file")
        return list(headers)
    parsed = []
    for i, f in enumerate(files):
        try:
            with warnings.catch_warnings():  # invalid values surface through the checks below
                warnings.simplefilter("ignore")
                parsed.append(pydicom.dcmread(str(f), stop_before_pixels=True, specific_tags=specific_tags))
        except Exception as exc:
            raise PatientError(label, f"slice file #{i + 1} of {len(files)} cannot be read "
                                      f"({describe_exception(exc, f)}); re-export the series") from exc
    return parsed


def _check_same_frame(headers: List[Any], label: str) -> np.ndarray:
    """Every slice has the geometry tags and the first slice's orientation, size and pixel spacing; returns the
    ImageOrientationPatient (6 floats). Raises :class:`PatientError` naming the first slice that differs."""
    n = len(headers)
    ref = headers[0]
    for tag in _REQUIRED_TAGS:
        bad = [str(i + 1) for i, h in enumerate(headers) if h.get(tag) is None]
        if bad:
            raise PatientError(label, f"{len(bad)} of {n} slice files (e.g. #{', #'.join(bad[:3])}) lack "
                                      f"{tag}; cannot place them in space. Re-export the series with geometry tags")
    iop = np.asarray([float(x) for x in ref.ImageOrientationPatient], dtype=float)
    ref_iop, ref_ps = list(ref.ImageOrientationPatient), list(ref.PixelSpacing)
    ref_size = (int(ref.Rows), int(ref.Columns))
    for i, h in enumerate(headers):
        usual = list(h.ImageOrientationPatient) == ref_iop and list(h.PixelSpacing) == ref_ps
        if usual and (int(h.Rows), int(h.Columns)) == ref_size:
            continue  # the usual case, without float conversions
        if not np.allclose([float(x) for x in h.ImageOrientationPatient], iop, atol=1e-4):
            raise PatientError(label, f"slice file #{i + 1} has a different ImageOrientationPatient (0020,0037) than the "
                                      f"first slice; the series mixes orientations. Export one orientation only")
        if (int(h.Rows), int(h.Columns)) != ref_size:
            raise PatientError(label, f"slice file #{i + 1} has a different size (Rows/Columns) than the first slice")
        if not np.allclose([float(x) for x in h.PixelSpacing], [float(x) for x in ref.PixelSpacing], rtol=1e-4):
            raise PatientError(label, f"slice file #{i + 1} has a different PixelSpacing (0028,0030) than the first slice")
    return iop


def _check_tilt(ref: Any, label: str) -> None:
    """No gantry tilt declared: GantryDetectorTilt (of the first slice given) is absent or 0."""
    tilt = ref.get("GantryDetectorTilt")
    if tilt is not None and str(tilt).strip() != "" and abs(float(tilt)) > 1e-3:
        raise PatientError(label, f"gantry tilt of {float(tilt):g} degrees (GantryDetectorTilt (0018,1120)); tilted "
                                  f"series are not supported. Reconstruct without tilt or resample it first")


def _check_origins_on_normal(positions: np.ndarray, normal: np.ndarray, label: str) -> None:
    """The sorted slice origins move along the slice normal (within :data:`TILT_TOLERANCE_DEG`): no tilt or shear."""
    span = positions[-1] - positions[0]
    if np.linalg.norm(span) > 0:
        cosang = abs(float(np.dot(span / np.linalg.norm(span), normal)))
        angle = float(np.degrees(np.arccos(min(1.0, cosang))))
        if angle > TILT_TOLERANCE_DEG:
            raise PatientError(label, f"slice origins move {angle:.2f} degrees off the slice normal (gantry tilt or "
                                      f"sheared volume); not supported. Reconstruct without tilt or resample it first")


def _check_duplicates(along: np.ndarray, label: str) -> None:
    """No two slices at the same position along the normal (``along``: sorted positions, mm)."""
    diffs = np.diff(along)
    if np.any(diffs < 1e-3):
        k = int(np.argmin(diffs))
        raise PatientError(label, f"two slices (sorted #{k + 1} and #{k + 2}) at the same position "
                                  f"{along[k]:.2f} mm; the series mixes several acquisitions (time frames or "
                                  f"reconstructions). Export a single static volume")


def _uniform_spacing(along: np.ndarray, label: str) -> Tuple[float, float]:
    """``(step, offset)`` of the uniform grid the sorted slice positions ``along`` lie on (least squares). Raises
    :class:`PatientError` for missing slices (gaps of whole multiples of the usual step), irregular spacing
    (:data:`SPACING_RTOL`) or positions off the grid (:data:`GRID_RESIDUAL_TOL`)."""
    diffs = np.diff(along)
    step = float(np.median(diffs))
    if np.any(np.abs(diffs - step) > SPACING_RTOL * step + 1e-3):
        ratios = diffs / step
        gaps = [(i, r) for i, r in enumerate(ratios) if abs(r - round(r)) < 0.05 and round(r) >= 2]
        if gaps and all(abs(r - round(r)) < 0.05 for r in ratios):
            n_missing = int(sum(round(r) - 1 for _, r in gaps))
            i = gaps[0][0]
            raise PatientError(label, f"{n_missing} slice(s) missing (first gap between positions {along[i]:.2f} and "
                                      f"{along[i + 1]:.2f} mm, spacing {step:.3f} mm); re-export the complete series")
        raise PatientError(label, f"irregular slice spacing ({diffs.min():.3f} to {diffs.max():.3f} mm); "
                                  f"resample the series to a uniform spacing or export a uniform reconstruction")
    k = np.arange(len(along))
    step_fit, offset = np.polyfit(k, along, 1)
    residual = float(np.max(np.abs(along - (offset + step_fit * k))))
    if residual > GRID_RESIDUAL_TOL * step_fit:
        raise PatientError(label, f"slice positions deviate up to {residual:.2f} mm from a uniform grid of spacing "
                                  f"{step_fit:.3f} mm; resample the series to a uniform spacing")
    return float(step_fit), float(offset)


def load_series_headers(files: Sequence[PathLike], label: str = "",
                        specific_tags: Optional[Sequence[str]] = None, headers: Optional[Sequence[Any]] = None
                        ) -> Tuple[List[Path], List[pydicom.Dataset], SeriesGeometry]:
    """Read and check the headers of a single-frame image series; return files and headers in slice order.

    ``specific_tags`` (keywords): parse only these elements of each header (pydicom skips the others' values),
    e.g. :data:`GEOMETRY_TAGS` when only the geometry is needed; ``None`` parses every element before the pixels.
    ``headers``: the files' headers already read (parallel to ``files``, e.g. :class:`HeaderValues` from the
    index), used instead of parsing the files. Raises :class:`PatientError` (with ``label``) for unreadable
    headers, mixed orientation/size/spacing, gantry tilt, duplicate positions, missing slices or irregular spacing.

    The steps, one function each: :func:`_parse_headers` -> :func:`_check_same_frame` -> sort along the slice
    normal -> :func:`_check_tilt`, :func:`_check_duplicates`, :func:`_check_origins_on_normal` ->
    :func:`_uniform_spacing` -> the :class:`SeriesGeometry`.
    """
    if specific_tags is not None:
        specific_tags = list(specific_tags)
        for tag in _REQUIRED_TAGS + ("GantryDetectorTilt",):
            if tag not in specific_tags:
                raise ValueError(f"specific_tags must include {tag}: the series checks need it")
    files = [Path(f) for f in files]
    if len(files) < 2:
        raise PatientError(label, f"an image series needs at least 2 slices, got {len(files)}; export the full series")
    headers = _parse_headers(files, label, specific_tags, headers)
    iop = _check_same_frame(headers, label)
    ref = headers[0]  # the first slice given: tilt, pixel spacing and size are read from it
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    positions = np.asarray([[float(x) for x in h.ImagePositionPatient] for h in headers])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    files = [files[i] for i in order]
    headers = [headers[i] for i in order]
    _check_tilt(ref, label)
    _check_duplicates(along, label)
    _check_origins_on_normal(positions, normal, label)
    step, offset = _uniform_spacing(along, label)
    ps = [float(x) for x in ref.PixelSpacing]  # (row spacing = y, column spacing = x)
    geometry = SeriesGeometry(
        origin=tuple(float(x) for x in positions[0] + (offset - along[0]) * normal),
        spacing=(ps[1], ps[0], step),
        direction=tuple(float(x) for x in np.column_stack([row, col, normal]).ravel()),
        size=(int(ref.Columns), int(ref.Rows), len(files)))
    return files, headers, geometry


def read_series_with_headers(files: Sequence[PathLike], label: str = "",
                             specific_tags: Optional[Sequence[str]] = None, headers: Optional[Sequence[Any]] = None
                             ) -> Tuple[sitk.Image, List[Path], List[pydicom.Dataset]]:
    """:func:`read_series_volume` that also returns the files and headers in slice order (z index order).

    ``specific_tags``, ``headers``: see :func:`load_series_headers` (the returned headers then hold only those
    elements, or are the given ones).
    """
    sorted_files, headers, geo = load_series_headers(files, label, specific_tags, headers)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in sorted_files])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    reader.MetaDataDictionaryArrayUpdateOff()
    reader.LoadPrivateTagsOff()
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's spacing warning is replaced by our own checks
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        bad = _first_incomplete_slice(sorted_files, headers)
        if bad is not None:
            raise PatientError(label, f"{bad}: the file is incomplete (truncated copy or export); re-export or copy "
                                      "the series again") from exc
        raise PatientError(label, f"pixel data cannot be decoded ({str(exc).strip().splitlines()[-1][:200]}); the "
                                  f"files may be truncated or use an unsupported compression. Re-export uncompressed"
                                  ) from exc
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)
    if image.GetSize() != geo.size:
        raise PatientError(label, f"decoded volume size {image.GetSize()} differs from the headers {geo.size}; "
                                  f"multi-frame or inconsistent files. Export single-frame slices")
    image.SetOrigin(geo.origin)
    image.SetSpacing(geo.spacing)
    image.SetDirection(geo.direction)
    return image, sorted_files, headers


def _first_incomplete_slice(files: Sequence[Path], headers: Sequence[Any]) -> Optional[str]:
    """Which slice of a series that SimpleITK could not read is incomplete ("slice 7 of 350 (InstanceNumber 7)"),
    found by reading each file's pixel data with pydicom (only on this error path); None when none is."""
    for k, f in enumerate(files):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(str(f))
            data = ds.PixelData
            if "TransferSyntaxUID" in ds.file_meta and ds.file_meta.TransferSyntaxUID.is_compressed:
                continue
            needed = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) \
                * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.BitsAllocated) // 8
            if len(data) >= needed:
                continue
        except Exception:  # noqa: BLE001 - any failure to read this file's pixels marks it
            pass
        number = headers[k].get("InstanceNumber") if k < len(headers) and hasattr(headers[k], "get") else None
        return f"slice {k + 1} of {len(files)}" + (f" (InstanceNumber {number})" if number is not None else "")
    return None


def read_series_volume(files: Sequence[PathLike], label: str = "") -> sitk.Image:
    """Read a single-frame DICOM image series as a float32 image with per-slice RescaleSlope/Intercept applied.

    Files may be given in any order. ``label`` is the pseudonymous patient label used in errors.
    """
    return read_series_with_headers(files, label)[0]


def read_ct(files: Sequence[PathLike], label: str = "") -> sitk.Image:
    """Read a CT series in Hounsfield units (float32). Raises :class:`PatientError` when it is not a CT."""
    return read_ct_with_headers(files, label)[0]


def read_ct_with_headers(files: Sequence[PathLike], label: str = "", headers: Optional[Sequence[Any]] = None
                         ) -> Tuple[sitk.Image, List[Path], List[pydicom.Dataset]]:
    """:func:`read_ct` that also returns the files and headers in slice order.

    The CT needs only :data:`GEOMETRY_TAGS` of its headers: ``headers`` (e.g. the index's
    :meth:`.index.SeriesInfo.geometry_headers`) are used when given, else only those elements are parsed from
    the files. The pixels are read by SimpleITK as before.
    """
    image, sorted_files, headers = read_series_with_headers(files, label, GEOMETRY_TAGS, headers)
    modality = str(headers[0].get("Modality", "")).upper()
    if modality != "CT":
        raise PatientError(label, f"expected a CT series, got Modality {modality or 'missing'} (0008,0060)")
    return image, sorted_files, headers


_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}


def resample_to_reference(image: sitk.Image, reference: sitk.Image, interpolator: str = "linear",
                          default_value: float = -1024.0) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid (world coordinates; no registration).

    Used for CT -> PET grid (linear, fill -1024 HU = air outside the CT's field of view, as TMTV-Net and the
    autoPET conversion do). ``interpolator``: ``"linear"``, ``"nearest"`` or ``"bspline"``.
    """
    if interpolator not in _INTERPOLATORS:
        raise ValueError(f"interpolator must be one of {sorted(_INTERPOLATORS)}, got {interpolator!r}")
    if not isinstance(image, sitk.Image) or not isinstance(reference, sitk.Image):
        raise TypeError("image and reference must be SimpleITK images")
    return sitk.Resample(image, reference, sitk.Transform(), _INTERPOLATORS[interpolator], float(default_value),
                         image.GetPixelID())


def _world_bounds(image: sitk.Image) -> Tuple[np.ndarray, np.ndarray]:
    size = np.asarray(image.GetSize())
    corners = []
    for c in np.ndindex(2, 2, 2):
        idx = [(-0.5 if b == 0 else s - 0.5) for b, s in zip(c, size)]
        corners.append(image.TransformContinuousIndexToPhysicalPoint(idx))
    corners = np.asarray(corners)
    return corners.min(axis=0), corners.max(axis=0)


def check_coverage(ct: sitk.Image, pet: sitk.Image) -> List[str]:
    """Warnings when the CT's field of view does not cover the PET's (per world axis, in mm; empty list if it does).

    Tolerance: half a PET voxel. Outside the CT, the resampled CT is filled with -1024 HU.
    """
    ct_lo, ct_hi = _world_bounds(ct)
    pet_lo, pet_hi = _world_bounds(pet)
    tol = 0.5 * np.asarray(pet.GetSpacing())
    warnings: List[str] = []
    covered = 1.0
    for axis, name in enumerate("xyz"):
        lo_miss = ct_lo[axis] - pet_lo[axis]
        hi_miss = pet_hi[axis] - ct_hi[axis]
        extent = pet_hi[axis] - pet_lo[axis]
        inter = max(0.0, min(ct_hi[axis], pet_hi[axis]) - max(ct_lo[axis], pet_lo[axis]))
        covered *= inter / extent if extent > 0 else 1.0
        if lo_miss > tol[axis] or hi_miss > tol[axis]:
            warnings.append(f"CT does not cover the PET along {name}: {max(lo_miss, 0):.1f} mm missing below and "
                            f"{max(hi_miss, 0):.1f} mm above (filled with -1024 HU)")
    if warnings:
        warnings.append(f"CT covers {100 * covered:.1f}% of the PET volume")
    return warnings
