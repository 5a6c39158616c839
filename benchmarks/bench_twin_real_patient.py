"""Closer to real patients: models trained on synthetic phantoms predict the real GE patient of ../shared/testdata.

Issue 23 asks that a model trained on the twin predicts the real GE PET/CT patient (TCIA Soft-tissue-Sarcoma
STS_001, a sarcoma, no lymphoma: every lesion the model outlines outside the tumour is a false positive) and that
its false-positive volume and component count outside the GTV, and its overlap with GTV_Mass, are reported beside
the same numbers for a model trained on the old box phantom. This script:

1. converts the patient with ``clips-nnunet convert`` twice (SUVbw PET, CT resampled onto the PET grid; the CT
   covers only 59 slices around the tumour, 2.3 % of the PET volume, and the rest is filled with -1024 HU): once
   with every ROI of the RTSTRUCT on the PET united (the *GTV*: GTV_Mass and GTV_Edema) and once with
   ``--roi '^GTV_Mass$'``;
2. optionally (``--body-ct``) writes a second input whose CT outside the real CT's coverage is a body outline at
   soft-tissue density (30 HU where the PET smoothed over ~1 cm exceeds SUV 0.3, else -1000 HU), since models
   trained on whole-body CT never saw a body of air (a probe of that mismatch, not a real image);
3. predicts each input with each model (``nnUNetv2_predict``, CPU, no test-time mirroring; ``--model LABEL WORKDIR
   DATASET CONFIGURATION TRAINER FOLD``: ``WORKDIR/nnUNet_results`` holds the model and ``WORKDIR/ext`` its
   generated trainer class);
4. prints per model and input: predicted volume and components, false-positive volume (ml) and components (26-
   connected) outside the GTV, the largest false-positive components (volume, SUVmax, height above the tumour),
   Dice with GTV_Mass and the share of GTV_Mass covered, and the ratios of the first model's false-positive volume
   and components to the others' (the baseline is the last model).

A benchmark, not a test. Usage: ``python benchmarks/bench_twin_real_patient.py --work DIR --model twin
/tmp/twin_learning 993 3d_demo nnUNetTrainerTwinLearn all --model box /tmp/demo_runs/seed1 981 3d_demo
nnUNetTrainerCLSelfPacedDemo 0 [--body-ct] [--reuse] [--json FILE]``. Results are recorded in docs/synthetic.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clips_nnunet.io_utils import atomic_write_json  # noqa: E402
from clips_nnunet.metrics.lesions import label_components  # noqa: E402
from clips_nnunet.metrics.overlap import dice  # noqa: E402
from clips_nnunet.nnunet_env import bin_path, nnunet_environment  # noqa: E402

REAL_GE = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "tcia_sts_001"
GTV_ID, MASS_ID = 995, 996


def _run(cmd: List[str], env: Dict[str, str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {rc}; see {log}")
    return time.perf_counter() - t0


def convert(work: Path) -> Dict[str, Path]:
    """Convert the real patient (GTV = every ROI; GTV_Mass alone); returns the image folder and the two labels."""
    env = nnunet_environment(work / "convert")
    out = {}
    for did, name, extra in ((GTV_ID, "RealGE", []), (MASS_ID, "RealGEMass", ["--roi", "^GTV_Mass$"])):
        folder = Path(env["nnUNet_raw"]) / f"Dataset{did:03d}_{name}"
        if not (folder / "labelsTr" / f"{name}_0001.nii.gz").exists():
            Path(env["nnUNet_raw"]).mkdir(parents=True, exist_ok=True)
            _run([bin_path("clips-nnunet"), "convert", str(REAL_GE), "-d", str(did), "-n", name, "--quiet",
                  "--private-dir", str(work / "convert" / f"private_{did}")] + extra, env,
                 work / "logs" / f"convert_{did}.log")
        out[name] = folder
    images = work / "input_real"
    images.mkdir(parents=True, exist_ok=True)
    for ch in ("0000", "0001"):
        shutil.copy(out["RealGE"] / "imagesTr" / f"RealGE_0001_{ch}.nii.gz", images / f"real_{ch}.nii.gz")
    return {"images": images, "gtv": out["RealGE"] / "labelsTr" / "RealGE_0001.nii.gz",
            "mass": out["RealGEMass"] / "labelsTr" / "RealGEMass_0001.nii.gz"}


def body_ct_input(work: Path, images: Path) -> Path:
    """The input with the CT's -1024 HU fill replaced by a soft-tissue body outline from the PET (see step 2)."""
    ct_img = sitk.ReadImage(str(images / "real_0000.nii.gz"))
    ct = sitk.GetArrayFromImage(ct_img).astype(np.float32)
    pet = sitk.GetArrayFromImage(sitk.ReadImage(str(images / "real_0001.nii.gz"))).astype(np.float32)
    spacing = tuple(reversed(ct_img.GetSpacing()))
    body = ndimage.gaussian_filter(pet, [4.0 / s for s in spacing]) > 0.3
    body = ndimage.binary_fill_holes(body)
    filled = ct <= -1023.5
    ct[filled] = np.where(body[filled], 30.0, -1000.0)
    folder = work / "input_bodyct"
    folder.mkdir(parents=True, exist_ok=True)
    out = sitk.GetImageFromArray(ct)
    out.CopyInformation(ct_img)
    sitk.WriteImage(out, str(folder / "real_0000.nii.gz"))
    shutil.copy(images / "real_0001.nii.gz", folder / "real_0001.nii.gz")
    return folder


def score(pred: np.ndarray, gtv: np.ndarray, mass: np.ndarray, pet: np.ndarray, spacing, mass_z: float
          ) -> Dict[str, Any]:
    """False positives outside the GTV and overlap with GTV_Mass of one predicted mask (all on the PET grid)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    fp = pred & ~gtv
    labels, n_fp = label_components(fp)
    comps = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        comp = labels[sl] == i
        z = (sl[0].start + sl[0].stop - 1) / 2.0
        comps.append({"ml": round(float(comp.sum()) * voxel_ml, 2), "suvmax": round(float(pet[sl][comp].max()), 2),
                      "mm_above_tumour": round((z - mass_z) * spacing[0], 0)})
    comps.sort(key=lambda c: -c["ml"])
    _, n_all = label_components(pred)
    return {"predicted_ml": round(float(pred.sum()) * voxel_ml, 2), "predicted_components": n_all,
            "fp_ml": round(float(fp.sum()) * voxel_ml, 2), "fp_components": n_fp,
            "fp_largest": comps[:5], "dice_gtv_mass": round(dice(pred, mass), 4),
            "gtv_mass_covered": round(float((pred & mass).sum()) / max(int(mass.sum()), 1), 4),
            "gtv_mass_ml": round(float(mass.sum()) * voxel_ml, 2), "gtv_ml": round(float(gtv.sum()) * voxel_ml, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--model", nargs=6, action="append", required=True,
                    metavar=("LABEL", "WORKDIR", "DATASET", "CONFIGURATION", "TRAINER", "FOLD"))
    ap.add_argument("--body-ct", action="store_true", help="also predict the input with a body-outline CT")
    ap.add_argument("--reuse", action="store_true",
                    help="keep predictions already in --work (same model labels) instead of predicting again")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    work = args.work.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    load = {"start": os.getloadavg()}
    paths = convert(work)
    inputs = {"real CT (2.3 % coverage, -1024 HU fill)": paths["images"]}
    if args.body_ct:
        inputs["body-outline CT outside the real CT"] = body_ct_input(work, paths["images"])
    ref = sitk.ReadImage(str(paths["images"] / "real_0001.nii.gz"))
    pet = sitk.GetArrayFromImage(ref)
    spacing = tuple(reversed(ref.GetSpacing()))
    gtv = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["gtv"]))) > 0
    mass = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["mass"]))) > 0
    mass_z = float(np.argwhere(mass)[:, 0].mean())
    results: Dict[str, Any] = {"patient": "TCIA STS_001 (GE Discovery ST)", "spacing_zyx_mm": list(spacing),
                               "models": {}, "seconds": {}}
    for label, mdir, did, conf, trainer, fold in args.model:
        mdir = Path(mdir).resolve()
        env = nnunet_environment(mdir, ext_folders=[mdir / "ext"])
        for name, folder in inputs.items():
            out = work / f"pred_{label}_{folder.name}"
            key = f"{label} | {name}"
            cmd = [bin_path("nnUNetv2_predict"), "-i", str(folder), "-o", str(out), "-d", did, "-c", conf, "-f",
                   fold, "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta"]
            if not (args.reuse and (out / "real.nii.gz").exists()):
                log = work / "logs" / f"predict_{label}_{folder.name}.log"
                results["seconds"][key] = round(_run(cmd, env, log), 1)
            pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "real.nii.gz"))) > 0
            if pred.shape != gtv.shape:
                raise SystemExit(f"{out / 'real.nii.gz'}: shape {pred.shape} is not the PET grid's {gtv.shape}")
            results["models"][key] = score(pred, gtv, mass, pet, spacing, mass_z)
    load["end"] = os.getloadavg()
    results["load_average"] = {k: [round(x, 1) for x in v] for k, v in load.items()}
    first = next(iter(results["models"].values()))
    print(f"real GE patient (sarcoma, no lymphoma): GTV {first['gtv_ml']:.0f} ml (GTV_Mass + GTV_Edema), GTV_Mass "
          f"{first['gtv_mass_ml']:.0f} ml; PET grid {tuple(round(s, 2) for s in spacing)} mm")
    print(f"{'model | input':<62} {'pred ml':>8} {'comp':>5} {'FP ml':>8} {'FP comp':>7} {'Dice Mass':>9} "
          f"{'Mass cov':>8}")
    for key, r in results["models"].items():
        print(f"{key:<62} {r['predicted_ml']:>8.1f} {r['predicted_components']:>5d} {r['fp_ml']:>8.1f} "
              f"{r['fp_components']:>7d} {r['dice_gtv_mass']:>9.3f} {r['gtv_mass_covered']:>8.3f}")
        for c in r["fp_largest"][:3]:
            print(f"    FP component {c['ml']:.1f} ml, SUVmax {c['suvmax']:.1f}, {c['mm_above_tumour']:+.0f} mm "
                  f"above the tumour centre")
    labels = [m[0] for m in args.model]
    if len(labels) > 1:
        base = labels[-1]
        for name in inputs:
            b = results["models"][f"{base} | {name}"]
            for label in labels[:-1]:
                r = results["models"][f"{label} | {name}"]
                ratio_ml = r["fp_ml"] / b["fp_ml"] if b["fp_ml"] > 0 else None
                ratio_n = r["fp_components"] / b["fp_components"] if b["fp_components"] > 0 else None
                print(f"{name}: {label} / {base}: FP volume ratio "
                      f"{'n/a (baseline has none)' if ratio_ml is None else f'{ratio_ml:.2f}'}, FP component ratio "
                      f"{'n/a (baseline has none)' if ratio_n is None else f'{ratio_n:.2f}'}")
    print(f"seconds: {results['seconds']}, load average {results['load_average']}")
    target = args.json or work / "bench_twin_real_patient.json"
    atomic_write_json(target, results)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
