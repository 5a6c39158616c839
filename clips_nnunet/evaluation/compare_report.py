"""A comparison written out: CSV files (per run and case, per case, summaries, comparisons, take-off), JSON, box
plots and the Markdown report; the table renderers are shared with the study report."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Sequence

from clips_nnunet.evaluation.compare_analysis import ALL, TERTILES, TOOK_OFF, Comparison, metric_values
from clips_nnunet.evaluation.evaluate import write_rows_csv
from clips_nnunet.evaluation.formatting import fmt_p, fmt_significant
from clips_nnunet.evaluation.statistics import TakeOff, describe
from clips_nnunet.io_utils import atomic_write_json, atomic_write_text

__all__ = ["write_outputs", "render_markdown", "summary_table", "comparison_table", "take_off_table",
           "comparison_rows", "p_text", "METHOD_TEXT"]

#: the analysis in one paragraph (printed in every report that shows run-level comparisons)
METHOD_TEXT = ("The run (one seed of one fold) is the unit of replication. Means are means over runs of each run's "
               "mean over its patients (Dice over patients with a true lesion), with 95 % t-intervals over runs; "
               "medians (over patients, of run-averaged values) are labelled as medians. Differences (arm - "
               "reference) come from `run_mean ~ arm + C(fold)` (statsmodels OLS; for balanced data the same "
               "estimate and standard error as a mixed model with patient and run intercepts) with their 95 % "
               "interval and run-level p-value. 'favours' names a side only when the interval excludes 0.")


def p_text(p: float) -> str:
    """A p-value, or ``undefined`` in words."""
    return fmt_p(p) if isinstance(p, float) and math.isfinite(p) else "undefined"


def _stratum_heading(stratum: str) -> str:
    return ("All cases" if stratum == ALL else "Tertile: " + stratum if stratum in TERTILES else "Subset: " + stratum)


def _mean_cell(s) -> str:
    if s is None or s.n_runs == 0:
        return "no value"
    if s.n_runs == 1:
        txt = f"{fmt_significant(s.mean)} (1 run: no interval)"
    else:
        txt = f"{fmt_significant(s.mean)} [{fmt_significant(s.ci_low)}, {fmt_significant(s.ci_high)}]"
    return txt + f"; median {fmt_significant(s.median_cases)}"


def summary_table(res, stratum: str) -> List[str]:
    """Mean over runs [95 % CI]; median over patients, per group and metric, in ``stratum``."""
    mets = [m for m in res.metrics if any(s.metric == m for s in res.summaries)]
    lines = ["mean over runs [95 % interval]; median over patients", "",
             "| group | runs | " + " | ".join(f"{m} {'↑' if res.metrics[m] else '↓'}" for m in mets) + " |",
             "|---|---|" + "---|" * len(mets)]
    for g in [res.baseline] + [x for x in res.groups if x != res.baseline]:
        cells = [_mean_cell(res.summary(g, m, stratum)) for m in mets]
        n = max((s.n_runs for s in res.summaries if s.group == g and s.stratum == stratum), default=0)
        lines.append(f"| {g} | {n} | " + " | ".join(cells) + " |")
    return lines + [""]


def comparison_table(comparisons: Sequence[Comparison]) -> List[str]:
    """One row per comparison: mean difference [95 % CI], p, Holm-adjusted p, the side favoured."""
    lines = ["| arm | vs | stratum | metric | runs (arm/ref) | mean diff [95 % interval] | p | p_holm | favours |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        d = c.difference
        lines.append(f"| {c.group} | {c.reference} | {c.stratum} | {c.metric} | {d.n_runs_arm}/{d.n_runs_reference} "
                     f"| {describe(d)} | {p_text(d.p_value)} | {p_text(c.p_holm)} | {c.favours} |")
    return lines + [""]


def take_off_table(take: Mapping[str, TakeOff]) -> List[str]:
    """Runs per group, how many took off, which failed, Fisher's exact p against the reference."""
    lines = ["| group | runs | took off | rate | runs that did not take off | Fisher p vs reference |",
             "|---|---|---|---|---|---|"]
    for t in take.values():
        rate = f"{100 * t.rate:.0f} %" if t.n_runs else "no run"
        p = "reference" if not t.reference else f"{p_text(t.p_value)} vs {t.reference}"
        lines.append(f"| {t.group} | {t.n_runs} | {t.n_took_off} | {rate} | {', '.join(t.failed) or 'none'} | {p} |")
    return lines + [""]


def render_markdown(res, heading_level: int = 1, link_base: str = "", title: bool = True) -> str:
    """The Markdown report: take-off, per stratum the summary and the comparisons, plots, warnings.

    To include it in a larger document (the study report): ``heading_level`` is the level of the title (its
    sections one below), ``link_base`` is prepended to the plot links and names the folder of the files (e.g.
    ``"vs_nnUNetTrainer/"``), ``title=False`` leaves the title out (the including document has its own heading).
    """
    if heading_level < 1:
        raise ValueError(f"heading_level must be >= 1, got {heading_level}")
    section = "#" * (heading_level + 1)
    L = [f"{'#' * heading_level} Curriculum comparison (out-of-fold validation)", ""] if title else []
    family = max((c.family for c in res.comparisons), default=0)
    L += [f"Baseline: **{res.baseline}**. Difficulty: {res.difficulty_source}. {METHOD_TEXT} Holm's adjustment "
          f"runs over all {family} comparisons with a defined p-value in this report (every arm x stratum x "
          f"metric, and Dice among the runs that took off).", "",
          "| group | results folders |", "|---|---|"]
    L += [f"| {g} | {'<br>'.join(dirs)} |" for g, dirs in res.groups.items()] + [""]
    L += [f"{section} Take-off", "", "A run took off when its final model predicted a lesion in at least one of its "
          "validation patients.", ""] + take_off_table(res.take_off)
    for stratum, cases in res.strata.items():
        L += [f"{section} {_stratum_heading(stratum)} (n = {len(cases)})", ""] + summary_table(res, stratum)
        comps = [c for c in res.comparisons if c.stratum == stratum]
        if comps:
            L += comparison_table(comps)
    took = [c for c in res.comparisons if c.stratum == TOOK_OFF]
    if took:
        L += [f"{section} Dice among the runs that took off", ""] + comparison_table(took)
    if "boxplots" in res.files:
        L += [f"{section} Plots", "", f"![per-case metrics]({link_base}plots/boxplots.png)", ""]
    if "boxplots_tertiles" in res.files:
        L += [f"![Dice by tertile]({link_base}plots/dice_by_tertile.png)", ""]
    if res.warnings:
        L += [f"{section} Warnings", ""] + [f"- {w}" for w in res.warnings] + [""]
    L += [f"Files{f' in `{link_base}`' if link_base else ''}: `per_run_case.csv` (every run's value of every case: "
          "recompute anything from it), `per_case.csv` (run-averaged), `summary.csv`, `comparisons.csv`, "
          "`take_off.csv`, `comparison.json`.", ""]
    return "\n".join(L)


def comparison_rows(comparisons: Sequence[Comparison]) -> List[Dict[str, Any]]:
    """Flat rows (CSV/JSON) of comparisons."""
    return [{"group": c.group, "reference": c.reference, "stratum": c.stratum, "metric": c.metric,
             "higher_is_better": c.higher_is_better, **dataclasses.asdict(c.difference), "p_holm": c.p_holm,
             "holm_family": c.family, "favours": c.favours} for c in comparisons]


def write_outputs(res, plots: bool) -> None:
    """CSV, JSON, plots and ``report.md`` into ``res.out_dir``; ``res.files`` names them."""
    from clips_nnunet.evaluation.evaluate import _to_json

    out = res.out_dir
    summaries = [dataclasses.asdict(s) for s in res.summaries]
    comps = comparison_rows(res.comparisons)
    take = [{**dataclasses.asdict(t), "failed": ";".join(t.failed)} for t in res.take_off.values()]
    files = {"per_run_case_csv": write_rows_csv(res.runs.to_dict("records"), out / "per_run_case.csv"),
             "per_case_csv": write_rows_csv(res.per_case.to_dict("records"), out / "per_case.csv"),
             "summary_csv": write_rows_csv(summaries, out / "summary.csv"),
             "comparisons_csv": write_rows_csv(comps, out / "comparisons.csv"),
             "take_off_csv": write_rows_csv(take, out / "take_off.csv")}
    atomic_write_json(out / "comparison.json", _to_json({
        "baseline": res.baseline, "groups": res.groups, "difficulty_source": res.difficulty_source,
        "warnings": res.warnings, "strata": res.strata, "summary": summaries, "comparisons": comps,
        "take_off": take}))
    files["comparison_json"] = out / "comparison.json"
    if plots:
        from clips_nnunet.evaluation import plots as P

        pc = res.per_case
        order = [res.baseline] + [g for g in res.groups if g != res.baseline]
        vals = {m: {g: metric_values(pc[pc.group == g], m).tolist() for g in order}
                for m in res.metrics if m in pc.columns}
        files["boxplots"] = P.grouped_boxplots(vals, out / "plots" / "boxplots.png",
                                               title="Per-case metrics, run-averaged (out-of-fold)")
        if "dice" in pc.columns:
            tvals = {f"Dice, {t}": {g: metric_values(pc[(pc.group == g) & (pc.tertile == t)], "dice").tolist()
                                    for g in order} for t in TERTILES}
            files["boxplots_tertiles"] = P.grouped_boxplots(
                tvals, out / "plots" / "dice_by_tertile.png",
                title=f"Dice by difficulty tertile ({res.difficulty_source})")
    res.files = files
    atomic_write_text(out / "report.md", render_markdown(res))
    res.files["report_md"] = out / "report.md"
