"""``clips-nnunet score``: per-case difficulty for curricula, from a cross-validation or a trained model.

- ``clips-nnunet score RESULTS_FOLDER -o difficulty.csv [--metric dice|tmtv|loss]``: reads the out-of-fold
  predictions ``fold_X/validation/`` of an nnU-Net results folder and scores each case by its own fold model (the one
  that never trained on it), the labels coming from ``$nnUNet_preprocessed/DatasetXXX/gt_segmentations``.
- ``clips-nnunet score MODEL_FOLDER --predict -i imagesTr -l labelsTr -o difficulty.csv``: runs a trained model on
  the cases instead (a teacher trained elsewhere, e.g. TMTV-Net's published model from ``import-tmtv``: a cascade's
  second stage runs its first stage before, ``--stacking`` replaces a stage's fold average).
- ``clips-nnunet score --predict --model SPEC [--model SPEC ...] [--merge union|mean] -i imagesTr -l labelsTr -o
  difficulty.csv``: installed models named as nnU-Net names them (:mod:`clips_nnunet.cli.model_options`), e.g.
  LyROI's configurations merged by union or a model installed with ``nnUNetv2_install_pretrained_model_from_zip``.

The CSV (``case_id,difficulty,...``; higher = harder) is what ``nnUNetTrainerCLTransferTeacher`` and
``nnUNetTrainerCLPredefined`` read (``CLIPS_DIFFICULTY_CSV`` or ``difficulty.csv`` in the raw dataset folder).
"""
from __future__ import annotations

import argparse


def run_score(args: argparse.Namespace) -> int:
    from clips_nnunet.cli.model_options import models_from_args
    from clips_nnunet.curriculum.difficulty import write_difficulty_csv
    from clips_nnunet.evaluation.scoring import score_cross_validation, score_with_model, score_with_models
    from clips_nnunet.errors import CurriculumConfigError

    model = models_from_args(args)
    if model is not None and not args.predict:
        raise CurriculumConfigError("--model runs models on the cases: add --predict (with --images and --labels)")
    if model is not None and args.folder:
        raise CurriculumConfigError("give either a model FOLDER or --model, not both (a FOLDER is one more "
                                    "--model DATASET:CONFIGURATION:TRAINER:PLANS)")
    if args.predict:
        if not args.images or not args.labels:
            raise CurriculumConfigError("--predict needs --images (e.g. imagesTr) and --labels (e.g. labelsTr)")
    if model is not None:
        table = score_with_models(model, args.images, args.labels, metric=args.metric, device=args.device,
                                  output_folder=args.save_predictions)
        source = "model" if not hasattr(model, "merge") else f"{len(model.models)}-model {model.merge} ensemble"
    elif not args.folder:
        raise CurriculumConfigError("give a results FOLDER (or --predict with --model SPEC)")
    elif args.predict:
        table = score_with_model(args.folder, args.images, args.labels, metric=args.metric,
                                 folds=[int(f) if f != "all" else f for f in (args.folds or ["0"])],
                                 checkpoint_name=args.checkpoint, device=args.device,
                                 prev_stage_folds=[int(f) if f != "all" else f for f in args.prev_stage_folds]
                                 if args.prev_stage_folds else None, stacking=args.stacking,
                                 output_folder=args.save_predictions)
        source = "model"
    else:
        table = score_cross_validation(args.folder, gt_folder=args.labels, metric=args.metric,
                                       folds=[int(f) for f in args.folds] if args.folds else None)
        source = "cross-validation"
    write_difficulty_csv(args.output, table)
    scores = [float(r["difficulty"]) for r in table.values()]
    print(f"scored {len(table)} cases from the {source} ({args.metric}); difficulty min {min(scores):.4g}, "
          f"median {sorted(scores)[len(scores) // 2]:.4g}, max {max(scores):.4g}; wrote {args.output}")
    return 0


def register(subparsers) -> None:
    """Add ``score`` to ``subparsers``."""
    from clips_nnunet.cli.model_options import add_model_options

    p = subparsers.add_parser(
        "score", help="per-case difficulty CSV from a cross-validation's out-of-fold predictions or a model",
        description="Writes case_id,difficulty (higher = harder) for the curriculum trainers "
                    "(nnUNetTrainerCLTransferTeacher reads it). Default: FOLDER is a results folder "
                    "$nnUNet_results/DatasetXXX/Trainer__Plans__Config of a finished cross-validation; each case is "
                    "scored by the out-of-fold prediction in fold_X/validation (its own fold model never trained on "
                    "it). With --predict, FOLDER is a trained model run on --images.")
    p.add_argument("folder", nargs="?", default=None,
                   help="results folder (Trainer__Plans__Config) with fold_X/validation, or with --predict a trained "
                        "model folder (or name installed models with --model instead)")
    p.add_argument("-o", "--output", required=True, help="CSV to write (case_id,difficulty,...)")
    p.add_argument("--metric", choices=("dice", "tmtv", "loss"), default="dice",
                   help="dice: 1 - Dice (default); tmtv: |TMTV error| / max(true TMTV, 1 ml); loss: cross-entropy "
                        "+ (1 - soft Dice) from the saved softmax (needs validation run with --npz)")
    p.add_argument("-f", "--folds", nargs="+", help="folds to use (default: every fold_X with a validation folder; "
                                                     "with --predict: 0)")
    p.add_argument("-l", "--labels", help="labels folder (default: $nnUNet_preprocessed/DatasetXXX/gt_segmentations;"
                                          " required with --predict)")
    p.add_argument("--predict", action="store_true", help="run the model in FOLDER on --images instead of reading "
                                                          "out-of-fold predictions")
    p.add_argument("-i", "--images", help="with --predict: nnU-Net images folder (imagesTr)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth", help="with --predict: checkpoint file name")
    p.add_argument("--device", default="cpu", help="with --predict: torch device (cpu, cuda)")
    p.add_argument("--prev-stage-folds", nargs="+", metavar="FOLD",
                   help="with --predict and a cascade's second stage (e.g. 3d_tmtv_refine): folds of the first stage, "
                        "predicted first from the sibling Trainer__Plans__<previous stage> folder (default: all)")
    p.add_argument("--stacking", metavar="MODEL",
                   help="with --predict: a stacking model (clips-nnunet stack / import-tmtv) used instead of the fold "
                        "average of the stage it was trained for")
    p.add_argument("--save-predictions", metavar="DIR", default=None,
                   help="with --predict: keep the predicted masks in DIR ({case}.nii.gz; default: a temporary folder), "
                        "e.g. to pass them to clips-nnunet compare as a group")
    add_model_options(p, what="with --predict: the teacher(s) run on --images instead of FOLDER")
    p.set_defaults(func=run_score)
