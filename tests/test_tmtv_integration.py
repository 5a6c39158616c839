"""TMTV-Net's recipe end to end through nnU-Net's CLI on tiny data (integration, CPU).

One module fixture plans the tiny synthetic dataset (id 991, its own copy: it adds configurations), runs
``plan-tmtv``, preprocesses ``3d_tmtv`` and ``3d_tmtv_refine`` and trains stage-1 folds 0 and 1 of a 2-fold split
(each fold's validation writes the out-of-fold predictions the refiner trains on). Then:

- the cascade: the refiner (batch 8, 2-step accumulation, random respacing) on fold 0, and prediction of both
  stages from the best checkpoints (``-chk checkpoint_best.pth``), the refiner with ``-prev_stage_predictions``;
- TMTV-Net's fine-tuning: ``nnUNetTrainerTMTVFinetune`` started with ``-pretrained_weights`` from fold 0's best
  checkpoint;
- the stacking ensemble: ``clips-nnunet stack`` over folds 0 and 1, then ``clips-nnunet predict --stacking`` on a
  synthetic DICOM patient, and the error for folds that do not match.

Tiny trainer subclasses (1 epoch of 2 iterations; no final validation except stage 1's, which the cascade needs)
are written to a private nnUNet_extTrainer folder. Each CLI call costs ~20 s of imports on an idle CPU; on the shared
development machine (load 15-20 on 2 cores) the fixture alone took ~12 minutes, hence the timeouts.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from clips_nnunet.io_utils import atomic_write_json, read_json
from clips_nnunet.synthetic.raw import make_synthetic_raw_dataset
from nnunet_helpers import nnunet_environment, run_cli

DATASET_ID = 991
STAGE1, REFINER, FINETUNE = "nnUNetTrainerTMTV_Tiny", "nnUNetTrainerTMTVRefiner_Tiny", "nnUNetTrainerTMTVFinetune_Tiny"
TINY_TRAINERS = textwrap.dedent('''
    import torch
    from clips_nnunet.tmtv.recipe import (nnUNetTrainerTMTV, nnUNetTrainerTMTVFinetune,
                                                   nnUNetTrainerTMTVRefiner)


    def _tiny(trainer):
        trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 1, 2, 1


    class nnUNetTrainerTMTV_Tiny(nnUNetTrainerTMTV):
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            _tiny(self)


    class nnUNetTrainerTMTVFinetune_Tiny(nnUNetTrainerTMTVFinetune):
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            _tiny(self)

        def perform_actual_validation(self, save_probabilities=False):
            pass


    class nnUNetTrainerTMTVRefiner_Tiny(nnUNetTrainerTMTVRefiner):
        previous_stage_trainer = "nnUNetTrainerTMTV_Tiny"

        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            _tiny(self)

        def _set_batch_size_and_oversample(self):  # the plans' batch 8 is checked in the test; 2 keeps CPU time low
            super()._set_batch_size_and_oversample()
            self.batch_size = 2

        def perform_actual_validation(self, save_probabilities=False):
            pass
''')


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """Planned, preprocessed dataset 991 with stage-1 folds 0 and 1 trained (2-fold split)."""
    base = tmp_path_factory.mktemp("tmtv")
    ext = base / "ext"
    ext.mkdir()
    (ext / "tmtv_tiny_trainers.py").write_text(TINY_TRAINERS)
    env = nnunet_environment(base, extra_ext_folders=[ext])
    raw = make_synthetic_raw_dataset(Path(env["nnUNet_raw"]), DATASET_ID)
    d = str(DATASET_ID)
    # fingerprint + plans only; nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA): must be positive
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", d, "--no_pp", "-npfp", "1"], {**env, "nnUNet_n_proc_DA": "1"})
    run_cli(["clips-nnunet", "plan-tmtv", "-d", d, "--clamp-patch-to-median"], env)
    pre = Path(env["nnUNet_preprocessed"]) / raw.name
    cases = [f"case_{i:04d}" for i in range(12)]
    atomic_write_json(pre / "splits_final.json", [{"train": cases[6:], "val": cases[:6]},
                                                  {"train": cases[:6], "val": cases[6:]}])
    run_cli(["nnUNetv2_preprocess", "-d", d, "-c", "3d_tmtv", "3d_tmtv_refine", "-np", "1", "1"], env)
    for fold in ("0", "1"):
        run_cli(["nnUNetv2_train", d, "3d_tmtv", fold, "-tr", STAGE1, "-device", "cpu"], {**env, "CLIPS_SEED": "0"})
    results = Path(env["nnUNet_results"]) / raw.name
    return {"env": env, "raw": raw, "pre": pre, "results": results, "base": base,
            "stage1_dir": results / f"{STAGE1}__nnUNetPlans__3d_tmtv"}


@pytest.mark.integration
@pytest.mark.timeout(2400)  # includes the module fixture when run first
def test_tmtv_cascade_end_to_end(stage1, tmp_path):
    env, raw, d = stage1["env"], stage1["raw"], str(DATASET_ID)
    plans = read_json(stage1["pre"] / "nnUNetPlans.json")
    s1, refine = plans["configurations"]["3d_tmtv"], plans["configurations"]["3d_tmtv_refine"]
    assert "3d_fullres" in plans["configurations"]  # kept
    assert s1["spacing"] == [6.0, 6.0, 6.0] and s1["patch_size"] == [24, 24, 24]  # 32*4/6 = 21.3 -> min 24
    assert s1["normalization_schemes"] == ["NoNormalization"] * 2
    assert s1["next_stage"] == "3d_tmtv_refine" and refine["previous_stage"] == "3d_tmtv"
    assert refine["patch_size"] == [32, 32, 32] and refine["batch_size"] == 8

    stage1_dir = stage1["stage1_dir"]
    next_stage = sorted((stage1_dir / "predicted_next_stage" / "3d_tmtv_refine").glob("case_*"))
    assert len({p.name.split(".")[0] for p in next_stage}) == 12  # out-of-fold, every training case
    ckpt = torch.load(stage1_dir / "fold_0" / "checkpoint_best.pth", map_location="cpu", weights_only=False)
    assert ckpt["inference_allowed_mirroring_axes"] is None
    assert ckpt["network_weights"]["stem.0.weight"].shape == (32, 5, 3, 3, 3)  # 5 windows in
    assert ckpt["network_weights"]["bottleneck.0.weight"].shape == (156, 156, 9, 9, 9)

    run_cli(["nnUNetv2_train", d, "3d_tmtv_refine", "0", "-tr", REFINER, "-device", "cpu"], env, timeout=1500)
    refine_dir = stage1["results"] / f"{REFINER}__nnUNetPlans__3d_tmtv_refine"
    ckpt = torch.load(refine_dir / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    weights = ckpt["network_weights"]
    assert weights["stem.0.weight"].shape == (32, 6, 9, 9, 9)  # 5 windows + stage-1 foreground
    convs = [k[:-len(".weight")] for k, v in weights.items() if k.endswith(".weight") and v.ndim == 5]
    assert len(convs) == 10 and not any(f"{c}.bias" in weights for c in convs)  # TMTV-Net: no conv bias
    assert "head.0.weight" in weights and "head.0.bias" not in weights and "head.1.weight" in weights  # conv + IN
    # one optimiser step in 2 iterations (2-step accumulation): Adam's step count is 1
    assert all(s["step"] == 1 for s in ckpt["optimizer_state"]["state"].values())

    out1, out2 = tmp_path / "pred_stage1", tmp_path / "pred_refined"
    run_cli(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out1), "-d", d, "-c", "3d_tmtv", "-f",
             "0", "1", "-tr", STAGE1, "-chk", "checkpoint_best.pth", "-device", "cpu", "-npp", "1", "-nps", "1"], env)
    run_cli(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out2), "-d", d, "-c", "3d_tmtv_refine",
             "-f", "0", "-tr", REFINER, "-chk", "checkpoint_best.pth", "-prev_stage_predictions", str(out1),
             "-device", "cpu", "-npp", "1", "-nps", "1"], env)
    for out in (out1, out2):
        files = sorted(out.glob("case_*.nii.gz"))
        assert [f.name for f in files] == ["case_0012.nii.gz", "case_0013.nii.gz"]
        for f in files:
            seg = sitk.ReadImage(str(f))
            assert seg.GetSize() == (32, 32, 32) and seg.GetSpacing() == pytest.approx((4.0, 4.0, 4.0))
            assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1}


@pytest.mark.integration
@pytest.mark.timeout(2400)  # includes the module fixture when run first
def test_tmtv_finetune_from_best_checkpoint(stage1):
    env, d = stage1["env"], str(DATASET_ID)
    best = stage1["stage1_dir"] / "fold_0" / "checkpoint_best.pth"
    run_cli(["nnUNetv2_train", d, "3d_tmtv", "0", "-tr", FINETUNE, "-device", "cpu", "-pretrained_weights",
             str(best)], env)
    tuned = torch.load(stage1["results"] / f"{FINETUNE}__nnUNetPlans__3d_tmtv" / "fold_0" / "checkpoint_final.pth",
                       map_location="cpu", weights_only=False)
    start = torch.load(best, map_location="cpu", weights_only=False)["network_weights"]
    assert tuned["optimizer_state"]["param_groups"][0]["lr"] == pytest.approx(5e-5)
    # 2 AdamW steps of at most ~lr each from the pretrained weights (a fresh initialisation would differ by ~0.01+)
    diff = max((tuned["network_weights"][k].float() - v.float()).abs().max().item() for k, v in start.items())
    assert 0 < diff < 1e-3


@pytest.mark.integration
@pytest.mark.timeout(2400)  # includes the module fixture when run first
def test_tmtv_stack_and_predict_with_stacking(stage1, tmp_path):
    from clips_nnunet.synthetic.dicom_cohort import make_synthetic_cohort

    env, d = stage1["env"], str(DATASET_ID)
    model = tmp_path / "stack.pth"
    run_cli(["clips-nnunet", "stack", "-d", d, "-c", "3d_tmtv", "-tr", STAGE1, "-f", "0", "1", "--chk",
             "checkpoint_best.pth", "-o", str(model), "--iterations", "40", "--lr", "0.05", "--batch-size", "2",
             "--patch", "24", "24", "24", "--device", "cpu", "--no-progress"], env)
    summary = read_json(tmp_path / "stack.json")
    assert summary["model"]["folds"] == [0, 1] and summary["model"]["checkpoint"] == "checkpoint_best.pth"
    assert len(summary["cases"]) == 12
    assert all(0 <= summary["comparison_on_training_cases"][k] <= 1 for k in ("dice_stacking", "dice_average"))
    inputs = sorted((tmp_path / "stack.cases").glob("case_*.npy"))
    assert len(inputs) == 12
    first = np.load(inputs[0]).astype(np.float32)
    assert first.shape[0] == 3 and 0 <= first[:2].min() and first[:2].max() <= 1  # 2 models' fg probability
    assert set(np.unique(first[2])) <= {0.0, 1.0}  # the label

    cohort = tmp_path / "cohort"
    make_synthetic_cohort(cohort, n_patients=1, seed=5, size="small", mask_formats=("seg",), progress=False)
    patient = sorted(p for p in cohort.iterdir() if p.name.startswith("patient_"))[0]
    out = tmp_path / "out"
    common = ["clips-nnunet", "predict", str(patient), "-d", d, "-c", "3d_tmtv", "-tr", STAGE1, "--chk",
              "checkpoint_best.pth", "--stacking", str(model), "--device", "cpu", "--disable-tta", "--no-progress"]
    run_cli(common[:3] + ["-o", str(out)] + common[3:] + ["-f", "0", "1"], env)
    report = read_json(out / "prediction_summary.json")
    assert report["model"]["stages"][0]["stacking"] == "stack.pth"
    assert [r["status"] for r in report["results"]] == ["done"]
    mask = sorted(out.glob("PRED_*/mask.nii.gz"))
    assert len(mask) == 1 and set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(mask[0]))))) <= {0, 1}
    wrong = run_cli(common[:3] + ["-o", str(tmp_path / "out2")] + common[3:] + ["-f", "0"], env, check=False)
    assert wrong.returncode == 2 and "pass -f 0 1" in wrong.stderr  # could not run as asked (cli policy)
