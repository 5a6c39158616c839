"""End to end through nnU-Net's CLI on tiny data: plan-tmtv, preprocess, stage 1, refiner cascade, predict both.

Uses its own copy of the tiny synthetic dataset (id 991) because it adds configurations to the plans. Tiny
trainer subclasses (1 epoch of 2 iterations) are written to a private nnUNet_extTrainer folder.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from clips_nnunet.synthetic.raw import make_synthetic_raw_dataset
from clips_nnunet.io_utils import read_json
from nnunet_helpers import nnunet_environment, run_cli

DATASET_ID = 991
TINY_TRAINERS = textwrap.dedent('''
    import torch
    from clips_nnunet.trainers.tmtv.recipe import nnUNetTrainerTMTV, nnUNetTrainerTMTVRefiner


    class nnUNetTrainerTMTV_Tiny(nnUNetTrainerTMTV):
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 1, 2, 1


    class nnUNetTrainerTMTVRefiner_Tiny(nnUNetTrainerTMTVRefiner):
        previous_stage_trainer = "nnUNetTrainerTMTV_Tiny"

        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 1, 2, 1
''')


@pytest.mark.integration
def test_tmtv_cascade_end_to_end(tmp_path):
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "tmtv_tiny_trainers.py").write_text(TINY_TRAINERS)
    env = nnunet_environment(tmp_path, extra_ext_folders=[ext])
    raw = make_synthetic_raw_dataset(Path(env["nnUNet_raw"]), DATASET_ID)
    d = str(DATASET_ID)
    # fingerprint + plans only (no 3d_fullres preprocessing); nnU-Net's planner calls
    # torch.set_num_threads(nnUNet_n_proc_DA), which must then be positive
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", d, "--no_pp", "-np", "1"], {**env, "nnUNet_n_proc_DA": "1"})
    run_cli(["clips-nnunet", "plan-tmtv", "-d", d, "--clamp-patch-to-median"], env)

    pre = Path(env["nnUNet_preprocessed"]) / raw.name
    plans = read_json(pre / "nnUNetPlans.json")
    stage1, refine = plans["configurations"]["3d_tmtv"], plans["configurations"]["3d_tmtv_refine"]
    assert "3d_fullres" in plans["configurations"]  # kept
    assert stage1["spacing"] == [6.0, 6.0, 6.0] and stage1["patch_size"] == [24, 24, 24]  # 32*4/6 = 21.3 -> min 24
    assert stage1["normalization_schemes"] == ["NoNormalization"] * 2
    assert stage1["next_stage"] == "3d_tmtv_refine" and refine["previous_stage"] == "3d_tmtv"
    assert refine["patch_size"] == [32, 32, 32]

    run_cli(["nnUNetv2_preprocess", "-d", d, "-c", "3d_tmtv", "3d_tmtv_refine", "-np", "1", "1"], env)
    run_cli(["nnUNetv2_train", d, "3d_tmtv", "all", "-tr", "nnUNetTrainerTMTV_Tiny", "-device", "cpu"], env)
    results = Path(env["nnUNet_results"]) / raw.name
    stage1_dir = results / "nnUNetTrainerTMTV_Tiny__nnUNetPlans__3d_tmtv"
    next_stage = sorted((stage1_dir / "predicted_next_stage" / "3d_tmtv_refine").glob("case_*"))
    assert len({p.name.split(".")[0] for p in next_stage}) == 12  # every training case, for the refiner
    ckpt = torch.load(stage1_dir / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["inference_allowed_mirroring_axes"] is None
    assert ckpt["network_weights"]["stem.0.weight"].shape == (32, 5, 3, 3, 3)  # 5 windows in
    assert ckpt["network_weights"]["bottleneck.0.weight"].shape == (156, 156, 9, 9, 9)

    run_cli(["nnUNetv2_train", d, "3d_tmtv_refine", "all", "-tr", "nnUNetTrainerTMTVRefiner_Tiny", "-device",
             "cpu"], env)
    refine_dir = results / "nnUNetTrainerTMTVRefiner_Tiny__nnUNetPlans__3d_tmtv_refine"
    ckpt = torch.load(refine_dir / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["network_weights"]["stem.0.weight"].shape == (32, 6, 9, 9, 9)  # 5 windows + stage-1 foreground

    out1, out2 = tmp_path / "pred_stage1", tmp_path / "pred_refined"
    run_cli(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out1), "-d", d, "-c", "3d_tmtv", "-f",
             "all", "-tr", "nnUNetTrainerTMTV_Tiny", "-device", "cpu", "-npp", "1", "-nps", "1"], env)
    run_cli(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out2), "-d", d, "-c", "3d_tmtv_refine",
             "-f", "all", "-tr", "nnUNetTrainerTMTVRefiner_Tiny", "-prev_stage_predictions", str(out1), "-device",
             "cpu", "-npp", "1", "-nps", "1"], env)
    for out in (out1, out2):
        files = sorted(out.glob("case_*.nii.gz"))
        assert [f.name for f in files] == ["case_0012.nii.gz", "case_0013.nii.gz"]
        for f in files:
            seg = sitk.ReadImage(str(f))
            assert seg.GetSize() == (32, 32, 32) and seg.GetSpacing() == pytest.approx((4.0, 4.0, 4.0))
            assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1}
