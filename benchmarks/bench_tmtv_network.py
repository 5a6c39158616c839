#!/usr/bin/env python
"""Benchmark (not a test): TMTV-Net's stage-1 network + loss against nnU-Net's default U-Net + loss, per step.

Both networks get the same random 2-channel batches (raw HU / SUV-like values) and targets; one step = forward,
loss (TMTV: Dice + focal + sensitivity with 4 deep-supervision outputs; nnU-Net: Dice + CE with its deep-supervision
weights), backward. Runs are interleaved (nnU-Net, TMTV, nnU-Net, ...) to cancel drift, and the script prints
milliseconds per step of each, the ratio TMTV / nnU-Net, the parameter counts and, on CUDA, the peak memory of a
step. The nnU-Net network is ``PlainConvUNet`` as nnU-Net plans it for a 3D patch (features 32 doubling to at most
320, stride-2 stages while every axis stays >= 4 voxels, two 3^3 convs per stage).

Usage::

    python benchmarks/bench_tmtv_network.py                             # CPU, patch 48x32x32, batch 2
    python benchmarks/bench_tmtv_network.py --device cuda --patch 128 96 96 --iterations 20

On a loaded 2-core CPU the absolute numbers are noise; the ratio is measured in the same run.
"""
from __future__ import annotations

import numpy as np
import torch

from _tmtv_common import parse_step_args, synthetic_batch, time_steps, train_step


def nnunet_default_unet(patch, in_channels, num_classes):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    strides, shape = [[1, 1, 1]], list(patch)
    while all(s // 2 >= 4 for s in shape) and len(strides) < 6:
        shape = [s // 2 for s in shape]
        strides.append([2, 2, 2])
    n = len(strides)
    return PlainConvUNet(in_channels, n, [min(32 * 2 ** i, 320) for i in range(n)], torch.nn.Conv3d, 3, strides,
                         [2] * n, num_classes, [2] * (n - 1), conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                         norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                         nonlin_kwargs={"inplace": True}, deep_supervision=True), strides


def main() -> None:
    args = parse_step_args(__doc__, iterations=5)

    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from clips_nnunet.tmtv.loss import TMTVLoss, deep_supervision_weights
    from clips_nnunet.tmtv.network import TMTVUNet

    device = torch.device(args.device)
    batch, mask = synthetic_batch(args.batch, args.patch, foreground=0.1, rng=np.random.default_rng(0))
    data = torch.from_numpy(batch).to(device)
    labels = torch.from_numpy(mask.astype(np.int64)).to(device)

    def targets(n):
        return [torch.nn.functional.interpolate(labels.float(), scale_factor=1 / 2 ** i, mode="nearest").long()
                for i in range(n)]

    tmtv = TMTVUNet(2, 2, deep_supervision=True).to(device)
    tmtv_loss = DeepSupervisionWrapper(TMTVLoss(), deep_supervision_weights(4))
    stock, strides = nnunet_default_unet(args.patch, 2, 2)
    stock = stock.to(device)
    w = np.array([1 / 2 ** i for i in range(len(strides) - 1)])
    w[-1] = 0
    stock_loss = DeepSupervisionWrapper(DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False}, {},
                                                       dice_class=MemoryEfficientSoftDiceLoss), w / w.sum())
    runs = {"nnU-Net": (stock, stock_loss, targets(len(strides) - 1)), "TMTV": (tmtv, tmtv_loss, targets(4))}
    optims = {k: torch.optim.AdamW(v[0].parameters(), 1e-3) for k, v in runs.items()}

    def step(name):  # targets prepared once, outside the timed step
        net, loss_fn, tgt = runs[name]
        train_step(net, loss_fn, optims[name], data, lambda: tgt, device)

    med, peaks = time_steps(step, runs, args.iterations, args.repeats, device)
    for name, (net, _, _) in runs.items():
        extra = f"  peak {peaks[name]:.2f} GiB" if name in peaks else ""
        print(f"{name:8s} {med[name]:9.1f} ms/step  params {sum(p.numel() for p in net.parameters()) / 1e6:6.2f} M"
              f"{extra}")
    print(f"ratio TMTV / nnU-Net step time: {med['TMTV'] / med['nnU-Net']:.2f} "
          f"(patch {args.patch}, batch {args.batch}, {device})")


if __name__ == "__main__":
    main()
