"""Checkpoint load errors name the file and what to do (predict and scoring load models through
:func:`clips_nnunet.trainers.checkpoints.load_trained_model`)."""
from __future__ import annotations

import pytest
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from clips_nnunet.errors import DatasetError
from clips_nnunet.trainers.checkpoints import checkpoint_problem, load_trained_model


def _predictor():
    return nnUNetPredictor(device=torch.device("cpu"), verbose=False, allow_tqdm=False)


def test_truncated_checkpoint_is_named_before_nnunet_loads_it(tmp_path):
    fold = tmp_path / "model" / "fold_0"
    fold.mkdir(parents=True)
    torch.save({"network_weights": {"w": torch.zeros(1000)}, "trainer_name": "nnUNetTrainer",
                "init_args": {}}, fold / "checkpoint_final.pth")
    data = (fold / "checkpoint_final.pth").read_bytes()
    (fold / "checkpoint_final.pth").write_bytes(data[: len(data) // 2])  # killed while saving
    with pytest.raises(DatasetError) as info:
        load_trained_model(_predictor(), tmp_path / "model", [0], "checkpoint_final.pth")
    text = str(info.value)
    assert str(fold / "checkpoint_final.pth") in text and "damaged or incomplete" in text
    assert "--chk checkpoint_best.pth" in text and "fold 0" in text and "\n" not in text


def test_checkpoint_of_something_else_is_named_after_nnunet_fails(tmp_path):
    folder = tmp_path / "model"
    for f in (0, 1):
        (folder / f"fold_{f}").mkdir(parents=True)
    torch.save({"network_weights": {}, "trainer_name": "nnUNetTrainer", "init_args": {}},
               folder / "fold_0" / "checkpoint_final.pth")
    torch.save({"state_dict": {}}, folder / "fold_1" / "checkpoint_final.pth")  # a complete zip, wrong content
    assert checkpoint_problem(folder / "fold_0" / "checkpoint_final.pth") is None
    with pytest.raises(DatasetError, match=r"fold_1/checkpoint_final.pth cannot be loaded \(it lacks "
                                           r"network_weights, trainer_name, init_args"):
        load_trained_model(_predictor(), folder, [0, 1], "checkpoint_final.pth")


def test_missing_checkpoint_and_unloadable_model_folder(tmp_path):
    folder = tmp_path / "model"
    (folder / "fold_0").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"fold_0/checkpoint_best.pth does not exist: train fold 0"):
        load_trained_model(_predictor(), folder, [0], "checkpoint_best.pth")
    # valid checkpoint, but the folder has no plans.json: nnU-Net fails; the error names the folder
    torch.save({"network_weights": {}, "trainer_name": "nnUNetTrainer", "init_args": {}},
               folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(DatasetError, match=rf"nnU-Net cannot load the model in {folder} \(checkpoint "
                                           r"checkpoint_final.pth, folds \[0\]\)"):
        load_trained_model(_predictor(), folder, [0], "checkpoint_final.pth")
