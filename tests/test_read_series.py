"""Series reading: per-slice rescale, sorting, geometry checks, resampling and coverage."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, List

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from clips_nnunet.dataset_conversion.read import (check_coverage, read_ct, read_series_volume,
                                                  resample_to_reference)
from clips_nnunet.errors import PatientError
from tests.nnunet_helpers import SHARED_TESTDATA

DRO_SLOPES = SHARED_TESTDATA / "suv_dro" / "DRO_1_0" / "PT"  # one RescaleSlope per slice (3.0 and 4.0)
STS = SHARED_TESTDATA / "tcia_sts_001"


def dro_files() -> List[Path]:
    return sorted(DRO_SLOPES.glob("*.dcm"))


def test_per_slice_rescale_applied_in_float32():
    files = dro_files()
    shuffled = files[:]
    random.Random(3).shuffle(shuffled)
    img = read_series_volume(shuffled, "case_x")
    assert img.GetPixelID() == sitk.sitkFloat32
    arr = sitk.GetArrayFromImage(img)
    headers = [pydicom.dcmread(str(f)) for f in files]
    headers.sort(key=lambda h: float(h.ImagePositionPatient[2]))
    slopes = {float(h.RescaleSlope) for h in headers}
    assert len(slopes) > 1  # the point of this object
    for k, h in enumerate(headers):
        want = h.pixel_array.astype(np.float64) * float(h.RescaleSlope) + float(h.RescaleIntercept)
        np.testing.assert_allclose(arr[k], want, rtol=1e-6)
    assert img.GetOrigin() == pytest.approx([float(v) for v in headers[0].ImagePositionPatient])
    assert img.GetSpacing()[2] == pytest.approx(
        float(headers[1].ImagePositionPatient[2]) - float(headers[0].ImagePositionPatient[2]))


def _modified_copies(tmp_path: Path, change: Callable[[int, pydicom.Dataset], bool]) -> List[Path]:
    """Write copies of the DRO slices with ``change(k, ds)`` applied; slices where it returns False are dropped."""
    out = []
    for k, f in enumerate(dro_files()):
        ds = pydicom.dcmread(str(f))
        if change(k, ds) is False:
            continue
        p = tmp_path / f"s{k:03d}.dcm"
        ds.save_as(str(p))
        out.append(p)
    return out


def test_missing_slice_is_a_clear_error(tmp_path):
    files = _modified_copies(tmp_path, lambda k, ds: k != 7)
    with pytest.raises(PatientError) as err:
        read_series_volume(files, "case_0003")
    assert "case_0003" in str(err.value) and "1 slice(s) missing" in str(err.value)


def test_gantry_tilt_is_a_clear_error(tmp_path):
    def tilt(k, ds):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.2 * z, z]  # origins shear along y as z grows (11 degrees)
    with pytest.raises(PatientError, match="tilt"):
        read_series_volume(_modified_copies(tmp_path, tilt), "case_1")

    def tag(k, ds):
        ds.GantryDetectorTilt = "15"
    (tmp_path / "b").mkdir()
    with pytest.raises(PatientError, match=r"GantryDetectorTilt \(0018,1120\)"):
        read_series_volume(_modified_copies(tmp_path / "b", tag), "case_1")


def test_duplicate_and_irregular_positions(tmp_path):
    def dup(k, ds):
        if k == 5:
            ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [4 * 4.0]
    with pytest.raises(PatientError, match="same position"):
        read_series_volume(_modified_copies(tmp_path, dup), "c")

    def irregular(k, ds):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + (1.3 if k % 2 else 0.0)]
    (tmp_path / "b").mkdir()
    with pytest.raises(PatientError, match="irregular slice spacing"):
        read_series_volume(_modified_copies(tmp_path / "b", irregular), "c")


def test_mixed_orientation_rejected(tmp_path):
    def rot(k, ds):
        if k == 3:
            ds.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]
    with pytest.raises(PatientError, match=r"\(0020,0037\)"):
        read_series_volume(_modified_copies(tmp_path, rot), "c")


def test_small_bed_overlap_steps_are_accepted():
    """The real GE series has 3.19 / 3.29 mm steps at bed boundaries in a 3.27 mm series: accepted, fitted grid."""
    files = sorted((STS / "STS_001_CT_cropped").glob("*.dcm"))
    ct = read_ct(files, "case_ge")
    assert ct.GetSize() == (198, 202, 59)
    assert ct.GetSpacing()[2] == pytest.approx(3.27, abs=0.01)
    with pytest.raises(PatientError, match="Modality PT"):
        read_ct(dro_files(), "case_ge")


def test_ct_reads_only_geometry_tags_and_the_same_volume():
    """read_ct parses only GEOMETRY_TAGS of each header; the volume equals the all-tags read bit for bit."""
    from clips_nnunet.dataset_conversion.read import GEOMETRY_TAGS, read_ct_with_headers, read_series_with_headers

    files = sorted((STS / "STS_001_CT_cropped").glob("*.dcm"))
    ct, sorted_files, headers = read_ct_with_headers(files[::-1], "case_ge")
    full, full_files, full_headers = read_series_with_headers(files, "case_ge")
    assert sorted_files == full_files
    assert "PatientID" in full_headers[0] and "PatientID" not in headers[0]
    assert all(set(h.dir()) <= set(GEOMETRY_TAGS) | {"SpecificCharacterSet"} for h in headers)
    assert [h.SOPInstanceUID for h in headers] == [h.SOPInstanceUID for h in full_headers]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(full))
    assert (ct.GetOrigin(), ct.GetSpacing(), ct.GetDirection()) == (full.GetOrigin(), full.GetSpacing(),
                                                                     full.GetDirection())
    with pytest.raises(ValueError, match="must include ImageOrientationPatient"):
        read_series_with_headers(files, "case_ge", specific_tags=["Rows"])


def test_ct_from_index_geometry_equals_parsed_headers(tmp_path):
    """The index records each CT slice's geometry; reading the CT with those records (no second header parse)
    gives the same volume, geometry and slice order as parsing the files, and the same errors."""
    import shutil

    from clips_nnunet.dataset_conversion.index import index_dicom_folder
    from clips_nnunet.dataset_conversion.read import HeaderValues, read_ct_with_headers

    src = sorted((STS / "STS_001_CT_cropped").glob("*.dcm"))
    folder = tmp_path / "ct"
    folder.mkdir()
    for f in src[:12]:
        shutil.copy(f, folder / f.name)
    (series,), = [v for st in index_dicom_folder(folder, progress=False).patients.values() for v in st.values()]
    headers = series.geometry_headers()
    assert headers is not None and all(isinstance(h, HeaderValues) for h in headers)
    assert "SeriesInstanceUID" not in series.slice_geometry[0]  # series-level UIDs are not stored per file
    assert headers[0].SeriesInstanceUID == series.series_uid and headers[0].Modality == "CT"
    from_index, files_a, headers_a = read_ct_with_headers(series.files, "case_ge", headers)
    parsed, files_b, headers_b = read_ct_with_headers(series.files, "case_ge")
    assert files_a == files_b
    assert [h.SOPInstanceUID for h in headers_a] == [str(h.SOPInstanceUID) for h in headers_b]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_index), sitk.GetArrayFromImage(parsed))
    assert (from_index.GetOrigin(), from_index.GetSpacing(), from_index.GetDirection()) == (
        parsed.GetOrigin(), parsed.GetSpacing(), parsed.GetDirection())
    # a missing slice is found from the index's records as from the files
    del series.files[5], series.slice_geometry[5]
    with pytest.raises(PatientError, match="missing"):
        read_ct_with_headers(series.files, "case_ge", series.geometry_headers())
    with pytest.raises(PatientError, match="missing"):
        read_ct_with_headers(series.files, "case_ge")
    with pytest.raises(AttributeError, match="has no Rows"):
        HeaderValues({}, "x.dcm").Rows


def test_resample_ct_to_pet_grid_and_coverage():
    ct = read_ct(sorted((STS / "STS_001_CT_cropped").glob("*.dcm")), "case_ge")
    pet_grid = sitk.Image([64, 64, 40], sitk.sitkFloat32)
    pet_grid.SetSpacing([4.0, 4.0, 4.0])
    centre = np.asarray(ct.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in ct.GetSize()]))
    pet_grid.SetOrigin(tuple(centre - np.asarray([32 * 4.0, 32 * 4.0, 20 * 4.0])))
    out = resample_to_reference(ct, pet_grid)
    assert out.GetSize() == pet_grid.GetSize() and out.GetPixelID() == sitk.sitkFloat32
    arr = sitk.GetArrayFromImage(out)
    assert arr[0, 0, 0] == -1024.0  # outside the cropped CT: air
    # a PET voxel centre inside the CT gets the CT's linear interpolation there
    p = pet_grid.TransformIndexToPhysicalPoint([32, 32, 20])
    from scipy.ndimage import map_coordinates
    ci = ct.TransformPhysicalPointToContinuousIndex(p)
    want = map_coordinates(sitk.GetArrayFromImage(ct).astype(np.float64), [[ci[2]], [ci[1]], [ci[0]]], order=1)[0]
    assert arr[20, 32, 32] == pytest.approx(want, abs=1e-2)
    warnings = check_coverage(ct, pet_grid)
    assert any("along x" in w for w in warnings) and any("% of the PET volume" in w for w in warnings)
    inner = sitk.RegionOfInterest(ct, [20, 20, 5], [50, 50, 10])
    assert check_coverage(ct, inner) == []
    with pytest.raises(ValueError, match="interpolator"):
        resample_to_reference(ct, pet_grid, interpolator="cubic")


def test_error_messages_never_quote_file_names(tmp_path):
    """File and folder names often hold patient names: errors number the slices instead."""
    folder = tmp_path / "DOE^JOHN_1961"
    folder.mkdir()
    files = []
    for k, f in enumerate(dro_files()[:5]):
        p = folder / f"DOE_JOHN_{k}.dcm"
        p.symlink_to(f)
        files.append(p)
    bad = folder / "DOE_JOHN_bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xffgarbage")
    with pytest.raises(PatientError) as err:
        read_series_volume(files + [bad], "case_0005")
    assert "DOE" not in str(err.value) and "JOHN" not in str(err.value) and "#6" in str(err.value)
    with pytest.raises(PatientError) as err:
        read_series_volume(files[:2] + files[3:], "case_0005")  # missing slice
    assert "DOE" not in str(err.value)
