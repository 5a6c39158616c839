"""Every curriculum with an order and its Random and Anti controls admit exactly the same number of cases in every
epoch, ties included, and every admission schedule admits all cases at t = 1 (issue 11, item 4).

100 cases; 40 of them are lesion-free and tied at the median difficulty (and, for the loss-driven curricula, tied
EMA losses), as in a real PET cohort where many cases carry no lesion.
"""
from __future__ import annotations

import numpy as np
import pytest

from clips_nnunet.curriculum.schedulers import (BabyStepsScheduler, CompetenceScheduler, DIHScheduler,
                                                FixedOrderPacingScheduler, SelfPacedScheduler, SPLDScheduler,
                                                SuperLossScheduler, TeacherStudentScheduler, with_control)
from clips_nnunet.curriculum.state import DifficultyState
from clips_nnunet.errors import CurriculumConfigError

N = 100
IDS = [f"case_{i:03d}" for i in range(N)]
EPOCHS = 40


def _difficulty() -> np.ndarray:
    rng = np.random.default_rng(5)
    d = rng.permutation(np.linspace(0.0, 1.0, N))
    d[rng.choice(N, 40, replace=False)] = 0.5  # lesion-free cases, all tied at the median
    return d


DIFFICULTY = _difficulty()
GROUPS = [("A", "B", "C")[i % 3] for i in range(N)]

FACTORIES = {
    "predefined_root": lambda: FixedOrderPacingScheduler(IDS, DIFFICULTY, "root", 0.8, 0.3, 2),
    "predefined_linear": lambda: FixedOrderPacingScheduler(IDS, DIFFICULTY, "linear", 1.0, 0.1, 2),
    "hacohen": lambda: FixedOrderPacingScheduler(IDS, DIFFICULTY, "hacohen", hacohen_start=0.1,
                                                 hacohen_increase=1.5, hacohen_step=3),
    "competence": lambda: CompetenceScheduler(IDS, DIFFICULTY, c0=0.1, p=2.0, competence_T=0.8, min_cases=2),
    "baby_steps": lambda: BabyStepsScheduler(IDS, DIFFICULTY, n_buckets=4, pacing_a=0.8),
    "teacher_student": lambda: TeacherStudentScheduler(IDS, DIFFICULTY, n_buckets=3, window=3),
    "teacher_student_greedy": lambda: TeacherStudentScheduler(IDS, DIFFICULTY, 3, 3, "epsilon_greedy", epsilon=0.0),
    "self_paced_hard": lambda: SelfPacedScheduler(IDS, "root", 0.8, 0.2, 2, "hard"),
    "self_paced_linear": lambda: SelfPacedScheduler(IDS, "linear", 1.0, 0.2, 2, "linear"),
    "self_paced_log": lambda: SelfPacedScheduler(IDS, "linear", 1.0, 0.2, 2, "logarithmic"),
    "self_paced_mixture": lambda: SelfPacedScheduler(IDS, "quadratic", 0.9, 0.2, 2, "mixture"),
    "spld": lambda: SPLDScheduler(IDS, GROUPS, "root", 0.8, 0.3, 2, gamma_rel=0.2),
    "dih": lambda: DIHScheduler(IDS, gamma=0.5, beta=3.0, shrink=0.9, floor=0.3, initial_lr=0.01, num_epochs=EPOCHS),
    "superloss": lambda: SuperLossScheduler(IDS, lam=1.0),
}
#: soft self-paced learning weighting the loss instead of sampling (spl_soft_mechanism = "loss")
LOSS_WEIGHTING = {
    "self_paced_linear": lambda: SelfPacedScheduler(IDS, "linear", 1.0, 0.2, 2, "linear", soft_mechanism="loss"),
    "self_paced_log": lambda: SelfPacedScheduler(IDS, "linear", 1.0, 0.2, 2, "logarithmic", soft_mechanism="loss"),
    "self_paced_mixture": lambda: SelfPacedScheduler(IDS, "quadratic", 0.9, 0.2, 2, "mixture",
                                                     soft_mechanism="loss"),
    "superloss": FACTORIES["superloss"],
}
#: not admission schedules: DIH trains on a subset that SHRINKS from all cases to a floor (Zhou et al. 2020); a greedy
#: teacher (epsilon 0) samples only the task with the largest learning progress (Matiisen et al. 2017)
NOT_GROWING = {"dih", "teacher_student_greedy"}


def _states():
    """One difficulty state per epoch: every case measured each epoch, 40 tied losses, the others drifting."""
    rng = np.random.default_rng(11)
    state = DifficultyState(IDS, ema_alpha=0.5)
    tied = DIFFICULTY == 0.5
    for epoch in range(EPOCHS):
        losses = DIFFICULTY - 0.02 * epoch + rng.normal(0.0, 0.05, N)
        losses[tied] = 0.3  # tied EMA losses as well
        state.update(IDS, losses, epoch)
        yield epoch, min(1.0, epoch / (EPOCHS - 1)), DifficultyState.from_dict(state.to_dict())


STATES = list(_states())


def _run(name: str, order: str):
    scheduler = with_control(FACTORIES[name](), order)
    rng = np.random.default_rng(2024)
    return [scheduler.plan(state, t, epoch, rng) for epoch, t, state in STATES]


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_controls_admit_exactly_the_arms_count_every_epoch(name):
    arm, rand, anti = (_run(name, order) for order in ("curriculum", "random", "anti"))
    counts = [[int((p.probabilities > 0).sum()) for p in plans] for plans in (arm, rand, anti)]
    assert counts[0] == counts[1] == counts[2], name
    for a, r, x in zip(arm, rand, anti):
        # the same multiset of probabilities: same count, same active fraction, same sampling entropy
        np.testing.assert_allclose(np.sort(r.probabilities), np.sort(a.probabilities), atol=1e-15)
        np.testing.assert_allclose(np.sort(x.probabilities), np.sort(a.probabilities), atol=1e-15)
        assert a.active_fraction == r.active_fraction == x.active_fraction
        assert abs(a.probabilities.sum() - 1.0) < 1e-12
    if name not in NOT_GROWING:
        assert counts[0][-1] == N, f"{name} does not admit every case at t = 1"
    assert len(set(counts[0])) > 1 or name in {"superloss", "teacher_student"}, "the schedule never changes"


@pytest.mark.parametrize("name", ["predefined_root", "competence", "baby_steps", "hacohen"])
def test_fixed_difficulty_anti_admits_the_hardest_random_other_cases(name):
    arm, rand, anti = (_run(name, order)[0] for order in ("curriculum", "random", "anti"))
    admitted = [np.flatnonzero(p.probabilities > 0) for p in (arm, rand, anti)]
    n = admitted[0].size
    assert 2 <= n < N
    order = np.argsort(DIFFICULTY, kind="stable")
    assert set(admitted[0]) == set(order[:n]) and set(admitted[2]) == set(order[-n:])
    assert set(admitted[1]) != set(admitted[0])


def test_competence_with_ties_admits_floor_c_n_not_the_tie_block():
    """Platanios' empirical CDF gives the 40 tied cases the same (larger) CDF value: the arm would jump from the
    easiest block straight past the tie; the rank CDF admits floor(c N) cases, as its controls do."""
    c = CompetenceScheduler(IDS, DIFFICULTY, c0=0.1, p=2.0, competence_T=0.8, min_cases=2)
    state = STATES[0][2]
    # c(t) = sqrt(t (1 - 0.01) / 0.8 + 0.01): t = 0.2 -> sqrt(0.2575) = 0.50744 -> 50 cases
    assert int((c.plan(state, 0.2, 0, None).probabilities > 0).sum()) == 50
    assert int((c.plan(state, 0.0, 0, None).probabilities > 0).sum()) == 10  # c0 N


@pytest.mark.parametrize("name", ["self_paced_linear", "self_paced_log", "self_paced_mixture", "superloss"])
def test_weighting_controls_give_each_case_its_partners_weight(name):
    """With every current loss at its EMA loss, a control gives each case exactly the arm's weight of its partner
    (the case the arm ranks where the control puts it): the same per-case weights and the same expected weight of a
    sampled case as the arm, only other cases."""
    arm, rand, anti = (with_control(LOSS_WEIGHTING[name](), order) for order in ("curriculum", "random", "anti"))
    epoch, t, state = STATES[20]
    plans = [s.plan(state, t, epoch, np.random.default_rng(0)) for s in (arm, rand, anti)]
    d = state.estimates()
    w_arm = arm.loss_weights(d, IDS)
    assert w_arm is not None and (w_arm > 0).any() and (w_arm < w_arm.max()).any()  # a real weighting
    for ctrl, plan in zip((rand, anti), plans[1:]):
        partner = np.empty(N, dtype=np.int64)
        partner[plan.ranking] = plans[0].ranking
        w = ctrl.loss_weights(d, IDS)
        np.testing.assert_allclose(w, w_arm[partner], atol=1e-12)
        assert np.dot(plan.probabilities, w) == pytest.approx(np.dot(plans[0].probabilities, w_arm))
    losses = d[:6].copy()
    losses[2] = np.nan
    assert rand.loss_weights(losses, IDS[:6])[2] == 0.0  # a non-finite loss keeps weight 0


def test_anti_control_of_soft_spl_weights_by_hand():
    """EMA losses 0.1, 0.2, 0.3, 0.5; linear soft SPL admitting 2 cases: lam = (0.2 + 0.3) / 2 = 0.25, shift = 0.1,
    v(l) = max(0, 1 - (l - 0.1) / 0.15). Anti pairs case 3 with case 0 and case 2 with case 1."""
    ids = ["a", "b", "c", "d"]
    state = DifficultyState(ids)
    state.update(ids, [0.1, 0.2, 0.3, 0.5], epoch=0)
    arm = SelfPacedScheduler(ids, "linear", 1.0, 0.5, 2, "linear", soft_mechanism="loss")
    anti = with_control(SelfPacedScheduler(ids, "linear", 1.0, 0.5, 2, "linear", soft_mechanism="loss"), "anti")
    for s in (arm, anti):
        assert s.plan(state, 0.0, 1, np.random.default_rng(0)).threshold == pytest.approx(0.25)
    # case d (loss 0.52) is weighted as the arm weights case a: 0.52 - 0.5 + 0.1 = 0.12 -> 1 - 0.02 / 0.15
    np.testing.assert_allclose(anti.loss_weights([0.52, 0.12], ["d", "a"]), [1 - 0.02 / 0.15, 0.0])
    np.testing.assert_allclose(arm.loss_weights([0.52, 0.12], ["d", "a"]), [0.0, 1 - 0.02 / 0.15])
    # a batch of the two cases the arm does not admit still trains: 0.3 -> 0.2 (v = 1/3) and 0.5 -> 0.1 (v = 1);
    # the arm's own weights of these losses are both 0
    np.testing.assert_allclose(anti.loss_weights([0.3, 0.5], ["c", "d"]), [1 / 3, 1.0])
    np.testing.assert_allclose(arm.loss_weights([0.3, 0.5], ["c", "d"]), [0.0, 0.0])
    with pytest.raises(CurriculumConfigError, match="one case key per loss"):
        anti.loss_weights([0.3, 0.5], ["c"])
    with pytest.raises(CurriculumConfigError, match="unknown case ids"):
        anti.loss_weights([0.3], ["zz"])


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_all_cases_tied_before_any_loss_is_seen(name):
    """No case measured yet: every estimate is 0 (all tied); arms and controls still admit the same counts."""
    state = DifficultyState(IDS)
    plans = {}
    for order in ("curriculum", "random", "anti"):
        scheduler, rng = with_control(FACTORIES[name](), order), np.random.default_rng(1)
        plans[order] = [scheduler.plan(state, t, epoch, rng) for epoch, t in enumerate((0.0, 0.3, 1.0))]
    counts = {o: [int((p.probabilities > 0).sum()) for p in ps] for o, ps in plans.items()}
    assert counts["curriculum"] == counts["random"] == counts["anti"], counts
    if name not in NOT_GROWING:
        assert counts["curriculum"][-1] == N
