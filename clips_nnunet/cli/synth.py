"""``clips-nnunet synth``: a synthetic lymphoma PET/CT DICOM cohort with known ground truth (docs/conversion.md)."""
from __future__ import annotations

import argparse
import sys


def _error_text(record: dict) -> str:
    """The annotation-error part of a study's line: the kind planted, or the kind requested and why it was not."""
    if record.get("kind"):
        return f", annotation error: {record['kind']}"
    if record.get("requested_kind"):
        return f", annotation error {record['requested_kind']} not planted: {record.get('reason', 'no change')}"
    return ""


def _run_background(args: argparse.Namespace) -> int:
    from clips_nnunet.synthetic.insertion import insert_lesions

    if args.lesions is not None and args.lesions < 1:
        print("clips-nnunet synth: error: --lesions must be at least 1", file=sys.stderr)
        return 2
    manifest = insert_lesions(args.background, args.cohort_dir, seed=args.seed, n_lesions=args.lesions)
    study = manifest["studies"][0]
    print(f"inserted {len(study['lesions'])} lesion(s) (TMTV {study['tmtv_ml']:.1f} ml) into {args.background} -> "
          f"{args.cohort_dir} (ground truth: {args.cohort_dir}/ground_truth/manifest.json)")
    for row in study["lesions"]:
        print(f"  lesion {row['lesion_id']}: {row['site']}, {row['measured_ml']:.2f} ml, SUV {row['suv']:.1f} "
              f"painted, SUVmax {row['measured_suvmax']:.1f} in the written PET")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from clips_nnunet.synthetic.dicom_cohort import FAULTS, make_synthetic_cohort

    if args.background:
        return _run_background(args)

    faults = [f.strip() for f in (args.faults or "").split(",") if f.strip()]
    bad = [f for f in faults if f not in FAULTS]
    if bad:
        print(f"clips-nnunet synth: error: unknown fault(s) {bad}; choose from {','.join(FAULTS)}", file=sys.stderr)
        return 2
    from clips_nnunet.synthetic.annotation_errors import ERROR_KINDS
    from clips_nnunet.synthetic.twin_annotators import TWIN_ERROR_KINDS

    known = TWIN_ERROR_KINDS if args.phantom == "twin" else ERROR_KINDS
    kinds = [k.strip() for k in (args.label_error_kinds or ",".join(known)).split(",") if k.strip()]
    if not 0.0 <= args.label_errors <= 1.0 or not kinds or any(k not in known for k in kinds):
        print(f"clips-nnunet synth: error: --label-errors must be in [0, 1] and --label-error-kinds among "
              f"{','.join(known)} for --phantom {args.phantom}", file=sys.stderr)
        return 2
    manifest = make_synthetic_cohort(args.cohort_dir, n_patients=args.n, seed=args.seed, size=args.size,
                                     faults=faults, progress=not args.quiet, label_error_fraction=args.label_errors,
                                     label_error_kinds=kinds, phantom=args.phantom)
    studies = manifest["studies"]
    print(f"wrote {len(studies)} studies of {args.n} patients to {args.cohort_dir} "
          f"(ground truth: {args.cohort_dir}/ground_truth/manifest.json)")
    for s in studies:
        print(f"  {s['key']}: {s['vendor']:<8} difficulty {s['difficulty']:.2f}, {len(s['lesions'])} lesion(s), "
              f"TMTV {s['tmtv_ml']:.1f} ml" + (f", faults: {','.join(s['faults'])}" if s["faults"] else "")
              + _error_text(s["annotation_error"]))
    return 0


def register(subparsers) -> None:
    """Add ``synth``."""
    s = subparsers.add_parser(
        "synth", help="write a synthetic lymphoma PET/CT DICOM cohort with known ground truth",
        description="Whole-body lymphoma twins (default; docs/synthetic.md) or box phantoms (--phantom box) with "
                    "physiological FDG uptake and lymphoma lesions; CT + PET DICOM (Siemens BQML, GE with private "
                    "decay time, Philips CNTS), masks as DICOM SEG and RTSTRUCT, ground truth (SUV, labels, "
                    "manifest) in COHORT_DIR/ground_truth.")
    s.add_argument("cohort_dir", help="output folder")
    s.add_argument("-n", type=int, default=16, help="number of patients (default 16)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--phantom", choices=("box", "twin"), default="twin",
                   help="twin (default): whole-body DLBCL twin with anatomy, physiological uptake, PSF and "
                        "correlated noise (docs/synthetic.md); box: the analytic box phantom (the demo uses it)")
    s.add_argument("--size", choices=("small", "trunk", "wholebody"), default="small",
                   help="box: small = PET 48x48x64 at 4 mm, wholebody = CT 512x512x700, PET 200x200x350; twin: "
                        "small = PET 8 mm / CT 4 mm whole body, trunk = the same voxels from the skull base to "
                        "the upper thighs (the demo's), wholebody = the vendor's clinical grids (PET ~4 mm, CT "
                        "512x512 at 0.98 mm)")
    s.add_argument("--faults", default="",
                   help="comma-separated faults to plant: nac,localizer,missing-weight,second-study,corrupted")
    s.add_argument("--label-errors", type=float, default=0.0, metavar="FRACTION",
                   help="fraction of studies whose SEG/RTSTRUCT get a planted annotation error (default 0); the clean "
                        "masks stay in ground_truth/")
    s.add_argument("--label-error-kinds", default=None,
                   help="comma-separated kinds to plant (default: all of the phantom's): box "
                        "missed_lesion,threshold,physiological,slice_shift; twin "
                        "convention,missed_lesion,physiological,boundary,leak")
    s.add_argument("--background", default=None, metavar="DICOM_DIR",
                   help="insert lesions into this real, lesion-free PET/CT study instead of generating phantoms "
                        "(regions its RTSTRUCTs mark are excluded and left unchanged; docs/synthetic.md)")
    s.add_argument("--lesions", type=int, default=None, help="with --background: number of lesions (default 3-8)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=run_synth)
