"""Trainer-level configuration of the family without training: difficulty CSV lookup order, bad attributes."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from clips_nnunet.errors import CurriculumConfigError
from clips_nnunet.trainers import family


def _bare(cls, tmp_path, monkeypatch):
    """A trainer object without nnU-Net's __init__ (no plans, no GPU): enough for the difficulty helpers."""
    trainer = object.__new__(cls)
    trainer.plans_manager = SimpleNamespace(dataset_name="Dataset990_ClipsTiny")
    trainer.print_to_log_file = lambda *args, **kwargs: None
    trainer.do_split = lambda: (["a", "b", "c"], ["v"])
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    monkeypatch.delenv(family.DIFFICULTY_CSV_ENV, raising=False)
    return trainer


def test_difficulty_csv_lookup_order(tmp_path, monkeypatch):
    teacher = _bare(family.nnUNetTrainerCLTransferTeacher, tmp_path, monkeypatch)
    assert teacher.difficulty_csv_path() == str(tmp_path / "Dataset990_ClipsTiny" / "difficulty.csv")

    class WithAttribute(family.nnUNetTrainerCLTransferTeacher):
        difficulty_csv = "/data/teacher.csv"

    assert _bare(WithAttribute, tmp_path, monkeypatch).difficulty_csv_path() == "/data/teacher.csv"
    trainer = _bare(WithAttribute, tmp_path, monkeypatch)
    monkeypatch.setenv(family.DIFFICULTY_CSV_ENV, "/env/teacher.csv")
    assert trainer.difficulty_csv_path() == "/env/teacher.csv"  # the environment variable wins


def test_load_difficulty_from_csv_and_metadata(tmp_path, monkeypatch):
    teacher = _bare(family.nnUNetTrainerCLTransferTeacher, tmp_path, monkeypatch)
    raw = tmp_path / "Dataset990_ClipsTiny"
    raw.mkdir()
    # a cross-validation CSV scores every case, including this fold's validation case v
    (raw / "difficulty.csv").write_text("case_id,difficulty\na,0.9\nb,0.1\nc,0.5\nv,0.0\n")
    np.testing.assert_allclose(teacher.load_difficulty(["a", "b", "c"]), [1.0, 0.0, 0.5])
    (raw / "case_metadata.json").write_text(json.dumps({"a": {"tmtv_ml": 5.0}, "b": {"tmtv_ml": 50.0},
                                                        "c": {"tmtv_ml": 20.0}}))
    predefined = _bare(family.nnUNetTrainerCLPredefined, tmp_path, monkeypatch)
    np.testing.assert_allclose(predefined.load_difficulty(["a", "b", "c"]), [1.0, 0.0, 0.5])  # small TMTV = hard

    class BadSource(family.nnUNetTrainerCLPredefined):
        difficulty_source = "oracle"

    with pytest.raises(CurriculumConfigError, match="difficulty_source must be 'metadata' or 'csv'"):
        _bare(BadSource, tmp_path, monkeypatch).load_difficulty(["a", "b", "c"])

    class BadMeasure(family.nnUNetTrainerCLPredefined):
        difficulty_measure = "volume"

    with pytest.raises(CurriculumConfigError, match="unknown difficulty measure 'volume'"):
        _bare(BadMeasure, tmp_path, monkeypatch).load_difficulty(["a", "b", "c"])


def test_every_family_trainer_is_in_the_shim():
    import importlib.util
    from pathlib import Path

    import clips_nnunet

    shim = Path(clips_nnunet.__file__).parent / "nnunet_ext" / "clips_trainers.py"
    spec = importlib.util.spec_from_file_location("clips_trainers_under_test", shim)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert len(family.FAMILY_TRAINERS) == 25
    for name in family.FAMILY_TRAINERS:
        cls = getattr(module, name)
        assert cls.__module__ == "clips_nnunet.trainers.family" and "__" not in name
