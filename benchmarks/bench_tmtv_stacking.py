#!/usr/bin/env python
"""Benchmark (not a test): TMTV-Net's learned stacking against nnU-Net's softmax averaging of the fold models.

On a synthetic cohort (``clips_nnunet.synthetic.raw``, CT/PET 32^3 at 4 mm with lesions, held-out cases with labels
in imagesTs/labelsTs): plan, ``plan-tmtv``, preprocess ``3d_tmtv``, train K stage-1 folds of ``nnUNetTrainerTMTV``
for a short CPU budget (epochs x iterations below), ``clips-nnunet stack`` over the K folds (best checkpoints), then
predict the held-out cases twice with nnU-Net's predictor from the best checkpoints, once averaging the folds' softmax
(nnU-Net's ensemble) and once through the stacking layer, and print the foreground Dice of each against labelsTs,
plus the stacking summary on its own training cases. Everything runs through nnU-Net's real CLI except the two
held-out predictions, which call nnU-Net's predictor in this process so that both use the same loaded folds.

Usage (CPU; about 15 minutes on 2 idle cores with the defaults)::

    python benchmarks/bench_tmtv_stacking.py --work /tmp/bench_stacking
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

TRAINER = "nnUNetTrainerTMTV_Bench"
DATASET_ID = 993


def run(cmd, env):
    exe = Path(sys.executable).parent / cmd[0]
    proc = subprocess.run([str(exe) if exe.exists() else cmd[0], *cmd[1:]], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="empty scratch folder")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--train", type=int, default=18, help="training cases")
    parser.add_argument("--test", type=int, default=8, help="held-out cases")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=10, help="iterations per epoch")
    parser.add_argument("--stack-iterations", type=int, default=400)
    parser.add_argument("--stack-lr", type=float, default=0.01)
    args = parser.parse_args()

    import SimpleITK as sitk

    from clips_nnunet.cli.env import ext_trainer_value
    from clips_nnunet.io_utils import atomic_write_json
    from clips_nnunet.synthetic.raw import make_synthetic_raw_dataset

    work = Path(args.work)
    ext = work / "ext"
    ext.mkdir(parents=True, exist_ok=True)
    (ext / "bench_stacking_trainer.py").write_text(textwrap.dedent(f'''
        import torch
        from clips_nnunet.tmtv.recipe import nnUNetTrainerTMTV


        class {TRAINER}(nnUNetTrainerTMTV):
            def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
                super().__init__(plans, configuration, fold, dataset_json, device)
                self.num_epochs, self.num_iterations_per_epoch = {args.epochs}, {args.iterations}
                self.num_val_iterations_per_epoch = 2
    '''))
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (work / name).mkdir(exist_ok=True)
        env[name] = str(work / name)
    env.update({"nnUNet_extTrainer": ext_trainer_value(str(ext)), "nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "0",
                "nnUNet_compile": "false", "CLIPS_SEED": "0"})
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results",
                                           "nnUNet_extTrainer")})
    raw = make_synthetic_raw_dataset(work / "nnUNet_raw", DATASET_ID, n_train=args.train, n_test=args.test, seed=7)
    d = str(DATASET_ID)
    run(["nnUNetv2_plan_and_preprocess", "-d", d, "--no_pp", "-np", "1"], {**env, "nnUNet_n_proc_DA": "1"})
    run(["clips-nnunet", "plan-tmtv", "-d", d, "--clamp-patch-to-median"], env)
    cases = sorted(p.name[:-len("_0000.nii.gz")] for p in (raw / "imagesTr").glob("*_0000.nii.gz"))
    chunks = np.array_split(np.array(cases), args.folds)
    atomic_write_json(work / "nnUNet_preprocessed" / raw.name / "splits_final.json",
                      [{"train": [c for c in cases if c not in set(v)], "val": list(v)} for v in chunks])
    # stage-1 validation exports predictions for the next stage, so the refiner's data must exist too
    run(["nnUNetv2_preprocess", "-d", d, "-c", "3d_tmtv", "3d_tmtv_refine", "-np", "1", "1"], env)
    folds = [str(f) for f in range(args.folds)]
    for f in folds:
        run(["nnUNetv2_train", d, "3d_tmtv", f, "-tr", TRAINER, "-device", "cpu"], env)
    model = work / "stack.pth"
    print(run(["clips-nnunet", "stack", "-d", d, "-c", "3d_tmtv", "-tr", TRAINER, "-f", *folds, "--chk",
               "checkpoint_best.pth", "-o", str(model), "--iterations", str(args.stack_iterations), "--lr",
               str(args.stack_lr), "--patch", "24", "24", "24", "--device", "cpu", "--no-progress"], env))

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from clips_nnunet.metrics.overlap import dice
    from clips_nnunet.tmtv.stacking import enable_stacking, load_stacking_model

    folder = work / "nnUNet_results" / raw.name / f"{TRAINER}__nnUNetPlans__3d_tmtv"
    images = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))
    scores = {}
    for name in ("softmax averaging", "stacking"):
        predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"),
                                    allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(folder), tuple(int(f) for f in folds),
                                                       "checkpoint_best.pth")
        if name == "stacking":
            enable_stacking(predictor, load_stacking_model(model)[0])
        out = work / f"pred_{name.split()[0]}"
        predictor.predict_from_files([[str(i), str(i).replace("_0000.nii.gz", "_0001.nii.gz")] for i in images],
                                     str(out), save_probabilities=False, overwrite=True, num_processes_preprocessing=1,
                                     num_processes_segmentation_export=1)
        scores[name] = []
        for i in images:
            case = i.name[:-len("_0000.nii.gz")]
            pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))
            truth = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTs" / f"{case}.nii.gz")))
            scores[name].append(dice(pred, truth))
    for name, values in scores.items():
        print(f"held-out Dice ({len(values)} cases), {name:17s}: mean {np.mean(values):.4f}  "
              f"per case {' '.join(f'{v:.3f}' for v in values)}")
    print(f"difference stacking - averaging: {np.mean(scores['stacking']) - np.mean(scores['softmax averaging']):+.4f}"
          f" ({args.folds} folds x {args.epochs} epochs x {args.iterations} iterations, {args.train} training cases)")


if __name__ == "__main__":
    main()
