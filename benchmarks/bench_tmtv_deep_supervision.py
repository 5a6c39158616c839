#!/usr/bin/env python
"""Benchmark (not a test): cost per training step of TMTV-Net's deep supervision against nnU-Net's.

Same network (TMTV-Net's stage-1 U-Net, 4 outputs at strides 1, 2, 4, 8), same random batches, same loss (TMTV-Net's
Dice + 0.5 focal + 2 sensitivity, weights 1, 1/2, 1/4, 1/8). One step = forward, loss, backward, AdamW step.

- nnU-Net's way: the targets are downsampled to each output (nearest neighbour, done in nnU-Net's data pipeline:
  timed here as part of the step, ``DownsampleSegForDSTransform``) and ``DeepSupervisionWrapper`` compares each
  output with its small target;
- TMTV-Net's way (the recipe's default): ``FullResolutionDeepSupervision`` upsamples each low-resolution output
  (trilinear) to the full-resolution target.

Runs are interleaved (nnU-Net, TMTV, nnU-Net, ...) to cancel drift; the script prints ms per step of each, the ratio
TMTV / nnU-Net, and on CUDA the peak memory of each.

Usage::

    python benchmarks/bench_tmtv_deep_supervision.py                                 # CPU, patch 48x32x32, batch 2
    python benchmarks/bench_tmtv_deep_supervision.py --device cuda --patch 128 96 96 --batch 2 --iterations 10
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=3, default=[48, 32, 32])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=3, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    from clips_nnunet.trainers.tmtv.loss import FullResolutionDeepSupervision, TMTVLoss, deep_supervision_weights
    from clips_nnunet.trainers.tmtv.network import TMTVUNet

    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    shape = (args.batch, 1, *args.patch)
    data = torch.from_numpy(np.concatenate([rng.normal(40, 200, shape), np.abs(rng.normal(1, 2, shape))], 1)
                            .astype(np.float32)).to(device)
    labels = torch.from_numpy((rng.random(shape) > 0.95).astype(np.int16))
    weights = deep_supervision_weights(4)
    downsample = DownsampleSegForDSTransform([[1.0 / 2 ** i] * 3 for i in range(4)])

    def nnunet_targets():  # per sample, as nnU-Net's pipeline does, then collated
        per_sample = [downsample(segmentation=labels[b])["segmentation"] for b in range(args.batch)]
        return [torch.stack([s[i] for s in per_sample]).to(device) for i in range(4)]

    def tmtv_targets():  # scale 1 everywhere: the same full-resolution tensor for every output
        full = labels.to(device)
        return [full] * 4

    torch.manual_seed(0)
    nets = {"nnU-Net": TMTVUNet(2, 2).to(device), "TMTV": TMTVUNet(2, 2).to(device)}
    nets["TMTV"].load_state_dict(nets["nnU-Net"].state_dict())
    losses = {"nnU-Net": DeepSupervisionWrapper(TMTVLoss(), weights),
              "TMTV": FullResolutionDeepSupervision(TMTVLoss(), weights)}
    make_targets = {"nnU-Net": nnunet_targets, "TMTV": tmtv_targets}
    optims = {k: torch.optim.AdamW(v.parameters(), 1e-3) for k, v in nets.items()}

    def step(name):
        optims[name].zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            loss = losses[name](nets[name](data), make_targets[name]())
        loss.backward()
        optims[name].step()

    peaks = {}
    for name in nets:  # warm-up, and peak memory of one step
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        step(name)
        if device.type == "cuda":
            torch.cuda.synchronize()
            peaks[name] = torch.cuda.max_memory_allocated() / 2 ** 30
    times = {k: [] for k in nets}
    for _ in range(args.repeats):
        for name in nets:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.iterations):
                step(name)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / args.iterations * 1000)
    med = {k: statistics.median(v) for k, v in times.items()}
    for name in nets:
        extra = f"  peak {peaks[name]:.2f} GiB" if name in peaks else ""
        print(f"{name:8s} deep supervision {med[name]:9.1f} ms/step{extra}")
    print(f"ratio TMTV / nnU-Net step time: {med['TMTV'] / med['nnU-Net']:.3f} "
          f"(patch {args.patch}, batch {args.batch}, {device})")


if __name__ == "__main__":
    main()
