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

import numpy as np
import torch

from _tmtv_common import parse_step_args, synthetic_batch, time_steps, train_step


def main() -> None:
    args = parse_step_args(__doc__, iterations=3)

    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    from clips_nnunet.tmtv.loss import FullResolutionDeepSupervision, TMTVLoss, deep_supervision_weights
    from clips_nnunet.tmtv.network import TMTVUNet

    device = torch.device(args.device)
    batch, mask = synthetic_batch(args.batch, args.patch, foreground=0.05, rng=np.random.default_rng(0))
    data = torch.from_numpy(batch).to(device)
    labels = torch.from_numpy(mask.astype(np.int16))
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
        train_step(nets[name], losses[name], optims[name], data, make_targets[name], device)

    med, peaks = time_steps(step, nets, args.iterations, args.repeats, device)
    for name in nets:
        extra = f"  peak {peaks[name]:.2f} GiB" if name in peaks else ""
        print(f"{name:8s} deep supervision {med[name]:9.1f} ms/step{extra}")
    print(f"ratio TMTV / nnU-Net step time: {med['TMTV'] / med['nnU-Net']:.3f} "
          f"(patch {args.patch}, batch {args.batch}, {device})")


if __name__ == "__main__":
    main()
