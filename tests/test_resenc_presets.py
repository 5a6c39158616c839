"""A curriculum trainer on nnU-Net's residual-encoder presets (issue 21): ``nnUNetv2_plan_experiment -pl
nnUNetPlannerResEncM`` writes ``nnUNetResEncUNetMPlans``, and ``nnUNetv2_train/-predict -p nnUNetResEncUNetMPlans``
train and predict ``nnUNetTrainerCLSelfPaced`` (a budget subclass: 2 epochs x 2 iterations of batch 2, the
planner's batch of 12 patches cost most of the test's time; the final validation without test-time mirroring) with
nnU-Net's ``ResidualEncoderUNet``, the curriculum running after its warm-up epoch."""
from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from nnunet_helpers import nnunet_environment, run_cli

PLANS = "nnUNetResEncUNetMPlans"
TINY = textwrap.dedent('''
    import torch
    from clips_nnunet.trainers.self_paced_trainers import nnUNetTrainerCLSelfPaced


    class nnUNetTrainerCLSelfPaced_ResEncTiny(nnUNetTrainerCLSelfPaced):
        warmup_epochs = 1

        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 2, 2, 1
            self.configuration_manager.configuration["batch_size"] = 2   # read by initialize(); the plans say 12

        def perform_actual_validation(self, save_probabilities: bool = False):
            self.inference_allowed_mirroring_axes = None   # 1 instead of 8 forward passes per validation case
            super().perform_actual_validation(save_probabilities)
''')


@pytest.mark.integration
@pytest.mark.timeout(3600)   # the shared fixture plans the tiny dataset first; then plan, preprocess, train, predict
def test_self_paced_trains_and_predicts_with_resenc_m_plans(tiny_preprocessed, tmp_path):
    base, shared_env, dataset_id = tiny_preprocessed
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "resenc_tiny.py").write_text(TINY)
    # a private copy of the dataset: the ResEnc presets share the default plans' data identifier, so
    # nnUNetv2_preprocess rewrites nnUNetPlans_3d_fullres, which the shared fixture's other users read
    env = nnunet_environment(tmp_path / "nn", [ext])
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        src = next(Path(shared_env[name]).glob(f"Dataset{dataset_id:03d}_*"))
        shutil.copytree(src, Path(env[name]) / src.name)
    trainer = "nnUNetTrainerCLSelfPaced_ResEncTiny"

    # nnU-Net's own planner and preprocessing for the preset (adds a plans file; the default plans stay as they are)
    run_cli(["nnUNetv2_plan_experiment", "-d", str(dataset_id), "-pl", "nnUNetPlannerResEncM"],
            {**env, "nnUNet_n_proc_DA": "1"})
    pre = next(Path(env["nnUNet_preprocessed"]).glob(f"Dataset{dataset_id}_*"))
    plans = json.loads((pre / f"{PLANS}.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"]
    assert arch.endswith("ResidualEncoderUNet")
    assert plans["configurations"]["3d_fullres"]["data_identifier"] == "nnUNetPlans_3d_fullres"  # why the copy
    run_cli(["nnUNetv2_preprocess", "-d", str(dataset_id), "-plans_name", PLANS, "-c", "3d_fullres", "-np", "1"], env)

    run_cli(["nnUNetv2_train", str(dataset_id), "3d_fullres", "0", "-p", PLANS, "-tr", trainer, "-device", "cpu"],
            env, timeout=1800)
    fold = next(Path(env["nnUNet_results"]).glob(f"Dataset{dataset_id}_*/{trainer}__{PLANS}__3d_fullres/fold_0"))
    assert (fold / "validation" / "summary.json").is_file()
    assert (fold / "curriculum_history.json").is_file()
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "active fraction" in log   # the self-paced curriculum ran after its warm-up epoch
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert any(".blocks.0.conv2." in k for k in ckpt["network_weights"]), "no residual blocks in the checkpoint"

    one = tmp_path / "in"
    one.mkdir()
    images = Path(env["nnUNet_raw"]) / pre.name / "imagesTr"
    first = sorted(images.glob("*_0000.nii.gz"))[0].name.replace("_0000.nii.gz", "")
    for channel in sorted(images.glob(f"{first}_*.nii.gz")):
        shutil.copy(channel, one / channel.name)
    run_cli(["nnUNetv2_predict", "-i", str(one), "-o", str(tmp_path / "pred"), "-d", str(dataset_id), "-c",
             "3d_fullres", "-p", PLANS, "-tr", trainer, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
             "--disable_tta"], env)
    assert (tmp_path / "pred" / f"{first}.nii.gz").is_file()
