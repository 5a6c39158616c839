"""Reads are verified (issue 24, item 1): SimpleITK reads a truncated NIfTI as zeros without an error, so every
reader of the project checks the file first (``io_utils.read_image``). A short file fails that case with one line
naming the file: conversion (autoPET, ``--labels nifti:``, DICOM series), ``evaluate`` (and ``compare``, which
reads through it) and ``score``."""
from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from clips_nnunet.errors import DatasetError, PatientError
from clips_nnunet.io_utils import check_nifti_complete, grid_difference, read_image

SHAPE = (12, 16, 18)  # z, y, x


def _write(arr: np.ndarray, path: Path, spacing=(2.0, 2.0, 3.0), origin=(0.0, 0.0, 0.0)) -> Path:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), useCompression=path.name.endswith(".gz"))
    return path


def _truncate(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _volume(seed=0, dtype=np.float32):
    return (np.random.default_rng(seed).random(SHAPE) * 10).astype(dtype)


# ---------------------------------------------------------------------------------------------------- the helper
@pytest.mark.parametrize("name", ["x.nii.gz", "x.nii"])
def test_read_image_refuses_a_truncated_nifti_that_simpleitk_reads_as_zeros(tmp_path, name):
    f = _write(_volume(), tmp_path / name)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(f)), _volume())
    _truncate(f)
    zero_filled = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))  # the silent failure this guards against
    assert (zero_filled == 0).mean() > 0.3
    with pytest.raises(DatasetError, match=rf"cannot read image .*{name}: incomplete"):
        read_image(f)


def test_complete_file_with_an_unusual_gzip_layout_is_accepted(tmp_path):
    """Two gzip members (the trailer gives only the last member's length): the full check accepts it."""
    f = _write(_volume(), tmp_path / "x.nii.gz")
    raw = gzip.decompress(f.read_bytes())
    two = tmp_path / "two.nii.gz"
    two.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    assert check_nifti_complete(two) == (18, 16, 12)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(two)), _volume())
    two.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:-400]))
    with pytest.raises(ValueError, match="header needs"):
        check_nifti_complete(two)


def test_missing_and_junk_files_are_one_line_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_image(tmp_path / "none.nii.gz")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"\x00\x01binary" * 50)
    with pytest.raises(DatasetError, match="junk.nii.gz"):
        read_image(junk)


def test_one_same_grid_rule():
    a = sitk.Image(4, 5, 6, sitk.sitkUInt8)
    b = sitk.Image(4, 5, 6, sitk.sitkUInt8)
    b.SetOrigin((0.005, 0.0, 0.0))
    assert grid_difference(a, b) is None
    b.SetOrigin((0.05, 0.0, 0.0))
    assert "origin" in grid_difference(a, b)
    b.SetOrigin((0.0, 0.0, 0.0))
    b.SetSpacing((1.0, 1.0, 1.001))
    assert "spacing" in grid_difference(a, b)


# ------------------------------------------------------------------------------------------------------- autoPET
def test_convert_autopet_truncated_suv_fails_the_study_naming_the_file(tmp_path):
    from clips_nnunet.dataset_conversion.autopet import prepare_autopet
    from clips_nnunet.dataset_conversion.cohort import AutopetFiles

    study = tmp_path / "PETCT_0a1" / "03-05-2001-NA-PET-CT-10445"
    suv = _write(_volume(1), study / "SUV.nii.gz")
    ct = _write(_volume(2), study / "CTres.nii.gz")
    seg = _write((_volume(3) > 9).astype(np.uint8), study / "SEG.nii.gz")
    files = AutopetFiles(str(suv), str(ct), str(seg))
    ok = prepare_autopet(files, "AutoPET_0001")
    np.testing.assert_allclose(sitk.GetArrayFromImage(ok.pet_suv), _volume(1))
    _truncate(suv)
    with pytest.raises(PatientError, match=r"SUV.nii.gz: .*incomplete") as e:
        prepare_autopet(files, "AutoPET_0001")
    assert "03-05-2001" not in str(e.value) and "\n" not in str(e.value)
    _write(_volume(1), study / "SUV.nii.gz")
    _truncate(seg)
    with pytest.raises(PatientError, match=r"SEG.nii.gz: .*incomplete"):
        prepare_autopet(files, "AutoPET_0001")


# ----------------------------------------------------------------------------------- DICOM cohort: nifti labels, slices
@pytest.fixture(scope="module")
def one_patient(tmp_path_factory):
    from clips_nnunet.dataset_conversion.index import index_dicom_folder
    from clips_nnunet.dataset_conversion.select import select_studies
    from clips_nnunet.synthetic.dicom_cohort import load_manifest, make_synthetic_cohort

    cohort = tmp_path_factory.mktemp("reads") / "cohort"
    make_synthetic_cohort(cohort, n_patients=2, seed=3, progress=False)
    index = index_dicom_folder(cohort / "patient_001", progress=False)
    (patient_key, studies), = index.patients.items()
    selection, = select_studies(studies, "p1")
    study = next(s for s in load_manifest(cohort)["studies"] if s["patient_index"] == 1)
    return {"cohort": cohort, "selection": selection, "patient_key": patient_key,
            "label": cohort / study["label_path"]}


def test_labels_nifti_truncated_mask_fails_the_study(one_patient):
    from clips_nnunet.dataset_conversion.convert import prepare_study

    key = one_patient["patient_key"]
    # outside pytest's temporary tree: test_privacy scans that tree for identifiers
    with tempfile.TemporaryDirectory(prefix="clips-masks-") as folder:
        f = Path(folder) / f"{key}.nii.gz"
        f.write_bytes(one_patient["label"].read_bytes())
        assert prepare_study(one_patient["selection"], labels=f"nifti:{folder}", label="p1").mask.sum() > 0
        _truncate(f, 0.5)
        with pytest.raises(PatientError, match=r"--labels nifti mask file of this study cannot be used .*incomplete"
                           ) as e:
            prepare_study(one_patient["selection"], labels=f"nifti:{folder}", label="p1")
    assert key not in str(e.value) and "\n" not in str(e.value)


def test_truncated_dicom_slice_fails_naming_the_slice(one_patient, tmp_path):
    from clips_nnunet.dataset_conversion.read import read_series_volume

    files = sorted(one_patient["selection"].pet.files)
    copies = []
    for k, f in enumerate(files):
        copies.append(tmp_path / f"{k:04d}.dcm")
        copies[-1].write_bytes(Path(f).read_bytes())
    _truncate(copies[5], 0.7)
    with pytest.raises(PatientError, match=r"p1: slice \d+ of \d+ .*incomplete"):
        read_series_volume(copies, "p1")


# ------------------------------------------------------------------------------------------- evaluate and score
def test_evaluate_truncated_prediction_is_an_error_row_not_a_low_dice(tmp_path):
    from clips_nnunet.evaluation.evaluate import evaluate_cases, match_case_files

    mask = np.zeros(SHAPE, np.uint8)
    mask[3:8, 4:10, 5:12] = 1
    for case in ("c1", "c2"):
        _write(mask, tmp_path / "gt" / f"{case}.nii.gz")
        _write(mask, tmp_path / "pred" / f"{case}.nii.gz")
    _truncate(tmp_path / "pred" / "c2.nii.gz", 0.5)
    cases, _, _ = match_case_files(tmp_path / "pred", tmp_path / "gt")
    rows = {r["case_id"]: r for r in evaluate_cases(cases, progress=False)}
    assert rows["c1"]["status"] == "ok" and rows["c1"]["dice"] == 1.0
    assert rows["c2"]["status"] == "error"
    assert "c2.nii.gz" in rows["c2"]["error"] and "incomplete" in rows["c2"]["error"]


def test_score_truncated_prediction_is_not_scored(tmp_path):
    from clips_nnunet.evaluation.scoring import score_case, score_cross_validation

    mask = np.zeros(SHAPE, np.uint8)
    mask[3:8, 4:10, 5:12] = 1
    results = tmp_path / "Dataset777_X" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    for case, fold in (("c1", 0), ("c2", 1)):
        _write(mask, tmp_path / "gt" / f"{case}.nii.gz")
        _write(mask, results / f"fold_{fold}" / "validation" / f"{case}.nii.gz")
    bad = _truncate(results / "fold_1" / "validation" / "c2.nii.gz", 0.5)
    with pytest.raises(DatasetError, match="c2.nii.gz: incomplete"):
        score_case("dice", bad, tmp_path / "gt" / "c2.nii.gz")
    with pytest.warns(UserWarning, match="not scored: c2"):
        table = score_cross_validation(results, tmp_path / "gt", progress=False)
    assert set(table) == {"c1"} and table["c1"]["dice"] == 1.0


def test_written_nifti_checked_by_the_gzip_trailer_of_its_own_data(tmp_path, monkeypatch):
    """Writes are verified without decompressing the file again: the gzip trailer's CRC-32 and length must be
    those of the header and the image's voxels; anything else gets the full decompression check."""
    import clips_nnunet.io_utils as io_utils
    from clips_nnunet.dataset_conversion.write import write_image

    image = sitk.GetImageFromArray(_volume())
    f = tmp_path / "x.nii.gz"
    write_image(image, f)
    full = []
    monkeypatch.setattr(io_utils, "verify_nifti", lambda *a, **k: full.append(a) or check_nifti_complete(a[0]))
    io_utils.verify_written_nifti(f, image.GetSize(), sitk.GetArrayViewFromImage(image))
    assert not full, "the fast check did not recognise the writer's own data"
    other = sitk.GetArrayViewFromImage(sitk.GetImageFromArray(_volume(9)))
    io_utils.verify_written_nifti(f, image.GetSize(), other)  # not our data: the full check decides (complete)
    assert len(full) == 1
    monkeypatch.undo()
    _truncate(f, 0.9)
    with pytest.raises(ValueError):
        io_utils.verify_written_nifti(f, image.GetSize(), sitk.GetArrayViewFromImage(image))
    with pytest.raises(ValueError, match="differs"):
        write_image(image, tmp_path / "y.nii.gz")
        io_utils.verify_written_nifti(tmp_path / "y.nii.gz", (1, 2, 3), sitk.GetArrayViewFromImage(image))
