"""Planted annotation errors (clips_nnunet.synthetic.annotation_errors) on small hand-checkable arrays, and their
hook into the raw synthetic generator (clean masks and error records beside, never inside, the nnU-Net dataset)."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from clips_nnunet.synthetic import annotation_errors as ae


def _two_lesions():
    label = np.zeros((6, 6, 6), np.uint8)
    label[1:3, 1:3, 1:3] = 1  # 8 voxels
    label[4, 4, 4] = 1  # 1 voxel (smallest)
    return label


def test_miss_small_lesions_removes_the_smallest_and_keeps_one():
    out, rec = ae.miss_small_lesions(_two_lesions())
    assert rec == {"removed_lesions": 1, "removed_voxels": 1}
    assert out.sum() == 8 and not out[4, 4, 4]
    single = np.zeros((4, 4, 4), bool)
    single[1, 1, 1] = True
    out, rec = ae.miss_small_lesions(single, n_missed=3)
    assert rec["removed_lesions"] == 0 and out.sum() == 1


def test_threshold_methods_on_a_1d_profile():
    # one row of SUV 1, 3, 5, 10, 5, 3, 1 along x; clean lesion = the peak voxel only
    suv = np.zeros((1, 1, 7))
    suv[0, 0] = [1, 3, 5, 10, 5, 3, 1]
    label = np.zeros_like(suv, np.uint8)
    label[0, 0, 3] = 1
    # 41 % of 10 = 4.1 -> voxels 2..4; SUV >= 2.5 -> 1..5 (margin 2 reaches 1..5); SUV >= 4 -> 2..4
    assert ae.threshold_mask(label, suv, "41pct_suvmax")[0, 0].nonzero()[0].tolist() == [2, 3, 4]
    assert ae.threshold_mask(label, suv, "suv2.5")[0, 0].nonzero()[0].tolist() == [1, 2, 3, 4, 5]
    assert ae.threshold_mask(label, suv, "suv4")[0, 0].nonzero()[0].tolist() == [2, 3, 4]
    # margin 1 stops the growth at 2..4 even for SUV >= 2.5
    assert ae.threshold_mask(label, suv, "suv2.5", margin_vox=1)[0, 0].nonzero()[0].tolist() == [2, 3, 4]
    # a lesion below 4 disappears with the SUV >= 4 convention
    assert not ae.threshold_mask(label, suv * 0.3, "suv4").any()


def test_hottest_unlabelled_region_and_slice_shift():
    suv = np.ones((5, 5, 5))
    suv[0, 0, 0:2] = 20.0  # hot physiological region, 2 voxels
    suv[0, 0, 2] = 9.0  # below 50 % of 20: not part of it
    suv[4, 4, 4] = 30.0  # hotter, but next to the lesion: excluded
    label = np.zeros((5, 5, 5), np.uint8)
    label[3, 3, 3] = 1
    region = ae.hottest_unlabelled_region(label, suv)
    assert sorted(map(tuple, np.argwhere(region))) == [(0, 0, 0), (0, 0, 1)]
    shifted = ae.shift_slices(label, 1)
    assert shifted[4, 3, 3] and shifted.sum() == 1
    assert ae.shift_slices(label, 2).sum() == 0  # moved out of the volume
    assert ae.shift_slices(label, -2)[1, 3, 3]


def test_plant_records_kind_and_falls_back():
    rng = np.random.default_rng(0)
    label = _two_lesions()
    out, rec = ae.plant_annotation_error(label, "missed_lesion", rng)
    assert rec["kind"] == "missed_lesion" and rec["changed_voxels"] == 1 and out.dtype == np.uint8
    single = np.zeros((6, 6, 6), np.uint8)
    single[2:4, 2:4, 2:4] = 1
    # one lesion: nothing to miss, no SUV: only a slice shift applies (2x2x2 cube moved 1 or 2 slices)
    out, rec = ae.plant_annotation_error(single, "missed_lesion", rng)
    assert rec["kind"] == "slice_shift" and rec["requested_kind"] == "missed_lesion"
    assert rec["changed_voxels"] == (8 if abs(rec["shift_slices"]) == 1 else 16)
    out, rec = ae.plant_annotation_error(single, "missed_lesion", rng, fallback_kinds=["missed_lesion"])
    assert rec["kind"] is None and np.array_equal(out, single)
    with pytest.raises(ValueError, match="unknown"):
        ae.plant_annotation_error(single, "typo", rng)
    with pytest.raises(TypeError, match="Generator"):
        ae.plant_annotation_error(single, "slice_shift", 0)


def test_choose_error_cases_deals_kinds_evenly_and_is_seeded():
    ids = [f"c{i}" for i in range(16)]
    a = ae.choose_error_cases(ids, 0.25, ae.ERROR_KINDS, np.random.default_rng(3))
    b = ae.choose_error_cases(ids, 0.25, ae.ERROR_KINDS, np.random.default_rng(3))
    assert a == b and len(a) == 4 and sorted(a.values()) == sorted(ae.ERROR_KINDS)
    assert ae.choose_error_cases(ids, 0.0, ae.ERROR_KINDS, np.random.default_rng(0)) == {}
    with pytest.raises(ValueError):
        ae.choose_error_cases(ids, 1.5, ae.ERROR_KINDS, np.random.default_rng(0))


def test_raw_generator_plants_errors_beside_the_dataset(tmp_path):
    from clips_nnunet.synthetic.raw import make_synthetic_raw_dataset, truth_dir

    raw = tmp_path / "nnUNet_raw"
    folder = make_synthetic_raw_dataset(raw, 991, "Err", n_train=8, n_test=1, shape=(16, 16, 16),
                                        label_error_fraction=0.5, seed=1)
    truth = truth_dir(raw, 991, "Err")
    assert not str(truth).startswith(str(raw.resolve()))
    errors = json.loads((truth / "annotation_errors.json").read_text())["cases"]
    planted = {c for c, r in errors.items() if r["kind"]}
    assert len(planted) >= 3 and all(errors[c]["split"] == "Tr" for c in planted)
    for case, rec in errors.items():
        split = rec["split"]
        noisy = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"labels{split}" / f"{case}.nii.gz")))
        clean = sitk.GetArrayFromImage(sitk.ReadImage(str(truth / "labels_clean" / f"{case}.nii.gz")))
        assert int((noisy != clean).sum()) == (rec["changed_voxels"] if rec["kind"] else 0)
    for name in ("dataset.json", "case_metadata.json"):
        text = (folder / name).read_text()
        assert "kind" not in text and "missed_lesion" not in text and "slice_shift" not in text
    # images and clean masks do not depend on the planted errors
    clean_folder = make_synthetic_raw_dataset(tmp_path / "b" / "nnUNet_raw", 991, "Err", n_train=8, n_test=1,
                                              shape=(16, 16, 16), seed=1, physiological_uptake=True)
    for case in errors:
        split = errors[case]["split"]
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(clean_folder / f"images{split}" / f"{case}_0001.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"images{split}" / f"{case}_0001.nii.gz")))
        assert np.array_equal(a, b)


def test_choose_error_cases_with_the_twin_kinds():
    from clips_nnunet.synthetic.twin_annotators import TWIN_ERROR_KINDS

    planned = ae.choose_error_cases([f"c{i}" for i in range(12)], 0.5, TWIN_ERROR_KINDS, np.random.default_rng(0),
                                    known=TWIN_ERROR_KINDS)
    assert sorted(planned.values()) == sorted(TWIN_ERROR_KINDS)
    with pytest.raises(ValueError, match="slice_shift"):
        ae.choose_error_cases(["a", "b"], 0.5, ["slice_shift"], np.random.default_rng(0), known=TWIN_ERROR_KINDS)
    with pytest.raises(ValueError, match="leak"):
        ae.choose_error_cases(["a", "b"], 0.5, ["leak"], np.random.default_rng(0))  # box kinds by default
