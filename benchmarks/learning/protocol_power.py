"""Power of the pre-registered protocol's analysis (docs/protocol.md, "Sample size and power").

The report's run-level test is ``run_mean ~ arm + C(fold)`` (``clips_nnunet.evaluation.statistics.run_level_difference``)
on every (seed, fold) run: 5 folds x S seeds = 5 S runs per arm. For each sd of run means (within a fold, between
seeds) this prints, per number of seeds, the minimum detectable difference at 80 % power
(``minimum_detectable_difference``, a two-sample t approximation), the 95 % interval half-width of the difference
(t(0.975, 2n - 6) x sd x sqrt(2/n), the OLS's residual degrees of freedom), and for Dice the rejection rate of the
real analysis on simulated studies at that MDE and at no effect (1000 studies, fold offsets sd 0.05).

Without ``--from-csv`` the sds are the superseded converging CPU study's "sd between seeds" (stock arm, 3 seeds, one
fold of 20 synthetic patients; a converged budget on a simple phantom), kept for comparison; docs/protocol.md uses
``--from-csv`` on the CPU twin study's report. Give your own seeds' sd with --sd NAME=VALUE.

    python benchmarks/learning/protocol_power.py [--sd dice=0.0132 --sd lesion_f1=0.0192] [--studies 1000]

Variance components from a study (``--from-csv REPORT/per_run_case.csv``, e.g. the CPU twin study of issue 25): for
one arm (``--arm``, the stock baseline) on one fold, each endpoint's per-case values ``y[seed, case]`` give the
seed x case interaction variance (residual of the two-way decomposition, ``var_int``) and the sd of run means over
the study's own ``n`` cases (``sd_obs``); the seed variance of a run mean is then ``var_seed = max(0, sd_obs^2 -
var_int / n)``, and a run mean over the protocol's ``--patients`` cases (per stratum: all ~110 out-of-fold patients
of a fold, the hardest third ~37) has ``sd_run = sqrt(var_seed + var_int / patients)``. Those sds replace the
placeholders. Strata come from ``vs_<arm>/comparison.json`` beside the CSV.

    python benchmarks/learning/protocol_power.py --from-csv docs/results/twin_cpu2/sloppy/per_run_case.csv
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
from scipy import stats

from clips_nnunet.evaluation.statistics import RunMean, minimum_detectable_difference, run_level_difference

PLACEHOLDER_SD = {"dice": 0.0132, "lesion_f1": 0.0192}
FOLDS = 5


def rejection(sd: float, seeds: int, effect: float, studies: int, rng: np.random.Generator) -> float:
    hits = 0
    for _ in range(studies):
        fold_offset = rng.normal(0.0, 0.05, FOLDS)
        arm = [RunMean(f"a{s}f{f}", str(f), 0.6 + fold_offset[f] + effect + rng.normal(0.0, sd), 110)
               for s in range(seeds) for f in range(FOLDS)]
        ref = [RunMean(f"r{s}f{f}", str(f), 0.6 + fold_offset[f] + rng.normal(0.0, sd), 110)
               for s in range(seeds) for f in range(FOLDS)]
        hits += run_level_difference(arm, ref).p_value < 0.05
    return hits / studies


def variance_components(csv: Path, arm: str, metric: str, cases, took_off_only: bool = False
                        ) -> Tuple[float, float, int, int]:
    """``(var_seed, var_int, n_cases, n_seeds)`` of ``metric`` for ``arm`` over ``cases`` (one fold): two-way
    seed x case decomposition of the per-case values (cases every seed scored; Dice on cases with a true lesion).
    ``took_off_only``: only the runs whose final model predicted a lesion in at least one of their validation
    patients (the report's take-off rule)."""
    import pandas as pd

    df = pd.read_csv(csv)
    if took_off_only:
        took_off = df.groupby("run").tmtv_pred_ml.max() > 0
        df = df[df.run.isin(set(took_off[took_off].index))]
    sub = df[(df.group == arm) & df.case_id.isin(set(cases))]
    if metric == "dice":
        sub = sub[sub.has_true_lesion.astype(str).str.lower() == "true"]
    table = sub.pivot_table(index="seed", columns="case_id", values=metric, aggfunc="mean").dropna(axis=1)
    y = table.to_numpy(float)
    s_, n = y.shape
    if s_ < 2 or n < 2:
        return float("nan"), float("nan"), n, s_
    resid = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + y.mean()
    var_int = float((resid ** 2).sum() / ((s_ - 1) * (n - 1)))
    var_obs = float(y.mean(axis=1).var(ddof=1))
    return max(0.0, var_obs - var_int / n), var_int, n, s_


def sds_from_csv(csv: Path, arm: str, patients: Dict[str, int], metrics, took_off_only: bool = False
                 ) -> Dict[str, float]:
    """``{metric@stratum: sd_run}`` projected to the protocol's patients per stratum; prints the components."""
    strata = json.loads((csv.parent / f"vs_{arm}" / "comparison.json").read_text())["strata"]
    out = {}
    print("| metric | stratum | seeds | cases here | sd of run means here | var_seed | var_int (seed x case) | "
          "patients in protocol | projected sd_run |")
    print("|---|---|---|---|---|---|---|---|---|")
    for stratum, n_protocol in patients.items():
        if stratum not in strata:
            continue
        for metric in metrics:
            v_seed, v_int, n, s_ = variance_components(csv, arm, metric, strata[stratum], took_off_only)
            if not (np.isfinite(v_seed) and np.isfinite(v_int)):
                continue
            here = np.sqrt(v_seed + v_int / n)
            sd = float(np.sqrt(v_seed + v_int / n_protocol))
            out[f"{metric}@{stratum}"] = sd
            print(f"| {metric} | {stratum} | {s_} | {n} | {here:.4g} | {v_seed:.3g} | {v_int:.3g} | {n_protocol} | "
                  f"{sd:.4g} |")
    print()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 5, 10])
    parser.add_argument("--from-csv", type=Path, help="a study report's per_run_case.csv: sds from its variance "
                                                      "components instead of the placeholders")
    parser.add_argument("--arm", default="nnUNetTrainer")
    parser.add_argument("--patients", nargs="+", default=["all=110", "hard=37"], metavar="STRATUM=N",
                        help="patients per run and stratum in the protocol (5-fold CV of ~550 patients)")
    parser.add_argument("--metrics", nargs="+", default=["dice", "lesion_f1", "tmtv_abs_rel_error"])
    parser.add_argument("--took-off-only", action="store_true",
                        help="variance components from the runs that took off only (a full nnU-Net budget has no "
                             "take-off failures; a short CPU budget does)")
    args = parser.parse_args()
    if args.from_csv:
        patients = {k: int(v) for k, v in (item.split("=") for item in args.patients)}
        sds = sds_from_csv(args.from_csv, args.arm, patients, args.metrics, args.took_off_only)
    else:
        sds = dict(PLACEHOLDER_SD)
    for item in args.sd:
        name, _, value = item.partition("=")
        sds[name] = float(value)
    rng = np.random.default_rng(0)
    print("| metric | sd of run means | seeds | runs per arm | MDE (80 %) | 95 % half-width | simulated power at MDE | "
          "simulated rejection at 0 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, sd in sds.items():
        for seeds in args.seeds:
            n = FOLDS * seeds
            mde = minimum_detectable_difference(sd, n)
            half = stats.t.ppf(0.975, 2 * n - 6) * sd * np.sqrt(2 / n)
            sim = (f"{rejection(sd, seeds, mde, args.studies, rng):.3f} | "
                   f"{rejection(sd, seeds, 0.0, args.studies, rng):.3f}") if name.split("@")[0] == "dice" else "- | -"
            print(f"| {name} | {sd:g} | {seeds} | {n} | {mde:.4f} | {half:.4f} | {sim} |")


if __name__ == "__main__":
    main()
