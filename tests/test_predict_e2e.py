"""`clips-nnunet predict` end to end: synthetic DICOM cohort -> converter -> nnU-Net plan/preprocess/train (a tiny
model trained here) -> predict on held-out DICOM patients, one of them broken.

Kept short on CPU: 4 training patients of the ``small`` synthetic size, plans at 8 mm (``-overwrite_target_spacing``:
nnU-Net resamples the prediction back to the native PET grid), one epoch of 4 iterations, no final validation, no
test-time mirroring. The model is not good; the test checks the plumbing, privacy and the report's arithmetic.
"""
from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from clips_nnunet.dataset_conversion.convert import convert_cohort
from clips_nnunet.dataset_conversion.masks import rasterise_rtstruct, read_seg_mask
from clips_nnunet.synthetic.dicom_cohort import make_synthetic_cohort
from clips_nnunet.metrics.lesions import measure_lesions
from clips_nnunet.nnunet_env import environment_applied
from clips_nnunet.prediction.models import ModelSpec
from clips_nnunet.prediction.predict import OUTPUT_FILES, is_complete, predict_dicom
from clips_nnunet.io_utils import atomic_write_json, read_json
from nnunet_helpers import nnunet_environment, run_cli

DATASET_ID = 992
PLANS = "nnUNetPlans8mm"
TRAINER = "nnUNetTrainerClipsPredictTiny"
TRAINER_SOURCE = textwrap.dedent('''
    import torch
    from clips_nnunet.trainers.base import nnUNetTrainerClipsBase


    class nnUNetTrainerClipsPredictTiny(nnUNetTrainerClipsBase):
        """Test-only: one epoch of 4 iterations, no final validation (prediction is what is under test)."""

        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = 1
            self.num_iterations_per_epoch = 4
            self.num_val_iterations_per_epoch = 1

        def perform_actual_validation(self, save_probabilities: bool = False):
            pass
''')


def _identifiers(manifest, keys):
    found = []
    for st in manifest["studies"]:
        if st["key"].split("_")[0] in keys:
            ident = st["identity"]
            found += [ident["PatientName"].split("^")[-1], ident["PatientID"].strip("./"),
                      ident["PatientBirthDate"], st["study_date"]]
    return found


@pytest.mark.integration
def test_predict_from_dicom_end_to_end(tmp_path):
    # 1. synthetic cohort: patients 0-3 train, 4-5 are "new patients", plus one broken patient (PET without CT)
    cohort = tmp_path / "cohort"
    manifest = make_synthetic_cohort(cohort, n_patients=6, seed=3, size="small", mask_formats=("seg",),
                                     progress=False)
    new = tmp_path / "new_patients"
    new.mkdir()
    for p in ("patient_004", "patient_005"):
        shutil.move(str(cohort / p), str(new / p))
    broken = new / "patient_broken"
    broken.mkdir()
    broken_study = generate_uid()
    for f in sorted((new / "patient_005" / "study_1" / "PET").glob("*.dcm")):
        ds = pydicom.dcmread(str(f))
        ds.PatientID, ds.StudyInstanceUID = "BROKEN-PID-777", broken_study
        ds.save_as(str(broken / f.name))

    # 2. the training conversion, nnU-Net planning (8 mm) and a tiny training run, all real
    base = tmp_path / "nn"
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / f"{TRAINER}.py").write_text(TRAINER_SOURCE)
    env = nnunet_environment(base, [ext])
    report = convert_cohort(cohort, DATASET_ID, "PredTiny", labels="seg", raw_root=env["nnUNet_raw"],
                            preprocessed_root=env["nnUNet_preprocessed"], private_dir=tmp_path / "conv_private",
                            progress=False, n_folds=2)
    assert sum(1 for c in report.cases.values() if c.get("status") in ("converted", "done", "ok")) == 4 or \
        len(list((base / "nnUNet_raw").glob("Dataset992_*/labelsTr/*.nii.gz"))) == 4
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "-npfp", "1", "-np", "1",
             "-overwrite_target_spacing", "8", "8", "8", "-overwrite_plans_name", PLANS],
            {**env, "nnUNet_n_proc_DA": "1"})
    run_cli(["nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-p", PLANS, "-tr", TRAINER, "-device", "cpu"],
            {**env, "CLIPS_SEED": "0"})  # seeded (stock training otherwise): the predicted mask is reproducible

    # 3. predict: two good patients and a broken one; the broken one fails alone (exit code 1)
    out = tmp_path / "out"
    proc = run_cli(["clips-nnunet", "predict", str(new), "-o", str(out), "-d", str(DATASET_ID), "-c", "3d_fullres",
                    "-p", PLANS, "-tr", TRAINER, "-f", "0", "--device", "auto", "--disable-tta", "--no-progress"],
                   env, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = read_json(out / "prediction_summary.json")
    statuses = sorted(r["status"] for r in summary["results"])
    assert statuses == ["done", "done", "failed"], summary
    failed = [r for r in summary["results"] if r["status"] == "failed"][0]
    assert "no CT series" in failed["message"]
    assert summary["model"]["device"] == "cpu" and summary["model"]["stages"][0]["folds"] == [0]

    mapping_file = tmp_path / "out_private" / "prediction_pseudonyms.json"
    mapping = read_json(mapping_file)
    pid_of = {v["patient_id"]: k for k, v in mapping.items()}
    assert set(pid_of) == {st["identity"]["PatientID"] for st in manifest["studies"]
                           if st["key"].startswith(("p004", "p005"))} | {"BROKEN-PID-777"}
    cases = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(cases) == 2 and all(c.startswith("PRED_") for c in cases)

    gt_key = {pid_of[st["identity"]["PatientID"]]: st["key"] for st in manifest["studies"]
              if st["identity"]["PatientID"] in pid_of}
    for case in cases:
        folder = out / case
        assert sorted(p.name for p in folder.iterdir()) == sorted(OUTPUT_FILES)
        mask_img = sitk.ReadImage(str(folder / "mask.nii.gz"))
        mask = sitk.GetArrayFromImage(mask_img)
        gt_suv = sitk.ReadImage(str(cohort / "ground_truth" / f"{gt_key[case]}_suv.nii.gz"))
        assert mask_img.GetSize() == gt_suv.GetSize(), "the mask must be on the native PET grid"
        assert np.allclose(mask_img.GetOrigin(), gt_suv.GetOrigin(), atol=1e-3)
        assert np.allclose(mask_img.GetSpacing(), gt_suv.GetSpacing(), atol=1e-4)

        # report = measure_lesions on the mask NIfTI (SUV: the generator's exact ground truth)
        rep = read_json(folder / "report.json")
        suv = sitk.GetArrayFromImage(gt_suv)
        expected = measure_lesions(mask, mask_img.GetSpacing()[::-1], suv=suv)
        assert rep["case"] == case
        assert rep["tmtv_ml"] == pytest.approx(expected.tmtv_ml)
        assert rep["n_lesions"] == expected.n_lesions and rep["dmax_mm"] == pytest.approx(expected.dmax_mm)
        if expected.n_lesions:
            assert rep["suv_max"] == pytest.approx(expected.suv_max, rel=1e-3)
            assert rep["suv_mean"] == pytest.approx(expected.suv_mean, rel=1e-3)

        # DICOM SEG (exact) and RTSTRUCT (Dice > 0.95) read back with the converter's readers on the PET grid
        pet_files = sorted((new / f"patient_{gt_key[case][1:4]}" / "study_1" / "PET").glob("*.dcm"))
        seg_mask = read_seg_mask(folder / "seg.dcm", mask_img, pet_files, label=case)
        assert np.array_equal(seg_mask > 0, mask > 0)
        seg = pydicom.dcmread(str(folder / "seg.dcm"), stop_before_pixels=True)
        pet0 = pydicom.dcmread(str(pet_files[0]), stop_before_pixels=True)
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pet0.SeriesInstanceUID
        if mask.any():
            rt = rasterise_rtstruct(folder / "rtstruct.dcm", mask_img, label=case) > 0
            assert 2 * (rt & (mask > 0)).sum() / (rt.sum() + (mask > 0).sum()) > 0.95

    # 4. no identifier under OUT (file names and bytes) except in the DICOM SEG/RTSTRUCT, which belong to the
    #    source patient and study by default (as DICOM requires; --deidentify-dicom is tested in
    #    test_predict_outputs.py)
    identifiers = _identifiers(manifest, ("p004", "p005")) + ["BROKEN-PID-777"]
    for f in out.rglob("*"):
        for ident in identifiers:
            assert ident not in f.name
            if f.is_file() and f.name not in ("seg.dcm", "rtstruct.dcm"):
                data = f.read_bytes()
                assert ident.encode() not in data, f"{ident} found in {f.relative_to(out)}"
    for case in cases:
        seg = pydicom.dcmread(str(out / case / "seg.dcm"), stop_before_pixels=True)
        assert seg.PatientID == mapping[case]["patient_id"]

    # 5. a re-run resumes: complete patients are skipped (no model is even loaded)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("report.json")}
    rerun = predict_dicom([new / "patient_004", new / "patient_005"], out,
                          ModelSpec(DATASET_ID, "3d_fullres", TRAINER, PLANS, folds=[0]), progress=False)
    assert [r.status for r in rerun.results] == ["skipped", "skipped"] and rerun.n_failed == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("report.json")} == before
    assert read_json(mapping_file) == mapping

    # 6. cascade plumbing: a stage-2 configuration whose plans name previous_stage 3d_fullres (as TMTV-Net's
    #    3d_tmtv_refine names 3d_tmtv), with untrained weights; stage 1 is the model trained above.
    _check_cascade(tmp_path, env, new / "patient_004")

    # 7. --keep-patient-names with PatientIDs that sanitise to the same folder name (Müller, Mäller -> M_ller):
    #    two folders, each with its own patient's prediction (equal to step 3's), nothing overwritten
    source_mask = {f"patient_{gt_key[c][1:4]}": sitk.GetArrayFromImage(sitk.ReadImage(str(out / c / "mask.nii.gz")))
                   for c in cases}
    named = tmp_path / "named"
    for patient, pid in (("patient_004", "Müller"), ("patient_005", "Mäller")):
        for f in sorted((new / patient).rglob("*.dcm")):
            ds = pydicom.dcmread(str(f))
            ds.SpecificCharacterSet, ds.PatientID = "ISO_IR 192", pid
            target = named / pid / f.relative_to(new / patient)
            target.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(str(target))
    out_named = tmp_path / "out_named"
    proc = run_cli(["clips-nnunet", "predict", str(named), "-o", str(out_named), "-d", str(DATASET_ID), "-c",
                    "3d_fullres", "-p", PLANS, "-tr", TRAINER, "-f", "0", "--disable-tta", "--no-progress",
                    "--keep-patient-names"], env)
    summary = read_json(out_named / "prediction_summary.json")
    assert sorted((r["case"], r["status"]) for r in summary["results"]) == [("M_ller_PRED_0001", "done"),
                                                                             ("M_ller_PRED_0002", "done")]
    names = read_json(tmp_path / "out_named_private" / "prediction_pseudonyms.json")
    for entry in names.values():
        folder = out_named / entry["folder"]
        assert is_complete(folder)
        source = {"Müller": "patient_004", "Mäller": "patient_005"}[entry["patient_id"]]
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "mask.nii.gz"))),
                                      source_mask[source])
        assert pydicom.dcmread(str(folder / "seg.dcm"), stop_before_pixels=True).PatientID == entry["patient_id"]


def _check_cascade(tmp_path: Path, env, patient_dir: Path) -> None:
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from clips_nnunet.dataset_conversion.convert import prepare_study
    from clips_nnunet.prediction.models import CasePredictor
    from clips_nnunet.prediction.predict import find_studies, write_nifti

    results = Path(env["nnUNet_results"]) / "Dataset992_PredTiny"
    stage1 = results / f"{TRAINER}__{PLANS}__3d_fullres"
    stage2 = results / f"{TRAINER}__{PLANS}__3d_stage2"
    (stage2 / "fold_0").mkdir(parents=True)
    plans = read_json(stage1 / "plans.json")
    plans["configurations"]["3d_stage2"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_fullres"}
    dataset_json = read_json(stage1 / "dataset.json")
    atomic_write_json(stage2 / "plans.json", plans)
    atomic_write_json(stage2 / "dataset.json", dataset_json)
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_stage2")
    n_in = determine_num_input_channels(pm, cm, dataset_json)
    assert n_in == 3, "stage 2 sees CT, PET and the one-hot stage-1 lesion segmentation"
    torch.manual_seed(0)
    net = nnUNetTrainer.build_network_architecture(pm, cm, n_in, 2, enable_deep_supervision=False)
    torch.save({"network_weights": net.state_dict(), "trainer_name": TRAINER,
                "init_args": {"configuration": "3d_stage2"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               stage2 / "fold_0" / "checkpoint_final.pth")

    keys = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer")
    with environment_applied({k: env[k] for k in keys}):
        predictor = CasePredictor(ModelSpec(DATASET_ID, "3d_stage2", TRAINER, PLANS, folds=[0]), device="cpu",
                                  use_mirroring=False)
        assert [s["model"] for s in predictor.model_description()["stages"]] == [stage1.name, stage2.name]
        selection = find_studies([patient_dir])[0][0]
        prepared = prepare_study(selection, None, labels="none", label="PRED_cascade")
        # stage 2 has 3 input channels: it runs only when stage 1's segmentation is appended (one-hot)
        mask = predictor.predict_images([prepared.ct_on_pet, prepared.pet_suv], "c")
        # the same through nnU-Net's own file-based cascade (nnUNetv2_predict -prev_stage_predictions)
        work = tmp_path / "cascade"
        images = [[str(write_nifti(prepared.ct_on_pet, work / "c_0000.nii.gz")),
                   str(write_nifti(prepared.pet_suv, work / "c_0001.nii.gz"))]]
        stage1, stage2 = predictor.stages
        (work / "s1").mkdir()
        (work / "s2").mkdir()
        stage1.predict_from_files_sequential(images, str(work / "s1"), False, True, None)
        stage2.predict_from_files_sequential(images, str(work / "s2"), False, True, str(work / "s1"))
        expected = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "s2" / "c.nii.gz")))
    assert mask.GetSize() == prepared.pet_suv.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), expected)
