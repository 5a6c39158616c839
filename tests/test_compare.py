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
from clips_nnunet.evaluation.statistics import holm, paired_test, rank_biserial

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
    t = res.tests.set_index(["stratum", "metric"])
    dice = t.loc[("all", "dice")]
    assert dice["n_pairs"] == N and dice["p_value"] < 0.01
    assert dice["rank_biserial"] == pytest.approx(1.0) and dice["median_diff"] > 0
    assert dice["better"] == "nnUNetTrainerBetter"
    fpv = t.loc[("all", "fp_volume_ml")]
    assert fpv["rank_biserial"] == pytest.approx(-1.0) and fpv["better"] == "nnUNetTrainerBetter"
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
    tab = res.table.set_index(["group", "stratum", "metric"])
    assert tab.loc[("nnUNetTrainer", "hard", "dice"), "n"] == 4
    report = (tmp / "cmp" / "report.md").read_text()
    assert "Tertile: hard" in report and "nnUNetTrainerBetter" in report and "tmtv_ml (lower = harder)" in report
    for f in ("per_case.csv", "summary.csv", "tests.csv", "comparison.json", "plots/boxplots.png",
              "plots/dice_by_tertile.png"):
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
    tab = res.table.set_index(["group", "stratum", "metric"])
    assert tab.loc[("better", "all", "dice"), "sd_between_seeds"] > 0
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
    assert "cl vs nnUNetTrainer: Dice median diff +" in out
    tests = pd.read_csv(tmp / "cli" / "tests.csv")
    hard = tests[(tests.stratum == "hard") & (tests.metric == "dice")].iloc[0]
    assert hard.n_pairs == 4 and hard.rank_biserial == pytest.approx(1.0)


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


def test_statistics_helpers():
    assert rank_biserial([1, 2, 3]) == 1.0 and rank_biserial([-1, -2, 3]) == pytest.approx((3 - 3) / 6)
    assert math.isnan(rank_biserial([0, 0]))
    r = paired_test([1, 1, 1], [1, 1, 1])
    assert r["p_value"] == 1.0 and r["n_pairs"] == 3
    r = paired_test([1, 2, float("nan")], [0, 0, 0])
    assert r["n_pairs"] == 2
    # Holm by hand: sorted 0.01, 0.03, 0.04 -> 3 x 0.01, 2 x 0.03, max(0.06, 1 x 0.04); NaN stays NaN
    adjusted = holm([0.01, 0.04, 0.03, float("nan")])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(adjusted[3])
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
    dice = res.tests[(res.tests.stratum == "all") & (res.tests.metric == "dice")].iloc[0]
    assert dice.better == "nnUNetTrainerGood" and dice.rank_biserial == pytest.approx(1.0) and dice.p_value < 0.01
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
    tab = res.table.set_index(["group", "stratum", "metric"])
    pc = res.per_case.set_index(["group", "case_id"])
    expected = np.mean([pc.loc[("nnUNetTrainerBetter", c), "dice"] for c in subset])
    assert tab.loc[("nnUNetTrainerBetter", "mislabelled", "dice"), "mean"] == pytest.approx(expected)
    assert tab.loc[("nnUNetTrainerBetter", "mislabelled", "dice"), "n"] == 5
    test = res.tests.set_index(["stratum", "metric"]).loc[("mislabelled", "dice")]
    # Better keeps more slices in every case: all 5 differences positive; the test is the one over those 5 pairs
    assert test["n_pairs"] == 5 and test["rank_biserial"] == pytest.approx(1.0)
    pairs = paired_test([pc.loc[("nnUNetTrainerBetter", c), "dice"] for c in subset],
                        [pc.loc[("nnUNetTrainer", c), "dice"] for c in subset])
    assert test["p_value"] == pytest.approx(pairs["p_value"]) and test["median_diff"] == pytest.approx(
        pairs["median_diff"])
    assert "Subset: mislabelled (n = 5)" in (tmp / "cmp_sub" / "report.md").read_text()
    with pytest.raises(Exception, match="clash"):
        compare_results([better, base], progress=False, subsets={"hard": subset})
