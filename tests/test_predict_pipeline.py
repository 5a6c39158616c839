"""`predict`'s many-patient pipeline: worker processes convert the next study and write the previous study's outputs
while the current study is predicted, and the run accounts for where its time went (`PredictionRun.timings`,
`PredictionRun.events`); a failing prediction or a worker that dies fails its study alone.

Runs with a stand-in model that takes a fixed time per study (what a GPU's inference of a whole-body study takes),
so no nnU-Net model is needed; the real model's path is covered by tests/test_predict_e2e.py.
"""
from __future__ import annotations

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


def test_conversion_and_outputs_overlap_inference_and_timings_add_up(cohort, tmp_path):
    events = []
    spec = ModelSpec(dataset="stand-in", configuration="3d_fullres")
    run = P.predict_dicom([cohort], tmp_path / "out", spec, progress=False, predictor=SlowThresholdModel(events),
                          workers=2)

    assert [r.status for r in run.results] == ["done", "done"]
    predicted = sorted(events, key=lambda e: e[2])
    jobs = {(kind, k): (start, end) for kind, k, start, end in run.events if kind in ("convert", "outputs")}
    assert sorted(jobs) == [("convert", 0), ("convert", 1), ("outputs", 0), ("outputs", 1)]
    (_, _, p1_start, p1_end), (_, _, p2_start, p2_end) = predicted
    # study 2 is converted (a worker process) while study 1 is predicted (this process), and study 1's outputs
    # are written (its worker) while study 2 is predicted
    assert jobs[("convert", 1)][0] < p1_end
    assert jobs[("outputs", 0)][0] < p2_end
    assert jobs[("convert", 0)][1] <= p1_start  # nnU-Net gets the images once they are converted

    t = run.timings
    assert set(t) == set(P.TIMING_KEYS)
    # the stand-in's sleep plus thresholding, and no waiting (a wait would add a conversion's seconds); the upper
    # bound leaves 1.5 s per study for thresholding on a loaded machine
    assert PREDICT_S * 2 <= t["nnunet"] < PREDICT_S * 2 + 3.0
    parts = sum(t[k] for k in P.MAIN_KEYS)
    assert parts <= t["total"] + 1e-6 and t["total"] - parts < 0.5 * t["total"]
    assert t["model"] == 0.0  # the predictor was given
    # the first study's conversion and the last study's outputs are always waited for
    assert t["wait_conversion"] > 0 and t["wait_outputs"] > 0
    # the workers' own accounts: wall time of both jobs of both studies, and their CPU
    assert t["convert"] == pytest.approx(sum(e - s for (kind, _), (s, e) in jobs.items() if kind == "convert"))
    assert 0 < t["convert_cpu"] and 0 < t["outputs_cpu"]
    waits = [(kind, k) for kind, k, _, _ in run.events if kind.startswith("wait_")]
    assert waits == [("wait_conversion", 0), ("wait_conversion", 1), ("wait_outputs", 0), ("wait_outputs", 1)]
    assert "timings" not in run.to_dict() and "events" not in run.to_dict()  # the summary file stays as it was


class FailingModel(SlowThresholdModel):
    """Fails on the first study it is given: the other study goes on, its worker forgets the failed one."""

    def predict_images(self, images, case_id):
        if not self.events:
            self.events.append(("failed", case_id, 0.0, 0.0))
            raise RuntimeError("CUDA out of memory (stand-in)")
        return super().predict_images(images, case_id)


def test_a_failing_prediction_fails_its_study_alone(cohort, tmp_path):
    spec = ModelSpec(dataset="stand-in", configuration="3d_fullres")
    run = P.predict_dicom([cohort], tmp_path / "out", spec, progress=False, predictor=FailingModel([]), workers=2)
    assert [r.status for r in run.results] == ["failed", "done"]
    assert run.results[0].message == "RuntimeError: CUDA out of memory (stand-in)"
    assert [e[:2] for e in sorted(run.events, key=lambda e: e[2])].count(("outputs", 0)) == 0


def test_a_worker_that_dies_fails_its_study_with_one_line_and_the_next_study_goes_on(cohort, tmp_path,
                                                                                     monkeypatch):
    import os

    original = convert.prepare_study

    def dies_on_the_first(selection, *args, **kwargs):  # runs in the forked worker
        if kwargs.get("label") == "PRED_0001":
            os._exit(9)
        return original(selection, *args, **kwargs)

    monkeypatch.setattr(convert, "prepare_study", dies_on_the_first)
    spec = ModelSpec(dataset="stand-in", configuration="3d_fullres")
    run = P.predict_dicom([cohort], tmp_path / "out", spec, progress=False, predictor=SlowThresholdModel([]),
                          workers=1)
    assert [r.status for r in run.results] == ["failed", "done"]
    assert run.results[0].message.startswith("the conversion/output worker process ended unexpectedly (exit code "
                                             "9")
    assert "\n" not in run.results[0].message


def test_workers_read_header_chunks_larger_than_a_pipe_without_blocking(tmp_path):
    """The index's header chunks go to the worker processes one per worker at a time: replies larger than a pipe's
    buffer (267 headers each) come back complete, in order, equal to reading them here."""
    from clips_nnunet.dataset_conversion.index import read_chunk
    from clips_nnunet.prediction.study_workers import StudyWorkers
    from tests.nnunet_helpers import SHARED_TESTDATA

    files = sorted(str(p) for p in (SHARED_TESTDATA / "tcia_sts_001" / "STS_001_PT_raw_BQML").glob("*.dcm"))
    assert len(files) > 200
    chunks = [files, files[::-1], files[:100], files, files[5:]]
    with StudyWorkers(2, None, None, None) as pool:
        parts = pool.map_chunks(chunks)
        assert pool.index_cpu > 0
    assert [len(p) for p in parts] == [len(c) for c in chunks]
    assert parts[1] == read_chunk(files[::-1]) and parts[4] == read_chunk(files[5:])
