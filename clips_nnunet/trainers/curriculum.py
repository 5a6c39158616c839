"""``nnUNetTrainerCurriculum``: the thin nnU-Net layer of the curriculum engine.

Per epoch ``e`` (every DDP rank does the same, so all ranks hold identical state and probabilities):

1. ``on_train_epoch_start``: during the first ``warmup_epochs`` epochs sampling is uniform so every case gets
   measured; afterwards the scheduler (:meth:`build_scheduler`) plans from the per-case difficulty state at
   progress ``t = (e - warmup_epochs) / (num_epochs - warmup_epochs)``, the plan is mixed with the exploration
   probability ``epsilon`` (:func:`~clips_nnunet.curriculum.schedulers.finalize_probabilities`) and written to the
   :class:`~clips_nnunet.trainers.data_loader.CurriculumDataLoader`'s shared memory, which the augmentation
   workers read.
2. each training step: the per-case loss of the highest-resolution output of the forward pass already done
   (``per_sample_loss``, detached, no second forward pass) is buffered with ``batch["keys"]``; the gradient
   follows nnU-Net's loss unless :meth:`sample_weights` returns weights (SuperLoss, soft self-paced learning).
3. ``on_train_epoch_end``: (keys, losses) of all ranks are gathered (:func:`sync_case_losses`, one
   ``all_gather_object`` per epoch on every rank), the EMA difficulty state is updated, active fraction,
   threshold, mean loss of active cases and sampling entropy go to the training log and to nnU-Net's logger
   (registered keys, one value per epoch, so ``progress.png`` keeps working), and rank 0 writes
   ``curriculum.json`` (per epoch: the probability of every case) and ``curriculum.png``.

The state (difficulty estimates, scheduler state, epoch, random generator) is stored in nnU-Net's checkpoints and
restored by ``nnUNetv2_train ... --c``; ``curriculum_config.json`` in the fold folder records every
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
from clips_nnunet.errors import CurriculumConfigError
from clips_nnunet.io_utils import atomic_path, atomic_write_json, read_json
from clips_nnunet.trainers.base import Output, highest_resolution, nnUNetTrainerClipsBase
from clips_nnunet.trainers.data_loader import CurriculumDataLoader

CURRICULUM_JSON = "curriculum.json"
CURRICULUM_PNG = "curriculum.png"
CURRICULUM_CONFIG_JSON = "curriculum_config.json"
LOG_KEYS = ("cl_active_fraction", "cl_threshold", "cl_active_mean_loss", "cl_sampling_entropy")


def sync_case_losses(keys: Sequence[str], losses) -> Tuple[List[str], np.ndarray]:
    """All ranks' (keys, losses) concatenated in rank order; identity without an initialised process group.

    Every rank must call it once per epoch (a symmetric ``all_gather_object``), so that every rank then updates
    an identical :class:`DifficultyState` in the same order and computes identical probabilities.
    """
    keys = [str(k) for k in keys]
    losses = np.asarray(losses, dtype=np.float64).reshape(-1)
    if len(keys) != losses.size:
        raise CurriculumConfigError(f"sync_case_losses got {len(keys)} keys but {losses.size} losses")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return keys, losses
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (keys, losses.tolist()))
    all_keys = [k for rank_keys, _ in gathered for k in rank_keys]
    all_losses = np.asarray([v for _, rank_losses in gathered for v in rank_losses], dtype=np.float64)
    return all_keys, all_losses


def weighted_per_sample_loss(per_sample_loss, output: Output, target: Output, weights: torch.Tensor,
                             weight_factors: Optional[Sequence[float]] = None) -> torch.Tensor:
    """``sum_k DS_k * mean_b(w_b * per_sample_loss(output_k, target_k)_b)`` over deep-supervision outputs ``k``
    (a single output: ``mean_b(w_b * l_b)``). With all ``w_b = 1`` and nnU-Net's ``DS_k`` this equals nnU-Net's
    deep-supervised Dice + CE loss (batch_dice False)."""
    if isinstance(output, (list, tuple)):
        factors = tuple(weight_factors) if weight_factors is not None else (1.0,) * len(output)
        return sum(f * (weights * per_sample_loss(o, t)).mean()
                   for f, o, t in zip(factors, output, target) if f != 0)
    return (weights * per_sample_loss(output, target)).mean()


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

    # ------------------------------------------------------------------ API for subclasses
    @abstractmethod
    def build_scheduler(self, case_ids: List[str]) -> CurriculumScheduler:
        """The scheduler of this curriculum for the training cases ``case_ids`` (the loader's order)."""

    def sample_weights(self, keys: Sequence[str], losses: np.ndarray) -> Optional[np.ndarray]:
        """Optional per-sample loss weights (shape (B,)) from this batch's detached per-sample losses.

        None (default) keeps nnU-Net's loss for the gradient (sampling curricula). Weights ``w`` make the loss
        ``sum_k DS_k * mean_b(w_b * per_sample_loss(output_k, target_k)_b)`` over the deep-supervision outputs
        ``k`` with nnU-Net's weights ``DS_k`` (weighting curricula: SuperLoss, soft self-paced learning).
        """
        return None

    def uses_sample_weights(self) -> bool:
        """True if this class overrides :meth:`sample_weights` (else no per-step host sync is needed)."""
        return type(self).sample_weights is not nnUNetTrainerCurriculum.sample_weights

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
                "scheduler": self._cl_scheduler.config() if self._cl_scheduler is not None else None,
                "n_cases": len(self._cl_case_ids), "case_ids": list(self._cl_case_ids)}

    # ------------------------------------------------------------------ internals
    _cl_loader: Optional[CurriculumDataLoader] = None
    _cl_state: Optional[DifficultyState] = None
    _cl_scheduler: Optional[CurriculumScheduler] = None
    _cl_rng: Optional[np.random.Generator] = None
    _cl_pending: Optional[dict] = None
    _cl_case_ids: List[str] = []

    def _curriculum_rng_seed(self) -> int:
        seed = self.clips_seed()
        return int(self.curriculum_seed if seed is None else seed)

    def validate_curriculum_attributes(self) -> None:
        """Raise :class:`CurriculumConfigError` naming a bad class attribute and its valid range."""
        if int(self.warmup_epochs) != self.warmup_epochs or self.warmup_epochs < 0:
            raise CurriculumConfigError(f"warmup_epochs must be an integer >= 0, got {self.warmup_epochs!r} "
                                        f"(set it on your trainer subclass)")
        if not 0.0 <= float(self.exploration_epsilon) <= 1.0:
            raise CurriculumConfigError(f"exploration_epsilon must be in [0, 1], got {self.exploration_epsilon}")
        if not 0.0 < float(self.loss_ema_alpha) <= 1.0:
            raise CurriculumConfigError(f"loss_ema_alpha must be in (0, 1], got {self.loss_ema_alpha}")
        if int(self.min_cases) != self.min_cases or self.min_cases < 1:
            raise CurriculumConfigError(f"min_cases must be an integer >= 1, got {self.min_cases!r}")

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

    def _cl_setup(self) -> None:
        if self._cl_loader is None:
            raise CurriculumConfigError("the training data loader is not a CurriculumDataLoader; a subclass "
                                        "overrode build_train_data_loader without chaining super()")
        case_ids = list(self._cl_loader.case_ids)
        if not case_ids:
            raise CurriculumConfigError(f"fold {self.fold}: the training split is empty; check splits_final.json")
        self._cl_case_ids = case_ids
        self._cl_state = DifficultyState(case_ids, self.loss_ema_alpha)
        scheduler = self.build_scheduler(list(case_ids))
        if not isinstance(scheduler, CurriculumScheduler):
            raise CurriculumConfigError(f"{type(self).__name__}.build_scheduler must return a CurriculumScheduler, "
                                        f"got {type(scheduler).__name__}")
        if list(scheduler.case_ids) != case_ids:
            unknown = sorted(set(scheduler.case_ids) - set(case_ids))
            raise CurriculumConfigError(f"the scheduler's case ids differ from the training split (unknown case ids: "
                                        f"{unknown[:10]}); build it from the case_ids passed to build_scheduler")
        self._cl_scheduler = scheduler
        self._cl_rng = np.random.default_rng(self._curriculum_rng_seed())
        self._cl_history: List[dict] = []
        if self._cl_pending is not None:
            self._cl_restore(self._cl_pending)
            self._cl_pending = None
        self._cl_register_log_keys()
        self._cl_key_buf: List[str] = []
        self._cl_loss_buf: List[torch.Tensor] = []
        self._cl_versions: List[int] = []
        self._cl_cached: Optional[torch.Tensor] = None
        self._cl_plan: Optional[SamplingPlan] = None
        if self.local_rank == 0:
            atomic_write_json(os.path.join(self.output_folder, CURRICULUM_CONFIG_JSON), self.curriculum_config())
        self.print_to_log_file(f"curriculum: {type(self).__name__} over {len(case_ids)} training cases, "
                               f"scheduler {type(scheduler).__name__}, warm-up {self.warmup_epochs} epochs, "
                               f"epsilon {self.exploration_epsilon}, EMA alpha {self.loss_ema_alpha}")

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
        self._cl_rng.bit_generator.state = saved["rng"]
        path = os.path.join(self.output_folder, CURRICULUM_JSON)
        if os.path.isfile(path):
            previous = read_json(path)
            self._cl_history = [r for r in previous.get("epochs", []) if r["epoch"] < self.current_epoch]
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
        epoch = int(self.current_epoch)
        warm = epoch < int(self.warmup_epochs)
        n = len(self._cl_case_ids)
        progress = self.curriculum_progress(epoch)
        if warm:
            plan = SamplingPlan(np.full(n, 1.0 / n), 1.0, None, {"warmup": True})
        else:
            plan = self._cl_scheduler.plan(self._cl_state, progress, epoch, self._cl_rng)
            if np.asarray(plan.probabilities).shape != (n,):
                raise CurriculumConfigError(f"{type(self._cl_scheduler).__name__}.plan returned "
                                            f"{np.asarray(plan.probabilities).shape} probabilities for {n} cases")
        probabilities = finalize_probabilities(plan.probabilities, self.exploration_epsilon, warm)
        self._cl_version = self._cl_loader.set_probabilities(probabilities)
        self._cl_plan, self._cl_probabilities, self._cl_progress, self._cl_warm = plan, probabilities, progress, warm
        self._cl_estimates = self._cl_state.estimates()
        self._cl_key_buf, self._cl_loss_buf, self._cl_versions = [], [], []
        threshold = "none" if plan.threshold is None else f"{plan.threshold:.4g}"
        self.print_to_log_file(f"curriculum: {'warm-up (uniform)' if warm else f'progress {progress:.3f}'}, active "
                               f"fraction {plan.active_fraction:.3f}, threshold {threshold}, sampling entropy "
                               f"{sampling_entropy(probabilities):.3f} nats (uniform {math.log(n):.3f})")

    def train_step(self, batch: dict) -> dict:
        version = batch.get("curriculum_version")
        if version is not None:
            self._cl_versions.append(int(version))
        return super().train_step(batch)

    def compute_loss(self, output: Output, target: Output, keys: Sequence[str]) -> torch.Tensor:
        self._cl_cached = None
        if not self.uses_sample_weights():
            return super().compute_loss(output, target, keys)
        hi_out, hi_target = highest_resolution(output), highest_resolution(target)
        with torch.no_grad():
            detached = self.per_sample_loss(hi_out.detach(), hi_target)
        self._cl_cached = detached
        weights = self.sample_weights(keys, detached.float().cpu().numpy())
        if weights is None:
            return super().compute_loss(output, target, keys)
        w = torch.as_tensor(np.asarray(weights, dtype=np.float32), device=hi_out.device)
        if w.shape != (hi_out.shape[0],):
            raise CurriculumConfigError(f"sample_weights returned shape {tuple(w.shape)} for a batch of "
                                        f"{hi_out.shape[0]}")
        return weighted_per_sample_loss(self.per_sample_loss, output, target, w,
                                        getattr(self.loss, "weight_factors", None))

    def after_train_forward(self, keys: Sequence[str], output: Output, target: Output) -> None:
        super().after_train_forward(keys, output, target)
        if self._cl_cached is not None:
            losses = self._cl_cached
            self._cl_cached = None
        else:
            losses = self.per_sample_loss(highest_resolution(output), highest_resolution(target))
        self._cl_loss_buf.append(losses.detach().float())
        self._cl_key_buf.extend(str(k) for k in keys)

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        epoch = int(self.current_epoch)
        local = torch.cat(self._cl_loss_buf).cpu().numpy() if self._cl_loss_buf else np.zeros(0)
        keys, losses = sync_case_losses(self._cl_key_buf, local)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self._cl_state.update(keys, losses, epoch)
        for w in caught:
            self.print_to_log_file(f"curriculum WARNING: {w.message}")
        plan, probabilities = self._cl_plan, self._cl_probabilities
        active = np.asarray(plan.probabilities) > 0
        active_keys = {k for k, a in zip(self._cl_case_ids, active) if a}
        active_losses = [v for k, v in zip(keys, losses) if k in active_keys and np.isfinite(v)]
        mean_active = float(np.mean(active_losses)) if active_losses else float("nan")
        entropy = sampling_entropy(probabilities)
        threshold = float("nan") if plan.threshold is None else float(plan.threshold)
        for key, value in zip(LOG_KEYS, (float(plan.active_fraction), threshold, mean_active, entropy)):
            self.logger.log(key, value, epoch)
        lag = int(sum(v < self._cl_version for v in self._cl_versions))
        record = {"epoch": epoch, "warmup": bool(self._cl_warm), "progress": self._cl_progress,
                  "active_fraction": float(plan.active_fraction), "threshold": plan.threshold,
                  "mean_active_loss": mean_active, "sampling_entropy": entropy,
                  "lag_batches": lag, "n_losses": int(len(keys)),
                  "probabilities": [float(p) for p in probabilities],
                  "estimates": [float(d) for d in self._cl_estimates], "extra": plan.extra}
        self._cl_history = [r for r in self._cl_history if r["epoch"] < epoch] + [record]
        self.print_to_log_file(f"curriculum: mean loss of active cases {mean_active:.4f}; {len(keys)} case losses "
                               f"recorded; {lag} of {len(self._cl_versions)} batches were drawn with the previous "
                               f"epoch's probabilities (lag)")
        if self.local_rank == 0:
            self._cl_write_outputs()

    def _cl_write_outputs(self) -> None:
        data = {"trainer": type(self).__name__, "case_ids": list(self._cl_case_ids), "epochs": self._cl_history,
                "state": self._cl_state.to_dict()}
        atomic_write_json(os.path.join(self.output_folder, CURRICULUM_JSON), data)
        try:
            plot_curriculum(self._cl_history, self._cl_case_ids, os.path.join(self.output_folder, CURRICULUM_PNG))
        except Exception as e:  # a plot must never stop a training
            self.print_to_log_file(f"curriculum: could not write {CURRICULUM_PNG}: {e}")


def plot_curriculum(history: List[dict], case_ids: Sequence[str], destination: str) -> None:
    """``curriculum.png``: active fraction and threshold over epochs; case-by-epoch heat map of probabilities."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # nnU-Net's logger calls seaborn.set(font_scale=2.5) globally: plot with matplotlib defaults
    with plt.style.context("default"):
        epochs = [r["epoch"] for r in history]
        fig, (ax, ax_heat) = plt.subplots(2, 1, figsize=(10, 4 + 0.12 * min(len(case_ids), 150)),
                                          gridspec_kw={"height_ratios": [1, 2]})
        ax.plot(epochs, [r["active_fraction"] for r in history], "b-o", ms=3, label="active fraction")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("epoch")
        ax.set_ylabel("active fraction", color="b")
        ax2 = ax.twinx()
        thresholds = [np.nan if r["threshold"] is None else r["threshold"] for r in history]
        ax2.plot(epochs, thresholds, "r-s", ms=3, label="threshold")
        ax2.set_ylabel("threshold (loss / score)", color="r")
        for r in history:
            if r.get("warmup"):
                ax.axvspan(r["epoch"] - 0.5, r["epoch"] + 0.5, color="0.9", zorder=0)
        ax.set_title("curriculum (grey: warm-up, uniform sampling)")
        probs = np.asarray([r["probabilities"] for r in history], dtype=float).T if history else np.zeros((1, 1))
        im = ax_heat.imshow(probs, aspect="auto", interpolation="nearest", cmap="viridis",
                            extent=(min(epochs, default=0) - 0.5, max(epochs, default=0) + 0.5,
                                    len(case_ids) - 0.5, -0.5))
        ax_heat.set_xlabel("epoch")
        ax_heat.set_ylabel("case")
        if len(case_ids) <= 40:
            ax_heat.set_yticks(range(len(case_ids)))
            ax_heat.set_yticklabels(case_ids, fontsize=7)
        fig.colorbar(im, ax=ax_heat, label="sampling probability")
        fig.tight_layout()
        with atomic_path(destination, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=80, format="png")
        plt.close(fig)
