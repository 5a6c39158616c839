"""The whole-body twin (clips_nnunet.synthetic.twin*): uptake and HU per tissue, PSF and noise against hand-computed
bounds, disease distributions, determinism, and the threshold ceiling on a small study-grid cohort."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, special

from clips_nnunet.synthetic.twin import (CLINICAL_GRIDS, SMALL_GRIDS, STUDY_GRID, TRUNK_GRIDS, make_twin, study_case,
                                        twin_grids)
from clips_nnunet.synthetic.twin_anatomy import HU, TISSUES, UPTAKE, BodyFrame, draw_patient
from clips_nnunet.synthetic.twin_ceiling import CeilingCase, threshold_ceiling
from clips_nnunet.synthetic.twin_disease import TwinLesion, draw_disease
from clips_nnunet.synthetic.twin_physics import FWHM_TO_SIGMA, apply_psf
from clips_nnunet.synthetic.twin_render import Grid, PetCanvas


@pytest.fixture(scope="module")
def clinical():
    """One clinical-size PET twin (Philips grid, 144 x 144 x 262 at 4 mm), without CT."""
    return make_twin(11, grids=(CLINICAL_GRIDS["PHILIPS"][0], None))


def _median(case, tissue, array=None):
    values = (case.pet_true if array is None else array)[case.tissue == TISSUES[tissue]]
    assert values.size > 0, f"{tissue} missing from the twin"
    return float(np.median(values))


def test_physiological_uptake_in_expected_ranges(clinical):
    p = clinical.patient.suv
    assert UPTAKE["liver"][0] <= _median(clinical, "liver") <= UPTAKE["liver"][1]
    assert UPTAKE["brain_gm"][0] <= _median(clinical, "brain_gm") <= UPTAKE["brain_gm"][1]
    assert _median(clinical, "brain_wm") < 0.5 * _median(clinical, "brain_gm")
    assert _median(clinical, "bladder") == pytest.approx(p["urine"], rel=0.02) and p["urine"] >= 5.0
    assert _median(clinical, "lung") < 0.7 and _median(clinical, "fat") < 0.45
    assert UPTAKE["blood"][0] <= _median(clinical, "blood") <= UPTAKE["blood"][1]
    assert UPTAKE["kidney"][0] <= _median(clinical, "kidney") <= UPTAKE["kidney"][1]
    for organ in ("spleen", "myocardium", "bowel", "marrow", "tonsil", "salivary", "collecting"):
        assert (clinical.tissue == TISSUES[organ]).sum() > 0, organ


def test_uptake_varies_between_patients():
    rng = np.random.default_rng(0)
    patients = [draw_patient(rng, 75.0, 1.75, "M") for _ in range(300)]
    myo = np.array([p.suv["myocardium"] for p in patients])
    assert myo.min() < 2.6 and myo.max() > 10.0  # near background to very high
    assert max(p.suv["urine"] for p in patients) > 50.0
    brown = np.mean([bool(p.brown_fat_stations) for p in patients])
    gcsf = np.mean([p.marrow_gcsf for p in patients])
    assert 0.04 < brown < 0.25 and 0.04 < gcsf < 0.25  # a minority
    assert all("supraclavicular" in p.brown_fat_stations for p in patients if p.brown_fat_stations)
    assert np.std([p.suv["liver"] for p in patients]) > 0.15


def test_ct_hu_per_tissue():
    grid = SMALL_GRIDS[0]
    case = make_twin(4, grids=(grid, grid))
    for tissue in ("lung", "liver", "fat", "muscle", "bladder"):
        assert _median(case, tissue, case.ct) == pytest.approx(HU[tissue], abs=1.0), tissue
    assert _median(case, "bone", case.ct) > 300


def test_liver_noise_cov_matches_the_drawn_value(clinical):
    core = ndimage.binary_erosion(clinical.tissue == TISSUES["liver"], iterations=3)
    values = clinical.pet[core]
    cov = float(values.std() / values.mean())
    drawn = clinical.physics["noise_cov"]
    assert 0.10 <= drawn <= 0.15
    assert 0.8 * drawn <= cov <= 1.2 * drawn
    # spatially correlated: neighbouring voxels' noise is correlated (white noise would give ~0)
    sub = np.where(core, clinical.pet - values.mean(), 0.0)
    pairs = core[:, :, 1:] & core[:, :, :-1]
    corr = float((sub[:, :, 1:] * sub[:, :, :-1])[pairs].mean() / values.var())
    assert corr > 0.3


def test_psf_broadens_a_generated_lesion_within_hand_computed_bounds():
    """A lesion of one ball lobule, radius r = 5 mm, painted on a 0.5 mm grid and blurred by FWHM F = 6 mm.

    Centre recovery of a ball under a 3-D Gaussian: erf(a) - 2a/sqrt(pi) exp(-a^2), a = r / (sigma sqrt 2)
    = 0.7215 for sigma = 6 / 2.3548 = 2.548 mm. Off-centre, at distance d, the blurred ball is the probability that
    a 3-D Gaussian point lies in the ball: a non-central chi-square CDF, ncx2.cdf(r^2/s^2, 3, d^2/s^2); half of the
    centre value is reached at d = 4.46 mm, so FWHM = 8.92 mm, broader than the PSF (6 mm) and narrower than
    F + 2r = 16 mm.
    """
    r, fwhm, suv = 5.0, 6.0, 10.0
    grid = Grid((81, 81, 81), (0.5, 0.5, 0.5))
    lesion = TwinLesion(1, "cervical_R", "nodal", 4.0 / 3.0 * np.pi * r ** 3 / 1000.0, suv, (0.0, 0.0, 0.0),
                        [((0.0, 0.0, 0.0), (r, r, r), suv)])
    canvas = PetCanvas(grid, TISSUES)
    for shape in lesion.shapes():
        canvas.paint(shape)
    assert canvas.activity.max() == pytest.approx(suv)
    blurred = apply_psf(canvas.activity, grid.spacing, fwhm)
    sigma = fwhm * FWHM_TO_SIGMA
    a = r / (sigma * np.sqrt(2.0))
    recovery = special.erf(a) - 2.0 * a / np.sqrt(np.pi) * np.exp(-a * a)
    assert recovery == pytest.approx(0.7215, abs=1e-3)
    centre = float(blurred[40, 40, 40])
    assert centre / suv == pytest.approx(recovery, abs=0.02)
    profile = blurred[40, 40, :]
    above = np.flatnonzero(profile >= 0.5 * profile.max())
    width = (above[-1] - above[0] + 1) * grid.spacing[2]
    assert fwhm <= width <= fwhm + 2 * r
    assert width == pytest.approx(8.92, abs=1.0)  # half-voxel sampling of the profile: +-0.5 mm each side
    # painted volume = the ball's volume (partial-volume painting conserves it to < 2 %)
    assert canvas.activity.sum() * 0.125 / 1000.0 / suv == pytest.approx(lesion.volume_ml, rel=0.02)


def test_disease_distributions_follow_the_calibration():
    rng = np.random.default_rng(1)
    tmtv, counts, suvmax, extranodal, bulky_cores = [], [], [], 0, 0
    for i in range(300):
        p = draw_patient(rng, 75.0, 1.75, "M")
        lesions = draw_disease(BodyFrame(p, 500.0), np.random.default_rng([1, i]))
        tmtv.append(sum(les.volume_ml for les in lesions))
        counts.append(len(lesions))
        suvmax.append(max(les.suv for les in lesions))
        extranodal += any(les.kind == "extranodal" for les in lesions)
        bulky_cores += any(les.core is not None for les in lesions)
    assert 200 <= np.median(tmtv) <= 450 and min(tmtv) < 15 and max(tmtv) > 2000
    assert min(counts) == 1 and max(counts) >= 20 and 3 <= np.median(counts) <= 15
    assert 12 <= np.median(suvmax) <= 24 and max(suvmax) > 40 and min(suvmax) < 8
    assert 0.3 < extranodal / 300 < 0.9 and bulky_cores > 30


def test_determinism_by_seed():
    a, b, c = (study_case(0, i) for i in (3, 3, 4))
    assert np.array_equal(a.pet, b.pet) and np.array_equal(a.label, b.label) and np.array_equal(a.ct, b.ct)
    assert a.summary == b.summary
    assert not np.array_equal(a.pet, c.pet)
    assert a.pet.shape == STUDY_GRID.shape and a.label.any()


def test_study_crop_keeps_the_neck_and_trunk_confounders():
    """The study crop reaches from the skull base to the thighs even for a tall patient (1.89 m, index 3): tonsils,
    salivary glands and thyroid beside the cervical nodes, and heart, kidneys, bowel, marrow and bladder."""
    case = study_case(0, 3)
    assert case.patient.height_m > 1.85
    present = set(np.unique(case.tissue).tolist())
    for tissue in ("tonsil", "salivary", "thyroid", "myocardium", "kidney", "collecting", "bowel", "marrow",
                   "bladder"):
        assert TISSUES[tissue] in present, tissue


def test_trunk_grid_is_the_oncological_field_of_view():
    """``--size trunk`` (the demo's DICOM twins): the small grids' voxels, placed like the study crop. A 1.75 m
    patient's vertex lies 580 mm above the crop's centre, so the 864 mm field starts 148 mm below the vertex: the
    same patient keeps the skull base's tonsils and the bladder and loses about three quarters of the brain's grey
    matter (the lowest, temporal and cerebellar, part stays), which the whole-body small grid shows in full."""
    assert twin_grids("trunk", "GE") == TRUNK_GRIDS and TRUNK_GRIDS[0].spacing == SMALL_GRIDS[0].spacing
    assert TRUNK_GRIDS[0].shape == (108, 64, 64) and TRUNK_GRIDS[1].shape == (108, 128, 128)
    trunk = make_twin(5, grids=(TRUNK_GRIDS[0], None), study=True)
    whole = make_twin(5, grids=(SMALL_GRIDS[0], None))
    brain = TISSUES["brain_gm"]
    for tissue in ("tonsil", "myocardium", "kidney", "bladder"):
        assert TISSUES[tissue] in set(np.unique(trunk.tissue).tolist()), tissue
    assert 0 < (trunk.tissue == brain).sum() < 0.3 * (whole.tissue == brain).sum()
    with pytest.raises(ValueError, match="choose small, trunk, wholebody"):
        twin_grids("huge", "GE")


def test_heterogeneity_lowers_lesion_uptake_by_at_most_its_depth():
    """Cold patches: outside the lesions nothing changes; inside, each voxel keeps 1 - depth .. 1 of its uptake
    (depth 0.5 for lesion 1, 0 for lesion 2), and a share of lesion 1 near half (where the field is <= 0) is
    unchanged."""
    from clips_nnunet.synthetic.twin import apply_heterogeneity

    ids = np.zeros((20, 20, 20), dtype=np.int16)
    ids[2:12, 2:12, 2:12], ids[14:18, 14:18, 14:18] = 1, 2
    activity = np.full(ids.shape, 10.0, dtype=np.float32)
    apply_heterogeneity(activity, ids, np.array([0.0, 0.5, 0.0], dtype=np.float32), (4.0, 4.0, 4.0),
                        np.random.default_rng(0))
    assert np.all(activity[ids == 0] == 10.0) and np.all(activity[ids == 2] == 10.0)
    inner = activity[ids == 1]
    assert inner.min() >= 5.0 - 1e-5 and inner.max() == pytest.approx(10.0)
    assert 0.2 < np.mean(inner == 10.0) < 0.8 and inner.min() < 7.0  # a correlated field: ~20 cells


def test_threshold_ceiling_on_a_small_study_cohort():
    cases = [study_case(7, i) for i in range(14)]
    cc = [CeilingCase(c.pet, c.label, c.tissue, c.pet_grid.spacing) for c in cases]
    for mask_out in (False, True):
        result = threshold_ceiling(cc[:8], cc[8:], mask_out=mask_out)
        assert result["test_dice"] <= 0.55, result
        assert 0.0 < result["test_dice"] and 1.0 <= result["threshold"] <= 20.0


def test_ceiling_helpers_by_hand():
    """Three 10^3 patients: a lesion block (SUV 6, 8 voxels) and a confounder block (SUV 3, 8 voxels or 0 voxels).
    Any threshold in (3, 6] segments every lesion exactly (Dice 1); at <= 3 the confounder halves the Dice of the
    patients that have one (2*8 / (16 + 8) = 0.667). Bladder masking removes a bladder block of SUV 9 + 10 mm."""
    from clips_nnunet.synthetic.twin_ceiling import cross_validated_ceiling, masked_pet

    cases = []
    for confounder in (True, False, True):
        pet = np.zeros((10, 10, 10), dtype=np.float32)
        label = np.zeros(pet.shape, dtype=np.uint8)
        tissue = np.zeros(pet.shape, dtype=np.uint8)
        pet[1:3, 1:3, 1:3], label[1:3, 1:3, 1:3] = 6.0, 1
        if confounder:
            pet[6:8, 6:8, 6:8] = 3.0
        cases.append(CeilingCase(pet, label, tissue, (4.0, 4.0, 4.0)))
    thresholds = [2.0, 3.0, 4.0, 7.0]
    from clips_nnunet.synthetic.twin_ceiling import dice_curve
    assert list(np.round(dice_curve(cases[0].pet, cases[0].label, thresholds), 3)) == [0.667, 0.667, 1.0, 0.0]
    cv = cross_validated_ceiling(cases, folds=3, thresholds=thresholds)
    assert cv["test_dice"] == pytest.approx(1.0) and cv["fold_thresholds"] == [4.0, 4.0, 4.0]
    bladder = cases[0]
    bladder.tissue[8:10, 0:2, 0:2] = TISSUES["bladder"]
    bladder.pet[8:10, 0:2, 0:2] = 9.0
    out = masked_pet(bladder)
    assert out[8:10, 0:2, 0:2].max() == 0.0 and out[7, 0, 0] == 0.0  # 4 mm away: inside the 10 mm margin
    assert out[1, 1, 1] == 6.0  # the lesion, 24+ mm away, stays


def test_raw_twin_dataset_keeps_truth_outside(tmp_path):
    import json

    import SimpleITK as sitk

    from clips_nnunet.synthetic.raw import make_synthetic_raw_dataset, truth_dir

    folder = make_synthetic_raw_dataset(tmp_path / "raw", 993, "TwinRaw", n_train=3, n_test=1, seed=2,
                                        phantom="twin", label_error_fraction=0.67,
                                        label_error_kinds=["boundary", "leak"])
    errors = json.loads((truth_dir(tmp_path / "raw", 993, "TwinRaw") / "annotation_errors.json").read_text())
    assert errors["phantom"] == "twin" and errors["label_error_kinds"] == ["boundary", "leak"]
    planted = {k: v for k, v in errors["cases"].items() if "requested_kind" in v}
    assert len(planted) == 2 and {v["requested_kind"] for v in planted.values()} == {"boundary", "leak"}
    for case_id, rec in errors["cases"].items():
        split = rec["split"]
        pet = sitk.ReadImage(str(folder / f"images{split}" / f"{case_id}_0001.nii.gz"))
        assert sitk.GetArrayFromImage(pet).shape == STUDY_GRID.shape and pet.GetSpacing() == (8.0, 8.0, 8.0)
        clean = sitk.GetArrayFromImage(sitk.ReadImage(str(truth_dir(tmp_path / "raw", 993, "TwinRaw")
                                                          / "labels_clean" / f"{case_id}.nii.gz")))
        given = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"labels{split}" / f"{case_id}.nii.gz")))
        assert int((clean != given).sum()) == rec.get("changed_voxels", 0)
    metadata = json.loads((folder / "case_metadata.json").read_text())
    assert all(0.0 <= m["planted_difficulty"] <= 1.0 for m in metadata.values())
    with pytest.raises(ValueError, match="convention"):
        make_synthetic_raw_dataset(tmp_path / "raw", 994, "Bad", n_train=2, n_test=0, phantom="twin",
                                   label_error_fraction=0.5, label_error_kinds=["slice_shift"])
