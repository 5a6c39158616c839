"""Cohort-level audit maths: the per-case evidence of :mod:`clips_nnunet.audit.evidence` turned into a ranking and
error kinds, the curriculum loss ranks, the model-quality warning and the ROC AUC. Numbers in, numbers out.

Cohort scoring (:func:`score_cohort`): with ``V = max(ref_ml, pred_ml)``,

* ``missed_lesion_score`` = half the weighted share of the patient's predicted disease in question by volume and
  by lesion count: ``0.5 ((pred_extra_confident_ml + pred_deep_ml) / V + pred_extra_confident_n / n_pred_lesions)``
  (a small false lesion matters for lesion counts and Dmax even in a patient with a large TMTV);
  plus ``hot_weight`` (0.5) x ``unlabelled_hot_supported_ml / max(V, cohort median V)``, capped at 1: a hot spot the
  reference leaves out where the model half sees it (physiological uptake, confidently rejected, does not count);
  plus ``focal_weight`` (1) x ``pred_extra_focal`` (size-independent: one confident focal lesion the reference
  lacks is evidence in a patient with many lesions);
* ``extra_region_score`` = ``0.5 ((ref_missed_confident_ml + ref_deep_ml) / V + ref_missed_confident_n /
  n_ref_lesions)`` (``*_confident_n``: the weighted count of those lesions) plus ``organ_weight`` (1) x
  ``ref_organ_like`` (size-independent: a leak of a few voxels into an organ beside one of many lesions). The two
  weights are 1, not tuned: both terms are near 0 where the reference is right, so no cohort median is subtracted;
* ``boundary_score`` = excess over the cohort median of the outline term (``boundary_confident`` x
  ``confident_weight`` (2) with probabilities, else ``boundary_shell`` x ``boundary_weight`` (0.25)),
  ``ref_background_fraction`` and ``unlabelled_hot_adjacent_ml / ref_ml`` (x ``pet_weight`` (2) each): what every
  case shows is the model's or the PET's normal behaviour, not an annotation error. Distances are in mm, so the
  same parameters hold on 4 mm and 8 mm grids; the deep margin (one voxel) and ``min_hot_voxels`` stay in voxels
  (boundary quantisation and noise speckle are per voxel);
* ``loss_score`` = ``loss_weight`` (0.1) x ``max(0, 2 loss_late_rank - 1)`` (cases that stay hard late in training
  while others are learned, when a curriculum history is available; a small weight: it also rises for hard cases);
* ``suspicion`` = the sum; ``hardness`` = ``0.5 (uncertain_ml / V + uncertain_n / max(n_ref, n_pred)) +
  boundary_symmetric`` (disagreement the audit attributes to the model rather than to the reference);
* ``error_kind``: the largest of missed_lesion / extra_region / boundary when ``suspicion >= suspicion_threshold``
  and ``suspicion >= hardness_ratio (0.5) x hardness`` (the error evidence is not dwarfed by disagreement a weak
  model explains), else ``hard_case`` when ``hardness >= hard_threshold``, else ``none``. The ranking uses
  ``suspicion`` alone.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from clips_nnunet.audit.evidence import AuditParams

def model_quality_warning(rows: Sequence[Mapping[str, Any]], min_dice: float = 0.5, max_hard_share: float = 2 / 3
                          ) -> Optional[str]:
    """A warning in words when the out-of-fold models themselves are poor, so that their disagreement with a
    reference says little about the reference: mean Dice over the cases with a reference lesion below
    ``min_dice``, or at least ``max_hard_share`` of the cases called ``hard_case``. None when neither holds.
    (On the audit benchmark's simulated models, mean Dice 0.70-0.76 with 44-53 % ``hard_case``, it stays silent;
    a cohort is expected to hold hard patients.)"""
    if not rows:
        return None
    with_lesion = [float(r["dice"]) for r in rows if float(r.get("ref_ml", 0.0)) > 0 and np.isfinite(r["dice"])]
    hard = sum(1 for r in rows if r.get("error_kind") == "hard_case")
    reasons = []
    if with_lesion and float(np.mean(with_lesion)) < min_dice:
        reasons.append(f"their mean Dice against the references is {float(np.mean(with_lesion)):.2f} over the "
                       f"{len(with_lesion)} cases with a reference lesion (below {min_dice:g})")
    if hard >= max_hard_share * len(rows):
        reasons.append(f"{hard} of {len(rows)} cases are called hard_case (the models miss or add lesions in most "
                       f"patients)")
    if not reasons:
        return None
    return ("The models are poor: " + "; ".join(reasons) + ". Where the models miss much of the disease, their "
            "disagreement with a reference says little about the reference: treat this ranking as weak evidence "
            "and train a better model (longer, more data) before relying on it.")


def loss_evidence(losses: Mapping[str, Sequence[float]], late_fraction: float = 1.0 / 3.0
                  ) -> Dict[str, Dict[str, float]]:
    """Per case, from its per-epoch training loss (or the curriculum's per-case difficulty estimate, which may be
    centred, i.e. negative): ``loss_late`` = mean over the last ``late_fraction`` of its recorded epochs,
    ``loss_late_rank`` = rank of ``loss_late`` in the cohort in [0, 1] (1 = the hardest late in training; ties
    share the mean rank), ``loss_drop`` = late minus early mean (first ``late_fraction``; near 0 = not learned).

    A case that stays hard while the others are learned has ``loss_late_rank`` near 1. No finite value: NaN."""
    late: Dict[str, float] = {}
    drop: Dict[str, float] = {}
    for case, values in losses.items():
        v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
        if v.size == 0:
            late[case] = drop[case] = math.nan
            continue
        k = max(1, int(math.ceil(late_fraction * v.size)))
        late[case] = float(v[-k:].mean())
        drop[case] = float(late[case] - v[:k].mean())
    finite = sorted(c for c in late if np.isfinite(late[c]))
    rank: Dict[str, float] = {c: math.nan for c in losses}
    if len(finite) > 1:
        values = np.asarray([late[c] for c in finite])
        order = values.argsort(kind="stable")
        r = np.empty(len(values))
        r[order] = np.arange(len(values), dtype=np.float64)
        for v in np.unique(values):  # ties share their mean rank
            r[values == v] = r[values == v].mean()
        for c, x in zip(finite, r / (len(values) - 1)):
            rank[c] = float(x)
    return {c: {"loss_late": late[c], "loss_drop": drop[c], "loss_late_rank": rank[c]} for c in losses}


def _excess(values: Dict[str, float]) -> Dict[str, float]:
    finite = [v for v in values.values() if np.isfinite(v)]
    med = float(np.median(finite)) if finite else 0.0
    return {c: (max(0.0, v - med) if np.isfinite(v) else 0.0) for c, v in values.items()}


def score_cohort(evidence: Mapping[str, Mapping[str, float]], params: AuditParams = AuditParams()
                 ) -> List[Dict[str, Any]]:
    """Rows ``{"case_id", "suspicion", "error_kind", component scores, hardness, every evidence column}``, sorted by
    decreasing suspicion (ties by case id). Cohort medians make the boundary and PET terms relative."""
    cases = sorted(evidence)
    volume = {c: max(evidence[c]["ref_ml"], evidence[c]["pred_ml"], 1e-9) for c in cases}
    shell = _excess({c: float(evidence[c]["boundary_shell"]) for c in cases})
    confident = _excess({c: float(evidence[c].get("boundary_confident", math.nan)) for c in cases})
    # the outline term: the model's confident part of the xor with probabilities, else the whole xor per surface
    outline = {c: (params.confident_weight * confident[c] if np.isfinite(evidence[c].get("boundary_confident", math.nan))
                   else params.boundary_weight * shell[c]) for c in cases}
    cold = _excess({c: float(evidence[c].get("ref_background_fraction", math.nan)) for c in cases})
    adjacent = _excess({c: (min(1.0, evidence[c].get("unlabelled_hot_adjacent_ml", math.nan)
                                / evidence[c]["ref_ml"]) if evidence[c]["ref_ml"] > 0 else math.nan)
                        for c in cases})
    organ = {c: (float(evidence[c].get("ref_organ_like", math.nan))
                 if np.isfinite(evidence[c].get("ref_organ_like", math.nan)) else 0.0) for c in cases}
    focal = {c: (float(evidence[c].get("pred_extra_focal", math.nan))
                 if np.isfinite(evidence[c].get("pred_extra_focal", math.nan)) else 0.0) for c in cases}
    median_volume = float(np.median(list(volume.values())))
    rows: List[Dict[str, Any]] = []
    for c in cases:
        ev = evidence[c]
        supported = ev.get("unlabelled_hot_supported_ml", math.nan)
        hot_remote = min(1.0, supported / max(volume[c], median_volume)) if np.isfinite(supported) else 0.0
        n_ref, n_pred = max(ev["n_ref_lesions"], 1.0), max(ev["n_pred_lesions"], 1.0)
        comp = {"missed_lesion": 0.5 * ((ev["pred_extra_confident_ml"] + ev["pred_deep_ml"]) / volume[c]
                                        + ev["pred_extra_confident_n"] / n_pred) + params.hot_weight * hot_remote
                                 + params.focal_weight * focal[c],
                "extra_region": 0.5 * ((ev["ref_missed_confident_ml"] + ev["ref_deep_ml"]) / volume[c]
                                       + ev["ref_missed_confident_n"] / n_ref) + params.organ_weight * organ[c],
                "boundary": outline[c] + params.pet_weight * (cold[c] + adjacent[c])}
        rank = ev.get("loss_late_rank", math.nan)
        loss = params.loss_weight * max(0.0, 2.0 * rank - 1.0) if np.isfinite(rank) else 0.0
        suspicion = float(sum(comp.values()) + loss)
        hardness = float(0.5 * (ev["uncertain_ml"] / volume[c] + ev["uncertain_n"] / max(n_ref, n_pred))
                         + ev["boundary_symmetric"])
        if suspicion >= params.suspicion_threshold and suspicion >= params.hardness_ratio * hardness:
            kind = max(comp, key=lambda k: (comp[k], -list(comp).index(k)))
        elif hardness >= params.hard_threshold:
            kind = "hard_case"
        else:
            kind = "none"
        rows.append({"case_id": c, "suspicion": suspicion, "error_kind": kind,
                     **{f"{k}_score": float(v) for k, v in comp.items()}, "loss_score": float(loss),
                     "hardness": hardness, **{k: float(v) for k, v in ev.items()}})
    rows.sort(key=lambda r: (-r["suspicion"], r["case_id"]))
    return rows


def roc_auc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n+ n-), ties count half); NaN without both classes."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positives, dtype=bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return math.nan
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))
