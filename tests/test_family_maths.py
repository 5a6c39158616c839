"""Hand-computed values for every formula of the curriculum family (no nnU-Net, fast). Where a formula becomes
probabilities, the expectation targets the scheduler that training runs (CompetenceScheduler, BabyStepsScheduler)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from clips_nnunet.curriculum.bandit import case_probabilities, task_probabilities, window_slope
from clips_nnunet.curriculum.baby_steps import active_bucket_count, difficulty_buckets
from clips_nnunet.curriculum.competence import competence_count
from clips_nnunet.curriculum.dih import (dih_weights, instantaneous_hardness, poly_learning_rate, sample_subset,
                                         subset_size, update_hardness)
from clips_nnunet.curriculum.smoothing import gaussian_kernel_1d, smoothing_sigma
from clips_nnunet.curriculum.spld import spld_select
from clips_nnunet.curriculum.schedulers import BabyStepsScheduler, CompetenceScheduler
from clips_nnunet.curriculum.state import DifficultyState
from clips_nnunet.curriculum.superloss import superloss_sigma
from clips_nnunet.errors import CurriculumConfigError

OMEGA = 0.5671432904097838  # W0(1): omega * exp(omega) = 1


def test_superloss_lambert_w_closed_form():
    # beta = (l - tau)/lam; sigma* = exp(-W0(beta/2)) clipped at beta/2 = -1/e
    sigma = superloss_sigma([2.0, 0.0, -5.0, 2 * math.e, -2 / math.e], tau=0.0, lam=1.0)
    # beta/2 = 1 -> W0 = omega, sigma = exp(-omega) = omega; beta = 0 -> 1; clipped -> W0(-1/e) = -1 -> e;
    # beta/2 = e -> W0 = 1 -> 1/e; beta/2 = -1/e -> e
    np.testing.assert_allclose(sigma, [OMEGA, 1.0, math.e, 1 / math.e, math.e], rtol=1e-9)
    # tau and lambda scale: l = 3, tau = 1, lam = 1 -> beta = 2 -> omega; lam = 2 -> beta = 1 -> W0(0.5)
    assert superloss_sigma([3.0], tau=1.0, lam=1.0)[0] == pytest.approx(OMEGA)
    w_half = 0.35173371124919584  # W0(0.5)
    assert superloss_sigma([3.0], tau=1.0, lam=2.0)[0] == pytest.approx(math.exp(-w_half))
    # SL at the optimum: (l - tau) sigma + lam log(sigma)^2 = 2 omega + omega^2 (log omega = -omega)
    s_opt = superloss_sigma([2.0], 0.0, 1.0)[0]
    assert 2 * s_opt + math.log(s_opt) ** 2 == pytest.approx(2 * OMEGA + OMEGA ** 2)
    # sigma* minimises SL: any other sigma is worse
    for s in (0.4, 0.5, 0.6, 0.7):
        assert 2 * s + math.log(s) ** 2 >= 2 * OMEGA + OMEGA ** 2
    with pytest.raises(CurriculumConfigError, match="superloss_lambda"):
        superloss_sigma([1.0], 0.0, 0.0)


def test_spld_rank_rule_prefers_diversity():
    losses = [0.1, 0.5, 0.3, 0.9, 0.2]
    groups = ["A", "A", "A", "B", "B"]
    # group A sorted 0.1 (r=1: 0.25 + 0.2/1 = 0.45 yes), 0.3 (r=2: 0.25 + 0.2/(sqrt2+1) = 0.33284 yes),
    # 0.5 (r=3: 0.25 + 0.2/(sqrt3+sqrt2) = 0.31357 no); group B 0.2 (r=1 yes), 0.9 (r=2 no)
    assert spld_select(losses, groups, lam=0.25, gamma=0.2).tolist() == [True, False, True, False, True]
    # one group: 0.1 r1 yes, 0.2 r2 yes, 0.3 r3 (0.31357) yes, 0.5 r4 (0.25 + 0.2/(2+sqrt3) = 0.30359) no
    assert spld_select(losses, ["A"] * 5, 0.25, 0.2).tolist() == [True, False, True, False, True]
    # diversity: group A = [0.1, 0.2, 0.25], group B = [0.3]; lam 0.15, gamma 0.2. Grouped: A ranks 1, 2 in
    # (0.35, 0.23284), 0.25 out (r=3: 0.21357); B's 0.3 is rank 1 of its group: 0.3 < 0.35 in.
    # One group: 0.3 is rank 4 (0.15 + 0.2/(2+sqrt3) = 0.20359): out.
    assert spld_select([0.1, 0.2, 0.25, 0.3], ["A", "A", "A", "B"], 0.15, 0.2).tolist() == [True, True, False, True]
    assert spld_select([0.1, 0.2, 0.25, 0.3], ["A"] * 4, 0.15, 0.2).tolist() == [True, True, False, False]
    # gamma = 0 is plain self-paced learning: l < lam
    assert spld_select(losses, groups, 0.25, 0.0).tolist() == [True, False, False, False, True]


def _competence_plan(d, t, min_cases=1):
    """The plan CompetenceScheduler gives at progress t with linear competence c(t) = 0.1 + 0.9 t (c0 0.1, p 1)."""
    ids = [f"c{i}" for i in range(len(d))]
    s = CompetenceScheduler(ids, d, c0=0.1, p=1.0, competence_T=1.0, min_cases=min_cases)
    return s.plan(DifficultyState(ids), t, 0, None).probabilities


def test_competence_rank_cdf_and_probabilities():
    d = [0.0, 0.2, 0.2, 0.9]
    # rank CDF rank/N = [0.25, 0.5, 0.75, 1.0] (the tie at 0.2 by case order): c = 0.5 (t = 4/9) admits
    # floor(2) = 2 cases; c = 0.75 (t = 0.65 / 0.9) three; c = 1 all
    np.testing.assert_allclose(_competence_plan(d, 4 / 9), [0.5, 0.5, 0, 0])
    np.testing.assert_allclose(_competence_plan(d, 0.65 / 0.9), [1 / 3, 1 / 3, 1 / 3, 0])
    np.testing.assert_allclose(_competence_plan(d, 1.0), [0.25] * 4)
    # competence c0 = 0.1 below the easiest case's CDF still keeps min_cases
    np.testing.assert_allclose(_competence_plan(d, 0.0, min_cases=2), [0.5, 0.5, 0, 0])
    assert competence_count(0.29, 100) == 29  # 0.29 * 100 = 28.999999999999996 in floating point
    assert competence_count(0.999, 4) == 3 and competence_count(1.0, 4) == 4 and competence_count(0.0, 4, 1) == 1
    with pytest.raises(CurriculumConfigError, match="competence must be in"):
        competence_count(1.5, 4)


def test_baby_steps_buckets_are_cumulative():
    d = [0.5, 0.1, 0.9, 0.3, 0.7]
    buckets = difficulty_buckets(d, 2)
    assert [b.tolist() for b in buckets] == [[0, 1, 3], [2, 4]]
    assert active_bucket_count(0.0, 2, 0.8) == 1
    assert active_bucket_count(0.39, 2, 0.8) == 1  # 1 + floor(2 * 0.39 / 0.8) = 1 + floor(0.975)
    assert active_bucket_count(0.4, 2, 0.8) == 2
    assert active_bucket_count(1.0, 3, 0.8) == 3
    ids = [f"c{i}" for i in range(5)]
    scheduler = BabyStepsScheduler(ids, d, n_buckets=2, pacing_a=0.8)
    state = DifficultyState(ids)
    np.testing.assert_allclose(scheduler.plan(state, 0.0, 0, None).probabilities, [1 / 3, 1 / 3, 0, 1 / 3, 0])
    np.testing.assert_allclose(scheduler.plan(state, 0.5, 0, None).probabilities, [0.2] * 5)
    with pytest.raises(CurriculumConfigError, match="n_buckets"):
        difficulty_buckets(d, 6)


def test_dih_update_softmax_and_subset_size():
    np.testing.assert_allclose(update_hardness([0.5, 1.0, 0.2], [0.1, 0.4, 9.0], [True, True, False], 0.5),
                               [0.3, 0.7, 0.2])
    # beta * r / mean r = 2 * [0, 1, 2] / 1 = [0, 2, 4]: softmax = [1, e^2, e^4] / (1 + e^2 + e^4)
    total = 1 + math.e ** 2 + math.e ** 4
    np.testing.assert_allclose(dih_weights([0.0, 1.0, 2.0], beta=2.0), [1 / total, math.e ** 2 / total,
                                                                         math.e ** 4 / total])
    # the paper's code: a = |l - l'| / (sum of learning rates since the last visit); no step, no hardness
    np.testing.assert_allclose(instantaneous_hardness([3.0, 1.0, 2.0], [1.0, 1.5, 0.0], [0.5, 0.01, 0.0]),
                               [4.0, 50.0, 0.0])
    assert poly_learning_rate(5, 0.01, 10) == pytest.approx(0.01 * 0.5 ** 0.9)  # nnU-Net's PolyLRScheduler
    assert poly_learning_rate(0, 0.01, 10) == 0.01 and poly_learning_rate(10, 0.01, 10) == 0.0
    np.testing.assert_allclose(dih_weights([0.0, 0.0], beta=2.0), [0.5, 0.5])
    assert subset_size(10, 0, 0.5, 0.3) == 10
    assert subset_size(10, 1, 0.5, 0.3) == 5
    assert subset_size(10, 2, 0.5, 0.3) == 3  # ceil(2.5) = 3 = floor ceil(3.0)
    assert subset_size(10, 5, 0.5, 0.3) == 3
    rng = np.random.default_rng(0)
    subset = sample_subset(np.array([0.0, 0.0, 1.0, 1.0, 1.0]), 2, rng)
    assert len(subset) == 2 and set(subset.tolist()) <= {2, 3, 4}


def test_bandit_slope_and_boltzmann():
    assert window_slope([0, 1, 2], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert window_slope([0, 1, 2, 3], [1.0, 1.0, 2.0, 2.0]) == pytest.approx(0.4)  # sum(xc*yc)/sum(xc^2) = 2/5
    assert math.isnan(window_slope([3], [1.0]))
    # |s| = [1, 0.5, nan -> 1]; Boltzmann alone (Matiisen et al.): z = |s| / (tau max|s|) = [1, 0.5, 1]
    p = task_probabilities([-1.0, 0.5, float("nan")], "boltzmann", tau=1.0)
    e1, eh = math.e, math.exp(0.5)
    np.testing.assert_allclose(p, [e1 / (2 * e1 + eh), eh / (2 * e1 + eh), e1 / (2 * e1 + eh)])
    # epsilon-greedy alone: the two tied best tasks share 1 - eps, every task gets eps / 3
    np.testing.assert_allclose(task_probabilities([-1.0, 0.5, float("nan")], "epsilon_greedy", epsilon=0.3),
                               [0.35 + 0.1, 0.1, 0.35 + 0.1])
    with pytest.raises(CurriculumConfigError, match="bandit exploration must be one of"):
        task_probabilities([1.0], "both")
    np.testing.assert_allclose(case_probabilities([0.75, 0.25], [np.array([0, 2]), np.array([1])], 3),
                               [0.375, 0.25, 0.375])


def test_smoothing_schedule_and_kernel():
    assert smoothing_sigma(0, 100) == 1.0
    assert smoothing_sigma(10, 100, 1.0, 0.9, 5) == pytest.approx(0.81)
    assert smoothing_sigma(45, 100, 1.0, 0.9, 5, sigma_min=0.5) == 0.0  # 0.9^9 = 0.387 < 0.5
    assert smoothing_sigma(45, 100, 1.0, 0.9, 5, sigma_min=0.1) == pytest.approx(0.9 ** 9)
    assert smoothing_sigma(50, 100) == 0.0  # zero_after = 0.5
    k = gaussian_kernel_1d(1.0)  # radius ceil(2 * 1) = 2: exp(-x^2/2) for x = -2..2, normalised
    raw = np.array([math.exp(-2), math.exp(-0.5), 1.0, math.exp(-0.5), math.exp(-2)])
    np.testing.assert_allclose(k, raw / raw.sum())
    np.testing.assert_allclose(gaussian_kernel_1d(0.0), [1.0])
