"""Realistic annotators for twin patients: the clean lesion mask redrawn the way a real reader gets it wrong.

One affected patient gets one error kind (dealt by :func:`clips_nnunet.synthetic.annotation_errors.choose_error_cases`)
and an annotator drawn for it (:func:`annotate`):

* ``convention``: every lesion is redrawn with the annotator's threshold convention (one of :data:`CONVENTIONS`):
  ``41pct_suvmax`` (41 % of the lesion's SUVmax), ``suv2.5``, ``suv4`` or ``percist`` (1.5 x liver mean + 2 liver
  SD, measured in the liver's core), grown within ``CONVENTION_MARGIN_MM`` of the clean lesion and connected to it.
  Lesions whose SUVmax is below the threshold disappear.
* ``missed_lesion``: each lesion is missed with a probability that grows for small volume, low contrast (SUVmax /
  liver) and hard sites (beside bowel, heart, kidneys, in spleen, liver or bone); at least one lesion is missed
  (drawn in proportion to those probabilities) and at least one is kept. Needs two lesions.
* ``physiological``: a hot physiological region is added (brown fat, ureter or renal pelvis, bowel, or bladder
  spill-over): the voxels of that tissue (dilated by one voxel) at SUV >= 2.5, connected to its hottest voxel.
* ``boundary``: every lesion is dilated or eroded by 2.5-6 mm, but by at least one voxel of the grid
  (:func:`boundary_shift_mm`; Euclidean distance in mm from the contour, which lies half a voxel outside the boundary
  voxels' centres). The record keeps the drawn ``distance_mm`` and the ``applied_mm``.
* ``leak``: a lesion's contour leaks into an adjacent organ (liver, spleen, kidney, heart, bowel, stomach, bladder,
  marrow): the organ's voxels within 8-20 mm of the lesion.
* ``sloppy``: the issue's combined reader, three errors in the same patient, each with its own draw (three
  generators spawned from the patient's): ``missed_lesion`` first (the reader overlooks lesions, as above), then
  ``convention`` on the lesions it saw (the missed lesions' voxels stay out), then ``physiological`` (a hot region
  apart from the mask drawn so far). The record's ``details.parts`` says for each part whether it applied, its
  ``changed_voxels`` (against the mask before it) and its details or its ``reason``; the patient counts as
  ``sloppy`` when at least one part applied (a part that cannot apply is recorded, never replaced by another).

No kind falls back to another: when a kind cannot apply (one lesion only, no hot physiological region, no organ
beside a lesion, a convention that reproduces the clean mask), the record says ``applied: false`` with the reason,
``kind`` is ``None`` and the mask stays clean. Records are per patient (kind, annotator, changed voxels, details) and
per lesion (status: ``kept``, ``missed``, ``dropped_by_threshold``, ``eroded_away``; miss probability, threshold).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from clips_nnunet.synthetic.annotation_errors import validate_kinds
from clips_nnunet.synthetic.twin_anatomy import TISSUES

TWIN_ERROR_KINDS = ("convention", "missed_lesion", "physiological", "boundary", "leak", "sloppy")
#: the parts of the ``sloppy`` reader, in the order it applies them
SLOPPY_PARTS = ("missed_lesion", "convention", "physiological")
CONVENTIONS = ("41pct_suvmax", "suv2.5", "suv4", "percist")
CONVENTION_MARGIN_MM = 8.0
HARD_SITES = ("mesenteric", "paracardiac", "hilar_R", "hilar_L", "splenic_hilum", "coeliac", "paraaortic_L",
              "paraaortic_R", "bowel", "stomach", "spleen", "liver", "bone_spine", "bone_pelvis", "retrocrural")
PHYSIOLOGICAL = ("brown_fat", "ureter", "bowel", "bladder")
LEAK_ORGANS = ("liver", "spleen", "kidney", "myocardium", "bowel", "stomach", "bladder", "marrow")
_S26 = np.ones((3, 3, 3), dtype=bool)


def liver_reference(suv: np.ndarray, tissue: np.ndarray) -> Tuple[float, float]:
    """(mean, SD) of SUV in the liver's core (liver voxels two voxels from its edge; the whole liver if none)."""
    liver = tissue == TISSUES["liver"]
    core = ndimage.binary_erosion(liver, iterations=2) if liver.sum() > 200 else liver
    values = suv[core if core.any() else liver]
    if values.size == 0:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std())


def convention_threshold(method: str, lesion_suvmax: float, liver: Tuple[float, float]) -> float:
    """The SUV threshold of a convention for one lesion."""
    if method == "41pct_suvmax":
        return 0.41 * lesion_suvmax
    if method == "suv2.5":
        return 2.5
    if method == "suv4":
        return 4.0
    if method == "percist":
        return 1.5 * liver[0] + 2.0 * liver[1]
    raise ValueError(f"unknown convention {method!r}: choose from {', '.join(CONVENTIONS)}")


def miss_probability(volume_ml: float, contrast: float, site: str) -> float:
    """Probability that a reader misses a lesion: logistic in log volume, contrast (SUVmax / liver) and site."""
    logit = -0.2 - 1.1 * np.log(max(volume_ml, 0.05)) - 0.9 * (contrast - 2.0) + (1.0 if site in HARD_SITES else 0.0)
    return float(np.clip(1.0 / (1.0 + np.exp(-logit)), 0.01, 0.95))


def _lesion_table(ids: np.ndarray, suv: np.ndarray, voxel_ml: float, sites: Dict[int, str],
                  liver_mean: float) -> List[Dict[str, Any]]:
    objects = ndimage.find_objects(ids.astype(np.int32))
    table = []
    for i, box in enumerate(objects, start=1):
        if box is None:
            continue
        inside = ids[box] == i
        smax = float(suv[box][inside].max())
        table.append({"lesion_id": i, "site": sites.get(i, "unknown"), "volume_ml": round(int(inside.sum()) *
                      voxel_ml, 3), "suvmax": round(smax, 3), "contrast": round(smax / max(liver_mean, 1e-3), 3),
                      "status": "kept", "box": box})
    return table


def _grow_box(box, shape, pad: int):
    return tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(box, shape))


def _convention(ids, suv, spacing, table, liver, rng) -> Tuple[np.ndarray, Dict[str, Any]]:
    method = str(rng.choice(CONVENTIONS))
    out = np.zeros(ids.shape, dtype=bool)
    pad = int(np.ceil(CONVENTION_MARGIN_MM / min(spacing))) + 1
    for row in table:
        t = convention_threshold(method, row["suvmax"], liver)
        row["threshold"] = round(float(t), 3)
        box = _grow_box(row["box"], ids.shape, pad)
        lesion = ids[box] == row["lesion_id"]
        near = ndimage.distance_transform_edt(~lesion, sampling=spacing) <= CONVENTION_MARGIN_MM
        hot = near & (suv[box] >= t)
        comps, _ = ndimage.label(hot, structure=_S26)
        keep = np.unique(comps[lesion & hot])
        region = np.isin(comps, keep[keep > 0])
        if not region.any():
            row["status"] = "dropped_by_threshold"
        out[box] |= region
    return out, {"convention": method, "liver_mean": round(liver[0], 3), "liver_sd": round(liver[1], 3)}


def _missed(ids, table, rng) -> Tuple[Optional[np.ndarray], Dict[str, Any]]:
    if len(table) < 2:
        return None, {"reason": f"{len(table)} lesion(s) on the grid: a miss needs two (one must stay)"}
    p = np.array([miss_probability(r["volume_ml"], r["contrast"], r["site"]) for r in table])
    missed = rng.random(len(table)) < p
    forced = False
    if not missed.any():
        missed[int(rng.choice(len(table), p=p / p.sum()))] = True
        forced = True
    if missed.all():
        missed[int(np.argmax([r["volume_ml"] for r in table]))] = False
    for row, pr, m in zip(table, p, missed):
        row["miss_probability"] = round(float(pr), 4)
        row["status"] = "missed" if m else "kept"
    gone = [r["lesion_id"] for r, m in zip(table, missed) if m]
    return (ids > 0) & ~np.isin(ids, gone), {"missed_lesions": len(gone), "forced_one": forced}


def _physiological(mask, suv, tissue, rng) -> Tuple[Optional[np.ndarray], Dict[str, Any]]:
    near_lesion = ndimage.binary_dilation(mask, _S26, iterations=1) if mask.any() else mask
    options = []
    for name in PHYSIOLOGICAL:
        ids = [TISSUES[name]] + ([TISSUES["collecting"]] if name == "ureter" else [])
        region = ndimage.binary_dilation(np.isin(tissue, ids), _S26, iterations=1)
        hot = region & (suv >= 2.5) & ~near_lesion
        if name == "bladder":  # spill-over: the halo around the bladder, not the bladder itself
            hot &= tissue != TISSUES["bladder"]
        if hot.any():
            options.append((name, hot))
    if not options:
        return None, {"reason": "no hot physiological region (brown fat, ureter, bowel, bladder spill-over) at "
                                "SUV >= 2.5 apart from the lesions"}
    name, hot = options[int(rng.integers(len(options)))]
    comps, _ = ndimage.label(hot, structure=_S26)
    peak = np.unravel_index(np.argmax(np.where(hot, suv, -np.inf)), suv.shape)
    region = comps == comps[peak]
    return mask | region, {"tissue": name, "added_voxels": int(region.sum()),
                           "region_suv_max": round(float(suv[region].max()), 3),
                           "available": [n for n, _ in options]}


def boundary_shift_mm(drawn_mm: float, spacing: Sequence[float]) -> float:
    """The contour shift applied on a grid: the annotator's ``drawn_mm``, but at least one voxel (the finest
    spacing), so that a few-mm dilation or erosion changes the mask on a coarse grid as it does on the clinical one
    (a 3 mm shift on 8 mm voxels would otherwise reproduce the clean mask)."""
    return max(float(drawn_mm), float(min(spacing)))


def _boundary(mask, spacing, table, ids, rng) -> Tuple[Optional[np.ndarray], Dict[str, Any]]:
    d = float(rng.uniform(2.5, 6.0))
    direction = str(rng.choice(("dilate", "erode")))
    applied = boundary_shift_mm(d, spacing)
    edge = applied + 0.5 * min(spacing)  # the contour lies half a voxel outside the boundary voxels' centres
    if direction == "dilate":
        out = ndimage.distance_transform_edt(~mask, sampling=spacing) <= edge
    else:
        out = ndimage.distance_transform_edt(mask, sampling=spacing) > edge
        for row in table:
            if not out[ids == row["lesion_id"]].any():
                row["status"] = "eroded_away"
    return out, {"direction": direction, "distance_mm": round(d, 2), "applied_mm": round(applied, 2)}


def _leak(mask, tissue, spacing, table, ids, rng) -> Tuple[Optional[np.ndarray], Dict[str, Any]]:
    options = []
    for row in table:
        box = _grow_box(row["box"], ids.shape, int(np.ceil(20.0 / min(spacing))) + 1)
        dist = ndimage.distance_transform_edt(ids[box] != row["lesion_id"], sampling=spacing)
        for organ in LEAK_ORGANS:
            organ_vox = tissue[box] == TISSUES[organ]
            if (organ_vox & (dist <= 8.0)).any():
                options.append((row, organ, box, dist, organ_vox))
    if not options:
        return None, {"reason": "no lesion within 8 mm of an organ it could leak into (" + ", ".join(LEAK_ORGANS)
                                + ")"}
    row, organ, box, dist, organ_vox = options[int(rng.integers(len(options)))]
    reach = float(rng.uniform(8.0, 20.0))
    out = mask.copy()
    added = organ_vox & (dist <= reach) & ~mask[box]
    out[box] |= added
    row["leaked_into"] = organ
    return out, {"lesion_id": row["lesion_id"], "organ": organ, "reach_mm": round(reach, 2),
                 "added_voxels": int(added.sum())}


def _sloppy(ids, suv, tissue, spacing, table, liver, rng) -> Tuple[Optional[np.ndarray], Dict[str, Any]]:
    """Misses, then the convention on the lesions seen, then a physiological inclusion, each with its own generator."""
    r_miss, r_conv, r_phys = rng.spawn(3)
    parts: Dict[str, Dict[str, Any]] = {}

    def record(name: str, before: np.ndarray, after: Optional[np.ndarray], details: Dict[str, Any]) -> np.ndarray:
        changed = 0 if after is None else int(np.count_nonzero(after != before))
        if after is not None and changed == 0:
            details["reason"] = f"{name} reproduces the mask here (0 voxels changed)"
        applied = after is not None and changed > 0
        parts[name] = {"applied": applied, "changed_voxels": changed, **details}
        return after if applied else before

    mask = ids > 0
    seen = record("missed_lesion", mask, *_missed(ids, table, r_miss))
    missed = np.isin(ids, [r["lesion_id"] for r in table if r["status"] == "missed"])
    kept_ids = np.where(seen, ids, 0)
    drawn, details = _convention(kept_ids, suv, spacing, [r for r in table if r["status"] != "missed"], liver, r_conv)
    drawn = record("convention", seen, drawn & ~missed, details)
    out = record("physiological", drawn, *_physiological(drawn, suv, tissue, r_phys))
    if not any(p["applied"] for p in parts.values()):
        return None, {"reason": "no part of the sloppy reader applied: " + "; ".join(
            f"{k}: {p['reason']}" for k, p in parts.items()), "parts": parts}
    return out, {"parts": parts, "order": list(SLOPPY_PARTS)}


def annotate(lesion_ids: np.ndarray, suv: np.ndarray, tissue: np.ndarray, spacing: Sequence[float], kind: str,
             rng: np.random.Generator, sites: Optional[Dict[int, str]] = None) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Return ``(annotated mask as uint8, record)`` for one patient annotated with an error of ``kind``.

    ``lesion_ids`` (int, 0 = background) is the clean truth with one id per lesion, ``suv`` the PET in SUV,
    ``tissue`` the twin's tissue map, ``spacing`` (z, y, x) mm, ``sites`` the lesion sites by id. The record is
    JSON-safe: ``kind`` (``None`` when it could not apply), ``requested_kind``, ``applied``, ``reason`` (when not
    applied), ``changed_voxels``, the kind's ``details`` and ``lesions`` (one row per lesion on the grid).
    """
    validate_kinds([kind], TWIN_ERROR_KINDS)
    if not isinstance(rng, np.random.Generator):
        raise TypeError("rng must be a numpy.random.Generator (np.random.default_rng(seed))")
    ids = np.asarray(lesion_ids)
    if ids.shape != np.shape(suv) or ids.shape != np.shape(tissue):
        raise ValueError(f"lesion ids {ids.shape}, suv {np.shape(suv)} and tissue {np.shape(tissue)} differ")
    spacing = tuple(float(s) for s in spacing)
    mask = ids > 0
    liver = liver_reference(suv, tissue)
    table = _lesion_table(ids, suv, float(np.prod(spacing)) / 1000.0, sites or {}, liver[0])
    if kind == "convention":
        out, details = _convention(ids, suv, spacing, table, liver, rng)
    elif kind == "missed_lesion":
        out, details = _missed(ids, table, rng)
    elif kind == "physiological":
        out, details = _physiological(mask, suv, tissue, rng)
    elif kind == "boundary":
        out, details = _boundary(mask, spacing, table, ids, rng)
    elif kind == "leak":
        out, details = _leak(mask, tissue, spacing, table, ids, rng)
    else:
        out, details = _sloppy(ids, suv, tissue, spacing, table, liver, rng)
    changed = 0 if out is None else int(np.count_nonzero(out != mask))
    if out is not None and changed == 0:
        details["reason"] = f"{kind} reproduces the clean mask here (0 voxels changed)"
        out = None
    for row in table:
        row.pop("box")
    record: Dict[str, Any] = {"kind": kind if out is not None else None, "requested_kind": kind,
                              "applied": out is not None, "changed_voxels": changed, "lesions": table}
    if out is None:
        record["reason"] = details.pop("reason")
    record["details"] = details
    return (mask if out is None else out).astype(np.uint8), record
