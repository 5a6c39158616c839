"""``nnUNetTrainerClipsBase``: nnU-Net's trainer with three hooks in ``train_step``, shared by every clips trainer.

The curriculum engine and the TMTV recipe are two independent axes combined by multiple inheritance
(``class nnUNetTrainerTMTVCLSelfPaced(TMTVRecipe, nnUNetTrainerCLSelfPaced)``). Both need to change a piece of
``train_step`` (the recipe: gradient clipping and loss; the curriculum: per-case loss bookkeeping and per-sample
loss weights), so the step lives here once, with hooks each axis overrides and chains with ``super()``:

- ``grad_clip_norm`` (class attribute; nnU-Net's default 12),
- ``compute_loss(output, target, keys)``: the loss the gradient follows (default: ``self.loss``),
- ``per_sample_loss(logits, target)``: one loss value per sample from one output (default: nnU-Net's Dice + CE),
- ``after_train_forward(keys, output, target)``: called with the detached outputs after each forward pass.
Everything else is nnU-Net's own ``train_step`` (AMP on CUDA, grad scaler, clipping, optimiser step).
"""
from __future__ import annotations

from typing import List, Sequence, Union

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

from clips_nnunet.trainers.per_sample_loss import dice_ce_per_sample

Output = Union[torch.Tensor, List[torch.Tensor]]


def highest_resolution(output: Output) -> torch.Tensor:
    """The full-resolution tensor of a (possibly deep-supervised) output or target."""
    return output[0] if isinstance(output, (list, tuple)) else output


class nnUNetTrainerClipsBase(nnUNetTrainer):
    """nnU-Net's trainer with hooks for per-case loss bookkeeping, loss weighting and gradient clipping."""

    grad_clip_norm: float = 12.0

    def compute_loss(self, output: Output, target: Output, keys: Sequence[str]) -> torch.Tensor:
        """Loss the gradient follows; override (and chain) to weight samples or change the loss."""
        return self.loss(output, target)

    def per_sample_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of each sample, shape (B,), from one output scale: nnU-Net's Dice + CE per sample."""
        return dice_ce_per_sample(logits, target)

    def after_train_forward(self, keys: Sequence[str], output: Output, target: Output) -> None:
        """Called after each training forward pass with detached outputs; default does nothing."""

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [t.to(self.device, non_blocking=True) for t in target]
        else:
            target = target.to(self.device, non_blocking=True)
        keys = list(batch.get("keys", []))

        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output = self.network(data)
            loss = self.compute_loss(output, target, keys)
        with torch.no_grad():
            detached = [o.detach() for o in output] if isinstance(output, (list, tuple)) else output.detach()
            self.after_train_forward(keys, detached, target)

        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip_norm)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip_norm)
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy()}
