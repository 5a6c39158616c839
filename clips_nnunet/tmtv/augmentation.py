"""TMTV-Net's training augmentation as a batchgeneratorsv2 pipeline for nnU-Net's data loader.

Order (TMTV-Net): intensity augmentation on the raw SUV channel only (each transform with probability 0.1):
Gaussian blur (sigma 0.5-1), multiplicative brightness (0.75-1.25), contrast (0.75-1.25), simulated low
resolution (zoom 0.5-1), gamma (0.7-1.5) inverted and not (statistics retained); then flips along each axis with
p=0.5; then an affine transform with p=0.5 (rotation uniform in +-0.3 rad about each axis, isotropic scale 0.9-1.1,
no translation). nnU-Net's label bookkeeping follows (padding label -1 -> 0, the cascade's previous-stage
segmentation moved to one-hot input channels, regions, deep-supervision downsampling of the target).

The intensity transforms run on the PET channel before the network's windowing layer, as TMTV-Net augments SUV
before windowing. CT is not intensity-augmented.

Refiner (TMTV-Net's ``experiments/baseline/104_v4_hdf5_refiner_aug_sensitivity_v2.py`` in civodlu/AutoPET2022, with
``transform_randomize_spacing.py``): no affine transform; instead, with p=0.5, the case is resampled to a random
spacing (x = y uniform in 1.5-4 mm, z uniform in 2-4 mm; linear for images, nearest for labels), then the SUV
transforms and the flips. ``RandomRespacingTransform`` does this on nnU-Net's (larger) sampled patch: it zooms about
the patch centre by ``target / current spacing`` and crops the patch; voxels that fall outside the sampled region
are 0 in every channel (air, see ``network.WindowingLayer``) and label -1 (nnU-Net's "outside").
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from batchgeneratorsv2.helpers.scalar_type import RandomScalar
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.nnunet.seg_to_onehot import MoveSegAsOneHotToDataTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform

SUV_TRANSFORM_PROBABILITY = 0.1
FLIP_PROBABILITY = 0.5  # per axis (batchgeneratorsv2's MirrorTransform flips each allowed axis with p=0.5)
AFFINE_PROBABILITY = 0.5
ROTATION_RAD = (-0.3, 0.3)
SCALING = (0.9, 1.1)
RESPACING_PROBABILITY = 0.5
#: TMTV-Net's random spacing range in mm, (z, y, x) order; y and x share one draw
RESPACING_MIN_ZYX = (2.0, 1.5, 1.5)
RESPACING_MAX_ZYX = (4.0, 4.0, 4.0)
#: refiner spatial augmentation: TMTV-Net's random respacing, or stage 1's affine (nnU-Net-like)
SPATIAL_MODES = ("respacing", "affine")


class ChannelSubsetTransform(BasicTransform):
    """Apply ``transform`` to some image channels only (here: raw SUV), leaving the other channels and the
    segmentation untouched."""

    def __init__(self, transform: BasicTransform, channels: Sequence[int]):
        super().__init__()
        if not channels:
            raise ValueError("ChannelSubsetTransform needs at least one channel")
        self.transform = transform
        self.channels = [int(c) for c in channels]

    def __call__(self, **data_dict) -> dict:
        image = data_dict["image"]
        if max(self.channels) >= image.shape[0]:
            raise ValueError(f"channels {self.channels} out of range for an image with {image.shape[0]} channels")
        subset = image[self.channels].clone()
        image[self.channels] = self.transform(image=subset)["image"].to(image.dtype)
        data_dict["image"] = image
        return data_dict


class JointAffineTransform(SpatialTransform):
    """nnU-Net's ``SpatialTransform`` where rotation and scaling are drawn together with one probability
    ``p_affine`` (TMTV-Net applies one random affine with p=0.5), instead of two independent probabilities.
    Like ``SpatialTransform`` it also crops the sampled (larger) patch to ``patch_size``."""

    def __init__(self, patch_size: Tuple[int, ...], p_affine: float = AFFINE_PROBABILITY,
                 rotation: RandomScalar = ROTATION_RAD, scaling: RandomScalar = SCALING):
        if not 0 <= p_affine <= 1:
            raise ValueError(f"p_affine must be in [0, 1], got {p_affine}")
        super().__init__(patch_size, patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0,
                         p_rotation=p_affine, rotation=rotation, p_rot_per_axis=1, p_scaling=p_affine,
                         scaling=scaling, p_synchronize_scaling_across_axes=1, bg_style_seg_sampling=False,
                         border_mode_seg="constant", padding_value_seg=-1)
        self.p_affine = float(p_affine)

    def get_parameters(self, **data_dict) -> dict:
        do_affine = np.random.uniform() < self.p_affine
        self.p_rotation = self.p_scaling = 1.0 if do_affine else 0.0
        return super().get_parameters(**data_dict)


def respacing_initial_patch_size(patch_size: Sequence[int], current_spacing: Sequence[float],
                                 spacing_max: Sequence[float] = RESPACING_MAX_ZYX) -> Tuple[int, ...]:
    """Patch to sample so that a zoom to the coarsest target spacing still covers ``patch_size``:
    ``ceil(patch * max(1, max_spacing / current_spacing))`` per axis."""
    if len(patch_size) != len(current_spacing) or len(spacing_max) != len(patch_size):
        raise ValueError(f"patch {tuple(patch_size)}, spacing {tuple(current_spacing)} and max spacing "
                         f"{tuple(spacing_max)} must have the same length")
    return tuple(int(math.ceil(int(p) * max(1.0, float(m) / float(c))))
                 for p, c, m in zip(patch_size, current_spacing, spacing_max))


class RandomRespacingTransform(BasicTransform):
    """TMTV-Net's random respacing (module docstring) on a sampled patch, with the crop to ``patch_size``.

    ``current_spacing``: the configuration's spacing (z, y, x) in mm. With probability ``p`` a target spacing is
    drawn (``spacing_min``-``spacing_max`` per axis, y tied to x) and the output voxel ``i`` along an axis samples the
    input at ``centre_in + (i - centre_out) * target / current`` (linear for the image, nearest for labels);
    otherwise the centre ``patch_size`` crop is returned unchanged. ``rng``: a numpy Generator; None draws from
    numpy's global state, which nnU-Net's augmentation workers seed (as batchgeneratorsv2's transforms do).
    """

    def __init__(self, patch_size: Sequence[int], current_spacing: Sequence[float],
                 p: float = RESPACING_PROBABILITY, spacing_min: Sequence[float] = RESPACING_MIN_ZYX,
                 spacing_max: Sequence[float] = RESPACING_MAX_ZYX, xy_tied: bool = True,
                 rng: Optional[np.random.Generator] = None):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if not (len(patch_size) == len(current_spacing) == len(spacing_min) == len(spacing_max) == 3):
            raise ValueError("patch_size, current_spacing, spacing_min and spacing_max need 3 values (z, y, x)")
        if any(float(c) <= 0 for c in current_spacing) or any(float(lo) <= 0 or float(hi) < float(lo)
                                                              for lo, hi in zip(spacing_min, spacing_max)):
            raise ValueError(f"spacings must be positive with min <= max: current {tuple(current_spacing)}, "
                             f"min {tuple(spacing_min)}, max {tuple(spacing_max)}")
        self.patch_size = tuple(int(x) for x in patch_size)
        self.current_spacing = tuple(float(x) for x in current_spacing)
        self.p, self.xy_tied, self.rng = float(p), bool(xy_tied), rng
        self.spacing_min = tuple(float(x) for x in spacing_min)
        self.spacing_max = tuple(float(x) for x in spacing_max)

    def _uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        return float(self.rng.uniform(low, high) if self.rng is not None else np.random.uniform(low, high))

    def get_parameters(self, **data_dict) -> dict:
        if self._uniform() >= self.p:
            return {"target_spacing": None}
        target = [self._uniform(lo, hi) for lo, hi in zip(self.spacing_min, self.spacing_max)]
        if self.xy_tied:
            target[1] = target[2]
        return {"target_spacing": tuple(target)}

    def _sample(self, x: torch.Tensor, target_spacing, mode: str) -> torch.Tensor:
        in_shape = x.shape[1:]
        if target_spacing is None:  # centre crop (or zero-pad) to the patch, no interpolation
            out = torch.zeros((x.shape[0], *self.patch_size), dtype=x.dtype)
            src, dst = [], []
            for s, p in zip(in_shape, self.patch_size):
                lo = (s - p) // 2
                a, b = max(lo, 0), min(lo + p, s)
                src.append(slice(a, b))
                dst.append(slice(a - lo, b - lo))
            out[(slice(None), *dst)] = x[(slice(None), *src)]
            return out
        axes = []
        for s, p, cur, tgt in zip(in_shape, self.patch_size, self.current_spacing, target_spacing):
            idx = (s - 1) / 2 + (torch.arange(p, dtype=torch.float32) - (p - 1) / 2) * (tgt / cur)
            axes.append(2 * idx / max(s - 1, 1) - 1)
        gz, gy, gx = torch.meshgrid(*axes, indexing="ij")
        grid = torch.stack([gx, gy, gz], dim=-1)[None]
        sampled = F.grid_sample(x[None].float(), grid, mode=mode, padding_mode="zeros", align_corners=True)[0]
        return sampled

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        return self._sample(img, params["target_spacing"], "bilinear").to(img.dtype)

    def _apply_to_segmentation(self, segmentation: torch.Tensor, **params) -> torch.Tensor:
        if params["target_spacing"] is None:
            return self._sample(segmentation + 1, None, "nearest").to(segmentation.dtype) - 1
        shifted = segmentation.float() + 1  # outside -> 0 -> label -1 (nnU-Net's "outside")
        return (self._sample(shifted, params["target_spacing"], "nearest").round() - 1).to(segmentation.dtype)


def suv_intensity_transforms(p: float = SUV_TRANSFORM_PROBABILITY) -> List[BasicTransform]:
    """TMTV-Net's five SUV intensity augmentations (gamma twice: inverted and not), each wrapped with probability p."""
    return [
        RandomTransform(GaussianBlurTransform(blur_sigma=(0.5, 1.0), synchronize_channels=True,
                                              synchronize_axes=True, p_per_channel=1), apply_probability=p),
        RandomTransform(MultiplicativeBrightnessTransform(multiplier_range=BGContrast((0.75, 1.25)),
                                                          synchronize_channels=True, p_per_channel=1),
                        apply_probability=p),
        RandomTransform(ContrastTransform(contrast_range=BGContrast((0.75, 1.25)), preserve_range=True,
                                          synchronize_channels=True, p_per_channel=1), apply_probability=p),
        RandomTransform(SimulateLowResolutionTransform(scale=(0.5, 1.0), synchronize_channels=True,
                                                       synchronize_axes=True, ignore_axes=None,
                                                       allowed_channels=None, p_per_channel=1),
                        apply_probability=p),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=1, synchronize_channels=True,
                                       p_per_channel=1, p_retain_stats=1), apply_probability=p),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=0, synchronize_channels=True,
                                       p_per_channel=1, p_retain_stats=1), apply_probability=p),
    ]


def tmtv_training_transforms(
        patch_size: Union[np.ndarray, Tuple[int, ...]],
        deep_supervision_scales: Union[List, Tuple, None],
        mirror_axes: Optional[Tuple[int, ...]] = (0, 1, 2),
        suv_channel: int = 1,
        is_cascaded: bool = False,
        foreground_labels: Union[Tuple[int, ...], List[int], None] = None,
        regions: Optional[List] = None,
        ignore_label: Optional[int] = None,
        rotation: RandomScalar = ROTATION_RAD,
        scaling: RandomScalar = SCALING,
        spatial: str = "affine",
        current_spacing: Optional[Sequence[float]] = None,
) -> ComposeTransforms:
    """The TMTV-Net training pipeline (module docstring) for a 3D patch of ``patch_size``.

    ``spatial="affine"`` (stage 1): SUV transforms, flips, joint affine. ``spatial="respacing"`` (refiner): random
    respacing (needs ``current_spacing``, the configuration's spacing), SUV transforms, flips.
    """
    if len(patch_size) != 3:
        raise ValueError(f"the TMTV recipe is 3D; got a patch size of {tuple(patch_size)}")
    if spatial not in SPATIAL_MODES:
        raise ValueError(f"spatial must be one of {SPATIAL_MODES}, got {spatial!r}")
    patch = tuple(int(p) for p in patch_size)
    transforms: List[BasicTransform] = []
    if spatial == "respacing":
        if current_spacing is None:
            raise ValueError("spatial='respacing' needs current_spacing (the configuration's spacing, z, y, x)")
        transforms.append(RandomRespacingTransform(patch, current_spacing))
    transforms.append(ChannelSubsetTransform(ComposeTransforms(suv_intensity_transforms()), [suv_channel]))
    if mirror_axes:
        transforms.append(MirrorTransform(allowed_axes=tuple(mirror_axes)))
    if spatial == "affine":
        transforms.append(JointAffineTransform(patch, AFFINE_PROBABILITY, rotation, scaling))
    transforms.append(RemoveLabelTansform(-1, 0))
    if is_cascaded:
        if not foreground_labels:
            raise ValueError("a cascaded configuration needs foreground_labels")
        transforms.append(MoveSegAsOneHotToDataTransform(source_channel_idx=1, all_labels=foreground_labels,
                                                         remove_channel_from_source=True))
    if regions is not None:
        transforms.append(ConvertSegmentationToRegionsTransform(
            regions=list(regions) + [ignore_label] if ignore_label is not None else regions, channel_in_seg=0))
    if deep_supervision_scales is not None:
        transforms.append(DownsampleSegForDSTransform(ds_scales=deep_supervision_scales))
    return ComposeTransforms(transforms)
