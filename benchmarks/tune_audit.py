"""Re-score kept audit benchmark cohorts with other ``AuditParams``, for tuning on tuning seeds only.

``python benchmarks/bench_audit.py --cohort twin --seeds 0 1 2 --out DIR`` keeps each seed's results folder, PET and
planted truth under ``DIR/seed<N>``; this script reads them once (cached in ``DIR/seed<N>/arrays.pkl``, which
holds no identifiers beyond case ids) and prints, for each parameter set given as ``key=value`` groups, the mean
over seeds of the AUC bad vs hard-correct, overall and per planted kind. Use it on the tuning seeds only; report
the chosen parameters with ``bench_audit.py`` on other seeds.

Usage: ``python benchmarks/tune_audit.py DIR/seed0 DIR/seed1 --set "" --set "confident_weight=1 pet_weight=1"``.
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clips_nnunet.audit.evidence import AuditParams, case_evidence  # noqa: E402
from clips_nnunet.audit.scoring import roc_auc, score_cohort  # noqa: E402
from clips_nnunet.audit.page import find_validation, read_case  # noqa: E402
from bench_audit import hard_cut_for, kind_auc_inputs  # noqa: E402


def load_seed(seed_dir: Path):
    """({case: arrays}, truth, cohort) of one kept benchmark seed folder."""
    truth_file = next(seed_dir.glob("clips_truth/*/annotation_errors.json"), None)
    if truth_file is None:
        raise SystemExit(f"{seed_dir}: no clips_truth/*/annotation_errors.json (run bench_audit.py with --out)")
    truth = json.loads(truth_file.read_text())["cases"]
    cohort = "twin" if "Twin" in truth_file.parent.name else "raw"
    cache = seed_dir / "arrays.pkl"
    if cache.is_file():
        return pickle.loads(cache.read_bytes()), truth, cohort
    results = next(seed_dir.glob("nnUNet_results/*/*"))
    gt = next(seed_dir.glob("nnUNet_preprocessed/*/gt_segmentations"))
    predictions, _, ending = find_validation(results)
    arrays = {}
    for case in sorted(predictions):
        a = read_case(case, predictions[case], gt / f"{case}{ending}", seed_dir / "images" / f"{case}_0001{ending}",
                      True)
        arrays[case] = {k: a[k] for k in ("reference", "prediction", "probability", "suv", "spacing")}
    cache.write_bytes(pickle.dumps(arrays))
    return arrays, truth, cohort


def parse_set(text: str) -> Dict[str, object]:
    """``"a=1 b=x"`` -> ``{"a": 1.0, "b": "x"}`` (numbers as float, ``true``/``false`` as bool)."""
    out: Dict[str, object] = {}
    for item in text.split():
        key, _, value = item.partition("=")
        low = value.lower()
        out[key] = low == "true" if low in ("true", "false") else (float(value) if value.replace(".", "", 1)
                                                                     .lstrip("-").isdigit() else value)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seed_dirs", type=Path, nargs="+")
    ap.add_argument("--set", action="append", default=None, help="AuditParams overrides, e.g. 'pet_weight=1'")
    args = ap.parse_args(argv)
    seeds = [load_seed(d) for d in args.seed_dirs]
    for text in args.set or [""]:
        params = AuditParams(**parse_set(text))
        per_kind: Dict[str, List[float]] = {}
        for arrays, truth, cohort in seeds:
            evidence = {c: case_evidence(a["reference"], a["prediction"], a["spacing"], probability=a["probability"],
                                         suv=a["suv"], params=params) for c, a in arrays.items()}
            rows = score_cohort(evidence, params)
            for kind, g in kind_auc_inputs(rows, truth, hard_cut_for(truth, cohort)).items():
                if g["pos"] and g["neg"]:
                    per_kind.setdefault(kind, []).append(
                        roc_auc(g["pos"] + g["neg"], [True] * len(g["pos"]) + [False] * len(g["neg"])))
        summary = ", ".join(f"{k} {np.mean(v):.3f}" for k, v in sorted(per_kind.items()) if k != "all")
        print(f"[{text or 'defaults'}] AUC bad vs hard-correct {np.mean(per_kind.get('all', [np.nan])):.3f} "
              f"(per seed {', '.join(f'{x:.3f}' for x in per_kind.get('all', []))}); {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
