"""``compare`` on a fake nnU-Net results tree with a planted difference between two trainers."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from clips_nnunet.cli import main
from clips_nnunet.errors import DatasetError
from clips_nnunet.evaluation.compare import assign_tertiles, compare_results, resolve_results_dir
from clips_nnunet.evaluation.statistics import RunMean, run_level_difference

DS = "Dataset991_Fake"
N = 12
SHAPE = (12, 16, 16)


def _write(arr, path: Path):
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing((2.0, 2.0, 3.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def _truth(i: int) -> np.ndarray:
    t = np.zeros(SHAPE, np.uint8)
    t[2:10, 3:3 + 4 + i % 6, 4:12] = 1  # sizes differ between cases
    return t


def _pred(i: int, keep_rows: int, fp: bool) -> np.ndarray:
    """Truth with only the first ``keep_rows`` z-slices kept (under-segmentation), optional 2-voxel false positive."""
    p = np.zeros(SHAPE, np.uint8)
    t = _truth(i)
    p[2:2 + keep_rows] = t[2:2 + keep_rows]
    if fp:
        p[11, 14, 14:16] = 1
    return p


def _model(results: Path, trainer: str, preds: dict) -> Path:
    folder = results / DS / f"{trainer}__nnUNetPlans__3d_fullres"
    for f in range(2):
        val = folder / f"fold_{f}" / "validation"
        per_case = []
        for i, arr in preds.items():
            if i % 2 == f:
                _write(arr, val / f"case_{i:03d}.nii.gz")
                per_case.append({"prediction_file": str(val / f"case_{i:03d}.nii.gz"),
                                 "reference_file": "x", "metrics": {"1": {"Dice": 0.5}}})
        (val / "summary.json").write_text(json.dumps({"metric_per_case": per_case}))
    (folder / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    return folder


@pytest.fixture
def tree(tmp_path, monkeypatch):
    pre = tmp_path / "preprocessed"
    for i in range(N):
        _write(_truth(i), pre / DS / "gt_segmentations" / f"case_{i:03d}.nii.gz")
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.delenv("nnUNet_raw", raising=False)
    results = tmp_path / "results"
    # baseline keeps 3..5 of 8 slices and has a false positive in every case; "better" keeps 5..7, no FP
    base = _model(results, "nnUNetTrainer", {i: _pred(i, 3 + i % 3, True) for i in range(N)})
    better = _model(results, "nnUNetTrainerBetter", {i: _pred(i, 5 + i % 3, False) for i in range(N)})
    meta = {f"case_{i:03d}": {"tmtv_ml": float(_truth(i).sum() * 12 / 1000), "planted_difficulty": i}
            for i in range(N)}
    (tmp_path / "case_metadata.json").write_text(json.dumps(meta))
    return tmp_path, base, better


def _nnunet_summary(val: Path, gt: Path) -> None:
    """Replace our hand-made summary.json by the one nnU-Net's own evaluation writes."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    compute_metrics_on_folder(str(gt), str(val), str(val / "summary.json"), SimpleITKIO(), ".nii.gz", [1], None,
                              num_processes=1)


def test_planted_difference_detected_with_right_sign(tree):
    tmp, base, better = tree
    _nnunet_summary(base / "fold_0" / "validation", tmp / "preprocessed" / DS / "gt_segmentations")
    res = compare_results([better, base], out_dir=tmp / "cmp", metadata=tmp / "case_metadata.json",
                          progress=False)
    assert res.baseline == "nnUNetTrainer"  # default baseline when present, even when not first
    dice = res.comparison("nnUNetTrainerBetter", "dice")
    # two runs per trainer (fold_0 and fold_1), one fold effect: 1 residual degree of freedom
    assert dice.difference.n_runs_arm == 2 and dice.difference.df_resid == 1 and dice.difference.estimate > 0.15
    assert dice.favours == "nnUNetTrainerBetter" and dice.difference.ci_low > 0
    fpv = res.comparison("nnUNetTrainerBetter", "fp_volume_ml")
    assert fpv.difference.estimate == pytest.approx(-0.024) and fpv.favours == "undefined"  # 2 FP voxels in every run
    # the estimate is the difference of the run means (each run = one fold's mean over its patients)
    fold_means = res.runs.groupby(["group", "fold"]).dice.mean()
    expected = (fold_means["nnUNetTrainerBetter"] - fold_means["nnUNetTrainer"]).mean()
    assert dice.difference.estimate == pytest.approx(expected)
    # Holm over every comparison printed (groups x strata x metrics): the family is all defined p-values
    assert dice.family == sum(math.isfinite(c.difference.p_value) for c in res.comparisons)
    assert dice.p_holm >= dice.difference.p_value
    assert res.take_off["nnUNetTrainer"].n_took_off == 2 and not res.take_off["nnUNetTrainerBetter"].failed
    # exact Dice of the planted predictions (k of 8 slices of A voxels kept, plus 2 FP voxels in the baseline)
    pc = res.per_case.set_index(["group", "case_id"])
    assert pc.loc[("nnUNetTrainer", "case_000"), "dice"] == pytest.approx(2 * 3 * 32 / (3 * 32 + 8 * 32 + 2))
    assert pc.loc[("nnUNetTrainerBetter", "case_002"), "dice"] == pytest.approx(2 * 7 / 15)
    # nnU-Net's own per-case Dice (real summary.json of fold_0) equals ours; fold_1 has our hand-made 0.5
    for i in range(0, N, 2):
        row = pc.loc[("nnUNetTrainer", f"case_{i:03d}")]
        assert row["nnunet_dice"] == pytest.approx(row["dice"], abs=1e-6)
    assert pc.loc[("nnUNetTrainer", "case_001"), "nnunet_dice"] == 0.5
    # tertiles from metadata: smallest TMTV = hard
    hard = set(res.per_case[(res.per_case.tertile == "hard") & (res.per_case.group == "nnUNetTrainer")].case_id)
    assert hard == {"case_000", "case_006", "case_001", "case_007"}
    assert res.summary("nnUNetTrainer", "dice", "hard").n_cases == 4
    report = (tmp / "cmp" / "report.md").read_text()
    assert "Tertile: hard" in report and "nnUNetTrainerBetter" in report and "tmtv_ml (lower = harder)" in report
    assert "nan" not in report.replace("nnUNet", "")
    for f in ("per_run_case.csv", "per_case.csv", "summary.csv", "comparisons.csv", "take_off.csv",
              "comparison.json", "plots/boxplots.png", "plots/dice_by_tertile.png"):
        assert (tmp / "cmp" / f).stat().st_size > 100
    assert json.loads((tmp / "cmp" / "comparison.json").read_text())["baseline"] == "nnUNetTrainer"


def test_seed_groups_average_per_case_and_ensemble_folder(tree, tmp_path):
    tmp, base, better = tree
    # second "seed" of the better trainer in another results root: keeps 1 slice less
    seed2 = _model(tmp / "results_seed2", "nnUNetTrainerBetter", {i: _pred(i, 4 + i % 3, False) for i in range(N)})
    # an ensembles-style folder: predictions directly inside
    ens = tmp / "results" / DS / "ensembles" / "ensemble___A__P__C___B__P__C___0_1"
    for i in range(N):
        _write(_truth(i), ens / f"case_{i:03d}.nii.gz")
    res = compare_results({"base": [base], "better": [better, seed2], "ens": [ens]}, baseline="base",
                          progress=False, out_dir=None, cache_dir=tmp / "shared_cache")
    assert len(list((tmp / "shared_cache").glob("*/case_*.json"))) == 4 * N  # one entry per folder and case
    pc = res.per_case.set_index(["group", "case_id"])
    expected = (2 * 5 / 13 + 2 * 4 / 12) / 2  # case_000: seeds keep 5 and 4 slices
    assert pc.loc[("better", "case_000"), "dice"] == pytest.approx(expected)
    assert pc.loc[("better", "case_000"), "n_seeds"] == 2
    assert pc.loc[("ens", "case_005"), "dice"] == pytest.approx(1.0)
    assert res.summary("better", "dice").n_runs == 4 and res.summary("better", "dice").sd_runs > 0  # 2 seeds x 2 folds
    assert res.summary("ens", "dice").n_runs == 1  # a folder of predictions is one run ("pooled" fold)
    # default difficulty = baseline's 1 - Dice: the baseline's worst cases are "hard"
    hard = set(res.per_case[(res.per_case.tertile == "hard") & (res.per_case.group == "base")].case_id)
    assert hard == {f"case_{i:03d}" for i in range(0, N, 3)}


def test_cli_compare_with_groups_and_difficulty_csv(tree, capsys):
    tmp, base, better = tree
    diff = tmp / "difficulty.csv"
    diff.write_text("case_id,difficulty\n" + "".join(f"case_{i:03d},{i}\n" for i in range(N)))
    rc = main(["compare", str(base), "--group", f"cl={better}", "--difficulty", str(diff), "-o",
               str(tmp / "cli"), "--quiet", "--no-plots"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "cl vs nnUNetTrainer: Dice mean diff +" in out and "p_holm=" in out and "nan" not in out
    comps = pd.read_csv(tmp / "cli" / "comparisons.csv")
    hard = comps[(comps.stratum == "hard") & (comps.metric == "dice")].iloc[0]
    assert hard.n_runs_arm == 2 and hard.estimate > 0


def test_identical_trainers_say_undefined_not_nan(tree, capsys):
    """compare of a trainer with a copy of itself: the difference is 0, its interval and p undefined, in words."""
    import shutil

    tmp, base, _ = tree
    twin = tmp / "results" / DS / "nnUNetTrainerTwin__nnUNetPlans__3d_fullres"
    shutil.copytree(base, twin)
    assert main(["compare", str(base), str(twin), "-o", str(tmp / "twin"), "--quiet", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out.replace("nnUNet", "")
    assert "interval undefined: no between-run variance" in out
    report = (tmp / "twin" / "report.md").read_text()
    assert "nan" not in report.replace("nnUNet", "") and "undefined" in report


def test_errors_name_the_problem(tree, tmp_path):
    tmp, base, _ = tree
    empty = tmp / "results" / DS / "nnUNetTrainerX__nnUNetPlans__3d_fullres"
    empty.mkdir()
    with pytest.raises(DatasetError, match="fold_X/validation"):
        resolve_results_dir(empty)
    dup = base / "fold_1" / "validation" / "case_000.nii.gz"
    dup.write_bytes((base / "fold_0" / "validation" / "case_000.nii.gz").read_bytes())
    with pytest.raises(DatasetError, match="case_000"):
        resolve_results_dir(base)
    assert main(["compare", str(tmp), "-o", str(tmp / "x")]) == 2  # no dataset folder above: input error (exit 2), no crash


def test_tertiles():
    t = assign_tertiles({"a": 3, "b": 1, "c": 2, "d": float("nan"), "e": 0, "f": 5})
    assert t == {"e": "easy", "b": "easy", "c": "medium", "a": "medium", "f": "hard"}


@pytest.mark.integration
def test_compare_on_real_nnunet_accumulated_crossval(tiny_preprocessed, tmp_path, monkeypatch):
    """Fold predictions pooled by nnU-Net's own ``nnUNetv2_accumulate_crossval_results`` (which also writes its
    summary.json): compare reads those folders, agrees with nnU-Net's Dice and finds the planted difference."""
    import shutil

    from scipy.ndimage import binary_erosion

    from nnunet_helpers import run_cli

    base, env, dsid = tiny_preprocessed
    ds_name = "Dataset990_ClipsTiny"
    raw_labels = Path(env["nnUNet_raw"]) / ds_name / "labelsTr"
    pre = Path(env["nnUNet_preprocessed"]) / ds_name
    results = tmp_path / "results"  # private results root: the shared fixture's stays untouched
    env = dict(env, nnUNet_results=str(results))
    cases = sorted(p.name[:-7] for p in raw_labels.glob("*.nii.gz"))
    folders = {}
    for trainer, erode in (("nnUNetTrainer", True), ("nnUNetTrainerGood", False)):
        model = results / ds_name / f"{trainer}__nnUNetPlans__3d_fullres"
        model.mkdir(parents=True)
        shutil.copy(pre / "nnUNetPlans.json", model / "plans.json")
        shutil.copy(pre / "dataset.json", model / "dataset.json")
        for i, case in enumerate(cases):
            ref = sitk.ReadImage(str(raw_labels / f"{case}.nii.gz"))
            arr = sitk.GetArrayFromImage(ref)
            if erode:
                arr = binary_erosion(arr > 0).astype(arr.dtype)
            img = sitk.GetImageFromArray(arr)
            img.CopyInformation(ref)
            val = model / f"fold_{i % 2}" / "validation"
            val.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(img, str(val / f"{case}.nii.gz"))
        run_cli(["nnUNetv2_accumulate_crossval_results", str(dsid), "-c", "3d_fullres", "-tr", trainer,
                 "-f", "0", "1"], env, timeout=300)
        folders[trainer] = model / "crossval_results_folds_0_1"
        assert (folders[trainer] / "summary.json").is_file()
    monkeypatch.setenv("nnUNet_preprocessed", env["nnUNet_preprocessed"])
    res = compare_results([folders["nnUNetTrainerGood"], folders["nnUNetTrainer"]], progress=False,
                          out_dir=tmp_path / "cmp", plots=False)
    assert set(res.groups) == {"nnUNetTrainer", "nnUNetTrainerGood"} and res.baseline == "nnUNetTrainer"
    pc = res.per_case
    assert len(pc) == 2 * len(cases) and (pc[pc.group == "nnUNetTrainerGood"].dice == 1.0).all()
    np.testing.assert_allclose(pc.nnunet_dice, pc.dice, atol=1e-6)  # nnU-Net's own Dice agrees with ours
    dice = res.comparison("nnUNetTrainerGood", "dice")
    assert dice.difference.estimate > 0 and dice.difference.n_runs_arm == 1
    assert "one run per arm" in dice.difference.undefined  # one pooled folder per trainer: no run-level test
    # the model folders themselves (fold_X/validation) give the same per-case values
    res2 = compare_results([folders["nnUNetTrainer"].parent], progress=False)
    a = res2.per_case.set_index("case_id").dice.sort_index()
    b = pc[pc.group == "nnUNetTrainer"].set_index("case_id").dice.sort_index()
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy())


def test_subset_stratum_is_tabulated_and_tested(tree):
    """A named subset (e.g. the mislabelled patients) gets its own rows and tests over exactly its cases."""
    tmp, base, better = tree
    subset = ["case_000", "case_003", "case_004", "case_009", "case_010"]
    res = compare_results([better, base], out_dir=tmp / "cmp_sub", progress=False, subsets={"mislabelled": subset})
    assert res.subsets == {"mislabelled": sorted(subset)}
    pc = res.per_case.set_index(["group", "case_id"])
    summary = res.summary("nnUNetTrainerBetter", "dice", "mislabelled")
    assert summary.n_cases == 5 and summary.median_cases == pytest.approx(
        np.median([pc.loc[("nnUNetTrainerBetter", c), "dice"] for c in subset]))
    # the run-level comparison over exactly those 5 patients: each run's mean over its subset patients
    runs = res.runs[res.runs.case_id.isin(subset)]
    means = {g: [RunMean(r, str(df.fold.iloc[0]), df.dice.mean(), len(df))
                 for r, df in runs[runs.group == g].groupby("run")] for g in ("nnUNetTrainerBetter", "nnUNetTrainer")}
    expected = run_level_difference(means["nnUNetTrainerBetter"], means["nnUNetTrainer"])
    got = res.comparison("nnUNetTrainerBetter", "dice", "mislabelled").difference
    assert got.estimate == pytest.approx(expected.estimate) and got.p_value == pytest.approx(expected.p_value)
    assert "Subset: mislabelled (n = 5)" in (tmp / "cmp_sub" / "report.md").read_text()
    with pytest.raises(Exception, match="clash"):
        compare_results([better, base], progress=False, subsets={"hard": subset})


def test_options_record_equals_keywords_and_unknown_names_fail(tree):
    """CompareOptions (typed, grouped) and the keywords by field name give the same comparison; a misspelt name
    or a positional baseline is a TypeError, not silently ignored."""
    from clips_nnunet.evaluation.compare import CaseEvaluation, CompareOptions, DifficultySource

    tmp, base, better = tree
    diff = tmp / "difficulty_opts.csv"
    diff.write_text("case_id,difficulty\n" + "".join(f"case_{i:03d},{N - i}\n" for i in range(N)))
    options = CompareOptions(baseline="nnUNetTrainer", metrics={"dice": True},
                             difficulty=DifficultySource(difficulty_csv=diff),
                             evaluation=CaseEvaluation(progress=False, cache_dir=tmp / "opts_cache"))
    by_record = compare_results([better, base], options)
    by_name = compare_results([better, base], baseline="nnUNetTrainer", metrics={"dice": True}, difficulty_csv=diff,
                              progress=False, cache_dir=tmp / "opts_cache")
    assert by_record.strata == by_name.strata and by_record.strata["hard"] == [f"case_{i:03d}" for i in range(4)]
    a, b = by_record.comparison("nnUNetTrainerBetter", "dice"), by_name.comparison("nnUNetTrainerBetter", "dice")
    assert a.difference.estimate == b.difference.estimate > 0 and a.p_holm == b.p_holm
    assert options.updated(metadata_key="suv_max").difficulty.metadata_key == "suv_max"
    assert options.updated(metadata_key="suv_max").difficulty.difficulty_csv == diff  # the other fields are kept
    with pytest.raises(TypeError, match="metadata_kye"):
        compare_results([better, base], metadata_kye="tmtv_ml")
    with pytest.raises(TypeError, match="CompareOptions"):
        compare_results([better, base], "nnUNetTrainer")
