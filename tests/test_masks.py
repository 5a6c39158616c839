"""Masks: RTSTRUCT even-odd rasterisation, DICOM SEG via highdicom, NIfTI masks and grid transfer by occupancy."""
from __future__ import annotations

import random
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from clips_nnunet.dataset_conversion.masks import (mask_to_grid, rasterise_rtstruct, read_mask_file, read_seg_mask,
                                                   rtstruct_roi_names)
from clips_nnunet.dataset_conversion.read import read_series_volume
from clips_nnunet.errors import PatientError
from tests.nnunet_helpers import SHARED_TESTDATA

DRO_PT = SHARED_TESTDATA / "suv_dro" / "DRO_0_0" / "PT"


def grid(size=(20, 20, 4), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    img = sitk.Image(list(size), sitk.sitkUInt8)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def square(x0, x1, y0, y1, z):
    return [x0, y0, z, x1, y0, z, x1, y1, z, x0, y1, z]


def write_rtstruct(path: Path, rois) -> Path:
    """Minimal RTSTRUCT: ``rois`` = [(name, [contour point lists])]."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    ds.StructureSetROISequence = []
    ds.ROIContourSequence = []
    for number, (name, contours) in enumerate(rois, start=1):
        item = Dataset()
        item.ROINumber = number
        item.ROIName = name
        ds.StructureSetROISequence.append(item)
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ContourSequence = []
        for pts in contours:
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(pts) // 3
            c.ContourData = [f"{v:g}" for v in pts]
            rc.ContourSequence.append(c)
        ds.ROIContourSequence.append(rc)
    ds.save_as(str(path), enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------------------------------- RTSTRUCT
def test_rtstruct_even_odd_holes_and_roi_selection(tmp_path):
    z = 2.0  # slice index 1
    outer = square(1.5, 17.5, 1.5, 17.5, z)  # pixel centres 2..17 -> 16 x 16
    inner = square(5.5, 13.5, 5.5, 13.5, z)  # 8 x 8 hole
    island = square(8.5, 10.5, 8.5, 10.5, z)  # 2 x 2 island inside the hole (third nesting level: filled)
    other = square(0.5, 3.5, 0.5, 3.5, 6.0)  # another ROI on slice 3
    path = write_rtstruct(tmp_path / "rs.dcm", [("Lesion_1", [outer, inner, island]), ("Liver", [other])])
    assert rtstruct_roi_names(path) == ["Lesion_1", "Liver"]
    mask = rasterise_rtstruct(path, grid(), roi_pattern="lesion")
    assert mask.dtype == np.uint8 and mask.shape == (4, 20, 20)
    assert mask[1].sum() == 256 - 64 + 4
    assert mask[1, 9, 9] == 1 and mask[1, 7, 7] == 0 and mask[1, 3, 3] == 1
    assert mask[3].sum() == 0 and mask[0].sum() == 0
    both = rasterise_rtstruct(path, grid())
    assert both[3].sum() == 9 and both[1].sum() == 196
    with pytest.raises(PatientError) as err:
        rasterise_rtstruct(path, grid(), roi_pattern="^GTV", label="case_0009")
    assert "case_0009" in str(err.value) and "Lesion_1" in str(err.value)


def test_rtstruct_world_coordinates_with_offset_origin(tmp_path):
    ref = grid(origin=(-100.0, 50.0, 10.0))
    path = write_rtstruct(tmp_path / "rs.dcm", [("GTV", [square(-98.5, -95.5, 51.5, 53.5, 14.0)])])
    mask = rasterise_rtstruct(path, ref)
    zz, yy, xx = np.nonzero(mask)
    assert set(zz) == {2} and sorted(set(xx)) == [2, 3, 4] and sorted(set(yy)) == [2, 3]


def test_rtstruct_contours_from_another_slice_spacing(tmp_path):
    """CT contours every 1 mm rasterised on a 4 mm grid: no XOR between planes, no gaps; coarse contours (every
    6 mm) on a 2 mm grid fill the slices between planes."""
    fine_planes = [square(1.5, 9.5, 1.5, 9.5, float(z)) for z in range(3, 14)]  # z = 3..13 mm
    path = write_rtstruct(tmp_path / "fine.dcm", [("GTV", fine_planes)])
    coarse = grid(size=(12, 12, 6), spacing=(1.0, 1.0, 4.0))  # slice centres 0, 4, 8, 12, 16, 20 mm
    mask = rasterise_rtstruct(path, coarse)
    assert [int(mask[k].sum()) for k in range(6)] == [0, 64, 64, 64, 0, 0]
    sparse = write_rtstruct(tmp_path / "sparse.dcm", [("GTV", [square(1.5, 9.5, 1.5, 9.5, z) for z in (6.0, 12.0)])])
    mask2 = rasterise_rtstruct(sparse, grid(size=(12, 12, 10), spacing=(1.0, 1.0, 2.0)))
    # planes at slices 3 and 6 stand for 6 mm slabs (1.5 slices either side): slices 2..7 (1.5 -> 2 by nearest)
    assert [int(mask2[k].sum() > 0) for k in range(10)] == [0, 0, 1, 1, 1, 1, 1, 1, 0, 0]


def test_rtstruct_off_plane_contour_is_an_error(tmp_path):
    pts = [1.0, 1.0, 0.0, 10.0, 1.0, 4.0, 10.0, 10.0, 4.0]
    path = write_rtstruct(tmp_path / "rs.dcm", [("GTV", [pts])])
    with pytest.raises(PatientError, match="not parallel"):
        rasterise_rtstruct(path, grid())


# --------------------------------------------------------------------------------------------------------- SEG
pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent:UserWarning")

@pytest.fixture(scope="module")
def dro_series():
    files = sorted(DRO_PT.glob("*.dcm"))
    image = read_series_volume(files, "dro")
    sources = [pydicom.dcmread(str(f)) for f in files]
    sources.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    for d in sources:  # type-2 attributes the reference object leaves out but highdicom copies into the SEG
        for kw in ("AccessionNumber", "ReferringPhysicianName", "StudyID", "PatientBirthDate", "PatientSex",
                   "StudyDate", "StudyTime"):
            if kw not in d:
                setattr(d, kw, "")
    return files, image, sources


def _make_seg(sources, arrays, fractional=False):
    descs = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=f"lesion {i + 1}",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL) for i in range(len(arrays))]
    pixel = np.stack(arrays, axis=-1)
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=pixel,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else
        hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs, series_instance_uid=generate_uid(), series_number=100,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="0", device_serial_number="0", omit_empty_frames=True)


def test_seg_binary_union_mapped_through_source_instances(tmp_path, dro_series):
    files, image, sources = dro_series
    a = np.zeros((20, 256, 256), dtype=np.uint8)
    b = np.zeros_like(a)
    a[3:6, 100:110, 50:60] = 1
    b[12, 200:205, 10:30] = 1
    seg = _make_seg(sources, [a, b])
    path = tmp_path / "seg.dcm"
    seg.save_as(str(path))
    shuffled = list(files)
    random.Random(0).shuffle(shuffled)
    got = read_seg_mask(path, image, shuffled, label="case_1")
    np.testing.assert_array_equal(got, np.maximum(a, b))
    only_b = read_seg_mask(path, image, shuffled, segment_pattern="lesion 2")
    np.testing.assert_array_equal(only_b, b)


def test_seg_placed_by_already_parsed_headers(tmp_path, dro_series):
    """With ``reference_headers`` (the headers the series reader parsed) the SEG lands on the same slices as when
    the reader parses the files itself; a header list of the wrong length is rejected."""
    files, image, sources = dro_series
    a = np.zeros((20, 256, 256), dtype=np.uint8)
    a[2, 10:20, 30:40] = 1
    a[17, 5:9, 5:9] = 1
    path = tmp_path / "seg.dcm"
    _make_seg(sources, [a]).save_as(str(path))
    headers = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    order = list(range(len(files)))
    random.Random(1).shuffle(order)
    got = read_seg_mask(path, image, [files[i] for i in order], label="case_1",
                        reference_headers=[headers[i] for i in order])
    np.testing.assert_array_equal(got, a)
    np.testing.assert_array_equal(got, read_seg_mask(path, image, files, label="case_1"))
    with pytest.raises(ValueError, match="reference_headers"):
        read_seg_mask(path, image, files, reference_headers=headers[:-1])


def test_seg_fractional_thresholded_at_half(tmp_path, dro_series):
    files, image, sources = dro_series
    frac = np.zeros((20, 256, 256), dtype=np.float32)
    frac[7, 10:20, 10:20] = 0.7
    frac[7, 30:40, 30:40] = 0.3
    frac[8, 10:12, 10:12] = 0.5
    seg = _make_seg(sources, [frac], fractional=True)
    path = tmp_path / "frac.dcm"
    seg.save_as(str(path))
    got = read_seg_mask(path, image, files)
    assert got[7, 15, 15] == 1 and got[7, 35, 35] == 0 and got[8, 10, 10] == 1
    assert got.sum() == 100 + 4


def test_seg_on_another_series_is_rejected(tmp_path, dro_series):
    files, image, sources = dro_series
    a = np.zeros((20, 256, 256), dtype=np.uint8)
    a[4, 5:9, 5:9] = 1
    path = tmp_path / "seg.dcm"
    _make_seg(sources, [a]).save_as(str(path))
    other = sorted((SHARED_TESTDATA / "suv_dro" / "DRO_1_0" / "PT").glob("*.dcm"))
    with pytest.raises(PatientError, match="does not reference"):
        read_seg_mask(path, image, other, label="case_2")


def _strip_spatial_locations_preserved(path: Path, out: Path, shift_frame=None, shift_mm=(0.0, 0.0, 0.0),
                                      value=None, drop_references=False) -> Path:
    """Re-save a SEG as QIICR's dcmqi writes it: no SpatialLocationsPreserved in any SourceImageSequence item
    (or ``value`` instead); optionally move one frame's ImagePositionPatient or drop every frame's references."""
    ds = pydicom.dcmread(str(path))
    for i, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        for derivation in frame.DerivationImageSequence:
            for src in derivation.SourceImageSequence:
                del src.SpatialLocationsPreserved
                if value is not None:
                    src.SpatialLocationsPreserved = value
        if drop_references:
            del frame.DerivationImageSequence
        if i == shift_frame:
            plane = frame.PlanePositionSequence[0]
            plane.ImagePositionPatient = [float(v) + d for v, d in zip(plane.ImagePositionPatient, shift_mm)]
    ds.save_as(str(out))
    return out


def _eleven_segments():
    """11 segments (as TCIA's QIN-HEADNECK SEGs have), some overlapping, on 20 DRO slices."""
    arrays = []
    for i in range(11):
        a = np.zeros((20, 256, 256), dtype=np.uint8)
        a[i + 2: i + 5, 20 * i + 5: 20 * i + 15, 30:40 + i] = 1
        arrays.append(a)
    return arrays


def test_seg_without_spatial_locations_preserved_is_read_after_position_check(tmp_path, dro_series):
    """dcmqi-style SEG (11 segments, no SpatialLocationsPreserved): highdicom refuses source-instance indexing;
    we check each frame's position against the referenced PET instance and read it exactly."""
    files, image, sources = dro_series
    arrays = _eleven_segments()
    original = tmp_path / "seg.dcm"
    _make_seg(sources, arrays).save_as(str(original))
    stripped = _strip_spatial_locations_preserved(original, tmp_path / "dcmqi_like.dcm")
    seg = hd.seg.segread(str(stripped))
    uids = [d.SOPInstanceUID for d in sources]
    with pytest.raises(RuntimeError, match="spatial locations"):  # the failure seen on QIN-HEADNECK
        seg.get_pixels_by_source_instance(uids[:3], segment_numbers=[1])
    union = np.max(np.stack(arrays), axis=0)
    got = read_seg_mask(stripped, image, files, label="case_1")
    np.testing.assert_array_equal(got, union)
    np.testing.assert_array_equal(read_seg_mask(original, image, files), union)  # same as with the attribute
    np.testing.assert_array_equal(read_seg_mask(stripped, image, files, segment_pattern="^lesion 7$"), arrays[6])
    # frames without any source reference: placed by their position on the PET grid
    unreferenced = _strip_spatial_locations_preserved(original, tmp_path / "noref.dcm", drop_references=True)
    np.testing.assert_array_equal(read_seg_mask(unreferenced, image, files), union)


@pytest.mark.parametrize("shift_mm, value, match", [
    ((0.0, 0.0, 4.0), None, r"frame 3 lies 4.00 mm from the instance it references"),  # next slice (4 mm spacing)
    ((0.5, 0.0, 0.0), None, r"frame 3 lies 0.50 mm"),  # in-plane shift: not the referenced pixels either
    ((0.0, 0.0, 0.0), "NO", r"SpatialLocationsPreserved NO"),
])
def test_seg_frame_that_contradicts_its_reference_is_rejected(tmp_path, dro_series, shift_mm, value, match):
    files, image, sources = dro_series
    original = tmp_path / "seg.dcm"
    _make_seg(sources, _eleven_segments()[:2]).save_as(str(original))
    bad = _strip_spatial_locations_preserved(original, tmp_path / "bad.dcm", shift_frame=2, shift_mm=shift_mm,
                                             value=value)
    with pytest.raises(PatientError, match=match) as info:
        read_seg_mask(bad, image, files, label="case_7")
    assert str(info.value).startswith("case_7") and "\n" not in str(info.value)


def test_seg_with_frames_off_the_grid_and_no_references_is_rejected(tmp_path, dro_series):
    files, image, sources = dro_series
    original = tmp_path / "seg.dcm"
    _make_seg(sources, _eleven_segments()[:1]).save_as(str(original))
    bad = _strip_spatial_locations_preserved(original, tmp_path / "bad.dcm", shift_frame=0, shift_mm=(0, 0, 1.5),
                                             drop_references=True)
    with pytest.raises(PatientError, match=r"frame 1 lies 1.50 mm from the nearest slice of the series"):
        read_seg_mask(bad, image, files, label="case_8")


def test_seg_with_undecodable_frames_is_a_patient_error(tmp_path, dro_series):
    files, image, sources = dro_series
    original = tmp_path / "seg.dcm"
    _make_seg(sources, _eleven_segments()[:1]).save_as(str(original))
    ds = pydicom.dcmread(str(original))
    ds.PixelData = ds.PixelData[:3]  # truncated pixel data
    ds.save_as(str(tmp_path / "truncated.dcm"))
    with pytest.raises(PatientError, match="re-export it"):
        read_seg_mask(tmp_path / "truncated.dcm", image, files, label="case_9")


# ------------------------------------------------------------------------------------------ NIfTI + grid moves
def test_mask_to_grid_occupancy_and_small_lesions():
    fine = grid(size=(40, 40, 40), spacing=(1.0, 1.0, 1.0), origin=(-0.5, -0.5, -0.5))
    coarse = grid(size=(10, 10, 10), spacing=(4.0, 4.0, 4.0), origin=(1.0, 1.0, 1.0))  # voxel k covers [4k-1, 4k+3)
    m = np.zeros((40, 40, 40), dtype=np.uint8)
    m[8:16, 8:16, 8:16] = 1  # world [7.5, 15.5): occupies 7/8 of coarse voxel 2, all of 3 and 1/8 of 4 per axis
    m[30, 30, 30] = 1  # a 1 mm lesion: far below half a 4 mm voxel
    out = mask_to_grid(m, fine, coarse)
    assert out.dtype == np.uint8 and out.shape == (10, 10, 10)
    # occupancy >= 0.5 in voxels 2 and 3 along each axis (0.875^3 = 0.67 at worst), not in 4 -> 2x2x2
    assert out[2:4, 2:4, 2:4].all()
    assert out[:, :, :].sum() == 8 + 1  # the tiny lesion keeps exactly one voxel
    k = int(np.floor((30 - 1) / 4.0 + 0.5))
    assert out[k, k, k] == 1
    assert mask_to_grid(np.zeros_like(m), fine, coarse).sum() == 0
    with pytest.raises(ValueError, match="does not match"):
        mask_to_grid(m[:-1], fine, coarse)


def test_read_mask_file_same_and_other_grid(tmp_path):
    ref = grid(size=(16, 16, 8), spacing=(2.0, 2.0, 2.0))
    arr = np.zeros((8, 16, 16), dtype=np.uint8)
    arr[2:5, 4:10, 4:10] = 2  # any label > 0 is lesion
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    sitk.WriteImage(img, str(tmp_path / "m.nii.gz"))
    np.testing.assert_array_equal(read_mask_file(tmp_path / "m.nii.gz", ref), (arr > 0).astype(np.uint8))
    fine = sitk.Resample(img, grid(size=(32, 32, 16), spacing=(1.0, 1.0, 1.0), origin=(-0.5, -0.5, -0.5)),
                         sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    sitk.WriteImage(fine, str(tmp_path / "fine.nrrd"))
    back = read_mask_file(tmp_path / "fine.nrrd", ref)
    inter = np.logical_and(back > 0, arr > 0).sum()
    assert 2 * inter / (back.sum() + (arr > 0).sum()) > 0.95
    with pytest.raises(FileNotFoundError):
        read_mask_file(tmp_path / "missing.nii.gz", ref)


def test_seg_frames_read_without_highdicom_unpack_frames_that_are_not_byte_aligned():
    """BINARY SEG frames are packed bit after bit (a 3x5 frame is 15 bits, not 2 bytes): the pydicom reader (which
    replaced highdicom's for native pixel data; highdicom's standard tables cost ~0.8 s CPU per process) must
    unpack them as the standard says (first pixel in the lowest bit)."""
    from clips_nnunet.dataset_conversion.masks import _UncompressedSeg

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 2, (3, 3, 5)).astype(np.uint8)
    ds = pydicom.Dataset()
    ds.Rows, ds.Columns, ds.NumberOfFrames, ds.BitsAllocated = 3, 5, 3, 1
    ds.PixelData = np.packbits(frames.ravel(), bitorder="little").tobytes()
    seg = _UncompressedSeg(ds)
    for k in range(3):
        np.testing.assert_array_equal(seg.get_stored_frame(k + 1), frames[k])
    short = pydicom.Dataset()
    short.Rows, short.Columns, short.NumberOfFrames, short.BitsAllocated = 3, 5, 3, 1
    short.PixelData = ds.PixelData[:-2]
    with pytest.raises(ValueError, match="truncated"):
        _UncompressedSeg(short).get_stored_frame(1)
