"""``clips-nnunet convert`` and ``convert-autopet``: DICOM / autoPET NIfTI to an nnU-Net raw dataset.

They parse arguments and call :mod:`clips_nnunet.dataset_conversion`; see docs/conversion.md.
"""
from __future__ import annotations

import argparse
import signal
import sys


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net dataset id (1-999), e.g. 501")
    p.add_argument("-n", "--name", required=True, help="dataset name (letters, digits, hyphens), e.g. Lymphoma")
    p.add_argument("-j", "--workers", type=int, default=1,
                   help="studies converted in parallel (processes, one SimpleITK thread each; default 1)")
    p.add_argument("--resume", action="store_true",
                   help="skip cases completed by an earlier (possibly killed) run whose files re-verify; unfinished "
                        "cases are redone")
    p.add_argument("--add", action="store_true",
                   help="let this cohort's new patients join a dataset that already holds converted cases "
                        "(without --add that is refused)")
    p.add_argument("--prune", action="store_true",
                   help="remove the dataset's cases that are not in this run's cohort(s) (each is printed); without "
                        "it, cases converted by earlier runs are always kept")
    p.add_argument("--force", action="store_true",
                   help="rewrite splits_final.json in nnUNet_preprocessed even when it exists (it is rewritten "
                        "anyway when this tool wrote it and the training cases changed)")
    p.add_argument("--private-dir", default=None,
                   help="folder for the private patient->case mapping and the full report (default: "
                        "<parent of nnUNet_raw>/clips_private/DatasetXXX_NAME; must be outside nnUNet_raw)")
    p.add_argument("--prefix", default=None, help="case id prefix (default: the dataset name without hyphens)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _finish(report, command: str) -> int:
    """Print the summary; exit code 1 when a case failed (or failed again and kept its earlier conversion) or
    splits_final.json is stale, else 0."""
    for case in report.pruned:
        print(f"--prune: removed case {case} (not in this run's cohort)")
    print(report.summary_table())
    for w in report.warnings:
        print(f"warning: {w}")
    code = 0
    if report.failed:
        print(f"clips-nnunet {command}: {len(report.failed)} case(s) failed: see "
              f"{report.dataset_dir / 'conversion_report.json'}", file=sys.stderr)
        code = 1
    if getattr(report, "not_reconverted", None):
        print(f"clips-nnunet {command}: {len(report.not_reconverted)} case(s) could not be converted again and keep "
              f"their earlier conversion ({', '.join(report.not_reconverted)}): see "
              f"{report.dataset_dir / 'conversion_report.json'}", file=sys.stderr)
        code = 1
    if report.splits_error:
        print(f"clips-nnunet {command}: error: {report.splits_error}", file=sys.stderr)
        code = 1
    return code


def _ending_on_interrupt(run):
    """Run ``run()``; after a Ctrl-C (the workers are already stopped) further Ctrl-Cs are ignored while the
    command ends, so it ends with exit code 130 and its one line instead of a second interrupt's traceback."""
    try:
        return run()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise


def run_convert(args: argparse.Namespace) -> int:
    return _ending_on_interrupt(lambda: _run_convert(args))


def _run_convert(args: argparse.Namespace) -> int:
    from clips_nnunet.dataset_conversion.convert import convert_cohort

    report = convert_cohort(args.cohort_dir, args.dataset_id, args.name, labels=args.labels, roi=args.roi,
                            test_dirs=args.test or [], workers=args.workers, resume=args.resume, force=args.force,
                            private_dir=args.private_dir, overrides_csv=args.overrides,
                            target_spacing=args.target_spacing, prefix=args.prefix, progress=not args.quiet,
                            add=args.add, prune=args.prune)
    return _finish(report, "convert")


def run_convert_autopet(args: argparse.Namespace) -> int:
    return _ending_on_interrupt(lambda: _run_convert_autopet(args))


def _run_convert_autopet(args: argparse.Namespace) -> int:
    from clips_nnunet.dataset_conversion.autopet import convert_autopet

    report = convert_autopet(args.autopet_dir, args.dataset_id, args.name, workers=args.workers,
                             resume=args.resume, force=args.force, private_dir=args.private_dir,
                             prefix=args.prefix, progress=not args.quiet, add=args.add, prune=args.prune)
    return _finish(report, "convert-autopet")


def register(subparsers) -> None:
    """Add ``convert`` and ``convert-autopet``."""
    p = subparsers.add_parser(
        "convert", help="DICOM PET/CT cohort -> nnU-Net raw dataset (SUV, CT on PET grid, masks, metadata)",
        description="Index COHORT_DIR (any layout), choose CT/PET/mask series per study, compute SUVbw (QIBA/IBSI), "
                    "resample CT onto the PET grid, bring masks to the PET grid and write "
                    "$nnUNet_raw/DatasetXXX_NAME with dataset.json, case_metadata.json, conversion_report.json and "
                    "patient-grouped splits_final.json in $nnUNet_preprocessed. Exit code 1 when any study failed.")
    p.add_argument("cohort_dir", help="folder with the cohort's DICOM files (any folder layout)")
    _add_common(p)
    p.add_argument("--labels", default="auto",
                   help="mask source: auto (SEG, else RTSTRUCT), seg, rtstruct, none, or nifti:DIR with files "
                        "<PatientID>.nii.gz / <PatientID>_<StudyInstanceUID>.nii.gz (default auto)")
    p.add_argument("--roi", default=None,
                   help="regular expression (case-insensitive) selecting RTSTRUCT ROI names / SEG segment labels "
                        "(default: all, united)")
    p.add_argument("--test", action="append", metavar="COHORT_DIR2",
                   help="a further cohort whose studies all go to imagesTs (repeatable)")
    p.add_argument("--overrides", default=None,
                   help="CSV with PatientID,weight_kg,dose_bq|dose_mbq,injection_datetime,... replacing missing or "
                        "wrong SUV header values")
    p.add_argument("--target-spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), default=None,
                   help="resample CT, PET and mask to this spacing in mm (default: the PET's own grid)")
    p.set_defaults(func=run_convert)

    a = subparsers.add_parser(
        "convert-autopet", help="autoPET NIfTI release (CTres/SUV/SEG.nii.gz) -> nnU-Net raw dataset",
        description="Convert the public FDG-PET-CT-Lesions NIfTI layout (DIR/<patient>/<study>/{CTres,SUV,SEG}.nii.gz) "
                    "to the same raw layout, metadata, report and patient-grouped splits as `convert`.")
    a.add_argument("autopet_dir", help="folder holding the patient folders")
    _add_common(a)
    a.set_defaults(func=run_convert_autopet)
