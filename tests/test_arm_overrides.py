"""A study arm's ``overrides`` are class attributes of its budget subclass: an attribute nnU-Net only sets in
``__init__`` (``oversample_foreground_percent``) would be silently ignored, so the study refuses it by name."""
from __future__ import annotations

from pathlib import Path

import pytest

from clips_nnunet.study import load_study_config
from clips_nnunet.study.arms import resolve_arms
from clips_nnunet.study.config import StudyConfigError

LEARNING = Path(__file__).resolve().parents[1] / "benchmarks" / "learning"


def test_an_override_nnunet_sets_in_init_is_refused(tmp_path):
    config = load_study_config(LEARNING / "twin_cpu_pilot.yaml", study_dir=tmp_path)
    with pytest.raises(StudyConfigError, match="arm 'nnUNetTrainerFg': overrides oversample_foreground_percent are "
                                               "not class attributes of nnUNetTrainerClipsBase"):
        resolve_arms(config, [], echo=False)


def test_class_attribute_overrides_are_accepted(tmp_path):
    config = load_study_config(LEARNING / "twin_cpu2_sloppy.yaml", study_dir=tmp_path)
    modules, missing = resolve_arms(config, [], echo=False)
    assert sorted(modules) == ["nnUNetTrainer", "nnUNetTrainerCLSelfPacedLinear",
                               "nnUNetTrainerCLSelfPacedLinearRandom"] and missing == []
