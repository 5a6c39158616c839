"""Audit maths (clips_nnunet.audit.evidence) on small hand-checkable arrays."""
import math

import numpy as np
import pytest

from clips_nnunet.audit.evidence import (AuditParams, case_evidence, continuation_share, organ_like_rejected,
                                           pet_reference_levels)
from clips_nnunet.audit.scoring import loss_evidence, roc_auc, score_cohort

SP = (2.0, 1.0, 1.0)  # voxel = 2 mm^3 = 0.002 ml
MM4 = (4.0, 4.0, 4.0)  # voxel = 0.064 ml: the distances in mm (8 mm) are two voxels, as the audit was tuned


def _cube(mask, z, y, x, n=3):
    mask[z:z + n, y:y + n, x:x + n] = 1
    return mask


def test_missed_and_extra_lesions_without_probabilities_or_pet():
    ref = np.zeros((12, 12, 12), np.uint8)
    _cube(ref, 1, 1, 1)  # 27 voxels, predicted exactly
    _cube(ref, 7, 7, 7, 2)  # 8 voxels, not predicted -> missed reference lesion
    pred = np.zeros_like(ref)
    _cube(pred, 1, 1, 1)
    pred[8:10, 1:3, 8] = 1  # 4 voxels absent from the reference -> extra predicted lesion
    ev = case_evidence(ref, pred, SP)
    assert ev["ref_ml"] == pytest.approx(35 * 0.002) and ev["pred_ml"] == pytest.approx(31 * 0.002)
    assert ev["n_ref_lesions"] == 2 and ev["n_pred_lesions"] == 2
    assert ev["ref_missed_n"] == 1 and ev["ref_missed_ml"] == pytest.approx(8 * 0.002)
    assert ev["pred_extra_n"] == 1 and ev["pred_extra_ml"] == pytest.approx(4 * 0.002)
    # no probabilities, no PET: every unmatched lesion counts in full; the other lesion is found (competence 1)
    assert ev["ref_missed_confident_ml"] == pytest.approx(8 * 0.002)
    assert ev["pred_extra_confident_ml"] == pytest.approx(4 * 0.002)
    assert ev["dice"] == pytest.approx(2 * 27 / (35 + 31))
    assert ev["boundary_volume_ratio"] == 1.0 and ev["boundary_disagreement"] == 0.0
    assert ev["boundary_shell"] == 0.0 and math.isnan(ev["ref_background_fraction"])


def test_probabilities_grade_confidence():
    ref = np.zeros((12, 12, 12), np.uint8)
    _cube(ref, 1, 1, 1)
    _cube(ref, 7, 7, 7, 2)
    pred = np.zeros_like(ref)
    _cube(pred, 1, 1, 1)
    prob = np.where(pred > 0, 0.95, 0.0)
    prob[7:9, 7:9, 7:9] = 0.25  # halfway between sure (0.1) and unsure (0.4) absence -> weight 0.5
    ev = case_evidence(ref, pred, SP, probability=prob)
    assert ev["ref_missed_confident_ml"] == pytest.approx(0.5 * 8 * 0.002)
    assert ev["uncertain_ml"] == pytest.approx(0.5 * 8 * 0.002)


def test_boundary_shell_and_volume_ratio_of_a_dilated_reference():
    pred = _cube(np.zeros((9, 9, 9), np.uint8), 3, 3, 3)  # 3x3x3
    ref = _cube(np.zeros((9, 9, 9), np.uint8), 2, 2, 2, 5)  # 5x5x5 around it
    ev = case_evidence(ref, pred, SP)
    assert ev["boundary_volume_ratio"] == pytest.approx(125 / 27)
    assert ev["boundary_disagreement"] == pytest.approx(98 / 125)
    assert ev["boundary_shell"] == pytest.approx(98 / 98)  # the 5^3 cube's surface = 125 - 27 voxels
    assert ev["boundary_symmetric"] == 0.0  # one-sided: the reference is larger everywhere
    # the outer layer of the 5^3 reference is more than one voxel from the prediction? no: all within one voxel
    assert ev["ref_deep_ml"] == 0.0


def test_pet_plausibility_cold_labels_and_hot_spill():
    suv = np.ones((10, 10, 10))
    suv[2:6, 2:6, 2:6] = 8.0  # lesion uptake, 4x4x4 = 64 voxels
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[3:7, 2:6, 2:6] = 1  # shifted one slice: slice 6 is background, slice 2 (hot) is left out
    pred = np.zeros_like(ref)
    pred[2:6, 2:6, 2:6] = 1
    lv = pet_reference_levels(suv, (ref | pred) > 0)
    assert lv == {"suv_background": 1.0, "suv_liver_like": 2.0}
    ev = case_evidence(ref, pred, MM4, suv=suv)
    # labelled voxels below background + 0.2 x (lesion SUVmax 8 - background 1) = 2.4: slice 6
    assert ev["ref_background_fraction"] == pytest.approx(16 / 64)
    # unlabelled voxels beside the mask at >= half the lesion's maximum above background (4.5): slice 2
    assert ev["unlabelled_hot_adjacent_ml"] == pytest.approx(16 * 0.064)
    assert ev["unlabelled_hot_ml"] == 0.0  # the spill is not counted again as a remote hot spot
    assert math.isnan(ev["unlabelled_hot_supported_ml"])  # needs probabilities
    # a lesion below a ball of radius 8 mm (33.5 voxels of 4 mm) is left out of the spill: partial volume spreads any small lesion
    small = np.zeros_like(ref)
    small[3:6, 2:5, 2:5] = 1
    suv_small = np.ones((10, 10, 10))
    suv_small[2:5, 2:5, 2:5] = 8.0
    assert case_evidence(small, small, MM4, suv=suv_small)["unlabelled_hot_adjacent_ml"] == 0.0


def test_remote_hot_spot_counts_only_where_the_model_half_sees_it():
    suv = np.ones((10, 10, 10))
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[1:3, 1:3, 1:3] = 1
    suv[1:3, 1:3, 1:3] = 6.0
    suv[6:8, 6:8, 6:8] = 5.0  # unlabelled, unpredicted hot spot of 8 voxels
    prob = np.zeros(suv.shape)
    prob[6:8, 6:8, 6:8] = 0.3
    ev = case_evidence(ref, ref, MM4, probability=prob, suv=suv)
    assert ev["unlabelled_hot_ml"] == pytest.approx(8 * 0.064)
    assert ev["unlabelled_hot_supported_ml"] == pytest.approx(8 * 0.064)
    prob[6:8, 6:8, 6:8] = 0.02  # physiological uptake the model confidently rejects
    ev = case_evidence(ref, ref, MM4, probability=prob, suv=suv)
    assert ev["unlabelled_hot_supported_ml"] == 0.0


def test_bright_region_confidently_rejected_counts_faint_one_does_not():
    suv = np.ones((12, 12, 12))
    ref = np.zeros((12, 12, 12), np.uint8)
    pred = np.zeros_like(ref)
    _cube(ref, 1, 1, 1)
    _cube(pred, 1, 1, 1)
    suv[1:4, 1:4, 1:4] = 6.0
    _cube(ref, 7, 7, 7, 2)
    suv[7:9, 7:9, 7:9] = 2.0  # faint: at the liver-like level (2 x background) -> brightness 0
    ev = case_evidence(ref, pred, SP, suv=suv)
    assert ev["ref_missed_ml"] == pytest.approx(8 * 0.002) and ev["ref_missed_confident_ml"] == 0.0
    suv[7:9, 7:9, 7:9] = 7.0  # bright (>= 3 x liver-like = 6) -> full weight
    ev = case_evidence(ref, pred, SP, suv=suv)
    assert ev["ref_missed_confident_ml"] == pytest.approx(8 * 0.002)


def test_score_cohort_ranks_and_names_the_error_kinds():
    base = np.zeros((12, 12, 12), np.uint8)
    _cube(base, 2, 2, 2, 4)
    _cube(base, 8, 8, 8, 2)
    clean = {f"c{i}": base.copy() for i in range(6)}
    refs = {k: v.copy() for k, v in clean.items()}
    refs["c1"][8:10, 8:10, 8:10] = 0  # reference missed a lesion
    refs["c2"][9:11, 1:3, 9:11] = 1  # reference has an extra region
    refs["c3"][1:7, 1:7, 1:7] = 1  # reference dilated by one voxel
    evidence = {c: case_evidence(refs[c], clean[c], SP) for c in clean}
    rows = score_cohort(evidence)
    assert {r["case_id"] for r in rows[:3]} == {"c1", "c2", "c3"}
    assert [r["suspicion"] for r in rows] == sorted((r["suspicion"] for r in rows), reverse=True)
    kinds = {r["case_id"]: r["error_kind"] for r in rows}
    assert kinds["c1"] == "missed_lesion" and kinds["c2"] == "extra_region" and kinds["c3"] == "boundary"
    assert {kinds[c] for c in ("c0", "c4", "c5")} == {"none"}
    assert all(r["suspicion"] == 0.0 for r in rows[3:])
    c1 = next(r for r in rows if r["case_id"] == "c1")
    # 8 of max(64, 72) voxels and 1 of the 2 predicted lesions, averaged
    assert c1["missed_lesion_score"] == pytest.approx(0.5 * (8 / 72 + 1 / 2))


def test_loss_evidence_and_auc():
    ev = loss_evidence({"a": [4, 3, 2], "b": [4, 4, 4], "c": [1, 1, 1]})
    assert ev["b"]["loss_late"] == 4 and ev["b"]["loss_late_rank"] == 1.0 and ev["c"]["loss_late_rank"] == 0.0
    assert ev["a"]["loss_drop"] == pytest.approx(-2.0) and ev["a"]["loss_late_rank"] == 0.5
    assert math.isnan(loss_evidence({"x": [float("nan")], "y": [1.0]})["x"]["loss_late"])
    assert roc_auc([0.9, 0.8, 0.1, 0.8], [True, True, False, False]) == pytest.approx((2 + 1.5) / 4)
    assert math.isnan(roc_auc([1.0], [True]))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="differs"):
        case_evidence(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)), SP)
    with pytest.raises(ValueError, match="spacing"):
        case_evidence(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="match_fraction"):
        AuditParams(match_fraction=0.0)


def _soft_cohort(n=6, blur=1.0):
    """Cases whose prediction equals the reference, with the PET blurred as a scanner blurs it and soft
    probabilities (a softmax-like rim) around every lesion: nothing here is an annotation error."""
    from scipy import ndimage

    cases = {}
    zz, yy, xx = np.indices((32, 32, 32))
    for s in range(n):
        r = np.random.default_rng(s)
        mask = np.zeros((32, 32, 32), bool)
        activity = np.ones((32, 32, 32))
        for _ in range(1 + s % 3):
            c = r.integers(7, 25, 3)
            lesion = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r.uniform(1.5, 4.0) ** 2
            mask |= lesion
            activity[lesion] = r.uniform(5.0, 15.0)
        suv = ndimage.gaussian_filter(activity, blur)
        prob = ndimage.gaussian_filter(mask.astype(float), blur)
        prob = np.where(mask, np.maximum(prob, 0.6), prob)  # >= 0.5 inside: the prediction is the mask
        cases[f"c{s}"] = (mask, prob, suv)
    return cases


@pytest.mark.parametrize("blur", [1.0, 1.5])
def test_probability_rim_around_matching_masks_is_no_missed_lesion(blur):
    """The blurred uptake and the soft probabilities just outside a correctly outlined lesion are hot and half seen;
    they must not make a perfectly matching case a suspect `missed_lesion` (they did: every case was flagged)."""
    cases = _soft_cohort(blur=blur)
    evidence = {c: case_evidence(m, m, (2.0, 2.0, 2.0), probability=p, suv=s) for c, (m, p, s) in cases.items()}
    rows = score_cohort(evidence)
    assert [r["error_kind"] for r in rows] == ["none"] * len(rows)
    assert all(r["unlabelled_hot_supported_ml"] == 0.0 for r in rows)
    # a hot spot well away from both masks that the model half sees (mean probability 0.3) still counts
    mask, prob, suv = cases["c0"]
    far = np.argwhere(ndimage_distance(mask) > 6)[0]
    z, y, x = far
    suv, prob = suv.copy(), prob.copy()
    suv[z:z + 5, y:y + 5, x:x + 5] = 8.0
    prob[z:z + 5, y:y + 5, x:x + 5] = 0.3
    evidence["c0"] = case_evidence(mask, mask, (2.0, 2.0, 2.0), probability=prob, suv=suv)
    top = score_cohort(evidence)[0]
    assert top["case_id"] == "c0" and top["error_kind"] == "missed_lesion"
    assert top["unlabelled_hot_supported_ml"] == pytest.approx(125 * 8 / 1000)


def ndimage_distance(mask):
    from scipy import ndimage

    d = ndimage.distance_transform_edt(~mask)
    d[:, :, -5:] = d[:, -5:] = d[-5:] = 0  # room for a 5^3 cube
    return d


def test_model_quality_warning():
    from clips_nnunet.audit.scoring import model_quality_warning

    def rows(dices, kinds):
        return [{"dice": d, "ref_ml": 1.0, "error_kind": k} for d, k in zip(dices, kinds)]

    # a usable model on a cohort with hard patients (half hard_case): silent
    assert model_quality_warning(rows([0.8] * 6, ["hard_case"] * 3 + ["none"] * 3)) is None
    useless = model_quality_warning(rows([0.0] * 6, ["hard_case"] * 6))
    assert "mean Dice against the references is 0.00 over the 6 cases" in useless and "6 of 6 cases" in useless
    assert "weak evidence" in useless
    mostly_hard = model_quality_warning(rows([0.7] * 6, ["hard_case"] * 4 + ["boundary"] * 2))
    assert mostly_hard is not None and "4 of 6 cases are called hard_case" in mostly_hard and "Dice" not in mostly_hard
    # lesion-free references do not enter the mean Dice
    assert model_quality_warning([{"dice": 0.0, "ref_ml": 0.0, "error_kind": "none"}] + rows([0.9], ["none"])) is None
    assert model_quality_warning([]) is None


@pytest.mark.parametrize("mm, spill_voxels, remote_voxels", [(4.0, 32, 0), (8.0, 16, 4)])
def test_rim_and_adjacency_are_millimetres_not_voxels(mm, spill_voxels, remote_voxels):
    """The spill reach (``adjacent_mm`` 8) and the probability rim (``rim_mm`` 8) are distances between voxel centres
    in mm: two voxels at 4 mm, one voxel at 8 mm. A 4x4x4 reference with its two hot neighbouring slices left out:
    both slices (4 and 8 mm away) spill at 4 mm, only the nearer one (8 mm; the other is 16 mm away) at 8 mm. A
    half-seen 2x2 hot spot two slices from a small mask is inside the rim at 4 mm (8 mm, not beyond it) and
    remote at 8 mm (16 mm)."""
    suv = np.ones((12, 10, 10))
    suv[1:7, 2:6, 2:6] = 8.0
    ref = np.zeros(suv.shape, np.uint8)
    ref[3:7, 2:6, 2:6] = 1  # slices 1 and 2 hot but unlabelled
    ev = case_evidence(ref, ref, (mm, mm, mm), suv=suv)
    assert ev["unlabelled_hot_adjacent_ml"] == pytest.approx(spill_voxels * mm ** 3 / 1000.0)
    suv = np.ones((12, 10, 10))
    small = np.zeros(suv.shape, np.uint8)
    small[1:3, 1:3, 1:3] = 1
    suv[1:3, 1:3, 1:3] = 6.0
    suv[4, 1:3, 1:3] = 5.0  # two slices from the mask, SUV above the liver-like level 2
    prob = np.zeros(suv.shape)
    prob[4, 1:3, 1:3] = 0.3
    ev = case_evidence(small, small, (mm, mm, mm), probability=prob, suv=suv)
    assert ev["unlabelled_hot_supported_ml"] == pytest.approx(remote_voxels * mm ** 3 / 1000.0)


def test_boundary_confident_counts_the_xor_the_model_is_sure_of():
    """A 3x3x3 prediction, a reference one slice thicker (9 reference-only voxels): 6 of them the model rejects
    surely (p 0.01: weight 1), 3 unsurely (p 0.4, like boundary noise: weight 0), plus one prediction-only voxel
    at p 0.75 (half way from 0.6 to 0.9: weight 0.5). The reference's 4x3x3 box has 36 - 2 interior = 34 surface
    voxels: boundary_confident = 6.5 / 34. Without probabilities it is undefined and the score falls back to the
    shell."""
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[2:6, 2:5, 2:5] = 1
    pred = np.zeros_like(ref)
    pred[2:5, 2:5, 2:5] = 1
    pred[3, 3, 5] = 1
    prob = np.where(pred > 0, 0.95, 0.01)
    prob[5, 2, 2:5] = 0.4
    prob[3, 3, 5] = 0.75
    ev = case_evidence(ref, pred, MM4, probability=prob)
    assert ev["boundary_confident"] == pytest.approx(6.5 / 34)
    assert ev["boundary_confident_ref"] == pytest.approx(6 / 34)
    assert ev["boundary_confident_pred"] == pytest.approx(0.5 / 34)
    assert ev["boundary_shell"] == pytest.approx(10 / 34)
    assert math.isnan(case_evidence(ref, pred, MM4)["boundary_confident"])
    clean = {"ref_ml": 1.0, "pred_ml": 1.0, "n_ref_lesions": 1.0, "n_pred_lesions": 1.0, "dice": 1.0,
             "ref_missed_confident_ml": 0.0, "ref_missed_confident_n": 0.0, "pred_extra_confident_ml": 0.0,
             "pred_extra_confident_n": 0.0, "ref_deep_ml": 0.0, "pred_deep_ml": 0.0, "uncertain_ml": 0.0,
             "uncertain_n": 0.0, "boundary_symmetric": 0.0, "boundary_shell": 0.1, "boundary_confident": 0.0}
    cohort = {"a": clean, "b": clean, "c": {**clean, "boundary_shell": 0.3, "boundary_confident": 0.2}}
    rows = {r["case_id"]: r for r in score_cohort(cohort, AuditParams())}
    assert rows["c"]["boundary_score"] == pytest.approx(2.0 * 0.2)  # confident_weight x excess over the median 0
    cohort = {k: {**v, "boundary_confident": math.nan} for k, v in cohort.items()}
    rows = {r["case_id"]: r for r in score_cohort(cohort, AuditParams())}
    assert rows["c"]["boundary_score"] == pytest.approx(0.25 * 0.2)  # boundary_weight x shell excess 0.3 - 0.1


def test_continuation_share_counts_unlabelled_neighbours_at_half_level():
    """One voxel at SUV 10, background 1: half level 1 + 0.5 x 9 = 5.5. Its 26 neighbours: the z = 0 layer (9) at
    SUV 6, the rest at 2; the z = 2 layer is labelled (not outside), so the ring is 9 + 8 = 17 voxels of which 9
    reach the half level."""
    suv = np.full((3, 3, 3), 2.0)
    suv[0] = 6.0
    suv[1, 1, 1] = 10.0
    region = np.zeros((3, 3, 3), bool)
    region[1, 1, 1] = True
    outside = ~region
    assert continuation_share(region, suv, outside, 1.0) == pytest.approx(9 / 26)
    outside[2] = False
    assert continuation_share(region, suv, outside, 1.0) == pytest.approx(9 / 17)
    assert continuation_share(region, suv, np.zeros_like(region), 1.0) == 0.0  # no unlabelled neighbour


def test_organ_like_rejected_is_a_leak_not_a_missed_part_of_a_lesion():
    """A lesion (x 1-3, SUV 10) whose contour leaks two voxels deep into an organ (x >= 4, SUV 3; background 1):
    the 18 leaked voxels are outside the prediction and rejected surely (p 0.01). Their half level is 1 + 0.5 x
    (3 - 1) = 2. Their 26-neighbourhood box (x 3-6, y 0-4, z 0-4: 100 voxels) less the region (18) and the
    lesion's 9 voxels at x = 3 leaves 73 unlabelled neighbours: 57 organ voxels at SUV 3 and 16 background voxels at
    x = 3: weight 57 / 73. The same region drawn as a second focal lesion (SUV 8 in background) weighs 0."""
    shape = (5, 5, 12)
    suv = np.ones(shape)
    suv[:, :, 4:] = 3.0
    suv[1:4, 1:4, 1:4] = 10.0
    pred = np.zeros(shape, bool)
    pred[1:4, 1:4, 1:4] = True
    ref = pred.copy()
    ref[1:4, 1:4, 4:6] = True
    prob = np.where(pred, 0.95, 0.01)
    w = organ_like_rejected(ref, pred, prob, suv, 1.0, AuditParams())
    assert w[1:4, 1:4, 4:6] == pytest.approx(np.full((3, 3, 2), 57 / 73))
    assert w.sum() == pytest.approx(18 * 57 / 73)
    focal = np.ones(shape)
    focal[1:4, 1:4, 1:4] = 10.0
    focal[1:4, 1:4, 4:6] = 8.0  # half level 4.5; every unlabelled neighbour is at 1
    assert organ_like_rejected(ref, pred, prob, focal, 1.0, AuditParams()).max() == 0.0
    # a region under min_hot_voxels (3) does not count; an unsure rejection (p 0.25) halves the weight
    small = pred.copy()
    small[2, 2, 4] = True
    assert organ_like_rejected(small, pred, prob, suv, 1.0, AuditParams()).max() == 0.0
    prob[1:4, 1:4, 4:6] = 0.25
    assert organ_like_rejected(ref, pred, prob, suv, 1.0, AuditParams()).max() == pytest.approx(0.5 * 57 / 73)


def test_focal_and_organ_like_evidence_in_a_case_and_the_score():
    """A correct lesion (SUV 10) and a predicted lesion absent from the reference (p 0.95: presence 1, SUVmax 8
    above the liver-like level 2: hotness 1): in background it is a focal maximum (pred_extra_focal 1); inside a
    hot organ (a 4^3 block at SUV 8, its 26-neighbourhood) its uptake continues (0). The organ is 64 of 1728
    voxels, so the background stays 1. The score adds pred_extra_focal to missed_lesion and ref_organ_like to
    extra_region, each with weight 1."""
    suv = np.ones((12, 12, 12))
    ref = np.zeros(suv.shape, np.uint8)
    _cube(ref, 1, 1, 1, 2)
    suv[1:3, 1:3, 1:3] = 10.0
    pred = ref.copy()
    _cube(pred, 5, 5, 5, 2)
    suv[5:7, 5:7, 5:7] = 8.0
    prob = np.where(pred > 0, 0.95, 0.01)
    ev = case_evidence(ref, pred, MM4, probability=prob, suv=suv)
    assert ev["suv_background"] == 1.0
    assert ev["pred_extra_focal"] == pytest.approx(1.0) and ev["ref_organ_like"] == 0.0
    suv[4:8, 4:8, 4:8] = 8.0
    assert case_evidence(ref, pred, MM4, probability=prob, suv=suv)["pred_extra_focal"] == pytest.approx(0.0)
    assert math.isnan(case_evidence(ref, pred, MM4, probability=prob)["pred_extra_focal"])
    clean = {"ref_ml": 1.0, "pred_ml": 1.0, "n_ref_lesions": 1.0, "n_pred_lesions": 1.0, "dice": 1.0,
             "ref_missed_confident_ml": 0.0, "ref_missed_confident_n": 0.0, "pred_extra_confident_ml": 0.0,
             "pred_extra_confident_n": 0.0, "ref_deep_ml": 0.0, "pred_deep_ml": 0.0, "uncertain_ml": 0.0,
             "uncertain_n": 0.0, "boundary_symmetric": 0.0, "boundary_shell": 0.0, "boundary_confident": 0.0,
             "ref_organ_like": 0.0, "pred_extra_focal": 0.0}
    cohort = {"a": clean, "b": {**clean, "ref_organ_like": 0.4}, "c": {**clean, "pred_extra_focal": 0.7}}
    rows = {r["case_id"]: r for r in score_cohort(cohort, AuditParams())}
    assert rows["b"]["extra_region_score"] == pytest.approx(0.4) and rows["b"]["error_kind"] == "extra_region"
    assert rows["c"]["missed_lesion_score"] == pytest.approx(0.7) and rows["c"]["error_kind"] == "missed_lesion"
    assert rows["a"]["suspicion"] == 0.0
