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


def console_lines(res) -> List[str]:
    """Dice per group (mean over runs with its interval, median over patients), each group against the baseline
    (mean difference with its interval, run-level p, Holm), and the runs that did not take off."""
    from clips_nnunet.evaluation.compare_report import p_text
    from clips_nnunet.evaluation.formatting import fmt_fixed
    from clips_nnunet.evaluation.statistics import describe

    lines = []
    for g in res.groups:
        s = res.summary(g, "dice")
        if s is None or s.n_runs == 0:
            lines.append(f"{g}: Dice undefined (no case with a true lesion)")
            continue
        ci = (f"[{fmt_fixed(s.ci_low)}, {fmt_fixed(s.ci_high)}]" if s.n_runs > 1
              else "(1 run: no interval)")
        lines.append(f"{g}: Dice mean over {s.n_runs} runs {fmt_fixed(s.mean)} {ci}, median over "
                     f"{s.n_cases} patients {fmt_fixed(s.median_cases)}")
    for g in res.groups:
        c = res.comparison(g, "dice")
        if c is not None:
            lines.append(f"{g} vs {c.reference}: Dice mean diff {describe(c.difference)}, "
                         f"p={p_text(c.difference.p_value)}, p_holm={p_text(c.p_holm)}, favours {c.favours}")
    for t in res.take_off.values():
        if t.failed:
            lines.append(f"{t.group}: {len(t.failed)} of {t.n_runs} runs did not take off (no lesion predicted): "
                         f"{', '.join(t.failed)}")
    return lines


def run_compare(args: argparse.Namespace) -> int:
    from clips_nnunet.evaluation.compare import CaseEvaluation, CompareOptions, DifficultySource, compare_results

    from clips_nnunet.cli.model_options import model_prediction_set  # --model: one more group (published_models.md)

    if not args.results_dirs and not args.groups and not args.models:
        raise CurriculumConfigError("give at least one RESULTS_DIR or --group NAME=DIR1,DIR2 (or --model SPEC)")
    if args.metadata and args.difficulty:
        raise CurriculumConfigError("give either --metadata or --difficulty, not both")
    options = CompareOptions(
        baseline=args.baseline, out_dir=args.output, plots=not args.no_plots,
        difficulty=DifficultySource(metadata=args.metadata, metadata_key=args.metadata_key,
                                    harder_when=args.harder_when, difficulty_csv=args.difficulty),
        evaluation=CaseEvaluation(gt_dir=args.gt, labels=args.labels, connectivity=args.connectivity,
                                  lesion_connectivity=args.lesion_connectivity, progress=not args.quiet))
    model_set = model_prediction_set(args, args.output, validation_layout=False)
    model_group = [f"{model_set[0]}={model_set[1]}"] if model_set else []
    res = compare_results(parse_groups(args.results_dirs, (args.groups or []) + model_group), options)
    for line in console_lines(res):
        print(line)
    for w in res.warnings:
        print(f"warning: {w}")
    print(f"report: {Path(res.out_dir) / 'report.md'}")
    return 0


def register(subparsers) -> None:
    """Add ``compare``."""
    c = subparsers.add_parser(
        "compare", help="compare trainers' out-of-fold validation results (Markdown + PNG report, run-level tests)",
        description="Pools each nnU-Net results folder's fold_X/validation predictions (or a crossval_results_folds_*"
                    " / ensembles/ensemble___* folder), evaluates them like `evaluate` and writes report.md, "
                    "per_run_case.csv, per_case.csv, summary.csv, comparisons.csv, take_off.csv, comparison.json "
                    "and box plots. The run (one seed of one fold) is the unit: per trainer the mean over runs "
                    "with its 95 % interval, also by difficulty tertile; against the baseline the mean "
                    "difference with its 95 % interval and run-level p-value, Holm over every comparison; runs "
                    "that never predicted a lesion are reported (take-off). Seeds of one trainer: "
                    "--group NAME=DIR1,DIR2.")
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
    from clips_nnunet.cli.model_options import add_model_options
    add_model_options(c, device=True, what="predicts the cases of --images that have a reference in --gt into "
                                            "OUT/model_predictions/ and compares them as one more group")
    c.add_argument("--images", help="with --model: nnU-Net images folder of the cases (e.g. imagesTr)")
    c.set_defaults(func=run_compare)
