"""Benchmark of the whole-body lymphoma twin (``clips_nnunet.synthetic.twin``): speed, memory, threshold ceiling.

What it does (CPU):

1. **Speed and memory** (``--speed N``, default 3): writes N clinical-size DICOM twin studies (one per vendor in
   turn: CT 512 x 512, PET ~4 mm, SEG + RTSTRUCT, ground truth NIfTI) through ``write_study(..., phantom="twin",
   size="wholebody")``, each in a fresh worker process, and prints per study the wall and CPU seconds of rendering
   and of the whole study, and the worker's peak resident memory. ``patients per 10 s per core`` is ``10 / CPU
   seconds`` (CPU time, so that other processes on a shared machine do not count).
2. **Threshold ceiling** (``--clinical N``, ``--study N``): the best single global SUV threshold chosen on the first
   two thirds of the patients (mean Dice vs the clean masks), scored on the last third, and the same rotated over
   three folds (every patient held out once; ``ceiling_from_curves``), on PET twins at the clinical
   grids (vendors in turn) and at the study grid (8 mm, skull base to thighs, as ``synthetic/raw.py`` writes it);
   each without and with bladder and brain (+10 mm) masked out (``clips_nnunet.synthetic.twin_ceiling``).
3. Cohort statistics of the clinical twins: TMTV, lesion count, SUVmax (median, range), physiology flags.
4. ``--figure PATH``: coronal MIPs of three clinical twins beside the real GE patient of ``../shared/testdata``
   (read with the converter's SUV reader).

Usage: ``python benchmarks/bench_twin.py [--speed 3] [--clinical 18] [--study 60] [--seed 0] [--figure PNG]
[--json OUT]``. Results are recorded in docs/synthetic.md.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clips_nnunet.synthetic.twin import CLINICAL_GRIDS, make_twin, study_case  # noqa: E402
from clips_nnunet.synthetic.twin_ceiling import (CeilingCase, ceiling_from_curves, dice_curve,  # noqa: E402
                                                 masked_pet, split_ceiling_from_curves)

REAL_GE_PET = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "tcia_sts_001" / "STS_001_PT_raw_BQML"
VENDORS = ("SIEMENS", "GE", "PHILIPS")


def _one_study(index: int, seed: int) -> Dict[str, Any]:
    """Render and write one clinical DICOM twin study in this (fresh) process; timings and peak memory."""
    from clips_nnunet.synthetic.dicom_cohort import write_study
    from clips_nnunet.synthetic.phantom import make_study_specs
    from clips_nnunet.synthetic.twin_cohort import render_twin_study

    spec = make_study_specs(index + 1, seed=seed, size="wholebody")[index]
    t0, c0 = time.perf_counter(), time.process_time()
    render_twin_study(spec, "wholebody")
    render = (time.perf_counter() - t0, time.process_time() - c0)
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        entry = write_study(spec, tmp, size="wholebody", phantom="twin")
        total = (time.perf_counter() - t0, time.process_time() - c0)
    return {"vendor": spec.vendor, "pet_shape": entry["grid"]["pet_shape"], "ct_shape": entry["grid"]["ct_shape"],
            "render_wall_s": render[0], "render_cpu_s": render[1], "study_wall_s": total[0],
            "study_cpu_s": total[1], "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            "tmtv_ml": entry["tmtv_ml"], "n_lesions": len(entry["lesions"])}


def speed(n: int, seed: int) -> List[Dict[str, Any]]:
    """Section 1: ``n`` studies, each in a fresh process (one task per child)."""
    rows = []
    ctx = mp.get_context("spawn")
    for i in range(n):
        with ctx.Pool(1, maxtasksperchild=1) as pool:
            row = pool.apply(_one_study, (i, seed))
        rows.append(row)
        print(f"  {row['vendor']:<8} PET {row['pet_shape']} CT {row['ct_shape']}: render {row['render_wall_s']:.1f} s "
              f"wall / {row['render_cpu_s']:.1f} s CPU; whole DICOM study {row['study_wall_s']:.1f} s wall / "
              f"{row['study_cpu_s']:.1f} s CPU; peak RSS {row['peak_rss_gib']:.2f} GiB", flush=True)
    cpu = float(np.mean([r["study_cpu_s"] for r in rows]))
    print(f"  mean CPU per study {cpu:.1f} s -> {10.0 / cpu:.2f} patients per 10 s per core; "
          f"max peak RSS {max(r['peak_rss_gib'] for r in rows):.2f} GiB")
    return rows


def _curves(case: CeilingCase) -> Dict[str, np.ndarray]:
    """Dice curves of one patient, plain and with bladder and brain masked out (the volumes are not kept)."""
    return {"plain": dice_curve(case.pet, case.label), "masked": dice_curve(masked_pet(case), case.label)}


def _ceiling(curves: List[Dict[str, np.ndarray]], label: str) -> Dict[str, Any]:
    n_train = (2 * len(curves)) // 3
    out: Dict[str, Any] = {}
    for mode in ("plain", "masked"):
        table = np.array([c[mode] for c in curves])
        r = split_ceiling_from_curves(table, n_train)
        cv = ceiling_from_curves(table, 3)
        out[mode], out["cv_" + mode] = r, cv
        print(f"  {label}{' (bladder+brain masked)' if mode == 'masked' else ''}: best threshold SUV "
              f"{r['threshold']:.2f} (train Dice {r['train_dice']:.3f}, {n_train} patients) -> held-out mean Dice "
              f"{r['test_dice']:.3f} ({len(curves) - n_train} patients); 3-fold rotation: held-out mean Dice "
              f"{cv['test_dice']:.3f} (folds {cv['fold_test_dice']}, thresholds {cv['fold_thresholds']})",
              flush=True)
    return out


def ceilings(n_clinical: int, n_study: int, seed: int) -> Dict[str, Any]:
    """Sections 2 and 3 (one patient in memory at a time)."""
    result: Dict[str, Any] = {}
    if n_clinical:
        curves, stats = [], []
        t0 = time.perf_counter()
        for i in range(n_clinical):
            rng = np.random.default_rng([seed, i])
            c = make_twin(int(rng.integers(0, 2 ** 31)), weight_kg=float(rng.uniform(50, 110)),
                          height_m=float(rng.uniform(1.55, 1.95)), grids=(CLINICAL_GRIDS[VENDORS[i % 3]][0], None))
            curves.append(_curves(CeilingCase(c.pet, c.label, c.tissue, c.pet_grid.spacing)))
            stats.append(c.summary)
            del c
        print(f"  {n_clinical} clinical PET twins in {time.perf_counter() - t0:.0f} s", flush=True)
        result["clinical"] = _ceiling(curves, "clinical grids")
        result["clinical_stats"] = cohort_stats(stats)
    if n_study:
        curves = []
        for i in range(n_study):
            c = study_case(seed, i)
            curves.append(_curves(CeilingCase(c.pet, c.label, c.tissue, c.pet_grid.spacing)))
        result["study"] = _ceiling(curves, "study grid")
    return result


def cohort_stats(summaries: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Median and range of TMTV, lesion count and SUVmax; physiology flags (printed)."""
    def q(values):
        v = np.asarray(values, dtype=float)
        return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}
    out = {"tmtv_ml": q([s["tmtv_ml"] for s in summaries]), "n_lesions": q([s["n_lesions"] for s in summaries]),
           "suvmax": q([s["suvmax"] or 0.0 for s in summaries]),
           "brown_fat": int(sum(bool(s["patient"]["brown_fat_stations"]) for s in summaries)),
           "gcsf_marrow": int(sum(bool(s["patient"]["marrow_gcsf"]) for s in summaries)),
           "myocardium_suv": q([s["patient"]["suv"]["myocardium"] for s in summaries])}
    for k in ("tmtv_ml", "n_lesions", "suvmax", "myocardium_suv"):
        v = out[k]
        print(f"  {k}: median {v['median']:.1f} (range {v['min']:.1f}-{v['max']:.1f})")
    print(f"  brown fat in {out['brown_fat']}, G-CSF marrow in {out['gcsf_marrow']} of {len(summaries)} patients")
    return out


def figure(path: Path, seed: int) -> None:
    """Section 4: MIPs of three clinical twins and the real GE patient (same SUV window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    from clips_nnunet.dataset_conversion.suv import read_pet_suv

    panels = []
    for i, vendor in enumerate(VENDORS):
        c = make_twin(seed + i, weight_kg=70.0 + 10 * i, height_m=1.70 + 0.05 * i,
                      grids=(CLINICAL_GRIDS[vendor][0], None))
        panels.append((f"twin {i + 1} ({vendor} grid)\nTMTV {c.summary['tmtv_ml']:.0f} ml, "
                       f"{c.summary['n_lesions']} lesions", c.pet, c.pet_grid.spacing, c.label))
    if REAL_GE_PET.is_dir():
        img = read_pet_suv(sorted(REAL_GE_PET.glob("*.dcm")), label="STS_001")
        panels.append(("real GE patient (TCIA STS_001)\nsoft-tissue sarcoma", sitk.GetArrayFromImage(img),
                       tuple(reversed(img.GetSpacing())), None))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 6.2))
    for ax, (title, pet, sp, label) in zip(axes, panels):
        mip = pet.max(axis=1)[::-1]  # z ascends from the feet: head up
        ax.imshow(mip, cmap="gray_r", vmin=0, vmax=8, aspect=sp[0] / sp[2], interpolation="bilinear")
        if label is not None:
            ax.contour(label.max(axis=1)[::-1], [0.5], colors="red", linewidths=0.6)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle("Coronal MIPs, SUV 0-8 (red: twin truth mask)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    print(f"  figure written to {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speed", type=int, default=3, help="clinical DICOM studies to time (default 3)")
    parser.add_argument("--clinical", type=int, default=18, help="clinical PET twins for the ceiling (default 18)")
    parser.add_argument("--study", type=int, default=60, help="study-grid twins for the ceiling (default 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", type=Path, default=None, help="write the MIP figure (PNG)")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args(argv)
    out: Dict[str, Any] = {"seed": args.seed}
    if args.speed:
        print("1. clinical DICOM twin: speed and memory", flush=True)
        out["speed"] = speed(args.speed, args.seed)
    if args.clinical or args.study:
        print("2./3. threshold ceiling (best global SUV threshold on the first 2/3, Dice on the last 1/3)", flush=True)
        out.update(ceilings(args.clinical, args.study, args.seed))
    if args.figure:
        figure(args.figure, args.seed)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
