"""Indexing any folder layout and choosing PET, CT and masks per study, on a cohort built in tmp from real files
(symbolic links to the shared test data) plus planted faults (localizer, NAC PET, unreadable file, stray files)."""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from clips_nnunet.dataset_conversion.index import index_dicom_folder
from clips_nnunet.dataset_conversion.select import select_studies
from clips_nnunet.errors import PatientError
from tests.nnunet_helpers import SHARED_TESTDATA

STS = SHARED_TESTDATA / "tcia_sts_001"
DRO = SHARED_TESTDATA / "suv_dro" / "DRO_0_0"


def _link_all(src_dir: Path, dst_dir: Path) -> None:
    dst_dir.mkdir(parents=True, exist_ok=True)
    for f in sorted(src_dir.iterdir()):
        (dst_dir / f.name).symlink_to(f)


def _variant(files, dst_dir: Path, patient_id=None, **attrs) -> None:
    """Copies of ``files`` as a new series (new UIDs) with header changes."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for i, f in enumerate(files):
        ds = pydicom.dcmread(str(f))
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if patient_id:
            ds.PatientID = patient_id
        for k, v in attrs.items():
            setattr(ds, k, v)
        ds.save_as(str(dst_dir / f"IM{i:04d}"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    # patient with a real PET/CT study, odd layout: everything in nested folders with unhelpful names
    _link_all(STS / "STS_001_PT_raw_BQML", root / "a" / "x1")
    _link_all(STS / "STS_001_CT_cropped", root / "a" / "x2" / "deeper")
    _link_all(STS / "STS_001_RTSTRUCT_on_PT_raw", root / "a" / "x3")
    _link_all(STS / "STS_001_RTSTRUCT_on_CT", root / "a" / "x4")
    ct_files = sorted((STS / "STS_001_CT_cropped").glob("*.dcm"))
    pet_files = sorted((STS / "STS_001_PT_raw_BQML").glob("*.dcm"))
    _variant(ct_files[:2], root / "a" / "loc", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], SeriesNumber=99,
             SeriesDescription="Topo")
    _variant(ct_files[:1], root / "a" / "single", SeriesNumber=98)
    _variant(pet_files[:5], root / "a" / "nac", CorrectedImage=["DECY", "SCAT"], SeriesNumber=5,
             SeriesDescription="PET NAC")
    _variant(pet_files[:5], root / "a" / "mip", SeriesType=["STATIC", "REPROJECTION"], SeriesNumber=6)
    # a derived CT (e.g. a reformat) in the same frame of reference, with a lower series number: ORIGINAL wins
    _variant(ct_files, root / "a" / "derived", ImageType=["DERIVED", "SECONDARY", "AXIAL"], SeriesNumber=1)
    # a second AC PET in the same study but in another frame of reference (no CT pairs with it)
    _variant(pet_files[:40], root / "a" / "other_for", FrameOfReferenceUID=generate_uid(), SeriesNumber=7)
    # patient whose only PET is NAC
    _variant(pet_files[:3], root / "b" / "nac_only", patient_id="P_NAC_ONLY", CorrectedImage=["DECY"],
             StudyInstanceUID=generate_uid())
    # DRO patient: PET + RTSTRUCT, no CT
    _link_all(DRO / "PT", root / "c" / "pt")
    _link_all(DRO / "RS", root / "c" / "rs")
    # faults: unreadable DICOM, stray non-DICOM files
    (root / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xffgarbage")
    (root / "trunc.dcm").write_bytes(ct_files[0].read_bytes()[:700])
    # old preamble-less DICOM (no 128-byte preamble, no DICM, no meta group): still a DICOM image of patient D
    old = pydicom.dcmread(str(DRO / "PT" / "pet_dro_0_0_slice_000.dcm"))
    old.PatientID = "P_OLD"
    old.StudyInstanceUID = generate_uid()
    del old.file_meta
    old.preamble = None
    old.save_as(str(root / "old_style"), implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert (root / "old_style").read_bytes()[:2] == b"\x08\x00"
    (root / "notes.txt").write_text("not dicom")
    (root / "c" / ".DS_Store").write_bytes(b"\x00\x01")
    return root


@pytest.fixture(scope="module")
def index(cohort):
    return index_dicom_folder(cohort, progress=False, workers=1)


def test_index_groups_patients_studies_series(index, cohort):
    assert sorted(index.patients) == ["DRO", "P_NAC_ONLY", "P_OLD", "STS_001"]
    [[old]] = index.patients["P_OLD"].values()
    assert old.modality == "PT" and old.n_instances == 1
    sts = index.patients["STS_001"]
    assert len(sts) == 1
    series = next(iter(sts.values()))
    by_mod = {}
    for s in series:
        by_mod.setdefault(s.modality, []).append(s)
    assert sorted(s.n_instances for s in by_mod["PT"]) == [5, 5, 40, 267]
    assert sorted(s.n_instances for s in by_mod["CT"]) == [1, 2, 59, 59]
    assert len(by_mod["RTSTRUCT"]) == 2
    pet = next(s for s in by_mod["PT"] if s.n_instances == 267)
    assert len(pet.files) == 267 and len(set(pet.sop_instance_uids)) == 267
    assert pet.attributes["Units"] == "BQML" and pet.attributes["SliceExtent"][0] == pytest.approx(-881.3)
    rs_pt = [s for s in by_mod["RTSTRUCT"] if pet.series_uid in s.referenced_series_uids]
    assert len(rs_pt) == 1 and len(rs_pt[0].referenced_sop_uids) == 267


def test_index_records_unreadable_and_counts_non_dicom(index, cohort):
    assert sorted(p.name for p, _ in index.unreadable) == ["broken.dcm", "trunc.dcm"]
    assert all("re-export" in why for _, why in index.unreadable)
    assert index.n_non_dicom == 2


def test_index_parallel_matches_serial(cohort, index):
    par = index_dicom_folder(cohort, progress=False, workers=2)
    assert {k: sorted(v) for k, v in par.patients.items()} == {k: sorted(v) for k, v in index.patients.items()}
    assert par.n_series == index.n_series and len(par.unreadable) == 2


def test_select_excludes_faults_and_pairs_by_frame_of_reference(index):
    [sel] = select_studies(index.patients["STS_001"], "case_0001")
    assert sel.pet.n_instances == 267
    assert sel.ct is not None and sel.ct.n_instances == 59 and sel.ct.image_type[0] == "ORIGINAL"
    text = "\n".join(sel.decisions)
    assert "localizer" in text and "NAC" in text and "single-image" in text and "MIP" in text
    assert "chose PT series #1" in text  # the paired PET beats the 40-slice PET of another frame of reference
    assert "2 CT series share the PET's frame of reference; chose CT series #2" in text
    # both RTSTRUCTs: the one on the PET by reference, the one on the (not exported) original CT by frame of reference
    assert len(sel.masks) == 2
    assert sel.mask_on[sel.masks[0].series_uid] == "PET"
    assert sel.mask_on[sel.masks[1].series_uid] == "CT"
    assert "not in the export" in text
    for d in sel.decisions:  # identifier-free
        assert "STS_001" not in d and "1.3.6.1" not in d and "2000" not in d


def test_select_is_deterministic_regardless_of_input_order(index):
    studies = index.patients["STS_001"]
    reversed_studies = {k: list(reversed(v)) for k, v in studies.items()}
    a = select_studies(studies, "c")[0]
    b = select_studies(reversed_studies, "c")[0]
    assert (a.pet.series_uid, a.ct.series_uid, [m.series_uid for m in a.masks]) == \
        (b.pet.series_uid, b.ct.series_uid, [m.series_uid for m in b.masks])


def test_select_nac_only_patient_raises_with_label(index):
    with pytest.raises(PatientError) as err:
        select_studies(index.patients["P_NAC_ONLY"], "case_0042")
    assert err.value.patient == "case_0042"
    assert "ATTN" in str(err.value) and "P_NAC_ONLY" not in str(err.value)


def test_select_pet_without_ct(index):
    [sel] = select_studies(index.patients["DRO"], "case_0002")
    assert sel.ct is None and sel.pet.n_instances == 20
    assert any("no usable CT" in d for d in sel.decisions)
    assert len(sel.masks) == 1 and sel.mask_on[sel.masks[0].series_uid] == "PET"


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # the non-ASCII CS value is deliberate
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"])
def test_plain_values_decode_bytes_as_pydicom_does(tmp_path, syntax):
    """The index's byte decoding (plain_values) gives the values pydicom gives, in implicit, explicit little and
    explicit big endian files; an empty element and a non-ASCII CS value go through pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset

    from clips_nnunet.dataset_conversion.index import _RECORD_KEYWORDS, _as_tuple, plain_values

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.128"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.128"
    ds.SOPInstanceUID = "1.2.3.4.5"  # odd length: written with a trailing NUL
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "1.2.3", "1.2.3.4", "1.2.3.9"
    ds.Modality = "PT"
    ds.ImageType = ["ORIGINAL", "PRIMÄRY"]  # not ASCII: decoded by pydicom
    ds.ImagePositionPatient = ["-1.5", "2", "3e1"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = ["0.976562", "4.0"]
    ds.Rows, ds.Columns = 512, 256
    ds.add_new(0x00181120, "DS", None)  # GantryDetectorTilt present but empty
    ds.PatientID = "P1"
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    read = pydicom.dcmread(path, stop_before_pixels=True)
    fast = plain_values(read)
    expected = {k: _as_tuple(v) for k in _RECORD_KEYWORDS
                if (v := pydicom.dcmread(path, stop_before_pixels=True).get(k)) is not None}
    assert fast == expected
    assert fast["ImagePositionPatient"] == (-1.5, 2.0, 30.0) and fast["PixelSpacing"] == (0.976562, 4.0)
    assert fast["Rows"] == 512 and fast["Columns"] == 256 and fast["SOPInstanceUID"] == "1.2.3.4.5"
    assert fast["ImageType"] == ("ORIGINAL", "PRIMÄRY") and "GantryDetectorTilt" not in fast
