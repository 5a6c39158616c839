#!/usr/bin/env python
"""Benchmark (not a test): training-step throughput of nnUNetTrainerCLSelfPaced (sampling) and
nnUNetTrainerCLSuperLoss (loss weighting, through the weighted nnU-Net loss) against stock nnUNetTrainer.

Both trainers are built on the same preprocessed data and run ``train_step`` on the SAME pre-fetched batches
(data loading excluded, so the comparison isolates the curriculum's step cost), alternating stock / CL step by
step (order swapped every repeat) to cancel drift and load changes; medians of the per-step times are compared. It prints iterations per second of each, the ratio CL / stock (target >= 0.98), and the
per-case-loss overhead: the time of ``per_sample_loss`` on the highest-resolution output relative to a stock step.

The curriculum's per-epoch bookkeeping (gather, inverse-probability centring, EMA and raw-loss update, plan, loss-
weight normaliser, history append; ``on_train_epoch_end`` + ``on_train_epoch_start``, against stock's own) is timed
too and charged per iteration, scaled as if every part grew with the number of patches (an over-estimate) to an
epoch of ``--epoch-iterations`` (nnU-Net's 250), plus ``curriculum.png`` every 5 epochs; the "per iteration
including bookkeeping" line is the cost the issue's <= 2 % target refers to.

Usage::

    python benchmarks/bench_trainer.py                 # makes a tiny synthetic dataset (32^3) in a temp folder
    python benchmarks/bench_trainer.py --shape 64 --iterations 20 --repeats 3 --device cpu
    python benchmarks/bench_trainer.py --workdir /path/with/nnUNet_folders --dataset-id 990   # reuse data

On CPU with the tiny patch the numbers say little about a GPU run at 128^3 (see docs/curriculum_engine.md).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _prepare(workdir: Path, dataset_id: int, shape: int) -> None:
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (workdir / name).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(workdir / name)
    pre = workdir / "nnUNet_preprocessed" / f"Dataset{dataset_id:03d}_ClipsTiny" / "nnUNetPlans_3d_fullres"
    if pre.is_dir():
        return
    from clips_nnunet.synthetic.raw import make_synthetic_raw_dataset
    make_synthetic_raw_dataset(workdir / "nnUNet_raw", dataset_id, shape=(shape, shape, shape))
    env = dict(os.environ, nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1")
    exe = Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"
    subprocess.run([str(exe), "-d", str(dataset_id), "-c", "3d_fullres", "-np", "1"], env=env, check=True,
                   capture_output=True)


def _trainer(cls, dataset_id: int, device, weighting: bool = False):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    name = maybe_convert_to_dataset_name(dataset_id)
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    plans = load_json(str(pre / "nnUNetPlans.json"))
    plans["continue_training"] = False          # what nnunetv2.run.run_training.get_trainer_from_args sets
    trainer = cls(plans, "3d_fullres", 0, load_json(str(pre / "dataset.json")), device=device)
    trainer.num_epochs = 10
    if hasattr(trainer, "warmup_epochs"):
        trainer.warmup_epochs = 0
    trainer.print_to_log_file = lambda *a, **k: None
    trainer.on_train_start()
    if weighting:   # past warm-up with a measured state, so SuperLoss's threshold exists and every step is weighted
        trainer._cl_state.update(trainer._cl_case_ids, [0.0] * len(trainer._cl_case_ids), 0)
        trainer.current_epoch = 1
    trainer.on_train_epoch_start()
    return trainer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="folder for nnUNet_raw/preprocessed/results "
                        "(default: a temporary folder)")
    parser.add_argument("--dataset-id", type=int, default=991)
    parser.add_argument("--shape", type=int, default=32, help="edge of the synthetic cubic images (default 32)")
    parser.add_argument("--iterations", type=int, default=15, help="timed steps per block (default 15)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved blocks per trainer (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--epoch-iterations", type=int, default=250, help="iterations per epoch the per-epoch "
                        "bookkeeping is charged to (default nnU-Net's 250)")
    args = parser.parse_args(argv)
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    os.environ.setdefault("nnUNet_compile", "false")

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="clips_bench_")
        args.workdir = Path(tmp.name)
    _prepare(args.workdir, args.dataset_id, args.shape)

    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from clips_nnunet.trainers.base import highest_resolution
    from clips_nnunet.trainers.family import nnUNetTrainerCLSuperLoss
    from clips_nnunet.trainers.self_paced_trainers import nnUNetTrainerCLSelfPaced

    device = torch.device(args.device)
    torch.manual_seed(0)
    stock = _trainer(nnUNetTrainer, args.dataset_id, device)
    torch.manual_seed(0)
    cl = _trainer(nnUNetTrainerCLSelfPaced, args.dataset_id, device)
    torch.manual_seed(0)
    weighted = _trainer(nnUNetTrainerCLSuperLoss, args.dataset_id, device, weighting=True)
    trainers = {"stock": stock, "cl": cl, "weighted": weighted}
    batches = [next(stock.dataloader_train) for _ in range(args.iterations)]
    for b in batches:
        b.setdefault("curriculum_version", 0)

    outputs = {name: [] for name in trainers}

    def step(trainer, b) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = trainer.train_step(dict(b))
        if device.type == "cuda":
            torch.cuda.synchronize()
        outputs[next(k for k, v in trainers.items() if v is trainer)].append(out)
        return time.perf_counter() - start

    for b in batches[:2]:                          # warm-up steps (allocations, cudnn autotune)
        for trainer in trainers.values():
            step(trainer, b)
    times = {name: [] for name in trainers}
    for r in range(args.repeats):                  # alternate per step (order rotated each repeat): drift cancels
        for b in batches:
            names = list(trainers)[r % 3:] + list(trainers)[:r % 3]
            for name in names:
                times[name].append(step(trainers[name], b))
        if r < args.repeats - 1:
            cl._cl_reset_buffers()
            weighted._cl_reset_buffers()

    # per-epoch bookkeeping with the last repeat's buffers (len(batches) steps), charged per iteration
    from clips_nnunet.trainers.curriculum_history import plot_curriculum

    def bookkeeping(trainer, name) -> float:
        if hasattr(trainer, "_cl_state"):
            trainer.current_epoch = max(1, int(trainer.current_epoch))   # not a plotting epoch: plot timed apart
        start = time.perf_counter()
        trainer.on_train_epoch_end(outputs[name][-len(batches):])
        trainer.current_epoch += 1
        trainer.on_train_epoch_start()
        return time.perf_counter() - start

    epoch_cost = {name: bookkeeping(tr, name) for name, tr in trainers.items()}
    start = time.perf_counter()
    plot_curriculum(cl.output_folder)
    t_plot = time.perf_counter() - start
    scale = args.epoch_iterations / len(batches)
    per_it = {name: (epoch_cost[name] * (1.0 if name == "stock" else scale)
                     + (0.0 if name == "stock" else t_plot / 5)) / args.epoch_iterations for name in trainers}

    # per-case-loss overhead: per_sample_loss on the highest-resolution output of one forward pass
    b = batches[0]
    with torch.no_grad():
        data = b["data"].to(device)
        target = [t.to(device) for t in b["target"]] if isinstance(b["target"], list) else b["target"].to(device)
        output = cl.network(data)
        out0, tgt0 = highest_resolution(output), highest_resolution(target)
        for _ in range(2):
            cl.per_sample_loss(out0, tgt0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.iterations):
            cl.per_sample_loss(out0, tgt0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_loss = (time.perf_counter() - start) / args.iterations

    t_stock, t_cl, t_w = (statistics.median(times[k]) for k in ("stock", "cl", "weighted"))
    patch = tuple(int(x) for x in stock.configuration_manager.patch_size)
    print(f"device={device.type} patch={patch} batch={stock.batch_size} iterations={args.iterations} "
          f"repeats={args.repeats} torch_threads={torch.get_num_threads()}")
    n_steps = len(times["stock"])
    print(f"stock nnUNetTrainer:       {1 / t_stock:8.3f} it/s  (median {t_stock * 1000:8.1f} ms/step over {n_steps})")
    print(f"nnUNetTrainerCLSelfPaced:  {1 / t_cl:8.3f} it/s  (median {t_cl * 1000:8.1f} ms/step over {n_steps})")
    print(f"ratio CL / stock (it/s):   {t_stock / t_cl:8.3f} (medians), "
          f"{sum(times['stock']) / sum(times['cl']):.3f} (totals)  (target >= 0.98)")
    print(f"nnUNetTrainerCLSuperLoss:  {1 / t_w:8.3f} it/s  (median {t_w * 1000:8.1f} ms/step over {n_steps}), "
          f"ratio weighted / stock {t_stock / t_w:.3f} (medians), {sum(times['stock']) / sum(times['weighted']):.3f} "
          f"(totals)")
    print(f"per-case loss (full-res output): {t_loss * 1000:.2f} ms = {100 * t_loss / t_stock:.2f} % of a stock step")
    print(f"per-epoch bookkeeping ({len(batches)} steps' patches): stock {epoch_cost['stock'] * 1000:.1f} ms, "
          f"CL {epoch_cost['cl'] * 1000:.1f} ms, weighted {epoch_cost['weighted'] * 1000:.1f} ms; curriculum.png "
          f"{t_plot * 1000:.0f} ms (every 5 epochs)")
    # paired: the three trainers run one after the other on the same batch, so the ratio of neighbouring steps
    # cancels the machine's load changes better than the ratio of medians
    for name in ("cl", "weighted"):
        pairs = sorted(c / s_ for c, s_ in zip(times[name], times["stock"]))
        print(f"paired step ratio {name} / stock: median {statistics.median(pairs):.4f}, geometric mean "
              f"{statistics.geometric_mean(pairs):.4f}, quartiles {pairs[len(pairs) // 4]:.4f}-"
              f"{pairs[(3 * len(pairs)) // 4]:.4f} over {len(pairs)} pairs")
    for name, label in (("cl", "CL (sampling)"), ("weighted", "SuperLoss (weighting)")):
        cost = (statistics.median(times[name]) + per_it[name]) / (t_stock + per_it["stock"])
        paired = statistics.median(c / s_ for c, s_ in zip(times[name], times["stock"]))
        print(f"{label} / stock per iteration including bookkeeping (epoch of {args.epoch_iterations}): "
              f"{cost:.4f} from step medians, {paired + (per_it[name] - per_it['stock']) / t_stock:.4f} from the "
              f"paired median (time ratios, target <= 1.02)")
    for tr in trainers.values():
        for gen in (tr.dataloader_train, tr.dataloader_val):
            if hasattr(gen, "_finish"):
                gen._finish()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
