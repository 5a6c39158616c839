"""Schedulers: self-paced (hard/linear/mixture), ordered pacing, random and anti controls, finalisation."""
import json

import numpy as np
import pytest

from clips_nnunet.curriculum.schedulers import (OrderedPacingScheduler, SelfPacedScheduler, finalize_probabilities,
                                                make_anti_control, make_random_control, sampling_entropy)
from clips_nnunet.curriculum.state import DifficultyState
from clips_nnunet.errors import CurriculumConfigError

IDS = ["a", "b", "c", "d"]


def _state(losses=(0.4, 0.1, 0.3, 0.2)):
    s = DifficultyState(IDS, ema_alpha=1.0)
    s.update(IDS, list(losses), epoch=0)
    return s


def test_finalize_probabilities():
    np.testing.assert_allclose(finalize_probabilities([0, 1, 0, 1], 0.2, warmup=False), [0.05, 0.45, 0.05, 0.45])
    np.testing.assert_allclose(finalize_probabilities([0, 1, 0, 3], 0.2, warmup=True), [0.25] * 4)
    np.testing.assert_allclose(finalize_probabilities([0, 0, 0, 0], 0.0, warmup=False), [0.25] * 4)
    with pytest.raises(CurriculumConfigError, match="exploration_epsilon"):
        finalize_probabilities([1, 1], 1.5, warmup=False)
    assert sampling_entropy([0.25] * 4) == pytest.approx(np.log(4))


def test_self_paced_hard_admits_lowest_losses():
    sch = SelfPacedScheduler(IDS, pacing="linear", pacing_a=1.0, pacing_b=0.5, min_cases=1, scheme="hard")
    rng = np.random.default_rng(0)
    plan = sch.plan(_state(), progress=0.0, epoch=5, rng=rng)       # n = 2: b (0.1) and d (0.2)
    np.testing.assert_allclose(plan.probabilities, [0, 0.5, 0, 0.5])
    assert plan.threshold == pytest.approx(0.25) and plan.active_fraction == 0.5
    plan = sch.plan(_state(), progress=1.0, epoch=9, rng=rng)
    np.testing.assert_allclose(plan.probabilities, [0.25] * 4)
    assert plan.threshold == pytest.approx(0.5)                   # 0.4 + mean gap 0.1


def test_self_paced_linear_weights_after_shift():
    sch = SelfPacedScheduler(IDS, pacing="linear", pacing_a=1.0, pacing_b=0.5, min_cases=1, scheme="linear")
    plan = sch.plan(_state(), 0.0, 0, np.random.default_rng(0))
    # shifted losses [0.3, 0, 0.2, 0.1], lam 0.15 -> weights [0, 1, 0, 1/3] -> [0, 0.75, 0, 0.25]
    np.testing.assert_allclose(plan.probabilities, [0, 0.75, 0, 0.25])


def test_self_paced_mixture():
    sch = SelfPacedScheduler(IDS, pacing="linear", pacing_a=1.0, pacing_b=0.5, min_cases=1, scheme="mixture",
                             lam_prime_quantile=0.5)
    plan = sch.plan(_state(), 1.0, 0, np.random.default_rng(0))
    # shifted [0.3, 0, 0.2, 0.1], lam 0.4, lam' 0.15, zeta 0.24 -> [0.2, 1, 0.6, 1] / 2.8
    np.testing.assert_allclose(plan.probabilities, np.array([0.2, 1, 0.6, 1]) / 2.8)
    assert plan.extra["lam_prime"] == pytest.approx(0.25)


def test_self_paced_works_with_negative_dice_ce_losses():
    sch = SelfPacedScheduler(IDS, pacing="linear", pacing_a=1.0, pacing_b=0.5, min_cases=1, scheme="linear")
    plan = sch.plan(_state((-0.6, -0.9, -0.7, -0.8)), 0.0, 0, np.random.default_rng(0))
    np.testing.assert_allclose(plan.probabilities, [0, 0.75, 0, 0.25])


def test_ordered_and_anti():
    sch = OrderedPacingScheduler(IDS, [3, 1, 2, 0], "linear", 1.0, 0.5, 1)
    np.testing.assert_allclose(sch.plan(_state(), 0.0, 0, None).probabilities, [0, 0.5, 0, 0.5])
    anti = make_anti_control(IDS, [3, 1, 2, 0], "linear", 1.0, 0.5, 1)
    np.testing.assert_allclose(anti.plan(_state(), 0.0, 0, None).probabilities, [0.5, 0, 0.5, 0])
    dyn_anti = make_anti_control(IDS, None, "linear", 1.0, 0.5, 1)   # hardest current EMA losses: a, c
    np.testing.assert_allclose(dyn_anti.plan(_state(), 0.0, 0, None).probabilities, [0.5, 0, 0.5, 0])


def test_random_control_fixed_order_saved_in_state():
    ids = [f"case_{i}" for i in range(20)]
    s = DifficultyState(ids)
    a = make_random_control(ids, "linear", 1.0, 0.25, 1)
    p0 = a.plan(s, 0.0, 0, np.random.default_rng(7)).probabilities
    p0_again = a.plan(s, 0.0, 1, np.random.default_rng(999)).probabilities   # order drawn once, kept
    np.testing.assert_array_equal(p0, p0_again)
    assert int((p0 > 0).sum()) == 5
    b = make_random_control(ids, "linear", 1.0, 0.25, 1)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    np.testing.assert_array_equal(b.plan(s, 0.0, 0, np.random.default_rng(1)).probabilities, p0)
    c = make_random_control(ids, "linear", 1.0, 0.25, 1)
    np.testing.assert_array_equal(c.plan(s, 0.0, 0, np.random.default_rng(7)).probabilities, p0)  # seeded
    # a growing admitted set: every case admitted at t=0.5 stays admitted at t=1
    p_half = a.plan(s, 0.5, 2, None).probabilities
    assert set(np.flatnonzero(p0)) <= set(np.flatnonzero(p_half))


def test_scheduler_validation():
    with pytest.raises(CurriculumConfigError, match="pacing_a must be in \\(0, 1\\], got 1.5"):
        SelfPacedScheduler(IDS, pacing_a=1.5)
    with pytest.raises(CurriculumConfigError, match="spl_scheme"):
        SelfPacedScheduler(IDS, scheme="soft")
    with pytest.raises(CurriculumConfigError, match="no cases"):
        SelfPacedScheduler([])
    with pytest.raises(CurriculumConfigError, match="order_scores has 3 values for 4 cases"):
        OrderedPacingScheduler(IDS, [1, 2, 3])
    sch = SelfPacedScheduler(IDS)
    with pytest.raises(CurriculumConfigError, match="different case ids"):
        sch.plan(DifficultyState(["x"]), 0.0, 0, np.random.default_rng(0))


def test_loss_weights_for_soft_spl_use_last_plan():
    sch = SelfPacedScheduler(IDS, pacing="linear", pacing_a=1.0, pacing_b=0.5, min_cases=1, scheme="linear")
    np.testing.assert_array_equal(sch.loss_weights([5.0, -1.0]), [1.0, 1.0])      # no plan yet
    sch.plan(_state(), 0.0, 0, np.random.default_rng(0))                        # shift 0.1, lam 0.25
    # batch losses 0.1 -> 1, 0.175 -> 1 - 0.075/0.15 = 0.5, 0.3 -> 0, 0.0 (below the shift) -> 1
    np.testing.assert_allclose(sch.loss_weights([0.1, 0.175, 0.3, 0.0]), [1.0, 0.5, 0.0, 1.0])
    log = SelfPacedScheduler(IDS, pacing="linear", pacing_a=1.0, pacing_b=0.5, min_cases=1, scheme="logarithmic")
    log.plan(_state(), 0.0, 0, np.random.default_rng(0))   # range [0.1, 0.4], lam 0.25 -> 0.5 scaled, zeta 0.5
    np.testing.assert_allclose(log.loss_weights([0.1, 0.175, 0.4]), [1.0, np.log(0.75) / np.log(0.5), 0.0])


def test_self_paced_admits_exactly_n_with_ties_broken_by_rng():
    ids = [f"c{i}" for i in range(6)]
    s = DifficultyState(ids, ema_alpha=1.0)
    s.update(["c0", "c1", "c2"], [0.1, 0.5, 0.9], epoch=0)          # c3..c5 unseen -> median 0.5, tied with c1
    sch = SelfPacedScheduler(ids, pacing="linear", pacing_a=1.0, pacing_b=0.5, min_cases=1, scheme="hard")
    p = sch.plan(s, 0.0, 1, np.random.default_rng(3)).probabilities  # n = 3: c0 + two of the four tied at 0.5
    assert int((p > 0).sum()) == 3 and p[0] > 0 and p[2] == 0
    again = sch.plan(s, 0.0, 1, np.random.default_rng(3)).probabilities
    np.testing.assert_array_equal(p, again)                          # same rng -> same tie-break (DDP ranks)
