"""The shared train_step and the curriculum's loss hook on a tiny network (no nnU-Net data): zero-weight batches
get no backward pass and no optimiser step, non-finite per-case losses are left out with a warning naming the case,
a non-finite gradient skips the step, all counted; configuration errors are refused with actionable messages."""
from __future__ import annotations

from types import SimpleNamespace
from typing import List

import numpy as np
import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from clips_nnunet.errors import CurriculumConfigError
from clips_nnunet.trainers.base import nnUNetTrainerClipsBase
from clips_nnunet.trainers.curriculum import nnUNetTrainerCurriculum
from clips_nnunet.trainers.difficulty_signal import PatchDifficulty
from clips_nnunet.trainers.per_sample_loss import nnunet_loss_spec


class FixedWeights(nnUNetTrainerCurriculum):
    """A weighting curriculum whose weights are set by the test."""

    weights: List[float] = [1.0, 1.0]

    def build_scheduler(self, case_ids):  # pragma: no cover - not used here
        raise NotImplementedError

    def sample_weights(self, keys, losses, recorded=None):
        self.seen_losses = np.asarray(losses)
        return np.asarray(self.weights, dtype=float)


def make(cls, batch_dice=True):
    """A trainer object with just what train_step needs (nnU-Net's __init__ needs plans and folders)."""
    t = object.__new__(cls)
    torch.manual_seed(0)
    t.network = torch.nn.Conv3d(1, 2, 1)
    t.optimizer = torch.optim.SGD(t.network.parameters(), lr=0.1)
    t.grad_scaler, t.device, t.current_epoch = None, torch.device("cpu"), 3
    t.loss = DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                            weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    t.log = []
    t.print_to_log_file = lambda *args, **kwargs: t.log.append(" ".join(map(str, args)))
    t.clips_step_counts = {"zero_weight_batches": 0, "skipped_steps": 0, "non_finite_gradient_steps": 0}
    if isinstance(t, nnUNetTrainerCurriculum):
        t._cl_signal = PatchDifficulty(["a", "b"], [True, True])
        t._cl_spec = nnunet_loss_spec(t.loss)
        t._cl_reset_buffers()
    return t


def batch(bad_sample: bool = False):
    g = torch.Generator().manual_seed(1)
    data = torch.randn(2, 1, 4, 4, 4, generator=g)
    if bad_sample:
        data[1, 0, 0, 0, 0] = float("inf")
    target = torch.zeros(2, 1, 4, 4, 4)
    target[:, :, :2] = 1
    return {"data": data, "target": target, "keys": ["a", "b"]}


def params(t):
    return [p.detach().clone() for p in t.network.parameters()]


def changed(t, before):
    return any(not torch.equal(p, q) for p, q in zip(t.network.parameters(), before))


def test_stock_step_updates_the_network():
    t = make(nnUNetTrainerClipsBase)
    before = params(t)
    out = t.train_step(batch())
    assert np.isfinite(out["loss"]) and changed(t, before)
    assert t.clips_step_counts == {"zero_weight_batches": 0, "skipped_steps": 0, "non_finite_gradient_steps": 0}


def test_all_zero_weights_skip_backward_and_step():
    t = make(FixedWeights)
    t.weights = [0.0, 0.0]
    before = params(t)
    out = t.train_step(batch())
    assert float(out["loss"]) == 0.0                      # the weighted loss of an all-zero batch
    assert not changed(t, before)
    assert all(p.grad is None for p in t.network.parameters())      # no backward pass at all
    assert t.clips_step_counts["zero_weight_batches"] == 1 and t.clips_step_counts["skipped_steps"] == 1
    t.weights = [0.0, 1.0]                                # one non-zero weight: a normal step
    t.train_step(batch())
    assert changed(t, before) and t.clips_step_counts["zero_weight_batches"] == 1


def test_non_finite_case_loss_is_left_out_named_and_the_bad_gradient_skipped():
    t = make(FixedWeights)
    before = params(t)
    out = t.train_step(batch(bad_sample=True))
    assert np.isfinite(out["loss"])                       # sample "b" left out of the weighted loss
    assert np.isnan(t.seen_losses[1]) and np.isfinite(t.seen_losses[0])
    assert any("non-finite training loss of case(s) b" in line for line in t.log), t.log
    assert t._cl_step_nonfinite == 1
    # the inf input still poisons the conv's weight gradient (inf x 0): the step is skipped and counted
    assert t.clips_step_counts["non_finite_gradient_steps"] == 1 and not changed(t, before)
    assert any("optimiser step skipped, non-finite gradient" in line and "a, b" in line for line in t.log)


def test_stock_loss_with_a_nan_skips_the_step_instead_of_writing_nan_weights():
    t = make(nnUNetTrainerClipsBase)
    before = params(t)
    t.train_step(batch(bad_sample=True))
    assert t.clips_step_counts["non_finite_gradient_steps"] == 1 and not changed(t, before)
    assert all(torch.isfinite(p).all() for p in t.network.parameters())


def test_weights_are_normalised_to_stock_step_size_and_the_realised_mean_recorded():
    """compute_loss divides the raw weights by their running mean: weights (2, 2) train exactly nnU-Net's loss
    (weights 1) and the realised mean weight per sampled case is 1; normalise_loss_weights = False keeps the raw
    form (loss doubled, realised mean 2)."""
    stock = make(nnUNetTrainerClipsBase)
    t = make(FixedWeights)
    t.weights = [2.0, 2.0]
    b = batch()
    reference = float(stock.loss(stock.network(b["data"]), b["target"]).detach())
    assert float(t.compute_loss(t.network(b["data"]), b["target"], b["keys"]).detach()) == pytest.approx(reference,
                                                                                                         abs=1e-6)
    t.weights = [1.0, 3.0]                     # running mean (4 + 4) / 4 = 2: applied 0.5, 1.5
    t.compute_loss(t.network(b["data"]), b["target"], b["keys"])
    assert t._cl_weighting.realised_mean == pytest.approx(1.0)
    raw = make(FixedWeights)
    raw.normalise_loss_weights = False
    raw._cl_reset_buffers()
    raw.weights = [2.0, 2.0]
    value = float(raw.compute_loss(raw.network(b["data"]), b["target"], b["keys"]).detach())
    assert value == pytest.approx(2 * reference, abs=1e-5)
    assert raw._cl_weighting.realised_mean == pytest.approx(2.0)


def test_augmentation_worker_seeds_never_overlap(monkeypatch):
    """Seed blocks per (global rank, loader): no two workers of a run share a seed (the old
    seed * 1000 + rank * 100 + offset + worker collided from 50 workers or 10 ranks on)."""
    import clips_nnunet.trainers.base as base

    t = make(nnUNetTrainerClipsBase)
    t.seed = 3
    monkeypatch.delenv("CLIPS_SEED", raising=False)
    seeds = []
    for rank in (0, 1, 9, 10, 511):
        monkeypatch.setattr(base, "global_rank", lambda rank=rank: rank)
        seeds += t.da_worker_seeds(64, 0) + t.da_worker_seeds(32, 1)
    assert len(seeds) == len(set(seeds)) == 5 * 96
    monkeypatch.setattr(base, "global_rank", lambda: 0)
    other_run = t.da_worker_seeds(64, 0)
    t.seed = 4
    assert not set(other_run) & set(t.da_worker_seeds(64, 0))       # neighbouring seeds: disjoint ranges
    with pytest.raises(base.ClipsError, match="up to 1024 workers"):
        t.da_worker_seeds(2000, 0)


def test_invalid_weights_are_refused():
    t = make(FixedWeights)
    t.weights = [1.0, -0.5]
    with pytest.raises(CurriculumConfigError, match="finite weights >= 0"):
        t.train_step(batch())


def _config(**overrides):
    ns = SimpleNamespace(warmup_epochs=10, num_epochs=100, exploration_epsilon=0.05, loss_ema_alpha=0.3,
                         min_cases=2, label_manager=SimpleNamespace(has_regions=False),
                         plans_manager=SimpleNamespace(dataset_name="Dataset990_ClipsTiny"))
    ns.__dict__.update(overrides)
    return ns


def test_configuration_errors_are_actionable():
    validate = nnUNetTrainerCurriculum.validate_curriculum_attributes
    validate(_config())
    with pytest.raises(CurriculumConfigError, match=r"warmup_epochs \(10\) >= num_epochs \(10\): the curriculum would "
                                                    r"never start"):
        validate(_config(num_epochs=10))
    with pytest.raises(CurriculumConfigError, match="Dataset990_ClipsTiny defines regions"):
        validate(_config(label_manager=SimpleNamespace(has_regions=True)))
    validate(_config(warmup_epochs=0, num_epochs=1))       # no warm-up: any length
