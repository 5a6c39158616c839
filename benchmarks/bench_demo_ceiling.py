"""The demo's model beside the threshold ceiling of the demo's own twin cohort.

``clips-nnunet demo --phantom twin`` trains on DICOM twins (generator seed 0; 14 before the twin's own defaults,
24 since) and predicts 2 held-out DICOM twins (seed 1000), at ``synth``'s ``trunk`` grid (skull base to thighs,
PET 8 mm; runs before the trunk grid used the whole-body ``small`` grid). This script reads one or more finished
demo work folders and prints, on the same patients:

1. the demo model's held-out Dice per patient and its mean (recomputed from ``predictions/<trainer>/<pseudonym>/
   mask.nii.gz`` against the generator's clean mask, joined on the StudyInstanceUID through the private pseudonym
   map, as the demo's own evaluation does), plain and with bladder and brain (+10 mm) removed from the prediction;
2. the best single global SUV threshold chosen on the training twins (``twin_ceiling.threshold_ceiling`` on the
   generator's SUV and clean masks), scored on the same 2 held-out twins, plain and with bladder and brain masked;
3. for a steadier figure of the rule, the same rule rotated over 3 folds of all training and held-out twins
   (``twin_ceiling.cross_validated_ceiling``);
4. the margin of the model over the rule (the baseline, measured in the same run) and the load average.

A benchmark, not a test. Usage: ``python benchmarks/bench_demo_ceiling.py WORKDIR [WORKDIR ...] [--trainer NAME]
[--json FILE]``. It reads only; each work folder must hold a finished demo (its predict step done).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clips_nnunet.demo.pipeline import DEMO_TRAINER  # noqa: E402
from clips_nnunet.io_utils import atomic_write_json, read_json  # noqa: E402
from clips_nnunet.metrics.overlap import dice  # noqa: E402
from clips_nnunet.prediction.outputs import MAPPING_FILE  # noqa: E402
from clips_nnunet.synthetic.dicom_cohort import load_manifest  # noqa: E402
from clips_nnunet.synthetic.twin_ceiling import (CeilingCase, cross_validated_ceiling, masked_pet,  # noqa: E402
                                                 threshold_ceiling)


def _read(path: Path) -> Tuple[np.ndarray, Tuple[float, ...]]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), tuple(float(s) for s in reversed(image.GetSpacing()))


def cohort_cases(cohort: Path) -> Dict[str, CeilingCase]:
    """The generator's clean truth of a twin DICOM cohort, by StudyInstanceUID."""
    manifest = load_manifest(cohort)
    cases = {}
    for study in manifest["studies"]:
        if study.get("phantom") != "twin" or not study.get("tissue_path"):
            raise SystemExit(f"{cohort}: study {study.get('key')} is not a twin with a tissue map (a box demo?)")
        pet, spacing = _read(cohort / study["suv_path"])
        label, _ = _read(cohort / study["label_path"])
        tissue, _ = _read(cohort / study["tissue_path"])
        cases[study["study_uid"]] = CeilingCase(pet=pet.astype(np.float32), label=label > 0, tissue=tissue,
                                                spacing=spacing)
    return cases


def model_dice(workdir: Path, trainer: str, heldout: Dict[str, CeilingCase]) -> List[Dict[str, Any]]:
    """The demo model's held-out Dice per patient, plain and with bladder and brain removed from its mask."""
    mapping_path = workdir / "private" / "predict" / MAPPING_FILE
    if not mapping_path.is_file():
        raise SystemExit(f"{mapping_path} is missing: the demo in {workdir} has not predicted yet")
    rows = []
    for pseudonym, entry in sorted(read_json(mapping_path).items()):
        case = heldout.get(entry.get("study_instance_uid"))
        mask_path = workdir / "predictions" / trainer / pseudonym / "mask.nii.gz"
        if case is None or not mask_path.is_file():
            continue
        pred = _read(mask_path)[0] > 0
        keep = masked_pet(CeilingCase(np.ones(case.pet.shape, np.float32), case.label, case.tissue, case.spacing)) > 0
        rows.append({"patient": pseudonym, "tmtv_ml": round(float(case.label.sum() * np.prod(case.spacing)) / 1000, 1),
                     "predicted_ml": round(float(pred.sum() * np.prod(case.spacing)) / 1000, 1),
                     "dice": dice(pred, case.label), "dice_masked": dice(pred & keep, case.label)})
    if not rows:
        raise SystemExit(f"{workdir}: no predicted mask matches a held-out twin")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdirs", nargs="+", type=Path, help="finished demo work folders (same cohort)")
    ap.add_argument("--trainer", default=DEMO_TRAINER)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    load_start = os.getloadavg()
    first = args.workdirs[0].resolve()
    train = cohort_cases(first / "dicom" / "train")
    heldout = cohort_cases(first / "dicom" / "heldout")
    train_cases, test_cases = list(train.values()), list(heldout.values())
    plain = threshold_ceiling(train_cases, test_cases, mask_out=False)
    masked = threshold_ceiling(train_cases, test_cases, mask_out=True)
    cv_plain = cross_validated_ceiling(train_cases + test_cases, 3, mask_out=False)
    cv_masked = cross_validated_ceiling(train_cases + test_cases, 3, mask_out=True)
    print(f"bench_demo_ceiling: {len(train_cases)} training + {len(test_cases)} held-out twins of {first}")
    print(f"{'rule':<44} {'held-out Dice':>13} {'SUV':>6} {'per patient'}")
    print(f"{'best global threshold (chosen on training)':<44} {plain['test_dice']:>13.3f} {plain['threshold']:>6.2f} "
          f"{plain['test_dice_per_case']}")
    print(f"{'  the same, bladder + brain masked':<44} {masked['test_dice']:>13.3f} {masked['threshold']:>6.2f} "
          f"{masked['test_dice_per_case']}")
    n_all = len(train_cases) + len(test_cases)
    print(f"{f'rule, 3-fold over all {n_all} twins: plain':<44} {cv_plain['test_dice']:>13.3f}")
    print(f"{f'rule, 3-fold over all {n_all} twins: masked':<44} {cv_masked['test_dice']:>13.3f}")
    runs = []
    for workdir in args.workdirs:
        workdir = workdir.resolve()
        options = read_json(workdir / "demo_options.json") if (workdir / "demo_options.json").is_file() else {}
        # each demo writes its own DICOM (same pixels, new UIDs): join on its own held-out cohort
        rows = model_dice(workdir, args.trainer, heldout if workdir == first else
                          cohort_cases(workdir / "dicom" / "heldout"))
        mean, mean_masked = float(np.mean([r["dice"] for r in rows])), float(np.mean([r["dice_masked"] for r in rows]))
        runs.append({"workdir": str(workdir), "seed": options.get("seed"), "dice": mean, "dice_masked": mean_masked,
                     "margin_plain": mean - plain["test_dice"], "margin_masked": mean_masked - masked["test_dice"],
                     "per_patient": rows})
        print(f"demo model seed {options.get('seed')}: held-out Dice {mean:.3f} (masked {mean_masked:.3f}); margin "
              f"over the rule {mean - plain['test_dice']:+.3f} plain, {mean_masked - masked['test_dice']:+.3f} masked; "
              + "; ".join(f"{r['patient']} {r['dice']:.3f} ({r['predicted_ml']} ml predicted, {r['tmtv_ml']} ml true)"
                          for r in rows))
    load_end = os.getloadavg()
    print(f"load average {load_start[0]:.1f} -> {load_end[0]:.1f}")
    summary = {"threshold_plain": plain, "threshold_masked": masked, "threshold_3fold_plain": cv_plain,
               "threshold_3fold_masked": cv_masked, "runs": runs,
               "load_average": [round(load_start[0], 1), round(load_end[0], 1)]}
    if args.json:
        atomic_write_json(args.json, summary)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
