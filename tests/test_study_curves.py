"""The study's convergence ladder and budget accounting, and the clean references of a study with planted errors."""
from __future__ import annotations

import pytest

from clips_nnunet.evaluation.statistics import RunLevelDifference
from clips_nnunet.study.report_sections import budget_lines, budgets, ladder_verdict


def test_ladder_verdict_reads_the_interval_against_the_margin():
    def d(low, high):
        return RunLevelDifference((low + high) / 2, low, high, 0.5, 3, 3, 4)

    assert ladder_verdict(d(-0.01, 0.015), 0.02) == "converged"
    assert ladder_verdict(d(0.03, 0.09), 0.02) == "not converged"
    assert ladder_verdict(d(-0.01, 0.05), 0.02).startswith("undetermined (the interval crosses")
    # a run stuck at zero at 1x and 2x has a zero difference but no interval: never "converged"
    stuck = RunLevelDifference(0.0, float("nan"), float("nan"), float("nan"), 1, 1, 0, "one run per arm and fold")
    assert ladder_verdict(stuck, 0.02) == "undetermined (one run per arm and fold)"


def test_budget_counts_the_teachers_cross_validation_and_the_ladder(tmp_path):
    from clips_nnunet.study import parse_study_config

    raw = {"name": "b", "dataset": {"id": 995, "name": "B", "source": "synthetic_raw", "n_splits": 3},
           "trainers": ["nnUNetTrainerClipsBase",
                        {"name": "stock2x", "trainer": "nnUNetTrainerClipsBase", "budget_factor": 2},
                        {"name": "teach", "trainer": "nnUNetTrainerCLTransferTeacher",
                         "teacher": "nnUNetTrainerClipsBase"}],
           "baseline": "nnUNetTrainerClipsBase", "seeds": [0], "budget": {"epochs": 4, "iterations_per_epoch": 5}}
    config = parse_study_config(raw, study_dir=tmp_path / "s")
    assert config.ladder_arms == ("stock2x",) and config.run_iterations("stock2x") == 40
    by_arm = {b.arm: b for b in budgets(config)}
    assert by_arm["nnUNetTrainerClipsBase"].total == 20 and by_arm["nnUNetTrainerClipsBase"].ratio == 1.0
    assert by_arm["teach"].teacher == 3 * 20 and by_arm["teach"].ratio == pytest.approx(4.0)  # 3-fold teacher CV
    text = "\n".join(budget_lines(config))
    assert "Equal budget: **false**" in text and "**4.00x**" in text and "**2.00x** (convergence ladder)" in text
    with pytest.raises(Exception, match="budget_factor"):
        parse_study_config(dict(raw, trainers=[{"name": "x", "budget_factor": 0}], baseline="x"),
                           study_dir=tmp_path / "t")


def test_reference_masks_are_the_clean_ones_when_errors_were_planted(tmp_path):
    from clips_nnunet.study import parse_study_config
    from clips_nnunet.study.report import MISLABELLED, reference_masks
    from clips_nnunet.synthetic.raw import make_synthetic_raw_dataset

    raw = {"name": "r", "dataset": {"id": 996, "name": "Ref", "source": "synthetic_raw"},
           "trainers": ["nnUNetTrainer"], "baseline": "nnUNetTrainer", "seeds": [0],
           "budget": {"epochs": 1, "iterations_per_epoch": 1}}
    config = parse_study_config(raw, study_dir=tmp_path / "study")
    gt, subsets, text = reference_masks(config)
    assert gt.name == "gt_segmentations" and subsets == {} and "own reference" in text
    make_synthetic_raw_dataset(config.study_dir / "nnUNet_raw", 996, "Ref", n_train=8, n_test=0,
                               shape=(16, 16, 16), label_error_fraction=0.25, seed=3)
    gt, subsets, text = reference_masks(config)
    assert gt == config.study_dir / "clips_truth" / "Dataset996_Ref" / "labels_clean"
    assert len(subsets[MISLABELLED]) == 2  # 25 % of 8 training patients
    assert "clean masks" in text and "2 training case(s)" in text
