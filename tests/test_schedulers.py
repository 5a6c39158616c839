"""Schedulers: self-paced (hard/linear/log/mixture), ordered pacing, random and anti controls, finalisation."""
import json
import math

import numpy as np
import pytest

from clips_nnunet.curriculum.schedulers import (FixedOrderPacingScheduler, SelfPacedScheduler, SmoothingScheduler,
                                                finalize_probabilities, sampling_entropy, with_control)
from clips_nnunet.curriculum.schedulers.controls import move_to_order
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


def test_move_to_order_by_hand():
    # arm ranking [2, 0, 1, 3] with p = [0.3, 0, 0.7, 0]: in ranking order the values are [0.7, 0.3, 0, 0];
    # control order [3, 1, 0, 2] receives them: q[3] = 0.7, q[1] = 0.3, q[0] = 0, q[2] = 0
    np.testing.assert_allclose(move_to_order([0.3, 0, 0.7, 0], [2, 0, 1, 3], [3, 1, 0, 2]), [0, 0.3, 0, 0.7])
    # within strata: group x = {0, 1}, y = {2, 3}; each group's values stay in the group
    np.testing.assert_allclose(move_to_order([0.5, 0, 0.5, 0], [0, 1, 2, 3], [1, 0, 3, 2], ["x", "x", "y", "y"]),
                               [0, 0.5, 0, 0.5])


def test_ordered_and_anti():
    sch = FixedOrderPacingScheduler(IDS, [3, 1, 2, 0], "linear", 1.0, 0.5, 1)
    np.testing.assert_allclose(sch.plan(_state(), 0.0, 0, None).probabilities, [0, 0.5, 0, 0.5])
    anti = with_control(FixedOrderPacingScheduler(IDS, [3, 1, 2, 0], "linear", 1.0, 0.5, 1), "anti")
    np.testing.assert_allclose(anti.plan(_state(), 0.0, 0, None).probabilities, [0.5, 0, 0.5, 0])
    dyn_anti = with_control(SelfPacedScheduler(IDS, "linear", 1.0, 0.5, 1), "anti")  # highest EMA losses: a, c
    np.testing.assert_allclose(dyn_anti.plan(_state(), 0.0, 0, np.random.default_rng(0)).probabilities,
                               [0.5, 0, 0.5, 0])


def _random_spl(ids):
    return with_control(SelfPacedScheduler(ids, "linear", 1.0, 0.25, 1), "random")


def test_random_control_fixed_order_saved_in_state():
    ids = [f"case_{i}" for i in range(20)]
    s = DifficultyState(ids)
    a = _random_spl(ids)
    p0 = a.plan(s, 0.0, 0, np.random.default_rng(7)).probabilities
    p0_again = a.plan(s, 0.0, 1, np.random.default_rng(999)).probabilities   # order drawn once, kept
    np.testing.assert_array_equal(p0, p0_again)
    assert int((p0 > 0).sum()) == 5
    b = _random_spl(ids)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    np.testing.assert_array_equal(b.plan(s, 0.0, 0, np.random.default_rng(1)).probabilities, p0)
    c = _random_spl(ids)
    np.testing.assert_array_equal(c.plan(s, 0.0, 0, np.random.default_rng(7)).probabilities, p0)  # seeded
    # a growing admitted set: every case admitted at t=0 stays admitted at t=0.5
    p_half = a.plan(s, 0.5, 2, np.random.default_rng(3)).probabilities
    assert set(np.flatnonzero(p0)) <= set(np.flatnonzero(p_half))
    assert int((p_half > 0).sum()) == 13  # ceil((0.25 + 0.75 * 0.5) * 20) = ceil(12.5)


def test_scheduler_validation():
    with pytest.raises(CurriculumConfigError, match="pacing_a must be in \\(0, 1\\], got 1.5"):
        SelfPacedScheduler(IDS, pacing_a=1.5)
    with pytest.raises(CurriculumConfigError, match="spl_scheme"):
        SelfPacedScheduler(IDS, scheme="soft")
    with pytest.raises(CurriculumConfigError, match="no cases"):
        SelfPacedScheduler([])
    with pytest.raises(CurriculumConfigError, match="difficulty has 3 values for 4 training cases"):
        FixedOrderPacingScheduler(IDS, [1, 2, 3])
    with pytest.raises(CurriculumConfigError, match="order must be one of"):
        with_control(SelfPacedScheduler(IDS), "backwards")
    with pytest.raises(CurriculumConfigError, match="no case order"):
        with_control(SmoothingScheduler(IDS, num_epochs=10), "random")
    sch = SelfPacedScheduler(IDS)
    with pytest.raises(CurriculumConfigError, match="different case ids"):
        sch.plan(DifficultyState(["x"]), 0.0, 0, np.random.default_rng(0))


def test_loss_weights_for_soft_spl_use_last_plan():
    sch = SelfPacedScheduler(IDS, pacing="linear", pacing_a=1.0, pacing_b=0.5, min_cases=1, scheme="linear",
                             soft_mechanism="loss")
    assert sch.loss_weights([5.0, -1.0]) is None                                # no plan yet: no weighting
    sch.plan(_state(), 0.0, 0, np.random.default_rng(0))                        # shift 0.1, lam 0.25
    # batch losses 0.1 -> 1, 0.175 -> 1 - 0.075/0.15 = 0.5, 0.3 -> 0, 0.0 (below the shift) -> 1
    np.testing.assert_allclose(sch.loss_weights([0.1, 0.175, 0.3, 0.0]), [1.0, 0.5, 0.0, 1.0])
    log = SelfPacedScheduler(IDS, pacing="linear", pacing_a=1.0, pacing_b=0.5, min_cases=1, scheme="logarithmic",
                             soft_mechanism="loss")
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


def test_loss_weights_skip_non_finite_and_report_all_zero():
    sch = SelfPacedScheduler(IDS, pacing="linear", pacing_a=1.0, pacing_b=0.5, min_cases=1, scheme="linear",
                             soft_mechanism="loss")
    sch.plan(_state(), 0.0, 0, np.random.default_rng(0))                        # shift 0.1, lam 0.25
    # a NaN or inf loss gets weight 0 (never raises); 0.0 is below the shift -> clipped to 0 -> weight 1
    np.testing.assert_array_equal(sch.loss_weights([np.nan, 0.0]), [0.0, 1.0])
    np.testing.assert_array_equal(sch.loss_weights([np.inf, -np.inf]), [0.0, 0.0])
    # a batch above the threshold: all weights 0 (no gradient; the trainer skips the step), not a fallback to 1
    w = sch.loss_weights([0.5, 0.9])
    assert w is not None and np.array_equal(w, [0.0, 0.0])


def test_logarithmic_spl_admits_every_case_at_t1():
    ids = [f"c{i}" for i in range(20)]
    s = DifficultyState(ids, ema_alpha=1.0)
    s.update(ids, np.arange(20.0), epoch=0)
    sch = SelfPacedScheduler(ids, "linear", 1.0, 0.3, 1, "logarithmic", soft_mechanism="loss")
    plan = sch.plan(s, 1.0, 5, np.random.default_rng(0))
    assert int((plan.probabilities > 0).sum()) == 20
    # lam = 19 + mean gap 1 = 20 >= max loss, so the range is [0, lam + 1] = [0, 21]: lam_s = 20/21, zeta = 1/21;
    # the hardest loss 19 -> 19/21: v = log(19/21 + 1/21) / log(1/21)
    assert sch.loss_weights([19.0])[0] == pytest.approx(math.log(20 / 21) / math.log(1 / 21))
    assert sch.loss_weights([0.0])[0] == pytest.approx(1.0)
    # at t = 1 every case is admitted: a noisy current loss above lam (25 > 20) is clipped to the largest estimate
    # (19), so it keeps the hardest case's weight instead of 0
    assert sch.loss_weights([25.0])[0] == pytest.approx(math.log(20 / 21) / math.log(1 / 21))


@pytest.mark.parametrize("scheme", ["hard", "linear", "logarithmic", "mixture"])
@pytest.mark.parametrize("level", [0.3, -0.4, 1e12])
def test_tied_running_averages_admit_every_case_at_t1(scheme, level):
    """Every EMA loss equal (gap 0): lam = max + 1e-6 (scaled for large losses, where + 1e-6 is lost to rounding);
    at t = 1 every case is sampled, and with loss weighting a current loss at or above the tie keeps a positive
    weight."""
    ids = [f"c{i}" for i in range(8)]
    s = DifficultyState(ids, ema_alpha=1.0)
    s.update(ids, [level] * 8, epoch=0)
    for mechanism in ("sampling", "loss"):
        sch = SelfPacedScheduler(ids, "linear", 1.0, 0.3, 1, scheme, soft_mechanism=mechanism)
        plan = sch.plan(s, 1.0, 5, np.random.default_rng(0))
        np.testing.assert_allclose(plan.probabilities, [1 / 8] * 8)
        assert plan.threshold > level
        w = sch.loss_weights([level, level + 0.01 * max(1.0, abs(level)), level - 0.01])
        if mechanism == "sampling" or scheme == "hard":
            assert w is None                           # weighted once: by the sampling probability
        else:
            assert np.all(w > 0), (scheme, level, w)


def test_soft_spl_weights_once():
    """Soft SPL applies v* once: by default the plan samples proportionally to v*(d) and the loss is unweighted
    (None); with soft_mechanism="loss" the admitted cases are sampled uniformly and the loss carries v*(l)."""
    sampling = SelfPacedScheduler(IDS, "linear", 1.0, 0.5, 1, "linear")
    loss = SelfPacedScheduler(IDS, "linear", 1.0, 0.5, 1, "linear", soft_mechanism="loss")
    # EMA [0.4, 0.1, 0.3, 0.2], n = 2: lam 0.25, shift 0.1 -> v = [0, 1, 0, 1/3]
    np.testing.assert_allclose(sampling.plan(_state(), 0.0, 0, np.random.default_rng(0)).probabilities,
                               [0, 0.75, 0, 0.25])
    assert sampling.loss_weights([0.1, 0.2], ["b", "d"]) is None and not sampling.weights_losses
    np.testing.assert_allclose(loss.plan(_state(), 0.0, 0, np.random.default_rng(0)).probabilities, [0, 0.5, 0, 0.5])
    np.testing.assert_allclose(loss.loss_weights([0.1, 0.2], ["b", "d"]), [1.0, 1 / 3])
    assert loss.weights_losses
    with pytest.raises(CurriculumConfigError, match="spl_soft_mechanism must be one of"):
        SelfPacedScheduler(IDS, scheme="linear", soft_mechanism="both")
