"""`predict`'s many-patient pipeline: the next study's conversion and the previous study's outputs run while the
current study is predicted, and the run accounts for where its main thread's time went (`PredictionRun.timings`).

Runs with a stand-in model that takes a fixed time per study (what a GPU's inference of a whole-body study takes),
so no nnU-Net model is needed; the real model's path is covered by tests/test_predict_e2e.py.
"""
from __future__ import annotations

import threading
import time

import pytest
import SimpleITK as sitk

import clips_nnunet.dataset_conversion.convert as convert
import clips_nnunet.prediction.predict as P
from clips_nnunet.prediction.models import ModelSpec

PREDICT_S = 1.5  # seconds of "inference" per study


class SlowThresholdModel:
    """Stands in for :class:`CasePredictor`: lesion = SUV above 2.5, after ``PREDICT_S`` seconds of waiting (a
    GPU's inference leaves the CPU free; so does sleeping). Records when each prediction ran."""

    def __init__(self, events):
        self.events = events

    def predict_images(self, images, case_id):
        start = time.perf_counter()
        time.sleep(PREDICT_S)
        mask = sitk.Cast(images[1] > 2.5, sitk.sitkUInt8)
        mask.CopyInformation(images[1])
        self.events.append(("predict", case_id, start, time.perf_counter()))
        return mask

    def model_description(self):
        return {"dataset": "stand-in", "checkpoint": "-", "device": "cpu", "stages": []}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from clips_nnunet.synthetic.dicom_cohort import make_synthetic_cohort
    folder = tmp_path_factory.mktemp("pipeline") / "cohort"
    make_synthetic_cohort(folder, n_patients=2, seed=3, progress=False, mask_formats=("seg",))
    return folder


def test_conversion_and_outputs_overlap_inference_and_timings_add_up(cohort, tmp_path, monkeypatch):
    events = []
    lock = threading.Lock()

    def recorded(kind, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with lock:
                    events.append((kind, threading.current_thread().name, start, time.perf_counter()))
        return wrapper

    monkeypatch.setattr(convert, "prepare_study", recorded("convert", convert.prepare_study))
    monkeypatch.setattr(P, "write_patient_outputs", recorded("outputs", P.write_patient_outputs))
    spec = ModelSpec(dataset="stand-in", configuration="3d_fullres")
    P._import_output_modules()  # the writer's first job; on a busy machine it can outlast both predictions
    run = P.predict_dicom([cohort], tmp_path / "out", spec, progress=False, predictor=SlowThresholdModel(events))

    assert [r.status for r in run.results] == ["done", "done"]
    by_kind = {k: sorted((e for e in events if e[0] == k), key=lambda e: e[2]) for k in ("convert", "predict",
                                                                                         "outputs")}
    assert [len(by_kind[k]) for k in ("convert", "predict", "outputs")] == [2, 2, 2]
    (_, _, p1_start, p1_end), (_, _, p2_start, p2_end) = by_kind["predict"]
    # study 2 is converted (reader thread) while study 1 is predicted, study 1's outputs are written (writer thread)
    # while study 2 is predicted
    assert by_kind["convert"][1][2] < p1_end and by_kind["convert"][1][1].startswith("clips-predict-read")
    assert by_kind["outputs"][0][2] < p2_end and by_kind["outputs"][0][1].startswith("clips-predict-out")

    t = run.timings
    assert set(t) == set(P.TIMING_KEYS)
    assert t["nnunet"] == pytest.approx(PREDICT_S * 2, abs=0.5 * 2)  # the stand-in's sleep, plus thresholding
    assert t["nnunet"] >= PREDICT_S * 2
    parts = sum(v for k, v in t.items() if k != "total")
    assert parts <= t["total"] + 1e-6 and t["total"] - parts < 0.5 * t["total"]
    assert t["model"] == 0.0  # the predictor was given
    # the first study's conversion and the last study's outputs are always waited for
    assert t["wait_conversion"] > 0 and t["wait_outputs"] > 0
    assert "timings" not in run.to_dict()  # the summary file stays as it was
