#!/usr/bin/env python
"""Benchmark (not a test): curriculum history on rank 0, append-only storage against the old JSON rewrite.

The new storage (:mod:`clips_nnunet.trainers.curriculum_history`) appends one float32 row and one JSON line per
epoch and rewrites the small state file; the old engine rewrote ``curriculum.json`` (every epoch's probabilities
and estimates, indented JSON, written atomically) every epoch. Both are measured in the same run on the same data:
the new writer for every epoch, the old rewrite at a few history lengths (its cost grows with the epoch), with the
total over the run integrated from those points. Also times ``read_history`` and ``curriculum.png`` (bounded plot).

Usage::

    python benchmarks/bench_curriculum_history.py                       # 550 cases x 1000 epochs
    python benchmarks/bench_curriculum_history.py --cases 100 --epochs 200 --workdir /tmp/x
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def old_rewrite(folder: Path, case_ids, history) -> float:
    """The old engine's per-epoch write: the whole curriculum.json, atomically; returns seconds."""
    from clips_nnunet.io_utils import atomic_write_json

    state = {"case_ids": case_ids, "ema_alpha": 0.3, "ema": [0.0] * len(case_ids), "visits": [1] * len(case_ids),
             "last_seen": [1] * len(case_ids)}
    start = time.perf_counter()
    atomic_write_json(folder / "curriculum.json", {"trainer": "bench", "case_ids": case_ids, "epochs": history,
                                                    "state": state})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=550)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--old-points", type=int, default=5, help="history lengths at which the old rewrite is timed")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from clips_nnunet.trainers.curriculum_history import ROWS_F32, HistoryWriter, plot_curriculum, read_history

    rng = np.random.default_rng(0)
    case_ids = [f"case_{i:04d}" for i in range(args.cases)]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        new_dir, old_dir = Path(tmp) / "new", Path(tmp) / "old"
        new_dir.mkdir(), old_dir.mkdir()
        writer = HistoryWriter(str(new_dir), case_ids, "bench")
        writer.start(0)
        old_points = sorted({max(1, int(round(x))) for x in np.linspace(1, args.epochs, args.old_points)})
        old_times, history, new_times = {}, [], []
        for epoch in range(args.epochs):
            p = rng.dirichlet(np.ones(args.cases))
            d = rng.normal(size=args.cases)
            record = {"warmup": epoch < 10, "progress": epoch / args.epochs, "active_fraction": 0.5,
                      "threshold": 0.1, "mean_active_loss": -0.5, "sampling_entropy": 5.0, "lag_batches": 3,
                      "n_losses": 500, "n_observations": 420, "skipped_background_patches": 80,
                      "nonfinite_losses": 0, "zero_weight_batches": 0, "extra": {"n_active": 275, "lam": 0.1}}
            state = {"case_ids": case_ids, "ema_alpha": 0.3, "ema": d.tolist(), "last_loss": d.tolist(),
                     "visits": [epoch] * args.cases, "last_seen": [epoch] * args.cases}
            start = time.perf_counter()
            writer.append(epoch, p, d, record, state)
            new_times.append(time.perf_counter() - start)
            history.append({"epoch": epoch, **record, "probabilities": p.tolist(), "estimates": d.tolist()})
            if epoch + 1 in old_points:
                old_times[epoch + 1] = old_rewrite(old_dir, case_ids, history)
        new_size = sum(f.stat().st_size for f in new_dir.iterdir())
        old_size = (old_dir / "curriculum.json").stat().st_size
        start = time.perf_counter()
        h = read_history(new_dir)
        read_s = time.perf_counter() - start
        assert h.probabilities.shape == (args.epochs, args.cases)
        start = time.perf_counter()
        plot_curriculum(str(new_dir))
        plot_s = time.perf_counter() - start

    xs = np.array(sorted(old_times))
    ys = np.array([old_times[x] for x in xs])
    old_total = float(np.interp(np.arange(1, args.epochs + 1), xs, ys).sum())
    new_total = float(sum(new_times))
    print(f"curriculum history, {args.cases} cases x {args.epochs} epochs (rank 0)")
    print(f"  new append-only: {new_size / 1e6:.2f} MB on disk ({ROWS_F32}: {(2 * args.cases + 1) * 4} bytes/epoch); "
          f"per epoch median {1e3 * statistics.median(new_times):.2f} ms, max {1e3 * max(new_times):.2f} ms, "
          f"last {1e3 * new_times[-1]:.2f} ms; total {new_total:.2f} s")
    print(f"  old JSON rewrite: {old_size / 1e6:.2f} MB at the end; per epoch "
          + ", ".join(f"{1e3 * old_times[x]:.0f} ms at epoch {x}" for x in xs)
          + f"; total about {old_total:.1f} s")
    print(f"  ratio old/new: size {old_size / new_size:.1f}x, last epoch {old_times[xs[-1]] / new_times[-1]:.0f}x, "
          f"total {old_total / new_total:.0f}x")
    print(f"  read_history {1e3 * read_s:.1f} ms; curriculum.png (bounded: <= 300 epochs x 200 case rows) "
          f"{plot_s:.2f} s")


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    main()
