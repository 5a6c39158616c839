"""Imaging physics of the twin's PET: point-spread function, partial volume and spatially correlated noise.

* Partial volume: the painter (:class:`clips_nnunet.synthetic.twin_render.PetCanvas`) already averages each shape
  over the voxel it covers (sub-voxel coverage fraction).
* PSF: a Gaussian of FWHM ``fwhm_mm`` (5-7 mm per patient, the resolution of clinical whole-body PET
  reconstructions), ``sigma = FWHM / (2 sqrt(2 ln 2))`` in mm, applied on the PET grid.
* Noise: white Gaussian noise smoothed by a Gaussian of ``corr_mm`` (FWHM, the noise grain of iterative
  reconstructions), rescaled to unit variance, then multiplied by ``cov * sqrt(A * A_liver)`` where ``A`` is the
  blurred activity. The noise variance thus grows with the activity (as for counting statistics), and in the liver
  the coefficient of variation is ``cov`` (drawn 0.10-0.15).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def apply_psf(activity: np.ndarray, spacing: Sequence[float], fwhm_mm: float) -> np.ndarray:
    """``activity`` (z, y, x) blurred by an isotropic Gaussian PSF of ``fwhm_mm`` (float32, new array)."""
    sigma = [fwhm_mm * FWHM_TO_SIGMA / float(s) for s in spacing]
    return ndimage.gaussian_filter(activity.astype(np.float32, copy=False), sigma, mode="nearest", truncate=3.0)


def correlated_noise(shape: Sequence[int], spacing: Sequence[float], corr_mm: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian noise with a Gaussian correlation of FWHM ``corr_mm`` (float32)."""
    white = rng.standard_normal(tuple(int(n) for n in shape), dtype=np.float32)
    sigma = [corr_mm * FWHM_TO_SIGMA / float(s) for s in spacing]
    noise = ndimage.gaussian_filter(white, sigma, mode="wrap", truncate=3.0)
    # the variance of filtered unit white noise is the sum of the squared kernel weights, a product over the axes
    # of the 1-D kernels' sums of squares (the kernels themselves: the filter's response to a unit impulse)
    var = 1.0
    for sg in sigma:
        radius = int(3.0 * sg + 0.5)
        impulse = np.zeros(2 * radius + 1)
        impulse[radius] = 1.0
        var *= float(np.sum(ndimage.gaussian_filter1d(impulse, sg, mode="constant", truncate=3.0) ** 2))
    noise *= np.float32(1.0 / np.sqrt(var))
    return noise


def add_pet_noise(blurred: np.ndarray, spacing: Sequence[float], cov: float, liver_suv: float, corr_mm: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Noisy PET: ``blurred + cov * sqrt(blurred * liver_suv) * noise`` clipped at 0 (float32, new array)."""
    noise = correlated_noise(blurred.shape, spacing, corr_mm, rng)
    sd = np.sqrt(np.maximum(blurred, 0.0) * np.float32(liver_suv)) * np.float32(cov)
    out = blurred + sd * noise
    np.maximum(out, 0.0, out=out)
    return out.astype(np.float32, copy=False)
