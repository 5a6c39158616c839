#!/usr/bin/env python
"""GPU benchmark steps behind ``benchmarks/gpu/run.sh`` (not a test). Each step adds its numbers to one JSON file.

Steps (``python benchmarks/gpu/gpu_bench.py STEP --workdir W --json OUT.json``):

- ``prepare``: synthetic 2-channel (CT, PET) cases large enough for 128^3 patches
  (:func:`clips_nnunet.synthetic.raw.make_synthetic_raw_dataset`), ``nnUNetv2_plan_and_preprocess`` with nnU-Net's
  default planner; records the planned patch and batch size. If the default plan is not 128^3 x batch 2, the plan is
  set to it and the JSON says so (``plans.overridden``).
- ``trainers``: iterations per second of ``nnUNetTrainer`` (stock) and ``nnUNetTrainerCLSelfPaced`` on that plan,
  full training steps (data loading with nnU-Net's default augmentation workers, AMP on CUDA), each trainer alone
  on the machine, in the order stock, CL, CL, stock (``--rounds 2``) so drift cancels; ratio CL / stock.
- ``augmentation``: batches per second of nnU-Net's training pipeline alone (no network), ``--workers`` workers.
- ``tmtv``: ``nnUNetTrainerTMTV`` stage-1 (configuration ``3d_tmtv``, prepared by run.sh with
  ``clips-nnunet plan-tmtv`` + ``nnUNetv2_preprocess``): median time of a training step on a pre-fetched batch,
  and iterations per second with its data loading.
- ``study-summary``: what the short study run finished (runs per state, report path).

``--smoke`` (CPU, tiny shapes, 2 iterations, no augmentation workers) checks the script where there is no GPU::

    python benchmarks/gpu/gpu_bench.py all --smoke --workdir /tmp/gs --json /tmp/gs/out.json
    # tmtv on CPU: TMTV-Net's 128x96x96 stage-1 patch takes minutes per step; clamp it to the tiny images first
    clips-nnunet plan-tmtv -d 996 --clamp-patch-to-median && nnUNetv2_preprocess -d 996 -c 3d_tmtv -np 1
    python benchmarks/gpu/gpu_bench.py tmtv --smoke --workdir /tmp/gs --json /tmp/gs/out.json

(with ``nnUNet_raw/preprocessed/results`` exported to ``/tmp/gs/...``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from clips_nnunet.io_utils import atomic_write_json  # noqa: E402
from clips_nnunet.nnunet_env import bin_path, nnunet_environment  # noqa: E402

DATASET_ID = 996
DATASET_NAME = "ClipsGPUBench"
PATCH, BATCH = [128, 128, 128], 2


def _record(path: Path, section: str, values: Dict[str, Any]) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[section] = values
    atomic_write_json(path, data)
    print(f"[gpu_bench] {section}: {json.dumps(values)}", flush=True)


def _use_workdir(workdir: Path) -> None:
    env = nnunet_environment(workdir)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[name]).mkdir(parents=True, exist_ok=True)
        os.environ[name] = env[name]
    os.environ["nnUNet_extTrainer"] = env["nnUNet_extTrainer"]
    os.environ.setdefault("nnUNet_compile", "false")


def _pre_folder() -> Path:
    return Path(os.environ["nnUNet_preprocessed"]) / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"


def step_prepare(args) -> None:
    from clips_nnunet.synthetic.raw import make_synthetic_raw_dataset

    shape = (32, 32, 32) if args.smoke else (160, 160, 160)
    n = 12 if args.smoke else args.cases
    t0 = time.time()
    raw = Path(os.environ["nnUNet_raw"]) / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
    if not (raw / "dataset.json").is_file():
        make_synthetic_raw_dataset(Path(os.environ["nnUNet_raw"]), DATASET_ID, DATASET_NAME, n_train=n, n_test=0,
                                   shape=shape, spacing=(2.0, 2.0, 2.0), seed=3)
    t_gen = time.time() - t0
    plans_file = _pre_folder() / "nnUNetPlans.json"
    if not plans_file.is_file():
        env = dict(os.environ, nnUNet_n_proc_DA=str(max(1, os.cpu_count() or 1)))
        subprocess.run([bin_path("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres", "-np",
                        str(min(8, os.cpu_count() or 1))], env=env, check=True, stdout=subprocess.DEVNULL)
    plans = json.loads(plans_file.read_text())
    cfg = plans["configurations"]["3d_fullres"]
    planned = {"patch_size": cfg["patch_size"], "batch_size": cfg["batch_size"]}
    overridden = None
    if not args.smoke and (cfg["patch_size"] != PATCH or cfg["batch_size"] != BATCH):
        cfg["patch_size"], cfg["batch_size"] = PATCH, BATCH
        atomic_write_json(plans_file, plans)
        overridden = {"patch_size": PATCH, "batch_size": BATCH}
    _record(Path(args.json), "prepare", {"cases": n, "shape": list(shape), "spacing_mm": 2.0,
                                         "generate_s": round(t_gen, 1), "total_s": round(time.time() - t0, 1),
                                         "planned": planned, "overridden": overridden,
                                         "features_per_stage": cfg["architecture"]["arch_kwargs"].get(
                                             "features_per_stage")})


def _trainer(class_name: str, configuration: str, device):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import clips_nnunet.nnunet_ext.clips_trainers as shim

    cls = nnUNetTrainer if class_name == "nnUNetTrainer" else getattr(shim, class_name)
    plans = load_json(str(_pre_folder() / "nnUNetPlans.json"))
    plans["continue_training"] = False  # what nnU-Net's run_training sets
    trainer = cls(plans, configuration, 0, load_json(str(_pre_folder() / "dataset.json")), device=device)
    trainer.num_epochs = 10
    if hasattr(trainer, "warmup_epochs"):
        trainer.warmup_epochs = 0
    trainer.print_to_log_file = lambda *a, **k: None
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    return trainer


def _close(trainer) -> None:
    import torch

    for loader in (trainer.dataloader_train, trainer.dataloader_val):
        if hasattr(loader, "_finish"):
            loader._finish()
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed_steps(trainer, n: int, warmup: int, device) -> float:
    """Iterations per second of ``n`` full training steps (next batch + train_step) after ``warmup`` steps."""
    for _ in range(warmup):
        trainer.train_step(next(trainer.dataloader_train))
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        trainer.train_step(next(trainer.dataloader_train))
    _sync(device)
    return n / (time.perf_counter() - t0)


def _device(args):
    import torch

    return torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")


def step_trainers(args) -> None:
    device = _device(args)
    if args.smoke:
        os.environ["nnUNet_n_proc_DA"] = "0"
    else:
        os.environ.pop("nnUNet_n_proc_DA", None)  # nnU-Net's default workers (12, at most the CPU count)
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    n, warmup = (2, 1) if args.smoke else (args.iterations, 5)
    order = ["nnUNetTrainer", "nnUNetTrainerCLSelfPaced"]
    order = order + order[::-1] if args.rounds > 1 and not args.smoke else order
    speeds: Dict[str, List[float]] = {name: [] for name in order}
    for name in order:
        trainer = _trainer(name, "3d_fullres", device)
        speeds[name].append(_timed_steps(trainer, n, warmup, device))
        _close(trainer)
    stock, cl = (statistics.mean(speeds[k]) for k in ("nnUNetTrainer", "nnUNetTrainerCLSelfPaced"))
    _record(Path(args.json), "trainers", {"device": str(device), "amp": device.type == "cuda",
                                          "da_workers": get_allowed_n_proc_DA(), "timed_iterations": n,
                                          "order": order, "it_per_s": speeds, "stock_it_per_s": round(stock, 3),
                                          "cl_it_per_s": round(cl, 3), "ratio_cl_over_stock": round(cl / stock, 3)})


def step_augmentation(args) -> None:
    device = _device(args)
    workers = 0 if args.smoke else args.workers
    os.environ["nnUNet_n_proc_DA"] = str(workers)
    trainer = _trainer("nnUNetTrainer", "3d_fullres", device)
    n = 2 if args.smoke else args.batches
    for _ in range(min(n, 10)):  # fill the workers' queues before timing
        next(trainer.dataloader_train)
    t0 = time.perf_counter()
    for _ in range(n):
        next(trainer.dataloader_train)
    rate = n / (time.perf_counter() - t0)
    _close(trainer)
    _record(Path(args.json), "augmentation", {"workers": workers, "batches": n, "batches_per_s": round(rate, 3)})


def step_tmtv(args) -> None:
    device = _device(args)
    os.environ["nnUNet_n_proc_DA"] = "0" if args.smoke else str(args.workers)
    trainer = _trainer("nnUNetTrainerTMTV", "3d_tmtv", device)
    n, warmup = (2, 1) if args.smoke else (args.iterations, 5)
    batch = next(trainer.dataloader_train)
    times = []
    for i in range(warmup + n):
        _sync(device)
        t0 = time.perf_counter()
        trainer.train_step(batch)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    with_loading = _timed_steps(trainer, n, 0, device)
    patch = list(trainer.configuration_manager.patch_size)
    _close(trainer)
    _record(Path(args.json), "tmtv_stage1", {"device": str(device), "patch_size": patch, "batch_size": len(batch["keys"]),
                                             "median_step_s": round(statistics.median(times), 4),
                                             "it_per_s_with_loading": round(with_loading, 3)})


def step_study_summary(args) -> None:
    study = Path(args.study_dir)
    status_file = study / "study_status.json"
    runs = json.loads(status_file.read_text()).get("runs", {}) if status_file.is_file() else {}
    states: Dict[str, int] = {}
    for state in runs.values():
        key = str(state).split(" ")[0]
        states[key] = states.get(key, 0) + 1
    report = study / "report" / "report.md"
    _record(Path(args.json), "study", {"study_dir": str(study), "runs": runs, "states": states,
                                       "report": str(report) if report.is_file() else None,
                                       "exit_code": args.exit_code})


STEPS = {"prepare": step_prepare, "trainers": step_trainers, "augmentation": step_augmentation, "tmtv": step_tmtv,
         "study-summary": step_study_summary}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=[*STEPS, "all"], help="'all': prepare, trainers, augmentation (no tmtv)")
    parser.add_argument("--workdir", type=Path, required=True, help="folder for nnUNet_raw/preprocessed/results")
    parser.add_argument("--json", required=True, help="the JSON file the numbers go to (sections are added)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, 2 iterations, one round: check the "
                        "script")
    parser.add_argument("--cases", type=int, default=16, help="synthetic cases (default 16)")
    parser.add_argument("--iterations", type=int, default=30, help="timed training steps per trainer (default 30)")
    parser.add_argument("--rounds", type=int, default=2, help="1: stock, CL; 2: stock, CL, CL, stock (default)")
    parser.add_argument("--workers", type=int, default=12, help="augmentation workers for 'augmentation' and "
                        "'tmtv' (default 12)")
    parser.add_argument("--batches", type=int, default=60, help="batches timed by 'augmentation' (default 60)")
    parser.add_argument("--study-dir", help="study-summary: the study folder")
    parser.add_argument("--exit-code", type=int, default=None, help="study-summary: exit code of the study run")
    args = parser.parse_args(argv)
    _use_workdir(args.workdir.resolve())
    for step in (["prepare", "trainers", "augmentation"] if args.step == "all" else [args.step]):
        t0 = time.time()
        STEPS[step](args)
        print(f"[gpu_bench] {step} took {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
