"""`predict`'s completion is keyed by the study's identity, not by the folder name (issue 24, item 2).

A ``--keep-patient-names`` patient whose PatientID is ``PRED_0002`` gets the folder ``PRED_0002``; a later
pseudonymised run into the same output folder gives another patient the pseudonym ``PRED_0002``. Before the fix
that patient was "skipped, outputs already complete" and its line showed the other patient's TMTV. Runs with a
stand-in model (a threshold on SUV), so no nnU-Net model is needed.
"""
from __future__ import annotations


import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from clips_nnunet.io_utils import read_json
from clips_nnunet.prediction.models import ModelSpec
from clips_nnunet.prediction.predict import is_complete, predict_dicom


class ThresholdModel:
    """Stands in for :class:`CasePredictor`: lesion = SUV above a threshold."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def predict_images(self, images, case_id):
        mask = sitk.Cast(images[1] > self.threshold, sitk.sitkUInt8)
        mask.CopyInformation(images[1])
        return mask

    def model_description(self):
        return {"dataset": "stand-in", "checkpoint": "-", "device": "cpu", "stages": []}


@pytest.fixture(scope="module")
def two_patients(tmp_path_factory):
    from clips_nnunet.synthetic.dicom_cohort import make_synthetic_cohort
    cohort = tmp_path_factory.mktemp("identity") / "cohort"
    make_synthetic_cohort(cohort, n_patients=2, seed=5, progress=False, mask_formats=("seg",))
    for f in (cohort / "patient_000").rglob("*"):
        if f.is_file() and f.suffix == ".dcm":
            ds = pydicom.dcmread(str(f))
            ds.PatientID = "PRED_0002"
            ds.save_as(str(f))
    return cohort


def test_completion_is_keyed_by_study_not_folder_name(two_patients, tmp_path):
    out = tmp_path / "out"
    spec = ModelSpec(dataset=999, configuration="3d_fullres")
    first = predict_dicom([two_patients / "patient_000"], out, spec, keep_patient_names=True, progress=False,
                          predictor=ThresholdModel(2.5))
    assert [r.status for r in first.results] == ["done"] and first.results[0].case == "PRED_0002"
    assert read_json(out / "PRED_0002" / "report.json")["case"] == "PRED_0001"
    tmtv_first = first.results[0].tmtv_ml

    second = predict_dicom([two_patients / "patient_001"], out, spec, progress=False,
                           predictor=ThresholdModel(2.5))
    (result,) = second.results
    assert result.case == "PRED_0002"
    assert result.status == "failed", result  # not "skipped, outputs already complete"
    assert "holds the outputs of another study (PRED_0001)" in result.message
    assert result.tmtv_ml is None or result.tmtv_ml != tmtv_first
    # the other patient's outputs are untouched
    assert read_json(out / "PRED_0002" / "report.json")["case"] == "PRED_0001"
    assert is_complete(out / "PRED_0002", "PRED_0001") and not is_complete(out / "PRED_0002", "PRED_0002")

    # the same study again is skipped as complete (keyed by its identity)
    again = predict_dicom([two_patients / "patient_000"], out, spec, keep_patient_names=True, progress=False,
                          predictor=ThresholdModel(2.5))
    assert [r.status for r in again.results] == ["skipped"] and again.results[0].tmtv_ml == tmtv_first


def test_truncated_mask_is_not_complete(two_patients, tmp_path):
    out = tmp_path / "out"
    spec = ModelSpec(dataset=999, configuration="3d_fullres")
    run = predict_dicom([two_patients / "patient_001"], out, spec, progress=False, predictor=ThresholdModel(2.5))
    assert [r.status for r in run.results] == ["done"]
    mask = out / "PRED_0001" / "mask.nii.gz"
    assert is_complete(mask.parent, "PRED_0001")
    mask.write_bytes(mask.read_bytes()[: mask.stat().st_size // 2])
    assert not is_complete(mask.parent, "PRED_0001")
    rerun = predict_dicom([two_patients / "patient_001"], out, spec, progress=False, predictor=ThresholdModel(2.5))
    assert [r.status for r in rerun.results] == ["done"]
    assert is_complete(mask.parent, "PRED_0001")
    assert np.asarray(sitk.GetArrayFromImage(sitk.ReadImage(str(mask)))).sum() > 0


def test_a_killed_runs_temporary_files_are_removed_on_the_next_run(two_patients, tmp_path):
    out = tmp_path / "out"
    spec = ModelSpec(dataset=999, configuration="3d_fullres")
    predict_dicom([two_patients / "patient_001"], out, spec, progress=False, predictor=ThresholdModel(2.5))
    folder = out / "PRED_0001"
    stale = [folder / ".seg.dcm.k2j3x9.dcm", folder / ".mask.nii.gz.a1b2.nii.gz"]
    for f in stale:
        f.write_bytes(b"half a file")
    mine = folder / ".notes-of-the-physicist"
    mine.write_text("not ours")
    again = predict_dicom([two_patients / "patient_001"], out, spec, progress=False, predictor=ThresholdModel(2.5))
    assert [r.status for r in again.results] == ["skipped"]
    assert not any(f.exists() for f in stale) and mine.exists()
