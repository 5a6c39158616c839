"""Fair arms (issue 22): one step size, controls matched in realised loss weight, a difficulty estimate that does not
depend on which cases the arm samples, and a zero gradient (not NaN) for a non-finite sample.

The simulation runs the trainer's own per-epoch and per-step hooks (``_cl_plan_epoch``, ``_cl_raw_weights``, the
loss-weight normaliser, ``_cl_observe``) on nnU-Net-like batches, without nnU-Net's data or network: batch size 2,
slot 0 a random patch (foreground with a case-specific probability for a lesion case, background-only otherwise),
slot 1 foreground-forced (background-only for a lesion-free case, which has no foreground to force); 80 % lesion
cases; patch losses = the case's foreground or background level plus noise, so a current loss differs from its
running average. Each fairness check also runs the rule it replaced and asserts that the check fails there.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import pytest
import torch

from clips_nnunet.curriculum.schedulers import SelfPacedScheduler
from clips_nnunet.curriculum.state import DifficultyState
from clips_nnunet.curriculum.weighting import LossWeightNormaliser
from clips_nnunet.trainers.difficulty_signal import PatchDifficulty
from clips_nnunet.trainers.family import (nnUNetTrainerCLDIH, nnUNetTrainerCLDIHRandom, nnUNetTrainerCLSmoothing,
                                          nnUNetTrainerCLSuperLoss)
from clips_nnunet.trainers.self_paced_trainers import nnUNetTrainerCLSelfPaced, nnUNetTrainerCLSelfPacedLinear

N = 50
IDS = [f"case_{i:03d}" for i in range(N)]
EPOCHS = 24
ITERATIONS = 250        # nnU-Net's iterations per epoch


class Cohort:
    """True patch-loss levels of N cases: 80 % with lesions (foreground level spread over the difficulty range,
    random-slot foreground probability 0.15-0.6), 20 % lesion-free (background level only)."""

    def __init__(self, seed: int = 7):
        rng = np.random.default_rng(seed)
        self.has_fg = np.ones(N, dtype=bool)
        self.has_fg[rng.choice(N, N // 5, replace=False)] = False
        self.fg_level = rng.uniform(-0.9, -0.1, N)          # Dice + CE of a lesion patch: negative, case-specific
        self.bg_level = rng.uniform(0.002, 0.03, N)          # a background-only patch: ~0 (CE small, empty Dice 0)
        self.fg_share = rng.uniform(0.15, 0.6, N)            # chance that the random slot lands on foreground

    def batch(self, p: np.ndarray, epoch: int, learning: float, rng: np.random.Generator):
        cases = rng.choice(N, size=2, p=p)
        fg = np.array([self.has_fg[cases[0]] and rng.random() < self.fg_share[cases[0]],
                       bool(self.has_fg[cases[1]])])
        drift = learning * (1.0 - np.exp(-epoch / 8.0))
        level = np.where(fg, self.fg_level[cases] - drift, self.bg_level[cases] - 0.1 * drift)
        losses = level + np.where(fg, rng.normal(0.0, 0.12, 2), rng.normal(0.0, 0.01, 2))
        return [IDS[c] for c in cases], losses, fg


def trainer(cls, cohort: Cohort, normalise: bool = True):
    """The trainer object with the state the curriculum hooks read (nnU-Net's __init__ needs plans and folders)."""
    t = object.__new__(cls)
    t.num_epochs, t.current_epoch, t.initial_lr = EPOCHS, 0, 1e-2
    t.normalise_loss_weights = normalise
    t.log: List[str] = []
    t.print_to_log_file = lambda *args, **kwargs: t.log.append(" ".join(map(str, args)))
    t._cl_case_ids = list(IDS)
    t._cl_state = DifficultyState(IDS, cls.loss_ema_alpha)
    t._cl_signal = PatchDifficulty(IDS, cohort.has_fg)
    t._cl_scheduler = t.build_scheduler(list(IDS))
    t._cl_rng = np.random.default_rng(123)
    return t


def run(t, cohort: Cohort, learning: float = 0.3, seed: int = 0) -> Dict[str, list]:
    """EPOCHS epochs of ITERATIONS steps through the trainer's hooks; per epoch the realised mean loss weight
    (what the history records as cl_mean_loss_weight) and the difficulty estimates the next plan reads."""
    rng = np.random.default_rng(seed)
    out = {"mean_weight": [], "estimates": [], "warm": []}
    for epoch in range(EPOCHS):
        t.current_epoch = epoch
        _, p, _, warm = t._cl_plan_epoch(epoch)
        keys_all, losses_all, fg_all = [], [], []
        for _ in range(ITERATIONS):
            keys, losses, fg = cohort.batch(p, epoch, learning, rng)
            raw = t._cl_raw_weights(keys, losses, fg) if t.uses_sample_weights() else None
            if raw is None:
                t._cl_weighting.unweighted(len(keys))
            else:                                    # what compute_loss does (its DDP all_reduce is the identity)
                t._cl_weighting.scale(float(np.asarray(raw)[np.isfinite(losses)].sum()), len(keys))
            keys_all += keys
            losses_all.append(losses)
            fg_all.append(fg)
        t._cl_observe(keys_all, np.concatenate(losses_all), np.concatenate(fg_all), epoch)
        out["mean_weight"].append(t._cl_weighting.realised_mean)
        out["estimates"].append(t._cl_state.estimates())
        out["warm"].append(warm)
    return out


# ------------------------------------------------------------------------------- controls matched in weight

class SuperLossArm(nnUNetTrainerCLSuperLoss):
    pass


class SoftSPLLoss(nnUNetTrainerCLSelfPacedLinear):
    """Linear soft SPL weighting the loss (spl_soft_mechanism "loss"), 3 warm-up epochs."""

    warmup_epochs = 3
    spl_soft_mechanism = "loss"


class SoftSPLMixtureLoss(SoftSPLLoss):
    spl_scheme = "mixture"


class OldSoftSPLScheduler(SelfPacedScheduler):
    """The rule before issue 22: sampled ∝ v*(d) AND loss-weighted by v*(l) (twice), and a control shifting every
    patch by its partner's EMA loss (background-only patches of lesion cases included)."""

    weights_losses = True

    def plan(self, state, progress, epoch, rng):
        self.soft_mechanism = "sampling"
        plan = super().plan(state, progress, epoch, rng)
        self.soft_mechanism = "loss"
        return plan

    def loss_weights(self, losses, keys=None, recorded=None):
        return super().loss_weights(losses, keys, None)


class OldSoftSPL(SoftSPLLoss):
    def build_arm_scheduler(self, case_ids):
        return OldSoftSPLScheduler(case_ids, pacing=self.pacing, pacing_a=self.pacing_a, pacing_b=self.pacing_b,
                                   min_cases=self.min_cases, scheme=self.spl_scheme, soft_mechanism="loss")


def _orders(cls):
    return [type(f"{cls.__name__}{order.title()}", (cls,), {"order": order})
            for order in ("curriculum", "random", "anti")]


def _mean_weights(cls, normalise: bool = True) -> np.ndarray:
    cohort = Cohort()
    return np.asarray([run(trainer(c, cohort, normalise), cohort)["mean_weight"] for c in _orders(cls)])


def _worst_disagreement(weights: np.ndarray) -> float:
    """Largest relative spread between arm, Random and Anti in any epoch."""
    return float(((weights.max(axis=0) - weights.min(axis=0)) / weights.min(axis=0)).max())


@pytest.mark.parametrize("cls", [SuperLossArm, nnUNetTrainerCLSelfPacedLinear])
def test_arm_random_and_anti_train_with_the_same_mean_weight_every_epoch(cls):
    """The weighting curricula as shipped (SuperLoss; soft SPL, which applies its weight by sampling)."""
    weights = _mean_weights(cls)
    assert _worst_disagreement(weights) <= 0.03, weights.round(3)
    # one step size: the mean weight per sampled case is stock nnU-Net's 1 (within the running normaliser's noise)
    np.testing.assert_allclose(weights, 1.0, atol=0.03)


@pytest.mark.parametrize("cls", [SoftSPLLoss, SoftSPLMixtureLoss])
def test_soft_spl_weighting_the_loss_is_normalised_on_average(cls):
    """spl_soft_mechanism = "loss" (not the default): most raw weights are 0 or small (losses near or above lam),
    so the running normaliser of one epoch is noisy; measured here up to about +-10 % per epoch at 250 iterations
    (docs/curricula.md), matched over the epochs: the mean over epochs agrees within 3 %."""
    weights = _mean_weights(cls)
    assert _worst_disagreement(weights) <= 0.25, weights.round(3)
    means = weights[:, cls.warmup_epochs:].mean(axis=1)
    assert float((means.max() - means.min()) / means.min()) <= 0.03, means
    np.testing.assert_allclose(means, 1.0, atol=0.03)


def test_the_old_rule_fails_the_weight_check():
    """Soft SPL weighted twice, raw weights, background patches shifted against a foreground-based EMA: the arm
    and its controls train with different mean weights (issue 22: 0.34 / 0.57 / 0.67), far from stock's 1."""
    weights = _mean_weights(OldSoftSPL, normalise=False)
    assert _worst_disagreement(weights) > 0.1, weights.round(3)
    assert weights[:, 3:].mean() < 0.9


def test_soft_spl_by_sampling_and_hard_spl_keep_weight_one():
    cohort = Cohort()
    for cls in (nnUNetTrainerCLSelfPacedLinear, nnUNetTrainerCLSelfPaced):
        assert run(trainer(cls, cohort), cohort)["mean_weight"] == [1.0] * EPOCHS


def test_raw_weights_are_kept_as_a_class_attribute():
    """normalise_loss_weights = False: SuperLoss's published sigma*, whose mean is not 1."""
    cohort = Cohort()
    raw = run(trainer(SuperLossArm, cohort, normalise=False), cohort)["mean_weight"]
    assert raw[0] == 1.0                                          # warm-up: nnU-Net's unweighted loss
    assert max(abs(w - 1.0) for w in raw[2:]) > 0.02


def test_loss_weight_normaliser_by_hand():
    n = LossWeightNormaliser()
    assert n.realised_mean == 1.0                      # nothing trained yet
    assert n.scale(4.0, 2) == 0.5                      # running mean 4 / 2 = 2: applied (1, 1)
    assert n.scale(0.0, 2) == 1.0                      # a zero-weight batch: running mean 4 / 4 = 1, applied 0
    assert n.scale(2.0, 2) == pytest.approx(1.0)       # running mean 6 / 6
    assert n.realised_mean == pytest.approx((2.0 + 0.0 + 2.0) / 6)
    n.start_epoch()
    n.unweighted(4)
    assert n.realised_mean == 1.0
    raw = LossWeightNormaliser(normalise=False)
    assert raw.scale(3.0, 2) == 1.0 and raw.realised_mean == 1.5


def test_a_calibrated_num_epochs_reaches_dih_and_smoothing():
    """A num_epochs set after the scheduler was built (e.g. by a subclass's on_train_start): the next plan uses it (DIH's poly learning
    rates, the Random control's arm included; smoothing's zero_after)."""
    cohort = Cohort()
    for cls in (nnUNetTrainerCLDIH, nnUNetTrainerCLDIHRandom, nnUNetTrainerCLSmoothing):
        t = trainer(cls, cohort)
        t.num_epochs = 7
        t._cl_plan_epoch(0)
        scheduler = getattr(t._cl_scheduler, "arm", t._cl_scheduler)
        assert scheduler.num_epochs == 7, cls.__name__
    assert t._cl_scheduler.sigma(4) == 0.0              # zero_after 0.5 of 7 epochs (was of EPOCHS)


def test_dih_reads_the_raw_loss_it_documents():
    """The EMA estimate is centred per patch type; DIH's loss change uses the raw training loss (as its authors)."""
    cohort = Cohort()
    t = trainer(nnUNetTrainerCLDIH, cohort)
    t._cl_plan_epoch(0)
    lesion, free = IDS[int(np.flatnonzero(cohort.has_fg)[0])], IDS[int(np.flatnonzero(~cohort.has_fg)[0])]
    t._cl_observe([lesion, free, lesion], np.array([-0.5, 0.01, -0.3]), np.array([True, False, True]), 0)
    i = IDS.index(lesion)
    assert t._cl_state.last_losses()[i] == pytest.approx(-0.3)            # raw, latest
    assert t._cl_state.estimates()[i] != pytest.approx(-0.3)              # centred EMA


def test_each_epoch_record_carries_the_realised_mean_loss_weight(tmp_path, monkeypatch):
    """on_train_epoch_end writes cl_mean_loss_weight into the epoch's record of the history (and nnU-Net's
    logger): 1.0 during SuperLoss's warm-up, the normaliser's realised mean afterwards."""
    from nnunetv2.training.logging.nnunet_logger import MetaLogger

    from clips_nnunet.trainers.curriculum import read_history
    from clips_nnunet.trainers.curriculum_history import HistoryWriter

    cohort = Cohort()
    t = trainer(SuperLossArm, cohort)
    t.output_folder, t.is_ddp, t.curriculum_plot_every = str(tmp_path), False, 1000
    t.logger = MetaLogger(str(tmp_path), False)
    t._cl_register_log_keys()
    t._cl_writer = HistoryWriter(str(tmp_path), IDS, "SuperLossArm")
    t._cl_writer.start(0)
    monkeypatch.setattr("clips_nnunet.trainers.curriculum.plot_curriculum", lambda *a, **k: None)
    rng = np.random.default_rng(0)
    realised = []
    for epoch in range(3):
        t.current_epoch = epoch
        t.clips_step_counts = {"zero_weight_batches": 0, "skipped_steps": 0, "non_finite_gradient_steps": 0}
        _, p, _, _ = t._cl_plan_epoch(epoch)
        t._cl_version = epoch
        outputs = []
        for _ in range(20):
            keys, losses, fg = cohort.batch(p, epoch, 0.3, rng)
            raw = t._cl_raw_weights(keys, losses, fg)
            if raw is None:
                t._cl_weighting.unweighted(2)
            else:
                t._cl_weighting.scale(float(raw.sum()), 2)
            t._cl_key_buf.extend(keys)
            t._cl_loss_buf.append(torch.as_tensor(losses, dtype=torch.float32))
            t._cl_fg_buf.append(torch.as_tensor(fg))
            outputs.append({"loss": float(losses.mean())})
        realised.append(t._cl_weighting.realised_mean)
        t.on_train_epoch_end(outputs)
    records = read_history(tmp_path).records
    assert [r["cl_mean_loss_weight"] for r in records] == pytest.approx(realised)
    assert records[0]["cl_mean_loss_weight"] == 1.0 and realised[2] != 1.0
    assert t.logger.get_value("cl_mean_loss_weight", None) == pytest.approx(realised)


# ------------------------------------------------------------------------------- difficulty without the sampler

class HardSPL(nnUNetTrainerCLSelfPaced):
    """Hard SPL that keeps admitting its easiest 30 % (step pacing, all cases only at t = 1): the sampler favours
    easy cases (Anti: hard ones) for the whole run."""

    warmup_epochs = 3
    pacing, pacing_a, pacing_b = "step", 1.0, 0.3


class Uniform(nnUNetTrainerCLSelfPaced):
    warmup_epochs = EPOCHS + 1          # never leaves warm-up: uniform sampling throughout


def _estimates(inverse_probability: bool) -> Dict[str, np.ndarray]:
    """Mean estimate per case over the last 16 epochs, no learning, for each sampler."""
    cohort = Cohort(seed=3)
    out = {}
    for name, cls in zip(("curriculum", "random", "anti"), _orders(HardSPL)):
        t = trainer(cls, cohort)
        if not inverse_probability:               # the rule before: plain mean of the epoch's patches
            t._cl_observe = _plain_observe(t)
        out[name] = np.mean(run(t, cohort, learning=0.0, seed=1)["estimates"][-16:], axis=0)
    t = trainer(Uniform, cohort)
    if not inverse_probability:
        t._cl_observe = _plain_observe(t)
    out["uniform"] = np.mean(run(t, cohort, learning=0.0, seed=1)["estimates"][-16:], axis=0)
    return out


def _plain_observe(t):
    original = type(t)._cl_observe

    def observe(keys, losses, fg, epoch):
        saved = t._cl_probabilities, t._cl_estimates
        t._cl_probabilities = t._cl_estimates = None
        try:
            return original(t, keys, losses, fg, epoch)
        finally:
            t._cl_probabilities, t._cl_estimates = saved
    return observe


def _shift_of_the_centre(estimates: Dict[str, np.ndarray]) -> float:
    """Largest |mean estimate under a sampler - under uniform sampling|, as a fraction of the uniform range."""
    ref = estimates["uniform"]
    span = float(ref.max() - ref.min())
    return max(abs(float((e - ref).mean())) / span for name, e in estimates.items() if name != "uniform")


def test_difficulty_estimate_does_not_depend_on_who_samples():
    """No learning: the estimates under hard SPL, its Random and Anti controls and uniform sampling agree within
    3 % of the range (mean shift), and per case (median)."""
    est = _estimates(inverse_probability=True)
    assert _shift_of_the_centre(est) <= 0.03, {k: float(v.mean()) for k, v in est.items()}
    ref = est["uniform"]
    span = float(ref.max() - ref.min())
    for name in ("curriculum", "random", "anti"):
        assert float(np.median(np.abs(est[name] - ref))) / span <= 0.03, name


def test_the_plain_patch_mean_centre_fails_the_difficulty_check():
    est = _estimates(inverse_probability=False)
    assert _shift_of_the_centre(est) > 0.05, {k: float(v.mean()) for k, v in est.items()}


# ------------------------------------------------------------------------------- non-finite sample

@pytest.mark.parametrize("batch_dice", [False, True])
def test_non_finite_sample_gets_a_zero_gradient_not_nan(batch_dice):
    """A sample whose logits hold inf (its loss NaN) is left out of the weighted loss: the gradient with respect to
    its logits is exactly 0 and finite everywhere (masking only the loss gave 0 x NaN = NaN)."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from clips_nnunet.trainers.per_sample_loss import nnunet_loss_spec, per_sample_dice_ce, weighted_nnunet_loss

    loss = DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 4, 4, 4, generator=g)
    logits[1, 0, 0, 0, 0] = float("inf")
    logits.requires_grad_()
    target = (torch.rand(2, 1, 4, 4, 4, generator=g) > 0.6).float()
    keep = torch.isfinite(per_sample_dice_ce(logits.detach(), target))
    assert keep.tolist() == [True, False]
    value = weighted_nnunet_loss(nnunet_loss_spec(loss), logits, target, torch.ones(2), keep=keep)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()
    assert float(logits.grad[1].abs().max()) == 0.0 and float(logits.grad[0].abs().max()) > 0
