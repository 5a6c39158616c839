"""The whole-body lymphoma PET/CT twin: one patient rendered on a clinical (DICOM) or a study (raw) grid.

:func:`make_twin` draws a patient (:mod:`~clips_nnunet.synthetic.twin_anatomy`), its DLBCL disease
(:mod:`~clips_nnunet.synthetic.twin_disease`), paints both (:mod:`~clips_nnunet.synthetic.twin_render`) and applies
the PET physics (:mod:`~clips_nnunet.synthetic.twin_physics`). Grids:

* clinical, per vendor (:data:`CLINICAL_GRIDS`): PET ~4-4.7 mm in-plane, 3-4 mm slices, 1050 mm from the vertex to
  the thighs; CT 512 x 512 at 0.98 mm, 3-5 mm slices, as the vendors' whole-body protocols reconstruct them;
* small (:data:`SMALL_GRIDS`): the same whole body at PET 8 mm, CT 4 mm in-plane (tests, quick cohorts);
* trunk (:data:`TRUNK_GRIDS`): the small grids' voxels over the oncological field of view, skull base to upper
  thighs, placed as the study crop (the demo's DICOM twins);
* study (:data:`STUDY_GRID`): 8 mm voxels, a crop from the skull base to the upper thighs, so a CPU study trains in
  minutes, with the same confounders (tonsils, salivary glands, thyroid, cervical and supraclavicular brown fat,
  heart, kidneys, ureters, bladder, bowel, marrow; the brain only in short patients).

The truth is the lesion mask: voxels that lesion lobules cover by at least half, minus necrotic cores. Lesion
uptake is heterogeneous (:func:`apply_heterogeneity`): cold patches inside the truth mask.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from clips_nnunet.synthetic.twin_anatomy import (HU, TISSUES, BodyFrame, TwinPatient, anatomy_shapes, body_sections,
                                                 draw_patient, patient_record)
from clips_nnunet.synthetic.twin_disease import TwinLesion, draw_disease
from clips_nnunet.synthetic.twin_physics import add_pet_noise, apply_psf, correlated_noise
from clips_nnunet.synthetic.twin_render import CtCanvas, Grid, PetCanvas

FOV_Z_MM = 1050.0
VERTEX_MARGIN_MM = 20.0


def _clinical(pet_n: int, pet_mm: float, pet_dz: float, ct_dz: float) -> Tuple[Grid, Grid]:
    return (Grid((int(round(FOV_Z_MM / pet_dz)), pet_n, pet_n), (pet_dz, pet_mm, pet_mm)),
            Grid((int(round(FOV_Z_MM / ct_dz)), 512, 512), (ct_dz, 0.9765625, 0.9765625)))


#: (PET grid, CT grid) per vendor: Siemens 168^2 at 4.07 mm, GE 128^2 at 4.69 mm, Philips 144^2 at 4 mm.
CLINICAL_GRIDS: Dict[str, Tuple[Grid, Grid]] = {
    "SIEMENS": _clinical(168, 4.0728, 4.0, 3.0), "GE": _clinical(128, 4.6875, 3.27, 3.75),
    "PHILIPS": _clinical(144, 4.0, 4.0, 5.0)}
#: A small whole-body twin for tests and quick cohorts: PET 8 mm, CT 4 mm in-plane, same 1050 mm field.
SMALL_GRIDS: Tuple[Grid, Grid] = (Grid((131, 64, 64), (8.0, 8.0, 8.0)), Grid((131, 128, 128), (8.0, 4.0, 4.0)))
#: The study grid: (z, y, x) 108 x 40 x 48 voxels of 8 mm (864 mm), centred 580 mm below the vertex of a 1.75 m
#: patient: from the skull base (parotids, tonsils, cervical nodes, cervical brown fat) to the upper thighs
#: (inguinal nodes); the crop scales with height, so short patients keep the lowest brain, tall ones lose the top
#: of the parotids and the inguinal stations.
STUDY_GRID = Grid((108, 40, 48), (8.0, 8.0, 8.0))
STUDY_CENTRE_S = 580.0
#: A DICOM twin over the oncological field of view (skull base to mid-thigh, as the EANM FDG guideline acquires it):
#: the small grids' voxels, the study crop's extent and placement, 512 mm wide.
TRUNK_GRIDS: Tuple[Grid, Grid] = (Grid((108, 64, 64), (8.0, 8.0, 8.0)), Grid((108, 128, 128), (8.0, 4.0, 4.0)))
#: The DICOM twin sizes (``clips-nnunet synth --phantom twin --size``, :func:`twin_grids`).
TWIN_SIZES = ("small", "trunk", "wholebody")
#: Intratumoral heterogeneity: cold patches (correlation FWHM :data:`HETEROGENEITY_CORR_MM`) where the uptake falls
#: by up to ``depth`` (drawn per lesion in this range) of the painted value; see :func:`apply_heterogeneity`.
HETEROGENEITY_DEPTH = (0.2, 0.6)
HETEROGENEITY_CORR_MM = 15.0


@dataclass
class TwinCase:
    """One rendered twin: PET (SUV, noisy), truth mask, lesion ids, tissue map, CT (HU, int16 or None), records."""
    pet: np.ndarray
    pet_true: np.ndarray
    label: np.ndarray
    lesion_ids: np.ndarray
    tissue: np.ndarray
    ct: Optional[np.ndarray]
    pet_grid: Grid
    ct_grid: Optional[Grid]
    patient: TwinPatient
    lesions: List[TwinLesion]
    physics: Dict[str, float]
    summary: Dict[str, Any] = field(default_factory=dict)


def z_top_for(grid: Grid, patient: TwinPatient, study: bool) -> float:
    """Patient z (mm) of the vertex: 20 mm below the top of a clinical field, or (``study``: a skull-base-to-thigh
    crop, the study or trunk grid) :data:`STUDY_CENTRE_S` above the crop's centre, scaled with height."""
    if study:
        return grid.centre_mm[0] + STUDY_CENTRE_S * patient.height_m / 1.75
    return grid.centre_mm[0] + (grid.shape[0] - 1) / 2.0 * grid.spacing[0] - VERTEX_MARGIN_MM


def render_pet(frame: BodyFrame, lesions: List[TwinLesion], grid: Grid) -> PetCanvas:
    """Paint anatomy then lesions on a PET grid (true activity, tissue map, lesion ids)."""
    canvas = PetCanvas(grid, TISSUES, background=0.0)
    for section, tissue, value in body_sections(frame, grid.axis(0)):
        canvas.paint_section(section, value, tissue)
    for shape in anatomy_shapes(frame):
        canvas.paint(shape)
    for lesion in lesions:
        for shape in lesion.shapes():
            canvas.paint(shape)
    return canvas


def render_ct(frame: BodyFrame, lesions: List[TwinLesion], grid: Grid) -> np.ndarray:
    """Paint anatomy then lesions on a CT grid: int16 HU without noise."""
    canvas = CtCanvas(grid)
    for section, tissue, _ in body_sections(frame, grid.axis(0)):
        canvas.paint_section(section, HU[tissue])
    for shape in anatomy_shapes(frame):
        canvas.paint(shape)
    for lesion in lesions:
        for shape in lesion.shapes():
            canvas.paint(shape)
    return canvas.hu


def apply_heterogeneity(activity: np.ndarray, lesion_ids: np.ndarray, depths: np.ndarray, spacing: Sequence[float],
                        rng: np.random.Generator) -> None:
    """Multiply the uptake of lesion voxels (``lesion_ids > 0``) in place by ``1 - depth * clip(g, 0, 2) / 2``:
    ``g`` a zero-mean unit-variance Gaussian field with a correlation of FWHM :data:`HETEROGENEITY_CORR_MM`, and
    ``depth = depths[lesion id]``. Where ``g <= 0`` (half of a lesion) the uptake is unchanged, so the lesion keeps
    its hottest values; elsewhere it falls by up to ``depth`` (patchy hypometabolism of bulky lymphoma)."""
    inside = lesion_ids > 0
    if not inside.any():
        return
    idx = np.argwhere(inside)
    pad = 4
    box = tuple(slice(max(0, int(a) - pad), min(n, int(b) + 1 + pad))
                for a, b, n in zip(idx.min(0), idx.max(0), lesion_ids.shape))
    ids = lesion_ids[box]
    g = correlated_noise(ids.shape, spacing, HETEROGENEITY_CORR_MM, rng)
    factor = 1.0 - depths[np.maximum(ids, 0)] * np.clip(g, 0.0, 2.0) / 2.0
    activity[box] = np.where(ids > 0, activity[box] * factor, activity[box]).astype(activity.dtype)


def make_twin(seed: int, weight_kg: float = 75.0, height_m: float = 1.75, sex: str = "M",
              grids: Optional[Tuple[Grid, Optional[Grid]]] = None, study: bool = False,
              n_lesions: Optional[int] = None, brown_fat_prevalence: float = 0.12) -> TwinCase:
    """Render one twin patient; deterministic for ``seed`` (and the other arguments).

    ``grids``: (PET grid, CT grid or None); default the Siemens clinical grids, or the study grid without CT when
    ``study``. ``study``: the grids are a skull-base-to-thigh crop (:func:`z_top_for`). ``n_lesions`` forces the
    lesion count (tests).
    """
    rng = np.random.default_rng([int(seed), 23])
    if grids is None:
        grids = (STUDY_GRID, None) if study else CLINICAL_GRIDS["SIEMENS"]
    pet_grid, ct_grid = grids
    patient = draw_patient(rng, weight_kg, height_m, sex, brown_fat_prevalence=brown_fat_prevalence)
    frame = BodyFrame(patient, z_top_for(pet_grid, patient, study))
    lesions = draw_disease(frame, np.random.default_rng([int(seed), 29]), n_lesions=n_lesions)
    canvas = render_pet(frame, lesions, pet_grid)
    texture_rng = np.random.default_rng([int(seed), 37])
    depths = np.zeros(max([les.lesion_id for les in lesions], default=0) + 1, dtype=np.float32)
    for les in lesions:
        les.heterogeneity = float(texture_rng.uniform(*HETEROGENEITY_DEPTH))
        depths[les.lesion_id] = les.heterogeneity
    apply_heterogeneity(canvas.activity, canvas.lesion, depths, pet_grid.spacing, texture_rng)
    physics = {"psf_fwhm_mm": float(rng.uniform(5.0, 7.0)), "noise_cov": float(rng.uniform(0.10, 0.15)),
               "noise_corr_mm": float(rng.uniform(6.0, 9.0))}
    blurred = apply_psf(canvas.activity, pet_grid.spacing, physics["psf_fwhm_mm"])
    pet = add_pet_noise(blurred, pet_grid.spacing, physics["noise_cov"], patient.suv["liver"],
                        physics["noise_corr_mm"], np.random.default_rng([int(seed), 31]))
    ct = render_ct(frame, lesions, ct_grid) if ct_grid is not None else None
    label = (canvas.lesion > 0).astype(np.uint8)
    case = TwinCase(pet=pet, pet_true=canvas.activity, label=label, lesion_ids=canvas.lesion, tissue=canvas.tissue,
                    ct=ct, pet_grid=pet_grid, ct_grid=ct_grid, patient=patient, lesions=lesions, physics=physics)
    case.summary = summarise(case)
    return case


def summarise(case: TwinCase) -> Dict[str, Any]:
    """JSON-safe record of a twin: patient, physics, TMTV and per-lesion volume/SUVmax measured on the grid."""
    voxel_ml = float(np.prod(case.pet_grid.spacing)) / 1000.0
    ids = case.lesion_ids
    counts = np.bincount(ids[ids > 0].ravel(), minlength=len(case.lesions) + 1)
    per = []
    for lesion in case.lesions:
        n = int(counts[lesion.lesion_id]) if lesion.lesion_id < counts.size else 0
        rec = lesion.record()
        rec["voxels"] = n
        rec["measured_ml"] = round(n * voxel_ml, 3)
        rec["measured_suvmax"] = round(float(case.pet[ids == lesion.lesion_id].max()), 3) if n else None
        per.append(rec)
    return {"patient": patient_record(case.patient), "physics": case.physics,
            "tmtv_ml": round(float(case.label.sum()) * voxel_ml, 3), "n_lesions": len(case.lesions),
            "n_lesions_on_grid": int(sum(1 for r in per if r["voxels"] > 0)),
            "suvmax": round(float(case.pet[case.label > 0].max()), 3) if case.label.any() else None,
            "lesions": per}


def twin_grids(size: str, vendor: str) -> Tuple[Grid, Grid]:
    """(PET grid, CT grid) of a DICOM twin: ``wholebody`` (the vendor's clinical grids), ``small`` or ``trunk``."""
    if size == "wholebody":
        return CLINICAL_GRIDS[vendor]
    if size == "small":
        return SMALL_GRIDS
    if size == "trunk":
        return TRUNK_GRIDS
    raise ValueError(f"unknown twin size {size!r}: choose {', '.join(TWIN_SIZES)}")


def twin_difficulty(case: TwinCase) -> float:
    """Share of the lesions on the grid that are small (< 5 ml) or faint (uptake < 2.5 x liver): 0 easy, 1 hard."""
    rows = [r for r in case.summary["lesions"] if r["voxels"] > 0]
    hard = [r for r in rows if r["measured_ml"] < 5.0 or r["suv"] < 2.5 * case.patient.suv["liver"]]
    return round(len(hard) / max(len(rows), 1), 4)


def study_case(seed: int, index: int, grid: Grid = STUDY_GRID) -> TwinCase:
    """Twin ``index`` of a study cohort with ``seed``: body size drawn from ``[seed, index]``, rendered on the study
    crop ``grid`` with a CT on the same grid (``case.ct``, int16 HU, noise-free)."""
    rng = np.random.default_rng([int(seed), int(index)])
    weight, height = float(rng.uniform(50, 110)), float(rng.uniform(1.55, 1.95))
    return make_twin(int(rng.integers(0, 2 ** 31)), weight_kg=round(weight, 1), height_m=round(height, 2),
                     sex="F" if index % 2 else "M", grids=(grid, grid), study=True)
