"""DICOM SEG / RTSTRUCT writers: round trip through the converter's readers, references, holes, geometry."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from clips_nnunet.dataset_conversion.dicom_out import (slice_contours, sort_source_datasets, write_dicom_seg,
                                                       write_rtstruct)
from clips_nnunet.dataset_conversion.masks import rasterise_rtstruct, read_seg_mask
from tests.nnunet_helpers import SHARED_TESTDATA

SHAPE = (6, 20, 24)  # slices, rows, columns
SPACING = (2.5, 1.5, 2.0)  # slice, row, column spacing (mm)
ORIGIN = (-17.0, 33.0, -40.0)  # x, y, z of the first voxel of the lowest slice


def _series(tmp_path):
    """A small single-frame PET-like series written to disk in shuffled file order; returns (datasets, files)."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    datasets, files = [], []
    order = [3, 0, 5, 1, 4, 2]
    for k in range(SHAPE[0]):
        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.128"
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "PT"
        ds.PatientName, ds.PatientID = "TEST^WRITER", "WRITER01"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", "A1"
        ds.ReferringPhysicianName = ""
        ds.SeriesNumber, ds.InstanceNumber = 3, SHAPE[0] - k
        ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * SPACING[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [SPACING[1], SPACING[2]]
        ds.SliceThickness = SPACING[0]
        ds.Rows, ds.Columns = SHAPE[1], SHAPE[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.full(SHAPE[1:], k, dtype="<u2").tobytes()
        ds.Manufacturer = "TEST"
        ds.FrameOfReferenceUID = frame
        meta = pydicom.dataset.FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.file_meta = meta
        f = tmp_path / "series" / f"{order[k]}.dcm"
        f.parent.mkdir(exist_ok=True)
        ds.save_as(f, enforce_file_format=True)
        datasets.append(ds)
        files.append(f)
    return datasets, files


def _reference() -> sitk.Image:
    img = sitk.Image([SHAPE[2], SHAPE[1], SHAPE[0]], sitk.sitkFloat32)
    img.SetOrigin(ORIGIN)
    img.SetSpacing((SPACING[2], SPACING[1], SPACING[0]))
    return img


def _mask_with_hole() -> np.ndarray:
    m = np.zeros(SHAPE, dtype=np.uint8)
    m[1:5, 4:15, 5:18] = 1  # a box ...
    m[2:4, 7:11, 9:13] = 0  # ... with a hole in slices 2-3 (inner contours)
    m[4, 17, 2] = 1  # a single-voxel lesion
    m[0, 0:3, 20:24] = 1  # touching the image border
    return m


def test_slice_contours_give_outer_and_inner_contours():
    m = _mask_with_hole()[2]
    contours = slice_contours(m)
    assert len(contours) == 2  # box outer contour and hole contour
    assert len(slice_contours(_mask_with_hole()[4])) == 2  # box and single voxel
    for c in contours:  # marching squares at 0.5: every vertex lies half-way between pixel centres
        frac = np.abs(np.modf(c)[0])
        assert np.all(np.isclose(frac, 0.5) | np.isclose(frac, 0.0))


@pytest.mark.parametrize("shuffle", [False, True])
def test_rtstruct_round_trip_respects_holes(tmp_path, shuffle):
    datasets, _ = _series(tmp_path)
    if shuffle:
        datasets = datasets[::-1]
    mask = _mask_with_hole()
    out = write_rtstruct(mask, datasets, tmp_path / "rt.dcm", roi_name="Lymphoma")
    back = rasterise_rtstruct(out, _reference(), roi_pattern="lymph", label="t")
    np.testing.assert_array_equal(back, mask)
    assert back[2, 8, 10] == 0 and back[2, 5, 6] == 1  # hole stays a hole

    rt = pydicom.dcmread(out)
    assert rt.Modality == "RTSTRUCT" and rt.StructureSetROISequence[0].ROIName == "Lymphoma"
    sop_uids = {d.SOPInstanceUID for d in datasets}
    refs = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == datasets[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in refs.ContourImageSequence} == sop_uids
    contours = rt.ROIContourSequence[0].ContourSequence
    assert len(contours) == 1 + 1 + 2 + 2 + 2  # slices 0, 1, 2 (box + hole), 3 (box + hole), 4 (box + voxel)
    for c in contours:
        ref_uid = c.ContourImageSequence[0].ReferencedSOPInstanceUID
        ref_ds = next(d for d in datasets if d.SOPInstanceUID == ref_uid)
        pts = np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
        assert np.allclose(pts[:, 2], float(ref_ds.ImagePositionPatient[2]))  # on that slice's plane
        assert c.ContourGeometricType == "CLOSED_PLANAR"


def test_rtstruct_points_are_in_patient_mm(tmp_path):
    datasets, _ = _series(tmp_path)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[3, 7, 11] = 1  # row 7, column 11
    rt = pydicom.dcmread(write_rtstruct(mask, datasets, tmp_path / "rt.dcm"))
    pts = np.asarray(rt.ROIContourSequence[0].ContourSequence[0].ContourData, dtype=float).reshape(-1, 3)
    centre = pts.mean(axis=0)
    expected = (ORIGIN[0] + 11 * SPACING[2], ORIGIN[1] + 7 * SPACING[1], ORIGIN[2] + 3 * SPACING[0])
    np.testing.assert_allclose(centre, expected, atol=1e-3)


def test_seg_round_trip_and_references(tmp_path):
    datasets, files = _series(tmp_path)
    mask = _mask_with_hole()
    out = write_dicom_seg(mask, datasets[::-1], tmp_path / "seg.dcm", segment_label="lesion")
    back = read_seg_mask(out, _reference(), files, label="t")
    np.testing.assert_array_equal(back, mask)

    seg = pydicom.dcmread(out)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == datasets[0].StudyInstanceUID
    ref_series = seg.ReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == datasets[0].SeriesInstanceUID
    assert seg.NumberOfFrames == int(mask.any(axis=(1, 2)).sum())  # empty frames omitted
    assert seg.SegmentSequence[0].SegmentLabel == "lesion"


def test_writers_validate_arguments(tmp_path):
    datasets, _ = _series(tmp_path)
    with pytest.raises(ValueError, match="does not match the source series"):
        write_rtstruct(np.zeros((2, 2, 2)), datasets, tmp_path / "x.dcm")
    with pytest.raises(ValueError, match="empty"):
        write_dicom_seg(np.zeros(SHAPE), [], tmp_path / "x.dcm")
    with pytest.raises(ValueError, match="MANUAL"):
        write_rtstruct(np.zeros(SHAPE), datasets, tmp_path / "x.dcm", roi_generation_algorithm="GUESS")
    assert not (tmp_path / "x.dcm").exists()
    assert [d.InstanceNumber for d in sort_source_datasets(datasets[::-1])] == [6, 5, 4, 3, 2, 1]


def test_rtstruct_contour_sequence_matches_pydicom_built_one(tmp_path):
    """The pre-encoded ContourSequence decodes to exactly the items pydicom builds element by element (ascending
    tags, even lengths, DS strings of at most 16 characters), and re-encodes to the same bytes."""
    from pydicom.sequence import Sequence as DicomSequence

    from clips_nnunet.dataset_conversion.dicom_out import _pixel_to_patient_affine

    datasets, _ = _series(tmp_path)
    mask = _mask_with_hole()
    out = write_rtstruct(mask, datasets, tmp_path / "rt.dcm")
    with pydicom.config.strict_reading():
        rt = pydicom.dcmread(out)
        written = rt.ROIContourSequence[0].ContourSequence
    expected = []
    for k, src in enumerate(sort_source_datasets(datasets)):
        offset, matrix = _pixel_to_patient_affine(src)
        for c in slice_contours(mask[k]):
            points = offset + c @ matrix
            image_ref = Dataset()
            image_ref.ReferencedSOPClassUID = src.SOPClassUID
            image_ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
            item = Dataset()
            item.ContourImageSequence = DicomSequence([image_ref])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourData = [f"{v:.4f}".rstrip("0").rstrip(".") for v in points.ravel()]
            item.ContourNumber = len(expected) + 1
            expected.append(item)
    assert len(written) == len(expected) == 8
    for got, want in zip(written, expected):
        assert got == want
        assert all(len(str(v)) <= 16 for v in got.ContourData)
    # pydicom re-encoding the decoded file gives the same bytes as our encoder
    rt.save_as(tmp_path / "again.dcm", enforce_file_format=True)
    assert (tmp_path / "again.dcm").read_bytes() == out.read_bytes()


def test_rtstruct_contour_longer_than_64k_round_trips(tmp_path):
    """A ContourData over 64 KiB does not fit explicit VR's 16-bit DS length: it is written as UN with a 32-bit
    length (PS3.5 6.2.2, as pydicom does), read back as DS and rasterised to the same mask."""
    datasets, _ = _series(tmp_path)
    rows, cols = 20, 300
    wide = [d.copy() for d in datasets]
    for d in wide:
        d.Rows, d.Columns = rows, cols
    mask = np.zeros((SHAPE[0], rows, cols), dtype=bool)
    mask[2, 1:19, 1:299] = True
    mask[2, 1:18, 2:298:2] = False  # a comb (slots open at the top): one outer contour with thousands of points
    out = write_rtstruct(mask, wide, tmp_path / "comb.dcm")
    rt = pydicom.dcmread(out)
    data = rt.ROIContourSequence[0].ContourSequence[0]["ContourData"]
    assert len(data.value) > 65535 // 8  # more than 64 KiB of text
    reference = sitk.Image([cols, rows, SHAPE[0]], sitk.sitkFloat32)
    reference.SetOrigin(ORIGIN)
    reference.SetSpacing((SPACING[2], SPACING[1], SPACING[0]))
    np.testing.assert_array_equal(rasterise_rtstruct(out, reference, label="t"), mask)


# Type 2 attributes (present, may be empty) of the RTSTRUCT IOD's modules (PS3.3 A.19): Patient, General Study,
# RT Series, Frame of Reference, General Equipment, Structure Set, RT ROI Observations
RTSTRUCT_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "ReferringPhysicianName", "StudyID", "AccessionNumber", "SeriesNumber", "OperatorsName",
                  "PositionReferenceIndicator", "Manufacturer", "StructureSetDate", "StructureSetTime")
STS_PET = SHARED_TESTDATA / "tcia_sts_001" / "STS_001_PT_raw_BQML"


@pytest.mark.parametrize("pseudonym", ["PRED_0001", None])
def test_rtstruct_and_seg_conform_to_their_iods(tmp_path, pseudonym):
    """Type 2 attributes dciodvfy reported missing (OperatorsName, PositionReferenceIndicator) are present; with
    dicom3tools installed, ``dciodvfy`` finds no error in either object written on a real GE PET series."""
    from clips_nnunet.prediction.outputs import pseudonymise_sources

    datasets = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in sorted(STS_PET.glob("*.dcm"))]
    pseudonymise_sources(datasets, pseudonym, "salt")  # what predict does (pseudonym: --deidentify-dicom)
    mask = np.zeros((len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)), np.uint8)
    mask[100:110, 40:60, 50:70] = 1
    mask[104:106, 45:50, 55:60] = 0
    rt = write_rtstruct(mask, datasets, tmp_path / "rtstruct.dcm")
    seg = write_dicom_seg(mask, datasets, tmp_path / "seg.dcm")
    ds = pydicom.dcmread(rt)
    missing = [k for k in RTSTRUCT_TYPE2 if k not in ds]
    assert not missing
    assert ds.PositionReferenceIndicator == datasets[0].get("PositionReferenceIndicator", "")
    assert ds.StructureSetROISequence[0].ROIGenerationAlgorithm == "AUTOMATIC"
    assert "ROIInterpreter" in ds.RTROIObservationsSequence[0]
    assert "ContentDate" not in ds  # not an attribute of the RT Structure Set IOD (a standard extended SOP class)
    if shutil.which("dciodvfy") is None:
        pytest.skip("dicom3tools' dciodvfy is not installed (apt-get install dicom3tools); attributes checked above")
    for path in (rt, seg):
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
        lines = (out.stdout + out.stderr).splitlines()
        errors = [line for line in lines if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"
        assert not [line for line in lines if "not present in standard DICOM IOD" in line], lines


# ------------------------------------------------------------------------------ validity (issue 24, DICOM outputs)

def _sts_headers():
    from clips_nnunet.prediction.outputs import pseudonymise_sources
    headers = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in sorted(STS_PET.iterdir()) if f.is_file()]
    pseudonymise_sources(headers, None)  # the Type 2 attributes highdicom copies
    return sort_source_datasets(headers)


@pytest.mark.parametrize("lesions", [True, False], ids=["lesions", "empty"])
def test_seg_and_rtstruct_pass_dciodvfy_with_and_without_lesions(tmp_path, lesions):
    """dciodvfy (Debian's dicom3tools) reports no error on either object; an empty RTSTRUCT used to carry a
    ContourSequence with 0 items (2 errors, 9 of 9 empty predictions). The source is a real GE PET series."""
    from clips_nnunet.dataset_conversion.dicom_out import LESION_COLOR_RGB
    headers = _sts_headers()
    shape = (len(headers), int(headers[0].Rows), int(headers[0].Columns))
    mask = np.zeros(shape, np.uint8)
    if lesions:
        mask[100:106, 40:60, 50:70] = 1
        mask[102, 48:52, 58:62] = 0  # a hole
    seg_path, rt_path = write_dicom_seg(mask, headers, tmp_path / "seg.dcm"), write_rtstruct(mask, headers,
                                                                                             tmp_path / "rt.dcm")
    seg, rt = pydicom.dcmread(str(seg_path)), pydicom.dcmread(str(rt_path))
    # display colour, tracking identifiers, series numbers unlike the source's and each other's, approval
    segment = seg.SegmentSequence[0]
    assert len(segment.RecommendedDisplayCIELabValue) == 3 and segment.TrackingID and segment.TrackingUID
    assert list(rt.ROIContourSequence[0].ROIDisplayColor) == list(LESION_COLOR_RGB)
    assert rt.ApprovalStatus == "UNAPPROVED" and "ReviewerName" not in rt
    assert len({int(seg.SeriesNumber), int(rt.SeriesNumber), int(headers[0].SeriesNumber)}) == 3
    assert ("ContourSequence" in rt.ROIContourSequence[0]) == lesions
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (Debian/Ubuntu: apt-get install -y dicom3tools)")
    for path in (seg_path, rt_path):
        proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"
