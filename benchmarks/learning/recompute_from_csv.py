"""Recompute a study report's run-level numbers from its published ``per_run_case.csv`` (issue 25: every number of
the report can be recomputed from that CSV with a documented command).

Reads ``<report>/per_run_case.csv`` (one row per run and out-of-fold case) and the strata (case lists) of
``<report>/vs_<baseline>/comparison.json``, and prints per arm and stratum the mean over runs of each endpoint, and
for each pair asked the run-level difference of run means with its 95 % interval and p-value. With one fold the
report's model ``run_mean ~ arm + C(fold)`` is the pooled two-sample t-test on run means, which is what this script
computes (scipy only, independent of the harness's statsmodels code), and the minimum detectable difference at 80 %
power (two-sided alpha 0.05, two-sample t, statsmodels ``TTestIndPower``) from the reference arm's sd of run means.
It also redoes the A/A check: the baseline's runs split by seed, the sorted seeds dealt alternately to the two halves
(the report's ``clips_nnunet.evaluation.statistics.aa_split``).

    python benchmarks/learning/recompute_from_csv.py docs/results/twin_cpu/sloppy \\
        --pair nnUNetTrainerCLSelfPacedLinear:nnUNetTrainer --pair ...

Dice counts only cases with a true lesion (the evaluator's rule); the other endpoints every case of the stratum.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import stats

ENDPOINTS = ("dice", "tmtv_abs_error_ml", "tmtv_abs_rel_error", "lesion_f1", "fp_volume_ml", "fn_volume_ml")


def run_means(df: pd.DataFrame, arm: str, metric: str, cases: Sequence[str]) -> pd.Series:
    """Mean of ``metric`` per run (index: seed) of ``arm`` over ``cases``."""
    sub = df[(df.group == arm) & df.case_id.isin(set(cases))]
    values = sub[metric].astype(float)
    if metric == "dice":
        values = values.where(sub.has_true_lesion.astype(str).str.lower() == "true")
    sub = sub.assign(value=values).dropna(subset=["value"])
    return sub.groupby("seed").value.mean()


def pooled_difference(a: np.ndarray, b: np.ndarray) -> Tuple[float, float, float, float]:
    """(mean(a) - mean(b), 95 % low, high, p) of the pooled two-sample t-test."""
    diff = float(a.mean() - b.mean())
    dof = len(a) + len(b) - 2
    if dof < 1:
        return diff, math.nan, math.nan, math.nan
    pooled = ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / dof
    se = math.sqrt(pooled * (1 / len(a) + 1 / len(b)))
    if se == 0:
        return diff, math.nan, math.nan, math.nan
    half = stats.t.ppf(0.975, dof) * se
    return diff, diff - half, diff + half, float(2 * stats.t.sf(abs(diff) / se, dof))


def mde(sd: float, n: int) -> float:
    """Smallest true difference a two-sided two-sample t-test (alpha 0.05, n runs per arm) detects with 80 %."""
    from statsmodels.stats.power import TTestIndPower

    if not (sd > 0 and n >= 2):
        return math.nan
    return float(TTestIndPower().solve_power(alpha=0.05, power=0.8, nobs1=n, ratio=1.0)) * sd


def fmt(x: float, digits: int = 4) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.{digits}f}"


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="published report folder (per_run_case.csv, vs_<baseline>/)")
    parser.add_argument("--baseline", default="nnUNetTrainer")
    parser.add_argument("--pair", action="append", default=[], metavar="ARM:REFERENCE")
    parser.add_argument("--strata", nargs="+", default=["all", "hard", "mislabelled"])
    parser.add_argument("--metrics", nargs="+", default=list(ENDPOINTS))
    args = parser.parse_args(list(argv) or None)
    df = pd.read_csv(args.report / "per_run_case.csv")
    strata: Dict[str, List[str]] = json.loads((args.report / f"vs_{args.baseline}" / "comparison.json")
                                              .read_text())["strata"]
    strata = {k: v for k, v in strata.items() if k in args.strata}
    print(f"runs per arm: {df.groupby('group').run.nunique().to_dict()}")
    print(f"cases per stratum: { {k: len(v) for k, v in strata.items()} }")
    print("\n| arm | stratum | metric | runs | mean over runs | sd of run means |\n|---|---|---|---|---|---|")
    for arm in sorted(df.group.unique()):
        for s, cases in strata.items():
            for m in args.metrics:
                r = run_means(df, arm, m, cases)
                print(f"| {arm} | {s} | {m} | {len(r)} | {fmt(r.mean())} | {fmt(r.std(ddof=1))} |")
    print("\n| arm - reference | stratum | metric | difference | 95 % interval | p (unadjusted) |\n|---|---|---|---|---|---|")
    for pair in args.pair:
        arm, _, ref = pair.partition(":")
        for s, cases in strata.items():
            for m in args.metrics:
                a, b = run_means(df, arm, m, cases).to_numpy(), run_means(df, ref, m, cases).to_numpy()
                d, lo, hi, p = pooled_difference(a, b)
                print(f"| {arm} - {ref} | {s} | {m} | {fmt(d)} | [{fmt(lo)}, {fmt(hi)}] | {fmt(p, 3)} |")
    base = run_means(df, args.baseline, "dice", strata["all"])
    seeds = sorted(base.index)
    first, second = seeds[0::2], seeds[1::2]
    d, lo, hi, p = pooled_difference(base[first].to_numpy(), base[second].to_numpy())
    print(f"\nA/A ({args.baseline}, Dice, all): seeds {first} vs {second}: {fmt(d)} [{fmt(lo)}, {fmt(hi)}], "
          f"p = {fmt(p, 3)}")
    for s, cases in strata.items():
        for m in ("dice", "tmtv_abs_error_ml", "lesion_f1"):
            r = run_means(df, args.baseline, m, cases)
            print(f"MDE at 80 % ({args.baseline} sd of run means, {len(r)} runs per arm), {s} {m}: "
                  f"sd {fmt(r.std(ddof=1))} -> {fmt(mde(r.std(ddof=1), len(r)))}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
