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


def _dataset(study: Path, cases, planted: dict, splits) -> None:
    """Images, planted (dataset) masks, clean masks in clips_truth and the split of a tiny study dataset."""
    from clips_nnunet.synthetic.raw import ERRORS_JSON, truth_dir

    raw = study / "nnUNet_raw" / "Dataset993_Mem"
    truth = truth_dir(study / "nnUNet_raw", 993, "Mem")
    for i, c in enumerate(cases):
        _write(_truth(i) * 2, raw / "imagesTr" / f"{c}_0000.nii.gz")
        _write(planted.get(c, _truth(i)), raw / "labelsTr" / f"{c}.nii.gz")
        _write(_truth(i), truth / "labels_clean" / f"{c}.nii.gz")
    (truth / ERRORS_JSON).write_text(json.dumps({"cases": {c: {"kind": "missed_lesion"} for c in planted}}))
    pre = study / "nnUNet_preprocessed" / "Dataset993_Mem"
    pre.mkdir(parents=True, exist_ok=True)
    (pre / "splits_final.json").write_text(json.dumps(splits))


def test_memorisation_reference_from_the_clean_condition(tmp_path, monkeypatch):
    """An arm that reproduces the planted masks scores above the clean-condition baseline against the planted
    masks (positive excess); the ceiling Dice(clean, planted) is printed; predictions are faked (no training)."""
    import yaml

    import clips_nnunet.study.memorisation as M

    cases = [f"case_{i:03d}" for i in range(6)]
    planted = {c: _prediction(i, 3) for i, c in enumerate(cases[:3])}  # half of the lesion missing
    splits = [{"train": cases, "val": []}]
    base = {"dataset": {"id": 993, "name": "Mem", "source": "existing"}, "seeds": [0, 1],
            "budget": {"epochs": 1, "iterations_per_epoch": 1}}
    clean_yaml = tmp_path / "clean.yaml"
    clean_yaml.write_text(yaml.safe_dump(dict(base, name="clean", study_dir="clean", trainers=["stock"],
                                              baseline="stock")))
    config = parse_study_config(dict(base, name="noisy", trainers=["stock", "memo"], baseline="stock",
                                     memorisation_reference="clean.yaml"), base_dir=tmp_path,
                                study_dir=tmp_path / "noisy")
    _dataset(config.study_dir, cases, planted, splits)
    _dataset(tmp_path / "clean", cases, {}, splits)
    for seed in (0, 1):  # the clean condition's finished baseline runs
        folder = tmp_path / "clean" / f"seed_{seed}" / "nnUNet_results" / "Dataset993_Mem" / \
            "stockStudy__nnUNetPlans__3d_fullres" / "fold_0"
        (folder / "validation").mkdir(parents=True)
        (folder / "checkpoint_final.pth").write_bytes(b"x")
        (folder / "validation" / "summary.json").write_text("{}")

    def fake_predict(cfg, groups, device, wanted, echo=True):
        out = {}
        for arm in groups:
            for seed in cfg.seeds:
                dest = cfg.study_dir / "memorisation" / f"seed_{seed}" / arm
                for c in wanted:
                    i = cases.index(c)
                    # memo reproduces the planted mask; stock and the clean baseline predict the clean anatomy;
                    # seed 1 misses one more slice so that runs differ
                    mask = planted[c] if arm == "memo" else _truth(i)
                    if seed == 1:
                        mask = mask.copy()
                        mask[2] = 0
                    _write(mask, dest / f"{c}.nii.gz")
                out.setdefault(arm, []).append(dest)
        return out

    monkeypatch.setattr(M, "predict_planted_training_cases", fake_predict)
    m = M.memorisation_results(config, {"stock": [], "memo": []}, "cpu", tmp_path / "out", echo=False)
    assert m is not None and m.reference is not None and not m.reference_note
    assert m.ceiling["case_000"] == pytest.approx(2 * 3 / 9)  # 3 of 6 slices kept: Dice 2*3/(3+6)
    excess = m.reference.comparison("memo", "dice").difference
    assert excess.estimate > 0.2 and excess.n_runs_arm == 2
    stock = m.reference.comparison("stock", "dice").difference
    assert stock.estimate == pytest.approx(0.0, abs=1e-9)  # same predictions as the clean-condition baseline
    assert any(c.group == "memo" and c.reference.startswith("stock trained on clean masks")
               for c in m.printed_comparisons())
    lines, numbers = M.memorisation_lines(config, m)
    text = "\n".join(lines)
    assert "Ceiling: Dice(clean mask, planted mask) averages" in text and "excess over the reference" in text
    assert "nan" not in text.lower().replace("mean", "")
    # a reference trained on another split is refused with the reason
    other = [{"train": cases[:4], "val": cases[4:]}]
    (tmp_path / "clean" / "nnUNet_preprocessed" / "Dataset993_Mem" / "splits_final.json").write_text(json.dumps(other))
    m = M.memorisation_results(config, {"stock": [], "memo": []}, "cpu", tmp_path / "out2", echo=False)
    assert m.reference is None and "trains on other patients" in m.reference_note
