"""Run the CPU twin study (issue 25) in priority order, a few runs at a time; resumable.

The harness runs a study seed by seed over all its arms. On the shared 2-core machine (load average 10-25 while this
study ran) the whole design does not fit the time, so this script runs the runs of several study configs in the
order of the issue's priorities, each by
its run index (``clips_nnunet.study.run_index``: the same code path as ``clips-nnunet study CONFIG --run-index I``),
``--parallel`` at a time. Finished runs are skipped, so it can be stopped (kill its process group) and restarted.
Nothing here changes what a run trains; the report is ``clips-nnunet study CONFIG --report-only`` afterwards.
Each run is claimed first (``status/claim_<index>``, created exclusively), so two launchers never start the same run;
delete the claim files of a stopped study before relaunching it.

Priority (each line: config, arms, seeds; a line is taken seed by seed, arms in the order given):

1. sloppy annotator: stock, soft SPL, soft SPL Random, seeds 0-4
2. sloppy annotator: stock seed 5 (6 stock seeds: the A/A check splits them 3 vs 3)
3. sloppy annotator: SuperLoss, SuperLoss Random, seeds 0-4
4. clean masks: stock seeds 0-2 (the memorisation reference; the clean condition's baseline)
5. clean masks: soft SPL, soft SPL Random seeds 0-4, stock seeds 3-4

    OMP_NUM_THREADS=1 nnUNet_def_n_proc=1 nnUNet_n_proc_DA=0 MPLBACKEND=Agg \
        setsid nohup nice -n 10 .venv/bin/python benchmarks/learning/twin_cpu_run.py > study_runs/twin_cpu_run.log 2>&1 &
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import List, Sequence, Tuple

from clips_nnunet.study import load_study_config, plan_runs, run_index, set_up_study
from clips_nnunet.study.config import StudyConfig

HERE = Path(__file__).resolve().parent
SLOPPY, CLEAN = HERE / "twin_cpu_sloppy.yaml", HERE / "twin_cpu_clean.yaml"
STOCK, SPL, SPL_R = "nnUNetTrainer", "nnUNetTrainerCLSelfPacedLinear", "nnUNetTrainerCLSelfPacedLinearRandom"
SL, SL_R = "nnUNetTrainerCLSuperLoss", "nnUNetTrainerCLSuperLossRandom"
#: (config, arms, seeds) in priority order
PRIORITY: Tuple[Tuple[Path, Tuple[str, ...], Tuple[int, ...]], ...] = (
    (SLOPPY, (STOCK, SPL, SPL_R), (0, 1, 2, 3, 4)),
    (SLOPPY, (STOCK,), (5,)),
    (SLOPPY, (SL, SL_R), (0, 1, 2, 3, 4)),
    (CLEAN, (STOCK,), (0, 1, 2)),
    (CLEAN, (SPL, SPL_R), (0, 1, 2, 3, 4)),
    (CLEAN, (STOCK,), (3, 4)),
)


Priority = Sequence[Tuple[Path, Tuple[str, ...], Tuple[int, ...]]]


def ordered_runs(configs: dict, priority: Priority = PRIORITY) -> List[Tuple[StudyConfig, int, str]]:
    """``(config, run index, label)`` of every prioritised run, in priority order."""
    out = []
    for path, arms, seeds in priority:
        config = configs[path]
        runs = plan_runs(config)
        for seed in seeds:
            for arm in arms:
                for i, run in enumerate(runs):
                    if run.trainer.name == arm and run.seed == seed and (config, i, run.label) not in out:
                        out.append((config, i, f"{config.name}: {run.label}"))
    return out


def claim(config: StudyConfig, index: int) -> bool:
    """Create ``status/claim_<index>`` exclusively: False when another launcher (or an earlier one whose runs
    still train) has claimed the run. Delete the claims of a stopped study before relaunching."""
    folder = config.study_dir / "status"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(folder / f"claim_{index}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (exists and is not a zombie left to an init that does not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S', time.gmtime())} {message}", flush=True)


def main(argv: Sequence[str] = (), priority: Priority = PRIORITY, description: str = __doc__) -> int:
    """Run the runs of ``priority`` (config, arms, seeds) in order, ``--parallel`` at a time."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--dry-run", action="store_true", help="print the order, run nothing")
    parser.add_argument("--wait-for", type=int, nargs="*", default=[], metavar="PID",
                        help="processes (runs of a stopped launcher) that hold a lane while they live")
    args = parser.parse_args(list(argv) or None)
    configs = {p: load_study_config(p) for p in {path for path, _, _ in priority}}
    order = ordered_runs(configs, priority)
    if args.dry_run:
        for n, (_, i, label) in enumerate(order):
            print(f"{n:3d} run-index {i:3d}  {label}")
        return 0
    prepared = set()
    pending = list(order)
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        running = {}
        while pending or running:
            busy = sum(_alive(pid) for pid in args.wait_for)
            while pending and len(running) + busy < args.parallel:
                config, i, label = pending.pop(0)
                if not claim(config, i):
                    log(f"skip {label} (index {i}): claimed")
                    continue
                if config.name not in prepared:  # dataset, plans, splits once, before any run of the config
                    log(f"prepare {config.name}")
                    set_up_study(config, prepare=True, echo=False)
                    prepared.add(config.name)
                log(f"start {label} (index {i})")
                running[pool.submit(run_index, config, i, False)] = (label, time.perf_counter())
            if not running:  # only waited-for processes hold the lanes
                time.sleep(30)
                continue
            done, _ = wait(list(running), timeout=30 if busy else None, return_when=FIRST_COMPLETED)
            for future in done:
                label, t0 = running.pop(future)
                try:
                    state = list(future.result()["runs"].values())[-1]
                except Exception as e:  # one failed run never stops the study
                    state = f"failed: {e}"
                log(f"end {label}: {state} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
