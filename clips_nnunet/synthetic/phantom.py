"""The analytic PET/CT body phantom of the synthetic DICOM cohort: grids, organs, lesion stations, study specs.

Pure arrays and dataclasses (numpy); :mod:`clips_nnunet.synthetic.dicom_cohort` writes them as DICOM. See that
module's docstring for the phantom's design (planted difficulty, lesion stations, vendor conventions, faults).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from clips_nnunet.errors import UsageError


FAULTS = ("nac", "localizer", "missing-weight", "second-study", "corrupted")
VENDORS = ("SIEMENS", "GE", "PHILIPS")
F18_HALF_LIFE_S = 6586.2


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
