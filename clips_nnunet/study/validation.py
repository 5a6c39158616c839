"""Trainer mixin of the study's ``validation_mirroring: false``: nnU-Net's final validation without test-time
mirroring.

nnU-Net's ``perform_actual_validation`` predicts every out-of-fold case with ``use_mirroring=True`` over the axes the
training augmentation mirrored (8 passes per sliding-window tile in 3D). On a shared CPU, with a patch smaller than
the image, that costs more than the training itself. The mixin clears ``inference_allowed_mirroring_axes`` during
the validation only (the final checkpoint, written before, keeps them for later predictions), so every arm is
validated the same way, with one pass per tile, as the memorisation predictions of the report already are.
"""
from __future__ import annotations

__all__ = ["NoMirrorValidationMixin"]


class NoMirrorValidationMixin:
    """Final validation without test-time mirroring (put before the trainer class in the bases)."""

    def perform_actual_validation(self, save_probabilities: bool = False):
        axes = self.inference_allowed_mirroring_axes
        self.inference_allowed_mirroring_axes = None
        try:
            return super().perform_actual_validation(save_probabilities)
        finally:
            self.inference_allowed_mirroring_axes = axes
