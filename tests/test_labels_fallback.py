"""``--labels auto`` with a DICOM SEG written as QIICR's dcmqi writes them (no SpatialLocationsPreserved), on a real
PET/CT study (TCIA STS_001 from the shared test data, linked into tmp): a consistent SEG is read; a SEG whose frames
contradict their references falls back to the study's RTSTRUCT and the reason is recorded in the warnings."""
from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from clips_nnunet.dataset_conversion.convert import prepare_study
from clips_nnunet.dataset_conversion.index import index_dicom_folder
from clips_nnunet.dataset_conversion.masks import rasterise_rtstruct
from clips_nnunet.dataset_conversion.select import select_studies
from clips_nnunet.errors import PatientError
from tests.nnunet_helpers import SHARED_TESTDATA

STS = SHARED_TESTDATA / "tcia_sts_001"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _link_all(src_dir: Path, dst_dir: Path) -> None:
    dst_dir.mkdir(parents=True, exist_ok=True)
    for f in sorted(src_dir.iterdir()):
        (dst_dir / f.name).symlink_to(f)


def _dcmqi_like_seg(path: Path, shift_first_frame_mm: float) -> np.ndarray:
    """Three-segment SEG on the STS PET without SpatialLocationsPreserved; returns the union mask (z, y, x)."""
    sources = [pydicom.dcmread(str(f)) for f in sorted((STS / "STS_001_PT_raw_BQML").glob("*.dcm"))]
    sources.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    for d in sources:
        for kw in ("AccessionNumber", "ReferringPhysicianName", "StudyID", "PatientBirthDate", "PatientSex"):
            if kw not in d:
                setattr(d, kw, "")
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    arrays = []
    for i in range(3):
        a = np.zeros((len(sources), rows, cols), dtype=np.uint8)
        a[100 + 10 * i: 104 + 10 * i, 40 + 5 * i: 50 + 5 * i, 60:70] = 1
        arrays.append(a)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=f"region {i + 1}",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for i in range(3)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=np.stack(arrays, axis=-1),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=300, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test", software_versions="0", device_serial_number="0",
        omit_empty_frames=True)
    ds = pydicom.Dataset(seg)
    ds.file_meta = seg.file_meta
    for i, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        for derivation in frame.DerivationImageSequence:
            for src in derivation.SourceImageSequence:
                del src.SpatialLocationsPreserved
        if i == 0 and shift_first_frame_mm:
            plane = frame.PlanePositionSequence[0]
            plane.ImagePositionPatient = [float(v) for v in plane.ImagePositionPatient[:2]] + [
                float(plane.ImagePositionPatient[2]) + shift_first_frame_mm]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return np.max(np.stack(arrays), axis=0)


def _selection(root: Path):
    index = index_dicom_folder(root, progress=False)
    [sel] = select_studies(index.patients["STS_001"], "case_0001")
    return sel


@pytest.mark.parametrize("shift_mm", [0.0, 3.27])
def test_labels_auto_reads_dcmqi_seg_or_falls_back_to_rtstruct(tmp_path, shift_mm):
    _link_all(STS / "STS_001_PT_raw_BQML", tmp_path / "pt")
    _link_all(STS / "STS_001_CT_cropped", tmp_path / "ct")
    _link_all(STS / "STS_001_RTSTRUCT_on_PT_raw", tmp_path / "rs")
    expected_seg = _dcmqi_like_seg(tmp_path / "seg" / "seg.dcm", shift_mm)
    sel = _selection(tmp_path)
    assert [m.modality for m in sel.masks] == ["SEG", "RTSTRUCT"]  # SEG is tried first
    prepared = prepare_study(sel, labels="auto", label="case_0001")
    if not shift_mm:
        assert prepared.mask_source == "seg on PET"
        np.testing.assert_array_equal(prepared.mask, expected_seg)
        assert not any("used the" in w for w in prepared.warnings)
    else:
        rs = next((tmp_path / "rs").iterdir())
        assert prepared.mask_source == "rtstruct on PET"
        np.testing.assert_array_equal(prepared.mask, rasterise_rtstruct(rs, prepared.pet_suv))
        [warning] = [w for w in prepared.warnings if "used the" in w]
        assert warning.startswith("--labels auto: used the rtstruct on PET because")
        assert "frame 1 lies 3.27 mm from the instance it references" in warning
        # --labels seg has no fallback: the study fails with the same one-line reason
        with pytest.raises(PatientError, match="no usable mask: the SEG cannot be placed"):
            prepare_study(sel, labels="seg", label="case_0001")
