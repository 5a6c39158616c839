"""Realistic annotators (clips_nnunet.synthetic.twin_annotators): each kind on hand-made arrays and on twins, records
per patient and per lesion, and no kind ever falls back to another."""
from __future__ import annotations

import numpy as np
import pytest

from clips_nnunet.synthetic.annotation_errors import choose_error_cases
from clips_nnunet.synthetic.twin import study_case
from clips_nnunet.synthetic.twin_anatomy import TISSUES
from clips_nnunet.synthetic.twin_annotators import (CONVENTIONS, SLOPPY_PARTS, TWIN_ERROR_KINDS, annotate,
                                                    boundary_shift_mm, convention_threshold, liver_reference,
                                                    miss_probability)

SPACING = (4.0, 4.0, 4.0)


def _scene(two_lesions: bool = True, organs: bool = True):
    """20^3 grid: lesion 1 (3^3 voxels, SUV 10) at the centre, lesion 2 (1 voxel, SUV 3) in a corner; a liver block
    (SUV 2) and, with ``organs``, a hot bowel block (SUV 6) one voxel from lesion 1."""
    shape = (20, 20, 20)
    ids = np.zeros(shape, dtype=np.int16)
    suv = np.full(shape, 0.5, dtype=np.float32)
    tissue = np.full(shape, TISSUES["fat"], dtype=np.uint8)
    tissue[:5, :5, :] = TISSUES["liver"]
    suv[:5, :5, :] = 2.0
    ids[9:12, 9:12, 9:12] = 1
    suv[9:12, 9:12, 9:12] = 10.0
    if two_lesions:
        ids[17, 17, 2] = 2
        suv[17, 17, 2] = 3.0
    if organs:
        tissue[9:12, 9:12, 13:16] = TISSUES["bowel"]
        suv[9:12, 9:12, 13:16] = 6.0
    return ids, suv, tissue


def test_convention_thresholds_by_hand():
    assert convention_threshold("41pct_suvmax", 10.0, (2.0, 0.5)) == pytest.approx(4.1)
    assert convention_threshold("suv2.5", 10.0, (2.0, 0.5)) == 2.5
    assert convention_threshold("suv4", 10.0, (2.0, 0.5)) == 4.0
    assert convention_threshold("percist", 10.0, (2.0, 0.5)) == pytest.approx(4.0)  # 1.5 x 2 + 2 x 0.5
    ids, suv, tissue = _scene()
    assert liver_reference(suv, tissue) == (pytest.approx(2.0), pytest.approx(0.0))


def test_miss_probability_grows_for_small_faint_hard_lesions():
    assert miss_probability(0.5, 1.5, "mesenteric") > 0.8
    assert miss_probability(200.0, 10.0, "axillary_L") < 0.05
    assert miss_probability(2.0, 3.0, "bowel") > miss_probability(2.0, 3.0, "axillary_L")


@pytest.mark.parametrize("kind", TWIN_ERROR_KINDS)
def test_each_kind_is_recorded_and_never_falls_back(kind):
    ids, suv, tissue = _scene()
    for seed in range(6):
        mask, record = annotate(ids, suv, tissue, SPACING, kind, np.random.default_rng(seed))
        assert record["requested_kind"] == kind and record["kind"] in (kind, None)
        clean = ids > 0
        assert record["changed_voxels"] == int((mask.astype(bool) != clean).sum())
        if record["applied"]:
            assert record["kind"] == kind and record["changed_voxels"] > 0 and "reason" not in record
        else:
            assert record["kind"] is None and record["reason"] and np.array_equal(mask.astype(bool), clean)
        assert [row["lesion_id"] for row in record["lesions"]] == [1, 2]
        assert {row["status"] for row in record["lesions"]} <= {"kept", "missed", "dropped_by_threshold",
                                                                  "eroded_away"}


def test_kinds_that_cannot_apply_say_why():
    ids, suv, tissue = _scene(two_lesions=False, organs=False)
    suv[:5, :5, :] = 1.0  # a cool liver: nothing physiological at SUV >= 2.5
    tissue[:5, :5, :] = TISSUES["fat"]
    rng = np.random.default_rng(0)
    for kind, words in (("missed_lesion", "needs two"), ("physiological", "no hot physiological"),
                        ("leak", "no lesion within 8 mm")):
        mask, record = annotate(ids, suv, tissue, SPACING, kind, rng)
        assert record == {**record, "kind": None, "applied": False, "changed_voxels": 0}
        assert words in record["reason"]
        assert np.array_equal(mask, (ids > 0).astype(np.uint8))


def test_specific_kinds_by_hand():
    ids, suv, tissue = _scene()
    # missed: lesion 2 (1 voxel, SUV 3 = 1.5 x liver) is far likelier missed than lesion 1; one always stays
    mask, rec = annotate(ids, suv, tissue, SPACING, "missed_lesion", np.random.default_rng(0))
    status = {r["lesion_id"]: r["status"] for r in rec["lesions"]}
    assert status[2] == "missed" and status[1] == "kept" and mask[17, 17, 2] == 0 and mask[10, 10, 10] == 1
    # leak: into the adjacent bowel (one voxel away), up to 20 mm = 5 voxels from lesion 1
    mask, rec = annotate(ids, suv, tissue, SPACING, "leak", np.random.default_rng(0))
    assert rec["details"]["organ"] == "bowel" and rec["details"]["lesion_id"] == 1
    added = mask.astype(bool) & ~(ids > 0)
    assert added.sum() == rec["details"]["added_voxels"] > 0 and (tissue[added] == TISSUES["bowel"]).all()
    # physiological: the bowel block (SUV 6 >= 2.5) minus the ring next to the lesion
    mask, rec = annotate(ids, suv, tissue, SPACING, "physiological", np.random.default_rng(0))
    assert rec["details"]["tissue"] == "bowel" and rec["details"]["region_suv_max"] == pytest.approx(6.0)
    # boundary: a dilation of d mm (at least one 4 mm voxel) adds every voxel within d + 2 mm of the mask
    for seed in range(8):
        mask, rec = annotate(ids, suv, tissue, SPACING, "boundary", np.random.default_rng(seed))
        d, applied = rec["details"]["distance_mm"], rec["details"]["applied_mm"]
        assert 2.5 <= d <= 6.0 and applied == pytest.approx(max(d, 4.0), abs=0.01)
        if rec["details"]["direction"] == "dilate":  # applied + 2 in [6, 8]: face and edge neighbours (4, 5.66 mm)
            # in, corner neighbours (6.93 mm) when applied + 2 reaches them
            assert mask[8, 10, 10] == 1 and mask[8, 8, 10] == 1
            assert mask[8, 8, 8] == (1 if applied + 2.0 >= np.sqrt(48) else 0)
        else:  # erosion removes the 3^3 lesion's surface (its centre is 4 mm from the background) and lesion 2
            assert mask.sum() == 1 and mask[10, 10, 10] == 1
            assert {r["lesion_id"] for r in rec["lesions"] if r["status"] == "eroded_away"} == {2}


def test_convention_redraws_every_lesion_with_its_threshold():
    ids, suv, tissue = _scene(organs=False)
    suv[8, 10, 10] = 5.0  # a warm rim voxel beside lesion 1
    seen = set()
    for seed in range(12):
        mask, rec = annotate(ids, suv, tissue, SPACING, "convention", np.random.default_rng(seed))
        method = rec["details"]["convention"]
        seen.add(method)
        rows = {r["lesion_id"]: r for r in rec["lesions"]}
        if rec["applied"]:
            assert mask[8, 10, 10] == (1 if 5.0 >= rows[1]["threshold"] else 0)
        assert rows[2]["status"] == ("dropped_by_threshold" if rows[2]["threshold"] > 3.0 else "kept")
    assert seen == {"41pct_suvmax", "suv2.5", "suv4", "percist"}


def test_every_kind_on_twins_records_per_lesion_rows():
    case = study_case(5, 2)
    sites = {les.lesion_id: les.site for les in case.lesions}
    planned = choose_error_cases([f"c{i}" for i in range(6)], 1.0, TWIN_ERROR_KINDS, np.random.default_rng(0),
                                 known=TWIN_ERROR_KINDS)
    assert sorted(planned.values()) == sorted(TWIN_ERROR_KINDS)
    for kind in TWIN_ERROR_KINDS:
        mask, rec = annotate(case.lesion_ids, case.pet, case.tissue, case.pet_grid.spacing, kind,
                             np.random.default_rng(1), sites=sites)
        assert rec["kind"] in (kind, None) and rec["requested_kind"] == kind
        assert len(rec["lesions"]) == case.summary["n_lesions_on_grid"]
        assert all(r["site"] == sites[r["lesion_id"]] for r in rec["lesions"])
    with pytest.raises(ValueError, match="slice_shift"):
        annotate(case.lesion_ids, case.pet, case.tissue, case.pet_grid.spacing, "slice_shift",
                 np.random.default_rng(1))


@pytest.mark.parametrize("direction", ["dilate", "erode"])
def test_boundary_error_is_at_least_one_voxel_on_a_coarse_grid(direction):
    """On 8 mm voxels a 2.5-6 mm shift is applied as 8 mm (one voxel): a 5^3 cube dilated gains its 6 x 25 face
    neighbours and 12 x 5 edge neighbours (within 8 + 4 = 12 mm; corners at 13.9 mm stay out); eroded it keeps its
    3^3 core (the surface voxels lie 8 mm from the background, inside the 12 mm edge)."""
    assert boundary_shift_mm(3.0, (8.0, 8.0, 8.0)) == 8.0
    assert boundary_shift_mm(5.0, (3.0, 4.0, 4.0)) == 5.0
    ids = np.zeros((15, 15, 15), dtype=np.int16)
    ids[5:10, 5:10, 5:10] = 1
    suv = np.where(ids > 0, 10.0, 0.5).astype(np.float32)
    tissue = np.full(ids.shape, TISSUES["fat"], dtype=np.uint8)
    for seed in range(40):
        rng = np.random.default_rng(seed)
        mask, rec = annotate(ids, suv, tissue, (8.0, 8.0, 8.0), "boundary", rng)
        if rec["details"]["direction"] == direction:
            break
    assert rec["applied"] and rec["details"]["applied_mm"] == pytest.approx(max(8.0, rec["details"]["distance_mm"]))
    if direction == "dilate":
        assert int(mask.sum()) == 125 + 6 * 25 + 12 * 5 and rec["changed_voxels"] == 210
    else:
        assert int(mask.sum()) == 27 and mask[6:9, 6:9, 6:9].all() and rec["changed_voxels"] == 98


def test_sloppy_reader_misses_redraws_and_includes_in_one_patient_by_hand():
    """Scene: lesion 1 (27 voxels, SUV 10), lesion 2 (1 voxel, SUV 3: miss probability 0.95 against 0.03), a warm
    rim voxel (SUV 5) touching lesion 1 that every convention takes in (thresholds 4.1, 2.5, 4, 3), a hot bowel block
    (27 voxels, SUV 6) two voxels from lesion 1. The reader misses lesion 2 (1 voxel), redraws lesion 1 with the rim
    (+1) and includes the bowel (+27): 55 voxels, 29 changed."""
    ids, suv, tissue = _scene()
    suv[8, 10, 10] = 5.0
    mask, rec = annotate(ids, suv, tissue, SPACING, "sloppy", np.random.default_rng(0))
    parts = rec["details"]["parts"]
    assert rec["kind"] == "sloppy" and rec["applied"] and rec["details"]["order"] == list(SLOPPY_PARTS)
    assert {r["lesion_id"]: r["status"] for r in rec["lesions"]} == {1: "kept", 2: "missed"}
    assert [(k, parts[k]["applied"], parts[k]["changed_voxels"]) for k in SLOPPY_PARTS] == [
        ("missed_lesion", True, 1), ("convention", True, 1), ("physiological", True, 27)]
    assert parts["convention"]["convention"] in CONVENTIONS and parts["physiological"]["tissue"] == "bowel"
    assert int(mask.sum()) == 55 and rec["changed_voxels"] == 29
    assert mask[17, 17, 2] == 0 and mask[8, 10, 10] == 1 and mask[9:12, 9:12, 9:12].all()
    assert mask[9:12, 9:12, 13:16].all()
    assert "threshold" not in rec["lesions"][1]  # the missed lesion was not redrawn


def test_sloppy_parts_that_cannot_apply_are_recorded_not_replaced():
    ids, suv, tissue = _scene(two_lesions=False, organs=False)
    suv[:5, :5, :] = 1.0  # cool liver: nothing physiological at SUV >= 2.5
    # one sharp lesion: no miss (needs two), every convention reproduces it, nothing hot to include
    mask, rec = annotate(ids, suv, tissue, SPACING, "sloppy", np.random.default_rng(3))
    parts = rec["details"]["parts"]
    assert rec["kind"] is None and not rec["applied"] and rec["changed_voxels"] == 0
    assert np.array_equal(mask, (ids > 0).astype(np.uint8))
    assert not any(parts[k]["applied"] for k in SLOPPY_PARTS)
    for k, words in (("missed_lesion", "needs two"), ("convention", "reproduces the mask"),
                     ("physiological", "no hot physiological")):
        assert words in parts[k]["reason"] and f"{k}: " in rec["reason"]
    # a warm rim voxel: only the convention part applies (+1 voxel); the others stay recorded as not applied
    suv[8, 10, 10] = 5.0
    mask, rec = annotate(ids, suv, tissue, SPACING, "sloppy", np.random.default_rng(3))
    parts = rec["details"]["parts"]
    assert rec["kind"] == "sloppy" and rec["changed_voxels"] == 1 and mask[8, 10, 10] == 1
    assert [parts[k]["applied"] for k in SLOPPY_PARTS] == [False, True, False]


def test_sloppy_parts_draw_from_their_own_generators():
    """The convention drawn for a seed does not depend on what the miss part drew before it: the same with one
    lesion (no miss draw) as with two; it is the second spawned generator's choice."""
    one = _scene(two_lesions=False)
    two = _scene()
    for seed in range(8):
        conv_one = annotate(*one, SPACING, "sloppy", np.random.default_rng(seed))[1]["details"]["parts"]["convention"]
        conv_two = annotate(*two, SPACING, "sloppy", np.random.default_rng(seed))[1]["details"]["parts"]["convention"]
        expected = str(np.random.default_rng(seed).spawn(3)[1].choice(CONVENTIONS))
        assert conv_one["convention"] == conv_two["convention"] == expected


def test_raw_twin_dataset_with_the_sloppy_reader(tmp_path):
    """The raw generator deals ``sloppy`` like any kind: every affected patient's record lists the three parts, and
    the written label differs from the clean mask by the recorded number of voxels (12 mm study crop)."""
    import json

    import SimpleITK as sitk

    from clips_nnunet.synthetic.raw import make_synthetic_raw_dataset, truth_dir

    folder = make_synthetic_raw_dataset(tmp_path / "raw", 995, "Sloppy", n_train=2, n_test=0, seed=25,
                                        shape=(72, 27, 32), spacing=(12.0, 12.0, 12.0), phantom="twin",
                                        label_error_fraction=1.0, label_error_kinds=["sloppy"])
    truth = truth_dir(tmp_path / "raw", 995, "Sloppy")
    errors = json.loads((truth / "annotation_errors.json").read_text())["cases"]
    assert [rec["requested_kind"] for rec in errors.values()] == ["sloppy", "sloppy"]
    for case_id, rec in errors.items():
        parts = rec["details"]["parts"]
        assert sorted(parts) == sorted(SLOPPY_PARTS)
        assert all(("reason" in p) != p["applied"] for p in parts.values())
        assert rec["applied"] == any(p["applied"] for p in parts.values())
        clean = sitk.GetArrayFromImage(sitk.ReadImage(str(truth / "labels_clean" / f"{case_id}.nii.gz")))
        given = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / f"{case_id}.nii.gz")))
        assert int((clean != given).sum()) == rec["changed_voxels"]
