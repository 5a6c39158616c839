"""Any published nnU-Net model, alone or as an ensemble (issue 21, point 2), with nnU-Net's real command line.

One tiny model is trained here (synthetic DICOM cohort -> converter -> nnU-Net plans at 8 mm -> one epoch of two
iterations), exported with ``nnUNetv2_export_model_to_zip`` and installed with
``nnUNetv2_install_pretrained_model_from_zip`` into a fresh ``nnUNet_results``, as a user installs LyROI's zips.
Beside it, in that results folder, the module fixture derives models from its checkpoint, as separate
``Trainer__Plans__Config`` folders (weights cannot be downloaded here, and training more models would take minutes):

- ``…Top`` and ``…Bottom``: the lesion logit shifted (and, for Bottom, the two classes' output rows swapped) so
  that each marks 3-10 % of the new patient's voxels, the top and the bottom of the trained model's logit
  difference, with no voxel near the threshold: two non-empty, different masks, so a union is not trivially one of
  them;
- ``…PET``: a PET-only model (the first convolution keeps the PET input's weights, dataset.json names one channel
  ``PET``, the plans keep the PET's normalisation), like LyROI's ``nnUNetPlans_PET`` models;
- ``…T1``: the same model with channel names ``T1``/``FLAIR`` that match neither CT nor PET.

The model is not good; the tests check the plumbing: what each model is fed and how masks are merged.
"""
from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from clips_nnunet.io_utils import atomic_write_json, read_json
from nnunet_helpers import nnunet_environment, run_cli

DATASET_ID = 993
NAME = f"Dataset{DATASET_ID}_PubTiny"
PLANS = "nnUNetPlans8mm"
TRAINER = "nnUNetTrainerClipsPublishedTiny"
TRAINER_SOURCE = textwrap.dedent('''
    import torch
    from clips_nnunet.trainers.base import nnUNetTrainerClipsBase


    class nnUNetTrainerClipsPublishedTiny(nnUNetTrainerClipsBase):
        """Test-only: one epoch of 2 iterations, no final validation (prediction is what is under test)."""

        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = 1
            self.num_iterations_per_epoch = 2
            self.num_val_iterations_per_epoch = 1

        def perform_actual_validation(self, save_probabilities: bool = False):
            pass
''')
FRACTION = 0.05  # of the new patient's voxels marked by each derived model


def _spec(plans: str = PLANS):
    """``--model`` value and ModelSpec of one model of the installed dataset."""
    from clips_nnunet.prediction.models import ModelSpec
    return f"{DATASET_ID}:3d_fullres:{TRAINER}:{plans}:0", ModelSpec(DATASET_ID, "3d_fullres", TRAINER, plans, [0])


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Train, export, install in a fresh nnUNet_results; derive the other models; prepare the new patient."""
    import torch

    from clips_nnunet.dataset_conversion.convert import convert_cohort, prepare_study
    from clips_nnunet.nnunet_env import environment_applied
    from clips_nnunet.prediction.models import CasePredictor
    from clips_nnunet.prediction.predict import find_studies
    from clips_nnunet.synthetic.dicom_cohort import make_synthetic_cohort

    tmp = tmp_path_factory.mktemp("published")
    cohort = tmp / "cohort"
    make_synthetic_cohort(cohort, n_patients=3, seed=5, size="small", mask_formats=("seg",), progress=False)
    new = tmp / "new_patients"
    new.mkdir()
    shutil.move(str(cohort / "patient_002"), str(new / "patient_002"))
    ext = tmp / "ext"
    ext.mkdir()
    (ext / f"{TRAINER}.py").write_text(TRAINER_SOURCE)
    train_env = nnunet_environment(tmp / "train", [ext])
    convert_cohort(cohort, DATASET_ID, "PubTiny", labels="seg", raw_root=train_env["nnUNet_raw"],
                   preprocessed_root=train_env["nnUNet_preprocessed"], private_dir=tmp / "conv_private",
                   progress=False, n_folds=2)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "-npfp", "1", "-np", "1",
             "-overwrite_target_spacing", "8", "8", "8", "-overwrite_plans_name", PLANS],
            {**train_env, "nnUNet_n_proc_DA": "1"})
    run_cli(["nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-p", PLANS, "-tr", TRAINER, "-device", "cpu"],
            {**train_env, "CLIPS_SEED": "0"})
    trained = Path(train_env["nnUNet_results"]) / NAME / f"{TRAINER}__{PLANS}__3d_fullres"
    # the export takes fold_0/validation/summary.json, which the tiny trainer's skipped validation did not write
    atomic_write_json(trained / "fold_0" / "validation" / "summary.json", {"note": "validation skipped (test)"})
    zip_file = tmp / "PubTiny.zip"
    run_cli(["nnUNetv2_export_model_to_zip", "-d", str(DATASET_ID), "-o", str(zip_file), "-c", "3d_fullres",
             "-tr", TRAINER, "-p", PLANS, "-f", "0"], train_env)

    # a user's machine: a fresh nnUNet_results holding only what the zip installs
    env = nnunet_environment(tmp / "user", [ext])
    env["nnUNet_raw"] = train_env["nnUNet_raw"]  # the teacher test scores the training cases
    run_cli(["nnUNetv2_install_pretrained_model_from_zip", str(zip_file)], env)
    installed = Path(env["nnUNet_results"]) / NAME / f"{TRAINER}__{PLANS}__3d_fullres"
    assert (installed / "fold_0" / "checkpoint_final.pth").is_file()

    keys = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI runs (OMP_NUM_THREADS=1): identical floating point
    try:
        with environment_applied({k: env[k] for k in keys}):
            selection = find_studies([new / "patient_002"])[0][0]
            prepared = prepare_study(selection, None, labels="none", label="PRED_test")
            images = {"CT": prepared.ct_on_pet, "PET": prepared.pet_suv}
            p = CasePredictor(_spec()[1], device="cpu", use_mirroring=False).predict_probabilities(images, "t")
            logit = np.log(np.clip(p[1], 1e-30, 1)) - np.log(np.clip(p[0], 1e-30, 1))
            _derive(installed, "Top", shift=-_threshold(logit))
            _derive(installed, "Bottom", shift=-_threshold(-logit), swap=True)
            _derive_pet_only(installed)
            _derive(installed, "T1", shift=0.0, channel_names={"0": "T1", "1": "FLAIR"})
        yield {"env": env, "keys": keys, "tmp": tmp, "new": new, "images": images,
               "raw": Path(train_env["nnUNet_raw"]) / NAME}
    finally:
        torch.set_num_threads(threads)


def _threshold(logit: np.ndarray) -> float:
    """A logit between the 90th and 97th percentile that no voxel is near: the middle of the widest gap between
    neighbouring values there (air and padding share one logit, and a threshold on such a plateau would make the
    mask depend on rounding)."""
    values = np.unique(logit[(logit >= np.quantile(logit, 1 - 2 * FRACTION)) & (logit <= np.quantile(logit, 0.97))])
    assert values.size >= 2, "the trained model's logits are flat"
    k = int(np.argmax(np.diff(values)))
    return float(values[k] + values[k + 1]) / 2


def _copy(installed: Path, suffix: str) -> Path:
    target = installed.with_name(f"{TRAINER}__{PLANS}{suffix}__3d_fullres")
    shutil.copytree(installed, target)
    return target


def _edit_checkpoint(folder: Path, edit) -> None:
    import torch
    path = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    edit(checkpoint["network_weights"])
    torch.save(checkpoint, path)


def _last_seg_layer(weights) -> str:
    index = max(int(k.split(".")[2]) for k in weights if k.startswith("decoder.seg_layers."))
    return f"decoder.seg_layers.{index}"


def _derive(installed: Path, suffix: str, shift: float, swap: bool = False, channel_names=None) -> Path:
    """A copy whose lesion logit is shifted by ``shift`` (classes' rows swapped first with ``swap``)."""
    folder = _copy(installed, suffix)

    def edit(weights):
        layer = _last_seg_layer(weights)
        if swap:
            weights[f"{layer}.weight"] = weights[f"{layer}.weight"][[1, 0]].clone()
            weights[f"{layer}.bias"] = weights[f"{layer}.bias"][[1, 0]].clone()
        weights[f"{layer}.bias"][1] += shift
    _edit_checkpoint(folder, edit)
    if channel_names is not None:
        dataset_json = read_json(folder / "dataset.json")
        dataset_json["channel_names"] = channel_names
        atomic_write_json(folder / "dataset.json", dataset_json)
    return folder


def _derive_pet_only(installed: Path) -> Path:
    """A one-channel model: the first convolution keeps the PET input's weights (channel 1)."""
    folder = _copy(installed, "PET")

    def edit(weights):
        for key, value in list(weights.items()):
            if "encoder.stages.0.0.convs.0." in key and value.ndim == 5 and value.shape[1] == 2:
                weights[key] = value[:, 1:2].clone()
    _edit_checkpoint(folder, edit)
    dataset_json = read_json(folder / "dataset.json")
    dataset_json["channel_names"] = {"0": "PET"}
    atomic_write_json(folder / "dataset.json", dataset_json)
    plans = read_json(folder / "plans.json")
    config = plans["configurations"]["3d_fullres"]
    for key in ("normalization_schemes", "use_mask_for_norm"):
        config[key] = config[key][1:2]
    props = plans["foreground_intensity_properties_per_channel"]
    plans["foreground_intensity_properties_per_channel"] = {"0": props["1"]}
    atomic_write_json(folder / "plans.json", plans)
    return folder


def _predict(published, suffix: str, images=None):
    from clips_nnunet.nnunet_env import environment_applied
    from clips_nnunet.prediction.models import CasePredictor
    with environment_applied({k: published["env"][k] for k in published["keys"]}):
        predictor = CasePredictor(_spec(PLANS + suffix)[1], device="cpu", use_mirroring=False)
        images = published["images"] if images is None else images
        return predictor, sitk.GetArrayFromImage(predictor.predict_images(images, "t"))


def _cli_predict(published, name: str, models, *extra: str) -> np.ndarray:
    out = published["tmp"] / name
    args = ["clips-nnunet", "predict", str(published["new"]), "-o", str(out), "--disable-tta", "--no-progress",
            "--device", "cpu"]
    for m in models:
        args += ["--model", m]
    run_cli(args + list(extra), published["env"])
    summary = read_json(out / "prediction_summary.json")
    assert [r["status"] for r in summary["results"]] == ["done"], summary
    case = summary["results"][0]["case"]
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / case / "mask.nii.gz"))), summary


@pytest.mark.integration
def test_zip_installed_model_predicts_a_dicom_patient(published):
    mask, summary = _cli_predict(published, "out_zip", [_spec()[0]])
    assert summary["model"]["stages"][0]["model"] == f"{TRAINER}__{PLANS}__3d_fullres"
    assert summary["model"]["stages"][0]["channels"] == ["CT", "PET"]  # dataset.json CT/CT: the converter's layout
    _, expected = _predict(published, "")
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.integration
def test_union_ensemble_is_the_voxelwise_union_of_the_single_masks(published):
    _, top = _predict(published, "Top")
    _, bottom = _predict(published, "Bottom")
    n = top.size
    assert 0 < (top > 0).sum() < 0.2 * n and 0 < (bottom > 0).sum() < 0.2 * n   # two partial masks...
    assert ((top > 0) & ~(bottom > 0)).any() and ((bottom > 0) & ~(top > 0)).any()  # ...neither inside the other
    mask, summary = _cli_predict(published, "out_union", [_spec(PLANS + "Top")[0], _spec(PLANS + "Bottom")[0]],
                                 "--merge", "union")
    np.testing.assert_array_equal(mask, ((top > 0) | (bottom > 0)).astype(np.uint8))
    assert summary["model"]["merge"] == "union" and len(summary["model"]["stages"]) == 2


@pytest.mark.integration
def test_mean_ensemble_averages_the_models_probabilities(published):
    from clips_nnunet.nnunet_env import environment_applied
    from clips_nnunet.prediction.ensemble import Ensemble, EnsemblePredictor
    env = {k: published["env"][k] for k in published["keys"]}
    with environment_applied(env):
        top, _ = _predict(published, "Top")
        bottom, _ = _predict(published, "Bottom")
        by_hand = (top.predict_probabilities(published["images"], "t").astype(np.float64)
                   + bottom.predict_probabilities(published["images"], "t")) / 2
        ensemble = EnsemblePredictor(Ensemble([_spec(PLANS + "Top")[1], _spec(PLANS + "Bottom")[1]], "mean"),
                                     device="cpu", use_mirroring=False)
        np.testing.assert_allclose(ensemble.predict_probabilities(published["images"], "t"), by_hand, atol=1e-6)
        mask = sitk.GetArrayFromImage(ensemble.predict_images(published["images"], "t"))
    decided = np.abs(by_hand[1] - by_hand[0]) > 1e-5  # ties aside, the label of the larger mean probability
    np.testing.assert_array_equal(mask[decided], np.argmax(by_hand, axis=0)[decided])


@pytest.mark.integration
def test_pet_only_model_is_fed_only_the_pet(published):
    predictor, alone = _predict(published, "PET", images={"PET": published["images"]["PET"]})
    assert predictor.roles == ["PET"] and predictor.stage_info[0]["channels"] == ["PET"]
    # given CT and PET, it still reads the PET alone (its first convolution has one input channel)
    _, both = _predict(published, "PET")
    np.testing.assert_array_equal(alone, both)


@pytest.mark.integration
def test_model_with_unmatched_channel_names_is_refused_in_one_line(published):
    proc = run_cli(["clips-nnunet", "predict", str(published["new"]), "-o", str(published["tmp"] / "out_t1"),
                    "--model", _spec(PLANS + "T1")[0], "--device", "cpu", "--no-progress"],
                   published["env"], check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    # (torch's own import-time FutureWarnings may precede it on stderr; they are not ours)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("clips-nnunet")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("clips-nnunet predict: error: model ")
    assert f"{NAME}/{TRAINER}__{PLANS}T1__3d_fullres" in lines[0] and "['T1', 'FLAIR']" in lines[0]
    assert not (published["tmp"] / "out_t1").exists() or not any((published["tmp"] / "out_t1").glob("PRED_*"))


@pytest.mark.integration
def test_zip_model_and_a_pet_only_model_as_union_teacher_in_score(published):
    from clips_nnunet.metrics.overlap import dice
    raw = published["raw"]
    csv = published["tmp"] / "difficulty.csv"
    run_cli(["clips-nnunet", "score", "--predict", "--model", _spec()[0], "--model", _spec(PLANS + "PET")[0],
             "-i", str(raw / "imagesTr"), "-l", str(raw / "labelsTr"), "-o", str(csv), "--device", "cpu",
             "--save-predictions", str(published["tmp"] / "teacher_masks")],
            published["env"])
    rows = {line.split(",")[0]: line.split(",") for line in csv.read_text().splitlines()[1:]}
    header = csv.read_text().splitlines()[0].split(",")
    cases = sorted(p.name[: -len(".nii.gz")] for p in (raw / "labelsTr").glob("*.nii.gz"))
    assert sorted(rows) == cases
    for case in cases:  # 1 - Dice of the union of the two models' masks, each fed what its dataset.json names
        images = {role: sitk.ReadImage(str(raw / "imagesTr" / f"{case}_{i:04d}.nii.gz"))
                  for i, role in enumerate(("CT", "PET"))}
        _, both = _predict(published, "", images)
        _, pet = _predict(published, "PET", {"PET": images["PET"]})
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / f"{case}.nii.gz")))
        union = (both > 0) | (pet > 0)
        saved = sitk.GetArrayFromImage(sitk.ReadImage(str(published["tmp"] / "teacher_masks" / f"{case}.nii.gz")))
        np.testing.assert_array_equal(saved, union.astype(np.uint8))
        expected = 1.0 - dice(union, label)
        assert float(rows[case][header.index("difficulty")]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.integration
def test_audit_takes_a_model_as_one_more_prediction_set(published):
    raw = published["raw"]
    out = published["tmp"] / "audit"
    run_cli(["clips-nnunet", "audit", "--model", _spec()[0], "--images", str(raw / "imagesTr"), "--gt",
             str(raw / "labelsTr"), "-o", str(out), "--no-html", "--device", "cpu"], published["env"])
    cases = sorted(p.name[: -len(".nii.gz")] for p in (raw / "labelsTr").glob("*.nii.gz"))
    folder = out / "model_predictions" / f"d{DATASET_ID}_{TRAINER}__{PLANS}__3d_fullres" / "fold_all" / "validation"
    assert sorted(p.name for p in folder.iterdir()) == [f"{c}.nii.gz" for c in cases]
    audit = read_json(out / "audit.json")
    assert audit["results_folders"] == [folder.parent.parent.name] and not audit["failed"]
    assert sorted(r["case_id"] for r in audit["cases"]) == cases


@pytest.mark.integration
def test_compare_takes_a_union_ensemble_as_one_more_group(published):
    raw = published["raw"]
    out = published["tmp"] / "compare"
    run_cli(["clips-nnunet", "compare", "--model", _spec(PLANS + "Top")[0], "--model", _spec(PLANS + "Bottom")[0],
             "--images", str(raw / "imagesTr"), "--gt", str(raw / "labelsTr"), "-o", str(out), "--no-plots",
             "--quiet", "--device", "cpu"], published["env"])
    name = f"d{DATASET_ID}_{TRAINER}__{PLANS}Top__3d_fullres+d{DATASET_ID}_{TRAINER}__{PLANS}Bottom__3d_fullres__union"
    folder = out / "model_predictions" / name
    cases = sorted(p.name[: -len(".nii.gz")] for p in (raw / "labelsTr").glob("*.nii.gz"))
    assert sorted(p.name for p in folder.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in cases]
    assert (out / "report.md").is_file() and name in (out / "report.md").read_text()
    for case in cases:  # the group's masks are the union of the members' masks
        images = {role: sitk.ReadImage(str(raw / "imagesTr" / f"{case}_{i:04d}.nii.gz"))
                  for i, role in enumerate(("CT", "PET"))}
        union = (_predict(published, "Top", images)[1] > 0) | (_predict(published, "Bottom", images)[1] > 0)
        saved = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case}.nii.gz")))
        np.testing.assert_array_equal(saved, union.astype(np.uint8))


# ---------------------------------------------------------------------------------------------- without nnU-Net
@pytest.mark.parametrize("names, roles", [
    ({"0": "CT", "1": "CT"}, ["CT", "PET"]),            # the converter's (and nnU-Net's autoPET) layout
    ({"0": "CT", "1": "PET"}, ["CT", "PET"]),
    ({"0": "pet"}, ["PET"]),                             # PET-only (LyROI's _PET plans)
    ({"1": "ct", "0": "PT"}, ["PET", "CT"]),             # channel order from the keys, not the dict order
    ({"0": "CT_HU", "1": "PET_SUV"}, ["CT", "PET"]),
])
def test_channel_roles_from_dataset_json(names, roles):
    from clips_nnunet.dataset_conversion.channels import channel_roles
    assert channel_roles(names, "m") == roles


@pytest.mark.parametrize("names", [{"0": "T1", "1": "PET"}, {"0": "PET", "1": "SUV"}, {"0": "PETCT"}, {}])
def test_unmatched_channel_names_are_one_line_naming_the_model(names):
    from clips_nnunet.errors import DatasetError
    from clips_nnunet.dataset_conversion.channels import channel_roles
    with pytest.raises(DatasetError) as e:
        channel_roles(names, "Dataset1_X/nnUNetTrainer__nnUNetPlans__3d_fullres")
    assert "\n" not in str(e.value) and "Dataset1_X/nnUNetTrainer__nnUNetPlans__3d_fullres" in str(e.value)


def test_model_option_fields():
    import argparse

    from clips_nnunet.cli.model_options import add_model_options, models_from_args, parse_model_spec
    from clips_nnunet.errors import UsageError
    from clips_nnunet.prediction.ensemble import Ensemble

    spec = parse_model_spec("1:3d_fullres::nnUNetResEncUNetMPlans:0,all::PET")
    assert (spec.dataset, spec.configuration, spec.trainer, spec.plans, spec.folds, spec.checkpoint,
            spec.channels) == ("1", "3d_fullres", "nnUNetTrainer", "nnUNetResEncUNetMPlans", [0, "all"],
                               "checkpoint_final.pth", ["PET"])
    for bad in ("1", ":3d_fullres", "1:3d_fullres:a:b:c:d:e:f", "1:3d_fullres:::x", "1:3d_fullres:::::MR"):
        with pytest.raises(UsageError):
            parse_model_spec(bad)
    parser = argparse.ArgumentParser()
    add_model_options(parser)
    one = models_from_args(parser.parse_args(["--model", "5:2d"]))
    assert one.dataset == "5" and not isinstance(one, Ensemble)
    two = models_from_args(parser.parse_args(["--model", "5:2d", "--model", "6:3d_fullres", "--merge", "mean"]))
    assert isinstance(two, Ensemble) and two.merge == "mean" and [m.dataset for m in two.models] == ["5", "6"]
    assert models_from_args(parser.parse_args([])) is None
