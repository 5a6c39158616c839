"""Run-level statistics of the comparison reports: the run (one seed of one fold) is the unit of replication.

Why runs, not patients: two trainings of one arm on the same patients differ (initialisation, sampling,
augmentation). A test on seed-averaged patients never sees that variance and calls seed noise an effect (issue 22 reports a
paired Wilcoxon over the patients of 3 runs per arm at p_holm < 0.001 where a rough run-level test gives p ~ 0.4;
on the null simulation of ``tests/test_statistics.py`` that Wilcoxon rejects 42 % of the studies).

The analysis (:func:`run_level_difference`)
-------------------------------------------
1. Each run's value of a metric in a stratum is the mean over that run's patients in the stratum (Dice over
   patients with a true lesion only).
2. The run means of the arm and of the reference are fitted by ordinary least squares (``statsmodels`` OLS) with
   an arm indicator and one fixed effect per fold: ``run_mean ~ arm + C(fold)``. The arm coefficient is the mean
   difference (arm - reference); its 95 % interval and two-sided p-value are the OLS t-interval and t-test
   (residual degrees of freedom = runs - folds - 1). With one fold this is the pooled two-sample t-test on run
   means.

For a balanced design (every run of a fold scores the same patients) this is the test of the arm effect of the
mixed model ``value ~ arm + (1 | patient) + (1 | run)``: the patient intercepts cancel in the difference of run
means, and run means carry run variance plus patient-level noise / n_patients, which is what the mixed model
estimates. ``tests/test_statistics.py`` checks the estimate and standard error against statsmodels' ``MixedLM``
on simulated data. The OLS form is used because it is exact for small numbers of runs, never fails to converge,
and costs under a millisecond, so that the A/A calibration (thousands of simulated studies) runs the same code.

Undefined results are said in words (:attr:`RunLevelDifference.undefined`): one run per arm and fold leaves no
between-run variance; identical runs leave a zero variance.

Also here: Holm's adjustment over a family of p-values (``statsmodels.stats.multitest``), the take-off test
(Fisher's exact test on runs that predicted a lesion or not), the A/A split of the baseline's own runs, and the
simulation behind the calibration test and the power statement.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Mapping, Sequence, Tuple

import numpy as np

__all__ = ["RunMean", "RunLevelDifference", "run_level_difference", "holm", "TakeOff", "fisher_take_off",
           "aa_split", "describe", "SimulationDesign", "simulate_studies", "rejection_rate",
           "minimum_detectable_difference"]

ALPHA = 0.05


@dataclasses.dataclass(frozen=True)
class RunMean:
    """One run's mean of a metric over its patients in a stratum (``n_patients`` of them)."""

    run: str
    fold: str
    mean: float
    n_patients: int


@dataclasses.dataclass(frozen=True)
class RunLevelDifference:
    """Mean difference (arm - reference) of run means with its 95 % interval and run-level p-value.

    ``undefined`` is empty when every number is defined, else the reason in words (the numbers are then NaN and
    are never printed as such: see :func:`describe`)."""

    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    n_runs_arm: int
    n_runs_reference: int
    df_resid: int
    undefined: str = ""

    @property
    def defined(self) -> bool:
        return not self.undefined


def _undefined(estimate: float, n_a: int, n_r: int, df: int, why: str) -> RunLevelDifference:
    nan = float("nan")
    return RunLevelDifference(estimate, nan, nan, nan, n_a, n_r, df, why)


def run_level_difference(arm: Sequence[RunMean], reference: Sequence[RunMean],
                         alpha: float = ALPHA) -> RunLevelDifference:
    """The arm effect of ``run_mean ~ arm + C(fold)`` (statsmodels OLS) on the runs of folds both sides have."""
    import statsmodels.api as sm

    arm = [r for r in arm if math.isfinite(r.mean)]
    reference = [r for r in reference if math.isfinite(r.mean)]
    folds = sorted({r.fold for r in arm} & {r.fold for r in reference})
    arm = [r for r in arm if r.fold in folds]
    reference = [r for r in reference if r.fold in folds]
    n_a, n_r = len(arm), len(reference)
    if not n_a or not n_r:
        return _undefined(float("nan"), n_a, n_r, 0, "no run with a value on both sides")
    runs = arm + reference
    y = np.array([r.mean for r in runs], float)
    x_arm = np.array([1.0] * n_a + [0.0] * n_r)
    columns = [np.ones(len(runs)), x_arm] + [np.array([r.fold == f for r in runs], float) for f in folds[1:]]
    X = np.column_stack(columns)
    df = len(runs) - X.shape[1]
    # the estimate is defined with one run per side and fold; the interval needs residual degrees of freedom
    fit = sm.OLS(y, X).fit()
    estimate = float(fit.params[1])
    if df < 1:
        return _undefined(estimate, n_a, n_r, df, "one run per arm and fold: no between-run variance")
    if not fit.ssr > 1e-24 * max(1.0, float(np.sum(y ** 2))):
        return _undefined(estimate, n_a, n_r, df, "no between-run variance: the runs of each arm agree exactly")
    low, high = fit.conf_int(alpha)[1]
    return RunLevelDifference(estimate, float(low), float(high), float(fit.pvalues[1]), n_a, n_r, df)


def holm(pvalues: Sequence[float]) -> List[float]:
    """Holm's step-down adjustment (``statsmodels.stats.multitest.multipletests``) over the finite p-values;
    NaN (undefined) stays NaN and does not count in the family."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, float)
    out = np.full(len(p), np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out.tolist()


# -------------------------------------------------------------------------------------------------------- take-off
@dataclasses.dataclass(frozen=True)
class TakeOff:
    """How many of an arm's runs took off (their final model predicted a lesion in at least one validation
    patient); ``failed`` names the others; ``p_value``: Fisher's exact test against the reference's rate (NaN for
    the reference itself)."""

    group: str
    n_runs: int
    n_took_off: int
    failed: Tuple[str, ...]
    reference: str = ""
    p_value: float = float("nan")

    @property
    def rate(self) -> float:
        return self.n_took_off / self.n_runs if self.n_runs else float("nan")


def fisher_take_off(arm: TakeOff, reference: TakeOff) -> TakeOff:
    """``arm`` with Fisher's exact two-sided p-value of its take-off rate against ``reference``'s."""
    from scipy.stats import fisher_exact

    table = [[arm.n_took_off, arm.n_runs - arm.n_took_off],
             [reference.n_took_off, reference.n_runs - reference.n_took_off]]
    p = float(fisher_exact(table).pvalue) if arm.n_runs and reference.n_runs else float("nan")
    return dataclasses.replace(arm, reference=reference.group, p_value=p)


# ------------------------------------------------------------------------------------------------------------ A/A
def aa_split(runs: Sequence[RunMean], seed_of: Mapping[str, str]) -> Tuple[List[RunMean], List[RunMean]]:
    """The baseline's runs split into two pseudo-arms by seed: sorted seeds alternate between the halves (so both
    halves hold every fold of a seed together). ``seed_of``: run -> seed label."""
    seeds = sorted({seed_of[r.run] for r in runs}, key=lambda s: (len(s), s))
    first = set(seeds[0::2])
    return [r for r in runs if seed_of[r.run] in first], [r for r in runs if seed_of[r.run] not in first]


# ------------------------------------------------------------------------------------------------ simulation/power
@dataclasses.dataclass(frozen=True)
class SimulationDesign:
    """A study of two arms on the same patients (one fold): patient difficulty shared by every run, a random
    offset per run (seed variance), independent noise per run and patient, and a true arm ``effect``."""

    n_runs_per_arm: int = 3
    n_patients: int = 20
    sd_patient: float = 0.15
    sd_run: float = 0.05
    sd_noise: float = 0.10
    effect: float = 0.0


def simulate_studies(design: SimulationDesign, n_studies: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_studies, 2, n_runs_per_arm, n_patients)`` per-run, per-patient values (arm 0 carries the effect)."""
    d = design
    shape = (n_studies, 2, d.n_runs_per_arm, d.n_patients)
    patient = rng.normal(0.0, d.sd_patient, (n_studies, 1, 1, d.n_patients))
    run = rng.normal(0.0, d.sd_run, (n_studies, 2, d.n_runs_per_arm, 1))
    values = 0.6 + patient + run + rng.normal(0.0, d.sd_noise, shape)
    values[:, 0] += d.effect
    return values


def rejection_rate(values: np.ndarray, alpha: float = ALPHA) -> float:
    """Share of simulated studies in which :func:`run_level_difference` (the analysis the reports use) rejects
    "no difference" at ``alpha``."""
    rejected = 0
    for study in values:
        means = study.mean(axis=2)  # (2 arms, runs): each run's mean over its patients
        arm = [RunMean(f"a{i}", "0", float(m), study.shape[2]) for i, m in enumerate(means[0])]
        ref = [RunMean(f"r{i}", "0", float(m), study.shape[2]) for i, m in enumerate(means[1])]
        rejected += run_level_difference(arm, ref, alpha).p_value < alpha
    return rejected / len(values)


def minimum_detectable_difference(sd_run_means: float, n_runs_per_arm: int, alpha: float = ALPHA,
                                  power: float = 0.8) -> float:
    """Smallest true difference of run means that a two-sided two-sample t-test on ``n_runs_per_arm`` runs per
    arm detects with ``power`` (statsmodels ``TTestIndPower``), given the sd of run means; NaN when undefined."""
    from statsmodels.stats.power import TTestIndPower

    if n_runs_per_arm < 2 or not (sd_run_means > 0 and math.isfinite(sd_run_means)):
        return float("nan")
    effect = TTestIndPower().solve_power(nobs1=n_runs_per_arm, alpha=alpha, power=power, ratio=1.0)
    return float(effect * sd_run_means)


def describe(d: RunLevelDifference, digits: int = 3) -> str:
    """``+0.012 [-0.030, +0.054]``, or the estimate with ``(interval undefined: reason)``."""
    if not math.isfinite(d.estimate):
        return f"undefined ({d.undefined})"
    est = f"{d.estimate:+.{digits}f}"
    if d.undefined:
        return f"{est} (interval undefined: {d.undefined})"
    return f"{est} [{d.ci_low:+.{digits}f}, {d.ci_high:+.{digits}f}]"


