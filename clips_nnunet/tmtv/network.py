"""TMTV-Net's networks for nnU-Net: a fixed windowing layer, the stage-1 U-Net and the stage-2 refiner.

TMTV-Net (qurit-frizi/TMTV-Net, from the autoPET 2022 entry civodlu/AutoPET2022) feeds its networks five
windowed copies of CT (HU) and PET (SUV), each clipped to a window and scaled to [0, 1]. Here the windowing is the
first (parameter-free) layer of the network, so that nnU-Net's preprocessing can store raw HU/SUV
(``NoNormalization``), intensity augmentation acts on raw SUV (as in TMTV-Net) and ``nnUNetv2_predict`` rebuilds
exactly the trained model from the trainer's static ``build_network_architecture``.

When the data were preprocessed with nnU-Net's ``CTNormalization`` (stock ``3d_fullres`` plans), the layer first
maps the stored intensities back to HU/SUV with ``x * std + mean`` of the dataset's foreground statistics
(``input_scale``, ``input_offset``); values outside nnU-Net's 0.5-99.5 percentile clip stay clipped.

Outside the image is air: nnU-Net pads with 0 (data loader, spatial augmentation, sliding-window predictor), which is
0 HU (water) in raw CT. TMTV-Net pads its windowed inputs with 0, i.e. below every window (air for CT, no uptake for
PET). The layer does the same: a voxel where every image channel is exactly 0 (nnU-Net's own "outside" convention,
``create_nonzero_mask``) gets 0 in every window (``zero_outside``; False = nnU-Net's water padding).

Structure follows TMTV-Net's code (qurit-frizi/TMTV-Net ``main/src``) layer for layer, so that its released weights
can be mapped onto these modules: trilinear decoder upsampling (``layers/ops_conversion.py``); the refiner's
convolutions have no bias and its 1x1x1 head is followed by InstanceNorm and LeakyReLU
(``model_refiner_multiclass_deepsupervision_configured_v1.py``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
import torch.nn.functional as F

#: (name, source, low, high): TMTV-Net's five input windows; source "ct" (HU) or "pet" (SUV).
TMTV_WINDOWS: Tuple[Tuple[str, str, float, float], ...] = (
    ("ct", "ct", -150.0, 300.0),
    ("ct_lung", "ct", -1000.0, -200.0),
    ("ct_soft", "ct", -100.0, 100.0),
    ("suv", "pet", 0.0, 30.0),
    ("suv_hot", "pet", 2.0, 10.0),
)

#: Stage-1 feature widths: stem, then the 4 stride-2 encoder levels (the last one also feeds the 9^3 bottleneck).
TMTV_UNET_FEATURES: Tuple[int, ...] = (32, 64, 96, 128, 156)
TMTV_BOTTLENECK_KERNEL = 9
TMTV_REFINER_FEATURES = 32
TMTV_REFINER_BLOCKS = 4
TMTV_REFINER_FIRST_KERNEL = 9
#: decoder upsampling modes: TMTV-Net's trilinear (``nn.Upsample(mode="trilinear")``) or nearest neighbour
UPSAMPLE_MODES = ("trilinear", "nearest")


def _norm_act(channels: int) -> List[nn.Module]:
    return [nn.InstanceNorm3d(channels, affine=True), nn.LeakyReLU(0.01, inplace=True)]


def conv_block(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
               bias: bool = True) -> nn.Sequential:
    """Conv3d (same padding) + InstanceNorm3d(affine) + LeakyReLU(0.01), TMTV-Net's basic unit."""
    return nn.Sequential(nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                                   bias=bias),
                         *_norm_act(out_channels))


class WindowingLayer(nn.Module):
    """Fixed first layer: ``clip((x - low) / (high - low), 0, 1)`` for each window, in raw HU / SUV units.

    Input (B, C, ...) with the image channels first (``ct_channel``, ``pet_channel`` index them) and, in a cascade,
    the previous stage's one-hot channels after the ``n_image_channels`` image channels; those pass through
    unchanged after the windows. Output (B, len(windows) + C - n_image_channels, ...). No trainable parameters.
    With ``zero_outside`` a voxel whose image channels are all exactly 0 (nnU-Net's padding) is 0 in every window.
    """

    def __init__(self, ct_channel: int = 0, pet_channel: int = 1, n_image_channels: int = 2,
                 windows: Sequence[Sequence] = TMTV_WINDOWS,
                 input_scale: Optional[Dict[str, float]] = None, input_offset: Optional[Dict[str, float]] = None,
                 zero_outside: bool = True):
        super().__init__()
        self.zero_outside = bool(zero_outside)
        if n_image_channels < 1:
            raise ValueError(f"n_image_channels must be >= 1, got {n_image_channels}")
        for name, channel in (("ct_channel", ct_channel), ("pet_channel", pet_channel)):
            if not 0 <= int(channel) < n_image_channels:
                raise ValueError(f"{name}={channel} is not one of the {n_image_channels} image channels; "
                                 f"fix the 'tmtv' channel indices in the plans (clips-nnunet plan-tmtv)")
        self.ct_channel, self.pet_channel, self.n_image_channels = int(ct_channel), int(pet_channel), int(n_image_channels)
        self.windows = tuple((str(n), str(s), float(lo), float(hi)) for n, s, lo, hi in windows)
        input_scale = dict(input_scale or {})
        input_offset = dict(input_offset or {})
        sources, lows, widths, scales, offsets = [], [], [], [], []
        for name, source, low, high in self.windows:
            if source not in ("ct", "pet"):
                raise ValueError(f"window {name!r}: source must be 'ct' or 'pet', got {source!r}")
            if not high > low:
                raise ValueError(f"window {name!r}: high ({high}) must exceed low ({low})")
            sources.append(self.ct_channel if source == "ct" else self.pet_channel)
            lows.append(low)
            widths.append(high - low)
            scales.append(float(input_scale.get(source, 1.0)))
            offsets.append(float(input_offset.get(source, 0.0)))
        self.register_buffer("source_index", torch.tensor(sources, dtype=torch.long), persistent=False)
        shape = (1, len(self.windows), 1, 1, 1)
        self.register_buffer("low", torch.tensor(lows).view(shape), persistent=False)
        self.register_buffer("width", torch.tensor(widths).view(shape), persistent=False)
        self.register_buffer("scale", torch.tensor(scales).view(shape), persistent=False)
        self.register_buffer("offset", torch.tensor(offsets).view(shape), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = x.index_select(1, self.source_index).float() * self.scale + self.offset
        windowed = ((raw - self.low) / self.width).clamp(0.0, 1.0)
        if self.zero_outside:
            inside = (x[:, :self.n_image_channels] != 0).any(dim=1, keepdim=True)
            windowed = windowed * inside
        windowed = windowed.to(x.dtype)
        extra = x[:, self.n_image_channels:]
        return torch.cat([windowed, extra], dim=1) if extra.shape[1] else windowed


class _Decoder(nn.Module):
    """Decoder of the stage-1 U-Net; ``deep_supervision`` is toggled by nnU-Net's ``set_deep_supervision_enabled``."""

    def __init__(self, features: Sequence[int], num_classes: int, deep_supervision: bool,
                 upsample_mode: str = "trilinear"):
        super().__init__()
        if upsample_mode not in UPSAMPLE_MODES:
            raise ValueError(f"upsample_mode must be one of {UPSAMPLE_MODES}, got {upsample_mode!r}")
        self.deep_supervision = deep_supervision
        self.upsample_mode = upsample_mode
        deep_to_shallow = list(features)[::-1]  # 156, 128, 96, 64, 32
        self.up_convs = nn.ModuleList()
        self.fuse_convs = nn.ModuleList()
        self.seg_heads = nn.ModuleList()
        for below, skip in zip(deep_to_shallow[:-1], deep_to_shallow[1:]):
            self.up_convs.append(conv_block(below, skip, 3))
            self.fuse_convs.append(conv_block(2 * skip, skip, 3))
            self.seg_heads.append(nn.Conv3d(skip, num_classes, 1))

    def forward(self, skips: List[torch.Tensor]) -> torch.Tensor | List[torch.Tensor]:
        x = skips[-1]
        outputs = []
        for i, (up, fuse) in enumerate(zip(self.up_convs, self.fuse_convs)):
            skip = skips[-(i + 2)]
            x = up(F.interpolate(x, size=skip.shape[2:], mode=self.upsample_mode))
            x = fuse(torch.cat([x, skip], dim=1))
            if self.deep_supervision or i == len(self.up_convs) - 1:
                outputs.append(self.seg_heads[i](x))
        outputs = outputs[::-1]  # nnU-Net: highest resolution first
        return outputs if self.deep_supervision else outputs[0]


class TMTVUNet(nn.Module):
    """TMTV-Net stage 1: windowing, 3^3 stem to 32, 4 stride-2 3^3 encoder levels (64, 96, 128, 156), one 9^3
    bottleneck conv, decoder of trilinear upsampling (``upsample_mode``; "nearest" as an option) + 3^3 conv, skip concatenation and one 3^3 conv,
    InstanceNorm(affine) + LeakyReLU(0.01) throughout, 1x1x1 segmentation heads on the 4 decoder outputs.

    With ``deep_supervision`` the forward pass returns 4 logits tensors, full resolution first (strides 1, 2, 4, 8);
    otherwise the full-resolution logits. The keyword names follow nnU-Net's ``get_network_from_plans`` (it passes
    ``input_channels``, ``num_classes``, ``deep_supervision`` plus the plans' ``arch_kwargs``). ``zero_outside``:
    see ``WindowingLayer``.
    """

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = True,
                 features_per_stage: Sequence[int] = TMTV_UNET_FEATURES,
                 bottleneck_kernel: int = TMTV_BOTTLENECK_KERNEL,
                 ct_channel: int = 0, pet_channel: int = 1, n_image_channels: Optional[int] = None,
                 windows: Sequence[Sequence] = TMTV_WINDOWS, input_scale: Optional[Dict[str, float]] = None,
                 input_offset: Optional[Dict[str, float]] = None, upsample_mode: str = "trilinear",
                 zero_outside: bool = True, **unused):
        super().__init__()
        features = [int(f) for f in features_per_stage]
        if len(features) < 2:
            raise ValueError(f"features_per_stage needs a stem and at least one level, got {features}")
        n_image_channels = input_channels if n_image_channels is None else int(n_image_channels)
        self.windowing = WindowingLayer(ct_channel, pet_channel, n_image_channels, windows, input_scale, input_offset,
                                        zero_outside)
        in_ch = len(self.windowing.windows) + input_channels - n_image_channels
        self.stem = conv_block(in_ch, features[0], 3)
        self.encoder = nn.ModuleList(conv_block(a, b, 3, stride=2) for a, b in zip(features[:-1], features[1:]))
        self.bottleneck = conv_block(features[-1], features[-1], int(bottleneck_kernel))
        self.decoder = _Decoder(features, num_classes, deep_supervision, upsample_mode)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor):
        x = self.stem(self.windowing(x))
        skips = [x]
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        skips[-1] = self.bottleneck(skips[-1])
        return self.decoder(skips)


class ResidualBlock(nn.Module):
    """conv3-IN-LReLU-conv3-IN, plus identity, then LeakyReLU(0.01) (TMTV-Net's ``BlockRes``)."""

    def __init__(self, channels: int, bias: bool = True):
        super().__init__()
        self.body = nn.Sequential(conv_block(channels, channels, 3, bias=bias),
                                  nn.Conv3d(channels, channels, 3, padding=1, bias=bias),
                                  nn.InstanceNorm3d(channels, affine=True))
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class TMTVRefiner(nn.Module):
    """TMTV-Net stage 2: windowing (5 windows + the previous stage's foreground channel = 6 inputs), one 9^3 conv
    to 32 channels, 4 residual blocks of 3^3 convs, 1x1x1 head to the classes; full resolution, no deep supervision.

    As in TMTV-Net, no convolution has a bias (``conv_bias``) and the head is conv + InstanceNorm(affine) +
    LeakyReLU(0.01) (``head_norm_act``; False = a plain 1x1x1 conv with bias, nnU-Net's segmentation head).
    ``deep_supervision`` is accepted (nnU-Net passes it) and must be False in training; the network has one output.
    """

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False,
                 features: int = TMTV_REFINER_FEATURES, n_blocks: int = TMTV_REFINER_BLOCKS,
                 first_kernel: int = TMTV_REFINER_FIRST_KERNEL,
                 ct_channel: int = 0, pet_channel: int = 1, n_image_channels: Optional[int] = None,
                 windows: Sequence[Sequence] = TMTV_WINDOWS, input_scale: Optional[Dict[str, float]] = None,
                 input_offset: Optional[Dict[str, float]] = None, conv_bias: bool = False,
                 head_norm_act: bool = True, zero_outside: bool = True, **unused):
        super().__init__()
        n_image_channels = input_channels if n_image_channels is None else int(n_image_channels)
        self.windowing = WindowingLayer(ct_channel, pet_channel, n_image_channels, windows, input_scale, input_offset,
                                        zero_outside)
        in_ch = len(self.windowing.windows) + input_channels - n_image_channels
        bias = bool(conv_bias)
        self.stem = conv_block(in_ch, int(features), int(first_kernel), bias=bias)
        self.blocks = nn.Sequential(*[ResidualBlock(int(features), bias) for _ in range(int(n_blocks))])
        if head_norm_act:
            self.head = conv_block(int(features), num_classes, 1, bias=bias)
        else:
            self.head = nn.Conv3d(int(features), num_classes, 1)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(self.windowing(x))))
