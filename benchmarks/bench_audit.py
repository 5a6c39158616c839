"""Benchmark of ``clips-nnunet audit`` on a synthetic cohort with planted annotation errors.

What it does (CPU, about a minute):

1. writes the raw synthetic dataset (:func:`clips_nnunet.synthetic.raw.make_synthetic_raw_dataset`) with
   ``--error-fraction`` (default 25 %) of the training cases carrying a planted annotation error; difficulty rises
   over the cases, so the hardest third are the planted *hard but correctly annotated* patients;
2. **simulates** out-of-fold predictions instead of training nnU-Net (stated in every output): the model is assumed
   to have learned the clean convention, so each prediction is derived from the CLEAN mask, degraded as a real model
   degrades it: per lesion a detection logit ``e ~ N(4 - 6 d + 2 (radius - 2) / 4, 1.5)`` (d = planted difficulty)
   whose sigmoid is the lesion's foreground probability, lesions with ``sigmoid(e) < 0.5`` are missed; every voxel of
   the one-voxel inner and outer boundary shells flips with probability ``0.05 + 0.2 d``; hard cases get an
   unconfident false-positive blob (probability 0.5-0.85) with probability ``0.5 d``; the bladder-like
   physiological region gets probability 0-0.05 (the model learned it is not lesion);
3. lays the predictions out as an nnU-Net results folder (``fold_X/validation/*.nii.gz`` and ``*.npz``,
   ``dataset.json``, ``plans.json``; references in ``gt_segmentations``) and runs the audit through its public API;
4. prints the ROC AUC of ``suspicion`` for badly annotated vs all other training cases, the AUC and the
   error-kind separation (annotation error kind vs ``hard_case``/``none``) between badly annotated and planted
   hard-but-correct patients, with and without probabilities (``--npz`` absent) and without PET, and writes
   ``bench_audit.json``.

``--cohort twin``: study-grid whole-body twins (``raw.py`` ``phantom="twin"``, the twin's study grid at 8 mm) whose references
come from the realistic annotators (``twin_annotators``: convention, missed_lesion, physiological, boundary, leak;
a kind that cannot apply leaves the mask clean and the case counts as clean). The simulated model is the same one
made per lesion (:func:`simulate_twin_prediction`), the hard-but-correct patients are the clean cases in the
cohort's upper tercile of difficulty (share of small or faint lesions), and the error kind is also scored per
annotator kind against :data:`TWIN_EXPECTED_KIND`.

Every cohort also prints the AUC bad vs hard-correct per planted kind with a 95 % case-bootstrap interval
(:func:`auc_with_interval`) and the load average at the start and end. Tune on some seeds and report others: the
docs record which seeds were which.

The numbers measure the audit's evidence under this simulation, not a trained model's behaviour; see docs/audit.md.
Usage: ``python benchmarks/bench_audit.py [--cohort raw|dicom|twin] [--cases 64] [--error-fraction 0.25]
[--seeds 0 1 2] [--variants npz+pet ...] [--out DIR]``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clips_nnunet.dataset_conversion.write import write_image  # noqa: E402
from clips_nnunet.audit.scoring import roc_auc  # noqa: E402
from clips_nnunet.io_utils import atomic_write_json  # noqa: E402
from clips_nnunet.synthetic.raw import add_bladder, make_synthetic_raw_dataset, truth_dir  # noqa: E402

N_FOLDS = 5


def _flip_boundary(pred: np.ndarray, prob: np.ndarray, q: float, rng: np.random.Generator) -> np.ndarray:
    """Boundary noise of a simulated prediction: each voxel of the inner and outer shell flips with probability
    ``q``; flipped voxels get an unconfident probability (0.4 removed, 0.6 added; ``prob`` is updated in place)."""
    inner = pred & ~ndimage.binary_erosion(pred)
    outer = ndimage.binary_dilation(pred) & ~pred
    flip_in = inner & (rng.random(pred.shape) < q)
    flip_out = outer & (rng.random(pred.shape) < q)
    prob[flip_in] = 0.4
    prob[flip_out] = 0.6
    return (pred & ~flip_in) | flip_out


def simulate_prediction(clean: np.ndarray, pet: np.ndarray, difficulty: float, rng: np.random.Generator,
                        bladder: bool = True):
    """(predicted mask uint8, foreground probability float16) for one case: see the module docstring."""
    lab, n = ndimage.label(clean > 0, structure=np.ones((3, 3, 3)))
    prob = np.full(clean.shape, 0.01, dtype=np.float32)
    pred = np.zeros(clean.shape, dtype=bool)
    for i in range(1, n + 1):
        lesion = lab == i
        radius = (3.0 * lesion.sum() / (4.0 * np.pi)) ** (1.0 / 3.0)
        e = rng.normal(4.0 - 6.0 * difficulty + 2.0 * (radius - 2.0) / 4.0, 1.5)
        p = 1.0 / (1.0 + np.exp(-e))
        prob[lesion] = p
        if p >= 0.5:
            pred |= lesion
    pred = _flip_boundary(pred, prob, 0.05 + 0.2 * difficulty, rng)
    if rng.random() < 0.5 * difficulty:  # an unconfident false positive in hard cases
        body = (pet > 0.5) & ~ndimage.binary_dilation(clean > 0, iterations=3)
        centre = np.argwhere(body)[rng.integers(0, int(body.sum()))]
        zz, yy, xx = np.ogrid[: clean.shape[0], : clean.shape[1], : clean.shape[2]]
        blob = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= 2.0 ** 2) & body
        pred |= blob
        prob[blob] = rng.uniform(0.5, 0.85)
    if bladder:  # the raw phantom's physiological region (the DICOM phantom's organs keep 0.01)
        hot = add_bladder(np.zeros_like(pet), clean) > 0
        prob[hot & ~pred] = rng.uniform(0.0, 0.05)
    return pred.astype(np.uint8), prob.astype(np.float16)


#: What the audit should call each realistic annotator's kind (docs/audit.md): a redrawn convention and a dilated or
#: eroded outline are outline errors; included physiology and a contour leaking into an organ are non-lesion regions
#: in the reference; the ``sloppy`` reader combines misses, a convention and a physiological inclusion, so any
#: annotation error kind is right for it (``"any"``).
TWIN_EXPECTED_KIND = {"convention": "boundary", "boundary": "boundary", "missed_lesion": "missed_lesion",
                      "physiological": "extra_region", "leak": "extra_region", "sloppy": "any"}
AUDIT_ERROR_KINDS = ("missed_lesion", "extra_region", "boundary")


def simulate_twin_prediction(twin, rng: np.random.Generator):
    """(predicted mask uint8, foreground probability float16) of one twin, the model of :func:`simulate_prediction`
    made per lesion: each lesion of the clean mask (the twin's lesion ids) gets a detection logit
    ``e ~ N(4 - 6 d_l + (r - 2) / 2, 1.5)`` with its own difficulty ``d_l = 0.5 [measured < 5 ml] + 0.5 [uptake <
    2.5 x liver]`` (the two criteria of :func:`~clips_nnunet.synthetic.twin.twin_difficulty`) and r its radius in
    voxels; boundary shells flip with probability ``0.05 + 0.2 d`` (d = the patient's difficulty); with probability
    ``d / 2`` an unconfident false positive (probability 0.5-0.85, radius 1.5 voxels) sits on a hot unlabelled voxel
    (SUV >= 2.5 x liver: the physiology a real model confuses), elsewhere on the body when there is none."""
    from clips_nnunet.synthetic.twin import twin_difficulty

    clean = twin.label > 0
    ids, pet = twin.lesion_ids, twin.pet
    liver = float(twin.patient.suv["liver"])
    d = twin_difficulty(twin)
    prob = np.full(clean.shape, 0.01, dtype=np.float32)
    pred = np.zeros(clean.shape, dtype=bool)
    for row in twin.summary["lesions"]:
        if not row["voxels"]:
            continue
        lesion = ids == row["lesion_id"]
        d_l = 0.5 * (row["measured_ml"] < 5.0) + 0.5 * (row["suv"] < 2.5 * liver)
        radius = (3.0 * lesion.sum() / (4.0 * np.pi)) ** (1.0 / 3.0)
        e = rng.normal(4.0 - 6.0 * d_l + (radius - 2.0) / 2.0, 1.5)
        p = 1.0 / (1.0 + np.exp(-e))
        prob[lesion] = p
        if p >= 0.5:
            pred |= lesion
    pred = _flip_boundary(pred, prob, 0.05 + 0.2 * d, rng)
    if rng.random() < 0.5 * d:
        away = ~ndimage.binary_dilation(clean, iterations=3)
        spots = (pet >= 2.5 * liver) & away
        if not spots.any():
            spots = (pet > 0.5) & away
        centre = np.argwhere(spots)[rng.integers(0, int(spots.sum()))]
        zz, yy, xx = np.ogrid[: clean.shape[0], : clean.shape[1], : clean.shape[2]]
        blob = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= 1.5 ** 2) & (pet > 0.5)
        pred |= blob
        prob[blob] = rng.uniform(0.5, 0.85)
    return pred.astype(np.uint8), prob.astype(np.float16)


def _write(array: np.ndarray, like: sitk.Image, path: Path) -> None:
    img = sitk.GetImageFromArray(array)
    img.CopyInformation(like)
    write_image(img, path)


def _raw_cohort(work: Path, n_cases: int, fraction: float, seed: int):
    """(dataset name, {case: (clean mask path, reference path, PET path)}, truth) of the raw synthetic dataset."""
    raw = work / "nnUNet_raw"
    dataset = make_synthetic_raw_dataset(raw, 997, "Audit", n_train=n_cases, n_test=0, seed=seed,
                                         label_error_fraction=fraction)
    truth = json.loads((truth_dir(raw, 997, "Audit") / "annotation_errors.json").read_text())["cases"]
    clean_dir = truth_dir(raw, 997, "Audit") / "labels_clean"
    files = {c: (clean_dir / f"{c}.nii.gz", dataset / "labelsTr" / f"{c}.nii.gz",
                 dataset / "imagesTr" / f"{c}_0001.nii.gz") for c in truth}
    return dataset.name, files, truth


def _twin_cohort(work: Path, n_cases: int, fraction: float, seed: int):
    """The same from study-grid twins (``raw.py`` ``phantom="twin"``) with the realistic annotators; the truth rows
    carry ``requested_kind`` (a kind that could not apply leaves ``kind`` None and the mask clean)."""
    raw = work / "nnUNet_raw"
    dataset = make_synthetic_raw_dataset(raw, 996, "AuditTwin", n_train=n_cases, n_test=0, seed=seed,
                                         label_error_fraction=fraction, phantom="twin")
    truth = json.loads((truth_dir(raw, 996, "AuditTwin") / "annotation_errors.json").read_text())["cases"]
    clean_dir = truth_dir(raw, 996, "AuditTwin") / "labels_clean"
    files = {c: (clean_dir / f"{c}.nii.gz", dataset / "labelsTr" / f"{c}.nii.gz",
                 dataset / "imagesTr" / f"{c}_0001.nii.gz") for c in truth}
    return dataset.name, files, truth


def _dicom_cohort(work: Path, n_cases: int, fraction: float, seed: int):
    """The same from the DICOM phantom's ground truth (blurred PET, physiological organs; case ids only)."""
    from clips_nnunet.synthetic.dicom_cohort import make_synthetic_cohort

    cohort = work / "dicom"
    manifest = make_synthetic_cohort(cohort, n_patients=n_cases, seed=seed, label_error_fraction=fraction,
                                     progress=False)
    files, truth = {}, {}
    for i, s in enumerate(manifest["studies"]):
        case = f"case_{i:04d}"
        files[case] = (cohort / s["label_path"], cohort / s.get("annotated_label_path", s["label_path"]),
                       cohort / s["suv_path"])
        truth[case] = {"kind": s["annotation_error"]["kind"], "planted_difficulty": s["difficulty"]}
    return "Dataset998_AuditDicom", files, truth


def build_results_folder(work: Path, n_cases: int, fraction: float, seed: int, cohort: str = "raw"):
    """Synthetic cohort + simulated cross-validation results; returns (results_dir, gt_dir, images_dir, truth)."""
    name, files, truth = {"raw": _raw_cohort, "dicom": _dicom_cohort, "twin": _twin_cohort}[cohort](
        work, n_cases, fraction, seed)
    results = work / "nnUNet_results" / name / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    gt_dir = work / "nnUNet_preprocessed" / name / "gt_segmentations"
    images = work / "images"
    for d in (results, gt_dir, images):
        d.mkdir(parents=True, exist_ok=True)
    atomic_write_json(results / "dataset.json", {"file_ending": ".nii.gz", "labels": {"background": 0, "lesion": 1}})
    atomic_write_json(results / "plans.json", {"dataset_name": name, "plans_name": "nnUNetPlans"})
    rng = np.random.default_rng([seed, 99])
    cases = sorted(truth)
    folds = {c: i % N_FOLDS for i, c in enumerate(rng.permutation(cases))}
    for c in cases:
        clean_path, ref_path, pet_path = files[c]
        shutil.copy(ref_path, gt_dir / f"{c}.nii.gz")
        shutil.copy(pet_path, images / f"{c}_0001.nii.gz")
        like = sitk.ReadImage(str(clean_path))
        clean = sitk.GetArrayFromImage(like)
        pet = sitk.GetArrayFromImage(sitk.ReadImage(str(pet_path)))
        if cohort == "twin":  # the twin is deterministic per (seed, index): its lesion ids and physiology
            from clips_nnunet.synthetic.twin import study_case

            twin = study_case(seed, int(c.split("_")[1]))
            if not np.array_equal(twin.label, clean):
                raise SystemExit(f"{c}: the regenerated twin differs from the written clean mask")
            pred, prob = simulate_twin_prediction(twin, rng)
        else:
            pred, prob = simulate_prediction(clean, pet, truth[c]["planted_difficulty"], rng, bladder=cohort == "raw")
        val = results / f"fold_{folds[c]}" / "validation"
        _write(pred, like, val / f"{c}.nii.gz")
        np.savez_compressed(val / f"{c}.npz", probabilities=np.stack([1 - prob, prob]).astype(np.float16))
    return results, gt_dir, images, truth


def evaluate(rows, truth, hard_cut: float = 2.0 / 3.0) -> Dict[str, float]:
    """AUCs and kind separation of one audit run against the planted truth."""
    bad = {c for c, r in truth.items() if r["kind"]}
    hard_ok = {c for c, r in truth.items() if not r["kind"] and r["planted_difficulty"] >= hard_cut}
    by_case = {r["case_id"]: r for r in rows}
    cases = sorted(by_case)
    flagged = {c for c in cases if by_case[c]["error_kind"] in ("missed_lesion", "extra_region", "boundary")}
    pair = sorted(bad | hard_ok)
    out = {
        "n_cases": len(cases), "n_bad": len(bad), "n_hard_correct": len(hard_ok),
        "auc_bad_vs_rest": roc_auc([by_case[c]["suspicion"] for c in cases], [c in bad for c in cases]),
        "auc_bad_vs_hard_correct": roc_auc([by_case[c]["suspicion"] for c in pair], [c in bad for c in pair]),
        "kind_sensitivity": len(flagged & bad) / max(1, len(bad)),
        "kind_hard_correct_called_hard_or_none": len(hard_ok - flagged) / max(1, len(hard_ok)),
        "top_k_precision": len({r["case_id"] for r in rows[: len(bad)]} & bad) / max(1, len(bad)),
    }
    out["kind_balanced_accuracy"] = 0.5 * (out["kind_sensitivity"] + out["kind_hard_correct_called_hard_or_none"])
    return out


def kind_auc_inputs(rows, truth, hard_cut: float) -> Dict[str, Dict[str, list]]:
    """Per planted kind (and ``all``): the suspicion of its cases (``pos``) and of the hard-but-correct cases
    (``neg``), for the per-kind AUC against hard-but-correct patients."""
    by_case = {r["case_id"]: r for r in rows}
    neg = [by_case[c]["suspicion"] for c, r in truth.items() if not r["kind"] and r["planted_difficulty"] >= hard_cut]
    out = {"all": {"pos": [by_case[c]["suspicion"] for c, r in truth.items() if r["kind"]], "neg": neg}}
    for kind in sorted({r["kind"] for r in truth.values() if r["kind"]}):
        out[kind] = {"pos": [by_case[c]["suspicion"] for c, r in truth.items() if r["kind"] == kind], "neg": neg}
    return out


def auc_with_interval(per_seed: list, n_boot: int = 2000, seed: int = 0):
    """(mean over seeds of the AUC of ``pos`` vs ``neg``, 2.5 and 97.5 percentiles of that mean when the cases of
    each seed are resampled with replacement, positives and negatives separately); seeds without both are skipped.
    The interval covers case sampling within these seeds, not the choice of seeds. None when no seed counts."""
    groups = [(np.asarray(g["pos"]), np.asarray(g["neg"])) for g in per_seed if len(g["pos"]) and len(g["neg"])]
    if not groups:
        return None
    point = float(np.mean([roc_auc(list(p) + list(n), [True] * len(p) + [False] * len(n)) for p, n in groups]))
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        vals = []
        for p, n in groups:
            bp, bn = rng.choice(p, len(p)), rng.choice(n, len(n))
            vals.append(roc_auc(list(bp) + list(bn), [True] * len(bp) + [False] * len(bn)))
        boot.append(np.mean(vals))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return point, float(lo), float(hi)


def hard_cut_for(truth, cohort: str) -> float:
    """Planted difficulty from which a correctly annotated case counts as hard: 2/3 for the box phantoms (difficulty
    rises linearly over the cases); for twins (difficulty = share of small or faint lesions, not uniform) the
    cohort's upper tercile, so that about a third of the cases are hard as in the box cohorts."""
    if cohort != "twin":
        return 2.0 / 3.0
    return float(np.quantile([r["planted_difficulty"] for r in truth.values()], 2.0 / 3.0))


def per_kind_accuracy(rows, truth) -> Dict[str, Dict[str, float]]:
    """Per realistic annotator kind (twin cohorts): planted cases, share flagged with any annotation error kind, share
    named as :data:`TWIN_EXPECTED_KIND` says; and the requested kinds that could not apply (mask left clean)."""
    by_case = {r["case_id"]: r for r in rows}
    out: Dict[str, Dict[str, float]] = {}
    for kind, expected in TWIN_EXPECTED_KIND.items():
        cases = [c for c, r in truth.items() if r["kind"] == kind]
        called = [by_case[c]["error_kind"] for c in cases]
        out[kind] = {"n": len(cases), "not_applied": sum(1 for r in truth.values()
                                                         if r.get("requested_kind") == kind and not r["kind"]),
                     "flagged": sum(k in AUDIT_ERROR_KINDS for k in called),
                     "expected_kind": sum(k == expected or (expected == "any" and k in AUDIT_ERROR_KINDS)
                                          for k in called)}
    return out


def main(argv=None) -> int:
    from clips_nnunet.audit.page import run_audit

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=64)
    ap.add_argument("--error-fraction", type=float, default=0.25)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cohort", choices=("raw", "dicom", "twin"), default="raw",
                    help="raw: 2-channel phantom, 32^3 at 4 mm (default); dicom: the DICOM phantom's ground truth "
                         "(PET 48x48x64, blurred, physiological organs); twin: study-grid twins (8 mm) "
                         "with the realistic annotators' kinds")
    ap.add_argument("--variants", nargs="+", default=None,
                    help="subset of: npz+pet, masks+pet, 'npz only', 'masks only' (default all)")
    ap.add_argument("--out", type=Path, default=None, help="keep the last run's folders and audit here")
    args = ap.parse_args(argv)
    variants = {"npz+pet": dict(use_npz=True, use_pet=True), "masks+pet": dict(use_npz=False, use_pet=True),
                "npz only": dict(use_npz=True, use_pet=False), "masks only": dict(use_npz=False, use_pet=False)}
    if args.variants:
        variants = {n: variants[n] for n in args.variants}
    first = next(iter(variants))
    results: Dict[str, list] = {v: [] for v in variants}
    kinds: Dict[str, Dict[str, int]] = {}
    per_kind: Dict[str, Dict[str, float]] = {}
    auc_inputs: Dict[str, list] = {}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    for seed in args.seeds:
        work = Path(tempfile.mkdtemp(prefix="bench_audit_")) if args.out is None else args.out / f"seed{seed}"
        res, gt, images, truth = build_results_folder(work, args.cases, args.error_fraction, seed, args.cohort)
        hard_cut = hard_cut_for(truth, args.cohort)
        for name, v in variants.items():
            out = work / f"audit_{name.replace(' ', '_').replace('+', '_')}"
            rows = run_audit([res], out, gt_dir=gt, images_dir=images if v["use_pet"] else None,
                             use_npz=v["use_npz"], write_html=(name == first))
            results[name].append({**evaluate(rows, truth, hard_cut), "hard_cut": hard_cut})
            if name == first:
                for r in rows:
                    planted = truth[r["case_id"]]["kind"] or (
                        "hard_correct" if truth[r["case_id"]]["planted_difficulty"] >= hard_cut else "clean")
                    kinds.setdefault(planted, {}).setdefault(r["error_kind"], 0)
                    kinds[planted][r["error_kind"]] += 1
                for k, g in kind_auc_inputs(rows, truth, hard_cut).items():
                    auc_inputs.setdefault(k, []).append(g)
                if args.cohort == "twin":
                    for k, m in per_kind_accuracy(rows, truth).items():
                        acc = per_kind.setdefault(k, {key: 0 for key in m})
                        for key, val in m.items():
                            acc[key] += val
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    intervals = {k: auc_with_interval(g) for k, g in auc_inputs.items()}
    load_after = os.getloadavg()
    summary = {"simulated_predictions": True, "cohort": args.cohort, "cases": args.cases,
               "load_average_1_5_15": {"start": load_before, "end": load_after},
               "auc_bad_vs_hard_correct_interval": {k: v for k, v in intervals.items()},
               "error_fraction": args.error_fraction,
               "seeds": args.seeds, "seconds": round(time.perf_counter() - t0, 1),
               "per_variant": {n: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for n, rs in results.items()},
               "per_seed": results, "planted_kind_vs_audit_kind": kinds, "per_kind": per_kind}
    print(f"bench_audit: SIMULATED out-of-fold predictions (no nnU-Net training), {args.cohort} cohort, "
          f"{args.cases} cases, "
          f"{args.error_fraction:.0%} planted errors, seeds {args.seeds}, {summary['seconds']} s")
    print(f"{'variant':<12} {'AUC bad/rest':>12} {'AUC bad/hard':>12} {'top-k prec':>10} {'kind sens':>9} "
          f"{'hard->hard':>10} {'kind bal.acc':>12}  AUC bad/hard per seed")
    for n, m in summary["per_variant"].items():
        per_seed = ", ".join(f"{r['auc_bad_vs_hard_correct']:.3f}" for r in results[n])
        print(f"{n:<12} {m['auc_bad_vs_rest']:>12.3f} {m['auc_bad_vs_hard_correct']:>12.3f} "
              f"{m['top_k_precision']:>10.3f} {m['kind_sensitivity']:>9.3f} "
              f"{m['kind_hard_correct_called_hard_or_none']:>10.3f} {m['kind_balanced_accuracy']:>12.3f}  {per_seed}")
    print(f"cases per seed: bad {[r['n_bad'] for r in results[first]]}, hard-correct "
          f"{[r['n_hard_correct'] for r in results[first]]} (hard cut {[round(r['hard_cut'], 3) for r in results[first]]})")
    print(f"AUC bad vs hard-correct ({first}), mean over seeds [95 % case-bootstrap interval], per planted kind:")
    for k, v in intervals.items():
        n = sum(len(g["pos"]) for g in auc_inputs[k])
        text = "undefined (no seed with both groups)" if v is None else f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"
        print(f"  {k:<14} n {n:>3}  {text}")
    print(f"load average (1, 5, 15 min): start {', '.join(f'{x:.1f}' for x in load_before)}; end "
          f"{', '.join(f'{x:.1f}' for x in load_after)}")
    print(f"planted kind -> audit kind ({first}):")
    for planted, counts in sorted(kinds.items()):
        print(f"  {planted:<14} " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    if per_kind:
        print(f"per annotator kind ({first}; expected audit kind in brackets): planted, flagged, expected kind, "
              f"requested but not applicable")
        for k, m in per_kind.items():
            print(f"  {k:<14} [{TWIN_EXPECTED_KIND[k]}] n {m['n']}, flagged {m['flagged']}/{m['n']}, expected "
                  f"{m['expected_kind']}/{m['n']}, not applied {m['not_applied']}")
        absent = [k for k, m in per_kind.items() if not m["n"]]
        if absent:
            print(f"WARNING: kinds never planted over these seeds: {absent}")
    target = Path(args.out or ".") / "bench_audit.json"
    atomic_write_json(target, summary)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
