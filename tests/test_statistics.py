"""Run-level statistics: calibration (A/A), power, the mixed-model equivalence, undefined cases, Holm, take-off."""
import math
import warnings

import numpy as np
import pytest

from clips_nnunet.evaluation.statistics import (RunLevelDifference, RunMean, SimulationDesign, TakeOff, aa_split,
                                                describe, fisher_take_off, holm, minimum_detectable_difference,
                                                rejection_rate, run_level_difference, simulate_studies)


def _runs(prefix, values, fold="0"):
    return [RunMean(f"{prefix}{i}", fold, float(v), 10) for i, v in enumerate(values)]


def test_false_positive_rate_of_the_run_level_analysis_is_calibrated():
    """2000 simulated studies with seed variance and no effect: the analysis the reports use rejects <= 6 %."""
    values = simulate_studies(SimulationDesign(), 2000, np.random.default_rng(2026))
    rate = rejection_rate(values)
    assert 0.02 <= rate <= 0.06, rate


def test_the_old_seed_averaged_patient_test_fails_the_same_calibration():
    """The rule this replaced (paired Wilcoxon over seed-averaged patients) calls seed noise an effect: the
    calibration test above would fail on it."""
    from scipy.stats import wilcoxon

    values = simulate_studies(SimulationDesign(), 500, np.random.default_rng(7))
    rate = np.mean([wilcoxon(s[0].mean(axis=0), s[1].mean(axis=0)).pvalue < 0.05 for s in values])
    assert rate > 0.2, rate


def test_power_with_a_known_effect_is_reported(capsys):
    """A true difference of 0.15 (3 x the run sd) with 5 runs per arm is found most of the time; the rate agrees
    with statsmodels' power of the t-test on run means."""
    from statsmodels.stats.power import TTestIndPower

    design = SimulationDesign(n_runs_per_arm=5, effect=0.15)
    power = rejection_rate(simulate_studies(design, 1000, np.random.default_rng(11)))
    sd_means = math.sqrt(design.sd_run ** 2 + design.sd_noise ** 2 / design.n_patients)
    expected = TTestIndPower().power(design.effect / sd_means, nobs1=5, alpha=0.05)
    print(f"power at effect {design.effect} with 5 runs per arm: simulated {power:.3f}, t-test {expected:.3f}")
    assert abs(power - expected) < 0.05 and power > 0.8


def test_equals_the_mixed_model_with_patient_and_run_intercepts():
    """statsmodels MixedLM value ~ arm + (1|patient) + (1|run) (REML) gives the same estimate and standard error
    as the OLS on run means for a balanced design."""
    import pandas as pd
    import statsmodels.formula.api as smf
    from scipy.stats import t as t_dist

    study = simulate_studies(SimulationDesign(n_runs_per_arm=4, effect=0.05), 1, np.random.default_rng(3))[0]
    rows = [{"arm": float(a == 0), "run": f"{a}-{r}", "patient": p, "y": study[a, r, p], "g": 1}
            for a in range(2) for r in range(4) for p in range(study.shape[2])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = smf.mixedlm("y ~ arm", pd.DataFrame(rows), groups="g",
                          vc_formula={"run": "0 + C(run)", "patient": "0 + C(patient)"}).fit(reml=True)
    means = study.mean(axis=2)
    d = run_level_difference(_runs("a", means[0]), _runs("r", means[1]))
    se = (d.ci_high - d.ci_low) / 2 / t_dist.ppf(0.975, d.df_resid)
    assert d.estimate == pytest.approx(fit.params["arm"], abs=1e-9)
    assert se == pytest.approx(fit.bse["arm"], rel=0.01)


def test_known_values_and_fold_effects():
    d = run_level_difference(_runs("a", [0.5, 0.7]), _runs("r", [0.3, 0.5]))
    assert d.estimate == pytest.approx(0.2) and d.df_resid == 2
    # pooled two-sample t: se = sqrt(0.02 * (1/2 + 1/2)) = 0.1414, t = 1.414 on 2 df
    assert d.p_value == pytest.approx(0.2929, abs=1e-3)
    # a fold offset common to both arms does not enter the difference
    d2 = run_level_difference(_runs("a", [0.5, 0.7]) + _runs("A", [0.9, 1.1], "1"),
                              _runs("r", [0.3, 0.5]) + _runs("R", [0.7, 0.9], "1"))
    assert d2.estimate == pytest.approx(0.2) and d2.df_resid == 5


def test_undefined_results_are_said_in_words():
    one = run_level_difference(_runs("a", [0.6]), _runs("r", [0.5]))
    assert one.estimate == pytest.approx(0.1) and not one.defined and "one run per arm" in one.undefined
    same = run_level_difference(_runs("a", [0.5, 0.5]), _runs("r", [0.5, 0.5]))
    assert "runs of each arm agree exactly" in same.undefined and math.isnan(same.p_value)
    assert describe(same) == "+0.000 (interval undefined: no between-run variance: the runs of each arm agree exactly)"
    none = run_level_difference([], _runs("r", [0.5]))
    assert "nan" not in describe(none) and describe(none).startswith("undefined (")
    assert "nan" not in describe(RunLevelDifference(0.1, 0.0, 0.2, 0.04, 3, 3, 4))


def test_holm_uses_the_finite_family():
    adjusted = holm([0.01, 0.04, 0.03, float("nan")])
    assert adjusted[0] == pytest.approx(0.03) and adjusted[1] == pytest.approx(0.06)
    assert adjusted[2] == pytest.approx(0.06) and math.isnan(adjusted[3])


def test_take_off_fisher_and_aa_split():
    arm = TakeOff("cl", 6, 6, ())
    ref = TakeOff("stock", 6, 2, ("seed 1", "seed 2", "seed 3", "seed 4"))
    tested = fisher_take_off(arm, ref)
    assert tested.reference == "stock" and tested.p_value == pytest.approx(0.0606, abs=1e-3)
    runs = [RunMean(f"s{s}/f{f}", str(f), 0.5, 5) for s in (1, 2, 3, 4) for f in (0, 1)]
    a, b = aa_split(runs, {r.run: r.run.split("/")[0] for r in runs})
    assert {r.run.split("/")[0] for r in a} == {"s1", "s3"} and len(b) == 4


def test_minimum_detectable_difference():
    assert math.isnan(minimum_detectable_difference(0.05, 1))
    mdd = minimum_detectable_difference(0.05, 5)
    assert 0.08 < mdd < 0.11  # ~2.0 sd for n = 5 per arm at 80 % power
