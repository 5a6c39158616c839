"""Curriculum by smoothing (Sinha, Garg & Larochelle 2020, "Curriculum by smoothing", NeurIPS): schedule and
kernel maths.

Feature maps are blurred with a Gaussian kernel whose width ``sigma`` (in voxels of the feature map) starts at
``sigma0`` and decays geometrically, ``sigma_e = sigma0 * decay^floor(e / every)`` (the paper: ``sigma0 = 1``,
``decay = 0.9`` every 5 epochs). We add two cut-offs so the final network is trained without blur, as the network
nnUNetv2_predict rebuilds has none: ``sigma = 0`` once it is below ``sigma_min`` or from training progress
``zero_after`` on.
"""
from __future__ import annotations

import math

import numpy as np

from clips_nnunet.errors import CurriculumConfigError


def smoothing_sigma(epoch: int, num_epochs: int, sigma0: float = 1.0, decay: float = 0.9, every: int = 5,
                    sigma_min: float = 0.1, zero_after: float = 0.5) -> float:
    """``sigma0 decay^floor(epoch / every)`` (Sinha et al. 2020, section 3: the kernel width is annealed by
    ``decay`` every ``every`` epochs), 0 when below ``sigma_min`` or when ``epoch / num_epochs >= zero_after``
    (our cut-offs, so the final network is trained unblurred)."""
    if sigma0 < 0 or not 0 < decay <= 1 or int(every) != every or every < 1:
        raise CurriculumConfigError(f"smoothing needs sigma0 >= 0, decay in (0, 1], integer every >= 1; got "
                                    f"sigma0={sigma0}, decay={decay}, every={every}")
    if not 0.0 <= zero_after <= 1.0:
        raise CurriculumConfigError(f"smoothing zero_after must be in [0, 1], got {zero_after}")
    if num_epochs < 1:
        raise CurriculumConfigError(f"num_epochs must be >= 1, got {num_epochs}")
    if epoch / num_epochs >= zero_after:
        return 0.0
    sigma = sigma0 * decay ** (int(epoch) // int(every))
    return 0.0 if sigma < sigma_min else float(sigma)


def gaussian_kernel_1d(sigma: float, truncate: float = 2.0) -> np.ndarray:
    """Normalised 1-D Gaussian ``exp(-x^2 / (2 sigma^2))`` of radius ``ceil(truncate sigma)`` (at least 1), the
    separable factor of the Gaussian kernel of Sinha et al. 2020; ``[1.]`` for ``sigma = 0``."""
    if sigma < 0:
        raise CurriculumConfigError(f"sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return np.ones(1)
    radius = max(1, int(math.ceil(truncate * sigma)))
    x = np.arange(-radius, radius + 1, dtype=float)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()
