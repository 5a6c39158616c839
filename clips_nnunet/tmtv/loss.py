"""TMTV-Net's loss: soft Dice (foreground only) + focal + sensitivity, per sample and with deep supervision.

Terms, for softmax probabilities ``p`` (B, C, *spatial) and integer labels ``y`` (voxels with ``y >= C`` are
ignored; nnU-Net's ignore label), each computed per sample:

- soft Dice, foreground classes only (TMTV-Net: smooth 1e-3), averaged over classes ``c = 1..C-1``:
  ``dice = 1 - (2 * sum(p_c * g_c) + s) / (sum(p_c) + sum(g_c) + s)``
- focal loss (Lin et al. 2017, "Focal loss for dense object detection", gamma 1), mean over voxels:
  ``focal = mean(-(1 - p_y) ** gamma * log(p_y))``
- sensitivity (TMTV-Net: mean of ``1 - p_fg`` over ground-truth voxels), averaged over foreground classes
  present in the sample (0 for a sample without foreground):
  ``sens = sum((1 - p_c) * g_c) / sum(g_c)``

``loss = w_dice * dice + w_focal * focal + w_sens * sens``; stage 1: (1, 0.5, 2.0), refiner: (1, 0.5, 0.5).
Deep supervision, TMTV-Net's weights 1, 1/2, 1/4, 1/8 (full resolution first; TMTV-Net lists them from the coarsest
head: 1/8, 1/4, 1/2, 1), not normalised, in one of two ways:

- ``FullResolutionDeepSupervision`` (TMTV-Net, ``layers/deep_supervision.py``): each low-resolution output is
  upsampled (trilinear, corners aligned, as TMTV-Net's ``resize``) to the full-resolution target, so a lesion
  smaller than a coarse voxel still counts at every scale;
- nnU-Net's ``DeepSupervisionWrapper`` on targets downsampled by the data pipeline (nearest neighbour), where such
  lesions vanish from the coarse targets.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn

STAGE1_WEIGHTS = {"dice": 1.0, "focal": 0.5, "sensitivity": 2.0}
REFINER_WEIGHTS = {"dice": 1.0, "focal": 0.5, "sensitivity": 0.5}
#: full resolution first (strides 1, 2, 4, 8)
DEEP_SUPERVISION_WEIGHTS = (1.0, 0.5, 0.25, 0.125)


def _prepare(logits: torch.Tensor, target: torch.Tensor):
    if target.ndim == logits.ndim:
        if target.shape[1] != 1:
            raise ValueError(f"target must have one channel of integer labels, got shape {tuple(target.shape)}")
        target = target[:, 0]
    if target.shape[0] != logits.shape[0] or target.shape[1:] != logits.shape[2:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    target = target.long()
    n_classes = logits.shape[1]
    valid = (target >= 0) & (target < n_classes)
    target = torch.where(valid, target, torch.zeros_like(target))
    return logits.float(), target, valid


def tmtv_loss_terms(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-3, gamma: float = 1.0
                    ) -> Dict[str, torch.Tensor]:
    """The three TMTV-Net loss terms per sample: {"dice", "focal", "sensitivity"} -> (B,) tensors.

    ``logits``: (B, C, *spatial) raw outputs (C >= 2, softmax); ``target``: (B, 1, *spatial) or (B, *spatial)
    integer labels.
    """
    logits, target, valid = _prepare(logits, target)
    n_classes = logits.shape[1]
    if n_classes < 2:
        raise ValueError("TMTV loss needs softmax outputs with at least 2 classes (background + foreground)")
    sum_dims = tuple(range(2, logits.ndim))
    log_p = torch.log_softmax(logits, dim=1)
    p = log_p.exp()
    mask = valid.unsqueeze(1).to(p.dtype)
    onehot = F.one_hot(target, n_classes).movedim(-1, 1).to(p.dtype) * mask

    p_fg, g_fg = p[:, 1:] * mask[:, :], onehot[:, 1:]
    intersection = (p_fg * g_fg).sum(sum_dims)
    dice = 1 - (2 * intersection + smooth) / (p_fg.sum(sum_dims) + g_fg.sum(sum_dims) + smooth)

    log_pt = log_p.gather(1, target.unsqueeze(1))[:, 0]
    focal_voxel = -((1 - log_pt.exp()) ** gamma) * log_pt * valid
    focal = focal_voxel.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)

    n_gt = g_fg.sum(sum_dims)
    missed = ((1 - p[:, 1:]) * g_fg).sum(sum_dims)
    present = (n_gt > 0).to(p.dtype)
    per_class_sens = missed / n_gt.clamp(min=1)
    sensitivity = (per_class_sens * present).sum(1) / present.sum(1).clamp(min=1)
    return {"dice": dice.mean(1), "focal": focal, "sensitivity": sensitivity}


def tmtv_loss_per_sample(logits: torch.Tensor, target: torch.Tensor, weights: Dict[str, float] = STAGE1_WEIGHTS,
                         smooth: float = 1e-3, gamma: float = 1.0) -> torch.Tensor:
    """Weighted sum of the TMTV-Net loss terms per sample, shape (B,)."""
    terms = tmtv_loss_terms(logits, target, smooth, gamma)
    unknown = set(weights) - set(terms)
    if unknown:
        raise ValueError(f"unknown TMTV loss terms {sorted(unknown)}; use {sorted(terms)}")
    return sum(float(weights.get(k, 0.0)) * v for k, v in terms.items())


class TMTVLoss(nn.Module):
    """TMTV-Net's compound loss (batch mean of the per-sample loss) for one output scale."""

    def __init__(self, weights: Dict[str, float] = STAGE1_WEIGHTS, smooth: float = 1e-3, gamma: float = 1.0):
        super().__init__()
        if smooth <= 0:
            raise ValueError(f"smooth must be > 0, got {smooth}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.weights = dict(weights)
        self.smooth = float(smooth)
        self.gamma = float(gamma)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return tmtv_loss_per_sample(logits, target, self.weights, self.smooth, self.gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.per_sample(logits, target).mean()


def upsample_logits(logits: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """``logits`` resized to ``spatial_shape`` (trilinear, ``align_corners=True``, TMTV-Net's ``resize``); unchanged
    when the shape already matches."""
    if tuple(logits.shape[2:]) == tuple(int(s) for s in spatial_shape):
        return logits
    mode = {3: "trilinear", 2: "bilinear", 1: "linear"}.get(len(spatial_shape))
    if mode is None or logits.ndim != len(spatial_shape) + 2:
        raise ValueError(f"cannot resize logits {tuple(logits.shape)} to {tuple(spatial_shape)}")
    return F.interpolate(logits, size=tuple(int(s) for s in spatial_shape), mode=mode, align_corners=True)


class FullResolutionDeepSupervision(nn.Module):
    """TMTV-Net's deep supervision: ``sum_k w_k * loss(upsample(output_k), target_k)``.

    ``output``: the network's outputs, full resolution first; ``target``: one full-resolution target per output
    (the data pipeline repeats the same tensor; see ``recipe.TMTVRecipe.deep_supervision_upsample_logits``) or a
    single tensor used for every output. Weights of 0 skip an output.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float]):
        super().__init__()
        if not weights:
            raise ValueError("FullResolutionDeepSupervision needs at least one weight")
        self.loss = loss
        self.weight_factors = tuple(float(w) for w in weights)

    def forward(self, output, target) -> torch.Tensor:
        outputs = list(output) if isinstance(output, (list, tuple)) else [output]
        targets = list(target) if isinstance(target, (list, tuple)) else [target] * len(outputs)
        if len(outputs) > len(self.weight_factors) or len(targets) != len(outputs):
            raise ValueError(f"{len(outputs)} outputs, {len(targets)} targets, {len(self.weight_factors)} weights")
        total = None
        for w, o, t in zip(self.weight_factors, outputs, targets):
            if w == 0:
                continue
            term = w * self.loss(upsample_logits(o, t.shape[2:]), t)
            total = term if total is None else total + term
        return total


def deep_supervision_weights(n_outputs: int, weights: Sequence[float] = DEEP_SUPERVISION_WEIGHTS) -> list:
    """TMTV-Net's deep-supervision weights for ``n_outputs`` outputs (full resolution first): 1, 1/2, 1/4, ..."""
    if n_outputs < 1:
        raise ValueError(f"n_outputs must be >= 1, got {n_outputs}")
    return [float(weights[i]) if i < len(weights) else float(0.5 ** i) for i in range(n_outputs)]
