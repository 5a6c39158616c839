"""Curriculum by smoothing blurs the output of every spatial convolution, as Sinha, Garg & Larochelle (2020) do."""
from __future__ import annotations

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from clips_nnunet.errors import CurriculumConfigError
from clips_nnunet.trainers.smoothing import FeatureBlur, spatial_convolutions


def _net():
    # 3 encoder stages x 2 convolutions (3x3x3) + 2 decoder stages x 1 convolution; the 1x1 segmentation head and
    # the transposed convolutions are not blurred
    return PlainConvUNet(1, 3, (4, 8, 16), torch.nn.Conv3d, 3, (1, 2, 2), 2, 2, (1, 1), conv_bias=True,
                         norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU, deep_supervision=False)


def test_every_spatial_convolution_is_blurred_in_training_only():
    torch.manual_seed(0)
    net = _net()
    convs = spatial_convolutions(net)
    assert len(convs) == 3 * 2 + 2 * 1
    assert all(max(c.kernel_size) == 3 for c in convs)
    x = torch.randn(1, 1, 16, 16, 16)
    net.eval()
    with torch.no_grad():
        plain = net(x)
    blur = FeatureBlur(net, sigma=1.0, where="conv")
    with torch.no_grad():
        assert torch.equal(net(x), plain)           # eval mode (validation, prediction): no blur
        net.train()
        blurred = net(x)
    assert blur.calls == 8 and not torch.allclose(blurred, plain)
    blur.remove()
    with torch.no_grad():
        net(x)
    assert blur.calls == 8                           # hooks removed
    with pytest.raises(CurriculumConfigError, match="'conv' or 'stages'"):
        FeatureBlur(net, 1.0, where="everywhere")
