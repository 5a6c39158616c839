"""``clips-nnunet compare``: trainers' out-of-fold results side by side (curriculum comparison)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List

from clips_nnunet.cli.lesion_options import add_lesion_options
from clips_nnunet.errors import CurriculumConfigError


def parse_groups(results_dirs: List[str], group_specs: List[str]) -> Dict[str, List[str]] | List[str]:
    """``--group NAME=DIR1,DIR2`` specs plus positional folders (one group each) -> ``compare_results`` input."""
    if not group_specs:
        return list(results_dirs)
    from clips_nnunet.evaluation.compare import default_group_names

    groups: Dict[str, List[str]] = {}
    for spec in group_specs:
        name, sep, dirs = spec.partition("=")
        if not sep or not name.strip() or not dirs.strip():
            raise CurriculumConfigError(f"--group {spec!r}: expected NAME=DIR1[,DIR2...]")
        if name in groups:
            raise CurriculumConfigError(f"--group name {name!r} given twice")
        groups[name.strip()] = [d for d in dirs.split(",") if d]
    for name, d in zip(default_group_names(results_dirs), results_dirs):
        if name in groups:
            raise CurriculumConfigError(f"group name {name!r} of {d} clashes with a --group; use --group for it too")
        groups[name] = [d]
    return groups


def run_compare(args: argparse.Namespace) -> int:
    from clips_nnunet.evaluation.compare import compare_results

    if not args.results_dirs and not args.groups:
        raise CurriculumConfigError("give at least one RESULTS_DIR or --group NAME=DIR1,DIR2")
    if args.metadata and args.difficulty:
        raise CurriculumConfigError("give either --metadata or --difficulty, not both")
    res = compare_results(parse_groups(args.results_dirs, args.groups or []), baseline=args.baseline,
                          gt_dir=args.gt, metadata=args.metadata, metadata_key=args.metadata_key,
                          harder_when=args.harder_when, difficulty_csv=args.difficulty, out_dir=args.output,
                          labels=args.labels, connectivity=args.connectivity,
                          lesion_connectivity=args.lesion_connectivity, plots=not args.no_plots,
                          progress=not args.quiet)
    allt = res.table[(res.table.stratum == "all") & (res.table.metric == "dice")]
    for _, r in allt.iterrows():
        print(f"{r['group']}: Dice mean {r['mean']:.3f} median {r['median']:.3f} (n={r['n']})")
    t = res.tests[(res.tests.stratum == "all") & (res.tests.metric == "dice")] if len(res.tests) else res.tests
    for _, r in t.iterrows():
        print(f"{r['group']} vs {r['baseline']}: Dice median diff {r['median_diff']:+.3f}, p={r['p_value']:.4g}, "
              f"r={r['rank_biserial']:+.2f}")
    for w in res.warnings:
        print(f"warning: {w}")
    print(f"report: {Path(res.out_dir) / 'report.md'}")
    return 0


def register(subparsers) -> None:
    """Add ``compare``."""
    c = subparsers.add_parser(
        "compare", help="compare trainers' out-of-fold validation results (Markdown + PNG report, Wilcoxon tests)",
        description="Pools each nnU-Net results folder's fold_X/validation predictions (or a crossval_results_folds_*"
                    " / ensembles/ensemble___* folder), evaluates them like `evaluate` and writes report.md, "
                    "per_case.csv, summary.csv, tests.csv, comparison.json and box plots: per trainer mean +- sd "
                    "and median of each metric, also by difficulty tertile, paired Wilcoxon signed-rank tests "
                    "against the baseline with matched-pairs rank-biserial effect sizes. Seeds of one trainer: "
                    "--group NAME=DIR1,DIR2 (metrics averaged per case over the seeds).")
    c.add_argument("results_dirs", nargs="*", metavar="RESULTS_DIR",
                   help="$nnUNet_results/DatasetXXX/Trainer__Plans__Config folders (one group each)")
    c.add_argument("--group", action="append", dest="groups", metavar="NAME=DIR1,DIR2",
                   help="a named group of results folders (e.g. seeds of one trainer); repeatable")
    c.add_argument("--baseline", help="group the others are tested against (default nnUNetTrainer if present, "
                                      "else the first group)")
    c.add_argument("--gt", help="reference masks (default $nnUNet_preprocessed/DatasetXXX/gt_segmentations)")
    c.add_argument("--metadata", help="case_metadata.json for difficulty tertiles")
    c.add_argument("--metadata-key", default="tmtv_ml",
                   help="key in case_metadata.json used as difficulty (default tmtv_ml: small TMTV = hard)")
    c.add_argument("--harder-when", choices=("low", "high"),
                   help="whether low or high values of --metadata-key are harder; only needed for a key that is not in the "
                        "difficulty table of docs/curricula.md (the table gives the direction of every converter measure)")
    c.add_argument("--difficulty", help="CSV case_id,difficulty (higher = harder), e.g. from clips-nnunet score")
    c.add_argument("-o", "--output", default="clips_comparison", help="output folder (default ./clips_comparison)")
    add_lesion_options(c)
    c.set_defaults(func=run_compare)
