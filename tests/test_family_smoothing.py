"""Feature blur of curriculum by smoothing: kernel maths, hooks only while training, none in saved weights."""
from __future__ import annotations

import math

import numpy as np
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from clips_nnunet.trainers.smoothing import FeatureBlur, gaussian_blur


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
    return PlainConvUNet(1, 3, (4, 8, 16), torch.nn.Conv3d, 3, (1, 2, 2), 2, 2, (1, 1), conv_bias=True,
                         norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU, deep_supervision=False)


def test_feature_blur_hooks_training_only_and_removable():
    torch.manual_seed(0)
    net = _net()
    x = torch.randn(1, 1, 16, 16, 16)
    net.eval()
    with torch.no_grad():
        plain = net(x)
    blur = FeatureBlur(net, sigma=1.0)
    with torch.no_grad():
        assert torch.equal(net(x), plain)  # eval mode: no blur
        net.train()
        blurred = net(x)
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
