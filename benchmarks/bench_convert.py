"""Benchmark `clips-nnunet convert` on one synthetic whole-body PET/CT study (issue 3, item 11).

Three pipelines, each run in a fresh subprocess (so peak memory, ``ru_maxrss``, is per worker), on the same files:

* **floor**: SimpleITK reads the CT and PET series (``ImageSeriesReader``, float32) and writes the files the converter
  writes (CT and PET as float32 NIfTI on the PET grid, label uint8), with the same gzip compression. Nothing can
  convert faster than reading and writing the same data with the same library.
* **clips**: :func:`clips_nnunet.dataset_conversion.convert.convert_cohort` (index, series choice, SUV, CT resampled
  onto the PET grid, SEG mask, metadata, report), one worker.
* **dicom2nifti**: what the autoPET scripts do: ``dicom2nifti.dicom_series_to_nifti`` for CT and PET, SUV from the
  first PET header with nibabel, CT resampled onto the PET grid (SimpleITK here; nilearn in the originals).

Library imports happen before the clock starts in every pipeline (a per-process constant, not conversion work).
On a busy machine wall time is noisy, so CPU seconds (user + system, all threads of the process) are reported too.
Prints the times, the ratios clips/floor (target <= 1.3) and dicom2nifti/clips (target >= 3) and peak RSS.
``--baseline-src DIR`` also runs the clips pipeline from another source tree (DIR holding a ``clips_nnunet``
package, e.g. ``git archive <commit> clips_nnunet | tar -x -C DIR``) in the same rounds, to measure a change.
Usage: ``python benchmarks/bench_convert.py [--workdir DIR] [--keep] [--repeats N] [--baseline-src DIR]``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional


def _series_files(study: Path, sub: str):
    return sorted(str(p) for p in (study / sub).glob("*.dcm"))


def imports_floor() -> None:
    import SimpleITK  # noqa: F401


def imports_clips() -> None:
    import cc3d  # noqa: F401
    import highdicom  # noqa: F401
    import scipy.ndimage  # noqa: F401
    import scipy.spatial  # noqa: F401
    import SimpleITK  # noqa: F401
    import tqdm.auto  # noqa: F401

    from clips_nnunet.dataset_conversion import convert, index, masks, metadata, read, select, suv  # noqa: F401
    from clips_nnunet.metrics import lesions  # noqa: F401


def imports_dicom2nifti() -> None:
    import dicom2nifti  # noqa: F401
    import nibabel  # noqa: F401
    import pydicom  # noqa: F401
    import SimpleITK  # noqa: F401


def stage_floor(study: Path, out: Path) -> None:
    import SimpleITK as sitk

    images = []
    for sub in ("CT", "PET"):
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(study / sub)))
        reader.SetOutputPixelType(sitk.sitkFloat32)
        images.append(reader.Execute())
    pet = images[1]
    out.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Cast(pet, sitk.sitkFloat32), str(out / "x_0000.nii.gz"), useCompression=True)
    sitk.WriteImage(pet, str(out / "x_0001.nii.gz"), useCompression=True)
    sitk.WriteImage(sitk.Cast(pet > 1e9, sitk.sitkUInt8), str(out / "x.nii.gz"), useCompression=True)


def stage_clips(cohort: Path, out: Path) -> None:
    from clips_nnunet.dataset_conversion.convert import convert_cohort

    report = convert_cohort(cohort, 555, "Bench", raw_root=out / "raw", preprocessed_root=None,
                            private_dir=out / "private", progress=False)
    if report.failed:
        raise SystemExit(f"conversion failed: {report.cases}")


def stage_dicom2nifti(study: Path, out: Path) -> None:
    import dicom2nifti
    import dicom2nifti.settings
    import nibabel as nib
    import numpy as np
    import pydicom
    import SimpleITK as sitk

    dicom2nifti.settings.disable_validate_slice_increment()
    out.mkdir(parents=True, exist_ok=True)
    dicom2nifti.dicom_series_to_nifti(str(study / "CT"), str(out / "CT.nii.gz"), reorient_nifti=True)
    dicom2nifti.dicom_series_to_nifti(str(study / "PET"), str(out / "PET.nii.gz"), reorient_nifti=True)
    # SUV as in the autoPET scripts: one factor from the first header (BQML, decay to series time)
    ds = pydicom.dcmread(_series_files(study, "PET")[0], stop_before_pixels=True)
    rp = ds.RadiopharmaceuticalInformationSequence[0]

    def seconds(t):
        t = str(t)
        return int(t[0:2]) * 3600 + int(t[2:4]) * 60 + float(t[4:] or 0)

    elapsed = seconds(ds.SeriesTime) - seconds(rp.RadiopharmaceuticalStartTime)
    factor = float(ds.PatientWeight) * 1000 / (float(rp.RadionuclideTotalDose)
                                                * 2 ** (-elapsed / float(rp.RadionuclideHalfLife)))
    pet = nib.load(str(out / "PET.nii.gz"))
    suv = nib.Nifti1Image((np.asarray(pet.dataobj, dtype=np.float32) * factor).astype(np.float32), pet.affine)
    nib.save(suv, str(out / "SUV.nii.gz"))
    ct = sitk.ReadImage(str(out / "CT.nii.gz"), sitk.sitkFloat32)
    ref = sitk.ReadImage(str(out / "SUV.nii.gz"))
    ctres = sitk.Resample(ct, ref, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    sitk.WriteImage(ctres, str(out / "CTres.nii.gz"), useCompression=True)


def _run_stage(name: str, cohort: Path, study: Path, out: Path, src: Optional[Path] = None) -> dict:
    """Run one stage in a fresh interpreter; return wall seconds and peak RSS (MiB) of that process.

    ``src``: import ``clips_nnunet`` from this folder instead of the installed one. The interpreter runs in
    ``out``'s parent folder, so that the current directory never shadows the package.
    """
    code = ("import sys, time, json, resource; sys.path.insert(0, %r); import bench_convert as b; "
            "from pathlib import Path; b.imports_%s(); t = time.perf_counter(); "
            "r0 = resource.getrusage(resource.RUSAGE_SELF); "
            "b.stage_%s(Path(%r), Path(%r)); dt = time.perf_counter() - t; r = resource.getrusage(resource.RUSAGE_SELF); "
            "cpu = r.ru_utime + r.ru_stime - r0.ru_utime - r0.ru_stime; "
            "print(json.dumps({'seconds': dt, 'cpu_seconds': cpu, 'peak_mib': r.ru_maxrss / 1024}))"
            ) % (str(Path(__file__).resolve().parent), name, name, str(cohort if name == "clips" else study), str(out))
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(src).resolve()), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(out.parent))
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="folder for the cohort and outputs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--repeats", type=int, default=1, help="runs per pipeline; the fastest counts")
    parser.add_argument("--skip-dicom2nifti", action="store_true", help="only floor and clips")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="folder with another clips_nnunet source tree, run as 'clips_baseline' in each round")
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_convert_")).resolve()
    cohort = work / "cohort"
    if not (cohort / "ground_truth" / "manifest.json").is_file():
        from clips_nnunet.synthetic.dicom_cohort import make_synthetic_cohort
        t = time.perf_counter()
        make_synthetic_cohort(cohort, n_patients=1, seed=0, size="wholebody", mask_formats=("seg",), progress=False)
        print(f"generated the whole-body study in {time.perf_counter() - t:.1f} s")
    study = cohort / "patient_000" / "study_1"
    n_ct, n_pet = len(_series_files(study, "CT")), len(_series_files(study, "PET"))
    print(f"study: CT {n_ct} slices, PET {n_pet} slices ({sum(p.stat().st_size for p in study.rglob('*.dcm')) / 2**20:.0f} MiB)")
    if args.baseline_src is not None and not (args.baseline_src / "clips_nnunet" / "__init__.py").is_file():
        parser.error(f"--baseline-src {args.baseline_src} holds no clips_nnunet package; extract one there first")
    stages = ["floor"] + (["clips_baseline"] if args.baseline_src else []) + ["clips"] + \
        ([] if args.skip_dicom2nifti else ["dicom2nifti"])
    results = {}
    all_runs: dict = {}
    for r in range(max(1, args.repeats)):
        for name in stages:
            out = work / f"out_{name}"
            shutil.rmtree(out, ignore_errors=True)
            res = _run_stage("clips" if name == "clips_baseline" else name, cohort, study, out,
                             args.baseline_src if name == "clips_baseline" else None)
            all_runs.setdefault(name, []).append(res)
            if name not in results or res["seconds"] < results[name]["seconds"]:
                results[name] = res
            print(f"  run {r + 1}: {name:<12} {res['seconds']:7.2f} s wall  {res['cpu_seconds']:7.2f} s CPU  "
                  f"peak RSS {res['peak_mib']:7.0f} MiB")
    # per round (the pipelines of one round ran back to back, so they share that moment's machine load)
    n_rounds = len(all_runs["floor"])
    for key in ("seconds", "cpu_seconds"):
        for name in [n for n in ("clips_baseline", "clips") if n in all_runs]:
            ratios = sorted(all_runs[name][r][key] / all_runs["floor"][r][key] for r in range(n_rounds))
            median = ratios[len(ratios) // 2] if len(ratios) % 2 else 0.5 * (ratios[len(ratios) // 2 - 1]
                                                                             + ratios[len(ratios) // 2])
            print(f"{name} / floor per round, {'wall' if key == 'seconds' else 'CPU'}: "
                  f"{', '.join(f'{v:.2f}' for v in ratios)} (median {median:.2f})")
    floor, ours = results["floor"]["seconds"], results["clips"]["seconds"]
    cpu = {k: min(r["cpu_seconds"] for r in v) for k, v in all_runs.items()}
    print(f"clips / floor       = {ours / floor:.2f} wall, {cpu['clips'] / cpu['floor']:.2f} CPU  (target <= 1.3)")
    if "clips_baseline" in results:
        print(f"baseline / floor    = {results['clips_baseline']['seconds'] / floor:.2f} wall, "
              f"{cpu['clips_baseline'] / cpu['floor']:.2f} CPU  (best runs; same rounds)")
    if "dicom2nifti" in results:
        print(f"dicom2nifti / clips = {results['dicom2nifti']['seconds'] / ours:.2f} wall, "
              f"{cpu['dicom2nifti'] / cpu['clips']:.2f} CPU  (target >= 3)")
    print(json.dumps({"results": results, "cpu_count": os.cpu_count()}, sort_keys=True))
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
