"""Per-sample losses and nnU-Net's loss with per-sample weights, from an output the forward pass already produced.

Two concepts live here:

- :func:`per_sample_dice_ce`: one value per sample of nnU-Net's default ``DC_and_CE_loss`` (soft Dice without
  background, smooth 1e-5, per-sample Dice, plus cross-entropy); the curriculum's difficulty signal (detached,
  highest-resolution output only) and the input of per-sample weights (SuperLoss, soft self-paced learning).
- :func:`weighted_nnunet_loss`: **nnU-Net's own loss object** (``self.loss``: ``DC_and_CE_loss``, optionally inside
  ``DeepSupervisionWrapper``) evaluated with a weight ``w_b >= 0`` per sample. With every ``w_b = 1`` it equals
  ``self.loss(output, target)`` (to float rounding) for ``batch_dice`` True and False, with and without an ignore
  label and deep supervision, and under DDP. Definitions (one output scale; deep supervision sums them with
  nnU-Net's factors, skipping factor-0 outputs exactly like ``DeepSupervisionWrapper``):

  * cross-entropy: nnU-Net averages over the valid (not ignored) voxels of the whole local batch,
    ``CE = sum_b S_b / N`` with ``S_b`` the CE summed over sample b's valid voxels and ``N`` the local number of
    valid voxels; weighted: ``CE_w = sum_b w_b S_b / N`` (``N`` unweighted, so ``w_b`` multiplies sample b's
    contribution and its gradient exactly);
  * Dice, ``batch_dice=False``: ``-mean_{b,c} w_b dc_{b,c}`` (exact per-sample weighting);
  * Dice, ``batch_dice=True``: nnU-Net's Dice of the pooled statistics ``I_c = sum_b I_{b,c}``,
    ``P_c``, ``G_c`` (all-gathered over DDP ranks) is not a sum over samples, so per-sample weighting is defined as
    **weighted batch-Dice statistics**: ``I^w_c = sum_b w_b I_{b,c}`` (same for ``P``, ``G``; gathered across ranks
    with nnU-Net's ``AllGatherGrad``), ``dc^w_c = (2 I^w_c + s) / max(P^w_c + G^w_c + s, 1e-8)``, and the term is
    ``-wbar * mean_c dc^w_c`` with ``wbar`` the mean weight of the global batch (all ranks). A sample with weight 0
    neither enters the statistics nor receives a gradient; with one non-zero weight ``w`` it reduces to
    ``-(w / B) dc_b``, the per-sample definition; scaling all weights by ``k`` scales the term by ``k``, like CE.

  Samples whose ``keep`` flag is False (a non-finite per-sample loss) are removed with ``torch.where`` (not
  multiplied by 0, which would keep a NaN), and their logits are replaced by 0 before the softmax and the
  cross-entropy, so their gradient is exactly 0 (masking only the loss leaves 0 x NaN = NaN in the backward pass).

Other losses with a ``per_sample(logits, target)`` method whose forward is its batch mean (the TMTV recipe's loss)
are weighted as ``sum_k DS_k mean_b(w_b l_{k,b})`` (:func:`weighted_per_sample_loss`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import distributed as dist

from clips_nnunet.errors import CurriculumConfigError

Output = Union[torch.Tensor, List[torch.Tensor]]


def per_sample_dice_ce(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
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


def foreground_patches(target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Boolean (B,): does sample b's target contain a foreground voxel (label 1..n_classes-1, not the ignore
    label)?"""
    t = target[:, 0] if target.ndim >= 2 and target.shape[1] == 1 else target
    t = t.long()
    return ((t >= 1) & (t < n_classes)).flatten(1).any(dim=1)


# ---------------------------------------------------------------------------------------------- nnU-Net's loss

@dataclass(frozen=True)
class NnUNetLossSpec:
    """What :func:`weighted_nnunet_loss` needs from nnU-Net's loss object (read by :func:`nnunet_loss_spec`)."""

    weight_factors: Optional[Tuple[float, ...]]   # deep-supervision factors; None = a single output
    weight_ce: float
    weight_dice: float
    ignore_label: Optional[int]
    batch_dice: bool
    do_bg: bool
    smooth: float
    ddp: bool


def nnunet_loss_spec(loss) -> Optional[NnUNetLossSpec]:
    """The parameters of nnU-Net's ``DC_and_CE_loss`` (optionally in ``DeepSupervisionWrapper``); None if ``loss``
    is another loss. Raises :class:`CurriculumConfigError` for a ``DC_and_CE_loss`` variant this module cannot
    weight exactly (class weights or label smoothing in the CE, TopK)."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss, SoftDiceLoss

    factors = None
    inner = loss
    if isinstance(loss, DeepSupervisionWrapper):
        factors, inner = tuple(float(f) for f in loss.weight_factors), loss.loss
    if not isinstance(inner, DC_and_CE_loss):
        return None
    dc = getattr(inner.dc, "_orig_mod", inner.dc)        # torch.compile'd Dice (nnUNet_compile)
    ce = inner.ce
    if not isinstance(dc, (MemoryEfficientSoftDiceLoss, SoftDiceLoss)) or getattr(dc, "clip_tp", None) is not None:
        raise CurriculumConfigError(f"per-sample loss weighting supports nnU-Net's soft Dice, got "
                                    f"{type(dc).__name__}; use a sampling curriculum with this loss")
    if type(ce).__name__ != "RobustCrossEntropyLoss" or ce.weight is not None or ce.label_smoothing != 0 \
            or ce.reduction != "mean":
        raise CurriculumConfigError(f"per-sample loss weighting supports nnU-Net's plain cross-entropy (no class "
                                    f"weights, no label smoothing, mean), got {type(ce).__name__}; use a sampling "
                                    f"curriculum with this loss")
    return NnUNetLossSpec(weight_factors=factors, weight_ce=float(inner.weight_ce),
                          weight_dice=float(inner.weight_dice), ignore_label=inner.ignore_label,
                          batch_dice=bool(dc.batch_dice), do_bg=bool(dc.do_bg), smooth=float(dc.smooth),
                          ddp=bool(dc.ddp) and dist.is_available() and dist.is_initialized())


def _gather_sum(x: torch.Tensor) -> torch.Tensor:
    """nnU-Net's DDP batch-Dice gather: ``AllGatherGrad`` then sum over ranks (gradient flows back)."""
    from nnunetv2.utilities.ddp_allgather import AllGatherGrad

    return AllGatherGrad.apply(x).sum(0, dtype=torch.float32)


def _one_scale(logits: torch.Tensor, target: torch.Tensor, w: torch.Tensor, keep: torch.Tensor,
               weight_mean: torch.Tensor, spec: NnUNetLossSpec) -> torch.Tensor:
    """Weighted ``DC_and_CE_loss`` of one output scale (definitions in the module docstring)."""
    if target.ndim != logits.ndim:
        target = target.view((target.shape[0], 1, *target.shape[1:]))
    if spec.ignore_label is not None:
        mask = target != spec.ignore_label
        target_dice = torch.where(mask, target, 0)
        n_valid = mask.sum()
    else:
        mask, target_dice, n_valid = None, target, None
    # a removed sample's logits are replaced by 0 BEFORE softmax and CE: a NaN/inf logit then gives that sample a
    # zero gradient (torch.where after the loss would give 0 x NaN = NaN in the backward pass)
    logits = torch.where(keep.view(-1, *([1] * (logits.ndim - 1))), logits, torch.zeros_like(logits))
    wk = torch.where(keep, w, torch.zeros_like(w))
    result = 0.0
    if spec.weight_dice != 0:
        x = torch.softmax(logits, 1)
        axes = tuple(range(2, x.ndim))
        with torch.no_grad():
            y_onehot = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
            y_onehot.scatter_(1, target_dice.long(), 1)
            if not spec.do_bg:
                y_onehot = y_onehot[:, 1:]
            sum_gt = y_onehot.sum(axes, dtype=torch.float32) if mask is None else \
                (y_onehot * mask).sum(axes, dtype=torch.float32)
        if not spec.do_bg:
            x = x[:, 1:]
        if mask is None:
            intersect = (x * y_onehot).sum(axes, dtype=torch.float32)
            sum_pred = x.sum(axes, dtype=torch.float32)
        else:
            intersect = (x * y_onehot * mask).sum(axes, dtype=torch.float32)
            sum_pred = (x * mask).sum(axes, dtype=torch.float32)
        keep2, w2 = keep[:, None], wk[:, None].to(torch.float32)
        if spec.batch_dice:
            stats = [torch.where(keep2, w2 * s, torch.zeros_like(s)) for s in (intersect, sum_pred, sum_gt)]
            if spec.ddp:
                stats = [_gather_sum(s) for s in stats]
            intersect, sum_pred, sum_gt = (s.sum(0, dtype=torch.float32) for s in stats)
            dc = (2 * intersect + spec.smooth) / (sum_gt + sum_pred + float(spec.smooth)).clamp_min(1e-8)
            dice_term = -(weight_mean * dc.mean())
        else:
            dc = (2 * intersect + spec.smooth) / (sum_gt + sum_pred + float(spec.smooth)).clamp_min(1e-8)
            dice_term = -torch.where(keep2, w2 * dc, torch.zeros_like(dc)).mean()
        result = result + spec.weight_dice * dice_term
    if spec.weight_ce != 0 and (n_valid is None or n_valid > 0):
        ignore_index = spec.ignore_label if spec.ignore_label is not None else -100
        ce_voxel = F.cross_entropy(logits, target[:, 0].long(), reduction="none", ignore_index=ignore_index)
        per_sample = ce_voxel.flatten(1).sum(1)
        denominator = ce_voxel.numel() if n_valid is None else n_valid
        ce = torch.where(keep, wk.to(per_sample.dtype) * per_sample, torch.zeros_like(per_sample)).sum() / denominator
        result = result + spec.weight_ce * ce
    return result


def weighted_nnunet_loss(spec: NnUNetLossSpec, output: Output, target: Output, weights: torch.Tensor,
                         keep: Optional[torch.Tensor] = None,
                         weight_mean: Optional[Union[float, torch.Tensor]] = None) -> torch.Tensor:
    """nnU-Net's loss (described by ``spec``) with per-sample ``weights`` (B,), see the module docstring.

    ``keep`` (bool (B,), default all True) removes samples (non-finite losses); ``weight_mean`` is ``wbar`` of the
    batch-Dice definition, the mean of the kept weights over the global batch (pass the DDP-reduced value; default:
    the local mean over all B samples).
    """
    weights = weights.reshape(-1)
    keep = torch.ones_like(weights, dtype=torch.bool) if keep is None else keep.reshape(-1).to(torch.bool)
    if weight_mean is None:
        weight_mean = torch.where(keep, weights, torch.zeros_like(weights)).float().mean()
    if spec.weight_factors is None:
        return _one_scale(highest(output), highest(target), weights, keep, weight_mean, spec)
    if not isinstance(output, (list, tuple)):
        raise CurriculumConfigError("nnU-Net's loss has deep supervision but the network returned one output")
    return sum(f * _one_scale(o, t, weights, keep, weight_mean, spec)
               for f, o, t in zip(spec.weight_factors, output, target) if f != 0.0)


def weighted_per_sample_loss(per_sample_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], output: Output,
                             target: Output, weights: torch.Tensor,
                             weight_factors: Optional[Sequence[float]] = None,
                             keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``sum_k DS_k * mean_b(w_b * per_sample_loss(output_k, target_k)_b)`` over deep-supervision outputs ``k``
    (a single output: ``mean_b(w_b * l_b)``), for losses that are the batch mean of a per-sample loss (TMTV
    recipe). Samples with ``keep`` False count as 0."""
    keep_t = None if keep is None else keep.reshape(-1).to(torch.bool)

    def term(o, t):
        if keep_t is not None:     # masked before the loss: a non-finite logit gets a zero gradient, not NaN
            o = torch.where(keep_t.view(-1, *([1] * (o.ndim - 1))), o, torch.zeros_like(o))
        values = weights * per_sample_loss(o, t)
        if keep_t is not None:
            values = torch.where(keep_t, values, torch.zeros_like(values))
        return values.mean()

    if isinstance(output, (list, tuple)):
        factors = tuple(weight_factors) if weight_factors is not None else (1.0,) * len(output)
        return sum(f * term(o, t) for f, o, t in zip(factors, output, target) if f != 0)
    return term(output, target)


def highest(output: Output) -> torch.Tensor:
    """The full-resolution tensor of a (possibly deep-supervised) output or target."""
    return output[0] if isinstance(output, (list, tuple)) else output
