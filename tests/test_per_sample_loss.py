import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from clips_nnunet.trainers.per_sample_loss import per_sample_dice_ce


def test_mean_of_per_sample_loss_equals_nnunet_default_loss():
    torch.manual_seed(0)
    nnunet_loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                                 weight_ce=1, weight_dice=1, ignore_label=None,
                                 dice_class=MemoryEfficientSoftDiceLoss)
    logits = torch.randn(3, 3, 6, 7, 8)
    target = torch.randint(0, 3, (3, 1, 6, 7, 8))
    per_sample = per_sample_dice_ce(logits, target)
    assert per_sample.shape == (3,)
    assert torch.allclose(per_sample.mean(), nnunet_loss(logits, target), atol=1e-5)


def test_perfect_prediction_has_lowest_loss_and_hand_value():
    target = torch.zeros(2, 1, 4, 4, 4, dtype=torch.long)
    target[:, :, :2] = 1
    confident = torch.where(target.bool(), torch.tensor(20.0), torch.tensor(-20.0)).float()
    logits = torch.cat([-confident, confident], dim=1)  # channel 1 = lesion
    loss = per_sample_dice_ce(logits, target)
    # CE ~ 0 and Dice ~ 1 -> loss ~ -1 for both samples
    assert torch.allclose(loss, torch.tensor([-1.0, -1.0]), atol=1e-4)
    wrong = per_sample_dice_ce(-logits, target)
    assert (wrong > 10).all()
