"""``predict`` writes its SEG/RTSTRUCT against the PET headers the conversion already parsed (no second parse).

``prepare_study`` returns the PET series' headers in ``PreparedStudy.pet_headers``; these must be the full headers
(no pixels) of exactly the selected PET files, in the slice order of the converted PET image, and the outputs
written from them must equal those written from a fresh parse of the files.
"""
from __future__ import annotations

import numpy as np
import pydicom
import SimpleITK as sitk

from clips_nnunet.dataset_conversion.convert import prepare_study
from clips_nnunet.prediction.predict import PatientResult, _write_outputs, find_studies
from clips_nnunet.io_utils import read_json
from clips_nnunet.synthetic.dicom_cohort import make_synthetic_cohort


def test_prepared_study_carries_the_pet_headers_in_slice_order(tmp_path):
    make_synthetic_cohort(tmp_path / "cohort", n_patients=1, seed=3, size="small", mask_formats=("seg",),
                          progress=False)
    (selection,), problems = find_studies([tmp_path / "cohort"])
    assert problems == []
    prepared = prepare_study(selection, None, labels="none", label="PRED_0001")
    pet = prepared.pet_suv
    headers = prepared.pet_headers

    # one header per slice of the converted PET, in its z order, of exactly the selected files
    assert len(headers) == pet.GetSize()[2] == len(selection.pet.files)
    for k, h in enumerate(headers):
        assert np.allclose([float(v) for v in h.ImagePositionPatient], pet.TransformIndexToPhysicalPoint((0, 0, k)),
                           atol=1e-3)
    parsed = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in selection.pet.files]
    assert sorted(h.SOPInstanceUID for h in headers) == sorted(d.SOPInstanceUID for d in parsed)
    # full headers (what SEG/RTSTRUCT copy: patient, study, radiopharmaceutical), no pixel data
    by_uid = {d.SOPInstanceUID: d for d in parsed}
    for h in headers:
        assert "PixelData" not in h
        assert set(h.keys()) == set(by_uid[h.SOPInstanceUID].keys())

    # outputs from the carried headers equal outputs from a fresh parse (same report, same SEG frames)
    mask = sitk.GetImageFromArray((sitk.GetArrayFromImage(pet) > 0.5 * float(sitk.GetArrayViewFromImage(pet).max()))
                                  .astype(np.uint8))
    mask.CopyInformation(pet)
    assert sitk.GetArrayViewFromImage(mask).any()
    model = {"dataset": "test"}
    results = {}
    for name, carried in (("carried", list(headers)), ("parsed", [])):
        prepared.pet_headers = carried  # empty: _write_outputs parses the files itself
        result = _write_outputs(tmp_path / name, "PRED_0001", "PRED_0001", selection, mask, prepared, model,
                                None, [tmp_path / "cohort"], 0.0)
        assert isinstance(result, PatientResult) and result.status == "done", result.message
        results[name] = result
    assert results["carried"].n_lesions == results["parsed"].n_lesions >= 1
    reports = [read_json(tmp_path / name / "report.json") for name in ("carried", "parsed")]
    for report in reports:
        report.pop("created")
    assert reports[0] == reports[1]
    segs = [pydicom.dcmread(str(tmp_path / name / "seg.dcm")) for name in ("carried", "parsed")]
    assert np.array_equal(segs[0].pixel_array, segs[1].pixel_array)
    assert segs[0].PatientID == segs[1].PatientID == parsed[0].PatientID  # the source patient, by default
    refs = [sorted(i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
                   for i in s.ReferencedInstanceSequence) for seg in segs]
    assert refs[0] == refs[1] == sorted(h.SOPInstanceUID for h in headers)
