"""``nnUNetTrainerCurriculum``: the thin nnU-Net layer of the curriculum engine.

Per epoch ``e`` (every DDP rank does the same, so all ranks hold identical state and probabilities):

1. ``on_train_epoch_start``: during the first ``warmup_epochs`` epochs sampling is uniform so every case gets
   measured; afterwards the scheduler (:meth:`build_scheduler`) plans from the per-case difficulty state at
   progress ``t = (e - warmup_epochs) / (num_epochs - warmup_epochs)``, the plan is mixed with the exploration
   probability ``epsilon`` (:func:`~clips_nnunet.curriculum.schedulers.finalize_probabilities`) and written to the
   :class:`~clips_nnunet.trainers.data_loader.CurriculumDataLoader`'s shared memory, which the augmentation
   workers read (batches already queued keep the previous probabilities: the *lag*, measured and logged).
2. each training step: the per-sample loss of the highest-resolution output of the forward pass already done
   (``per_sample_loss``, detached, no second forward pass) and whether the patch contains foreground are buffered
   with ``batch["keys"]``. The gradient follows nnU-Net's own loss object (``self.loss``, untouched) unless
   :meth:`sample_weights` returns weights this step (SuperLoss, soft self-paced learning): then it follows
   nnU-Net's loss with per-sample weights (:func:`~clips_nnunet.trainers.per_sample_loss.weighted_nnunet_loss`,
   equal to ``self.loss`` when every weight is 1, batch Dice and DDP included). Samples with a non-finite loss are
   left out (warning naming the case, counted); a global batch whose weights are all 0 gets no backward pass and
   no optimiser step (counted, :meth:`skip_backward`).
3. ``on_train_epoch_end``: (keys, losses, patch types) of all ranks are gathered (:func:`sync_patch_records`, one
   ``all_gather_object`` per epoch on every rank), turned into per-case observations by the difficulty signal
   (:class:`~clips_nnunet.trainers.difficulty_signal.PatchDifficulty`: lesion cases measured on lesion patches,
   losses centred per patch type) and folded into the EMA difficulty state; active fraction, threshold, mean loss
   of active cases, sampling entropy, non-finite losses and skipped steps go to the training log and nnU-Net's
   logger; rank 0 appends the epoch to the history (:mod:`~clips_nnunet.trainers.curriculum_history`, read with
   :func:`read_history`) and redraws ``curriculum.png`` at a bounded cost.

The state (difficulty estimates, scheduler state, signal means, epoch, random generator) is stored in nnU-Net's
checkpoints and restored by ``nnUNetv2_train ... --c``; ``curriculum_config.json`` in the fold folder records every
hyper-parameter used.
"""
from __future__ import annotations

import math
import os
import warnings
from abc import ABCMeta, abstractmethod
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import distributed as dist

from clips_nnunet.curriculum.schedulers import (CurriculumScheduler, SamplingPlan, finalize_probabilities,
                                                sampling_entropy)
from clips_nnunet.curriculum.state import DifficultyState
from clips_nnunet.curriculum.weighting import LossWeightNormaliser
from clips_nnunet.errors import CurriculumConfigError
from clips_nnunet.io_utils import atomic_write_json
from clips_nnunet.trainers.base import Output, global_rank, highest_resolution, nnUNetTrainerClipsBase
from clips_nnunet.trainers.curriculum_history import (CURRICULUM_PNG, CurriculumHistory, HistoryWriter,
                                                      plot_curriculum, read_history)
from clips_nnunet.trainers.data_loader import CurriculumDataLoader, case_has_foreground
from clips_nnunet.trainers.difficulty_signal import PatchDifficulty
from clips_nnunet.trainers.per_sample_loss import (foreground_patches, nnunet_loss_spec, weighted_nnunet_loss,
                                                   weighted_per_sample_loss)

__all__ = ["nnUNetTrainerCurriculum", "read_history", "CurriculumHistory", "plot_curriculum", "sync_patch_records",
           "weighted_per_sample_loss"]

CURRICULUM_CONFIG_JSON = "curriculum_config.json"
LOG_KEYS = ("cl_active_fraction", "cl_threshold", "cl_active_mean_loss", "cl_sampling_entropy",
            "cl_nonfinite_losses", "cl_skipped_batches", "cl_mean_loss_weight")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sync_patch_records(keys: Sequence[str], losses, patch_foreground) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """All ranks' (keys, losses, patch-has-foreground flags) concatenated in rank order; identity without an
    initialised process group. Every rank must call it once per epoch (a symmetric ``all_gather_object``)."""
    keys = [str(k) for k in keys]
    losses = np.asarray(losses, dtype=np.float64).reshape(-1)
    fg = np.asarray(patch_foreground, dtype=bool).reshape(-1)
    if not (len(keys) == losses.size == fg.size):
        raise CurriculumConfigError(f"sync got {len(keys)} keys, {losses.size} losses and {fg.size} patch types")
    if not _distributed():
        return keys, losses, fg
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (keys, losses.tolist(), fg.tolist()))
    return ([k for rank_keys, _, _ in gathered for k in rank_keys],
            np.asarray([v for _, rank_losses, _ in gathered for v in rank_losses], dtype=np.float64),
            np.asarray([f for _, _, rank_fg in gathered for f in rank_fg], dtype=bool))


class nnUNetTrainerCurriculum(nnUNetTrainerClipsBase, metaclass=ABCMeta):
    """Base of every curriculum trainer: subclasses implement :meth:`build_scheduler` (and optionally
    :meth:`sample_weights`) and set hyper-parameters as class attributes (the nnU-Net way)."""

    #: E_w, number of initial epochs of uniform sampling, so every case's loss is measured before ranking.
    warmup_epochs: int = 10
    #: epsilon, exploration probability mixed uniformly into the curriculum's distribution (epsilon-greedy),
    #: so that excluded cases keep fresh difficulty estimates.
    exploration_epsilon: float = 0.05
    #: alpha, weight of a new loss in the per-case exponential moving average d_i <- alpha l + (1 - alpha) d_i.
    loss_ema_alpha: float = 0.3
    #: floor on the number of admitted cases (besides pacing b): never fewer than max(ceil(b N), min_cases).
    min_cases: int = 2
    #: seed of the curriculum's own random generator when neither CLIPS_SEED nor ``seed`` is set (identical on
    #: every DDP rank; the samplers in the data workers use their own streams).
    curriculum_seed: int = 12345
    #: redraw curriculum.png every this many epochs (and at the first and last epoch); ~2.5 s per drawing
    curriculum_plot_every: int = 5
    #: weighting curricula: divide the raw loss weights by their running mean over the epoch, so the mean weight
    #: per sampled case is 1 as in stock nnU-Net (one step size for every arm); False keeps the raw (published)
    #: weights (:mod:`clips_nnunet.curriculum.weighting`)
    normalise_loss_weights: bool = True

    # ------------------------------------------------------------------ API for subclasses
    @abstractmethod
    def build_scheduler(self, case_ids: List[str]) -> CurriculumScheduler:
        """The scheduler of this curriculum for the training cases ``case_ids`` (the loader's order)."""

    def sample_weights(self, keys: Sequence[str], losses: np.ndarray,
                       recorded: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
        """Optional raw per-sample loss weights (shape (B,), finite, >= 0) from this batch's detached per-sample
        losses (centred like the difficulty estimates, see :mod:`~clips_nnunet.trainers.difficulty_signal`;
        non-finite for a sample whose loss is not finite: such samples are left out whatever their weight);
        ``recorded``: whether each patch is of the type its case's estimate is measured on. The engine normalises
        them (``normalise_loss_weights``).

        None (default) keeps nnU-Net's loss object for the gradient (sampling curricula, warm-up, SuperLoss before
        its threshold exists). Whether None is returned must depend on epoch-level state only (identical on every
        DDP rank), never on the batch: the weighted loss has its own collectives.
        """
        return None

    def uses_sample_weights(self) -> bool:
        """True if this class overrides :meth:`sample_weights` and its scheduler (once built) can weight the loss
        (else no per-step host sync is needed)."""
        if type(self).sample_weights is nnUNetTrainerCurriculum.sample_weights:
            return False
        return self._cl_scheduler is None or bool(self._cl_scheduler.weights_losses)

    def curriculum_progress(self, epoch: int) -> float:
        """Training progress t in [0, 1] after warm-up: ``(epoch - E_w) / max(1, num_epochs - E_w)``."""
        span = max(1, int(self.num_epochs) - int(self.warmup_epochs))
        return float(min(1.0, max(0.0, (epoch - int(self.warmup_epochs)) / span)))

    def curriculum_config(self) -> Dict[str, Any]:
        """Hyper-parameters written to ``curriculum_config.json``; extend with super() in subclasses."""
        return {"trainer": type(self).__name__, "warmup_epochs": int(self.warmup_epochs),
                "exploration_epsilon": float(self.exploration_epsilon), "loss_ema_alpha": float(self.loss_ema_alpha),
                "min_cases": int(self.min_cases), "num_epochs": int(self.num_epochs),
                "num_iterations_per_epoch": int(self.num_iterations_per_epoch), "batch_size": int(self.batch_size),
                "seed": self.clips_seed(), "curriculum_seed": self._curriculum_rng_seed(),
                "world_size": dist.get_world_size() if self.is_ddp else 1,
                "batch_dice": bool(self.configuration_manager.batch_dice),
                "difficulty_signal": "per-sample Dice+CE; lesion cases on foreground patches; centred per patch type "
                                     "by the inverse-probability-weighted mean",
                "normalise_loss_weights": bool(self.normalise_loss_weights),
                "scheduler": self._cl_scheduler.config() if self._cl_scheduler is not None else None,
                "n_cases": len(self._cl_case_ids), "case_ids": list(self._cl_case_ids)}

    # ------------------------------------------------------------------ internals
    _cl_loader: Optional[CurriculumDataLoader] = None
    _cl_state: Optional[DifficultyState] = None
    _cl_scheduler: Optional[CurriculumScheduler] = None
    _cl_signal: Optional[PatchDifficulty] = None
    _cl_rng: Optional[np.random.Generator] = None
    _cl_pending: Optional[dict] = None
    _cl_case_ids: List[str] = []
    _cl_zero_batch: bool = False
    _cl_weighting: Optional[LossWeightNormaliser] = None

    def _curriculum_rng_seed(self) -> int:
        seed = self.clips_seed()
        return int(self.curriculum_seed if seed is None else seed)

    def validate_curriculum_attributes(self) -> None:
        """Raise :class:`CurriculumConfigError` naming a bad class attribute or dataset and what to do."""
        if int(self.warmup_epochs) != self.warmup_epochs or self.warmup_epochs < 0:
            raise CurriculumConfigError(f"warmup_epochs must be an integer >= 0, got {self.warmup_epochs!r} "
                                        f"(set it on your trainer subclass)")
        if self.warmup_epochs > 0 and self.warmup_epochs >= self.num_epochs:
            raise CurriculumConfigError(f"warmup_epochs ({self.warmup_epochs}) >= num_epochs ({self.num_epochs}): "
                                        f"the curriculum would never start; set warmup_epochs below num_epochs on "
                                        f"your trainer subclass")
        if not 0.0 <= float(self.exploration_epsilon) <= 1.0:
            raise CurriculumConfigError(f"exploration_epsilon must be in [0, 1], got {self.exploration_epsilon}")
        if not 0.0 < float(self.loss_ema_alpha) <= 1.0:
            raise CurriculumConfigError(f"loss_ema_alpha must be in (0, 1], got {self.loss_ema_alpha}")
        if int(self.min_cases) != self.min_cases or self.min_cases < 1:
            raise CurriculumConfigError(f"min_cases must be an integer >= 1, got {self.min_cases!r}")
        if self.label_manager.has_regions:
            raise CurriculumConfigError(
                f"{type(self).__name__} needs a label-based dataset: {self.plans_manager.dataset_name} defines "
                f"regions (dataset.json 'labels' with lists and 'regions_class_order'), whose sigmoid loss has no "
                f"per-case Dice + CE here; train it with nnUNetTrainer or convert the regions to labels")

    def build_train_data_loader(self, dataset_tr, batch_size, initial_patch_size, final_patch_size, transforms):
        self._cl_loader = CurriculumDataLoader(
            dataset_tr, batch_size, initial_patch_size, final_patch_size, self.label_manager,
            oversample_foreground_percent=self.oversample_foreground_percent, sampling_probabilities=None,
            pad_sides=None, probabilistic_oversampling=self.probabilistic_oversampling, transforms=transforms,
            seed=self.clips_seed())
        return self._cl_loader

    def on_train_start(self):
        # validate before the (slow) data loader start: attributes, split, scheduler parameters (e.g. pacing)
        self.validate_curriculum_attributes()
        tr_keys, _ = self.do_split()
        if len(tr_keys) == 0:
            raise CurriculumConfigError(f"fold {self.fold}: the training split is empty; check splits_final.json in "
                                        f"{self.preprocessed_dataset_folder_base}")
        self.build_scheduler(sorted(str(k) for k in tr_keys))
        super().on_train_start()
        self._cl_setup()

    def _cl_loss_spec(self):
        """nnU-Net's loss description for the weighted loss (None: a loss with ``per_sample``, e.g. the TMTV
        recipe's); a loss that can be neither is refused at start."""
        spec = nnunet_loss_spec(self.loss)
        if spec is None:
            inner = getattr(self.loss, "loss", self.loss)
            if not callable(getattr(inner, "per_sample", None)):
                raise CurriculumConfigError(
                    f"{type(self).__name__} weights per-sample losses, but its loss {type(inner).__name__} is neither "
                    f"nnU-Net's DC_and_CE_loss nor a loss with a per_sample(logits, target) method; use a sampling "
                    f"curriculum with this loss")
        return spec

    def _cl_setup(self) -> None:
        if self._cl_loader is None:
            raise CurriculumConfigError("the training data loader is not a CurriculumDataLoader; a subclass "
                                        "overrode build_train_data_loader without chaining super()")
        case_ids = list(self._cl_loader.case_ids)
        self._cl_case_ids = case_ids
        self._cl_state = DifficultyState(case_ids, self.loss_ema_alpha)
        has_fg = case_has_foreground(self._cl_loader._data, case_ids, self.label_manager.foreground_labels)
        self._cl_signal = PatchDifficulty(case_ids, has_fg)
        scheduler = self.build_scheduler(list(case_ids))
        if not isinstance(scheduler, CurriculumScheduler):
            raise CurriculumConfigError(f"{type(self).__name__}.build_scheduler must return a CurriculumScheduler, "
                                        f"got {type(scheduler).__name__}")
        if list(scheduler.case_ids) != case_ids:
            unknown = sorted(set(scheduler.case_ids) - set(case_ids))
            raise CurriculumConfigError(f"the scheduler's case ids differ from the training split (unknown case ids: "
                                        f"{unknown[:10]}); build it from the case_ids passed to build_scheduler")
        self._cl_scheduler = scheduler
        self._cl_spec = self._cl_loss_spec() if self.uses_sample_weights() else None
        self._cl_rng = np.random.default_rng(self._curriculum_rng_seed())
        if self._cl_pending is not None:
            self._cl_restore(self._cl_pending)
            self._cl_pending = None
        self._cl_register_log_keys()
        self._cl_reset_buffers()
        self._cl_plan: Optional[SamplingPlan] = None
        self._cl_writer = HistoryWriter(self.output_folder, case_ids, type(self).__name__)
        if global_rank() == 0:
            atomic_write_json(os.path.join(self.output_folder, CURRICULUM_CONFIG_JSON), self.curriculum_config())
            message = self._cl_writer.start(int(self.current_epoch))
            if message:
                self.print_to_log_file(f"curriculum WARNING: {message}")
        self.print_to_log_file(f"curriculum: {type(self).__name__} over {len(case_ids)} training cases "
                               f"({int(has_fg.sum())} with foreground), scheduler {type(scheduler).__name__}, warm-up "
                               f"{self.warmup_epochs} epochs, epsilon {self.exploration_epsilon}, EMA alpha "
                               f"{self.loss_ema_alpha}, batch Dice {self.configuration_manager.batch_dice}")

    def _cl_reset_buffers(self) -> None:
        self._cl_key_buf: List[str] = []
        self._cl_loss_buf: List[torch.Tensor] = []
        self._cl_fg_buf: List[torch.Tensor] = []
        self._cl_versions: List[int] = []
        self._cl_cached: Optional[torch.Tensor] = None
        self._cl_step_nonfinite = 0
        if self._cl_weighting is None or self._cl_weighting.normalise != bool(self.normalise_loss_weights):
            self._cl_weighting = LossWeightNormaliser(bool(self.normalise_loss_weights))
        self._cl_weighting.start_epoch()

    def _cl_restore(self, saved: dict) -> None:
        state = DifficultyState.from_dict(saved["state"])
        if state.case_ids != self._cl_case_ids:
            unknown = sorted(set(state.case_ids) - set(self._cl_case_ids))
            missing = sorted(set(self._cl_case_ids) - set(state.case_ids))
            raise CurriculumConfigError(
                f"the checkpoint's curriculum state does not match this fold's training split (unknown case ids "
                f"{unknown[:10]}, missing {missing[:10]}); continue with the same dataset and splits_final.json, "
                f"or start a new training without --c")
        self._cl_state = state
        self._cl_scheduler.load_state_dict(saved.get("scheduler", {}))
        self._cl_signal.load_state_dict(saved.get("signal", {}))
        self._cl_rng.bit_generator.state = saved["rng"]
        self.print_to_log_file(f"curriculum: state restored from the checkpoint (epoch {saved.get('epoch')}, "
                               f"{int(state.visits.sum())} case losses recorded)")

    def _cl_register_log_keys(self) -> None:
        store = self.logger.local_logger.my_fantastic_logging
        for key in LOG_KEYS:
            if key not in store:
                store[key] = [float("nan")] * int(self.current_epoch)

    def checkpoint_extras(self) -> Dict[str, Any]:
        extras = super().checkpoint_extras()
        if self._cl_state is not None:
            extras["curriculum"] = {"state": self._cl_state.to_dict(), "scheduler": self._cl_scheduler.state_dict(),
                                    "signal": self._cl_signal.state_dict(),
                                    "rng": self._cl_rng.bit_generator.state, "epoch": int(self.current_epoch),
                                    "trainer": type(self).__name__}
        return extras

    def restore_checkpoint_extras(self, extras: Dict[str, Any]) -> None:
        super().restore_checkpoint_extras(extras)
        if "curriculum" in extras:
            self._cl_pending = extras["curriculum"]
            if self._cl_scheduler is not None:   # already set up (load after on_train_start)
                self._cl_restore(self._cl_pending)
                self._cl_pending = None

    # ------------------------------------------------------------------ per epoch / per step
    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        plan, probabilities, progress, warm = self._cl_plan_epoch(int(self.current_epoch))
        n = len(self._cl_case_ids)
        self._cl_version = self._cl_loader.set_probabilities(probabilities)
        threshold = "none" if plan.threshold is None else f"{plan.threshold:.4g}"
        self.print_to_log_file(f"curriculum: {'warm-up (uniform)' if warm else f'progress {progress:.3f}'}, active "
                               f"fraction {plan.active_fraction:.3f}, threshold {threshold}, sampling entropy "
                               f"{sampling_entropy(probabilities):.3f} nats (uniform {math.log(n):.3f})")

    def _cl_plan_epoch(self, epoch: int):
        """The epoch's plan and sampling probabilities (uniform during warm-up); resets the step buffers and the
        loss-weight bookkeeping. Plain numpy on the trainer's state: no collective, identical on every rank."""
        warm = epoch < int(self.warmup_epochs)
        n = len(self._cl_case_ids)
        progress = self.curriculum_progress(epoch)
        self._cl_scheduler.set_num_epochs(int(self.num_epochs))   # a subclass may have changed it after the scheduler was built
        if warm:
            plan = SamplingPlan(np.full(n, 1.0 / n), 1.0, None, {"warmup": True})
        else:
            plan = self._cl_scheduler.plan(self._cl_state, progress, epoch, self._cl_rng)
            if np.asarray(plan.probabilities).shape != (n,):
                raise CurriculumConfigError(f"{type(self._cl_scheduler).__name__}.plan returned "
                                            f"{np.asarray(plan.probabilities).shape} probabilities for {n} cases")
        probabilities = finalize_probabilities(plan.probabilities, self.exploration_epsilon, warm)
        self._cl_plan, self._cl_probabilities, self._cl_progress, self._cl_warm = plan, probabilities, progress, warm
        self._cl_estimates = self._cl_state.estimates()
        self._cl_reset_buffers()
        return plan, probabilities, progress, warm

    def _cl_raw_weights(self, keys: Sequence[str], losses: np.ndarray, fg: np.ndarray) -> Optional[np.ndarray]:
        """This batch's raw loss weights (:meth:`sample_weights` of the losses centred like the estimates), or None
        for no weighting."""
        return self.sample_weights(keys, self._cl_signal.centre(losses, fg), self._cl_signal.recorded(keys, fg))

    def _cl_observe(self, keys: Sequence[str], losses: np.ndarray, fg: np.ndarray, epoch: int):
        """Fold one epoch's gathered patches into the difficulty state: centred observations (inverse-probability
        centre) for the EMA, raw losses for DIH. Returns ``(obs_keys, obs_values, n_skipped, finite)``."""
        obs_keys, obs_values, n_skipped = self._cl_signal.observations(keys, losses, fg, self._cl_probabilities,
                                                                       self._cl_estimates)
        obs_raw = np.asarray(losses, dtype=np.float64)[self._cl_signal.recorded(keys, fg)]
        ok = np.isfinite(obs_values)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self._cl_state.update([k for k, o in zip(obs_keys, ok) if o], obs_values[ok], epoch, obs_raw[ok])
        for w in caught:
            self.print_to_log_file(f"curriculum WARNING: {w.message}")
        return obs_keys, obs_values, n_skipped, ok

    def train_step(self, batch: dict) -> dict:
        version = batch.get("curriculum_version")
        if version is not None:
            self._cl_versions.append(int(version))
        return super().train_step(batch)

    def skip_backward(self) -> bool:
        return bool(self._cl_zero_batch) or super().skip_backward()

    def compute_loss(self, output: Output, target: Output, keys: Sequence[str]) -> torch.Tensor:
        self._cl_cached = None
        self._cl_zero_batch = False
        if not self.uses_sample_weights():
            self._cl_weighting.unweighted(len(keys))
            return super().compute_loss(output, target, keys)
        hi_out, hi_target = highest_resolution(output), highest_resolution(target)
        with torch.no_grad():
            detached = self.per_sample_loss(hi_out.detach(), hi_target).float()
            fg = foreground_patches(hi_target, hi_out.shape[1]).cpu().numpy()
        self._cl_cached = detached
        losses = detached.cpu().numpy()
        weights = self._cl_raw_weights(keys, losses, fg)
        if weights is None:
            self._cl_weighting.unweighted(len(keys))
            return super().compute_loss(output, target, keys)      # nnU-Net's loss object, untouched
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != (hi_out.shape[0],) or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise CurriculumConfigError(f"{type(self).__name__}.sample_weights must return {hi_out.shape[0]} finite "
                                        f"weights >= 0, got {np.asarray(weights).tolist()}")
        keep_np = np.isfinite(losses)
        if not keep_np.all():
            bad = [str(k) for k, ok in zip(keys, keep_np) if not ok]
            self._cl_step_nonfinite += len(bad)
            self.print_to_log_file(f"curriculum WARNING: non-finite training loss of case(s) {', '.join(bad)} in "
                                   f"epoch {self.current_epoch}: left out of this step's weighted loss")
        device = hi_out.device
        keep = torch.as_tensor(keep_np, device=device)
        totals = torch.tensor([float((w * keep_np).sum()), float(w.size)], dtype=torch.float64, device=device)
        if _distributed():
            dist.all_reduce(totals)                      # every rank weights this step (epoch-level decision)
        raw_sum, count = (float(v) for v in totals.tolist())
        factor = self._cl_weighting.scale(raw_sum, int(round(count)))   # identical on every rank
        w = w * factor
        w_t = torch.as_tensor(w, dtype=torch.float32, device=device)
        self._cl_zero_batch = raw_sum == 0.0
        if self._cl_spec is not None:
            return weighted_nnunet_loss(self._cl_spec, output, target, w_t, keep=keep,
                                        weight_mean=torch.tensor(raw_sum * factor / count, dtype=torch.float32,
                                                                 device=device))
        inner = getattr(self.loss, "loss", self.loss)
        return weighted_per_sample_loss(inner.per_sample, output, target, w_t,
                                        getattr(self.loss, "weight_factors", None), keep=keep)

    def after_train_forward(self, keys: Sequence[str], output: Output, target: Output) -> None:
        super().after_train_forward(keys, output, target)
        hi_out, hi_target = highest_resolution(output), highest_resolution(target)
        if self._cl_cached is not None:
            losses = self._cl_cached
            self._cl_cached = None
        else:
            losses = self.per_sample_loss(hi_out, hi_target)
        self._cl_loss_buf.append(losses.detach().float())
        self._cl_fg_buf.append(foreground_patches(hi_target, hi_out.shape[1]))
        self._cl_key_buf.extend(str(k) for k in keys)

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        epoch = int(self.current_epoch)
        local = torch.cat(self._cl_loss_buf).cpu().numpy() if self._cl_loss_buf else np.zeros(0)
        local_fg = torch.cat(self._cl_fg_buf).cpu().numpy() if self._cl_fg_buf else np.zeros(0, dtype=bool)
        keys, losses, fg = sync_patch_records(self._cl_key_buf, local, local_fg)
        finite = np.isfinite(losses)
        if not finite.all():
            bad = sorted({k for k, ok in zip(keys, finite) if not ok})
            self.print_to_log_file(f"curriculum WARNING: {int((~finite).sum())} non-finite training loss(es) in epoch "
                                   f"{epoch}, case(s) {', '.join(bad)}: skipped for the difficulty estimates")
        obs_keys, obs_values, n_skipped, ok = self._cl_observe(keys, losses, fg, epoch)
        plan, probabilities = self._cl_plan, self._cl_probabilities
        active = np.asarray(plan.probabilities) > 0
        active_keys = {k for k, a in zip(self._cl_case_ids, active) if a}
        active_losses = [v for k, v in zip(obs_keys, obs_values) if k in active_keys and np.isfinite(v)]
        mean_active = float(np.mean(active_losses)) if active_losses else float("nan")
        entropy = sampling_entropy(probabilities)
        threshold = float("nan") if plan.threshold is None else float(plan.threshold)
        counts = dict(self.clips_step_counts)
        skipped_batches = int(counts.get("zero_weight_batches", 0))
        mean_weight = float(self._cl_weighting.realised_mean)
        for key, value in zip(LOG_KEYS, (float(plan.active_fraction), threshold, mean_active, entropy,
                                         float((~finite).sum()), float(skipped_batches), mean_weight)):
            self.logger.log(key, value, epoch)
        lag = int(sum(v < self._cl_version for v in self._cl_versions))
        record = {"warmup": bool(self._cl_warm), "progress": self._cl_progress,
                  "active_fraction": float(plan.active_fraction), "threshold": plan.threshold,
                  "mean_active_loss": mean_active, "sampling_entropy": entropy, "lag_batches": lag,
                  "n_losses": int(len(keys)), "n_observations": int(ok.sum()),
                  "skipped_background_patches": n_skipped, "nonfinite_losses": int((~finite).sum()),
                  "nonfinite_weighted_step_losses": int(self._cl_step_nonfinite),
                  "cl_mean_loss_weight": mean_weight,
                  "signal_means": self._cl_signal.means, **counts, "extra": plan.extra}
        self.print_to_log_file(f"curriculum: mean difficulty of active cases {mean_active:.4f}; {len(keys)} patch "
                               f"losses, {int(ok.sum())} recorded ({n_skipped} background patches of lesion cases "
                               f"skipped); {lag} of {len(self._cl_versions)} batches were drawn with the previous "
                               f"epoch's probabilities (lag)")
        if global_rank() == 0:
            self._cl_writer.append(epoch, probabilities, self._cl_estimates, record, self._cl_state.to_dict())
            every = max(1, int(self.curriculum_plot_every))
            if epoch % every and epoch not in (0, int(self.num_epochs) - 1):
                return
            try:
                plot_curriculum(self.output_folder, os.path.join(self.output_folder, CURRICULUM_PNG))
            except Exception as e:  # a plot must never stop a training
                self.print_to_log_file(f"curriculum: could not write {CURRICULUM_PNG}: {e}")
