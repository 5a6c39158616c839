"""One table across the conditions of a multi-condition study (e.g. the converging CPU study).

Reads each ``<results>/<condition>/report.json``, ``comparisons.csv`` (every comparison the report prints, with
the report's Holm adjustment) and ``vs_<baseline>/comparison.json`` (written by ``clips-nnunet study ...
--publish``), and writes ``<results>/summary.md``: per condition the convergence ladder's verdict and the A/A
check, and per arm the mean over runs of Dice (all cases, hardest tertile, mislabelled patients), |TMTV error| and
lesion F1, the take-off rate, and the run-level mean difference in Dice with its 95 % interval and Holm-adjusted
p against the stock baseline and against the arm's own control.

    python benchmarks/learning/summarise_conditions.py docs/results/<study> [--conditions noisy clean ...]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd

from clips_nnunet.evaluation.formatting import fmt_fixed, fmt_p

STRATA = ("all", "hard", "mislabelled")


def _load(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text())


def _mean(summary: List[Dict[str, Any]], group: str, stratum: str, metric: str) -> Optional[float]:
    for row in summary:
        if (row["group"], row["stratum"], row["metric"]) == (group, stratum, metric):
            return row["mean"]
    return None


def _diff(comps: pd.DataFrame, group: str, reference: str, stratum: str = "all") -> str:
    rows = comps[(comps.group == group) & (comps.reference == reference) & (comps.stratum == stratum)
                 & (comps.metric == "dice")]
    if rows.empty:
        return ""
    r = rows.iloc[0]
    if not isinstance(r.undefined, str) or not r.undefined:
        return (f"{r.estimate:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}], p_holm {fmt_p(float(r.p_holm))}")
    return f"{r.estimate:+.3f} (interval undefined: {r.undefined})" if math.isfinite(r.estimate) else \
        f"undefined ({r.undefined})"


def condition_table(folder: Path) -> List[str]:
    """Markdown table of one condition's report folder."""
    report = _load(folder / "report.json")
    baseline = report["baseline"]
    main = _load(folder / f"vs_{baseline}" / "comparison.json")
    comps = pd.read_csv(folder / "comparisons.csv")
    control_of = {g: r for g, r in zip(comps.group, comps.reference) if r != baseline}
    take = {t["group"]: t for t in main.get("take_off", [])}
    memorised = report.get("memorisation") or {}
    lines = ["| arm | Dice all | Dice hardest third | Dice mislabelled | abs TMTV err (ml) | lesion F1 | took off | "
             "Dice vs stock [95 %], p_holm | Dice vs own control | badly annotated training patients: Dice vs "
             "clean / vs planted mask |", "|---|---|---|---|---|---|---|---|---|---|"]
    for group in main["groups"]:
        cells = [fmt_fixed(_mean(main["summary"], group, s, "dice")) for s in STRATA]
        cells += [fmt_fixed(_mean(main["summary"], group, "all", "tmtv_abs_error_ml"), 1),
                  fmt_fixed(_mean(main["summary"], group, "all", "lesion_f1"))]
        t = take.get(group)
        cells.append(f"{t['n_took_off']}/{t['n_runs']}" if t else "")
        cells.append(_diff(comps, group, baseline) or "baseline")
        ref = control_of.get(group)
        cells.append(f"{_diff(comps, group, ref)} vs {ref.replace('nnUNetTrainer', '')}" if ref else "")
        cells.append(f"{fmt_fixed(memorised['dice_vs_clean'].get(group))} / "
                     f"{fmt_fixed(memorised['dice_vs_planted'].get(group))}" if memorised else "")
        lines.append(f"| {group.replace('nnUNetTrainer', '') or 'nnUNetTrainer (stock)'} | " + " | ".join(cells) + " |")
    return lines


def design_line(folder: Path) -> str:
    """One sentence: the convergence ladder's verdict and the A/A check."""
    report = _load(folder / "report.json")
    ladder = report.get("ladder") or {}
    text = " ".join(f"Ladder rung {rung}: {r['verdict']} (margin {r['margin']})." for rung, r in ladder.items()) \
        or "No convergence ladder."
    aa = (report.get("aa_check") or {}).get("difference") or {}
    if aa:
        p = aa.get("p_value")
        text += f" A/A check of the baseline's seeds: p = {fmt_p(p) if p is not None else 'undefined'}."
    return text


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="folder holding one published report folder per condition")
    parser.add_argument("--conditions", nargs="*", help="condition folders in display order (default: all)")
    args = parser.parse_args(argv)
    names = args.conditions or sorted(p.name for p in args.results.iterdir() if (p / "report.json").is_file())
    lines = ["# Summary across conditions", "",
             "Means over runs (each run's mean over its out-of-fold patients), evaluated against the clean masks. "
             "Differences: run-level mean difference arm - reference with its 95 % interval, Holm over every "
             "comparison of the condition's report. Full tables: `<condition>/report.md`; every run's value of "
             "every patient: `<condition>/per_run_case.csv`.", ""]
    for name in names:
        if not (args.results / name / "report.json").is_file():
            lines += [f"## {name}", "", "not run (no report.json)", ""]
            continue
        lines += [f"## {name}", "", design_line(args.results / name), "", *condition_table(args.results / name), ""]
    out = args.results / "summary.md"
    out.write_text("\n".join(lines))
    print(f"summary: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
