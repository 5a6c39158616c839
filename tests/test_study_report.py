"""The study report on fabricated finished runs (no training): budgets, convergence ladder, take-off, A/A check,
run-level results, the Holm family, and the per-run, per-case CSV from which its numbers can be recomputed."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from clips_nnunet.study import RunSpec, fold_dir, parse_study_config, seed_results_root, trainer_output_dir

N_CASES = 9
SHAPE = (10, 12, 12)


def _write(arr, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing((2.0, 2.0, 3.0))
    sitk.WriteImage(img, str(path))


def _truth(i: int) -> np.ndarray:
    t = np.zeros(SHAPE, np.uint8)
    t[2:8, 2:6 + i % 4, 3:9] = 1
    return t


def _prediction(i: int, keep: int) -> np.ndarray:
    """The truth with only its first ``keep`` of 6 slices (0: nothing predicted)."""
    p = np.zeros(SHAPE, np.uint8)
    p[2:2 + keep] = _truth(i)[2:2 + keep]
    return p


def _fabricate(config, arm: str, seed: int, keep) -> None:
    import torch

    spec = config.trainer(arm)
    folder = fold_dir(config, RunSpec(spec, 0, seed, seed_results_root(config, seed)))
    for i in range(N_CASES):
        _write(_prediction(i, keep(i)), folder / "validation" / f"case_{i:03d}.nii.gz")
    (folder / "validation" / "summary.json").write_text(json.dumps({"metric_per_case": []}))
    torch.save({"logging": {"mean_fg_dice": [0.1, 0.3, 0.5]}}, folder / "checkpoint_final.pth")
    (trainer_output_dir(config, seed_results_root(config, seed), spec) / "dataset.json").write_text(
        json.dumps({"file_ending": ".nii.gz"}))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from clips_nnunet.study.report import write_report

    tmp_path = tmp_path_factory.mktemp("fabricated_study")
    raw = {"name": "fab", "dataset": {"id": 994, "name": "Fab", "source": "existing", "n_splits": 3},
           "trainers": ["stock", {"name": "stock2x", "trainer": "stock", "budget_factor": 2},
                        {"name": "cl", "trainer": "nnUNetTrainerCLSelfPaced", "control": "clRandom"},
                        {"name": "clRandom", "trainer": "nnUNetTrainerCLSelfPacedRandom"}],
           "baseline": "stock", "seeds": [0, 1, 2, 3], "budget": {"epochs": 3, "iterations_per_epoch": 2}}
    config = parse_study_config(raw, study_dir=tmp_path / "s")
    for i in range(N_CASES):
        _write(_truth(i), config.study_dir / "nnUNet_preprocessed" / "Dataset994_Fab" / "gt_segmentations"
               / f"case_{i:03d}.nii.gz")
    for seed in config.seeds:
        # stock: 3 or 4 of 6 slices by seed; its seed 3 never took off (nothing predicted)
        _fabricate(config, "stock", seed, lambda i, s=seed: 0 if s == 3 else 3 + (s + i) % 2)
        _fabricate(config, "stock2x", seed, lambda i, s=seed: 3 + (s + i) % 2)
        _fabricate(config, "cl", seed, lambda i, s=seed: 5 + (s + i) % 2)  # clearly better, every seed
        _fabricate(config, "clRandom", seed, lambda i, s=seed: 3 + (s * i) % 3)
    path = write_report(config, echo=False)
    return config, path


def test_report_sections_and_no_nan(report):
    config, path = report
    text = path.read_text()
    assert "nan" not in text.replace("nnUNet", "").lower().replace("mean", "").replace("finance", "")
    for heading in ("## Budgets", "## Does the baseline converge? (budget ladder)", "## Take-off",
                    "## A/A check: the baseline against itself", "## Results against the baseline",
                    "## Against the control `clRandom`"):
        assert heading in text, heading
    assert "Equal budget: true for every compared arm" in text and "**2.00x** (convergence ladder)" in text
    assert "| stock2x | 2x | 4/4 |" in text  # the ladder rung against the 1x runs
    assert "| stock | 4 | 3 | 75 % | stock seed 3 fold_0 | reference |" in text
    assert "seeds 0, 2 vs 1, 3" in text
    assert "### Dice among the runs that took off" in text
    assert "Smallest detectable difference" in text
    # the ladder rung is not an arm of the comparison against the baseline
    results = text[text.index("## Results against the baseline"):]
    assert "| stock2x |" not in results


def test_numbers_recompute_from_the_per_run_case_csv(report):
    config, path = report
    runs = pd.read_csv(path.parent / "per_run_case.csv")
    assert set(runs.seed) == {0, 1, 2, 3} and set(runs.group) == {"stock", "stock2x", "cl", "clRandom"}
    comps = pd.read_csv(path.parent / "comparisons.csv")
    # Holm over every printed comparison: one family for the whole report
    assert comps.holm_family.nunique() == 1 and comps.holm_family.iloc[0] == comps.p_value.notna().sum()
    assert (comps.p_holm.dropna() >= comps.p_value.dropna() - 1e-12).all()
    # cl vs stock, Dice, all cases: the difference of the means of the run means (one fold)
    dice = runs[runs.has_true_lesion].groupby(["group", "seed"]).dice.mean()
    expected = dice["cl"].mean() - dice["stock"].mean()
    row = comps[(comps.group == "cl") & (comps.reference == "stock") & (comps.stratum == "all")
                & (comps.metric == "dice")].iloc[0]
    assert row.estimate == pytest.approx(expected, rel=1e-5)
    # stock's failed seed makes its runs vary so much that the interval over all runs includes 0 ...
    assert row.ci_low < 0 < row.ci_high and row.favours == "neither"
    # ... while among the runs that took off (stock's seed 3 left out) cl is better
    took = comps[(comps.group == "cl") & (comps.stratum == "all, runs that took off")].iloc[0]
    assert took.estimate == pytest.approx(dice["cl"].mean() - dice["stock"].drop(3).mean(), rel=1e-5)
    assert took.ci_low > 0 and took.favours == "cl"
    numbers = json.loads((path.parent / "report.json").read_text())
    assert numbers["aa_check"]["difference"]["n_runs_arm"] == 2
    assert math.isfinite(numbers["aa_check"]["difference"]["estimate"])
    text = path.read_text()
    assert f"Holm over all {comps.holm_family.iloc[0]} comparisons" in text
