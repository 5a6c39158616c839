"""One step size for every arm: loss weights normalised to a mean of 1 per sampled case, and the realised mean.

A weighting curriculum (SuperLoss and its controls) multiplies each sample's loss by a weight ``w_b >= 0``. Stock
nnU-Net trains every sample with weight 1, so raw weights whose mean is not 1 change the effective learning rate as
well as the emphasis: "the arm is worse" would be confounded with "the arm trained with a smaller step". By default
the engine therefore divides the raw weights of epoch ``e`` by their running mean over the epoch so far (global
batch, every DDP rank, the current batch included):

    ``w_b = r_b / c_s``,  ``c_s = sum_{steps <= s} sum_b r_b / sum_{steps <= s} B``,

so the mean weight per sampled case of every epoch is 1 (exactly 1 for the first batch, within a few per cent over
an epoch, see tests/test_fair_arms.py) while the ratios between the samples of a batch are the curriculum's.
``normalise=False`` keeps the raw form (the published weights, another step size).

:class:`LossWeightNormaliser` also keeps the *realised* mean weight per sampled case of the epoch (``1.0`` for an
epoch without weighting): the engine logs it as ``cl_mean_loss_weight`` in the curriculum history.
"""
from __future__ import annotations

import numpy as np


class LossWeightNormaliser:
    """Running per-epoch normalisation of loss weights and the realised mean weight (module docstring).

    Call :meth:`start_epoch` at each epoch start; :meth:`scale` once per weighted step with the global batch's
    raw weight sum and sample count (identical on every DDP rank); :meth:`unweighted` for a step trained with
    nnU-Net's unweighted loss.
    """

    def __init__(self, normalise: bool = True):
        self.normalise = bool(normalise)
        self.start_epoch()

    def start_epoch(self) -> None:
        self._raw_sum = 0.0
        self._raw_count = 0
        self._applied_sum = 0.0
        self._count = 0

    def scale(self, raw_sum: float, count: int) -> float:
        """Factor to multiply this step's raw weights with: ``count / raw_sum`` accumulated over the epoch so far
        (1 when ``normalise`` is False, and while every raw weight so far was 0). Records the applied weights."""
        raw_sum, count = float(raw_sum), int(count)
        if not np.isfinite(raw_sum) or raw_sum < 0 or count < 0:
            raise ValueError(f"raw weight sum must be finite and >= 0 and count >= 0, got {raw_sum}, {count}")
        self._raw_sum += raw_sum
        self._raw_count += count
        factor = 1.0
        if self.normalise and self._raw_sum > 0:
            factor = self._raw_count / self._raw_sum
        self._applied_sum += raw_sum * factor
        self._count += count
        return factor

    def unweighted(self, count: int) -> None:
        """A step trained with weight 1 per sample (no weighting this epoch)."""
        self._applied_sum += float(count)
        self._count += int(count)

    @property
    def realised_mean(self) -> float:
        """Mean loss weight per sampled case of the epoch so far (1.0 before any step: no weighting)."""
        return self._applied_sum / self._count if self._count else 1.0
