"""The plateau criterion of the study's training curves and the clean references of a study with planted errors."""
from __future__ import annotations

import pytest

from clips_nnunet.study.curves import plateau


def test_plateau_compares_the_last_two_windows_by_hand():
    # 10 epochs, window 20 % = 2 epochs: last (0.80, 0.82) mean 0.81, before (0.78, 0.80) mean 0.79: gain 0.02
    curve = [0.0, 0.1, 0.3, 0.5, 0.6, 0.7, 0.78, 0.80, 0.80, 0.82]
    r = plateau(curve, window=0.2, tolerance=0.02)
    assert r.window_epochs == 2 and r.last == pytest.approx(0.81) and r.before == pytest.approx(0.79)
    assert r.gain == pytest.approx(0.02) and not r.reached  # gain must be strictly below the tolerance
    assert plateau(curve, window=0.2, tolerance=0.03).reached
    # still rising: gain over the last 3 of 15 epochs is large
    rising = [i / 15 for i in range(15)]
    assert plateau(rising).window_epochs == 3 and plateau(rising).gain == pytest.approx(3 / 15)
    assert not plateau(rising).reached
    # a curve that fell counts as a plateau (no gain)
    assert plateau([0.9, 0.9, 0.9, 0.8, 0.8]).reached
    # too short for two windows: undecided
    assert not plateau([0.5]).reached
    with pytest.raises(ValueError, match="window"):
        plateau(curve, window=0.6)


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
