"""Self-paced weights (Kumar 2010; Jiang 2014) and the admitting threshold, against hand-computed values."""
import numpy as np
import pytest

from clips_nnunet.curriculum.self_paced import spl_weights, threshold_admitting
from clips_nnunet.errors import CurriculumConfigError


def test_hard_weights():
    np.testing.assert_array_equal(spl_weights([0.1, 0.5, 0.9], 0.6, "hard"), [1, 1, 0])
    np.testing.assert_array_equal(spl_weights([-0.9, -0.2, 0.3], -0.5, "hard"), [1, 0, 0])   # any loss scale
    np.testing.assert_array_equal(spl_weights([0.6], 0.6, "hard"), [0])                       # strict


def test_linear_weights():
    np.testing.assert_allclose(spl_weights([0.1, 0.5, 0.9, 1.5], 1.0, "linear"), [0.9, 0.5, 0.1, 0.0])
    with pytest.raises(CurriculumConfigError, match="losses >= 0"):
        spl_weights([-0.1, 0.5], 1.0, "linear")


def test_logarithmic_weights():
    # zeta = 1 - 0.6 = 0.4: v = log(l + 0.4) / log(0.4) below 0.6
    expected = [1.0, np.log(0.65) / np.log(0.4), np.log(0.9) / np.log(0.4), 0.0]
    assert expected[1] == pytest.approx(0.470138, abs=1e-6) and expected[2] == pytest.approx(0.114986, abs=1e-6)
    np.testing.assert_allclose(spl_weights([0.0, 0.25, 0.5, 1.0], 0.6, "logarithmic"), expected, atol=1e-6)
    # losses on another scale are rescaled to [0, 1] with lam: [-1, -0.5, 0, 1] and lam 0.2 -> same as above
    np.testing.assert_allclose(spl_weights([-1.0, -0.5, 0.0, 1.0], 0.2, "logarithmic"), expected, atol=1e-6)


def test_mixture_weights():
    # lam = 1, lam' = 0.5: zeta = 0.5 / 0.5 = 1; v = 1/l - 1 between the thresholds
    np.testing.assert_allclose(spl_weights([0.25, 0.5, 0.8, 1.2], 1.0, "mixture", lam_prime=0.5),
                               [1.0, 1.0, 0.25, 0.0])
    with pytest.raises(CurriculumConfigError, match="0 < lam_prime < lam"):
        spl_weights([0.2], 1.0, "mixture", lam_prime=1.5)
    with pytest.raises(CurriculumConfigError, match="needs lam_prime"):
        spl_weights([0.2], 1.0, "mixture")


def test_bad_scheme_and_losses():
    with pytest.raises(CurriculumConfigError, match="scheme must be one of"):
        spl_weights([0.2], 1.0, "polynomial")
    with pytest.raises(CurriculumConfigError, match="finite"):
        spl_weights([0.2, np.nan], 1.0, "hard")


def test_threshold_admitting():
    losses = [0.3, 0.1, 0.2, 0.5]
    assert threshold_admitting(losses, 2) == pytest.approx(0.25)
    assert threshold_admitting(losses, 0) == pytest.approx(0.1)
    assert threshold_admitting(losses, 4) == pytest.approx(0.5 + 0.4 / 3)
    assert threshold_admitting([-0.9, -0.5, -0.2], 1) == pytest.approx(-0.7)
    for n in range(5):
        assert int((np.asarray(losses) < threshold_admitting(losses, n)).sum()) == n
    # scale invariance: an affine map of the losses admits the same cases
    scaled = 7.0 * np.asarray(losses) - 3.0
    assert np.array_equal(scaled < threshold_admitting(scaled, 3), np.asarray(losses) < threshold_admitting(losses, 3))
    # ties with the last admitted case are admitted together
    assert int((np.array([0.1, 0.2, 0.2]) < threshold_admitting([0.1, 0.2, 0.2], 2)).sum()) == 3
    with pytest.raises(CurriculumConfigError, match="n_admitted must be an integer in \\[0, 4\\]"):
        threshold_admitting(losses, 5)


def test_weighted_per_sample_loss_matches_nnunet_deep_supervision_and_weights_samples():
    """Soft-SPL loss weighting: with unit weights it is nnU-Net's deep-supervised Dice + CE; weights act per sample."""
    import torch
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from clips_nnunet.trainers.curriculum import weighted_per_sample_loss
    from clips_nnunet.trainers.per_sample_loss import per_sample_dice_ce

    g = torch.Generator().manual_seed(0)
    outputs = [torch.randn(2, 2, 8, 8, 8, generator=g), torch.randn(2, 2, 4, 4, 4, generator=g)]
    targets = [(torch.rand(2, 1, 8, 8, 8, generator=g) > 0.7).float(),
               (torch.rand(2, 1, 4, 4, 4, generator=g) > 0.7).float()]
    factors = (0.5714285714, 0.4285714286)
    nnunet = DeepSupervisionWrapper(DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False,
                                                    "ddp": False}, {}, weight_ce=1, weight_dice=1,
                                                   ignore_label=None,
                                                   dice_class=MemoryEfficientSoftDiceLoss), factors)
    ones = torch.ones(2)
    ours = weighted_per_sample_loss(per_sample_dice_ce, outputs, targets, ones, factors)
    assert float(ours) == pytest.approx(float(nnunet(outputs, targets)), abs=1e-5)
    # weight 0 on sample 1: only sample 0 counts, halved by the batch mean
    only0 = weighted_per_sample_loss(per_sample_dice_ce, outputs, targets, torch.tensor([1.0, 0.0]), factors)
    expected = sum(f * per_sample_dice_ce(o, t)[0] / 2 for f, o, t in zip(factors, outputs, targets))
    assert float(only0) == pytest.approx(float(expected), abs=1e-6)


def test_soft_spl_sample_weights_hook():
    """The soft-SPL trainers' sample_weights hook (what training calls): with spl_soft_mechanism "loss", None in
    warm-up (nnU-Net's loss), raw SPL weights of the batch losses afterwards, 0 for a non-finite loss, and all zeros
    when every case is above the threshold: as in self-paced learning such a batch contributes no gradient (the
    trainer skips the step), it does not fall back to weight 1. With the default mechanism ("sampling") the hook
    never weights: the SPL weight is applied once, by the sampling probability."""
    from types import SimpleNamespace

    from clips_nnunet.curriculum.state import DifficultyState
    from clips_nnunet.trainers.self_paced_trainers import nnUNetTrainerCLSelfPacedLinear

    class LossWeighted(nnUNetTrainerCLSelfPacedLinear):
        spl_soft_mechanism = "loss"
        pacing, pacing_a, pacing_b, min_cases = "linear", 1.0, 0.5, 1

    ids = ["a", "b", "c", "d"]
    state = DifficultyState(ids, ema_alpha=1.0)
    state.update(ids, [0.4, 0.1, 0.3, 0.2], epoch=0)
    for cls, expect_weights in ((LossWeighted, True), (nnUNetTrainerCLSelfPacedLinear, False)):
        trainer = SimpleNamespace(current_epoch=0, warmup_epochs=1, pacing="linear", pacing_a=1.0, pacing_b=0.5,
                                  min_cases=1, spl_scheme="linear", lam_prime_quantile=0.5,
                                  spl_soft_mechanism=cls.spl_soft_mechanism)
        trainer._cl_scheduler = cls.build_arm_scheduler(trainer, ids)
        trainer._cl_scheduler.plan(state, 0.0, 1, np.random.default_rng(0))       # shift 0.1, lam 0.25
        hook = cls.sample_weights
        assert hook(trainer, ["a", "b"], np.array([0.1, 0.175])) is None            # warm-up
        trainer.current_epoch = 1
        if not expect_weights:
            assert hook(trainer, ["a", "b"], np.array([0.1, 0.175])) is None
            continue
        np.testing.assert_allclose(hook(trainer, ["a", "b"], np.array([0.1, 0.175])), [1.0, 0.5])
        np.testing.assert_array_equal(hook(trainer, ["a", "b"], np.array([0.5, 0.9])), [0.0, 0.0])
        np.testing.assert_array_equal(hook(trainer, ["a", "b"], np.array([np.nan, 0.1])), [0.0, 1.0])


def test_every_self_paced_trainer_and_control_is_in_the_shim():
    """nnU-Net finds trainers through the nnUNet_extTrainer shim: the soft variants' controls must be there too."""
    import importlib.util
    from pathlib import Path

    import clips_nnunet
    from clips_nnunet.trainers import self_paced_trainers as self_paced

    shim = Path(clips_nnunet.__file__).parent / "nnunet_ext" / "clips_trainers.py"
    spec = importlib.util.spec_from_file_location("clips_trainers_self_paced_test", shim)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert len(self_paced.SELF_PACED_TRAINERS) == 4 * 3  # hard, linear, log, mixture x (curriculum, random, anti)
    for name in self_paced.SELF_PACED_TRAINERS:
        cls = getattr(module, name)
        assert cls is getattr(self_paced, name) and cls.order in ("curriculum", "random", "anti")
    assert self_paced.nnUNetTrainerCLSelfPacedLogAnti.order == "anti"
    assert self_paced.nnUNetTrainerCLSelfPacedLogAnti.spl_scheme == "logarithmic"
