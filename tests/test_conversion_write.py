"""Unit tests of the raw-dataset writer pieces: case registry, splits, metadata, validation, spacing."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from clips_nnunet.dataset_conversion import write as W
from clips_nnunet.dataset_conversion.convert import LabelOption, resample_to_spacing, vendor_name
from clips_nnunet.dataset_conversion.metadata import case_metadata, lesion_to_background
from clips_nnunet.errors import ClipsError, DatasetError


def test_lesion_to_background_by_hand():
    suv = np.full((30, 30, 30), 1.0, dtype=np.float32)
    mask = np.zeros(suv.shape, dtype=np.uint8)
    mask[10:13, 10:13, 10:13] = 1
    suv[mask > 0] = 5.0
    suv[0:3] = 50.0  # a hot organ: a minority of the shell, the median ignores it
    assert lesion_to_background(suv, mask, (2.0, 2.0, 2.0)) == pytest.approx(5.0)
    suv[:] = 0.0  # air only around the lesion: no background
    suv[mask > 0] = 5.0
    assert lesion_to_background(suv, mask, (2.0, 2.0, 2.0)) is None
    assert lesion_to_background(suv, np.zeros_like(mask), (2.0, 2.0, 2.0)) is None


def test_lesion_to_background_equals_whole_volume_distance_map():
    rng = np.random.default_rng(1)
    suv = rng.gamma(3.0, 0.5, (40, 36, 44)).astype(np.float32)
    mask = np.zeros(suv.shape, dtype=bool)
    for c in ((8, 8, 8), (30, 20, 35), (12, 28, 20)):
        mask[tuple(slice(v - 2, v + 2) for v in c)] = True
    spacing = (3.0, 2.0, 2.5)
    d = ndimage.distance_transform_edt(~mask, sampling=spacing)
    shell = (d >= 10) & (d <= 30) & (suv > 0.1)
    expected = suv[mask].mean() / np.median(suv[shell])
    assert lesion_to_background(suv, mask, spacing) == pytest.approx(expected, rel=1e-6)


def test_case_metadata_fields():
    suv = np.ones((10, 10, 10), dtype=np.float32)
    mask = np.zeros((10, 10, 10), dtype=np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    mask[7, 7, 7] = 1
    suv[mask > 0] = 4.0
    md = case_metadata(mask, suv, (2.0, 1.0, 1.0), vendor="GE", split="train", group="G0001")
    assert md["n_lesions"] == 2 and md["tmtv_ml"] == pytest.approx(9 * 2.0 / 1000)
    assert md["suv_max"] == 4.0 and md["tlg"] == pytest.approx(4.0 * 0.018)
    assert md["vendor"] == "GE" and md["patient_group"] == "G0001" and md["has_label"]
    test = case_metadata(None, suv, (2.0, 1.0, 1.0), split="test")
    assert "tmtv_ml" not in test and test["has_label"] is False


def test_case_registry_is_stable_and_opaque(tmp_path):
    reg = W.CaseRegistry.load(tmp_path, "Lymphoma")
    keys = [("PAT-B", "1.2.3"), ("PAT-A", "1.2.4"), ("PAT-A", "1.2.5")]
    ids = reg.assign(keys)
    assert sorted(ids.values()) == ["Lymphoma_0001", "Lymphoma_0002", "Lymphoma_0003"]
    reg.save()
    again = W.CaseRegistry.load(tmp_path, "Lymphoma")
    more = again.assign(keys + [("PAT-C", "9.9")])
    assert {k: more[k] for k in keys} == ids and more[("PAT-C", "9.9")] == "Lymphoma_0004"
    assert again.group_of_case(ids[("PAT-A", "1.2.4")]) == again.group_of_case(ids[("PAT-A", "1.2.5")])
    # the order of numbers follows a salted hash: another salt gives (for enough keys) another order
    many = [(f"P{i:03d}", "s") for i in range(40)]
    a = W.CaseRegistry(tmp_path / "a.json", "X", "salt-a", {}, {}).assign(many)
    b = W.CaseRegistry(tmp_path / "b.json", "X", "salt-b", {}, {}).assign(many)
    assert a != b and sorted(a.values()) == sorted(b.values())
    assert [a[k] for k in many] != sorted(a.values())  # not in PatientID order
    with pytest.raises(DatasetError, match="prefix"):
        W.CaseRegistry.load(tmp_path, "Other")


def test_patient_grouped_splits():
    groups = {f"c{i:02d}": f"g{i // 2}" for i in range(14)}  # 7 patients with 2 studies each
    groups.update({"c90": "g90", "c91": "g91", "c92": "g92"})
    splits = W.patient_grouped_splits(groups, n_folds=5)
    assert len(splits) == 5
    vals = [c for f in splits for c in f["val"]]
    assert sorted(vals) == sorted(groups)
    for f in splits:
        assert set(f["train"]) | set(f["val"]) == set(groups) and not set(f["train"]) & set(f["val"])
        fold_groups = {groups[c] for c in f["val"]}
        assert all(groups[c] not in fold_groups for c in f["train"])
    assert max(len(f["val"]) for f in splits) - min(len(f["val"]) for f in splits) <= 2
    assert W.patient_grouped_splits(groups) == splits  # deterministic
    assert len(W.patient_grouped_splits({"a": "g1", "b": "g2"})) == 2
    with pytest.raises(DatasetError, match="at least 2"):
        W.patient_grouped_splits({"a": "g1", "b": "g1"})


def test_write_splits_keeps_existing(tmp_path):
    assert W.write_splits(tmp_path, [{"train": ["a"], "val": ["b"]}]) is True
    assert W.write_splits(tmp_path, [{"train": ["b"], "val": ["a"]}]) is False
    assert W.write_splits(tmp_path, [{"train": ["b"], "val": ["a"]}], force=True) is True


def test_validation_messages(tmp_path):
    with pytest.raises(DatasetError, match="1-999"):
        W.dataset_folder_name(1000, "X")
    with pytest.raises(DatasetError, match="no '_'"):
        W.dataset_folder_name(501, "My_Data")
    assert W.dataset_folder_name(7, "Lymphoma") == "Dataset007_Lymphoma"
    with pytest.raises(DatasetError, match="inside nnUNet_raw"):
        W.check_private_dir(tmp_path / "raw" / "x", tmp_path / "raw")
    with pytest.raises(ClipsError, match="not one of"):
        LabelOption.parse("masks")
    with pytest.raises(ClipsError, match="does not exist"):
        LabelOption.parse(f"nifti:{tmp_path / 'missing'}")
    assert W.scrub("id PAT123 and PAT1234", ["PAT123", "PAT1234"]) == "id <redacted> and <redacted>"
    assert vendor_name("GE MEDICAL SYSTEMS") == "GE" and vendor_name("Philips Medical Systems") == "PHILIPS"


def test_resample_to_spacing_keeps_extent():
    pet = sitk.Image([40, 30, 20], sitk.sitkFloat32)
    pet.SetSpacing((4.0, 4.0, 3.0))
    pet.SetOrigin((-80.0, 10.0, -30.0))
    ref = resample_to_spacing(pet, (2.0, 2.0, 2.0))
    assert ref.GetSize() == (80, 60, 30)
    lo = np.asarray(ref.GetOrigin()) - np.asarray(ref.GetSpacing()) / 2
    assert np.allclose(lo, np.asarray(pet.GetOrigin()) - np.asarray(pet.GetSpacing()) / 2)
    with pytest.raises(ClipsError, match="positive"):
        resample_to_spacing(pet, (0, 1, 1))


def test_write_case_geometry_and_clean_headers(tmp_path):
    pet = sitk.GetImageFromArray(np.random.default_rng(0).random((4, 5, 6)).astype(np.float32))
    pet.SetSpacing((2.0, 2.0, 3.0))
    pet.SetMetaData("0010|0010", "SECRET^NAME")
    ct = sitk.Image(pet)
    mask = np.zeros((4, 5, 6), np.uint8)
    mask[1, 2, 3] = 1
    files = W.write_case(tmp_path, "X_0001", ct, pet, mask)
    assert [f.parent.name for f in files] == ["imagesTr", "imagesTr", "labelsTr"]
    import gzip
    for f in files:
        assert b"SECRET" not in gzip.decompress(f.read_bytes())
    lab = sitk.ReadImage(str(files[2]))
    assert lab.GetPixelID() == sitk.sitkUInt8 and lab.GetSpacing() == pet.GetSpacing()
    bad = sitk.Image([6, 5, 3], sitk.sitkFloat32)
    with pytest.raises(ValueError, match="resample CT onto the PET"):
        W.write_case(tmp_path, "X_0002", bad, pet, None)
    assert W.remove_incomplete(tmp_path, []) == ["X_0001"] and not files[0].exists()


def test_write_case_uncopied_images_and_a_ct_grid_within_tolerance(tmp_path):
    """A float32 image without metadata is written as it is (clean_image returns it); a CT whose origin differs
    from the PET's by less than the tolerance is written on exactly the PET's grid, and the caller's CT keeps its
    own origin (the copy happens only then)."""
    rng = np.random.default_rng(1)
    pet = sitk.GetImageFromArray(rng.random((4, 5, 6)).astype(np.float32))
    pet.SetSpacing((2.0, 2.0, 3.0))
    pet.SetOrigin((10.0, 20.0, 30.0))
    assert W.clean_image(pet, sitk.sitkFloat32) is pet
    ct = sitk.GetImageFromArray(rng.random((4, 5, 6)).astype(np.float32))
    ct.SetSpacing((2.0, 2.0, 3.0))
    ct.SetOrigin((10.00005, 20.0, 30.0))
    files = W.write_case(tmp_path, "X_0001", ct, pet, None)
    written = sitk.ReadImage(str(files[0]))
    assert written.GetOrigin() == pet.GetOrigin() and ct.GetOrigin() == (10.00005, 20.0, 30.0)
    assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayViewFromImage(ct))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(files[1]))), sitk.GetArrayViewFromImage(pet))


def test_update_splits_always_matches_the_cases(tmp_path):
    """written -> kept (same cases) -> rewritten (ours, cases changed) -> stale (someone else's) -> --force."""
    pre, private = tmp_path / "pre", tmp_path / "private"
    private.mkdir()
    groups = {"c1": "g1", "c2": "g2", "c3": "g3"}
    assert W.update_splits(pre, private, groups, n_folds=3).status == "written"
    assert W.splits_cases(W.read_json(pre / "splits_final.json")) == {"c1", "c2", "c3"}
    kept = W.update_splits(pre, private, groups, n_folds=3)
    assert kept.status == "kept" and "lists the 3 training cases" in kept.message
    more = W.update_splits(pre, private, {**groups, "c4": "g4"}, n_folds=3)
    assert more.status == "rewritten" and "1 training case(s) added, 0 removed" in more.message
    assert W.splits_cases(W.read_json(pre / "splits_final.json")) == {"c1", "c2", "c3", "c4"}
    W.atomic_write_json(pre / "splits_final.json", [{"train": ["c1"], "val": ["c9"]}])  # hand-edited
    stale = W.update_splits(pre, private, groups, n_folds=3)
    assert stale.status == "stale"
    assert "lists 1 case(s) not in the dataset and misses 2 training case(s)" in stale.message
    assert "rerun with --force" in stale.message
    assert W.read_json(pre / "splits_final.json") == [{"train": ["c1"], "val": ["c9"]}]  # untouched
    assert W.update_splits(pre, private, groups, n_folds=3, force=True).status == "rewritten"
    assert W.splits_cases(W.read_json(pre / "splits_final.json")) == {"c1", "c2", "c3"}
    # fewer than 2 patients left: a file that no longer matches cannot be regenerated
    assert W.update_splits(pre, private, {"c1": "g1"}).status == "stale"
    assert W.update_splits(tmp_path / "other", private, {"c1": "g1"}).status == "none"


def test_verify_nifti_and_verify_case(tmp_path):
    from clips_nnunet.io_utils import verify_nifti

    img = sitk.GetImageFromArray(np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4))
    for name in ("a.nii.gz", "a.nii"):
        sitk.WriteImage(img, str(tmp_path / name), useCompression=name.endswith(".gz"))
        assert verify_nifti(tmp_path / name, (4, 5, 6)) == (4, 5, 6)
        data = (tmp_path / name).read_bytes()
        (tmp_path / ("cut_" + name)).write_bytes(data[:-40])
        with pytest.raises(ValueError):
            verify_nifti(tmp_path / ("cut_" + name))
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="incomplete or damaged|less than a NIfTI header"):
        verify_nifti(tmp_path / "empty.nii.gz")
    # a case: CT and PET written, label missing -> the reason names the file
    ct = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))
    W.write_case(tmp_path / "ds", "X_0001", ct, ct, np.zeros((4, 5, 6), np.uint8))
    assert W.verify_case(tmp_path / "ds", "X_0001", True) is None
    (tmp_path / "ds" / "labelsTr" / "X_0001.nii.gz").unlink()
    assert W.verify_case(tmp_path / "ds", "X_0001", True) == "X_0001.nii.gz is missing"
    assert [f.name for f in W.remove_case_files(tmp_path / "ds", "X_0001")] == ["X_0001_0000.nii.gz",
                                                                                "X_0001_0001.nii.gz"]
