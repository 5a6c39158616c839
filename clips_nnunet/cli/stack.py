"""``clips-nnunet stack``: TMTV-Net's learned stacking ensemble over a model's fold models."""
from __future__ import annotations

import argparse
from pathlib import Path


def run_stack(args: argparse.Namespace) -> int:
    from clips_nnunet.nnunet_env import resolve_device
    from clips_nnunet.prediction.models import model_folder
    from clips_nnunet.tmtv.stacking import (StackingTrainingConfig, collect_stacking_cases, compare_on_cases,
                                                  save_stacking_model, train_stacking_model)
    from clips_nnunet.io_utils import atomic_write_json

    folder = model_folder(args.d, args.tr, args.p, args.c)
    output = Path(args.o) if args.o else folder / f"stacking_{args.chk.replace('.pth', '')}.pth"
    work = Path(args.work) if args.work else output.with_suffix(".cases")
    device = resolve_device(args.device)
    config = StackingTrainingConfig(iterations=args.iterations, lr=args.lr, batch_size=args.batch_size,
                                    patch_size=tuple(args.patch), seed=args.seed)
    files, model = collect_stacking_cases(folder, args.f, args.chk, work, device, progress=not args.no_progress)
    print(f"stacking inputs: {len(files)} cases x {len(model.folds)} fold models in {work}")
    layer, losses = train_stacking_model(files, len(model.folds), model.n_classes, config, device)
    comparison = compare_on_cases(layer, files)
    info = {"training": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()},
            "final_loss": losses[-1], "comparison_on_training_cases": comparison["mean"]}
    save_stacking_model(output, layer, model, info)
    atomic_write_json(output.with_suffix(".json"), {**info, "model": vars(model), "cases": comparison["cases"]})
    m = comparison["mean"]
    print(f"mean Dice on its {len(files)} training cases (in-sample for the stacking layer): stacking "
          f"{m['dice_stacking']:.4f}, softmax averaging {m['dice_average']:.4f}")
    print(f"wrote {output}")
    print(f"next: clips-nnunet predict INPUT -o OUT -d {args.d} -c CONFIG -tr {args.tr} -p {args.p} -f "
          f"{' '.join(map(str, model.folds))} --chk {args.chk} --stacking {output}")
    return 0


def register(subparsers) -> None:
    """Add ``stack``."""
    s = subparsers.add_parser(
        "stack", help="train TMTV-Net's stacking ensemble (learned 1x1x1 conv) over a model's fold models",
        description="Every validation case of the chosen folds is predicted by every fold model (nnU-Net's sliding "
                    "window on the preprocessed data: one out-of-fold probability per case, in-fold ones from the "
                    "other models, as TMTV-Net trained its stacking), then TMTV-Net's stacking layer "
                    "(Conv3d(n_folds, 2, 1), Dice + 0.5 focal, AdamW 1e-4) is trained on them and written with a "
                    "JSON summary comparing it with softmax averaging on those cases. Apply it with "
                    "clips-nnunet predict ... --stacking MODEL.")
    s.add_argument("-d", required=True, metavar="ID", help="nnU-Net dataset id or name")
    s.add_argument("-c", default="3d_tmtv", metavar="CONFIG", help="configuration of the fold models (default "
                                                                    "3d_tmtv: TMTV-Net stacks stage 1)")
    s.add_argument("-tr", default="nnUNetTrainerTMTV", metavar="TRAINER", help="trainer (default nnUNetTrainerTMTV)")
    s.add_argument("-p", default="nnUNetPlans", metavar="PLANS", help="plans identifier (default nnUNetPlans)")
    s.add_argument("-f", nargs="+", type=int, default=[0, 1, 2, 3, 4], metavar="FOLD",
                   help="fold models to stack (default 0 1 2 3 4)")
    s.add_argument("--chk", default="checkpoint_best.pth",
                   help="checkpoint of each fold (default checkpoint_best.pth, TMTV-Net's choice)")
    s.add_argument("-o", default=None, metavar="MODEL",
                   help="output file (default: <model folder>/stacking_<checkpoint>.pth)")
    s.add_argument("--work", default=None, help="folder for the per-case inputs (default: MODEL with .cases); "
                                                "reused when run again")
    s.add_argument("--iterations", type=int, default=128_000,
                   help="training iterations (default 128000: TMTV-Net's 2000 epochs x 64)")
    s.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4, TMTV-Net's)")
    s.add_argument("--batch-size", type=int, default=3, help="patches per iteration (default 3, TMTV-Net's)")
    s.add_argument("--patch", type=int, nargs=3, default=[128, 96, 96], metavar=("Z", "Y", "X"),
                   help="patch size (default 128 96 96, TMTV-Net's; clipped to the smallest case)")
    s.add_argument("--seed", type=int, default=0, help="seed of the patch sampling (default 0)")
    s.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=run_stack)
