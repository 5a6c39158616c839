"""Run the second CPU twin study (issue 25; docs/results/twin_cpu2) in priority order, a few runs at a time.

The same launcher as ``twin_cpu_run.py`` (claims, resumable, ``--parallel``), with this study's configs and order:

1. sloppy reader: stock, soft SPL, soft SPL Random, seed 0
2. sloppy reader: stock seeds 1-5 (6 stock seeds: take-off rate and Dice against the threshold yardstick, the A/A
   check splits them 3 vs 3)
3. sloppy reader: soft SPL, soft SPL Random, seeds 1-4 (the comparison; >= 5 seeds per arm)
4. clean masks: stock seeds 0-2 (the memorisation reference)
5. sloppy reader: soft SPL, soft SPL Random seed 5

Stock first (from 20:05 UTC on 7 December 2026, after the seed-0 runs had started): at load 17, three runs got
0.2 core together (about 37 min per run), so the whole comparison could not finish in the session; a measured
baseline (does stock take off and beat the threshold at this budget, with what spread) is the most useful part of a
partial study.

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
    (SLOPPY, (STOCK, SPL, SPL_R), (0,)),
    (SLOPPY, (STOCK,), (1, 2, 3, 4, 5)),
    (SLOPPY, (SPL, SPL_R), (1, 2, 3, 4)),
    (CLEAN, (STOCK,), (0, 1, 2)),
    (SLOPPY, (SPL, SPL_R), (5,)),
)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], PRIORITY, __doc__))
