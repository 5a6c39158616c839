"""Per-sample losses computed from an output the forward pass already produced (no second forward pass).

``dice_ce_per_sample`` mirrors nnU-Net's default ``DC_and_CE_loss`` (soft Dice without background, smooth 1e-5,
batch_dice False, plus cross-entropy), but keeps the batch axis, so that a curriculum can
- record how hard each case currently is (detached, highest-resolution output only), and
- weight each sample's loss (SuperLoss, soft self-paced learning) at every deep-supervision output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_ce_per_sample(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Per-sample ``CE - softDice`` (nnU-Net's sign convention: the Dice term is negative), shape ``(B,)``.

    ``logits``: (B, C, *spatial) raw network output; ``target``: (B, 1, *spatial) integer labels. The Dice term
    averages over foreground classes (channels 1..C-1), like nnU-Net's ``do_bg=False``; voxels with a label >= C
    (an ignore label) count for neither term.
    """
    if target.ndim == logits.ndim:
        target = target[:, 0]
    target = target.long()
    n_classes = logits.shape[1]
    valid = target < n_classes
    target_clean = torch.where(valid, target, torch.zeros_like(target))
    logits = logits.float()
    spatial_dims = tuple(range(1, target.ndim))
    ce_voxel = F.cross_entropy(logits, target_clean, reduction="none") * valid
    ce = ce_voxel.sum(dim=spatial_dims) / valid.sum(dim=spatial_dims).clamp(min=1)

    probabilities = torch.softmax(logits, dim=1)[:, 1:]
    onehot = F.one_hot(target_clean, n_classes).movedim(-1, 1)[:, 1:].to(probabilities.dtype)
    mask = valid.unsqueeze(1).to(probabilities.dtype)
    sum_dims = tuple(range(2, probabilities.ndim))
    intersection = (probabilities * onehot * mask).sum(dim=sum_dims)
    denominator = ((probabilities + onehot) * mask).sum(dim=sum_dims)
    dice = (2 * intersection + smooth) / (denominator + smooth).clamp(min=1e-8)
    return ce - dice.mean(dim=1)
