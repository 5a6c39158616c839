"""Per-patient outputs of `clips-nnunet predict` on a real PET series' headers (fast, no model).

The mask is written as NIfTI, DICOM SEG and RTSTRUCT against the PET series of a shared reference object
(../shared/testdata/suv_dro/DRO_0_0/PT, 20 slices of 256 x 256), then read back independently: the SEG with
highdicom (exact match), the RTSTRUCT with pydicom + even-odd polygon filling on the PET slices (Dice > 0.95).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from clips_nnunet.dataset_conversion.dicom_out import sort_source_datasets
from clips_nnunet.errors import PatientError
from clips_nnunet.metrics.lesions import measure_lesions
from clips_nnunet.prediction.predict import (OUTPUT_FILES, PseudonymMap, is_complete, safe_folder_name,
                                             write_patient_outputs)
from clips_nnunet.io_utils import read_json
from nnunet_helpers import SHARED_TESTDATA

PET_DIR = SHARED_TESTDATA / "suv_dro" / "DRO_0_0" / "PT"
IDENTIFIERS = ("PETDRO", "PHANTOM", "19900101", "IBSI-SUV", "20250101")


def _pet_headers():
    return [pydicom.dcmread(str(f), stop_before_pixels=True) for f in sorted(PET_DIR.glob("*.dcm"))]


def _grid_image(datasets, array_zyx):
    ordered = sort_source_datasets(datasets)
    iop = np.array([float(v) for v in ordered[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    positions = [float(np.dot(normal, [float(v) for v in d.ImagePositionPatient])) for d in ordered]
    img = sitk.GetImageFromArray(array_zyx)
    row_spacing, col_spacing = (float(v) for v in ordered[0].PixelSpacing)
    img.SetSpacing((col_spacing, row_spacing, float(np.mean(np.diff(positions)))))
    img.SetOrigin(tuple(float(v) for v in ordered[0].ImagePositionPatient))
    img.SetDirection(tuple(np.stack([iop[:3], iop[3:], normal], axis=1).ravel()))
    return img, ordered


def _planted_mask(shape):
    mask = np.zeros(shape, np.uint8)
    zz, yy, xx = np.indices(shape)
    mask[((yy - 100) ** 2 + (xx - 90) ** 2 <= 20 ** 2) & (zz >= 4) & (zz <= 12)] = 1       # cylinder
    mask[((yy - 100) ** 2 + (xx - 90) ** 2 <= 8 ** 2) & (zz >= 7) & (zz <= 9)] = 0         # with a hole inside
    mask[((yy - 180) ** 2 + (xx - 170) ** 2 <= 6 ** 2) & (zz >= 14) & (zz <= 15)] = 1     # small second lesion
    return mask


def _rasterise_rtstruct(path: Path, ordered) -> np.ndarray:
    """Even-odd filling of each slice's contours at the pixel centres (independent of the writer's code)."""
    from skimage.draw import polygon

    rt = pydicom.dcmread(str(path))
    uid_to_k = {d.SOPInstanceUID: k for k, d in enumerate(ordered)}
    shape = (len(ordered), int(ordered[0].Rows), int(ordered[0].Columns))
    out = np.zeros(shape, bool)
    iop = np.array([float(v) for v in ordered[0].ImageOrientationPatient])
    row_dir, col_dir = iop[:3], iop[3:]
    row_sp, col_sp = (float(v) for v in ordered[0].PixelSpacing)
    for roi in rt.ROIContourSequence:
        for c in roi.ContourSequence:
            k = uid_to_k[c.ContourImageSequence[0].ReferencedSOPInstanceUID]
            pts = np.asarray([float(v) for v in c.ContourData]).reshape(-1, 3)
            rel = pts - np.array([float(v) for v in ordered[k].ImagePositionPatient])
            cols = rel @ row_dir / col_sp
            rows = rel @ col_dir / row_sp
            rr, cc = polygon(rows, cols, shape[1:])
            layer = np.zeros(shape[1:], bool)
            layer[rr, cc] = True
            out[k] ^= layer
    return out


def test_outputs_read_back_and_identifier_free(tmp_path):
    import highdicom as hd

    datasets = _pet_headers()
    shape = (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns))
    suv = np.random.default_rng(0).uniform(0.5, 1.5, shape).astype(np.float32)
    mask = _planted_mask(shape)
    suv[mask > 0] += 4.0
    pet_img, ordered = _grid_image(datasets, suv)
    mask_img = sitk.GetImageFromArray(mask)
    mask_img.CopyInformation(pet_img)
    out = tmp_path / "PRED_0001"
    model = {"stages": [{"stage": 1, "model": "nnUNetTrainer__nnUNetPlans__3d_fullres", "folds": [0]}],
             "checkpoint": "checkpoint_final.pth", "device": "cpu"}
    report = write_patient_outputs(out, "PRED_0001", mask_img, pet_img, datasets, model, ["a warning"],
                                   deidentify_salt="test-salt")
    assert is_complete(out) and sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)

    # NIfTI mask: same voxels, PET geometry
    nifti = sitk.ReadImage(str(out / "mask.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(nifti), mask)
    assert np.allclose(nifti.GetOrigin(), pet_img.GetOrigin()) and np.allclose(nifti.GetSpacing(), pet_img.GetSpacing())

    # DICOM SEG read back with highdicom, frames mapped through their source instances: exact
    seg = hd.seg.segread(str(out / "seg.dcm"))
    assert seg.get_source_image_uids()[0][1] == ordered[0].SeriesInstanceUID  # the replaced UIDs (in place)
    uids = [d.SOPInstanceUID for d in ordered]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1],
                                               assert_missing_frames_are_empty=True)
    assert np.array_equal(pixels[..., 0] > 0, mask > 0)

    # RTSTRUCT rasterised again on the PET slices: Dice > 0.95 (holes respected by the even-odd rule)
    raster = _rasterise_rtstruct(out / "rtstruct.dcm", ordered)
    dice = 2 * (raster & (mask > 0)).sum() / (raster.sum() + mask.sum())
    assert dice > 0.95
    assert not raster[8, 100, 90], "the hole inside the first lesion must stay empty"

    # report equals measure_lesions on the mask NIfTI
    spacing_zyx = nifti.GetSpacing()[::-1]
    expected = measure_lesions(sitk.GetArrayFromImage(nifti), spacing_zyx, suv=suv)
    saved = read_json(out / "report.json")
    assert saved == report
    assert saved["n_lesions"] == 2 == expected.n_lesions
    assert saved["tmtv_ml"] == pytest.approx(expected.tmtv_ml)
    assert saved["suv_max"] == pytest.approx(expected.suv_max) and saved["tlg"] == pytest.approx(expected.tlg)
    assert saved["dmax_mm"] == pytest.approx(expected.dmax_mm) and saved["dmax_mm"] > 0
    # every lesion is located in DICOM patient coordinates and by its PET slice (from the written PET grid)
    from scipy import ndimage
    labels, n = ndimage.label(mask > 0, structure=np.ones((3, 3, 3)))
    centres = {}
    for k in range(1, n + 1):
        zyx = ndimage.center_of_mass(labels == k)
        centres[int((labels == k).sum())] = (pet_img.TransformContinuousIndexToPhysicalPoint(zyx[::-1]),
                                             int(round(zyx[0])) + 1)
    for lesion in saved["lesions"]:
        point, slice_number = centres[round(lesion["volume_ml"] * 1000 / float(np.prod(spacing_zyx)))]
        assert lesion["centroid_lps_mm"] == pytest.approx(point, abs=0.06) and lesion["slice"] == slice_number
        assert lesion["n_slices"] == shape[0]

    # a de-identified export: no identifier in any output, the pseudonym as the patient, and every UID replaced
    # consistently (the SEG and RTSTRUCT share the replaced study and PET references, none of the source UIDs)
    source = _pet_headers()
    source_uids = {str(getattr(d, k)) for d in source for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                                                "SOPInstanceUID", "FrameOfReferenceUID")}
    for f in out.iterdir():
        data = f.read_bytes()
        for ident in IDENTIFIERS + tuple(source_uids):
            assert ident.encode() not in data, f"{ident} found in {f.name}"
    from clips_nnunet.prediction.outputs import deidentified_uid
    study = deidentified_uid(source[0].StudyInstanceUID, "test-salt")
    for name in ("seg.dcm", "rtstruct.dcm"):
        ds = pydicom.dcmread(str(out / name))
        assert ds.PatientID == "PRED_0001" and str(ds.PatientName).rstrip("^") == "PRED_0001"
        assert ds.StudyInstanceUID == study and ds.FrameOfReferenceUID == deidentified_uid(
            source[0].FrameOfReferenceUID, "test-salt")
    rt = pydicom.dcmread(str(out / "rtstruct.dcm"))
    refs = {i.ReferencedSOPInstanceUID for i in rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
            .RTReferencedSeriesSequence[0].ContourImageSequence}
    assert refs == {deidentified_uid(d.SOPInstanceUID, "test-salt") for d in source}


def test_outputs_refuse_mask_off_the_pet_grid(tmp_path):
    datasets = _pet_headers()
    shape = (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns))
    pet_img, _ = _grid_image(datasets, np.ones(shape, np.float32))
    small = sitk.Image(10, 10, 10, sitk.sitkUInt8)
    with pytest.raises(PatientError, match="not on the PET grid"):
        write_patient_outputs(tmp_path / "x", "PRED_0001", small, pet_img, datasets, {})
    shifted = sitk.Image(pet_img)
    shifted.SetOrigin((0.0, 0.0, -999.0))
    with pytest.raises(PatientError, match="origin"):
        write_patient_outputs(tmp_path / "x", "PRED_0001", sitk.Cast(shifted > 2, sitk.sitkUInt8), shifted,
                              datasets, {})
    assert not (tmp_path / "x" / "report.json").exists()


def test_pseudonyms_stable_and_private(tmp_path):
    m = PseudonymMap(tmp_path / "private" / "map.json")
    a = m.get("PID-A", "1.2.3", "PID-A")
    b = m.get("PID-B", "1.2.4", "PID-B")
    assert (a, b) == ("PRED_0001", "PRED_0002") and m.get("PID-A", "1.2.3") == a
    m.save()
    again = PseudonymMap(tmp_path / "private" / "map.json")
    assert again.get("PID-B", "1.2.4") == "PRED_0002" and again.get("PID-C", "9") == "PRED_0003"
    assert read_json(tmp_path / "private" / "map.json")["PRED_0001"]["patient_id"] == "PID-A"
    assert safe_folder_name("../../etc/passwd") == "etc_passwd"
    assert safe_folder_name("...") == "unnamed" and "/" not in safe_folder_name("a/b\\c")


def test_failure_messages_are_scrubbed():
    from types import SimpleNamespace

    from clips_nnunet.prediction.predict import scrub

    sel = SimpleNamespace(patient_key="DOE^JANE-123", ct=None,
                          pet=SimpleNamespace(files=[Path("/data/Doe_Jane/PET/001.dcm")]))
    msg = scrub("OSError: cannot read /data/Doe_Jane/PET/001.dcm (patient DOE^JANE-123) in /data/Doe_Jane/PET",
                [Path("/data")], sel)
    assert "Doe_Jane" not in msg and "DOE^JANE" not in msg and msg.startswith("OSError: cannot read <redacted>")


def test_keep_identity_for_pacs_import(tmp_path):
    datasets = _pet_headers()
    shape = (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns))
    pet_img, _ = _grid_image(datasets, np.ones(shape, np.float32))
    mask = np.zeros(shape, np.uint8)
    mask[5:8, 50:60, 50:60] = 1
    mask_img = sitk.GetImageFromArray(mask)
    mask_img.CopyInformation(pet_img)
    report = write_patient_outputs(tmp_path / "DRO", "PRED_0001", mask_img, pet_img, datasets, {})
    assert report["n_lesions"] == 1 and report["dmax_mm"] == 0.0
    source = _pet_headers()[0]
    for name in ("seg.dcm", "rtstruct.dcm"):  # by default: the source patient and study, as DICOM requires
        ds = pydicom.dcmread(str(tmp_path / "DRO" / name), stop_before_pixels=True)
        assert ds.PatientID == "DRO" and "PETDRO" in str(ds.PatientName)
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    # the research outputs never carry the identity
    for name in ("mask.nii.gz", "report.json", "report.md", "mip_coronal.png"):
        data = (tmp_path / "DRO" / name).read_bytes()
        assert b"PETDRO" not in data and b"DRO_0_0" not in data


# --------------------------------------------------------------------------------------------- folder names, lock
def test_keep_patient_names_collisions_get_stable_unique_folders(tmp_path):
    """``Müller`` and ``Mäller`` both sanitise to ``M_ller``: neither gets the plain name (suffix = pseudonym), the
    names are recorded privately and stay the same when more patients come; case-only differences collide too."""
    m = PseudonymMap(tmp_path / "private" / "map.json")
    first_run = [("Müller", "1.1"), ("Mäller", "1.2"), ("Smith", "1.3")]
    pseudonyms = [m.get(pid, uid, pid) for pid, uid in first_run]
    claims = [safe_folder_name(pid) for pid, _ in first_run]
    assert claims == ["M_ller", "M_ller", "Smith"]
    folders = [m.folder_for(p, claims) for p in pseudonyms]
    assert folders == ["M_ller_PRED_0001", "M_ller_PRED_0002", "Smith"]
    m.save()

    # a later run with a third M_ller, a SMITH (same folder as Smith on case-insensitive filesystems), a patient
    # with two studies, and a folder already present in OUT that no entry records
    again = PseudonymMap(tmp_path / "private" / "map.json")
    second_run = first_run + [("Möller", "2.1"), ("SMITH", "2.2"), ("Jones", "2.3"), ("Jones", "2.4"),
                              ("Taken", "2.5")]
    pseudonyms = [again.get(pid, uid, pid) for pid, uid in second_run]
    claims = [safe_folder_name(pid) for pid, _ in second_run]
    folders = [again.folder_for(p, claims, existing=["Taken"]) for p in pseudonyms]
    assert folders[:3] == ["M_ller_PRED_0001", "M_ller_PRED_0002", "Smith"]  # stable
    assert folders[3:] == ["M_ller_PRED_0004", "SMITH_PRED_0005", "Jones_PRED_0006", "Jones_PRED_0007",
                           "Taken_PRED_0008"]
    assert len({f.casefold() for f in folders}) == len(folders)
    again.save()
    assert read_json(tmp_path / "private" / "map.json")["PRED_0004"]["folder"] == "M_ller_PRED_0004"


def test_second_prediction_into_the_same_folder_fails_fast_naming_the_holder(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from clips_nnunet.errors import LockedError
    from clips_nnunet.prediction.models import ModelSpec
    from clips_nnunet.prediction.predict import predict_dicom
    from clips_nnunet.io_utils import DirectoryLock

    out = tmp_path / "out"
    spec = ModelSpec(dataset=999, configuration="3d_fullres")
    with DirectoryLock(out, what="prediction output folder"):
        with pytest.raises(LockedError, match=rf"prediction output folder .*pid {os.getpid()} on host "
                                              rf"{socket.gethostname()}"):
            predict_dicom([PET_DIR], out, spec, progress=False)
        # the command line: exit code 2, one line, no traceback, nothing created
        proc = subprocess.run([sys.executable, "-m", "clips_nnunet", "predict", str(PET_DIR), "-o", str(out),
                               "-d", "999", "-c", "3d_fullres", "--no-progress"], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "nnUNet_results": str(tmp_path / "results")})
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and f"pid {os.getpid()}" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [".clips.lock"]
    assert not (tmp_path / "out_private").exists()


def test_private_folder_is_locked_too(tmp_path):
    from clips_nnunet.errors import LockedError
    from clips_nnunet.prediction.models import ModelSpec
    from clips_nnunet.prediction.predict import predict_dicom
    from clips_nnunet.io_utils import DirectoryLock

    spec = ModelSpec(dataset=999, configuration="3d_fullres")
    with DirectoryLock(tmp_path / "shared_private", what="private pseudonym folder"):
        with pytest.raises(LockedError, match="private pseudonym folder"):
            predict_dicom([PET_DIR], tmp_path / "other_out", spec, private_dir=tmp_path / "shared_private",
                          progress=False)
    assert not (tmp_path / "other_out" / "prediction_summary.json").exists()


def test_console_summary_warns_per_case_when_the_ct_covers_only_part_of_the_pet(tmp_path):
    from clips_nnunet.prediction.predict import PatientResult, PredictionRun

    run = PredictionRun(tmp_path, tmp_path / "map.json", results=[
        PatientResult("PRED_0001", "done", tmtv_ml=4.0, n_lesions=1,
                      warnings=["CT covers 62.5% of the PET volume", "PatientSex O: used as female"]),
        PatientResult("PRED_0002", "skipped", message="outputs already complete", tmtv_ml=0.0, n_lesions=0,
                      warnings=["CT does not cover the PET along z: 40.0 mm missing below and 0.0 mm above"])])
    table = run.summary_table().splitlines()
    warnings = [line.strip() for line in table if "WARNING:" in line]
    assert warnings == ["WARNING: CT covers 62.5% of the PET volume",
                        "WARNING: CT does not cover the PET along z: 40.0 mm missing below and 0.0 mm above"]
    assert table.index(next(line for line in table if "CT covers" in line)) == 2  # right under its case


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1)])
def test_mip_uses_the_lesions_measured_by_the_outputs(direction):
    """The outputs hand the MIP the lesions they measured (no second labelling); the numbers and positions are
    those the MIP finds on its own, and an image already in LPS order is used as it is (no reoriented copy)."""
    from clips_nnunet.prediction.mip import _to_lps_arrays, lesion_positions_lps

    mask = np.zeros((10, 12, 14), np.uint8)
    mask[2:4, 3:5, 4:6] = 1  # 8 voxels: lesion 1
    mask[7, 9, 11] = 1  # 1 voxel: lesion 2
    suv = np.arange(mask.size, dtype=np.float32).reshape(mask.shape)
    images = []
    for arr in (suv, mask):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((2.0, 3.0, 4.0))
        img.SetDirection(direction)
        images.append(img)
    suv_img, mask_img = images
    lps = sitk.DICOMOrient(mask_img, "LPS")
    lesions = measure_lesions(mask > 0, (4.0, 3.0, 2.0)).lesions
    given = lesion_positions_lps(mask_img, lps, (4.0, 3.0, 2.0), lesions)
    assert given == lesion_positions_lps(mask_img, lps, (4.0, 3.0, 2.0))
    flipped = direction[0] == -1
    assert dict(given)[2] == pytest.approx((7.0, 12 - 1 - 9, 14 - 1 - 11) if flipped else (7.0, 9.0, 11.0))
    suv_arr, mask_arr, spacing = _to_lps_arrays(suv_img, mask_img)
    np.testing.assert_array_equal(suv_arr, sitk.GetArrayFromImage(sitk.DICOMOrient(suv_img, "LPS")))
    np.testing.assert_array_equal(mask_arr, sitk.GetArrayFromImage(lps) > 0)
    assert spacing == (4.0, 3.0, 2.0)
    assert np.shares_memory(suv_arr, sitk.GetArrayViewFromImage(suv_img)) == (not flipped)
