"""Feature blur of curriculum by smoothing: kernel maths, hooks only while training (on every spatial convolution
as Sinha, Garg & Larochelle (2020) do, or on the encoder stages), none in saved weights."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from clips_nnunet.errors import CurriculumConfigError
from clips_nnunet.trainers.smoothing_trainer import FeatureBlur, gaussian_blur, spatial_convolutions


def test_gaussian_blur_values():
    x = torch.zeros(1, 2, 5, 5, 5)
    x[0, 0, 2, 2, 2] = 1.0
    y = gaussian_blur(x, 1.0)
    k = np.array([math.exp(-2), math.exp(-0.5), 1.0, math.exp(-0.5), math.exp(-2)])
    k /= k.sum()
    # separable: the impulse response is the outer product k x k x k
    np.testing.assert_allclose(y[0, 0].numpy(), np.einsum("i,j,k->ijk", k, k, k), atol=1e-6)
    assert float(y[0, 1].abs().sum()) == 0.0  # channels are blurred separately
    assert gaussian_blur(x, 0.0) is x
    const = torch.full((1, 1, 4, 4), 3.0)
    torch.testing.assert_close(gaussian_blur(const, 2.0), const)  # replicate padding keeps a constant


def _net():
    # 3 encoder stages x 2 convolutions (3x3x3) + 2 decoder stages x 1 convolution; the 1x1 segmentation head and
    # the transposed convolutions are not blurred
    return PlainConvUNet(1, 3, (4, 8, 16), torch.nn.Conv3d, 3, (1, 2, 2), 2, 2, (1, 1), conv_bias=True,
                         norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU, deep_supervision=False)


def _blur_in_training_only(net, x, **blur_kwargs):
    """(output without blur, output blurred in training mode, the FeatureBlur): the hooks change nothing in eval mode
    (validation, prediction)."""
    net.eval()
    with torch.no_grad():
        plain = net(x)
    blur = FeatureBlur(net, sigma=1.0, **blur_kwargs)
    with torch.no_grad():
        assert torch.equal(net(x), plain)
        net.train()
        blurred = net(x)
    return plain, blurred, blur


def test_feature_blur_hooks_training_only_and_removable():
    torch.manual_seed(0)
    net = _net()
    x = torch.randn(1, 1, 16, 16, 16)
    plain, blurred, blur = _blur_in_training_only(net, x, where="stages")
    assert blur.calls == 3 and not torch.allclose(blurred, plain)
    blur.sigma = 0.0
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), plain)
    state = net.state_dict()
    fresh = _net()
    fresh.load_state_dict(state)  # no extra parameters or buffers: predict rebuilds the plain network
    blur.remove()
    net.train()
    blur.sigma = 1.0
    with torch.no_grad():
        net(x)
    assert blur.calls == 3


def test_every_spatial_convolution_is_blurred_in_training_only():
    torch.manual_seed(0)
    net = _net()
    convs = spatial_convolutions(net)
    assert len(convs) == 3 * 2 + 2 * 1
    assert all(max(c.kernel_size) == 3 for c in convs)
    plain, blurred, blur = _blur_in_training_only(net, torch.randn(1, 1, 16, 16, 16), where="conv")
    assert blur.calls == 8 and not torch.allclose(blurred, plain)
    blur.remove()
    with torch.no_grad():
        net(torch.randn(1, 1, 16, 16, 16))
    assert blur.calls == 8                           # hooks removed
    with pytest.raises(CurriculumConfigError, match="'conv' or 'stages'"):
        FeatureBlur(net, 1.0, where="everywhere")
