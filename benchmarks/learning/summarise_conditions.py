"""One table across the conditions of a multi-condition study (e.g. the converging CPU study).

Reads each ``<results>/<condition>/report.json`` (written by ``clips-nnunet study ... --publish``) and the
``comparison.json`` files it names, and writes ``<results>/summary.md``: per condition and arm, the mean of Dice
(all cases, hardest tertile, mislabelled patients), |TMTV error| and lesion F1, and the paired Wilcoxon result
(median difference in Dice, rank-biserial r, Holm-adjusted p) against the stock baseline and against the arm's own
control.

    python benchmarks/learning/summarise_conditions.py docs/results/converging_cpu [--conditions noisy clean ...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from clips_nnunet.evaluation.formatting import fmt_fixed, fmt_p

STRATA = ("all", "hard", "mislabelled")


def _load(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text())


def _mean(summary: List[Dict[str, Any]], group: str, stratum: str, metric: str) -> Optional[float]:
    for row in summary:
        if (row["group"], row["stratum"], row["metric"]) == (group, stratum, metric):
            return row["mean"]
    return None


def _test(tests: List[Dict[str, Any]], group: str, stratum: str, metric: str) -> str:
    for row in tests:
        if (row["group"], row["stratum"], row["metric"]) == (group, stratum, metric):
            return f"{fmt_fixed(row['median_diff'])} (r={fmt_fixed(row['rank_biserial'], 2)}, p={fmt_p(row['p_holm'])})"
    return ""


def condition_table(folder: Path) -> List[str]:
    """Markdown table of one condition's report folder."""
    report = _load(folder / "report.json")
    comparisons = {ref: _load(folder / f"vs_{ref}" / "comparison.json") for ref in report["comparisons"]}
    main_ref = next(iter(comparisons))  # the baseline comes first
    main = comparisons[main_ref]
    control_of = {g: ref for ref, c in comparisons.items() if ref != main_ref for g in c["groups"] if g != ref}
    memorised = report.get("memorisation") or {}
    lines = ["| arm | Dice all | Dice hardest third | Dice mislabelled | abs TMTV err (ml) | lesion F1 | "
             "Dice vs stock: median diff (r, p_holm) | Dice vs own control | Dice mislabelled vs stock | "
             "badly annotated training patients: Dice vs clean / vs planted mask |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for group in main["groups"]:
        cells = [fmt_fixed(_mean(main["summary"], group, s, "dice")) for s in STRATA]
        cells += [fmt_fixed(_mean(main["summary"], group, "all", "tmtv_abs_error_ml"), 1),
                  fmt_fixed(_mean(main["summary"], group, "all", "lesion_f1"))]
        cells.append(_test(main["tests"], group, "all", "dice") or "baseline")
        ref = control_of.get(group)
        cells.append(f"{_test(comparisons[ref]['tests'], group, 'all', 'dice')} vs {ref.replace('nnUNetTrainer', '')}"
                     if ref else "")
        cells.append(_test(main["tests"], group, "mislabelled", "dice"))
        cells.append(f"{fmt_fixed(memorised['dice_vs_clean'].get(group))} / "
                     f"{fmt_fixed(memorised['dice_vs_planted'].get(group))}" if memorised else "")
        lines.append(f"| {group.replace('nnUNetTrainer', '') or 'nnUNetTrainer (stock)'} | " + " | ".join(cells) + " |")
    return lines


def plateau_line(folder: Path) -> str:
    """One sentence: the plateau verdict on the mean curve of the baseline's runs, and per run."""
    runs = _load(folder / "report.json").get("plateau") or {}
    if not runs:
        return "Baseline plateau: no training curve found."
    mean = {k: r for k, r in runs.items() if k.startswith("mean of")}
    single = {k: r for k, r in runs.items() if k not in mean}
    text = ""
    for key, r in mean.items():
        text += (f"Baseline plateau criterion on the {key.replace('mean of the', 'mean curve of its')}: "
                 f"{'met' if r['reached'] else 'not met'} (last-window mean pseudo Dice {fmt_fixed(r['last'])}, gain "
                 f"{fmt_fixed(r['gain'])}). ")
    reached = sum(bool(r["reached"]) for r in single.values())
    per_run = ", ".join(f"{k}: {fmt_fixed(r['last'])} (gain {fmt_fixed(r['gain'])})" for k, r in sorted(single.items()))
    return text + f"Per run, met in {reached} of {len(single)}: {per_run}."


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="folder holding one published report folder per condition")
    parser.add_argument("--conditions", nargs="*", help="condition folders in display order (default: all)")
    args = parser.parse_args(argv)
    names = args.conditions or sorted(p.name for p in args.results.iterdir() if (p / "report.json").is_file())
    lines = ["# Summary across conditions", "",
             "Means over the out-of-fold patients (per patient averaged over seeds), evaluated against the clean "
             "masks. Tests: paired two-sided Wilcoxon over patients, median difference arm - reference, "
             "matched-pairs rank-biserial r, Holm-adjusted over the report's metrics. Full tables: "
             "`<condition>/report.md`.", ""]
    for name in names:
        if not (args.results / name / "report.json").is_file():
            lines += [f"## {name}", "", "not run (no report.json)", ""]
            continue
        lines += [f"## {name}", "", plateau_line(args.results / name), "", *condition_table(args.results / name), ""]
    out = args.results / "summary.md"
    out.write_text("\n".join(lines))
    print(f"summary: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
