"""The TMTV-Net recipe as an nnU-Net trainer mixin: ``TMTVRecipe``, ``nnUNetTrainerTMTV``, ``nnUNetTrainerTMTVRefiner``.

``TMTVRecipe`` changes what TMTV-Net does differently from nnU-Net and nothing else; every override chains with
``super()``, so the same mixin sits on top of the shared base (``nnUNetTrainerTMTV``) or of any curriculum trainer
(``nnUNetTrainerTMTVCL<Method>`` in ``combinations.py``):

- network: windowing layer + TMTV-Net stage-1 U-Net, or the refiner on a cascaded configuration (one with
  ``previous_stage``, e.g. ``3d_tmtv_refine``), built by the static ``build_network_architecture`` so that
  ``nnUNetv2_predict`` rebuilds the trained model;
- loss: soft Dice (fg) + 0.5 focal + 2.0 sensitivity with deep-supervision weights 1, 1/2, 1/4, 1/8, the
  low-resolution logits upsampled to the full-resolution target (TMTV-Net; ``deep_supervision_upsample_logits``)
  (refiner: Dice + 0.5 focal + 0.5 sensitivity, no deep supervision); ``per_sample_loss`` is the same loss per
  sample, so curricula measure difficulty with the recipe's loss;
- AdamW (lr 1e-3, wd 1e-6; refiner 5e-4, 1e-4); cosine warm restarts with decay; refiner: step decay x0.3 every
  24,000 iterations over 144,000 (TMTV-Net: every 2,000 of 12,000 epochs of 12 iterations), with gradient
  accumulation over 2 steps (``grad_accumulation_steps``; batch 8 comes from ``plan-tmtv``'s plans);
- gradient-norm clipping at 1.0 (``grad_clip_norm``, applied by the shared ``train_step``); AMP is nnU-Net's (CUDA);
- uniform patch sampling (``oversample_foreground_percent = 0``);
- TMTV-Net's augmentation (``augmentation.py``): stage 1 affine, refiner random respacing; no test-time mirroring;
- network options as TMTV-Net builds them: trilinear decoder upsampling, bias-free refiner with a normalised head,
  air (0 after windowing) outside the image (``decoder_upsample_mode``, ``refiner_conv_bias``,
  ``refiner_head_norm_act``, ``padding_is_air``; class attributes read by ``build_network_architecture``, so
  ``nnUNetv2_predict -tr <subclass>`` rebuilds the same network).

Each TMTV-Net choice that has an nnU-Net counterpart a user may prefer is a class attribute; a subclass flips it
(``deep_supervision_upsample_logits = False``: nnU-Net's downsampled targets; ``refiner_spatial_augmentation =
"affine"``; ``decoder_upsample_mode = "nearest"``; ``padding_is_air = False``: nnU-Net's 0-valued padding).

Works on the ``3d_tmtv`` / ``3d_tmtv_refine`` configurations from ``clips-nnunet plan-tmtv`` and on stock
``3d_fullres`` (the windowing layer then undoes nnU-Net's CT normalisation with the dataset's intensity statistics).
"""
from __future__ import annotations

import functools
import os
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from clips_nnunet.errors import DatasetError
from clips_nnunet.nnunet_env import nnunet_folder
from clips_nnunet.trainers.base import nnUNetTrainerClipsBase
from clips_nnunet.tmtv import augmentation as aug
from clips_nnunet.tmtv.loss import (REFINER_WEIGHTS, STAGE1_WEIGHTS, FullResolutionDeepSupervision,
                                             TMTVLoss, deep_supervision_weights, tmtv_loss_per_sample,
                                             upsample_logits)
from clips_nnunet.tmtv.network import TMTV_UNET_FEATURES, TMTVRefiner, TMTVUNet
from clips_nnunet.tmtv.plans import REFINER_CLASS, UNET_CLASS, detect_channels
from clips_nnunet.tmtv.schedule import CosineWarmRestartsDecayLR, StepDecayLR, restart_period_epochs

_OUR_NETWORKS = (UNET_CLASS, REFINER_CLASS)
_ARCH_KEYS_USED_ELSEWHERE = ("strides",)


def is_refiner_configuration(configuration_manager: ConfigurationManager) -> bool:
    """A cascaded configuration (``previous_stage`` set, e.g. ``3d_tmtv_refine``) trains TMTV-Net's refiner."""
    return configuration_manager.previous_stage_name is not None


def input_denormalisation(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                          ct_channel: int, pet_channel: int) -> Tuple[Dict[str, float], Dict[str, float]]:
    """(scale, offset) per source ("ct", "pet") mapping stored intensities back to HU / SUV: ``x * scale + offset``.

    ``NoNormalization`` (plan-tmtv) -> identity; ``CTNormalization`` -> (std, mean) of the dataset's foreground
    intensities. Per-image schemes (z-score, rescaling) cannot be undone: the error says what to do.
    """
    schemes = configuration_manager.normalization_schemes
    properties = plans_manager.foreground_intensity_properties_per_channel
    scale, offset = {}, {}
    for source, channel in (("ct", ct_channel), ("pet", pet_channel)):
        scheme = schemes[channel]
        if scheme == "NoNormalization":
            scale[source], offset[source] = 1.0, 0.0
        elif scheme == "CTNormalization":
            stats = properties[str(channel)]
            scale[source], offset[source] = float(max(stats["std"], 1e-8)), float(stats["mean"])
        else:
            raise DatasetError(
                f"channel {channel} ({source}) of this configuration uses {scheme}, a per-image normalisation the "
                f"TMTV windowing cannot undo; run `clips-nnunet plan-tmtv -d ID` and train on 3d_tmtv, or name the "
                f"channel CT in dataset.json so nnU-Net uses CTNormalization")
    return scale, offset


def tmtv_network_kwargs(plans_manager: PlansManager, configuration_manager: ConfigurationManager) -> dict:
    """Keyword arguments for ``TMTVUNet`` / ``TMTVRefiner`` from the plans (channel roles, input denormalisation)."""
    if configuration_manager.network_arch_class_name in _OUR_NETWORKS:
        kwargs = {k: v for k, v in configuration_manager.network_arch_init_kwargs.items()
                  if k not in _ARCH_KEYS_USED_ELSEWHERE}
    else:  # stock plans (3d_fullres): TMTV-Net's architecture, converter channel order
        kwargs = {"ct_channel": 0, "pet_channel": 1}
    n_image_channels = len(configuration_manager.normalization_schemes)
    if n_image_channels < 2:
        raise DatasetError(f"the TMTV recipe needs CT and PET channels; this configuration has {n_image_channels}")
    if len(configuration_manager.patch_size) != 3:
        raise DatasetError(f"the TMTV recipe is 3D; configuration patch size {configuration_manager.patch_size}")
    scale, offset = input_denormalisation(plans_manager, configuration_manager, kwargs["ct_channel"],
                                          kwargs["pet_channel"])
    kwargs.update(n_image_channels=n_image_channels, input_scale=scale, input_offset=offset)
    return kwargs


class TMTVRecipe:
    """Mixin: TMTV-Net's recipe on top of an ``nnUNetTrainerClipsBase`` subclass (see module docstring).

    Hyper-parameters are class attributes; a subclass changes one of them (nnU-Net trainer-variant style).
    """

    grad_clip_norm: float = 1.0
    tmtv_initial_lr: float = 1e-3
    tmtv_weight_decay: float = 1e-6
    restart_period_iterations: int = 3800   # TMTV-Net: 200 epochs x ~19 iterations
    restart_decay: float = 0.9              # peak learning rate x0.9 at each restart
    #: True: TMTV-Net's deep supervision (low-resolution logits upsampled to the full-resolution target);
    #: False: nnU-Net's (targets downsampled by the data pipeline; small lesions vanish from coarse targets)
    deep_supervision_upsample_logits: bool = True
    refiner_initial_lr: float = 5e-4
    refiner_weight_decay: float = 1e-4
    # TMTV-Net's refiner (104_v4_hdf5_refiner_aug_sensitivity_v2.py): StepLR(2000 epochs, 0.3), 12,000 epochs of
    # 12 iterations (reservoir of 96 samples / batch 8), optimiser step every 2 iterations. In nnU-Net iterations:
    refiner_lr_gamma: float = 0.3
    refiner_lr_step_iterations: int = 24_000   # 2,000 TMTV epochs x 12 iterations
    refiner_total_iterations: int = 144_000    # 12,000 TMTV epochs x 12 iterations -> 576 nnU-Net epochs of 250
    refiner_grad_accumulation: int = 2
    #: "respacing": TMTV-Net's random respacing (p 0.5, 1.5-4 mm) and no affine; "affine": stage 1's affine
    refiner_spatial_augmentation: str = "respacing"
    # network structure (read by build_network_architecture; nnUNetv2_predict rebuilds the network from the class)
    decoder_upsample_mode: str = "trilinear"   # TMTV-Net's layers/ops_conversion.py; "nearest" as before
    refiner_conv_bias: bool = False            # TMTV-Net: conv_kwargs bias=False in the refiner
    refiner_head_norm_act: bool = True         # TMTV-Net: 1x1x1 conv + InstanceNorm + LeakyReLU
    padding_is_air: bool = True                # all-zero voxels (nnU-Net's padding) -> 0 in every window
    stage1_loss_weights: Dict[str, float] = STAGE1_WEIGHTS
    refiner_loss_weights: Dict[str, float] = REFINER_WEIGHTS
    dice_smooth: float = 1e-3
    focal_gamma: float = 1.0

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.tmtv_is_refiner = is_refiner_configuration(self.configuration_manager)
        if self.label_manager.has_regions:
            raise DatasetError("the TMTV recipe uses softmax classes; this dataset.json defines regions. Use plain "
                               "integer labels (background 0, lesion 1)")
        kwargs = tmtv_network_kwargs(self.plans_manager, self.configuration_manager)
        expected = detect_channels(dataset_json.get("channel_names", dataset_json.get("modality")))
        if (kwargs["ct_channel"], kwargs["pet_channel"]) != expected:
            raise DatasetError(f"dataset.json says CT is channel {expected[0]} and PET channel {expected[1]}, but "
                               f"configuration {configuration!r} uses {kwargs['ct_channel']} / "
                               f"{kwargs['pet_channel']}; run `clips-nnunet plan-tmtv` and train on 3d_tmtv")
        self.tmtv_pet_channel = int(kwargs["pet_channel"])
        self.initial_lr = self.refiner_initial_lr if self.tmtv_is_refiner else self.tmtv_initial_lr
        self.weight_decay = self.refiner_weight_decay if self.tmtv_is_refiner else self.tmtv_weight_decay
        self.oversample_foreground_percent = 0.0
        self.num_iterations_per_epoch = 250
        self.enable_deep_supervision = not self.tmtv_is_refiner
        if self.tmtv_is_refiner:
            if self.refiner_spatial_augmentation not in aug.SPATIAL_MODES:
                raise DatasetError(f"refiner_spatial_augmentation must be one of {aug.SPATIAL_MODES}, got "
                                   f"{self.refiner_spatial_augmentation!r}")
            self.num_epochs = max(1, int(round(self.refiner_total_iterations / self.num_iterations_per_epoch)))
            self.grad_accumulation_steps = max(1, int(self.refiner_grad_accumulation))
        # the static pipeline needs the SUV channel: bind it for this trainer (nnU-Net calls self.get_training_transforms)
        spatial = self.refiner_spatial_augmentation if self.tmtv_is_refiner else "affine"
        self.get_training_transforms = functools.partial(
            type(self).get_training_transforms, suv_channel=self.tmtv_pet_channel, spatial=spatial,
            current_spacing=tuple(float(x) for x in self.configuration_manager.spacing))

    # ----------------------------------------------------------------------------------------------- network
    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        kwargs = tmtv_network_kwargs(plans_manager, configuration_manager)
        kwargs["zero_outside"] = bool(cls.padding_is_air)
        if is_refiner_configuration(configuration_manager):
            return TMTVRefiner(num_input_channels, num_output_channels, deep_supervision=False,
                               **{"conv_bias": bool(cls.refiner_conv_bias),
                                  "head_norm_act": bool(cls.refiner_head_norm_act), **kwargs})
        return TMTVUNet(num_input_channels, num_output_channels, deep_supervision=enable_deep_supervision,
                        **{"upsample_mode": cls.decoder_upsample_mode, **kwargs})

    def _tmtv_n_outputs(self) -> int:
        if self.configuration_manager.network_arch_class_name == UNET_CLASS:
            features = self.configuration_manager.network_arch_init_kwargs.get("features_per_stage",
                                                                               TMTV_UNET_FEATURES)
        else:
            features = TMTV_UNET_FEATURES
        return len(features) - 1

    def _get_deep_supervision_scales(self) -> Optional[List[List[float]]]:
        """Target scales, one per stage-1 output (full resolution first); None without deep supervision.

        TMTV-Net's way (``deep_supervision_upsample_logits``): every scale 1, i.e. each output gets the
        full-resolution target (batchgeneratorsv2 passes the same tensor on; the loss upsamples the logits).
        nnU-Net's way: 1, 1/2, 1/4, 1/8 (the strides of the outputs).
        """
        if not self.enable_deep_supervision or self.tmtv_is_refiner:
            return None
        if self.deep_supervision_upsample_logits:
            return [[1.0] * 3 for _ in range(self._tmtv_n_outputs())]
        return [[1.0 / 2 ** i] * 3 for i in range(self._tmtv_n_outputs())]

    def set_deep_supervision_enabled(self, enabled: bool):
        module = self.network.module if self.is_ddp else self.network
        module = getattr(module, "_orig_mod", module)
        if hasattr(module, "decoder"):
            module.decoder.deep_supervision = enabled

    # ----------------------------------------------------------------------------------------------- loss
    @property
    def tmtv_loss_weights(self) -> Dict[str, float]:
        return self.refiner_loss_weights if self.tmtv_is_refiner else self.stage1_loss_weights

    def _build_loss(self):
        loss = TMTVLoss(self.tmtv_loss_weights, self.dice_smooth, self.focal_gamma)
        if self.enable_deep_supervision and not self.tmtv_is_refiner:
            weights = deep_supervision_weights(self._tmtv_n_outputs())
            wrapper = FullResolutionDeepSupervision if self.deep_supervision_upsample_logits else DeepSupervisionWrapper
            loss = wrapper(loss, weights)
        return loss

    def per_sample_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The recipe's loss per sample (B,), so curricula rank cases by the loss the network is trained with.
        Logits coarser than the target are upsampled to it (TMTV-Net's deep supervision)."""
        spatial = target.shape[2:] if target.ndim == logits.ndim else target.shape[1:]
        return tmtv_loss_per_sample(upsample_logits(logits, spatial), target, self.tmtv_loss_weights,
                                    self.dice_smooth, self.focal_gamma)

    # ----------------------------------------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        if self.tmtv_is_refiner:
            step = restart_period_epochs(self.refiner_lr_step_iterations, self.num_iterations_per_epoch)
            scheduler = StepDecayLR(optimizer, self.initial_lr, step, self.refiner_lr_gamma)
        else:
            period = restart_period_epochs(self.restart_period_iterations, self.num_iterations_per_epoch)
            scheduler = CosineWarmRestartsDecayLR(optimizer, self.initial_lr, period, self.restart_decay)
        return optimizer, scheduler

    # ----------------------------------------------------------------------------------------------- augmentation
    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        """Rotation +-0.3 rad, scale 0.9-1.1 (refiner: random respacing), flips on all 3 axes in training, none at
        test time. The sampled patch is large enough for the affine / the coarsest respacing."""
        patch_size = self.configuration_manager.patch_size
        if len(patch_size) != 3:
            raise DatasetError(f"the TMTV recipe is 3D; configuration patch size {patch_size}")
        rotation = aug.ROTATION_RAD
        if self.tmtv_is_refiner and self.refiner_spatial_augmentation == "respacing":
            initial_patch_size = aug.respacing_initial_patch_size(patch_size, self.configuration_manager.spacing)
        else:
            initial_patch_size = get_patch_size(patch_size, rotation, rotation, rotation, aug.SCALING)
        self.inference_allowed_mirroring_axes = None
        return rotation, False, initial_patch_size, (0, 1, 2)

    @staticmethod
    def get_training_transforms(patch_size: Union[np.ndarray, Tuple[int]], rotation_for_DA,
                                deep_supervision_scales: Union[List, Tuple, None], mirror_axes: Tuple[int, ...],
                                do_dummy_2d_data_aug: bool, use_mask_for_norm: List[bool] = None,
                                is_cascaded: bool = False, foreground_labels=None, regions=None,
                                ignore_label: int = None, suv_channel: int = 1, spatial: str = "affine",
                                current_spacing=None):
        """TMTV-Net's pipeline (``augmentation.tmtv_training_transforms``); ``suv_channel``, ``spatial`` and
        ``current_spacing`` are bound per trainer."""
        return aug.tmtv_training_transforms(patch_size, deep_supervision_scales, mirror_axes, suv_channel,
                                            is_cascaded, foreground_labels, regions, ignore_label,
                                            rotation=rotation_for_DA, spatial=spatial,
                                            current_spacing=current_spacing)


class nnUNetTrainerTMTV(TMTVRecipe, nnUNetTrainerClipsBase):
    """TMTV-Net's recipe (stage 1 on 3d_tmtv / 3d_fullres; the refiner on a cascaded configuration such as
    3d_tmtv_refine, reading stage-1 predictions of this same trainer, nnU-Net's cascade convention)."""


class nnUNetTrainerTMTVFinetune(nnUNetTrainerTMTV):
    """TMTV-Net's second stage-1 run (``*_longer.py`` in civodlu/AutoPET2022): the same recipe at lr 5e-5, started
    from the best checkpoint of a first run::

        nnUNetv2_train D 3d_tmtv F -tr nnUNetTrainerTMTVFinetune \\
            -pretrained_weights $nnUNet_results/DatasetD/nnUNetTrainerTMTV__nnUNetPlans__3d_tmtv/fold_F/checkpoint_best.pth

    ``checkpoint_best.pth`` is nnU-Net's: saved whenever the exponential moving average of the validation
    pseudo-Dice improves. TMTV-Net ran its fine-tuning for up to 12,000 epochs; the epoch count here stays nnU-Net's.
    """

    tmtv_initial_lr: float = 5e-5


class nnUNetTrainerTMTVRefiner(nnUNetTrainerTMTV):
    """TMTV-Net's refiner (stage 2) reading the stage-1 predictions of ``previous_stage_trainer``.

    nnU-Net's cascade looks for ``<same trainer>__<plans>__<previous stage>/predicted_next_stage``; this class
    reads those of ``nnUNetTrainerTMTV`` instead, so stage 1 and the refiner keep their own names.
    """

    previous_stage_trainer: str = "nnUNetTrainerTMTV"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if not self.tmtv_is_refiner:
            raise DatasetError(f"{type(self).__name__} trains the cascade's second stage; configuration "
                               f"{configuration!r} has no previous_stage. Use 3d_tmtv_refine (clips-nnunet plan-tmtv)")
        try:
            results = str(nnunet_folder("nnUNet_results"))
        except DatasetError:   # not training (e.g. a network rebuilt for prediction): nothing to read
            results = None
        if results:
            self.folder_with_segs_from_previous_stage = os.path.join(
                results, self.plans_manager.dataset_name,
                f"{self.previous_stage_trainer}__{self.plans_manager.plans_name}__"
                f"{self.configuration_manager.previous_stage_name}", "predicted_next_stage", self.configuration_name)

