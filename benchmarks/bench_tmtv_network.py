#!/usr/bin/env python
"""Benchmark (not a test): TMTV-Net's stage-1 network + loss against nnU-Net's default U-Net + loss, per step.

Both networks get the same random 2-channel batches (raw HU / SUV-like values) and targets; one step = forward,
loss (TMTV: Dice + focal + sensitivity with 4 deep-supervision outputs; nnU-Net: Dice + CE with its deep-supervision
weights), backward. Runs are interleaved (nnU-Net, TMTV, nnU-Net, ...) to cancel drift, and the script prints
milliseconds per step of each, the ratio TMTV / nnU-Net, and the parameter counts. The nnU-Net network is
``PlainConvUNet`` as nnU-Net plans it for a 3D patch (features 32 doubling to at most 320, stride-2 stages while
every axis stays >= 4 voxels, two 3^3 convs per stage).

Usage::

    python benchmarks/bench_tmtv_network.py                             # CPU, patch 48x32x32, batch 2
    python benchmarks/bench_tmtv_network.py --device cuda --patch 128 96 96 --iterations 20

On a loaded 2-core CPU the absolute numbers are noise; the ratio is measured in the same run.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=3, default=[48, 32, 32])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from clips_nnunet.trainers.tmtv.loss import TMTVLoss, deep_supervision_weights
    from clips_nnunet.trainers.tmtv.network import TMTVUNet

    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    shape = (args.batch, 1, *args.patch)
    ct = rng.normal(40, 200, shape)
    pet = np.abs(rng.normal(1, 2, shape))
    data = torch.from_numpy(np.concatenate([ct, pet], 1).astype(np.float32)).to(device)
    labels = torch.from_numpy((rng.random(shape) > 0.9).astype(np.int64)).to(device)

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

    def step(name):
        net, loss_fn, tgt = runs[name]
        optims[name].zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            loss = loss_fn(net(data), tgt)
        loss.backward()
        optims[name].step()

    for name in runs:  # warm-up
        step(name)
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name in runs:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.iterations):
                step(name)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / args.iterations * 1000)
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, (net, _, _) in runs.items():
        print(f"{name:8s} {med[name]:9.1f} ms/step  params {sum(p.numel() for p in net.parameters()) / 1e6:6.2f} M")
    print(f"ratio TMTV / nnU-Net step time: {med['TMTV'] / med['nnU-Net']:.2f} "
          f"(patch {args.patch}, batch {args.batch}, {device})")


if __name__ == "__main__":
    main()
