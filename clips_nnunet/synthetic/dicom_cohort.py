"""Synthetic lymphoma PET/CT DICOM cohort with known ground truth (``clips-nnunet synth``).

Each patient is an analytic body phantom (trunk, neck, head; lungs, spine, liver, kidneys, heart, brain, bladder)
with physiological FDG uptake, and lymphoma lesions at lymph-node stations (cervical, supraclavicular, axillary,
mediastinal, hilar, para-aortic, mesenteric, splenic, iliac, inguinal). A per-patient *planted difficulty*
``d`` in [0, 1] (spread evenly over the cohort, then shuffled) sets the lesions: easy patients carry a few large,
bright lesions (lesion-to-background ratio 6-10), hard patients many small, faint ones (ratio 1.6-3), some beside
the heart or hilum. Large lesions may have a necrotic (cold) core, which the mask leaves out, so masks have holes.

CT (HU) and PET are written as real DICOM with pydicom, in one frame of reference, at realistic spacings
(``small``: PET 48x48x64 at 4 mm, CT 96x96 at 2 mm in-plane and 3 mm slices; ``wholebody``: PET 200x200x350 at
2.5x2.5x4 mm, CT 512x512x700 at 0.98x0.98x2 mm). PET headers follow three vendor conventions in turn:

* Siemens: Units BQML, RadiopharmaceuticalStartDateTime.
* GE: Units BQML, only RadiopharmaceuticalStartTime, SeriesTime later than the acquisition (re-reconstructed
  series), decay-correction datetime in the private tag (0009,100D) (creator ``GEMS_PETD_01``).
* Philips: Units CNTS with the SUV factor (7053,1000) and the Bq/ml factor (7053,1009)
  (creator ``Philips PET Private Group``).

All use DecayCorrection START, and weight, dose, half-life and times are consistent with the planted SUV, so the
SUVbw that a correct QIBA/IBSI conversion gives is known exactly: the ground truth
``ground_truth/<study>_suv.nii.gz`` is computed from the *stored* integers and the header values as written
(``SUV = (stored * slope + intercept) * f``, with ``f = weight_g / (dose * 2^-(t_ref - t_inj)/T_half)`` for BQML and
``f = (7053,1000)`` for CNTS). Lesion masks are written as a DICOM SEG (highdicom) and an RTSTRUCT, both on the PET
series; ``ground_truth/<study>_label.nii.gz`` holds the same mask on the PET grid. ``ground_truth/manifest.json``
(private: it holds the fake identifiers) lists each study, its difficulty descriptors and the planted faults.

Patients carry PatientName/PatientID/PatientBirthDate so privacy checks have something to look for; patient 0's
PatientID contains ``../`` so that code which turns header values into paths is caught.

Faults (``faults=``): ``nac`` (an extra non-attenuation-corrected PET series; must be ignored), ``localizer``
(an extra one-image CT localizer series; must be ignored), ``missing-weight`` (PatientWeight removed; that patient
must fail naming the tag, except a Philips one, whose SUV factor (7053,1000) needs no weight), ``second-study`` (a follow-up study for the same patient; two cases, one patient
group), ``corrupted`` (one PET slice file truncated; that patient must fail, the rest convert).

Annotation errors (``label_error_fraction=``, ``label_error_kinds=``; :mod:`clips_nnunet.synthetic.annotation_errors`):
SEG and RTSTRUCT are written from the erroneous mask (also in ``ground_truth/<study>_label_annotated.nii.gz``);
``<study>_label.nii.gz`` stays the clean mask and the manifest entry's ``annotation_error`` says what was planted.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from clips_nnunet.dataset_conversion.write import write_image
from clips_nnunet.errors import UsageError
from clips_nnunet.io_utils import PathLike, atomic_path, atomic_write_bytes, atomic_write_json, read_json
from clips_nnunet.synthetic.annotation_errors import ERROR_KINDS, choose_error_cases, plant_annotation_error

FAULTS = ("nac", "localizer", "missing-weight", "second-study", "corrupted")
VENDORS = ("SIEMENS", "GE", "PHILIPS")
F18_HALF_LIFE_S = 6586.2
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
PET_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.128"
MANIFEST_NAME = "manifest.json"
GROUND_TRUTH_DIR = "ground_truth"


@dataclass(frozen=True)
class GridSize:
    """PET and CT grids of one size preset: shapes (z, y, x) and spacings (z, y, x) in mm."""
    pet_shape: Tuple[int, int, int]
    pet_spacing: Tuple[float, float, float]
    ct_shape: Tuple[int, int, int]
    ct_spacing: Tuple[float, float, float]


SIZES: Dict[str, GridSize] = {
    "small": GridSize((64, 48, 48), (4.0, 4.0, 4.0), (85, 96, 96), (3.0, 2.0, 2.0)),
    "wholebody": GridSize((350, 200, 200), (4.0, 2.5, 2.5), (700, 512, 512), (2.0, 0.9765625, 0.9765625)),
}

# Lymph-node stations in normalised body coordinates (u: patient left +, v: posterior +, w: head +).
STATIONS: Dict[str, Tuple[float, float, float]] = {
    "cervical_R": (-0.15, -0.05, 0.60), "cervical_L": (0.15, -0.05, 0.60),
    "supraclavicular_R": (-0.30, 0.0, 0.50), "supraclavicular_L": (0.30, 0.0, 0.50),
    "axillary_R": (-0.62, 0.05, 0.38), "axillary_L": (0.62, 0.05, 0.38),
    "mediastinal": (0.0, -0.28, 0.36), "hilar_R": (-0.17, 0.05, 0.27), "hilar_L": (0.17, 0.05, 0.27),
    "paraaortic": (0.08, 0.25, -0.10), "mesenteric": (0.05, -0.20, -0.25), "splenic": (0.52, 0.12, 0.02),
    "iliac_R": (-0.30, 0.10, -0.62), "iliac_L": (0.30, 0.10, -0.62),
    "inguinal_R": (-0.35, -0.25, -0.90), "inguinal_L": (0.35, -0.25, -0.90),
}
HARD_STATIONS = ("mediastinal", "hilar_R", "hilar_L", "paraaortic")  # beside heart / vessels / kidneys

# Organs: (centre u, v, w), (radii u, v, w), HU. Their SUV is drawn per patient (make_study_specs).
ORGANS: Dict[str, Tuple[Tuple[float, float, float], Tuple[float, float, float], float]] = {
    "lung_R": ((-0.38, 0.0, 0.28), (0.28, 0.40, 0.22), -820.0),
    "lung_L": ((0.38, 0.0, 0.28), (0.28, 0.40, 0.22), -820.0),
    "heart": ((0.12, -0.18, 0.18), (0.20, 0.22, 0.11), 45.0),
    "liver": ((-0.40, 0.0, 0.0), (0.36, 0.42, 0.14), 60.0),
    "kidney_R": ((-0.40, 0.38, -0.16), (0.10, 0.12, 0.09), 35.0),
    "kidney_L": ((0.40, 0.38, -0.16), (0.10, 0.12, 0.09), 35.0),
    "bladder": ((0.0, -0.15, -0.84), (0.16, 0.16, 0.07), 5.0),
}


@dataclass
class LesionSpec:
    """One planted lesion: ellipsoid centre and radii in patient mm (x, y, z), SUV, optional necrotic core."""
    station: str
    centre_mm: Tuple[float, float, float]
    radii_mm: Tuple[float, float, float]
    suv: float
    contrast: float
    core_fraction: float = 0.0  # core radii = fraction * radii (0: no core)


@dataclass
class StudySpec:
    """Everything needed to write one study; ``identity`` holds the fake identifiers (private)."""
    key: str
    patient_index: int
    study_number: int
    vendor: str
    difficulty: float
    weight_kg: float
    height_m: float
    sex: str
    dose_bq: float
    uptake_s: int
    study_datetime: dt.datetime
    organ_suv: Dict[str, float]
    lesions: List[LesionSpec]
    identity: Dict[str, str]
    faults: List[str] = field(default_factory=list)
    seed: int = 0
    annotation_error: str = ""  # planted annotation error kind ("" = clean mask)


# ----------------------------------------------------------------------------------------------------------------------
# phantom
# ----------------------------------------------------------------------------------------------------------------------
class _Frame:
    """Maps patient mm to normalised body coordinates for a field of view."""

    def __init__(self, extent_mm: Tuple[float, float, float]):
        # extent (z, y, x) in mm; body box slightly smaller than the field of view
        self.hz, self.hy, self.hx = (0.5 * e * f for e, f in zip(extent_mm, (0.95, 0.78, 0.92)))

    def to_mm(self, uvw: Sequence[float]) -> Tuple[float, float, float]:
        u, v, w = uvw
        return (u * self.hx, v * self.hy, w * self.hz)


def _ellipsoid(x, y, z, centre, radii) -> np.ndarray:
    return (((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
            + ((z - centre[2]) / radii[2]) ** 2) <= 1.0


def _structures(x: np.ndarray, y: np.ndarray, z: np.ndarray, frame: _Frame) -> Dict[str, np.ndarray]:
    """Boolean maps of the body structures at points (x, y, z) in patient mm (arrays of one shape)."""
    u, v, w = x / frame.hx, y / frame.hy, z / frame.hz
    s: Dict[str, np.ndarray] = {}
    trunk = ((u / 0.85) ** 2 + (v / 0.62) ** 2 <= 1.0) & (w >= -1.0) & (w <= 0.55)
    neck = ((u / 0.22) ** 2 + (v / 0.25) ** 2 <= 1.0) & (w > 0.5) & (w <= 0.7)
    head = ((u / 0.30) ** 2 + (v / 0.40) ** 2 + ((w - 0.83) / 0.17) ** 2) <= 1.0
    s["body"] = trunk | neck | head
    s["brain"] = ((u / 0.26) ** 2 + (v / 0.35) ** 2 + ((w - 0.83) / 0.14) ** 2) <= 1.0
    s["skull"] = head & ~s["brain"]
    s["spine"] = ((u / 0.08) ** 2 + ((v - 0.45) / 0.09) ** 2 <= 1.0) & (w >= -0.95) & (w <= 0.68)
    for name, (c, r, _) in ORGANS.items():
        s[name] = _ellipsoid(u, v, w, c, r)
    return s


def _ct_slice(x: np.ndarray, y: np.ndarray, z: float, spec: StudySpec, frame: _Frame,
              rng: np.random.Generator) -> np.ndarray:
    zz = np.full_like(x, z)
    s = _structures(x, y, zz, frame)
    hu = np.full(x.shape, -1000.0, dtype=np.float32)
    hu[s["body"]] = -90.0  # subcutaneous fat ...
    muscle = s["body"] & ((x / frame.hx / 0.78) ** 2 + (y / frame.hy / 0.55) ** 2 <= 1.0)
    hu[muscle] = 45.0  # ... around soft tissue
    hu[s["brain"]] = 35.0
    hu[s["skull"]] = 1100.0
    for name, (_, _, organ_hu) in ORGANS.items():
        hu[s[name]] = organ_hu
    hu[s["spine"]] = 450.0
    for lesion in spec.lesions:
        inside = _ellipsoid(x, y, zz, lesion.centre_mm, lesion.radii_mm)
        hu[inside] = 50.0
    hu += rng.normal(0.0, 12.0, x.shape).astype(np.float32)
    return hu


def _lesion_masks(x, y, z, lesions: Sequence[LesionSpec]) -> Tuple[np.ndarray, np.ndarray]:
    """(lesion tissue, necrotic core) boolean maps at points (x, y, z)."""
    tissue = np.zeros(x.shape, dtype=bool)
    core = np.zeros(x.shape, dtype=bool)
    for lesion in lesions:
        inside = _ellipsoid(x, y, z, lesion.centre_mm, lesion.radii_mm)
        if lesion.core_fraction > 0:
            c = _ellipsoid(x, y, z, lesion.centre_mm, tuple(r * lesion.core_fraction for r in lesion.radii_mm))
            core |= c
            inside &= ~c
        tissue |= inside
    return tissue, core & ~tissue


def _pet_suv_volume(grid: GridSize, spec: StudySpec, frame: _Frame, rng: np.random.Generator
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """(true SUV before quantisation, lesion label) on the PET grid, arrays (z, y, x)."""
    from scipy import ndimage

    z, y, x = np.broadcast_arrays(*_grid_coordinates(grid.pet_shape, grid.pet_spacing))
    s = _structures(x, y, z, frame)
    suv = np.full(grid.pet_shape, 0.02, dtype=np.float32)
    suv[s["body"]] = spec.organ_suv["background"]
    suv[s["lung_R"] | s["lung_L"]] = spec.organ_suv["lung"]
    suv[s["spine"]] = spec.organ_suv["marrow"]
    for name in ("liver", "heart", "bladder"):
        suv[s[name]] = spec.organ_suv[name]
    suv[s["kidney_R"] | s["kidney_L"]] = spec.organ_suv["kidney"]
    suv[s["brain"]] = spec.organ_suv["brain"]
    tissue, core = _lesion_masks(x, y, z, spec.lesions)
    for lesion in spec.lesions:
        inside = _ellipsoid(x, y, z, lesion.centre_mm, lesion.radii_mm) & tissue
        suv[inside] = lesion.suv
    suv[core] = 0.5 * spec.organ_suv["background"]
    sigma_vox = [2.5 / sp for sp in grid.pet_spacing]  # ~6 mm FWHM resolution
    suv = ndimage.gaussian_filter(suv, sigma_vox)
    suv *= rng.normal(1.0, 0.06, suv.shape).astype(np.float32)
    np.clip(suv, 0.0, None, out=suv)
    return suv.astype(np.float32), tissue.astype(np.uint8)


def _grid_coordinates(shape, spacing) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient coordinates (z, y, x) of voxel centres for a grid centred on the origin (broadcastable arrays)."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * sp for n, sp in zip(shape, spacing)]
    return (axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])


# ----------------------------------------------------------------------------------------------------------------------
# specs
# ----------------------------------------------------------------------------------------------------------------------
def _plant_lesions(rng: np.random.Generator, d: float, frame: _Frame, background: float) -> List[LesionSpec]:
    n = int(np.clip(1 + round(d * 5) + rng.integers(0, 2), 1, 8))
    stations = list(STATIONS)
    if d > 0.6:  # hard patients: lesions beside high-uptake structures first
        order = list(HARD_STATIONS) + [s for s in rng.permutation(stations) if s not in HARD_STATIONS]
    else:
        order = list(rng.permutation(stations))
    lesions: List[LesionSpec] = []
    for station in order:
        if len(lesions) >= n:
            break
        r = float(rng.uniform(10.0 + 8.0 * (1 - d) - 6.0 * d, 14.0 + 10.0 * (1 - d) - 8.0 * d))
        r = max(r, 4.5)
        radii = (r * rng.uniform(0.85, 1.15), r * rng.uniform(0.85, 1.15), r * rng.uniform(0.9, 1.3))
        jitter = rng.normal(0.0, 0.02, 3)
        centre = frame.to_mm(np.asarray(STATIONS[station]) + jitter)
        if any(np.linalg.norm(np.subtract(centre, o.centre_mm)) < max(radii) + max(o.radii_mm) + 4.0
               for o in lesions):
            continue
        contrast = float(rng.uniform(6.0, 10.0) * (1 - d) + rng.uniform(1.6, 3.0) * d)
        core = float(rng.uniform(0.4, 0.5)) if (r >= 11.0 and rng.random() < 0.6) else 0.0
        lesions.append(LesionSpec(station, tuple(float(c) for c in centre), tuple(float(v) for v in radii),
                                  suv=float(contrast * background), contrast=contrast, core_fraction=core))
    return lesions


def make_study_specs(n_patients: int, seed: int = 0, size: str = "small",
                     faults: Iterable[str] = ()) -> List[StudySpec]:
    """Deterministic specifications of all studies of a cohort (no files written).

    Difficulties are ``linspace(0, 1, n)`` permuted, so every cohort spans easy to hard; faults go to the last
    patients (patient ``n-1`` gets the first fault listed, ``n-2`` the second, ...).
    """
    faults = list(dict.fromkeys(faults))
    for f in faults:
        if f not in FAULTS:
            raise ValueError(f"unknown fault {f!r}: choose from {', '.join(FAULTS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: choose small or wholebody")
    if n_patients < 1 or n_patients < len(faults) + 1:
        raise UsageError(f"n_patients={n_patients} is too few for {len(faults)} fault(s): each fault needs a patient "
                         f"of its own and one stays clean, so use at least {len(faults) + 1} patients (-n) or fewer "
                         "faults")
    grid = SIZES[size]
    frame = _Frame(tuple(n * s for n, s in zip(grid.pet_shape, grid.pet_spacing)))
    rng = np.random.default_rng(seed)
    difficulties = rng.permutation(np.linspace(0.0, 1.0, n_patients)) if n_patients > 1 else np.array([0.3])
    token = f"{rng.integers(0, 36 ** 4):04X}"
    fault_of = {n_patients - 1 - i: f for i, f in enumerate(faults)}
    specs: List[StudySpec] = []
    for i in range(n_patients):
        prng = np.random.default_rng([seed, i])
        d = float(difficulties[i])
        background = float(prng.uniform(0.7, 1.0))
        organ_suv = {"background": background, "lung": float(prng.uniform(0.3, 0.5)),
                     "marrow": float(prng.uniform(1.3, 2.0)), "liver": float(prng.uniform(1.8, 2.6)),
                     "heart": float(prng.uniform(2.0, 8.0)), "kidney": float(prng.uniform(3.0, 5.0)),
                     "bladder": float(prng.uniform(8.0, 25.0)), "brain": float(prng.uniform(6.0, 9.0))}
        pid = f"SYNPID{token}{i:04d}"
        if i == 0:
            pid = f"../../{pid}"  # header values must never become paths
        identity = {"PatientName": f"ZZSYNTH^PATIENT{token}{i:04d}", "PatientID": pid,
                    "PatientBirthDate": f"19{40 + (i * 7) % 50:02d}{1 + i % 12:02d}{1 + (i * 5) % 28:02d}"}
        base_date = dt.datetime(2019, 1, 7, 8, 0, 0) + dt.timedelta(days=int(prng.integers(0, 1500)),
                                                                      minutes=int(prng.integers(0, 240)))
        fault = fault_of.get(i)
        n_studies = 2 if fault == "second-study" else 1
        for k in range(n_studies):
            srng = np.random.default_rng([seed, i, k])
            dk = d if k == 0 else float(np.clip(d + 0.25, 0, 1))  # follow-up: fewer/fainter residual lesions
            specs.append(StudySpec(
                key=f"p{i:03d}_s{k + 1}", patient_index=i, study_number=k + 1, vendor=VENDORS[i % 3],
                difficulty=dk, weight_kg=round(float(prng.uniform(50, 110)), 1),
                height_m=round(float(prng.uniform(1.55, 1.95)), 2), sex="F" if i % 2 else "M",
                dose_bq=float(round(srng.uniform(180e6, 400e6), -5)), uptake_s=int(srng.integers(55 * 60, 75 * 60)),
                study_datetime=base_date + dt.timedelta(days=120 * k), organ_suv=dict(organ_suv),
                lesions=_plant_lesions(srng, dk, frame, background), identity=identity,
                faults=[fault] if fault and (fault != "second-study" or k == 1) else [],
                seed=int(srng.integers(0, 2 ** 31))))
    return specs


# ----------------------------------------------------------------------------------------------------------------------
# DICOM writing
# ----------------------------------------------------------------------------------------------------------------------
def _ds_str(value: float) -> str:
    """A DICOM DS string (<= 16 characters) for ``value``; callers use ``float()`` of it for ground truth."""
    for digits in (12, 11, 10, 9, 8, 7, 6):
        s = f"{value:.{digits}g}"
        if len(s) <= 16:
            return s
    raise ValueError(f"cannot write {value} as DS")


def _common(ds: Dataset, spec: StudySpec, study_uid: str, frame_uid: str, modality: str) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    for k, v in spec.identity.items():
        setattr(ds, k, v)
    ds.PatientSex = spec.sex
    ds.PatientAge = f"{max(1, spec.study_datetime.year - int(spec.identity['PatientBirthDate'][:4])):03d}Y"
    ds.PatientSize = f"{spec.height_m:.2f}"
    if "missing-weight" not in spec.faults:
        ds.PatientWeight = _ds_str(spec.weight_kg)
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = spec.study_datetime.strftime("%Y%m%d")
    ds.StudyTime = spec.study_datetime.strftime("%H%M%S")
    ds.StudyID = f"{spec.study_number}"
    ds.AccessionNumber = f"ACC{spec.identity['PatientID'][-8:].replace('/', '')}{spec.study_number}"
    ds.ReferringPhysicianName = "ZZREFERRER^SYNTH"
    ds.StudyDescription = "PET/CT whole body FDG (synthetic)"
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.Modality = modality
    ds.InstitutionName = "Synthetic Lymphoma Centre"


def _pixel_module(ds: Dataset, pixels: np.ndarray) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()


def _save(ds: Dataset, path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    with atomic_path(path, suffix=".dcm") as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def _tm(t: dt.datetime) -> str:
    return t.strftime("%H%M%S.%f")[:13]


def _ct_series(spec: StudySpec, grid: GridSize, frame: _Frame, out_dir: Path, study_uid: str, frame_uid: str,
               rng: np.random.Generator, localizer: bool = False) -> str:
    series_uid = generate_uid()
    nz, ny, nx = grid.ct_shape
    sz, sy, sx = grid.ct_spacing
    z_axis, y_axis, x_axis = _grid_coordinates(grid.ct_shape, grid.ct_spacing)
    y2, x2 = np.broadcast_arrays(y_axis[0], x_axis[0])
    acq = spec.study_datetime + dt.timedelta(seconds=spec.uptake_s - 300)
    names = rng.permutation(nz)
    for k in range(nz):
        z = float(z_axis[k, 0, 0])
        hu = _ct_slice(x2, y2, z, spec, frame, rng)
        stored = np.clip(np.round(hu + 1024.0), -32768, 32767).astype(np.int16)
        ds = Dataset()
        _common(ds, spec, study_uid, frame_uid, "CT")
        ds.SOPClassUID = CT_SOP_CLASS
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 2
        ds.SeriesDescription = "CT WB 3.0 attenuation"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Manufacturer = _manufacturer(spec.vendor)
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = acq.strftime("%Y%m%d")
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _tm(acq)
        ds.InstanceNumber = nz - k
        ds.ImagePositionPatient = [f"{float(x_axis[0, 0, 0]):.4f}", f"{float(y_axis[0, 0, 0]):.4f}", f"{z:.4f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = [_ds_str(sy), _ds_str(sx)]
        ds.SliceThickness = _ds_str(sz)
        ds.KVP = "120"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        _pixel_module(ds, stored)
        _save(ds, out_dir / f"IM{names[k]:05d}.dcm")
    if localizer:
        loc_dir = out_dir.parent / "CT_TOPOGRAM"
        ds = Dataset()
        _common(ds, spec, study_uid, frame_uid, "CT")
        ds.SOPClassUID = CT_SOP_CLASS
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SeriesNumber = 1
        ds.SeriesDescription = "Topogram 0.6"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.Manufacturer = _manufacturer(spec.vendor)
        ds.SeriesDate = acq.strftime("%Y%m%d")
        ds.SeriesTime = _tm(acq - dt.timedelta(minutes=2))
        ds.InstanceNumber = 1
        ds.ImagePositionPatient = [f"{-0.5 * nx * sx:.4f}", "0", f"{0.5 * nz * sz:.4f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
        ds.PixelSpacing = [_ds_str(sz), _ds_str(sx)]
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        _pixel_module(ds, np.full((nz, nx), 900, dtype=np.int16))
        _save(ds, loc_dir / "IM00000.dcm")
    return series_uid


def _manufacturer(vendor: str) -> str:
    return {"SIEMENS": "SIEMENS", "GE": "GE MEDICAL SYSTEMS", "PHILIPS": "Philips Medical Systems"}[vendor]


def _pet_series(spec: StudySpec, grid: GridSize, suv_true: np.ndarray, out_dir: Path, study_uid: str,
                frame_uid: str, rng: np.random.Generator, nac: bool = False
                ) -> Tuple[str, List[Dataset], np.ndarray, Dict[str, Any]]:
    """Write the PET series; return (series uid, datasets, ground-truth SUV as a converter must compute it, info)."""
    series_uid = generate_uid()
    nz, ny, nx = grid.pet_shape
    sz, sy, sx = grid.pet_spacing
    z_axis, y_axis, x_axis = _grid_coordinates(grid.pet_shape, grid.pet_spacing)
    t_inj = spec.study_datetime
    t_start = t_inj + dt.timedelta(seconds=spec.uptake_s)
    half_life = F18_HALF_LIFE_S
    weight_kg = spec.weight_kg
    dose_str = _ds_str(spec.dose_bq)
    elapsed = (t_start.replace(microsecond=0) - t_inj.replace(microsecond=0)).total_seconds()
    decayed_dose = float(dose_str) * 2.0 ** (-elapsed / half_life)
    bq_per_suv = decayed_dose / (float(_ds_str(weight_kg)) * 1000.0)  # Bq/ml of SUV 1
    info: Dict[str, Any] = {"vendor": spec.vendor, "units": "CNTS" if spec.vendor == "PHILIPS" else "BQML",
                            "decay_correction": "START", "elapsed_s": elapsed, "half_life_s": half_life}
    activity = suv_true.astype(np.float64) * bq_per_suv
    if nac:
        activity = activity * 0.35 + 500.0  # NAC images: different scale, must not be used
    if spec.vendor == "PHILIPS":
        bqml_per_count = 3.7
        suv_factor = float(_ds_str(bqml_per_count / bq_per_suv))
        values = activity / bqml_per_count
        info.update(bqml_factor=bqml_per_count, suv_factor=suv_factor)
    else:
        values = activity
    slices_per_bed = max(1, int(round(160.0 / sz)))
    names = rng.permutation(nz)
    gt = np.zeros(grid.pet_shape, dtype=np.float32)
    datasets: List[Dataset] = []
    n_beds = int(np.ceil(nz / slices_per_bed))
    series_dt = t_start + (dt.timedelta(minutes=35) if spec.vendor == "GE" else dt.timedelta(0))
    for k in range(nz):
        z = float(z_axis[k, 0, 0])
        v = values[k]
        slope = float(_ds_str(max(float(v.max()), 1e-3) / 32000.0))
        stored = np.clip(np.round(v / slope), 0, 32767).astype(np.int16)
        rescaled = stored.astype(np.float64) * slope
        if spec.vendor == "PHILIPS":
            gt[k] = (rescaled * suv_factor).astype(np.float32)
        else:
            gt[k] = (rescaled / bq_per_suv).astype(np.float32)
        bed = (nz - 1 - k) // slices_per_bed  # beds from head to feet
        acq = t_start + dt.timedelta(seconds=150 * bed)
        ds = Dataset()
        _common(ds, spec, study_uid, frame_uid, "PT")
        ds.SOPClassUID = PET_SOP_CLASS
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 5 if nac else 4
        ds.SeriesDescription = "PET WB NAC" if nac else "PET WB AC"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.Manufacturer = _manufacturer(spec.vendor)
        ds.SeriesDate = series_dt.strftime("%Y%m%d")
        ds.SeriesTime = _tm(series_dt)
        ds.AcquisitionDate = acq.strftime("%Y%m%d")
        ds.AcquisitionTime = _tm(acq)
        ds.ContentDate = ds.SeriesDate
        ds.ContentTime = ds.SeriesTime
        ds.InstanceNumber = nz - k
        ds.ImageIndex = nz - k
        ds.NumberOfSlices = nz
        ds.ImagePositionPatient = [f"{float(x_axis[0, 0, 0]):.4f}", f"{float(y_axis[0, 0, 0]):.4f}", f"{z:.4f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = [_ds_str(sy), _ds_str(sx)]
        ds.SliceThickness = _ds_str(sz)
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = _ds_str(slope)
        ds.Units = info["units"]
        ds.CountsSource = "EMISSION"
        ds.SeriesType = ["WHOLE BODY", "IMAGE"]
        ds.CorrectedImage = (["NORM", "DTIM", "DECY", "RAN"] if nac
                             else ["NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"])
        ds.AttenuationCorrectionMethod = "" if nac else "CTAC"
        ds.DecayCorrection = "START"
        ds.ActualFrameDuration = 150000
        ds.FrameReferenceTime = str(150000 * bed)
        ds.DecayFactor = _ds_str(2.0 ** ((acq - t_start).total_seconds() / half_life))
        ds.DoseCalibrationFactor = "1"
        ds.NumberOfTimeSlices = 1
        ds.SUVType = "BW"
        rp = Dataset()
        rp.Radiopharmaceutical = "Fluorodeoxyglucose"
        rp.RadionuclideTotalDose = dose_str
        rp.RadionuclideHalfLife = _ds_str(half_life)
        rp.RadionuclidePositronFraction = "0.97"
        rp.RadiopharmaceuticalStartTime = _tm(t_inj)
        if spec.vendor == "SIEMENS":
            rp.RadiopharmaceuticalStartDateTime = t_inj.strftime("%Y%m%d%H%M%S.%f")[:21]
        code = Dataset()
        code.CodeValue = "C-111A1"
        code.CodingSchemeDesignator = "SRT"
        code.CodeMeaning = "^18^Fluorine"
        rp.RadionuclideCodeSequence = DicomSequence([code])
        ds.RadiopharmaceuticalInformationSequence = DicomSequence([rp])
        if spec.vendor == "GE":
            ds.add_new((0x0009, 0x0010), "LO", "GEMS_PETD_01")
            ds.add_new((0x0009, 0x100D), "DT", t_start.strftime("%Y%m%d%H%M%S.00"))
        elif spec.vendor == "PHILIPS":
            ds.add_new((0x7053, 0x0010), "LO", "Philips PET Private Group")
            ds.add_new((0x7053, 0x1000), "DS", _ds_str(suv_factor))
            ds.add_new((0x7053, 0x1009), "DS", _ds_str(bqml_per_count))
        _pixel_module(ds, stored)
        _save(ds, out_dir / f"PT{names[k]:05d}.dcm")
        datasets.append(ds)
    info["n_beds"] = n_beds
    return series_uid, datasets, gt, info


def _write_nifti(array: np.ndarray, grid: GridSize, path: Path) -> None:
    img = sitk.GetImageFromArray(array)
    z_axis, y_axis, x_axis = _grid_coordinates(grid.pet_shape, grid.pet_spacing)
    img.SetOrigin((float(x_axis[0, 0, 0]), float(y_axis[0, 0, 0]), float(z_axis[0, 0, 0])))
    img.SetSpacing(tuple(float(s) for s in reversed(grid.pet_spacing)))
    write_image(img, path)


def write_study(spec: StudySpec, cohort_dir: PathLike, size: str = "small",
                mask_formats: Sequence[str] = ("seg", "rtstruct")) -> Dict[str, Any]:
    """Write one study's DICOM (CT, PET, masks, planted faults) and ground truth; return its manifest entry."""
    from clips_nnunet.dataset_conversion.dicom_out import write_dicom_seg, write_rtstruct

    cohort_dir = Path(cohort_dir)
    grid = SIZES[size]
    frame = _Frame(tuple(n * s for n, s in zip(grid.pet_shape, grid.pet_spacing)))
    rng = np.random.default_rng(spec.seed)
    study_dir = cohort_dir / f"patient_{spec.patient_index:03d}" / f"study_{spec.study_number}"
    study_uid, frame_uid = generate_uid(), generate_uid()
    suv_true, label = _pet_suv_volume(grid, spec, frame, rng)
    ct_uid = _ct_series(spec, grid, frame, study_dir / "CT", study_uid, frame_uid, rng,
                        localizer="localizer" in spec.faults)
    pet_uid, pet_ds, gt_suv, info = _pet_series(spec, grid, suv_true, study_dir / "PET", study_uid, frame_uid, rng)
    if "nac" in spec.faults:
        _pet_series(spec, grid, suv_true, study_dir / "PET_NAC", study_uid, frame_uid, rng, nac=True)
    entry: Dict[str, Any] = {"key": spec.key, "patient_index": spec.patient_index, "study_number": spec.study_number,
                             "study_dir": str(study_dir.relative_to(cohort_dir)), "study_uid": study_uid,
                             "ct_series_uid": ct_uid, "pet_series_uid": pet_uid, "frame_of_reference_uid": frame_uid,
                             "identity": dict(spec.identity), "study_date": spec.study_datetime.strftime("%Y%m%d"),
                             "vendor": spec.vendor, "difficulty": spec.difficulty, "faults": list(spec.faults),
                             "weight_kg": spec.weight_kg, "dose_bq": spec.dose_bq, "pet": info,
                             "lesions": [dataclasses.asdict(l) for l in spec.lesions],
                             "has_hole": bool(any(l.core_fraction > 0 for l in spec.lesions)),
                             "n_label_voxels": int(label.sum()),
                             "tmtv_ml": float(label.sum() * np.prod(grid.pet_spacing) / 1000.0)}
    annotated, entry["annotation_error"] = label, {"kind": None}
    if spec.annotation_error:
        annotated, entry["annotation_error"] = plant_annotation_error(
            label, spec.annotation_error, np.random.default_rng([spec.seed, 1]), suv=gt_suv)
    if annotated.any():
        if "seg" in mask_formats:
            write_dicom_seg(annotated, pet_ds, study_dir / "SEG" / "lesions_seg.dcm", segment_label="lymphoma",
                            algorithm_type="MANUAL", series_description="Lymphoma lesions (expert)")
        if "rtstruct" in mask_formats:
            write_rtstruct(annotated, pet_ds, study_dir / "RTSTRUCT" / "lesions_rtstruct.dcm", roi_name="Lymphoma",
                           roi_generation_algorithm="MANUAL", series_description="Lymphoma contours (expert)")
    if "corrupted" in spec.faults:
        victim = sorted((study_dir / "PET").glob("*.dcm"))[len(pet_ds) // 2]
        atomic_write_bytes(victim, victim.read_bytes()[:300])
        entry["corrupted_file"] = str(victim.relative_to(cohort_dir))
    gt_dir = cohort_dir / GROUND_TRUTH_DIR
    _write_nifti(gt_suv, grid, gt_dir / f"{spec.key}_suv.nii.gz")
    _write_nifti(label, grid, gt_dir / f"{spec.key}_label.nii.gz")
    entry["suv_path"] = f"{GROUND_TRUTH_DIR}/{spec.key}_suv.nii.gz"
    entry["label_path"] = f"{GROUND_TRUTH_DIR}/{spec.key}_label.nii.gz"
    if spec.annotation_error:
        _write_nifti(annotated, grid, gt_dir / f"{spec.key}_label_annotated.nii.gz")
        entry["annotated_label_path"] = f"{GROUND_TRUTH_DIR}/{spec.key}_label_annotated.nii.gz"
    entry["expected"] = _expected_outcome(spec)
    return entry


def _expected_outcome(spec: StudySpec) -> Dict[str, Any]:
    if "missing-weight" in spec.faults and spec.vendor != "PHILIPS":
        return {"converts": False, "error_contains": ["PatientWeight"]}
    # Philips CNTS with a SUV scale factor (7053,1000) needs no weight: that study must still convert
    if "corrupted" in spec.faults:
        return {"converts": False, "error_contains": ["missing"]}  # the truncated slice leaves a gap
    return {"converts": True, "error_contains": []}


def make_synthetic_cohort(cohort_dir: PathLike, n_patients: int = 16, seed: int = 0, size: str = "small",
                          faults: Iterable[str] = (), mask_formats: Sequence[str] = ("seg", "rtstruct"),
                          progress: bool = True, label_error_fraction: float = 0.0,
                          label_error_kinds: Sequence[str] = ERROR_KINDS) -> Dict[str, Any]:
    """Write a synthetic PET/CT DICOM cohort to ``cohort_dir`` and return its manifest.

    Layout: ``patient_NNN/study_K/{CT,PET,SEG,RTSTRUCT[,PET_NAC,CT_TOPOGRAM]}/*.dcm`` and the private
    ``ground_truth/`` folder (manifest.json, per-study SUV and label NIfTI on the PET grid). Deterministic for a
    given ``seed`` (pixel data and lesions; UIDs are new on each run). ``faults``: any of :data:`FAULTS`.
    """
    from tqdm import tqdm

    mask_formats = tuple(mask_formats)
    for m in mask_formats:
        if m not in ("seg", "rtstruct"):
            raise ValueError(f"unknown mask format {m!r}: use 'seg' and/or 'rtstruct'")
    specs = make_study_specs(n_patients, seed=seed, size=size, faults=faults)
    planned = choose_error_cases([s.key for s in specs], label_error_fraction, label_error_kinds,
                                 np.random.default_rng([seed, 1]))  # studies with an annotation error
    for s in specs:
        s.annotation_error = planned.get(s.key, "")
    cohort_dir = Path(cohort_dir)
    cohort_dir.mkdir(parents=True, exist_ok=True)
    studies = [write_study(s, cohort_dir, size=size, mask_formats=mask_formats)
               for s in tqdm(specs, desc="synth", unit="study", disable=not progress)]
    manifest = {"generator": {"n_patients": n_patients, "seed": seed, "size": size, "faults": list(faults),
                              "label_error_fraction": float(label_error_fraction),
                              "mask_formats": list(mask_formats), "grid": dataclasses.asdict(SIZES[size])},
                "studies": studies}
    atomic_write_json(cohort_dir / GROUND_TRUTH_DIR / MANIFEST_NAME, manifest)
    return load_manifest(cohort_dir)  # JSON types (lists, not tuples), as later readers see it


def load_manifest(cohort_dir: PathLike) -> Dict[str, Any]:
    """The manifest written by :func:`make_synthetic_cohort`."""
    path = Path(cohort_dir) / GROUND_TRUTH_DIR / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: generate the cohort with `clips-nnunet synth {cohort_dir}`")
    return read_json(path)
