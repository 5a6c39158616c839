"""``clips-nnunet audit``: rank suspect annotations and hard patients from finished cross-validations.

It parses arguments and calls :func:`clips_nnunet.audit.page.run_audit`; see docs/audit.md.
"""
from __future__ import annotations

import argparse
import sys
from typing import List


def run_audit_command(args: argparse.Namespace) -> int:
    from clips_nnunet.errors import ClipsError
    from clips_nnunet.audit.evidence import AuditParams
    from clips_nnunet.audit.page import run_audit

    try:
        params = AuditParams(liver_suv=args.liver_suv, suspicion_threshold=args.suspicion_threshold)
        results_dirs = list(args.results_dirs) + model_predictions(args)
        rows = run_audit(results_dirs, args.output, gt_dir=args.gt, images_dir=args.images,
                         metadata=args.metadata, use_npz=not args.no_npz, write_html=not args.no_html,
                         pet_channel=args.pet_channel, params=params,
                         ct_channel=None if args.ct_channel < 0 else args.ct_channel)
    except (ClipsError, ValueError, OSError) as e:
        print(f"clips-nnunet audit: error: {e}", file=sys.stderr)
        return 2
    from clips_nnunet.audit.scoring import model_quality_warning

    warning = model_quality_warning(rows)
    if warning:
        print(f"warning: {warning}")
    kinds = {}
    for r in rows:
        kinds[r["error_kind"]] = kinds.get(r["error_kind"], 0) + 1
    print(f"audited {len(rows)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    who = {"missed_lesion": "the reference missed a lesion", "extra_region": "the reference holds a non-lesion region",
           "boundary": "the reference's outline looks wrong"}
    for i, r in enumerate(rows[: args.show], 1):
        line = f"  {i:>3}. {r['case_id']}: suspicion {r['suspicion']:.3f} ({r['error_kind']}"
        line += f": {who[r['error_kind']]})" if r["error_kind"] in who else ")"
        line += f", Dice {r['dice']:.3f}"
        if r.get("finding"):
            f = r["finding"]
            line += (f"; finding {f['volume_ml']:.2f} ml at PET slice {f['slice']} of {f['n_slices']}, "
                     f"x/y/z {f['lps_mm'][0]:.1f}/{f['lps_mm'][1]:.1f}/{f['lps_mm'][2]:.1f} mm (LPS)")
        print(line)
    print(f"results in {args.output} (audit.csv, audit.json" + ("" if args.no_html else ", index.html") + ")")
    return 0


def model_predictions(args: argparse.Namespace) -> List[str]:
    """With ``--model``: the folder of the model's predictions (:func:`clips_nnunet.cli.model_options.
    model_prediction_set`, ``OUT/model_predictions/<model>/`` in the ``fold_all/validation`` layout), audited
    with the results folders; nothing without ``--model``."""
    from clips_nnunet.cli.model_options import model_prediction_set
    from clips_nnunet.errors import UsageError

    found = model_prediction_set(args, args.output, validation_layout=True)
    if found is None and not args.results_dirs:
        raise UsageError("give at least one RESULTS_DIR or --model SPEC")
    return [str(found[1].parent.parent)] if found else []


def register(subparsers) -> None:
    """Add ``audit``."""
    from clips_nnunet.cli.model_options import add_model_options

    p = subparsers.add_parser(
        "audit", help="rank cases whose reference mask looks wrong (out-of-fold predictions, PET, training losses)",
        description="Read the out-of-fold predictions of finished nnU-Net cross-validations (fold_X/validation, "
                    "optional --npz probabilities), the reference masks and optionally the PET, and rank every "
                    "case by a suspicion score with its most likely error kind (missed_lesion, extra_region, "
                    "boundary, hard_case, none). Writes OUT/audit.csv, OUT/audit.json and OUT/index.html (one "
                    "card per case: coronal PET MIP, and for each suspect case the finding's place and PET/CT planes "
                    "through it, a plain-language reason and decision buttons exported as CSV). Exit code 2 on bad "
                    "input.")
    p.add_argument("results_dirs", nargs="*", metavar="RESULTS_DIR",
                   help="nnUNet_results/DatasetXXX_NAME/TRAINER__PLANS__CONFIG of a finished cross-validation "
                        "(several: their predictions are combined)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--gt", default=None,
                   help="reference masks (default $nnUNet_preprocessed/DatasetXXX_NAME/gt_segmentations)")
    p.add_argument("--images", default=None,
                   help="folder with the PET as {case}_0001 (e.g. $nnUNet_raw/DatasetXXX_NAME/imagesTr); enables "
                        "the PET plausibility evidence and the MIP pictures")
    p.add_argument("--pet-channel", type=int, default=1, help="channel index of the PET in --images (default 1)")
    p.add_argument("--ct-channel", type=int, default=0,
                   help="channel index of the CT in --images, drawn under the PET in the planes through each "
                        "finding (default 0; -1: PET alone)")
    p.add_argument("--metadata", default=None,
                   help="case_metadata.json: its difficulty measures are added as meta_* columns")
    p.add_argument("--liver-suv", type=float, default=None,
                   help="liver SUVmean of the cohort (default: 2 x each case's background SUV)")
    p.add_argument("--suspicion-threshold", type=float, default=0.1,
                   help="suspicion from which a case gets an annotation error kind (default 0.1)")
    p.add_argument("--no-npz", action="store_true", help="ignore .npz probabilities even when present")
    p.add_argument("--no-html", action="store_true", help="skip index.html (and the MIP pictures)")
    p.add_argument("--show", type=int, default=10, help="cases printed (default 10)")
    add_model_options(p, device=True, what="predicts the cases of --images that have a reference in --gt into "
                                            "OUT/model_predictions/ and audits them with the RESULTS_DIRs")
    p.set_defaults(func=run_audit_command)
