"""``clips-nnunet predict``: new patients from DICOM to mask, DICOM SEG, RTSTRUCT, TMTV report and MIP."""
from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from clips_nnunet.cli.model_options import models_from_args
    from clips_nnunet.errors import UsageError
    from clips_nnunet.prediction.models import ModelSpec
    from clips_nnunet.prediction.predict import predict_dicom

    first = []
    if args.d is not None or args.c is not None:
        if args.d is None or args.c is None:
            raise UsageError("give -d and -c together (or name models with --model DATASET:CONFIGURATION)")
        first.append(ModelSpec(dataset=args.d, configuration=args.c, trainer=args.tr, plans=args.p, folds=args.f,
                               checkpoint=args.chk, prev_stage_configuration=args.prev_stage_config,
                               prev_stage_trainer=args.prev_stage_trainer, prev_stage_plans=args.prev_stage_plans,
                               stacking=args.stacking))
    elif args.f or args.stacking or args.prev_stage_config or args.prev_stage_trainer or args.prev_stage_plans:
        raise UsageError("-f, --stacking and --prev-stage-* belong to the -d/-c model; give each --model its folds "
                         "in its FOLDS field (DATASET:CONFIGURATION:TRAINER:PLANS:FOLDS)")
    spec = models_from_args(args, first)
    if spec is None:
        raise UsageError("name the model: -d DATASET -c CONFIGURATION [-tr -p -f], or --model SPEC (repeatable)")
    result = predict_dicom(args.inputs, args.o, spec, device=args.device, private_dir=args.private_dir,
                           keep_patient_names=args.keep_patient_names, overrides=args.overrides,
                           overwrite=args.overwrite, use_mirroring=not args.disable_tta,
                           progress=not args.no_progress, deidentify_dicom=args.deidentify_dicom)
    print(result.summary_table())
    print(f"outputs: {result.output_dir}   private pseudonym mapping: {result.mapping_file}")
    if result.n_failed:
        print(f"clips-nnunet predict: {result.n_failed} patient(s)/input(s) failed; see the table above and "
              f"{result.output_dir / 'prediction_summary.json'}", file=sys.stderr)
        return 1
    return 0


def register(subparsers) -> None:
    from clips_nnunet.cli.model_options import add_model_options

    p = subparsers.add_parser(
        "predict", help="predict new patients from DICOM: mask, DICOM SEG, RTSTRUCT, TMTV report, MIP",
        description="Finds the PET/CT studies in the INPUT folders (patients' DICOM folders or a cohort folder), "
                    "converts them with the training converter (SUVbw PET, CT on the PET grid), predicts with "
                    "nnU-Net's nnUNetPredictor (chosen folds ensembled; both stages of a cascade; several models "
                    "(--model, repeatable) merged by --merge union or mean; each model gets the CT/PET channels "
                    "its dataset.json names) and writes per "
                    "study OUT/PRED_NNNN/{mask.nii.gz, seg.dcm, rtstruct.dcm, report.json, report.md, "
                    "mip_coronal.png}. The pseudonym -> PatientID mapping goes to --private-dir (default "
                    "OUT_private beside OUT). Complete studies are skipped on a re-run. One run at a time per "
                    "OUT: a second run into the same OUT (or --private-dir) stops at once, naming the running one "
                    "(exit code 2). Exit code 1 if any study failed (the others are still predicted).")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM folder(s) of patients, or a cohort folder")
    p.add_argument("-o", required=True, metavar="OUT", help="output folder")
    p.add_argument("-d", default=None, metavar="ID", help="nnU-Net dataset id or name the model was trained on")
    p.add_argument("-c", default=None, metavar="CONFIG", help="nnU-Net configuration (e.g. 3d_fullres, "
                                                              "3d_tmtv_refine for the TMTV cascade)")
    p.add_argument("-tr", default="nnUNetTrainer", metavar="TRAINER", help="trainer class (default nnUNetTrainer)")
    p.add_argument("-p", default="nnUNetPlans", metavar="PLANS", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-f", nargs="+", default=None, metavar="FOLD",
                   help="folds to ensemble (default: every fold that has the checkpoint)")
    p.add_argument("--chk", default="checkpoint_final.pth", help="checkpoint file name (default checkpoint_final.pth)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                   help="auto (default): the GPU when PyTorch sees one, else the CPU")
    add_model_options(p, what="with -d/-c too, that model is the first one (docs/published_models.md)")
    p.add_argument("--prev-stage-config", default=None,
                   help="cascade: configuration of stage 1 (default: the previous_stage named in the plans)")
    p.add_argument("--prev-stage-trainer", default=None, help="cascade: trainer of stage 1 (default: -tr)")
    p.add_argument("--prev-stage-plans", default=None, help="cascade: plans of stage 1 (default: -p)")
    p.add_argument("--stacking", default=None, metavar="MODEL",
                   help="combine the folds with TMTV-Net's learned stacking layer (a file from clips-nnunet stack, "
                        "for -f/--chk of the stage it was trained on) instead of softmax averaging")
    p.add_argument("--private-dir", default=None,
                   help="folder for the private pseudonym -> patient mapping (must be outside OUT)")
    p.add_argument("--deidentify-dicom", action="store_true",
                   help="write seg.dcm and rtstruct.dcm as a de-identified export: PatientName/PatientID become "
                        "the pseudonym, dates and other identifying attributes are emptied and every UID (study, "
                        "series, referenced PET instances, frame of reference) is replaced consistently (salt in "
                        "--private-dir). Default: they belong to the source patient and study, as DICOM requires, "
                        "for import into the hospital PACS (mask, report and MIP never identify the patient)")
    p.add_argument("--keep-patient-names", action="store_true",
                   help="name output folders by PatientID instead of the pseudonym. Characters other "
                        "than A-Z a-z 0-9 _ . - become _; studies whose names would collide (Müller/Mäller, "
                        "several studies of one patient) get _PRED_NNNN appended; names are kept across re-runs")
    p.add_argument("--overrides", default=None, metavar="CSV",
                   help="SUV header overrides (weight, dose, times) in the converter's CSV format")
    p.add_argument("--overwrite", action="store_true", help="predict again studies whose outputs are complete")
    p.add_argument("--disable-tta", action="store_true",
                   help="no mirroring test-time augmentation (faster, slightly less accurate; nnU-Net's default is on)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
