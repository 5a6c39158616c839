"""Run the second CPU twin study (issue 25; docs/results/twin_cpu2) in priority order, a few runs at a time.

The same launcher as ``twin_cpu_run.py`` (claims, resumable, ``--parallel``), with this study's configs and order:

1. sloppy reader: stock, soft SPL, soft SPL Random, seeds 0-4 (the comparison; >= 5 seeds per arm)
2. sloppy reader: stock seed 5 (6 stock seeds: the A/A check splits them 3 vs 3)
3. clean masks: stock seeds 0-2 (the memorisation reference)
4. sloppy reader: soft SPL, soft SPL Random seed 5

    OMP_NUM_THREADS=1 nnUNet_def_n_proc=1 nnUNet_n_proc_DA=0 MPLBACKEND=Agg \\
        setsid nohup nice -n 10 .venv/bin/python benchmarks/learning/twin_cpu2_run.py --parallel 3 \\
        > study_runs/twin_cpu2_run.log 2>&1 &
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from twin_cpu_run import SPL, SPL_R, STOCK, main  # noqa: E402  (the launcher beside this file)

HERE = Path(__file__).resolve().parent
SLOPPY, CLEAN = HERE / "twin_cpu2_sloppy.yaml", HERE / "twin_cpu2_clean.yaml"
PRIORITY = (
    (SLOPPY, (STOCK, SPL, SPL_R), (0, 1, 2, 3, 4)),
    (SLOPPY, (STOCK,), (5,)),
    (CLEAN, (STOCK,), (0, 1, 2)),
    (SLOPPY, (SPL, SPL_R), (5,)),
)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], PRIORITY, __doc__))
