"""A tiny synthetic 2-channel (CT-like + PET-like) nnU-Net raw dataset with lesions of known difficulty.

Used by tests and benchmarks of the trainers, where DICOM conversion would only cost time. Easy cases carry one
large, high-contrast lesion; hard cases carry small, faint lesions. ``case_metadata.json`` records the planted
difficulty so curriculum tests can check that easy cases are sampled before hard ones: the hardest cases are the
planted *hard but correctly annotated* patients.

With ``label_error_fraction > 0`` a fraction of the training cases gets a planted annotation error
(:mod:`clips_nnunet.synthetic.annotation_errors`) in ``labelsTr``, and every case also carries a bladder-like
physiological hot region near the bottom of the volume (never labelled in the clean masks). The clean masks and each
case's error are written *beside* the dataset, never inside it: ``<raw_root>/../clips_truth/Dataset{id}_{name}/``
holds ``labels_clean/{case}.nii.gz`` (all cases) and ``annotation_errors.json`` (see :func:`truth_dir`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from clips_nnunet.dataset_conversion.channels import CHANNEL_NAMES
from clips_nnunet.dataset_conversion.write import write_image
from clips_nnunet.io_utils import atomic_write_json
from clips_nnunet.synthetic.annotation_errors import ERROR_KINDS, choose_error_cases, plant_annotation_error

TRUTH_DIR = "clips_truth"
ERRORS_JSON = "annotation_errors.json"
BLADDER_SUV = 6.0


def _sphere(shape: Tuple[int, int, int], centre: np.ndarray, radius: float) -> np.ndarray:
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2


def make_case(rng: np.random.Generator, shape: Tuple[int, int, int], difficulty: float
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CT (HU), PET (SUV) and label volumes (z, y, x) for one case; ``difficulty`` in [0, 1] (1 = hardest)."""
    shape = tuple(int(s) for s in shape)
    centre = np.array(shape) / 2.0
    zz, yy, xx = np.indices(shape)
    body = ((yy - centre[1]) / (shape[1] * 0.42)) ** 2 + ((xx - centre[2]) / (shape[2] * 0.45)) ** 2 <= 1.0
    ct = np.where(body, 40.0, -1000.0) + rng.normal(0, 15, shape)
    pet = np.where(body, 1.0, 0.05) + np.abs(rng.normal(0, 0.15 + 0.25 * difficulty, shape))
    label = np.zeros(shape, dtype=np.uint8)
    n_lesions = 1 + int(round(2 * difficulty))
    radius = max(1.5, (0.2 - 0.12 * difficulty) * min(shape))
    contrast = 8.0 - 6.0 * difficulty
    for _ in range(n_lesions):
        lesion_centre = centre + rng.uniform(-0.25, 0.25, 3) * np.array(shape)
        lesion = _sphere(shape, lesion_centre, radius) & body
        label[lesion] = 1
        pet[lesion] += contrast
        ct[lesion] = 30.0 + rng.normal(0, 10, int(lesion.sum()))
    return ct.astype(np.float32), pet.astype(np.float32), label


def add_bladder(pet: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Add a bladder-like hot ellipsoid (SUV + ``BLADDER_SUV``) low in z, two voxels or more from the lesions; returns
    the region."""
    shape = pet.shape
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    region = (((zz - 0.12 * shape[0]) / (0.07 * shape[0])) ** 2 + ((yy - 0.55 * shape[1]) / (0.12 * shape[1])) ** 2
              + ((xx - 0.5 * shape[2]) / (0.12 * shape[2])) ** 2) <= 1.0
    region &= ~ndimage.binary_dilation(label > 0, iterations=2)  # apart from the lesions, as in a body
    pet[region] += BLADDER_SUV
    return region


def _twin_case(seed: int, index: int, shape: Sequence[int], spacing: Sequence[float], kind: Optional[str]
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray, Dict[str, Any]]:
    """(CT, PET, clean label, difficulty, annotated label, error record) of twin case ``index``."""
    from clips_nnunet.synthetic.twin import Grid, study_case, twin_difficulty
    from clips_nnunet.synthetic.twin_annotators import annotate

    case = study_case(seed, index, Grid(tuple(int(n) for n in shape), tuple(float(s) for s in spacing)))
    noise = np.random.default_rng([seed, index, 3]).normal(0.0, 12.0, case.ct.shape)
    ct = (case.ct.astype(np.float32) + noise).astype(np.float32)
    annotated, record = case.label, {"kind": None}
    if kind:
        sites = {les.lesion_id: les.site for les in case.lesions}
        annotated, record = annotate(case.lesion_ids, case.pet, case.tissue, spacing, kind,
                                     np.random.default_rng([seed, 1, index]), sites=sites)
    return ct, case.pet, case.label, twin_difficulty(case), annotated, record


def truth_dir(raw_root: Path, dataset_id: int, name: str) -> Path:
    """Where :func:`make_synthetic_raw_dataset` keeps the clean masks and planted errors (outside nnUNet_raw)."""
    return Path(raw_root).resolve().parent / TRUTH_DIR / f"Dataset{dataset_id:03d}_{name}"


def _write(array: np.ndarray, spacing: Sequence[float], path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    write_image(image, path)


def make_synthetic_raw_dataset(raw_root: Path, dataset_id: int = 990, name: str = "ClipsTiny",
                               n_train: int = 12, n_test: int = 2, shape: Optional[Tuple[int, int, int]] = None,
                               spacing: Optional[Tuple[float, float, float]] = None, seed: int = 0,
                               label_error_fraction: float = 0.0, label_error_kinds: Optional[Sequence[str]] = None,
                               physiological_uptake: Optional[bool] = None, phantom: str = "box") -> Path:
    """Write ``Dataset{id}_{name}`` under ``raw_root`` and return its folder.

    Difficulty rises linearly over the training cases (``case_0000`` easiest). Test cases go to imagesTs with their
    labels in labelsTs (so evaluation can be checked). Channel names follow the converter: CT and PET both use
    nnU-Net's CT normalisation.

    ``label_error_fraction`` of the training cases (rounded) get a planted annotation error of one of
    ``label_error_kinds`` (dealt in turn), drawn from ``numpy.random.default_rng([seed, 1])`` so the images and
    clean masks do not depend on it. ``physiological_uptake`` (default: on when errors are planted) adds the
    bladder-like region to every PET. Clean masks and errors go to :func:`truth_dir`.

    ``phantom="twin"``: every case is a whole-body twin (:func:`clips_nnunet.synthetic.twin.study_case`) cropped
    from the skull base to the thighs on the study grid (default :data:`~clips_nnunet.synthetic.twin.STUDY_GRID`,
    8 mm; ``shape`` and ``spacing`` change it), with its physiological uptake always on; errors are the realistic
    annotators' kinds (:data:`~clips_nnunet.synthetic.twin_annotators.TWIN_ERROR_KINDS`), and
    ``planted_difficulty`` is the share of small or faint lesions
    (:func:`~clips_nnunet.synthetic.twin.twin_difficulty`).
    """
    if phantom not in ("box", "twin"):
        raise ValueError(f"unknown phantom {phantom!r}: choose box or twin")
    if phantom == "twin":
        from clips_nnunet.synthetic.twin import STUDY_GRID

        shape, spacing = tuple(shape or STUDY_GRID.shape), tuple(spacing or STUDY_GRID.spacing)
        physiological_uptake = True
    shape, spacing = tuple(shape or (32, 32, 32)), tuple(spacing or (4.0, 4.0, 4.0))
    known = ERROR_KINDS
    if phantom == "twin":
        from clips_nnunet.synthetic.twin_annotators import TWIN_ERROR_KINDS as known
    label_error_kinds = tuple(label_error_kinds or known)
    rng = np.random.default_rng(seed)
    error_rng = np.random.default_rng([seed, 1])
    if physiological_uptake is None:
        physiological_uptake = label_error_fraction > 0
    planned = choose_error_cases([f"case_{i:04d}" for i in range(n_train)], label_error_fraction,
                                 label_error_kinds, error_rng, known=known)
    truth = truth_dir(raw_root, dataset_id, name)
    errors: Dict[str, Any] = {}
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    metadata: Dict[str, dict] = {}
    cases = [(f"case_{i:04d}", "Tr", i / max(1, n_train - 1)) for i in range(n_train)]
    cases += [(f"case_{n_train + i:04d}", "Ts", rng.uniform(0, 1)) for i in range(n_test)]
    for index, (case_id, split, difficulty) in enumerate(cases):
        if phantom == "twin":
            ct, pet, label, difficulty, annotated, record = _twin_case(seed, index, shape, spacing,
                                                                       planned.get(case_id))
        else:
            ct, pet, label = make_case(rng, shape, difficulty)
            hot = add_bladder(pet, label) if physiological_uptake else None
            annotated, record = label, {"kind": None}
            if case_id in planned:
                annotated, record = plant_annotation_error(label, planned[case_id], error_rng, suv=pet,
                                                           hot_region=hot, fallback_kinds=label_error_kinds)
        _write(ct, spacing, folder / f"images{split}" / f"{case_id}_0000.nii.gz")
        _write(pet, spacing, folder / f"images{split}" / f"{case_id}_0001.nii.gz")
        _write(annotated, spacing, folder / f"labels{split}" / f"{case_id}.nii.gz")
        _write(label, spacing, truth / "labels_clean" / f"{case_id}.nii.gz")
        errors[case_id] = {**record, "split": split, "planted_difficulty": float(difficulty)}
        metadata[case_id] = {"planted_difficulty": float(difficulty), "split": split,
                             "tmtv_ml": float(annotated.sum() * np.prod(spacing) / 1000.0)}
    atomic_write_json(folder / "dataset.json", {
        "channel_names": dict(CHANNEL_NAMES),
        "labels": {"background": 0, "lesion": 1},
        "numTraining": n_train,
        "file_ending": ".nii.gz",
        "name": name,
        "description": f"clips-nnunet synthetic PET/CT dataset, {phantom} phantom (channel 1 is PET in SUV; CT "
                       "normalisation)",
    })
    atomic_write_json(folder / "case_metadata.json", metadata)
    atomic_write_json(truth / ERRORS_JSON, {
        "dataset": folder.name, "seed": seed, "label_error_fraction": float(label_error_fraction),
        "label_error_kinds": list(label_error_kinds), "physiological_uptake": bool(physiological_uptake),
        "phantom": phantom,
        "cases": errors})
    return folder
