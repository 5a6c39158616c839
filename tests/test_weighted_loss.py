"""nnU-Net's loss with per-sample weights (clips_nnunet.trainers.per_sample_loss.weighted_nnunet_loss): with all
weights 1 it equals nnU-Net's own loss object on the same tensors, for batch_dice True/False, with and without an
ignore label and deep supervision; weights act per sample as documented (weighted batch-Dice statistics)."""
from __future__ import annotations

import itertools

import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from clips_nnunet.errors import CurriculumConfigError
from clips_nnunet.trainers.per_sample_loss import (per_sample_dice_ce, foreground_patches, nnunet_loss_spec,
                                                   weighted_nnunet_loss)

IGNORE = 3            # 3 classes (0, 1, 2) + ignore label 3, as nnU-Net requires (ignore = highest label)


def nnunet_loss(batch_dice: bool, ignore: bool, deep_supervision: bool):
    """The loss nnUNetTrainer._build_loss builds (2.8.1), without DDP."""
    loss = DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=IGNORE if ignore else None,
                          dice_class=MemoryEfficientSoftDiceLoss)
    if deep_supervision:
        w = torch.tensor([1.0, 0.5, 0.25])
        w[-1] = 0
        loss = DeepSupervisionWrapper(loss, (w / w.sum()).tolist())
    return loss


def tensors(ignore: bool, deep_supervision: bool, seed: int = 0, batch: int = 3):
    g = torch.Generator().manual_seed(seed)
    shapes = [(8, 8, 8), (4, 4, 4), (2, 2, 2)] if deep_supervision else [(8, 8, 8)]
    outputs, targets = [], []
    for shape in shapes:
        outputs.append((2 * torch.randn(batch, 3, *shape, generator=g)).requires_grad_())
        t = torch.randint(0, 3, (batch, 1, *shape), generator=g).float()
        if ignore:   # a different number of ignored voxels per sample (CE's voxel mean is over the whole batch)
            for b in range(batch):
                t[b, :, : b + 1] = IGNORE
        targets.append(t)
    if not deep_supervision:
        return outputs[0], targets[0]
    return outputs, targets


CASES = list(itertools.product([False, True], [False, True], [False, True]))


@pytest.mark.parametrize("batch_dice,ignore,ds", CASES)
def test_unit_weights_equal_nnunet_loss(batch_dice, ignore, ds):
    loss = nnunet_loss(batch_dice, ignore, ds)
    spec = nnunet_loss_spec(loss)
    assert spec.batch_dice == batch_dice and spec.ignore_label == (IGNORE if ignore else None)
    out, tgt = tensors(ignore, ds)
    expected = loss(out, tgt)
    ours = weighted_nnunet_loss(spec, out, tgt, torch.ones(3))
    assert abs(float(ours.detach()) - float(expected.detach())) < 1e-6, (float(ours.detach()), float(expected.detach()))
    # and the gradients agree too
    params = out if ds else [out]
    g_expected = torch.autograd.grad(expected, params, allow_unused=True)
    g_ours = torch.autograd.grad(weighted_nnunet_loss(spec, out, tgt, torch.ones(3)), params, allow_unused=True)
    for a, b in zip(g_expected, g_ours):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-7))


def _take(x, idx):
    return [o[idx] for o in x] if isinstance(x, list) else x[idx]


@pytest.mark.parametrize("batch_dice,ignore,ds", CASES)
def test_weight_zero_removes_a_sample_and_weights_scale_the_loss(batch_dice, ignore, ds):
    loss = nnunet_loss(batch_dice, ignore, ds)
    spec = nnunet_loss_spec(loss)
    out, tgt = tensors(ignore, ds, seed=1, batch=2)
    if not ignore:
        # weights (1, 0): exactly half nnU-Net's loss of sample 0 alone (CE over 2V voxels, Dice / B), both for
        # per-sample Dice and for weighted batch-Dice statistics (pooled statistics of sample 0 only, times wbar 1/2)
        only0 = weighted_nnunet_loss(spec, out, tgt, torch.tensor([1.0, 0.0]))
        alone = loss(_take(out, slice(0, 1)), _take(tgt, slice(0, 1)))
        assert abs(float(only0) - float(alone) / 2) < 1e-6
    # weights (2, 2): twice nnU-Net's loss (CE linear in w; batch Dice scaled by wbar = 2)
    assert abs(float(weighted_nnunet_loss(spec, out, tgt, torch.tensor([2.0, 2.0]))) - 2 * float(loss(out, tgt))) \
        < 2e-6
    # a zero-weight sample receives no gradient; the other one does
    params = out if ds else [out]
    grads = torch.autograd.grad(weighted_nnunet_loss(spec, out, tgt, torch.tensor([0.7, 0.0])), params,
                                allow_unused=True)
    assert float(grads[0][1].abs().max()) == 0.0 and float(grads[0][0].abs().max()) > 0


@pytest.mark.parametrize("batch_dice", [False, True])
def test_non_finite_sample_is_removed_not_multiplied(batch_dice):
    loss = nnunet_loss(batch_dice, False, False)
    spec = nnunet_loss_spec(loss)
    out, tgt = tensors(False, False, seed=2, batch=2)
    bad = out.detach().clone()
    bad[1, 0, 0, 0, 0] = float("inf")                      # one inf logit: sample 1's loss is NaN
    per_sample = per_sample_dice_ce(bad, tgt)
    assert torch.isfinite(per_sample).tolist() == [True, False]
    keep = torch.isfinite(per_sample)
    ours = weighted_nnunet_loss(spec, bad, tgt, torch.ones(2), keep=keep)
    assert torch.isfinite(ours)
    reference = weighted_nnunet_loss(spec, out, tgt, torch.tensor([1.0, 0.0]))
    assert abs(float(ours.detach()) - float(reference)) < 1e-6


def test_foreground_patches_ignores_the_ignore_label():
    t = torch.zeros(3, 1, 2, 2, 2)
    t[1, 0, 0, 0, 0] = 1
    t[2, 0, 0, 0, 0] = IGNORE
    assert foreground_patches(t, 3).tolist() == [False, True, False]


def test_spec_refuses_a_cross_entropy_it_cannot_weight_exactly():
    loss = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False},
                          {"label_smoothing": 0.1}, dice_class=MemoryEfficientSoftDiceLoss)
    with pytest.raises(CurriculumConfigError, match="label smoothing"):
        nnunet_loss_spec(loss)
    assert nnunet_loss_spec(torch.nn.MSELoss()) is None
