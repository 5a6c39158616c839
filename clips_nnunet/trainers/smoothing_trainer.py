"""Gaussian blur of feature maps for curriculum by smoothing (Sinha, Garg & Larochelle 2020, NeurIPS).

:class:`FeatureBlur` registers forward hooks that replace a module's output by a Gaussian-blurred copy (separable
depthwise convolution, replicate padding, kernel from :func:`clips_nnunet.curriculum.smoothing.gaussian_kernel_1d`),
only while the network is in training mode and ``sigma > 0``. ``where="conv"`` (the paper, section 3: the output of
every convolution is smoothed before its normalisation and non-linearity) hooks every spatial convolution (kernel
larger than 1) of the encoder and decoder of a dynamic-network-architectures U-Net (PlainConvUNet and
ResidualEncoderUNet alike; 1x1 convolutions such as the segmentation heads and residual projections are left
alone); ``where="stages"`` hooks only the output of each encoder stage (cheaper). Hooks hold no parameters, so
checkpoints contain the plain architecture and the network that ``nnUNetv2_predict`` rebuilds has no blur; the
schedule anneals ``sigma`` to 0 before training ends, so the final weights are trained for that plain network.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from clips_nnunet.curriculum.smoothing import gaussian_kernel_1d
from clips_nnunet.errors import CurriculumConfigError


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur every channel of ``x`` (B, C, *spatial; 2-D or 3-D) with an isotropic Gaussian of ``sigma`` voxels."""
    if sigma <= 0:
        return x
    kernel = torch.as_tensor(gaussian_kernel_1d(sigma), dtype=x.dtype, device=x.device)
    radius = (kernel.numel() - 1) // 2
    channels = x.shape[1]
    n_spatial = x.ndim - 2
    conv = {2: F.conv2d, 3: F.conv3d}.get(n_spatial)
    if conv is None:
        raise CurriculumConfigError(f"feature blur supports 2-D and 3-D feature maps, got shape {tuple(x.shape)}")
    out = x
    for axis in range(n_spatial):
        shape = [1] * n_spatial
        shape[axis] = kernel.numel()
        weight = kernel.reshape(1, 1, *shape).expand(channels, 1, *shape)
        pad = [0, 0] * n_spatial
        # F.pad lists the last dimension first
        pad[2 * (n_spatial - 1 - axis)] = pad[2 * (n_spatial - 1 - axis) + 1] = radius
        out = conv(F.pad(out, pad, mode="replicate"), weight, groups=channels)
    return out


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    net = network.module if hasattr(network, "module") else network
    return getattr(net, "_orig_mod", net)


def encoder_stages(network: torch.nn.Module) -> List[torch.nn.Module]:
    """The encoder stages of a (possibly DDP-wrapped or compiled) dynamic-network-architectures U-Net."""
    net = _unwrap(network)
    stages = getattr(getattr(net, "encoder", None), "stages", None)
    if stages is None:
        raise CurriculumConfigError(f"curriculum by smoothing needs a network with encoder.stages "
                                    f"(dynamic-network-architectures U-Nets); got {type(net).__name__}")
    return list(stages)


def spatial_convolutions(network: torch.nn.Module) -> List[torch.nn.Module]:
    """Every 2-D/3-D convolution with a kernel larger than 1 in the encoder and decoder (Sinha et al. 2020 blur the
    output of each convolutional layer); transposed convolutions and 1x1 convolutions are excluded."""
    encoder_stages(network)  # validates the architecture
    net = _unwrap(network)
    return [m for m in net.modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)) and max(m.kernel_size) > 1]


class FeatureBlur:
    """Forward hooks blurring outputs with the current ``sigma`` (training mode only): after every spatial
    convolution (``where="conv"``, the paper) or after each encoder stage (``where="stages"``)."""

    def __init__(self, network: torch.nn.Module, sigma: float = 0.0, where: str = "stages"):
        if where not in ("conv", "stages"):
            raise CurriculumConfigError(f"smoothing blur location must be 'conv' or 'stages', got {where!r}")
        self.sigma = float(sigma)
        self.where = where
        self.calls = 0
        modules = spatial_convolutions(network) if where == "conv" else encoder_stages(network)
        self._handles = [m.register_forward_hook(self._hook) for m in modules]

    def _hook(self, module: torch.nn.Module, inputs, output):
        if self.sigma > 0 and module.training:
            self.calls += 1
            return gaussian_blur(output, self.sigma)
        return output

    def remove(self) -> None:
        """Remove the hooks (the network is then plain again)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
