"""Planted annotation errors: turn a clean lesion mask into the kind of wrong mask real cohorts contain.

Pure numpy/scipy maths on (z, y, x) arrays, used by both synthetic generators (:mod:`clips_nnunet.synthetic.raw`
and :mod:`clips_nnunet.synthetic.dicom_cohort`) to build cohorts with known badly annotated patients. The kinds are
the classic ones of lymphoma PET/CT cohorts:

* ``missed_lesion``: the smallest lesion (connected component, 26-connectivity) is left out; with four or more
  lesions, the two smallest. Needs at least two lesions (a patient whose only lesion is missed is another story).
* ``threshold``: every lesion is redrawn with another SUV threshold convention, grown inside a margin of
  ``THRESHOLD_MARGIN_VOX`` voxels around the clean lesion: ``41pct_suvmax`` (41 % of the lesion's SUVmax),
  ``suv2.5`` (SUV >= 2.5) or ``suv4`` (SUV >= 4). Lesions below the threshold disappear.
* ``physiological``: a hot physiological region (bladder, brain, brown-fat-like) is added to the mask: the
  connected region of unlabelled voxels at >= 50 % of the hottest unlabelled SUV that holds that hottest voxel
  (voxels within two voxels of a lesion are not candidates), or an explicit ``hot_region``.
* ``slice_shift``: the whole mask is moved by one or two slices along z (axis 0), zero-filled at the edge.

A ``threshold`` or ``slice_shift`` error that changes fewer than ``MIN_CHANGED_FRACTION`` of the clean lesion voxels
(e.g. a 41 % threshold on a lesion with sharp edges) is not an annotation error worth planting:
:func:`plant_annotation_error` then tries the other variants of the kind, then the other kinds in random order,
and records what it actually planted.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

ERROR_KINDS = ("missed_lesion", "threshold", "physiological", "slice_shift")
THRESHOLD_METHODS = ("41pct_suvmax", "suv2.5", "suv4")
THRESHOLD_MARGIN_VOX = 2
MIN_CHANGED_FRACTION = 0.1
REGION_KINDS = ("missed_lesion", "physiological")  # whole regions: any size counts
_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


def validate_kinds(kinds: Sequence[str], known: Sequence[str] = ERROR_KINDS) -> Tuple[str, ...]:
    """``kinds`` as a tuple of ``known`` error kinds (default: this module's), or ``ValueError`` naming the unknown
    ones."""
    kinds = tuple(str(k).strip() for k in kinds)
    bad = [k for k in kinds if k not in known]
    if bad or not kinds:
        raise ValueError(f"unknown or no annotation error kind(s) {bad or list(kinds)}: choose from "
                         f"{', '.join(known)}")
    return kinds


def _components(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    labels, n = ndimage.label(mask, structure=_STRUCTURE_26)
    return labels, int(n)


def _check(label: np.ndarray, suv: Optional[np.ndarray]) -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"label must be a 3-D (z, y, x) array, got shape {label.shape}")
    if suv is not None and np.shape(suv) != label.shape:
        raise ValueError(f"suv shape {np.shape(suv)} differs from the label shape {label.shape}")
    return label > 0


def miss_small_lesions(label: np.ndarray, n_missed: int = 1) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Remove the ``n_missed`` smallest lesions (ties: the later one in label order); keeps at least one lesion."""
    mask = _check(label, None)
    comps, n = _components(mask)
    if n < 2:
        return mask.copy(), {"removed_lesions": 0, "removed_voxels": 0}
    sizes = np.bincount(comps.ravel(), minlength=n + 1)[1:]
    order = sorted(range(n), key=lambda i: (sizes[i], -i))[: min(int(n_missed), n - 1)]
    removed = np.isin(comps, [i + 1 for i in order])
    return mask & ~removed, {"removed_lesions": len(order), "removed_voxels": int(removed.sum())}


def threshold_mask(label: np.ndarray, suv: np.ndarray, method: str,
                   margin_vox: int = THRESHOLD_MARGIN_VOX) -> np.ndarray:
    """Redraw each lesion of ``label`` with the SUV threshold ``method`` inside ``margin_vox`` voxels around it.

    The new lesion is the part of ``{SUV >= t}`` within the margin that is connected to a voxel of the clean lesion
    (so neighbouring hot organs are not swept in beyond the margin). ``t`` is 0.41 x the lesion's SUVmax for
    ``41pct_suvmax``, 2.5 for ``suv2.5`` and 4.0 for ``suv4``.
    """
    mask = _check(label, suv)
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method {method!r}: choose from {', '.join(THRESHOLD_METHODS)}")
    suv = np.asarray(suv, dtype=np.float64)
    comps, n = _components(mask)
    out = np.zeros(mask.shape, dtype=bool)
    for i in range(1, n + 1):
        lesion = comps == i
        t = 0.41 * float(suv[lesion].max()) if method == "41pct_suvmax" else (2.5 if method == "suv2.5" else 4.0)
        region = ndimage.binary_dilation(lesion, _STRUCTURE_26, iterations=margin_vox) if margin_vox else lesion
        hot = region & (suv >= t)
        hot_comps, _ = _components(hot)
        keep = np.unique(hot_comps[lesion & hot])
        out |= np.isin(hot_comps, keep[keep > 0])
    return out


def hottest_unlabelled_region(label: np.ndarray, suv: np.ndarray, fraction: float = 0.5,
                              exclusion_vox: int = 2) -> np.ndarray:
    """The connected region of unlabelled voxels at >= ``fraction`` x the hottest unlabelled SUV that contains the
    hottest unlabelled voxel; voxels within ``exclusion_vox`` of a lesion are not candidates. Empty if none."""
    mask = _check(label, suv)
    suv = np.asarray(suv, dtype=np.float64)
    near = ndimage.binary_dilation(mask, _STRUCTURE_26, iterations=exclusion_vox) if mask.any() else mask
    free = ~near
    if not free.any():
        return np.zeros(mask.shape, dtype=bool)
    peak_index = np.unravel_index(np.argmax(np.where(free, suv, -np.inf)), suv.shape)
    peak = float(suv[peak_index])
    if not np.isfinite(peak) or peak <= 0:
        return np.zeros(mask.shape, dtype=bool)
    comps, _ = _components(free & (suv >= fraction * peak))
    return comps == comps[peak_index]


def shift_slices(label: np.ndarray, shift: int) -> np.ndarray:
    """``label > 0`` moved by ``shift`` slices along axis 0 (z), with empty slices entering at the edge."""
    mask = _check(label, None)
    out = np.zeros_like(mask)
    s = int(shift)
    if s == 0:
        return mask.copy()
    if abs(s) >= mask.shape[0]:
        return out
    if s > 0:
        out[s:] = mask[:-s]
    else:
        out[:s] = mask[-s:]
    return out


def _variants(kind: str, label: np.ndarray, suv: Optional[np.ndarray], rng: np.random.Generator,
              hot_region: Optional[np.ndarray]) -> List[Tuple[np.ndarray, Dict[str, Any]]]:
    """Candidate erroneous masks of ``kind``, in the order the generator draws them (first = preferred)."""
    mask = label > 0
    if kind == "missed_lesion":
        n = _components(mask)[1]
        if n < 2:
            return []
        return [miss_small_lesions(mask, 2 if n >= 4 else 1)]
    if kind == "threshold":
        if suv is None:
            return []
        return [(threshold_mask(mask, suv, m), {"method": m}) for m in rng.permutation(THRESHOLD_METHODS)]
    if kind == "physiological":
        region = hot_region if hot_region is not None else (
            hottest_unlabelled_region(mask, suv) if suv is not None else None)
        if region is None or not np.any(region):
            return []
        region = np.asarray(region, dtype=bool) & ~mask
        detail: Dict[str, Any] = {"added_voxels": int(region.sum())}
        if suv is not None:
            detail["region_suv_max"] = float(np.asarray(suv)[region].max())
        return [(mask | region, detail)]
    if kind == "slice_shift":
        shifts = [int(s) * int(rng.choice((-1, 1))) for s in rng.permutation((1, 2))]
        return [(shift_slices(mask, s), {"shift_slices": s}) for s in shifts]
    raise ValueError(f"unknown annotation error kind {kind!r}: choose from {', '.join(ERROR_KINDS)}")


def plant_annotation_error(label: np.ndarray, kind: str, rng: np.random.Generator, suv: Optional[np.ndarray] = None,
                           hot_region: Optional[np.ndarray] = None, fallback_kinds: Sequence[str] = ERROR_KINDS,
                           min_changed_fraction: float = MIN_CHANGED_FRACTION) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Return ``(erroneous mask as uint8, record)`` for one case.

    ``record`` is JSON-safe: ``kind`` actually planted (``None`` when no kind applies: no second lesion to miss, no
    hot region, no threshold or shift changing ``min_changed_fraction`` of the lesion voxels), ``requested_kind``,
    ``changed_voxels`` (voxels whose label differs from the clean one) and the kind's details (threshold method,
    slices shifted, ...).
    ``suv`` (same shape, SUV) is needed by ``threshold`` and, without ``hot_region``, by ``physiological``.
    """
    mask = _check(label, suv)
    if not isinstance(rng, np.random.Generator):
        raise TypeError("rng must be a numpy.random.Generator (np.random.default_rng(seed))")
    validate_kinds([kind])
    others = [k for k in validate_kinds(fallback_kinds) if k != kind]
    order = [kind] + [str(k) for k in rng.permutation(others)] if others else [kind]
    need = max(1, int(np.ceil(min_changed_fraction * max(int(mask.sum()), 1))))
    for k in order:
        for candidate, detail in _variants(k, mask, suv, rng, hot_region):
            changed = int(np.count_nonzero(candidate != mask))
            if changed >= (1 if k in REGION_KINDS else need):
                return candidate.astype(np.uint8), {"kind": k, "requested_kind": kind, "changed_voxels": changed,
                                                    **detail}
    return mask.astype(np.uint8), {"kind": None, "requested_kind": kind, "changed_voxels": 0}


def choose_error_cases(case_ids: Sequence[str], fraction: float, kinds: Sequence[str],
                       rng: np.random.Generator, known: Sequence[str] = ERROR_KINDS) -> Dict[str, str]:
    """``{case_id: kind}`` for ``round(fraction * len(case_ids))`` cases drawn without replacement; kinds are dealt
    in turn from a shuffled ``kinds`` so that each kind is planted about equally often. ``known``: the valid kinds
    (this module's, or the twin annotators' :data:`~clips_nnunet.synthetic.twin_annotators.TWIN_ERROR_KINDS`)."""
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"label error fraction must be in [0, 1], got {fraction!r}")
    kinds = validate_kinds(kinds, known)
    ids = list(case_ids)
    n = int(round(float(fraction) * len(ids)))
    if n == 0:
        return {}
    chosen = [ids[i] for i in sorted(rng.choice(len(ids), size=n, replace=False))]
    dealt = list(rng.permutation(kinds))
    return {c: str(dealt[i % len(dealt)]) for i, c in enumerate(chosen)}
