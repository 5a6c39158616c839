"""Synthetic PET/CT DICOM cohort: known SUV per vendor, masks, difficulty spread, faults, CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from clips_nnunet.dataset_conversion.masks import rasterise_rtstruct, read_seg_mask
from clips_nnunet.dataset_conversion.suv import read_pet_suv
from clips_nnunet.synthetic.dicom_cohort import (SIZES, load_manifest, make_study_specs,
                                                       make_synthetic_cohort)
from nnunet_helpers import nnunet_environment, run_cli


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_cohort")
    manifest = make_synthetic_cohort(root, n_patients=4, seed=3, faults=["nac", "second-study"], progress=False)
    return root, manifest


def _pet_files(root: Path, study: dict):
    return sorted((root / study["study_dir"] / "PET").glob("*.dcm"))


def test_layout_and_manifest(cohort):
    root, manifest = cohort
    studies = {s["key"]: s for s in manifest["studies"]}
    assert sorted(studies) == ["p000_s1", "p001_s1", "p002_s1", "p002_s2", "p003_s1"]
    assert {s["vendor"] for s in studies.values()} == {"SIEMENS", "GE", "PHILIPS"}
    assert studies["p003_s1"]["faults"] == ["nac"] and studies["p002_s2"]["faults"] == ["second-study"]
    assert (root / studies["p003_s1"]["study_dir"] / "PET_NAC").is_dir()
    assert studies["p002_s1"]["identity"] == studies["p002_s2"]["identity"]
    assert load_manifest(root) == manifest
    for s in studies.values():
        d = root / s["study_dir"]
        assert len(list((d / "PET").glob("*.dcm"))) == SIZES["small"].pet_shape[0]
        assert len(list((d / "CT").glob("*.dcm"))) == SIZES["small"].ct_shape[0]
        assert (d / "SEG" / "lesions_seg.dcm").is_file() and (d / "RTSTRUCT" / "lesions_rtstruct.dcm").is_file()
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(root / s["label_path"])))
        assert label.sum() == s["n_label_voxels"] > 0


def test_known_suv_is_reproduced_for_every_vendor(cohort):
    """The converter's SUV reader reproduces the ground truth exactly (Siemens BQML, GE private time, Philips CNTS)."""
    root, manifest = cohort
    for s in manifest["studies"]:
        pet = read_pet_suv(_pet_files(root, s), label=s["key"])
        gt = sitk.ReadImage(str(root / s["suv_path"]))
        np.testing.assert_allclose(sitk.GetArrayFromImage(pet), sitk.GetArrayFromImage(gt), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(pet.GetOrigin(), gt.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(pet.GetSpacing(), gt.GetSpacing(), atol=1e-6)
        assert 5.0 < sitk.GetArrayFromImage(gt).max() < 60.0  # lesion/bladder/brain uptake, in SUV


def test_vendor_header_conventions(cohort):
    root, manifest = cohort
    for s in manifest["studies"]:
        ds = pydicom.dcmread(_pet_files(root, s)[0], stop_before_pixels=True)
        assert "ATTN" in ds.CorrectedImage and ds.DecayCorrection == "START"
        if s["vendor"] == "GE":
            assert ds[0x0009, 0x0010].value == "GEMS_PETD_01" and (0x0009, 0x100D) in ds
            assert ds.SeriesTime > ds.AcquisitionTime  # SeriesTime unusable: the private time must be used
            assert "RadiopharmaceuticalStartDateTime" not in ds.RadiopharmaceuticalInformationSequence[0]
        elif s["vendor"] == "PHILIPS":
            assert ds.Units == "CNTS" and float(ds[0x7053, 0x1000].value) > 0 and float(ds[0x7053, 0x1009].value) > 0
        else:
            assert ds.Units == "BQML" and ds.Manufacturer == "SIEMENS"
        assert ds.PatientName and ds.PatientID and ds.PatientBirthDate and float(ds.PatientWeight) > 40


def test_seg_and_rtstruct_match_known_masks_with_holes(cohort):
    root, manifest = cohort
    holes_seen = 0
    for s in manifest["studies"]:
        d = root / s["study_dir"]
        files = _pet_files(root, s)
        gt_img = sitk.ReadImage(str(root / s["label_path"]))
        gt = sitk.GetArrayFromImage(gt_img)
        seg = read_seg_mask(d / "SEG" / "lesions_seg.dcm", gt_img, files, label=s["key"])
        rt = rasterise_rtstruct(d / "RTSTRUCT" / "lesions_rtstruct.dcm", gt_img, label=s["key"])
        for mask in (seg, rt):
            dice = 2.0 * np.logical_and(mask, gt).sum() / (mask.sum() + gt.sum())
            assert dice == 1.0
        filled = np.stack([ndimage.binary_fill_holes(sl) for sl in gt])
        if (filled & ~gt.astype(bool)).any():  # in-plane holes (necrotic cores) are in the truth ...
            holes_seen += 1
            assert not rt[filled & ~gt.astype(bool)].any()  # ... and stay holes after the even-odd rule
    assert holes_seen >= 1


def test_difficulty_is_spread_and_drives_lesions():
    specs = make_study_specs(16, seed=0)
    d = np.array([s.difficulty for s in specs])
    assert d.min() == 0.0 and d.max() == 1.0 and len(set(np.round(d, 6))) == 16
    contrast = np.array([np.mean([les.contrast for les in s.lesions]) for s in specs])
    size = np.array([np.mean([max(les.radii_mm) for les in s.lesions]) for s in specs])
    assert np.corrcoef(d, contrast)[0, 1] < -0.8 and np.corrcoef(d, size)[0, 1] < -0.8
    easiest, hardest = specs[int(np.argmin(d))], specs[int(np.argmax(d))]
    assert len(hardest.lesions) > len(easiest.lesions)
    # deterministic for a seed, different for another seed
    again = make_study_specs(16, seed=0)
    assert [s.lesions for s in again] == [s.lesions for s in specs]
    assert [s.lesions for s in make_study_specs(16, seed=1)] != [s.lesions for s in specs]


def test_spec_validation():
    with pytest.raises(ValueError, match="unknown fault"):
        make_study_specs(4, faults=["bogus"])
    with pytest.raises(ValueError, match="n_patients"):
        make_study_specs(2, faults=["nac", "corrupted"])
    with pytest.raises(ValueError, match="size"):
        make_study_specs(2, size="huge")
    assert SIZES["wholebody"].ct_shape == (700, 512, 512) and SIZES["wholebody"].pet_shape == (350, 200, 200)


@pytest.mark.integration
def test_synth_cli_plants_faults(tmp_path):
    env = nnunet_environment(tmp_path / "nn")
    out = tmp_path / "cohort"
    proc = run_cli(["clips-nnunet", "synth", str(out), "-n", "4", "--seed", "5", "--quiet", "--phantom", "box",
                    "--faults", "missing-weight,corrupted,localizer"], env)
    assert "wrote 4 studies" in proc.stdout
    studies = {s["key"]: s for s in load_manifest(out)["studies"]}
    weightless = pydicom.dcmread(next((out / studies["p003_s1"]["study_dir"] / "PET").glob("*.dcm")))
    assert "PatientWeight" not in weightless
    assert (out / studies["p002_s1"]["corrupted_file"]).stat().st_size == 300
    topogram = next((out / studies["p001_s1"]["study_dir"] / "CT_TOPOGRAM").glob("*.dcm"))
    assert "LOCALIZER" in pydicom.dcmread(topogram).ImageType
    bad = run_cli(["clips-nnunet", "synth", str(tmp_path / "x"), "--faults", "nope"], env, check=False)
    assert bad.returncode == 2 and "unknown fault" in bad.stderr


def test_seg_and_rtstruct_carry_the_planted_annotation_errors(tmp_path):
    """SEG and RTSTRUCT are written from the erroneous mask; the clean mask stays in ground_truth/."""
    manifest = make_synthetic_cohort(tmp_path, n_patients=3, seed=5, progress=False, label_error_fraction=1.0,
                                     label_error_kinds=["slice_shift", "missed_lesion"])
    planted = [s for s in manifest["studies"] if s["annotation_error"]["kind"]]
    assert len(planted) >= 2
    for s in planted:
        d = tmp_path / s["study_dir"]
        clean_img = sitk.ReadImage(str(tmp_path / s["label_path"]))
        clean = sitk.GetArrayFromImage(clean_img).astype(bool)
        noisy = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / s["annotated_label_path"]))).astype(bool)
        assert int((noisy != clean).sum()) == s["annotation_error"]["changed_voxels"] > 0
        seg = read_seg_mask(d / "SEG" / "lesions_seg.dcm", clean_img, _pet_files(tmp_path, s), label=s["key"])
        rt = rasterise_rtstruct(d / "RTSTRUCT" / "lesions_rtstruct.dcm", clean_img, label=s["key"])
        assert np.array_equal(seg.astype(bool), noisy)
        assert 2.0 * np.logical_and(rt, noisy).sum() / (rt.sum() + noisy.sum()) > 0.99
