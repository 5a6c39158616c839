"""``clips-nnunet evaluate``: PET lesion metrics of a folder of predicted masks."""
from __future__ import annotations

import argparse

from clips_nnunet.cli.lesion_options import add_lesion_options
from clips_nnunet.evaluation.formatting import fmt_fixed


def run_evaluate(args: argparse.Namespace) -> int:
    from clips_nnunet.evaluation.evaluate import evaluate_folder

    res = evaluate_folder(args.pred_dir, args.gt_dir, pet_dir=args.pet_dir, out_dir=args.output,
                          labels=args.labels, connectivity=args.connectivity,
                          lesion_connectivity=args.lesion_connectivity, file_ending=args.file_ending,
                          pet_channel=args.pet_channel, plots=not args.no_plots, progress=not args.quiet)
    s = res.summary
    dice = s["metrics"].get("dice", {})
    print(f"evaluated {s['n_evaluated']}/{s['n_cases']} cases ({s['n_with_true_lesion']} with lesion, "
          f"{s['n_without_true_lesion']} without); Dice mean {fmt_fixed(dice.get('mean'))} "
          f"median {fmt_fixed(dice.get('median'))}; "
          f"TMTV bias {fmt_fixed(s['tmtv_agreement'].get('bias_ml'))} ml")
    for case, err in s["failed"].items():
        print(f"  failed: {err}")
    print(f"results in {res.out_dir} (per_case.csv, summary.json, plots/)")
    return 1 if s["n_evaluated"] == 0 else 0


def register(subparsers) -> None:
    """Add ``evaluate``."""
    p = subparsers.add_parser(
        "evaluate", help="lesion metrics of predicted masks vs references (CSV, JSON, plots)",
        description="Compares PRED_DIR/{case}.nii.gz with GT_DIR/{case}.nii.gz: Dice, TMTV (predicted, true, "
                    "absolute and relative error), Dmax error, autoPET false-positive/negative volumes, lesion-wise "
                    "detection (sensitivity, precision, F1) and, with --pet-dir, SUVmax/SUVmean/TLG. Writes "
                    "per_case.csv, summary.json and plots/ (Bland-Altman and scatter of TMTV, Dice histogram). "
                    "Re-runs reuse unchanged cases.")
    p.add_argument("pred_dir", help="folder of predicted masks (e.g. nnUNetv2_predict output or fold_0/validation)")
    p.add_argument("gt_dir", help="folder of reference masks with the same file names (e.g. labelsTs)")
    p.add_argument("--pet-dir", help="folder with PET (SUV) images {case}_0001.nii.gz (nnU-Net imagesTs) or "
                                     "{case}.nii.gz, for SUV statistics")
    p.add_argument("--pet-channel", type=int, default=1, help="channel index of the PET in --pet-dir (default 1)")
    p.add_argument("--file-ending", help="file ending of the masks (default: from dataset.json or guessed)")
    p.add_argument("-o", "--output", help="output folder (default PRED_DIR/evaluation)")
    add_lesion_options(p)
    p.set_defaults(func=run_evaluate)
