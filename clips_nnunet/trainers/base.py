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

The base also adds (used directly, it trains exactly like ``nnUNetTrainer``; it is the seeded stock baseline):

- reproducible seeding when the environment variable ``CLIPS_SEED`` (an int) or the class attribute ``seed`` is
  set: torch and numpy in the main process, and per-worker seeds for nnU-Net's augmentation workers (nnU-Net
  passes ``seeds=None``), all offset by the *global* DDP rank (``torch.distributed.get_rank()``), so no two
  processes of a multi-node run share an augmentation stream;
- steps that cannot help are skipped and counted (``clips_step_counts``, printed at the end of the epoch): a batch
  whose loss a weighting curriculum zeroed entirely (hook ``skip_backward()``: no backward pass, no optimiser step,
  no grad-scaler call) and a step whose gradient is not finite (no optimiser step; with AMP nnU-Net's grad scaler
  already skips it and lowers its scale; the training log names the batch's cases). Otherwise the step is nnU-Net's;
- ``get_dataloaders`` rebuilt from nnU-Net's, with the hook ``build_train_data_loader(...)`` so a subclass can swap
  the training data loader (the curriculum's shared-memory sampler) without copying the rest;
- ``checkpoint_extras()`` / ``restore_checkpoint_extras(extras)``: extra JSON-like state stored under the key
  ``"clips_extras"`` of nnU-Net's checkpoint (the curriculum state), restored by ``nnUNetv2_train ... --c``.
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast
from torch import distributed as dist
from torch._dynamo import OptimizedModule

from clips_nnunet.errors import ClipsError
from clips_nnunet.io_utils import atomic_path

from clips_nnunet.trainers.per_sample_loss import per_sample_dice_ce

Output = Union[torch.Tensor, List[torch.Tensor]]

#: augmentation worker seeds: a block of this many per (global rank, loader), for this many ranks
WORKER_SEED_BLOCK = 1024
MAX_SEEDED_RANKS = 1024


def global_rank() -> int:
    """This process's rank in the whole DDP job (0 without a process group); nnU-Net's ``local_rank`` is the
    rank used to pick the GPU."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def highest_resolution(output: Output) -> torch.Tensor:
    """The full-resolution tensor of a (possibly deep-supervised) output or target."""
    return output[0] if isinstance(output, (list, tuple)) else output


class nnUNetTrainerClipsBase(nnUNetTrainer):
    """nnU-Net's trainer with hooks for per-case loss bookkeeping, loss weighting and gradient clipping."""

    grad_clip_norm: float = 12.0
    #: optimiser step every N training steps, gradients summed over them (each step's loss / N); 1 = nnU-Net
    grad_accumulation_steps: int = 1
    #: Seed for torch, numpy and the augmentation workers; None = nnU-Net's unseeded behaviour. The environment
    #: variable CLIPS_SEED overrides it.
    seed: Optional[int] = None

    # ------------------------------------------------------------------ seeding
    def clips_seed(self) -> Optional[int]:
        """The seed in use: ``CLIPS_SEED`` if set, else the class attribute ``seed`` (None = unseeded)."""
        env = os.environ.get("CLIPS_SEED", "").strip()
        if env:
            try:
                return int(env)
            except ValueError:
                raise ClipsError(f"CLIPS_SEED must be an integer, got {env!r}; unset it or export CLIPS_SEED=0") \
                    from None
        return None if self.seed is None else int(self.seed)

    def initialize(self):
        seed = self.clips_seed()
        if seed is not None and not self.was_initialized:
            torch.manual_seed(seed)
            np.random.seed((seed + global_rank()) % 2 ** 32)
            random.seed(seed + global_rank())
        super().initialize()

    def da_worker_seeds(self, num_processes: int, loader: int) -> Optional[List[int]]:
        """Seeds for ``num_processes`` augmentation workers of ``loader`` (0 training, 1 validation), or None.

        ``seed * 2^21 + (rank * 2 + loader) * 1024 + worker`` (mod 2^32): one block of 1024 per (global rank,
        loader), so within a run no two workers of any rank or loader share a seed (up to 1024 ranks and 1024
        workers per loader, refused beyond), and runs whose seeds differ by less than 2048 use disjoint ranges.
        (The earlier ``seed * 1000 + rank * 100 + offset + worker`` overlapped from 50 workers or 10 ranks on.)"""
        seed = self.clips_seed()
        if seed is None:
            return None
        rank = global_rank()
        if not 0 <= int(num_processes) <= WORKER_SEED_BLOCK or not 0 <= rank < MAX_SEEDED_RANKS \
                or loader not in (0, 1):
            raise ClipsError(f"seeded augmentation supports up to {WORKER_SEED_BLOCK} workers per loader and "
                             f"{MAX_SEEDED_RANKS} ranks, got {num_processes} workers of loader {loader} on rank "
                             f"{rank}; lower nnUNet_n_proc_DA or unset CLIPS_SEED")
        base = int(seed) * 2 * MAX_SEEDED_RANKS * WORKER_SEED_BLOCK + (rank * 2 + int(loader)) * WORKER_SEED_BLOCK
        return [(base + i) % 2 ** 32 for i in range(int(num_processes))]

    # ------------------------------------------------------------------ data loading
    def build_train_data_loader(self, dataset_tr, batch_size: int, initial_patch_size, final_patch_size,
                                transforms) -> nnUNetDataLoader:
        """The training data loader (before it is wrapped in augmentation workers); default: nnU-Net's."""
        return nnUNetDataLoader(dataset_tr, batch_size, initial_patch_size, final_patch_size, self.label_manager,
                                oversample_foreground_percent=self.oversample_foreground_percent,
                                sampling_probabilities=None, pad_sides=None, transforms=transforms,
                                probabilistic_oversampling=self.probabilistic_oversampling)

    def get_dataloaders(self):
        """nnU-Net's ``get_dataloaders`` (2.8.1) with the ``build_train_data_loader`` hook and seeded workers."""
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        patch_size = self.configuration_manager.patch_size
        deep_supervision_scales = self._get_deep_supervision_scales()
        rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        tr_transforms = self.get_training_transforms(
            patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm,
            is_cascaded=self.is_cascaded, foreground_labels=self.label_manager.foreground_labels,
            regions=self.label_manager.foreground_regions if self.label_manager.has_regions else None,
            ignore_label=self.label_manager.ignore_label)
        val_transforms = self.get_validation_transforms(
            deep_supervision_scales, is_cascaded=self.is_cascaded,
            foreground_labels=self.label_manager.foreground_labels,
            regions=self.label_manager.foreground_regions if self.label_manager.has_regions else None,
            ignore_label=self.label_manager.ignore_label)
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        dl_tr = self.build_train_data_loader(dataset_tr, self.batch_size, initial_patch_size, patch_size,
                                             tr_transforms)
        dl_val = nnUNetDataLoader(dataset_val, self.batch_size, patch_size, patch_size, self.label_manager,
                                  oversample_foreground_percent=self.oversample_foreground_percent,
                                  sampling_probabilities=None, pad_sides=None, transforms=val_transforms,
                                  probabilistic_oversampling=self.probabilistic_oversampling)
        allowed_num_processes = get_allowed_n_proc_DA()
        if allowed_num_processes == 0:
            mt_gen_train = SingleThreadedAugmenter(dl_tr, None)
            mt_gen_val = SingleThreadedAugmenter(dl_val, None)
        else:
            n_val = max(1, allowed_num_processes // 2)
            mt_gen_train = NonDetMultiThreadedAugmenter(
                data_loader=dl_tr, transform=None, num_processes=allowed_num_processes,
                num_cached=max(6, allowed_num_processes // 2), seeds=self.da_worker_seeds(allowed_num_processes, 0),
                pin_memory=self.device.type == "cuda", wait_time=0.002)
            mt_gen_val = NonDetMultiThreadedAugmenter(
                data_loader=dl_val, transform=None, num_processes=n_val,
                num_cached=max(3, allowed_num_processes // 4), seeds=self.da_worker_seeds(n_val, 1),
                pin_memory=self.device.type == "cuda", wait_time=0.002)
        _ = next(mt_gen_train)
        _ = next(mt_gen_val)
        return mt_gen_train, mt_gen_val

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_extras(self) -> Dict[str, Any]:
        """Extra state to store in nnU-Net checkpoints under ``"clips_extras"``; default none. Chain with super()."""
        return {}

    def restore_checkpoint_extras(self, extras: Dict[str, Any]) -> None:
        """Receive ``checkpoint["clips_extras"]`` when a checkpoint is loaded (``--c``); default ignores it."""

    def save_checkpoint(self, filename: str) -> None:
        extras = self.checkpoint_extras() if self.was_initialized else {}
        if not extras:
            return super().save_checkpoint(filename)
        if self.local_rank != 0:
            return None
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return None
        # same content as nnUNetTrainer.save_checkpoint (2.8.1) plus "clips_extras", written atomically
        mod = self.network.module if self.is_ddp else self.network
        if isinstance(mod, OptimizedModule):
            mod = mod._orig_mod
        checkpoint = {
            "network_weights": mod.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            "clips_extras": extras,
        }
        with atomic_path(filename, suffix=".pth") as tmp:
            torch.save(checkpoint, tmp)
        return None

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        if isinstance(filename_or_checkpoint, dict):
            checkpoint = filename_or_checkpoint
            # nnU-Net 2.8.1 cannot load from a dict (NameError); save it to a temporary file beside nothing
            import tempfile
            with tempfile.TemporaryDirectory() as tmpdir:
                path = os.path.join(tmpdir, "checkpoint.pth")
                torch.save(checkpoint, path)
                super().load_checkpoint(path)
        else:
            checkpoint = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False)
            super().load_checkpoint(filename_or_checkpoint)
        extras = checkpoint.get("clips_extras")
        if extras:
            self.restore_checkpoint_extras(extras)

    def compute_loss(self, output: Output, target: Output, keys: Sequence[str]) -> torch.Tensor:
        """Loss the gradient follows; override (and chain) to weight samples or change the loss."""
        return self.loss(output, target)

    def per_sample_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of each sample, shape (B,), from one output scale: nnU-Net's Dice + CE per sample."""
        return per_sample_dice_ce(logits, target)

    def after_train_forward(self, keys: Sequence[str], output: Output, target: Output) -> None:
        """Called after each training forward pass with detached outputs; default does nothing."""

    def skip_backward(self) -> bool:
        """True if this step's loss must not be back-propagated (decided identically on every DDP rank, e.g. a
        weighting curriculum gave the whole global batch weight 0); default False."""
        return False

    #: per-epoch counts of skipped work (reset in on_train_epoch_start; identical on every rank)
    clips_step_counts: Dict[str, int] = {}

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.clips_step_counts = {"zero_weight_batches": 0, "skipped_steps": 0, "non_finite_gradient_steps": 0}

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        counts = self.clips_step_counts
        if any(counts.values()):
            self.print_to_log_file(f"skipped this epoch: {counts['zero_weight_batches']} batches with all loss "
                                   f"weights 0 (no backward), {counts['skipped_steps']} optimiser steps without a "
                                   f"gradient, {counts['non_finite_gradient_steps']} steps with a non-finite gradient")

    def _count(self, key: str) -> None:
        if not self.clips_step_counts:
            self.clips_step_counts = {"zero_weight_batches": 0, "skipped_steps": 0, "non_finite_gradient_steps": 0}
        self.clips_step_counts[key] += 1

    def _non_finite_gradient(self, keys: Sequence[str], norm: torch.Tensor) -> None:
        self._count("non_finite_gradient_steps")
        self.print_to_log_file(f"WARNING: optimiser step skipped, non-finite gradient norm ({float(norm)}) in the "
                               f"batch of cases {', '.join(map(str, keys)) or '(unknown)'}")

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [t.to(self.device, non_blocking=True) for t in target]
        else:
            target = target.to(self.device, non_blocking=True)
        keys = list(batch.get("keys", []))

        n_accumulate = max(1, int(self.grad_accumulation_steps))
        accumulated = getattr(self, "_clips_accumulated", 0)
        if accumulated == 0:
            self.optimizer.zero_grad(set_to_none=True)
            self._clips_window_has_grad = False
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output = self.network(data)
            loss = self.compute_loss(output, target, keys)
        with torch.no_grad():
            detached = [o.detach() for o in output] if isinstance(output, (list, tuple)) else output.detach()
            self.after_train_forward(keys, detached, target)

        self._clips_accumulated = (accumulated + 1) % n_accumulate
        do_step = self._clips_accumulated == 0
        if self.skip_backward():
            self._count("zero_weight_batches")
        else:
            backward_loss = loss / n_accumulate if n_accumulate > 1 else loss
            if self.grad_scaler is not None:
                self.grad_scaler.scale(backward_loss).backward()
            else:
                backward_loss.backward()
            self._clips_window_has_grad = True
        if do_step and not getattr(self, "_clips_window_has_grad", True):
            self._count("skipped_steps")          # nothing to step on: no scaler call, no optimiser step
        elif do_step and self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip_norm)
            self.grad_scaler.step(self.optimizer)      # skips the step itself when the gradient is not finite
            self.grad_scaler.update()
            if not torch.isfinite(norm):
                self._non_finite_gradient(keys, norm)
        elif do_step:
            norm = torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip_norm)
            if torch.isfinite(norm):
                self.optimizer.step()
            else:
                self._non_finite_gradient(keys, norm)
        return {"loss": loss.detach().cpu().numpy()}
