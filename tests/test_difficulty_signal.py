"""The difficulty signal measures the patient, not the patch (clips_nnunet.trainers.difficulty_signal).

Patch losses are nnU-Net's per-sample Dice + CE of real tensors: a near-perfect background-only patch scores
+0.0025, a lesion patch with 95 % of the lesion found -0.93, one with 50 % found -0.487 (the issue's numbers)."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from clips_nnunet.curriculum.state import DifficultyState
from clips_nnunet.trainers.difficulty_signal import PatchDifficulty
from clips_nnunet.trainers.per_sample_loss import per_sample_dice_ce, foreground_patches

S = 16


def patch(foreground: bool, found: float):
    """(logits, target) of one patch: a 6^3 lesion if ``foreground``; ``found`` = fraction of it predicted."""
    target = torch.zeros(1, 1, S, S, S)
    logits = torch.zeros(1, 2, S, S, S)
    logits[:, 1] = -6.0
    if foreground:
        target[0, 0, 4:10, 4:10, 4:10] = 1
        lesion = (target[0, 0] > 0).flatten().nonzero()[:, 0]
        flat = logits[0, 1].flatten()
        flat[lesion[: int(lesion.numel() * found)]] = 6.0
        logits[0, 1] = flat.view(S, S, S)
    return logits, target


QUALITY = {"good": 0.95, "poor": 0.5}


@functools.lru_cache(maxsize=None)
def patch_loss(case: str, foreground: bool) -> tuple:
    logits, target = patch(foreground, QUALITY.get(case, 0.0))
    return float(per_sample_dice_ce(logits, target)[0]), bool(foreground_patches(target, 2)[0])


def test_hand_values_of_the_patch_losses():
    assert patch_loss("good", False)[0] == pytest.approx(0.0025, abs=1e-4)     # background-only, near perfect
    assert patch_loss("poor", True)[0] == pytest.approx(-0.487, abs=1e-3)      # mediocre lesion patch
    assert patch_loss("good", True)[0] == pytest.approx(-0.932, abs=1e-3)
    assert patch_loss("good", True)[1] and not patch_loss("good", False)[1]


def run_epochs(schedule, ids, has_fg, estimator: str, epochs: int = 8):
    """Fold the patches of ``schedule(epoch) -> [(case, is_fg_patch), ...]`` into an EMA state."""
    signal = PatchDifficulty(ids, has_fg)
    state = DifficultyState(ids, ema_alpha=0.3)
    for epoch in range(epochs):
        keys, losses, fg = [], [], []
        for case, fg_patch in schedule(epoch):
            value, is_fg = patch_loss(case, fg_patch)
            keys.append(case), losses.append(value), fg.append(is_fg)
        if estimator == "raw":          # the old estimator: every patch's raw loss
            state.update(keys, losses, epoch)
        else:
            obs_keys, values, _ = signal.observations(keys, losses, fg)
            state.update(obs_keys, values, epoch)
    return dict(zip(ids, state.estimates()))


IDS = ["good", "poor", "free"]
HAS_FG = [True, True, False]


def test_raw_patch_losses_rank_by_slot_but_the_estimator_ranks_by_patient():
    # batch size 2: slot 0 is a random patch, slot 1 is foreground-forced. The well-segmented case keeps landing
    # in slot 0 on background, the poorly segmented one in slot 1 on its lesion.
    def schedule(epoch):
        return [("good", False), ("poor", True), ("good", False), ("good", True), ("free", False), ("poor", True)]

    raw = run_epochs(schedule, IDS, HAS_FG, "raw")
    assert raw["good"] > raw["poor"]            # the bias: the good case looks harder than the poor one
    ours = run_epochs(schedule, IDS, HAS_FG, "patient")
    assert ours["good"] < ours["poor"]
    # lesion-free case: centred on the background-patch mean, between the lesion cases
    assert ours["good"] < ours["free"] < ours["poor"]


@pytest.mark.parametrize("seed", range(20))
def test_good_lesion_case_is_easier_whatever_slot_and_patch_type(seed):
    rng = np.random.default_rng(seed)

    def schedule(epoch):
        out = []
        for _ in range(4):                                   # 4 batches of 2
            pair = list(rng.permutation(["good", "poor"]) if rng.random() < 0.8 else rng.choice(IDS, 2))
            slot0 = (pair[0], bool(rng.random() < 0.33) and pair[0] != "free")      # random patch
            slot1 = (pair[1], pair[1] != "free")                                   # foreground-forced
            out += [slot0, slot1]
        out += [("good", True), ("poor", True)]              # every case has at least one lesion patch per run
        return out

    est = run_epochs(schedule, IDS, HAS_FG, "patient")
    assert est["good"] < est["poor"]


def test_centring_and_state_round_trip():
    signal = PatchDifficulty(["a", "b"], [True, False])
    keys, values, skipped = signal.observations(["a", "a", "b"], [-0.5, 0.01, 0.03], [True, False, False])
    assert keys == ["a", "b"] and skipped == 1
    # means: foreground -0.5, background (0.01 + 0.03) / 2 = 0.02
    np.testing.assert_allclose(values, [0.0, 0.01])
    np.testing.assert_allclose(signal.centre(np.array([-0.4, 0.0]), np.array([True, False])), [0.1, -0.02])
    other = PatchDifficulty(["a", "b"], [True, False])
    other.load_state_dict(signal.state_dict())
    assert other.means == signal.means == {"foreground": -0.5, "background": 0.02}
    # an epoch with one patch type only: raw values (comparable already), means kept
    keys, values, _ = PatchDifficulty(["a"], [True]).observations(["a"], [-0.3], [True])
    np.testing.assert_allclose(values, [-0.3])
    # non-finite losses pass through (the state skips them with a warning) and stay out of the means
    keys, values, _ = signal.observations(["a", "b", "b"], [float("nan"), 0.0, 0.02], [True, False, False])
    assert keys == ["a", "b", "b"] and np.isnan(values[0]) and signal.means["background"] == pytest.approx(0.02)
