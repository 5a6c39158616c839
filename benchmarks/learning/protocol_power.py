"""Power of the pre-registered protocol's analysis (docs/protocol.md, "Sample size and power").

The report's run-level test is ``run_mean ~ arm + C(fold)`` (``clips_nnunet.evaluation.statistics.run_level_difference``)
on every (seed, fold) run: 5 folds x S seeds = 5 S runs per arm. For each sd of run means (within a fold, between
seeds) this prints, per number of seeds, the minimum detectable difference at 80 % power
(``minimum_detectable_difference``, a two-sample t approximation), the 95 % interval half-width of the difference
(t(0.975, 2n - 6) x sd x sqrt(2/n), the OLS's residual degrees of freedom), and for Dice the rejection rate of the
real analysis on simulated studies at that MDE and at no effect (1000 studies, fold offsets sd 0.05).

The sds are PLACEHOLDERS: the "sd between seeds" of the superseded converging CPU study (stock arm, 3 seeds, one fold
of 20 synthetic patients, docs/results/converging_cpu/noisy/vs_nnUNetTrainer/report.md). Give the CPU twin study's or
your own seeds' sd with --sd NAME=VALUE.

    python benchmarks/learning/protocol_power.py [--sd dice=0.0132 --sd lesion_f1=0.0192] [--studies 1000]
"""
from __future__ import annotations

import argparse

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 5, 10])
    args = parser.parse_args()
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
                   f"{rejection(sd, seeds, 0.0, args.studies, rng):.3f}") if name == "dice" else "- | -"
            print(f"| {name} | {sd:g} | {seeds} | {n} | {mde:.4f} | {half:.4f} | {sim} |")


if __name__ == "__main__":
    main()
