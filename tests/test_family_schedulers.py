"""Family schedulers: plans with hand-checkable values, controls, JSON-safe state round trips (fast, no nnU-Net)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from clips_nnunet.curriculum.schedulers import (BabyStepsScheduler, CompetenceScheduler, DIHScheduler,
                                                FixedOrderPacingScheduler, SmoothingScheduler, SPLDScheduler,
                                                SuperLossScheduler, TeacherStudentScheduler, with_control)
from clips_nnunet.curriculum.state import DifficultyState
from clips_nnunet.errors import CurriculumConfigError

IDS = [f"c{i}" for i in range(10)]
D = np.arange(10) / 9.0  # c0 easiest


def rng():
    return np.random.default_rng(0)


def roundtrip(s, new):
    new.load_state_dict(json.loads(json.dumps(s.state_dict())))
    return new


def test_fixed_order_curriculum_random_anti():
    state = DifficultyState(IDS)
    s = FixedOrderPacingScheduler(IDS, D, pacing="linear", pacing_a=1.0, pacing_b=0.3)
    p = s.plan(state, 0.0, 0, rng()).probabilities  # b = 0.3 -> the 3 easiest
    np.testing.assert_allclose(p, [1 / 3] * 3 + [0] * 7)
    np.testing.assert_allclose(s.plan(state, 0.5, 5, rng()).probabilities, [1 / 7] * 7 + [0] * 3)  # ceil(10*0.65)
    anti = with_control(FixedOrderPacingScheduler(IDS, D, pacing="linear", pacing_a=1.0, pacing_b=0.3), "anti")
    np.testing.assert_allclose(anti.plan(state, 0.0, 0, rng()).probabilities, [0] * 7 + [1 / 3] * 3)
    rand = with_control(FixedOrderPacingScheduler(IDS, D, pacing="linear", pacing_a=1.0, pacing_b=0.3), "random")
    p1 = rand.plan(state, 0.0, 0, rng()).probabilities
    assert (p1 > 0).sum() == 3
    # the order is drawn once and kept: a resumed copy with another rng gives the same admitted set
    again = roundtrip(rand, with_control(FixedOrderPacingScheduler(IDS, D, "linear", 1.0, 0.3), "random"))
    np.testing.assert_allclose(again.plan(state, 0.0, 0, np.random.default_rng(99)).probabilities, p1)
    # the 3 admitted by random order should not always be the easiest 3 (prob. of that is 1/120)
    assert not np.allclose(p1, [1 / 3] * 3 + [0] * 7)


def test_hacohen_exponential_pacing_per_epoch():
    state = DifficultyState(IDS)
    s = FixedOrderPacingScheduler(IDS, D, pacing="hacohen", hacohen_start=0.2, hacohen_increase=2.0,
                                  hacohen_step=3, min_cases=1)
    # g(i) = min(0.2 * 2^floor(i/3), 1) * 10: i=0..2 -> 2, i=3 -> 4, i=6 -> 8, i=9 -> 10
    assert [int((s.plan(state, 0.0, i, rng()).probabilities > 0).sum()) for i in (0, 2, 3, 6, 9)] == [2, 2, 4, 8, 10]
    slow = FixedOrderPacingScheduler(IDS, D, pacing="hacohen", hacohen_start=0.2, hacohen_increase=1.1,
                                     hacohen_step=100, min_cases=1)
    assert int((slow.plan(state, 1.0, 50, rng()).probabilities > 0).sum()) == 10  # every case at t = 1


def test_competence_scheduler():
    state = DifficultyState(IDS)
    s = CompetenceScheduler(IDS, D, c0=0.1, p=2.0, competence_T=1.0, min_cases=1)
    # c(0.5) = sqrt(0.5 * 0.99 + 0.01) = 0.71063: floor(7.1063) = 7 cases (rank CDF 0.1..0.7)
    plan = s.plan(state, 0.5, 5, rng())
    assert plan.threshold == pytest.approx(math.sqrt(0.505))
    np.testing.assert_allclose(plan.probabilities, [1 / 7] * 7 + [0] * 3)
    anti = with_control(CompetenceScheduler(IDS, D, 0.1, 2.0, 1.0, 1), "anti")
    np.testing.assert_allclose(anti.plan(state, 0.5, 5, rng()).probabilities, [0] * 3 + [1 / 7] * 7)


def test_baby_steps_scheduler():
    state = DifficultyState(IDS)
    s = BabyStepsScheduler(IDS, D, n_buckets=2, pacing_a=0.8)
    np.testing.assert_allclose(s.plan(state, 0.1, 1, rng()).probabilities, [0.2] * 5 + [0] * 5)
    np.testing.assert_allclose(s.plan(state, 0.4, 4, rng()).probabilities, [0.1] * 10)


def test_dih_prefers_cases_whose_loss_changes_per_unit_learning_rate():
    state = DifficultyState(IDS, ema_alpha=0.3)
    s = DIHScheduler(IDS, gamma=0.5, beta=50.0, shrink=0.5, floor=0.2, warmup_epochs=1, min_cases=1,
                     initial_lr=0.01, num_epochs=10)
    state.update(IDS, np.ones(10), epoch=0)
    p0 = s.plan(state, 0.1, 1, rng()).probabilities  # epoch 1 - warmup 1 = 0 -> all cases
    np.testing.assert_allclose(p0, [0.1] * 10)
    # cases 7, 8, 9 change their RAW loss a lot (the EMA, alpha 0.3, would change less), the others not at all
    state.update(IDS, [1.0] * 7 + [3.0, 4.0, 5.0], epoch=1)
    plan = s.plan(state, 0.2, 3, rng())  # epoch 3 -> k = max(ceil(10 * 0.25), 2) = 3
    assert plan.extra["n_active"] == 3
    np.testing.assert_allclose(plan.probabilities, [0] * 7 + [1 / 3] * 3)  # beta = 50: the 3 hardest
    # a = |l - l'| / sum of the learning rates since the last visit: epoch 0 only, lr(0) = 0.01
    np.testing.assert_allclose(s.hardness, [0] * 7 + [200.0, 300.0, 400.0])  # first change initialises r
    state.update(IDS, [1.0] * 7 + [3.0, 4.0, 1.0], epoch=3)  # case 9 changes by 4 over epochs 1 and 2
    s.plan(state, 0.3, 4, rng())
    lr12 = 0.01 * (0.9 ** 0.9 + 0.8 ** 0.9)  # poly lr(e) = 0.01 (1 - e/10)^0.9 for e = 1, 2
    np.testing.assert_allclose(s.hardness[7:], [0.5 * 200.0, 0.5 * 300.0, 0.5 * 4 / lr12 + 0.5 * 400.0])
    copy = roundtrip(s, DIHScheduler(IDS, 0.5, 50.0, 0.5, 0.2, 1, 1, 0.01, 10))
    np.testing.assert_allclose(copy.hardness, s.hardness)
    anti = with_control(DIHScheduler(IDS, 0.5, 50.0, 0.5, 0.2, 1, 1, 0.01, 10), "anti")
    anti.load_state_dict({"arm": s.state_dict()})
    admitted = np.flatnonzero(anti.plan(state, 0.3, 4, rng()).probabilities)
    assert admitted.size == 2 and set(admitted) <= set(range(7))  # the least hard, as many as the arm (k = 2)


def test_superloss_weights_use_running_mean_tau():
    state = DifficultyState(IDS[:4], ema_alpha=1.0)
    s = SuperLossScheduler(IDS[:4], lam=1.0)
    s.plan(state, 0.0, 0, rng())
    assert s.loss_weights([5.0, -5.0]) is None  # nothing seen yet: no weighting (the unweighted loss)
    state.update(IDS[:4], [0.0, 1.0, 2.0, 3.0], epoch=0)
    plan = s.plan(state, 0.1, 1, rng())
    assert plan.threshold == pytest.approx(1.5)
    omega = 0.5671432904097838
    # l = 3.5 -> beta = 2 -> sigma = omega; l = 1.5 -> 1; l = -10 -> clipped -> e
    np.testing.assert_allclose(s.loss_weights([3.5, 1.5, -10.0]), [omega, 1.0, math.e])
    np.testing.assert_allclose(s.loss_weights([np.nan, 1.5]), [0.0, 1.0])  # a non-finite loss: weight 0
    anti = with_control(SuperLossScheduler(IDS[:4], lam=1.0), "anti")
    anti.plan(state, 0.1, 1, rng())
    # anti pairs case 0 with case 3 and case 3 with case 0 (EMA losses 0 and 3): -0.5 -> -0.5 + 3 = 2.5 -> beta = 1
    # -> sigma = exp(-W0(0.5)) = W0(0.5) / 0.5; 4.5 -> 4.5 - 3 = 1.5 = tau -> 1
    w0_half = 0.35173371124919584
    np.testing.assert_allclose(anti.loss_weights([-0.5, 4.5], [IDS[0], IDS[3]]), [w0_half / 0.5, 1.0])
    rand = with_control(SuperLossScheduler(IDS[:4], lam=1.0), "random")
    order = rand.plan(state, 0.1, 1, rng()).ranking
    partner = np.empty(4, dtype=np.int64)
    partner[order] = [0, 1, 2, 3]  # the arm ranks the cases by ascending EMA loss 0, 1, 2, 3
    losses = np.array([3.5, 1.5, -10.0])
    np.testing.assert_allclose(rand.loss_weights(losses, IDS[:3]),
                               s.loss_weights(losses + partner[:3] - np.arange(3.0)))
    copy = roundtrip(s, SuperLossScheduler(IDS[:4], lam=1.0))
    assert copy.tau == pytest.approx(1.5)


def test_spld_scheduler_groups():
    ids = IDS[:6]
    groups = ["A", "A", "A", "A", "B", "B"]
    state = DifficultyState(ids, ema_alpha=1.0)
    state.update(ids, [0.0, 0.1, 0.2, 0.3, 0.9, 1.0], epoch=0)
    s = SPLDScheduler(ids, groups, pacing="linear", pacing_a=1.0, pacing_b=0.3, min_cases=1, gamma_rel=0.3)
    plan = s.plan(state, 0.0, 1, rng())
    # n = ceil(0.3 * 6) = 2 -> lam = (0.1 + 0.2)/2 = 0.15; gamma = 0.3 * 1.0 = 0.3
    # A: 0.0 (r1, 0.45) in, 0.1 (r2, 0.15 + 0.12426) in, 0.2 (r3, 0.15 + 0.09535) in, 0.3 (r4, 0.15+0.0804) out
    # B: 0.9 (r1, 0.45) out -> without diversity bonus large enough, B contributes nothing
    assert plan.threshold == pytest.approx(0.15)
    np.testing.assert_allclose(plan.probabilities, [1 / 3] * 3 + [0] * 3)
    s2 = SPLDScheduler(ids, groups, "linear", 1.0, 0.3, 1, gamma_rel=0.8)
    # gamma = 0.8: B's 0.9 (r1: 0.15 + 0.8 = 0.95) in; A r4 0.3 < 0.15 + 0.8/(2+sqrt3) = 0.3644 in
    np.testing.assert_allclose(s2.plan(state, 0.0, 1, rng()).probabilities, [0.2] * 5 + [0])
    rand = with_control(SPLDScheduler(ids, groups, "linear", 1.0, 0.3, 1, gamma_rel=0.8), "random")
    p = rand.plan(state, 0.0, 1, rng()).probabilities
    assert (p[:4] > 0).sum() == 4 and (p[4:] > 0).sum() == 1  # the arm's count per group
    anti = with_control(SPLDScheduler(ids, groups, "linear", 1.0, 0.3, 1, gamma_rel=0.3), "anti")
    np.testing.assert_allclose(anti.plan(state, 0.0, 1, rng()).probabilities, [0, 1 / 3, 1 / 3, 1 / 3, 0, 0])


def test_spld_gamma_grows_with_the_admitted_count():
    ids = IDS[:6]
    state = DifficultyState(ids, ema_alpha=1.0)
    state.update(ids, [0.0, 0.1, 0.2, 0.3, 0.9, 1.0], epoch=0)
    s = SPLDScheduler(ids, ["A"] * 6, "linear", 1.0, 0.3, 1, gamma_rel=0.3)
    assert s.plan(state, 0.0, 1, rng()).extra["gamma"] == pytest.approx(0.3)  # n(0) = 2
    # t = 0.5: g = 0.3 + 0.7 * 0.5 = 0.65, n = ceil(3.9) = 4 = 2 n(0): gamma = 0.3 * 1.0 * 4 / 2
    assert s.plan(state, 0.5, 2, rng()).extra["gamma"] == pytest.approx(0.6)


def test_teacher_student_prefers_fast_changing_bucket():
    state = DifficultyState(IDS, ema_alpha=1.0)
    s = TeacherStudentScheduler(IDS, D, n_buckets=2, window=3, exploration="boltzmann", temperature=0.1)
    first = s.plan(state, 0.0, 0, rng())
    np.testing.assert_allclose(first.extra["task_probabilities"], [0.5, 0.5])  # no history: equal
    for epoch in range(3):  # bucket 0 (c0..c4) loss drops by 1 per epoch; bucket 1 stays
        state.update(IDS, [5.0 - epoch] * 5 + [2.0] * 5, epoch)
        plan = s.plan(state, 0.1 * (epoch + 1), epoch + 1, rng())
    np.testing.assert_allclose(s.slopes(), [-1.0, 0.0])
    # softmax(|s| / (0.1 * 1)) = softmax([10, 0])
    p0 = 1 / (1 + math.exp(-10))
    np.testing.assert_allclose(plan.extra["task_probabilities"], [p0, 1 - p0])
    np.testing.assert_allclose(plan.probabilities[:5], [p0 / 5] * 5)
    copy = roundtrip(s, TeacherStudentScheduler(IDS, D, 2, 3, "boltzmann", 0.1))
    np.testing.assert_allclose(copy.slopes(), [-1.0, 0.0])
    anti = with_control(TeacherStudentScheduler(IDS, D, 2, 3, "boltzmann", 0.1), "anti")
    anti.load_state_dict({"arm": s.state_dict()})
    # the teacher's probabilities, moved to the reversed difficulty order: the hard bucket gets p0 / 5 per case
    np.testing.assert_allclose(anti.plan(state, 0.4, 4, rng()).probabilities, [(1 - p0) / 5] * 5 + [p0 / 5] * 5)


def test_smoothing_scheduler_and_bad_config():
    s = SmoothingScheduler(IDS, num_epochs=100)
    plan = s.plan(DifficultyState(IDS), 0.1, 10, rng())
    assert plan.extra["sigma"] == pytest.approx(0.81)
    np.testing.assert_allclose(plan.probabilities, [0.1] * 10)
    with pytest.raises(CurriculumConfigError, match="order must be one of"):
        with_control(FixedOrderPacingScheduler(IDS, D), "backwards")
    with pytest.raises(CurriculumConfigError, match="no case order"):
        with_control(s, "anti")
    with pytest.raises(CurriculumConfigError, match="10 training cases"):
        CompetenceScheduler(IDS, D[:5])
    with pytest.raises(CurriculumConfigError, match="c0"):
        CompetenceScheduler(IDS, D, c0=0.0)
    with pytest.raises(CurriculumConfigError, match="competence_T must be in"):
        CompetenceScheduler(IDS, D, competence_T=1.5)
