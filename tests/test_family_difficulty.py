"""Difficulty sources: metadata measures, user CSVs, and cross-validation scoring from a fake nnU-Net results tree."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from clips_nnunet.cli import main as cli_main
from clips_nnunet.curriculum.difficulty import (difficulty_from_metadata, groups_from_metadata, rank_normalise,
                                                read_difficulty_csv, write_difficulty_csv)
from clips_nnunet.evaluation.scoring import probability_loss, score_cross_validation, tmtv_error
from clips_nnunet.errors import CurriculumConfigError, DatasetError


def test_rank_normalise_ties():
    np.testing.assert_allclose(rank_normalise([3, 1, 2, 2]), [1.0, 0.0, 0.5, 0.5])
    np.testing.assert_allclose(rank_normalise([7.0]), [0.5])


def test_metadata_directions_and_lesion_free_policy():
    meta = {"a": {"tmtv_ml": 10, "n_lesions": 2, "suv_max": 9.0},
            "b": {"tmtv_ml": 0, "n_lesions": 0, "suv_max": None},
            "c": {"tmtv_ml": 5, "n_lesions": 7, "suv_max": 3.0},
            "d": {"tmtv_ml": 20, "n_lesions": 1, "suv_max": 20.0}}
    ids = ["a", "b", "c", "d"]
    # small TMTV = hard: d (20) easiest, a middle, c (5) hardest; lesion-free b at the median
    assert difficulty_from_metadata(meta, ids, "tmtv_ml") == {"a": 0.5, "b": 0.5, "c": 1.0, "d": 0.0}
    assert difficulty_from_metadata(meta, ids, "tmtv_ml", lesion_free="easiest")["b"] == 0.0
    # many lesions = hard
    assert difficulty_from_metadata(meta, ids, "n_lesions") == {"a": 0.5, "b": 0.5, "c": 1.0, "d": 0.0}
    # low SUVmax = hard; lesion-free b has no SUVmax but is covered by the policy
    assert difficulty_from_metadata(meta, ids, "suv_max", "hardest") == {"a": 0.5, "b": 1.0, "c": 1.0, "d": 0.0}
    with pytest.raises(CurriculumConfigError, match="unknown difficulty measure 'volume'"):
        difficulty_from_metadata(meta, ids, "volume")
    with pytest.raises(CurriculumConfigError, match=r"no entry for training cases \['e'\]"):
        difficulty_from_metadata(meta, ids + ["e"])


def test_groups_from_metadata():
    meta = {"a": {"vendor": "GE", "n_lesions": 0}, "b": {"vendor": "Siemens", "n_lesions": 3},
            "c": {"n_lesions": 12}}
    assert groups_from_metadata(meta, ["a", "b", "c"], "vendor") == {"a": "GE", "b": "Siemens", "c": "unknown"}
    assert groups_from_metadata(meta, ["a", "b", "c"], "lesion_band") == {"a": "0", "b": "2-4", "c": "10+"}
    with pytest.warns(UserWarning, match="single group"):
        assert set(groups_from_metadata(meta, ["a", "b"], "scanner").values()) == {"all"}


def test_difficulty_csv_formats_and_errors(tmp_path):
    ids = ["case_0000", "case_0001", "case_0002"]
    scores = tmp_path / "scores.csv"
    scores.write_text("case_id,dice,difficulty\ncase_0000,0.9,0.1\ncase_0001,0.2,0.8\ncase_0002,0.5,0.5\n")
    assert read_difficulty_csv(scores, ids) == {"case_0000": 0.0, "case_0001": 1.0, "case_0002": 0.5}
    hard = tmp_path / "hard.txt"
    hard.write_text("case_0002\n")
    assert read_difficulty_csv(hard, ids) == {"case_0000": 0.0, "case_0001": 0.0, "case_0002": 1.0}
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("case_0002\npatient_17\ncase_9\n")
    with pytest.raises(CurriculumConfigError, match=r"2 case id\(s\) are not cases of this dataset.*"
                                                    r"\['case_9', 'patient_17'\]"):
        read_difficulty_csv(unknown, ids)
    # a CSV scoring every case of the dataset: other folds' cases (known ids) are ignored, ranks over this fold
    everything = tmp_path / "all.csv"
    everything.write_text("case_id,difficulty\ncase_0000,5\ncase_0001,1\ncase_0002,3\ncase_0099,0\n")
    assert read_difficulty_csv(everything, ids, known_ids=ids + ["case_0099"]) == {
        "case_0000": 1.0, "case_0001": 0.0, "case_0002": 0.5}
    partial = tmp_path / "partial.csv"
    partial.write_text("case_0000,0.3\ncase_0001,0.1\n")
    with pytest.raises(CurriculumConfigError, match=r"have no difficulty: \['case_0002'\]"):
        read_difficulty_csv(partial, ids)
    with pytest.raises(CurriculumConfigError, match="does not exist"):
        read_difficulty_csv(tmp_path / "missing.csv", ids)


def test_tmtv_error_and_probability_loss():
    ref = np.zeros((4, 4, 4), np.uint8)
    ref[:2] = 1  # 32 voxels
    pred = np.zeros_like(ref)
    pred[:1] = 1  # 16 voxels
    assert tmtv_error(pred, ref, voxel_ml=0.5) == pytest.approx(abs(8 - 16) / 16)
    assert tmtv_error(pred, np.zeros_like(ref), voxel_ml=0.01) == pytest.approx(0.16)  # floor 1 ml: 0.16 ml
    # perfect one-hot probabilities: CE ~ 0 (-log(1)), Dice 1 -> loss ~ 0; uniform 0.5: CE = log 2, soft Dice
    onehot = np.stack([1 - ref, ref]).astype(float)
    assert probability_loss(onehot, ref) == pytest.approx(0.0, abs=1e-5)
    half = np.full((2, 4, 4, 4), 0.5)
    # soft Dice = 2 * 0.5 * 32 / (0.5 * 64 + 32) = 0.5
    assert probability_loss(half, ref) == pytest.approx(math.log(2) + 0.5)


def _write(array, path: Path, spacing=(2.0, 2.0, 2.0)):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


@pytest.fixture
def fake_results(tmp_path):
    """$nnUNet_results/Dataset991_Fake/T__P__C with 2 folds of out-of-fold predictions of known Dice."""
    gt = tmp_path / "nnUNet_preprocessed" / "Dataset991_Fake" / "gt_segmentations"
    results = tmp_path / "nnUNet_results" / "Dataset991_Fake" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    ref = np.zeros((4, 4, 4), np.uint8)
    ref[:2] = 1  # 32 voxels
    cases = {  # case: (fold, prediction) with Dice
        "case_a": (0, ref.copy()),  # Dice 1
        "case_b": (0, np.concatenate([ref[:1], np.zeros_like(ref[1:])])),  # 16 of 32: Dice 2*16/48 = 2/3
        "case_c": (1, np.zeros_like(ref)),  # Dice 0
        "case_d": (1, np.ones_like(ref)),  # 64 vs 32: Dice 2*32/96 = 2/3
    }
    for case, (fold, pred) in cases.items():
        _write(ref, gt / f"{case}.nii.gz")
        _write(pred, results / f"fold_{fold}" / "validation" / f"{case}.nii.gz")
    (results / "fold_1" / "validation" / "summary.json").write_text("{}")
    return tmp_path, results, gt


def test_score_cross_validation_known_dice(fake_results, monkeypatch):
    base, results, gt = fake_results
    monkeypatch.setenv("nnUNet_preprocessed", str(base / "nnUNet_preprocessed"))
    table = score_cross_validation(results, progress=False)  # labels found from the dataset name
    assert sorted(table) == ["case_a", "case_b", "case_c", "case_d"]
    assert table["case_a"]["fold"] == 0 and table["case_c"]["fold"] == 1
    np.testing.assert_allclose([table[c]["difficulty"] for c in sorted(table)], [0.0, 1 / 3, 1.0, 1 / 3])
    assert table["case_d"]["tmtv_pred_ml"] == pytest.approx(64 * 8 / 1000)
    # what training reads: the CSV clips-nnunet score writes, ranked by read_difficulty_csv (ties share their rank)
    ranks = read_difficulty_csv(write_difficulty_csv(base / "difficulty.csv", table), sorted(table))
    assert ranks == {"case_a": 0.0, "case_b": 0.5, "case_c": 1.0, "case_d": 0.5}
    tmtv = score_cross_validation(results, gt, metric="tmtv", progress=False)
    # true TMTV 32 voxels * 8 ul = 0.256 ml < the 1 ml floor: absolute errors in ml (0.128, 0.256, 0.256)
    np.testing.assert_allclose([tmtv[c]["difficulty"] for c in sorted(tmtv)], [0.0, 0.128, 0.256, 0.256])
    with pytest.raises(DatasetError, match="--npz"), pytest.warns(UserWarning, match="not scored"):
        score_cross_validation(results, gt, metric="loss", progress=False)
    # with the softmax saved (--npz): perfect one-hot -> loss 0, uniform 0.5 -> log 2 + (1 - 0.5)
    ref = np.zeros((4, 4, 4))
    ref[:2] = 1
    for case, fold in (("case_a", 0), ("case_b", 0), ("case_c", 1), ("case_d", 1)):
        probabilities = np.full((2, 4, 4, 4), 0.5) if case == "case_c" else np.stack([1 - ref, ref])
        np.savez(results / f"fold_{fold}" / "validation" / f"{case}.npz", probabilities=probabilities)
    loss = score_cross_validation(results, gt, metric="loss", progress=False)
    assert loss["case_a"]["difficulty"] == pytest.approx(0.0, abs=1e-5)
    assert loss["case_c"]["difficulty"] == pytest.approx(math.log(2) + 0.5)


def test_score_cross_validation_errors(fake_results):
    base, results, gt = fake_results
    with pytest.raises(DatasetError, match="no fold_X/validation"):
        score_cross_validation(results.parent, gt, progress=False)
    dup = results / "fold_1" / "validation" / "case_a.nii.gz"
    _write(np.zeros((4, 4, 4)), dup)
    with pytest.raises(DatasetError, match="case case_a is predicted by fold 0 and fold 1"):
        score_cross_validation(results, gt, progress=False)
    dup.unlink()
    (gt / "case_b.nii.gz").unlink()  # one unscorable case is skipped with a warning, the rest go on
    with pytest.warns(UserWarning, match="case_b"):
        assert sorted(score_cross_validation(results, gt, progress=False)) == ["case_a", "case_c", "case_d"]


def test_score_cli_writes_csv_that_trainers_read(fake_results, capsys):
    base, results, gt = fake_results
    out = base / "difficulty.csv"
    assert cli_main(["score", str(results), "-o", str(out), "-l", str(gt)]) == 0
    assert "scored 4 cases" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert [r["case_id"] for r in rows] == ["case_a", "case_b", "case_c", "case_d"]
    assert float(rows[2]["difficulty"]) == 1.0 and rows[2]["fold"] == "1"
    assert read_difficulty_csv(out, ["case_a", "case_b", "case_c", "case_d"])["case_c"] == 1.0
    assert cli_main(["score", str(base / "nope"), "-o", str(out)]) == 2  # missing input: exit 2
