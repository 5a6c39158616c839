"""Annotation audit maths: evidence that a reference mask is wrong, from out-of-fold predictions and the PET.

Arrays and spacing in, numbers out; no I/O (the command, reading and the HTML report are in
:mod:`clips_nnunet.audit.page`). All arrays are (z, y, x) on one grid; volumes in ml.

Evidence of one case (:func:`case_evidence`), from the reference ``R``, the out-of-fold prediction ``P``, the
optional foreground probability ``p`` (nnU-Net ``--npz``, or the vote fraction of several cross-validations) and the
optional PET ``SUV``:

* lesions are connected components (:func:`clips_nnunet.metrics.lesions.label_components`, 26-connectivity). A reference
  lesion is **missed** when less than ``match_fraction`` of its voxels are predicted; a predicted lesion is
  **extra** when less than ``match_fraction`` of its voxels are in the reference. The rest are *matched*.
* ``ref_missed_*``: reference lesions the model misses. Each counts with the weight
  ``max(absent confidence x brightness, cold fraction)``: absent confidence = 1 when the mean ``p`` inside is <= 0.1,
  0 when >= 0.4, linear between (1 without probabilities); brightness = 0 at SUVmax <= the liver-like level, 1 at
  >= ``bright_factor`` (3) x it (a faint lesion is a plausible miss of a weak model: a hard case; a bright region the
  model confidently rejects is not); cold fraction = share of its voxels at background SUV (below). Unless cold,
  the weight is multiplied by the model's *competence* on the case: the matched share of the case's other reference
  lesions (1 when there is no other lesion): a model that finds a patient's other lesions and rejects this one
  speaks against the reference, one that misses most of them is a weak model on a hard case.
* ``ref_deep_ml`` / ``pred_deep_ml``: voxels of matched lesions in one mask only and more than one voxel away from
  the other mask (beyond boundary noise: a physiological region merged with a lesion, a lesion drawn far too
  tight), weighted voxel by voxel as above (absent or present confidence, brightness or hotness, coldness).
  Weighted volume = ``ref_missed_confident_ml``: evidence of an **extra_region** in the reference.
* ``pred_extra_*``: predicted lesions absent from the reference, weighted by presence confidence (0 at mean ``p``
  <= 0.6, 1 at >= 0.9; 1 without probabilities) times PET hotness (0 at SUVmax <= background, 1 at >= the
  liver-like level; 1 without PET): ``pred_extra_confident_ml``, evidence of a **missed_lesion** in the reference.
* boundary, on matched lesions: ``boundary_volume_ratio`` = reference / predicted volume (1 = same size),
  ``boundary_disagreement`` = (R xor P) / (R or P) volume, and ``boundary_shell`` = (R xor P) voxels / surface
  voxels of R (1 = a whole one-voxel shell differs; size-independent, so small lesions are not penalised), and
  ``boundary_symmetric`` = 2 min(R only, P only) / (R or P): the part that goes both ways, like boundary noise (a
  reference dilated or eroded everywhere is one-sided), and ``boundary_confident`` = the xor weighted by the
  model's confidence (R-only voxels by absent confidence, P-only voxels by presence confidence, ramps as above) per
  surface voxel of R (NaN without probabilities): a model's boundary noise is unconfident, a redrawn outline
  (another threshold convention, a dilation or erosion, a leak into an organ) is not.
* PET plausibility of the reference: ``suv_background`` = median SUV of body voxels (SUV > 0.3 x 90th percentile)
  outside R and P; ``suv_liver_like`` = ``liver_factor`` (2.0) x background unless a measured liver SUV is given
  (no liver mask needed); ``ref_background_fraction`` = share of R voxels below ``background + cold_fraction (0.2)
  x (SUVmax of their lesion - background)`` (labelled voxels at background SUV, relative to the lesion's own uptake
  so that faint, blurred lesions are not penalised: shifted or dilated masks); ``unlabelled_hot_adjacent_ml`` =
  unlabelled voxels within ``adjacent_mm`` (8 mm, between voxel centres) of R at or above the half maximum (above
  background) of the nearest reference lesion (its own uptake left outside the mask: drawn too tight or shifted),
  around lesions at least the volume of a ball of radius ``spill_min_radius_mm`` (8 mm, 2.1 ml; the resolution
  spreads smaller lesions' uptake beyond any correct mask); ``unlabelled_hot_ml`` = other unlabelled voxels above
  the liver-like level in components of >= 3 voxels (physiological uptake included: not scored);
  ``unlabelled_hot_supported_ml`` = hot voxels outside both masks *and more than* ``rim_mm`` (8 mm) from them, in components of >= 3 voxels whose mean ``p`` is >= ``hot_support`` (0.1): hot spots the model half
  sees but neither mask holds (NaN without probabilities). The rim is left out because the blurred uptake and the
  soft probabilities just outside a correctly outlined lesion are hot and half seen too (:func:`remote_supported`).
* physiology against lesion, from the PET's shape (:func:`continuation_share`: the share of a region's unlabelled
  26-neighbours at or above its half level, ``background + 0.5 (median SUV - background)``; a lesion is a focal
  maximum whose blurred uptake falls below half just outside it, an organ's uptake continues):
  ``ref_organ_like`` = the largest weight of a reference region outside the prediction that the model rejects
  (:func:`organ_like_rejected`: each connected region of >= ``min_hot_voxels`` reference-only voxels weighs its mean
  absent confidence x its continuation share; a contour leaking into the liver or the bowel, an included ureter or
  bladder halo), ``ref_organ_like_ml`` = their weighted volume; ``pred_extra_focal`` = the largest weight of a
  predicted lesion absent from the reference x (1 - its continuation share): a focal lesion the reference
  lacks, not a false positive on an organ's uptake (NaN without PET). ``boundary_confident_ref`` and
  ``boundary_confident_pred``: the reference-only and prediction-only parts of ``boundary_confident``.
* ``uncertain_ml``: the rest of the unmatched volume (weight 1 - w): disagreement a weak model explains.

Cohort scoring and the ranking's other cohort-level maths (loss ranks, the model-quality warning, ROC AUC) are
in :mod:`clips_nnunet.audit.scoring`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Sequence

import numpy as np
from scipy import ndimage

from clips_nnunet.metrics.overlap import dice
from clips_nnunet.metrics.lesions import as_binary_mask, label_components, validate_connectivity, validate_spacing

ERROR_KINDS = ("missed_lesion", "extra_region", "boundary", "hard_case", "none")
_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class AuditParams:
    """Tunable constants of the audit (defaults as documented in the module docstring and docs/audit.md)."""
    match_fraction: float = 0.1
    absent_sure: float = 0.1
    absent_unsure: float = 0.4
    present_unsure: float = 0.6
    present_sure: float = 0.9
    liver_factor: float = 2.0
    liver_suv: Optional[float] = None
    min_hot_voxels: int = 3
    adjacent_mm: float = 8.0
    rim_mm: float = 8.0
    bright_factor: float = 3.0
    boundary_weight: float = 0.25
    confident_weight: float = 2.0
    hot_weight: float = 0.5
    hot_support: float = 0.1
    cold_fraction: float = 0.2
    spill_min_radius_mm: float = 8.0
    pet_weight: float = 2.0
    organ_weight: float = 1.0
    focal_weight: float = 1.0
    loss_weight: float = 0.1
    suspicion_threshold: float = 0.1
    hardness_ratio: float = 0.5
    hard_threshold: float = 0.1
    connectivity: int = 26

    def __post_init__(self):
        validate_connectivity(self.connectivity)
        if not 0 < self.match_fraction <= 1:
            raise ValueError(f"match_fraction must be in (0, 1], got {self.match_fraction}")
        if not (0 <= self.absent_sure < self.absent_unsure <= 1 and 0 <= self.present_unsure < self.present_sure <= 1):
            raise ValueError("confidence bounds must satisfy 0 <= absent_sure < absent_unsure <= 1 and "
                             "0 <= present_unsure < present_sure <= 1")
        if self.liver_suv is not None and not self.liver_suv > 0:
            raise ValueError(f"liver_suv must be a positive SUV, got {self.liver_suv}")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _ramp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """0 at ``lo``, 1 at ``hi``, linear between (``hi < lo`` gives the decreasing ramp)."""
    return np.clip((np.asarray(x, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)


def _per_label(labels: np.ndarray, n: int, values: Optional[np.ndarray] = None) -> np.ndarray:
    """Sum of ``values`` (or voxel count) per label 1..n."""
    w = None if values is None else values.ravel().astype(np.float64)
    return np.bincount(labels.ravel(), weights=w, minlength=n + 1)[1:].astype(np.float64)


def _surface_voxels(mask: np.ndarray) -> int:
    """Voxels of ``mask`` with at least one of their 6 face neighbours outside it (volume edge counts as outside)."""
    if not mask.any():
        return 0
    padded = np.pad(mask, 1)
    return int((mask & ~ndimage.binary_erosion(padded)[1:-1, 1:-1, 1:-1]).sum())


def _spill(ref: np.ndarray, ref_lab: np.ndarray, suv: np.ndarray, background: float, ref_max: np.ndarray,
           spacing: Sequence[float], adjacent_mm: float, min_radius_mm: float) -> np.ndarray:
    """Unlabelled voxels within ``adjacent_mm`` (between voxel centres) of the reference at or above the half maximum
    (above background) of the nearest reference lesion: that lesion's own uptake left outside the mask (drawn too
    tight or shifted). Lesions smaller than a ball of radius ``min_radius_mm`` are skipped: the scanner's resolution
    spreads their uptake beyond any correct mask (partial volume)."""
    out = np.zeros(ref.shape, dtype=bool)
    if not ref.any() or adjacent_mm <= 0:
        return out
    reach = np.ceil(adjacent_mm / np.asarray(spacing, dtype=np.float64)).astype(int)
    lo = np.maximum(np.argwhere(ref).min(axis=0) - reach - 1, 0)
    hi = np.argwhere(ref).max(axis=0) + reach + 2
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    dist, idx = ndimage.distance_transform_edt(~ref[box], sampling=spacing, return_indices=True)
    nearest = ref_lab[box][tuple(idx)]
    half = np.concatenate([[np.inf], background + 0.5 * np.maximum(ref_max - background, 0.0)])
    min_voxels = 4.0 / 3.0 * math.pi * min_radius_mm ** 3 / float(np.prod(spacing))
    half[1:][np.bincount(ref_lab.ravel(), minlength=len(half))[1:] < min_voxels] = np.inf
    out[box] = ~ref[box] & (dist <= adjacent_mm) & (suv[box] >= half[nearest])
    return out


def remote_supported(hot: np.ndarray, masks: np.ndarray, prob: np.ndarray, params: AuditParams,
                     spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Hot voxels the model half sees although neither mask holds them, away from the masks' rim.

    The blurred uptake and the soft probabilities around a correctly outlined lesion are hot and half seen just
    outside it (the *probability rim*); they say nothing about a lesion both masks missed. So voxels within
    ``rim_mm`` of ``masks`` (reference or prediction; voxel centres, ``spacing`` (z, y, x) mm) are left out first;
    of what remains, components of >= ``min_hot_voxels`` voxels whose mean probability is >= ``hot_support`` are
    kept."""
    remote = hot & ~masks
    if params.rim_mm > 0 and masks.any():
        remote &= ndimage.distance_transform_edt(~masks, sampling=spacing) > params.rim_mm
    lab, n = label_components(remote, params.connectivity)
    if not n:
        return np.zeros(hot.shape, dtype=bool)
    sizes = _per_label(lab, n)
    support = _per_label(lab, n, prob) / np.maximum(sizes, 1)
    chosen = np.flatnonzero((sizes >= params.min_hot_voxels) & (support >= params.hot_support)) + 1
    return np.isin(lab, chosen)


def pet_reference_levels(suv: np.ndarray, exclude: np.ndarray, liver_factor: float = 2.0,
                         liver_suv: Optional[float] = None) -> Dict[str, float]:
    """``{"suv_background", "suv_liver_like"}``: median SUV of body voxels (SUV > 0.3 x 90th percentile) outside
    ``exclude``, and ``liver_suv`` if given, else ``liver_factor`` x background."""
    suv = np.asarray(suv, dtype=np.float64)
    cut = 0.3 * float(np.percentile(suv, 90))
    body = (suv > cut) & ~exclude
    background = float(np.median(suv[body])) if body.any() else float(np.median(suv))
    liver = float(liver_suv) if liver_suv is not None else liver_factor * background
    return {"suv_background": background, "suv_liver_like": max(liver, background + 1e-6)}


@dataclass
class _Lesions:
    """Connected components of the reference and prediction and which of them the other mask matches."""
    ref_lab: np.ndarray
    nr: int
    pred_lab: np.ndarray
    npr: int
    ref_size: np.ndarray
    pred_size: np.ndarray
    ref_missed: np.ndarray   # per reference lesion: < match_fraction of its voxels predicted
    pred_extra: np.ndarray   # per predicted lesion: < match_fraction of its voxels in the reference
    ref_m: np.ndarray        # voxels of the matched reference lesions
    pred_m: np.ndarray       # voxels of the matched predicted lesions


@dataclass
class _Pet:
    """What the PET says about the lesions (neutral values without PET: every lesion bright and hot, none cold)."""
    levels: Dict[str, float]
    cold: np.ndarray         # labelled voxels at background SUV relative to their lesion's uptake
    cold_frac: np.ndarray    # per reference lesion
    bright: np.ndarray       # per reference lesion: SUVmax from the liver-like level (0) to bright_factor x it (1)
    ref_max: np.ndarray      # per reference lesion SUVmax
    hot_w: np.ndarray        # per predicted lesion: SUVmax from background (0) to the liver-like level (1)


def _checked_inputs(reference, prediction, probability, suv):
    """(ref, pred, prob, suv) as bool / float64 arrays of one shape; one-line errors otherwise."""
    ref = as_binary_mask(reference, "reference")
    pred = as_binary_mask(prediction, "prediction")
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} differs from prediction shape {pred.shape}")
    for name, arr in (("probability", probability), ("suv", suv)):
        if arr is not None and np.shape(arr) != ref.shape:
            raise ValueError(f"{name} shape {np.shape(arr)} differs from the mask shape {ref.shape}")
    prob = None if probability is None else np.asarray(probability, dtype=np.float64)
    suv = None if suv is None else np.asarray(suv, dtype=np.float64)
    return ref, pred, prob, suv


def match_lesions(ref: np.ndarray, pred: np.ndarray, params: AuditParams) -> _Lesions:
    """Label both masks' lesions and match them (a lesion is matched when >= ``match_fraction`` of its voxels lie
    in the other mask)."""
    ref_lab, nr = label_components(ref, params.connectivity)
    pred_lab, npr = label_components(pred, params.connectivity)
    ref_size, pred_size = _per_label(ref_lab, nr), _per_label(pred_lab, npr)
    ref_missed = _per_label(ref_lab, nr, pred) / np.maximum(ref_size, 1) < params.match_fraction
    pred_extra = _per_label(pred_lab, npr, ref) / np.maximum(pred_size, 1) < params.match_fraction
    return _Lesions(ref_lab, nr, pred_lab, npr, ref_size, pred_size, ref_missed, pred_extra,
                    ref & np.isin(ref_lab, np.flatnonzero(~ref_missed) + 1),
                    pred & np.isin(pred_lab, np.flatnonzero(~pred_extra) + 1))


def _pet_terms(suv: Optional[np.ndarray], ref: np.ndarray, pred: np.ndarray, les: _Lesions,
               params: AuditParams) -> _Pet:
    """Reference levels, cold labelled voxels, per-lesion brightness (reference) and hotness (prediction)."""
    pet = _Pet({}, np.zeros(ref.shape, dtype=bool), np.zeros(les.nr), np.ones(les.nr), np.zeros(0),
               np.ones(les.npr))
    if suv is None:
        return pet
    pet.levels = pet_reference_levels(suv, ref | pred, params.liver_factor, params.liver_suv)
    bg, liver = pet.levels["suv_background"], pet.levels["suv_liver_like"]
    if les.nr:
        pet.ref_max = np.asarray(ndimage.maximum(suv, les.ref_lab, index=np.arange(1, les.nr + 1)), dtype=np.float64)
        pet.bright = _ramp(pet.ref_max, liver, params.bright_factor * liver)
        # labelled voxels at background SUV, relative to their own lesion's uptake above background
        cut = np.concatenate([[-np.inf], bg + params.cold_fraction * np.maximum(pet.ref_max - bg, 0.0)])
        pet.cold = ref & (suv < cut[les.ref_lab])
    pet.cold_frac = _per_label(les.ref_lab, les.nr, pet.cold) / np.maximum(les.ref_size, 1)
    if les.npr:
        pred_max = np.asarray(ndimage.maximum(suv, les.pred_lab, index=np.arange(1, les.npr + 1)), dtype=np.float64)
        pet.hot_w = _ramp(pred_max, bg, liver)
    return pet


def lesion_weights(les: _Lesions, pet: _Pet, prob: Optional[np.ndarray], params: AuditParams):
    """(w_ref, w_pred): per reference lesion ``max(absent confidence x brightness, cold fraction)``, times the
    model's competence on the case unless cold; per predicted lesion presence confidence x hotness."""
    absent_w, present_w = np.ones(les.nr), np.ones(les.npr)
    if prob is not None:
        absent_w = _ramp(_per_label(les.ref_lab, les.nr, prob) / np.maximum(les.ref_size, 1), params.absent_unsure,
                         params.absent_sure)
        present_w = _ramp(_per_label(les.pred_lab, les.npr, prob) / np.maximum(les.pred_size, 1),
                          params.present_unsure, params.present_sure)
    w_ref = np.maximum(absent_w * pet.bright, pet.cold_frac)
    # a model that finds this patient's other lesions and rejects this one is evidence against the reference; a model
    # that misses most of them is a weak model on a hard case
    if les.nr:
        matched_vol = float(les.ref_size[~les.ref_missed].sum())
        others = les.ref_size.sum() - les.ref_size
        competence = np.where(others > 0, matched_vol / np.maximum(others, 1), 1.0)
        w_ref = w_ref * np.where(pet.cold_frac > absent_w * pet.bright, 1.0, competence)
    return w_ref, present_w * pet.hot_w


def _unmatched_evidence(les: _Lesions, w_ref: np.ndarray, w_pred: np.ndarray, voxel_ml: float) -> Dict[str, float]:
    """``ref_missed_*``, ``pred_extra_*`` and ``uncertain_*``: the unmatched lesions, plain and weighted."""
    rm, pe = les.ref_missed, les.pred_extra
    return {"ref_missed_n": float(rm.sum()), "ref_missed_ml": float(les.ref_size[rm].sum() * voxel_ml),
            "ref_missed_confident_ml": float((les.ref_size * w_ref)[rm].sum() * voxel_ml),
            "ref_missed_confident_n": float(w_ref[rm].sum()),
            "pred_extra_n": float(pe.sum()), "pred_extra_ml": float(les.pred_size[pe].sum() * voxel_ml),
            "pred_extra_confident_ml": float((les.pred_size * w_pred)[pe].sum() * voxel_ml),
            "pred_extra_confident_n": float(w_pred[pe].sum()),
            "uncertain_ml": float(((les.ref_size * (1 - w_ref))[rm].sum()
                                   + (les.pred_size * (1 - w_pred))[pe].sum()) * voxel_ml),
            "uncertain_n": float((1 - w_ref)[rm].sum() + (1 - w_pred)[pe].sum())}


def _focal_extra(les: _Lesions, w_pred: np.ndarray, suv: Optional[np.ndarray], pet: _Pet,
                 masks: np.ndarray) -> np.ndarray:
    """Per predicted lesion absent from the reference: its weight (presence confidence x hotness) x its focality,
    ``1 -`` :func:`continuation_share` (a lesion is a focal maximum; a false positive on an organ's uptake continues
    into the organ). Zero for matched lesions; empty without PET."""
    if suv is None or not les.npr:
        return np.zeros(0)
    wanted = les.pred_extra & (w_pred > 0)
    shares = _continuation_shares(les.pred_lab, wanted, suv, ~masks, pet.levels["suv_background"])
    return np.where(wanted, w_pred * (1.0 - shares), 0.0)


def _continuation_shares(lab: np.ndarray, wanted: np.ndarray, suv: np.ndarray, outside: np.ndarray,
                         background: float) -> np.ndarray:
    """:func:`continuation_share` of each component ``i`` (1-based) of ``lab`` with ``wanted[i - 1]``, computed in
    the component's box grown by one voxel; 0 for the others."""
    shares = np.zeros(len(wanted))
    for i, sl in enumerate(ndimage.find_objects(lab, max_label=len(wanted)), start=1):
        if sl is None or not wanted[i - 1]:
            continue
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        shares[i - 1] = continuation_share(lab[grown] == i, suv[grown], outside[grown], background)
    return shares


def _voxel_weights(ref: np.ndarray, prob: Optional[np.ndarray], suv: Optional[np.ndarray], pet: _Pet,
                   params: AuditParams):
    """(v_ref, v_pred): the lesion weights of :func:`lesion_weights` voxel by voxel (a reference-only voxel:
    absent confidence x brightness, or cold; a prediction-only voxel: presence confidence x hotness)."""
    v_ref = np.ones(ref.shape) if prob is None else _ramp(prob, params.absent_unsure, params.absent_sure)
    v_pred = np.ones(ref.shape) if prob is None else _ramp(prob, params.present_unsure, params.present_sure)
    if suv is not None:
        bg, liver = pet.levels["suv_background"], pet.levels["suv_liver_like"]
        v_ref = np.maximum(v_ref * _ramp(suv, liver, params.bright_factor * liver), pet.cold)
        v_pred = v_pred * _ramp(suv, bg, liver)
    return v_ref, v_pred


def _matched_evidence(les: _Lesions, v_ref: np.ndarray, v_pred: np.ndarray, prob: Optional[np.ndarray],
                      params: AuditParams, voxel_ml: float):
    """(evidence, ref_deep, pred_deep): ``ref_deep_ml``, ``pred_deep_ml`` (voxels of matched lesions in one mask
    only, more than one voxel from the other) and the ``boundary_*`` columns of the matched lesions."""
    ref_m, pred_m = les.ref_m, les.pred_m
    ref_deep = ref_m & ~ndimage.binary_dilation(pred_m, _STRUCTURE_26) if pred_m.any() else ref_m
    pred_deep = pred_m & ~ndimage.binary_dilation(ref_m, _STRUCTURE_26) if ref_m.any() else pred_m
    xor = int((ref_m ^ pred_m).sum())
    union = int((ref_m | pred_m).sum())
    ref_only, pred_only = int((ref_m & ~pred_m).sum()), int((pred_m & ~ref_m).sum())
    surface = _surface_voxels(ref_m)
    ev = {"ref_deep_ml": float(v_ref[ref_deep].sum() * voxel_ml),
          "pred_deep_ml": float(v_pred[pred_deep].sum() * voxel_ml),
          "boundary_volume_ratio": float(ref_m.sum() / pred_m.sum()) if pred_m.any() else math.nan,
          "boundary_disagreement": float(xor / union) if union else 0.0,
          "boundary_symmetric": float(2 * min(ref_only, pred_only) / union) if union else 0.0,
          "boundary_shell": float(xor / surface) if surface else (1.0 if xor else 0.0)}
    # the part of the xor the model is sure of: boundary noise is unconfident, a redrawn outline is not
    if prob is None:
        ev["boundary_confident"] = ev["boundary_confident_ref"] = ev["boundary_confident_pred"] = math.nan
    else:
        sure_ref = float(_ramp(prob[ref_m & ~pred_m], params.absent_unsure, params.absent_sure).sum())
        sure_pred = float(_ramp(prob[pred_m & ~ref_m], params.present_unsure, params.present_sure).sum())
        for key, sure in (("boundary_confident", sure_ref + sure_pred), ("boundary_confident_ref", sure_ref),
                          ("boundary_confident_pred", sure_pred)):
            ev[key] = float(sure / surface) if surface else float(sure > 0)
    return ev, ref_deep, pred_deep


def continuation_share(region: np.ndarray, suv: np.ndarray, outside: np.ndarray, background: float) -> float:
    """Share of the voxels of ``outside`` touching ``region`` (26-neighbours) whose SUV is at or above the region's
    half level, ``background + 0.5 x (median SUV of the region - background)``; 0 when none touches it.

    A lesion is a focal maximum: blurred by the scanner, its uptake falls below half its level just outside it
    (share near 0). Physiology cut out of an organ (a contour leaking into the liver or the bowel, a ureter, the
    bladder's halo) continues beyond the contour at the same level (a large share). The half level is the usual
    PET edge (full width at half maximum), not a tuned constant."""
    if not region.any():
        return 0.0
    where = np.argwhere(region)
    lo = np.maximum(where.min(axis=0) - 1, 0)
    hi = where.max(axis=0) + 2
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    ring = ndimage.binary_dilation(region[box], _STRUCTURE_26) & outside[box]
    if not ring.any():
        return 0.0
    half = background + 0.5 * (float(np.median(suv[box][region[box]])) - background)
    return float((suv[box][ring] >= half).mean())


def organ_like_rejected(ref: np.ndarray, pred: np.ndarray, prob: Optional[np.ndarray], suv: np.ndarray,
                        background: float, params: AuditParams) -> np.ndarray:
    """Voxel weights of the reference regions that look like physiology the model rejects: each connected region
    (of >= ``min_hot_voxels`` voxels) of reference voxels outside the prediction that the model is confident are
    not lesion (absent confidence > 0; every such voxel without probabilities) weighs the region's mean absent
    confidence x :func:`continuation_share` (its uptake continues beyond the contour into unlabelled tissue). A
    correct lesion the model misses is a focal maximum (weight near 0); an organ's edge or a ureter drawn into
    the reference continues (weight up to 1)."""
    absent = np.ones(ref.shape) if prob is None else _ramp(prob, params.absent_unsure, params.absent_sure)
    rejected = ref & ~pred & (absent > 0)
    out = np.zeros(ref.shape)
    lab, n = label_components(rejected, params.connectivity)
    if not n:
        return out
    sizes = _per_label(lab, n)
    mean_absent = _per_label(lab, n, absent) / np.maximum(sizes, 1)
    shares = _continuation_shares(lab, sizes >= params.min_hot_voxels, suv, ~ref & ~pred, background)
    labelled = lab > 0
    out[labelled] = (mean_absent * shares)[lab[labelled] - 1]
    return out


_PET_COLUMNS = ("suv_background", "suv_liver_like", "ref_background_fraction", "unlabelled_hot_ml",
                "unlabelled_hot_adjacent_ml", "unlabelled_hot_supported_ml", "ref_organ_like", "ref_organ_like_ml")


def _pet_plausibility(ref: np.ndarray, pred: np.ndarray, les: _Lesions, suv: Optional[np.ndarray],
                      prob: Optional[np.ndarray], pet: _Pet, params: AuditParams, spacing: Sequence[float]):
    """(evidence, spill, remote, organ): the PET plausibility columns (NaN without PET), the unlabelled hot voxels
    beside the reference (``spill``), the remote hot spots the model half sees (``remote``; None without PET or
    probabilities) and the organ-like rejected reference regions' voxel weights (:func:`organ_like_rejected`;
    None without PET)."""
    if suv is None:
        return {k: math.nan for k in _PET_COLUMNS}, None, None, None
    voxel_ml = float(np.prod(spacing)) / 1000.0
    bg, liver = pet.levels["suv_background"], pet.levels["suv_liver_like"]
    ev = dict(pet.levels)
    ev["ref_background_fraction"] = float(pet.cold.sum() / ref.sum()) if ref.any() else 0.0
    spill = _spill(ref, les.ref_lab, suv, bg, pet.ref_max, spacing, params.adjacent_mm, params.spill_min_radius_mm)
    ev["unlabelled_hot_adjacent_ml"] = float(spill.sum() * voxel_ml)
    hot_lab, nh = label_components((suv >= liver) & ~ref & ~spill, params.connectivity)
    keep = _per_label(hot_lab, nh) >= params.min_hot_voxels
    hot = np.isin(hot_lab, np.flatnonzero(keep) + 1) if nh else np.zeros_like(ref)
    ev["unlabelled_hot_ml"] = float(hot.sum() * voxel_ml)
    # hot spots outside both masks that the model half sees: lesions the reference and the model both miss
    remote = remote_supported(hot, ref | pred, prob, params, spacing) if prob is not None else None
    ev["unlabelled_hot_supported_ml"] = float(remote.sum() * voxel_ml) if remote is not None else math.nan
    # reference regions the model rejects whose uptake continues into unlabelled tissue: physiology, not lesion
    organ = organ_like_rejected(ref, pred, prob, suv, bg, params)
    ev["ref_organ_like"] = float(organ.max()) if organ.size else 0.0
    ev["ref_organ_like_ml"] = float(organ.sum() * voxel_ml)
    return ev, spill, remote, organ


def case_evidence(reference: np.ndarray, prediction: np.ndarray, spacing_zyx: Sequence[float],
                  probability: Optional[np.ndarray] = None, suv: Optional[np.ndarray] = None,
                  params: AuditParams = AuditParams(), regions: Optional[Dict[str, np.ndarray]] = None
                  ) -> Dict[str, float]:
    """Evidence of one case (see the module docstring); a flat dict of floats (NaN where undefined).

    The parts, in order: :func:`match_lesions`, the PET terms, :func:`lesion_weights`, the unmatched lesions, the
    matched lesions (deep and boundary disagreement), the PET plausibility, and the regions.

    ``regions``: a dict to fill with one float voxel-weight map per annotation error kind (``missed_lesion``,
    ``extra_region``, ``boundary``): the voxels behind that kind's score, weighted as the score weights them (the
    page shows where the strongest of them lies, :func:`strongest_finding`)."""
    ref, pred, prob, suv = _checked_inputs(reference, prediction, probability, suv)
    sp = validate_spacing(spacing_zyx)
    voxel_ml = sp[0] * sp[1] * sp[2] / 1000.0
    les = match_lesions(ref, pred, params)
    ev: Dict[str, float] = {"ref_ml": float(ref.sum() * voxel_ml), "pred_ml": float(pred.sum() * voxel_ml),
                            "n_ref_lesions": float(les.nr), "n_pred_lesions": float(les.npr), "dice": dice(pred, ref)}
    pet = _pet_terms(suv, ref, pred, les, params)
    w_ref, w_pred = lesion_weights(les, pet, prob, params)
    ev.update(_unmatched_evidence(les, w_ref, w_pred, voxel_ml))
    focal = _focal_extra(les, w_pred, suv, pet, ref | pred)
    ev["pred_extra_focal"] = float(focal.max()) if focal.size else 0.0
    if suv is None:
        ev["pred_extra_focal"] = math.nan
    v_ref, v_pred = _voxel_weights(ref, prob, suv, pet, params)
    matched, ref_deep, pred_deep = _matched_evidence(les, v_ref, v_pred, prob, params, voxel_ml)
    ev.update(matched)
    plausibility, spill, remote, organ = _pet_plausibility(ref, pred, les, suv, prob, pet, params, sp)
    ev.update(plausibility)
    ev["has_probabilities"] = float(prob is not None)
    if regions is not None:
        regions.update(_finding_regions(ref, pred, les, w_ref, w_pred, v_ref, v_pred, ref_deep, pred_deep, pet,
                                        spill, remote, organ, params))
    return ev


def _finding_regions(ref, pred, les: _Lesions, w_ref, w_pred, v_ref, v_pred, ref_deep, pred_deep, pet: _Pet,
                     spill: Optional[np.ndarray], remote: Optional[np.ndarray], organ: Optional[np.ndarray],
                     params: AuditParams
                     ) -> Dict[str, np.ndarray]:
    """One voxel-weight map per annotation error kind, weighted as the kind's score weights its voxels."""
    extra_vox = pred & np.isin(les.pred_lab, np.flatnonzero(les.pred_extra) + 1)
    missed_vox = ref & np.isin(les.ref_lab, np.flatnonzero(les.ref_missed) + 1)
    lesion_w_pred = np.concatenate([[0.0], w_pred])[les.pred_lab]
    lesion_w_ref = np.concatenate([[0.0], w_ref])[les.ref_lab]
    missed_map = np.where(extra_vox, lesion_w_pred, 0.0) + np.where(pred_deep, v_pred, 0.0)
    if remote is not None:
        missed_map = missed_map + params.hot_weight * remote
    boundary = les.ref_m ^ les.pred_m
    if spill is not None:
        boundary = boundary | pet.cold | spill
    extra_map = np.where(missed_vox, lesion_w_ref, 0.0) + np.where(ref_deep, v_ref, 0.0)
    if organ is not None:
        extra_map = extra_map + params.organ_weight * organ
    return {"missed_lesion": missed_map,
            "extra_region": extra_map,
            "boundary": boundary.astype(np.float64)}


def strongest_finding(weights: np.ndarray, spacing_zyx: Sequence[float], connectivity: int = 26
                      ) -> Optional[Dict[str, Any]]:
    """The connected region of ``weights > 0`` with the largest weight sum (a map of :func:`case_evidence`'s
    ``regions``): ``{"centre_zyx"`` (voxel index of its centroid, floats), ``"voxel_zyx"`` (the region's voxel
    nearest that centroid, ints: a voxel inside it even for a ring), ``"n_voxels"``, ``"volume_ml"``,
    ``"bbox"`` ((z0, y0, x0, z1, y1, x1), half-open)``}``; None when no voxel carries weight."""
    w = np.asarray(weights, dtype=np.float64)
    lab, n = label_components(w > 0, connectivity)
    if not n:
        return None
    best = int(np.argmax(_per_label(lab, n, w))) + 1
    voxels = np.argwhere(lab == best)
    centre = voxels.mean(axis=0)
    nearest = voxels[np.argmin(((voxels - centre) ** 2).sum(axis=1))]
    sp = validate_spacing(spacing_zyx)
    return {"centre_zyx": [float(c) for c in centre], "voxel_zyx": [int(v) for v in nearest],
            "n_voxels": int(len(voxels)), "volume_ml": float(len(voxels) * sp[0] * sp[1] * sp[2] / 1000.0),
            "bbox": [int(v) for v in voxels.min(axis=0)] + [int(v) + 1 for v in voxels.max(axis=0)]}
