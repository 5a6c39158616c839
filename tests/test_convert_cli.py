"""`clips-nnunet convert` on a synthetic cohort with every planted fault: exact SUV, masks, metadata, splits,
nnU-Net's dataset check, per-patient failures, resume after a killed run, --test cohorts, label sources."""
from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from clips_nnunet.synthetic.dicom_cohort import FAULTS, load_manifest, make_synthetic_cohort
from clips_nnunet.io_utils import read_json
from nnunet_helpers import BIN, nnunet_environment, run_cli

pytestmark = pytest.mark.integration
DATASET = "Dataset501_Lymphoma"


def _arr(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("convert")
    env = nnunet_environment(base)
    cohort, extra = base / "cohort", base / "test_cohort"
    make_synthetic_cohort(cohort, n_patients=7, seed=1, faults=FAULTS, progress=False)
    make_synthetic_cohort(extra, n_patients=1, seed=9, progress=False)
    proc = run_cli(["clips-nnunet", "convert", str(cohort), "-d", "501", "-n", "Lymphoma", "-j", "2", "--quiet",
                    "--test", str(extra)], env, check=False)
    raw = Path(env["nnUNet_raw"]) / DATASET
    private = base / "clips_private" / DATASET
    return {"base": base, "env": env, "cohort": cohort, "extra": extra, "proc": proc, "raw": raw,
            "private": private, "report": read_json(raw / "conversion_report.json"),
            "mapping": read_json(private / "case_mapping.json"), "manifest": load_manifest(cohort)}


def _case_of_study(conv, study) -> str:
    for case, v in conv["mapping"]["cases"].items():
        if v["study"] == study["study_uid"]:
            return case
    raise AssertionError(f"study {study['key']} has no case")


def test_faults_fail_clearly_and_the_rest_converts(converted):
    proc, report = converted["proc"], converted["report"]
    assert proc.returncode == 1, proc.stderr
    assert "failed" in proc.stdout and "converted" in proc.stdout
    for study in converted["manifest"]["studies"]:
        record = report["cases"][_case_of_study(converted, study)]
        if study["expected"]["converts"]:
            assert record["status"] == "converted", (study["key"], record)
        else:
            assert record["status"] == "failed", study["key"]
            for text in study["expected"]["error_contains"]:
                assert text in record["reason"], (study["key"], record["reason"])
    assert report["counts"] == {"converted": 7, "train": 6, "test": 1, "failed": 2, "skipped": 0}
    weightless = next(s for s in converted["manifest"]["studies"] if "missing-weight" in s["faults"])
    assert "(0010,1030)" in report["cases"][_case_of_study(converted, weightless)]["reason"]


def test_images_and_labels_equal_the_ground_truth(converted):
    raw, cohort = converted["raw"], converted["cohort"]
    checked = 0
    for study in converted["manifest"]["studies"]:
        if not study["expected"]["converts"]:
            continue
        case = _case_of_study(converted, study)
        pet = sitk.ReadImage(str(raw / "imagesTr" / f"{case}_0001.nii.gz"))
        ct = sitk.ReadImage(str(raw / "imagesTr" / f"{case}_0000.nii.gz"))
        gt = sitk.ReadImage(str(cohort / study["suv_path"]))
        np.testing.assert_allclose(sitk.GetArrayFromImage(pet), sitk.GetArrayFromImage(gt), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(_arr(raw / "labelsTr" / f"{case}.nii.gz"), _arr(cohort / study["label_path"]))
        assert ct.GetSize() == pet.GetSize() and np.allclose(ct.GetOrigin(), gt.GetOrigin(), atol=1e-3)
        hu = sitk.GetArrayFromImage(ct)
        suv = sitk.GetArrayFromImage(gt)
        assert hu.min() >= -1100 and 300 < hu.max() < 1500  # air .. bone / skull, in HU
        assert np.median(hu[suv > 0.5]) > -150  # body voxels of the PET are soft tissue on the CT
        checked += 1
    assert checked == 6


def test_nac_and_localizer_series_are_ignored_and_recorded(converted):
    report = converted["report"]
    for fault, word in (("nac", "ATTN"), ("localizer", "LOCALIZER")):
        study = next(s for s in converted["manifest"]["studies"] if fault in s["faults"])
        record = report["cases"][_case_of_study(converted, study)]
        assert record["status"] == "converted"
        assert any("excluded" in d and word in d.upper() for d in record["decisions"]), record["decisions"]


def test_dataset_json_metadata_and_patient_grouped_splits(converted):
    raw, env = converted["raw"], converted["env"]
    ds = read_json(raw / "dataset.json")
    assert ds["channel_names"] == {"0": "CT", "1": "CT"} and ds["labels"] == {"background": 0, "lesion": 1}
    assert ds["numTraining"] == 6 == len(list((raw / "labelsTr").glob("*.nii.gz")))
    assert len(list((raw / "imagesTs").glob("*_0001.nii.gz"))) == 1  # the --test cohort's study
    meta = read_json(raw / "case_metadata.json")
    for study in converted["manifest"]["studies"]:
        if not study["expected"]["converts"]:
            continue
        m = meta[_case_of_study(converted, study)]
        assert m["tmtv_ml"] == pytest.approx(study["tmtv_ml"], rel=1e-6)
        assert 1 <= m["n_lesions"] <= len(study["lesions"])
        assert m["vendor"] == study["vendor"] and m["pet_spacing_zyx_mm"] == pytest.approx([4.0, 4.0, 4.0])
        assert m["lesion_to_background"] > 1.2 and m["suv_max"] >= m["suv_mean"] > 0
        assert m["split"] == "train"
    splits = read_json(Path(env["nnUNet_preprocessed"]) / DATASET / "splits_final.json")
    assert len(splits) == 5
    vals = [c for f in splits for c in f["val"]]
    assert sorted(vals) == sorted(p.name[:-7] for p in (raw / "labelsTr").glob("*.nii.gz"))
    two = [s for s in converted["manifest"]["studies"] if "second-study" in s["faults"] or
           (s["patient_index"] == next(x for x in converted["manifest"]["studies"]
                                       if "second-study" in x["faults"])["patient_index"])]
    cases = {_case_of_study(converted, s) for s in two}
    assert len(cases) == 2
    assert any(cases <= set(f["val"]) for f in splits)  # one patient's studies share a fold
    for f in splits:
        assert not set(f["train"]) & set(f["val"])


def test_nnunet_verify_dataset_integrity_passes(converted):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    verify_dataset_integrity(str(converted["raw"]), 1)


def test_resume_after_killed_run(converted):
    env, cohort = dict(converted["env"]), converted["cohort"]
    raw = Path(env["nnUNet_raw"]) / "Dataset502_Resume"
    private = converted["base"] / "private_resume"
    cmd = [str(BIN / "clips-nnunet"), "convert", str(cohort), "-d", "502", "-n", "Resume", "--quiet",
           "--private-dir", str(private)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if len(list((private / "cases").glob("*.json"))) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "conversion finished before it could be killed"
    time.sleep(0.7)  # likely inside the next case's writes
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.stem for p in (private / "cases").glob("*.json")}
    assert 2 <= len(done_before) < 8

    second = run_cli(cmd + ["--resume"], env, check=False)
    assert second.returncode == 1  # the two faulty patients still fail
    report = read_json(raw / "conversion_report.json")
    resumed = {c for c, r in report["cases"].items() if r.get("resumed")}
    assert resumed == done_before
    assert report["counts"]["converted"] == 6
    # no half-written case: every case with any file has all of its files, no temporaries remain
    for case in {p.name.split("_0000")[0] for p in (raw / "imagesTr").glob("*_0000.nii.gz")}:
        assert (raw / "imagesTr" / f"{case}_0001.nii.gz").is_file() and (raw / "labelsTr" / f"{case}.nii.gz").is_file()
    assert len(list((raw / "labelsTr").glob("*.nii.gz"))) == 6
    assert not [p for p in raw.rglob(".*") if p.is_file()]
    third = run_cli(cmd + ["--resume"], env, check=False)
    assert "splits_final.json exists" in third.stdout
    assert all(r.get("resumed") for r in read_json(raw / "conversion_report.json")["cases"].values()
               if r["status"] == "converted")


def test_prepare_study_label_sources(converted, tmp_path):
    """RTSTRUCT-only, ROI regex, NIfTI masks keyed by PatientID, and no masks, for one study via the Python API."""
    from clips_nnunet.dataset_conversion.convert import prepare_study
    from clips_nnunet.dataset_conversion.index import index_dicom_folder
    from clips_nnunet.dataset_conversion.select import select_studies

    study = next(s for s in converted["manifest"]["studies"] if s["patient_index"] == 1)
    index = index_dicom_folder(converted["cohort"] / "patient_001", progress=False)
    (patient_key, studies), = index.patients.items()
    selection, = select_studies(studies, "p1")
    gt = _arr(converted["cohort"] / study["label_path"])
    rt = prepare_study(selection, labels="rtstruct", roi_pattern="^lymph", label="p1")
    assert rt.mask_source == "rtstruct on PET"
    np.testing.assert_array_equal(rt.mask, gt)
    # a user's input folder named by PatientID: kept outside pytest's temporary tree, which test_privacy scans
    with tempfile.TemporaryDirectory(prefix="clips-masks-") as folder:
        nifti_dir = Path(folder)
        (nifti_dir / f"{patient_key}.nii.gz").write_bytes((converted["cohort"] / study["label_path"]).read_bytes())
        nii = prepare_study(selection, labels=f"nifti:{nifti_dir}", label="p1")
    assert nii.mask_source == "nifti"
    np.testing.assert_array_equal(nii.mask, gt)
    none = prepare_study(selection, labels="none", label="p1")
    assert none.mask is None and none.vendor == study["vendor"]
    from clips_nnunet.errors import PatientError
    with pytest.raises(PatientError, match="no usable mask"):
        prepare_study(selection, labels="rtstruct", roi_pattern="^spleen$", label="p1")


def _selection(cohort: Path, patient_index: int):
    from clips_nnunet.dataset_conversion.index import index_dicom_folder
    from clips_nnunet.dataset_conversion.select import select_studies

    index = index_dicom_folder(cohort / f"patient_{patient_index:03d}", progress=False)
    (patient_key, studies), = index.patients.items()
    selection, = select_studies(studies, f"p{patient_index}")
    return patient_key, selection


def test_overrides_csv_rescues_missing_weight(converted, tmp_path):
    from clips_nnunet.dataset_conversion.convert import prepare_study
    from clips_nnunet.dataset_conversion.overrides import load_overrides

    study = next(s for s in converted["manifest"]["studies"] if "missing-weight" in s["faults"])
    patient_key, selection = _selection(converted["cohort"], study["patient_index"])
    csv = tmp_path / "overrides.csv"
    csv.write_text(f"PatientID,weight_kg\n{patient_key},{study['weight_kg']}\n")
    prepared = prepare_study(selection, load_overrides(csv)[patient_key], label="p")
    gt = _arr(converted["cohort"] / study["suv_path"])
    np.testing.assert_allclose(sitk.GetArrayFromImage(prepared.pet_suv), gt, rtol=1e-5, atol=1e-5)


def test_prepare_study_target_spacing(converted):
    from clips_nnunet.dataset_conversion.convert import prepare_study

    study = next(s for s in converted["manifest"]["studies"] if s["patient_index"] == 0)
    _, selection = _selection(converted["cohort"], 0)
    prepared = prepare_study(selection, labels="seg", target_spacing=(2.0, 2.0, 2.0), label="p0")
    assert prepared.pet_suv.GetSpacing() == (2.0, 2.0, 2.0) and prepared.ct_on_pet.GetSize() == (96, 96, 128)
    assert prepared.mask.shape == (128, 96, 96)
    tmtv = prepared.mask.sum() * 8.0 / 1000.0
    assert tmtv == pytest.approx(study["tmtv_ml"], rel=0.15)
    pet_mean = sitk.GetArrayFromImage(prepared.pet_suv).mean()
    assert pet_mean == pytest.approx(_arr(converted["cohort"] / study["suv_path"]).mean(), rel=0.05)
