"""TMTV-Net's training augmentation as a batchgeneratorsv2 pipeline for nnU-Net's data loader.

Order (TMTV-Net): intensity augmentation on the raw SUV channel only (each transform with probability 0.1):
Gaussian blur (sigma 0.5-1), multiplicative brightness (0.75-1.25), contrast (0.75-1.25), simulated low
resolution (zoom 0.5-1), gamma (0.7-1.5) inverted and not (statistics retained); then flips along each axis with
p=0.5; then an affine transform with p=0.5 (rotation uniform in +-0.3 rad about each axis, isotropic scale 0.9-1.1,
no translation). nnU-Net's label bookkeeping follows (padding label -1 -> 0, the cascade's previous-stage
segmentation moved to one-hot input channels, regions, deep-supervision downsampling of the target).

The intensity transforms run on the PET channel before the network's windowing layer, as TMTV-Net augments SUV
before windowing. CT is not intensity-augmented.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
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
) -> ComposeTransforms:
    """The TMTV-Net training pipeline (module docstring) for a 3D patch of ``patch_size``."""
    if len(patch_size) != 3:
        raise ValueError(f"the TMTV recipe is 3D; got a patch size of {tuple(patch_size)}")
    transforms: List[BasicTransform] = [ChannelSubsetTransform(ComposeTransforms(suv_intensity_transforms()),
                                                               [suv_channel])]
    if mirror_axes:
        transforms.append(MirrorTransform(allowed_axes=tuple(mirror_axes)))
    transforms.append(JointAffineTransform(tuple(int(p) for p in patch_size), AFFINE_PROBABILITY, rotation, scaling))
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
