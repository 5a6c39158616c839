"""What the TMTV per-step benchmarks share (not a benchmark itself): their command line, the synthetic PET/CT batch
and the interleaved timing of training steps.

Used by ``bench_tmtv_network.py`` and ``bench_tmtv_deep_supervision.py``; Python puts this folder on ``sys.path``
when one of them is run as ``python benchmarks/<script>.py``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import numpy as np
import torch


def parse_step_args(description: str, iterations: int) -> argparse.Namespace:
    """``--patch Z Y X`` (default 48 32 32), ``--batch`` (2), ``--iterations`` (timed steps per repeat; default
    ``iterations``), ``--repeats`` (3) and ``--device`` (cpu), with ``description`` as the help text."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=3, default=[48, 32, 32])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=iterations, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def synthetic_batch(batch: int, patch: Sequence[int], foreground: float, rng: np.random.Generator
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """A random 2-channel batch (channel 0 CT-like: normal(40, 200) HU; channel 1 PET-like: |normal(1, 2)| SUV),
    float32 of shape (batch, 2, *patch), and a binary label map of shape (batch, 1, *patch) in which about
    ``foreground`` of the voxels are 1 (as bool)."""
    if not 0 < foreground < 1:
        raise ValueError(f"foreground must be a fraction in (0, 1), got {foreground}")
    shape = (batch, 1, *patch)
    ct = rng.normal(40, 200, shape)
    pet = np.abs(rng.normal(1, 2, shape))
    labels = rng.random(shape) > 1 - foreground
    return np.concatenate([ct, pet], 1).astype(np.float32), labels


def train_step(net: torch.nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer, data: torch.Tensor,
               targets: Callable[[], list], device: torch.device) -> None:
    """One training step as the benchmarks time it: ``targets()`` (inside the step, so target preparation is
    timed), forward (autocast on CUDA), loss, backward, optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, enabled=device.type == "cuda"):
        loss = loss_fn(net(data), targets())
    loss.backward()
    optimizer.step()


def time_steps(step: Callable[[str], None], names: Iterable[str], iterations: int, repeats: int,
               device: torch.device) -> Tuple[Dict[str, float], Dict[str, float]]:
    """Median milliseconds per ``step(name)`` of each name, runs interleaved (a, b, a, b, ...) to cancel drift,
    after one warm-up step each; and, on CUDA, the peak memory (GiB) of that warm-up step (empty dict elsewhere)."""
    names = list(names)
    cuda = device.type == "cuda"
    peaks: Dict[str, float] = {}
    for name in names:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        step(name)
        if cuda:
            torch.cuda.synchronize()
            peaks[name] = torch.cuda.max_memory_allocated() / 2 ** 30
    times: Dict[str, List[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(iterations):
                step(name)
            if cuda:
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / iterations * 1000)
    return {name: statistics.median(v) for name, v in times.items()}, peaks
