"""TMTV-Net's stacking ensemble (clips_nnunet.tmtv.stacking): the layer, its training, the model file, and the
predictor hook; the end-to-end run (fold models -> clips-nnunet stack -> clips-nnunet predict --stacking) is in
tests/test_tmtv_integration.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from clips_nnunet.errors import DatasetError
from clips_nnunet.tmtv.stacking import (StackedModel, StackingLayer, StackingTrainingConfig, apply_stacking,
                                              compare_on_cases, dice, enable_stacking, foreground_channels,
                                              load_stacking_model, save_stacking_model, train_stacking_model)


def test_layer_starts_as_tmtv_net_and_reads_foreground_channels():
    layer = StackingLayer(4, 2)
    assert layer.conv.weight.shape == (2, 4, 1, 1, 1)
    assert torch.all(layer.conv.weight == 0.25) and torch.all(layer.conv.bias == 0)
    a = torch.tensor([0.9, 0.1]).view(2, 1, 1, 1)
    b = torch.tensor([0.3, 0.7]).view(2, 1, 1, 1)
    assert foreground_channels([a, b]).flatten().tolist() == pytest.approx([0.1, 0.7])  # model by model, fg only
    three = [torch.full((3, 1, 1, 1), v) for v in (0.1, 0.2)]
    assert foreground_channels(three).shape == (4, 1, 1, 1)  # 2 models x 2 foreground classes
    with pytest.raises(ValueError, match="differ in shape"):
        foreground_channels([a, torch.zeros(2, 1, 1, 2)])
    assert dice(np.array([0, 1, 1]), np.array([0, 1, 0])) == pytest.approx(2 / 3)
    assert dice(np.zeros(3), np.zeros(3)) == 1.0


def _cases(tmp_path, n=4, shape=(12, 12, 12)):
    """Model 0 is right (0.9 on lesions, 0.1 elsewhere); model 1 is noise: the layer should learn to trust model 0."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        label = np.zeros(shape, np.float32)
        label[2:6 + i, 3:8, 4:9] = 1
        good = np.where(label > 0, 0.9, 0.1)
        noise = rng.uniform(0, 1, shape)
        f = tmp_path / f"case_{i}.npy"
        np.save(f, np.stack([good, noise, label]).astype(np.float16))
        files.append(f)
    return files


def test_training_learns_to_trust_the_better_model(tmp_path):
    files = _cases(tmp_path)
    config = StackingTrainingConfig(iterations=120, lr=0.1, batch_size=2, patch_size=(12, 12, 12),
                                    restart_period=10_000)
    layer, losses = train_stacking_model(files, 2, 2, config)
    assert len(losses) == 60 and losses[-1] < losses[0]
    w = layer.conv.weight[1, :, 0, 0, 0] - layer.conv.weight[0, :, 0, 0, 0]  # foreground minus background logit
    assert w[0] > 3 * abs(w[1])
    result = compare_on_cases(layer, files)
    # averaging thresholds (0.9 + U) / 2 on lesions and (0.1 + U) / 2 elsewhere at 0.5: ~10 % of voxels wrong
    assert result["mean"]["dice_stacking"] == pytest.approx(1.0)
    assert result["mean"]["dice_average"] < 0.97
    # same seed, same result
    again, _ = train_stacking_model(files, 2, 2, config)
    assert torch.equal(again.conv.weight, layer.conv.weight)


def test_model_file_round_trip_and_clear_errors(tmp_path):
    layer = StackingLayer(2, 2)
    with torch.no_grad():
        layer.conv.weight.mul_(3)
    model = StackedModel("Dataset991_X", "nnUNetTrainerTMTV", "nnUNetPlans", "3d_tmtv", [0, 1],
                         "checkpoint_best.pth", 2)
    path = save_stacking_model(tmp_path / "stack.pth", layer, model, {"note": 1})
    loaded, back, info = load_stacking_model(path)
    assert torch.equal(loaded.conv.weight, layer.conv.weight) and back == model and info == {"note": 1}
    with pytest.raises(DatasetError, match="does not exist"):
        load_stacking_model(tmp_path / "missing.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a torch file")
    with pytest.raises(DatasetError, match="cannot be read"):
        load_stacking_model(tmp_path / "bad.pth")
    torch.save({"format": "other"}, tmp_path / "other.pth")
    with pytest.raises(DatasetError, match="not a clips-nnunet stacking model"):
        load_stacking_model(tmp_path / "other.pth")


class _FakeNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("which", torch.zeros(()))


class _FakePredictor:
    """Duck-typed nnUNetPredictor: fold k predicts logits (0, k + 1) everywhere."""

    def __init__(self, n_folds):
        self.network = _FakeNetwork()
        self.list_of_parameters = [{"which": torch.tensor(float(k))} for k in range(n_folds)]
        self.plans_manager = type("PM", (), {"dataset_name": "Dataset991_X"})()

    def predict_sliding_window_return_logits(self, data):
        k = float(self.network.which)
        return torch.stack([torch.zeros(data.shape[1:]), torch.full(data.shape[1:], k + 1)])

    def predict_logits_from_preprocessed_data(self, data):  # nnU-Net: the fold average
        raise AssertionError("replaced by enable_stacking")


def test_enable_stacking_replaces_the_fold_average(tmp_path):
    predictor, layer = _FakePredictor(2), StackingLayer(2, 2)
    with torch.no_grad():
        layer.conv.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]).view(2, 2, 1, 1, 1))
        layer.conv.bias.copy_(torch.tensor([0.5, -0.5]))
    enable_stacking(predictor, layer)
    out = predictor.predict_logits_from_preprocessed_data(torch.zeros(2, 2, 3, 4))
    p0, p1 = torch.sigmoid(torch.tensor(1.0)), torch.sigmoid(torch.tensor(2.0))  # softmax fg of folds 0 and 1
    assert out.shape == (2, 2, 3, 4)
    assert torch.allclose(out[:, 0, 0, 0], torch.stack([p0 + 0.5, 2 * p1 - 0.5]))
    with pytest.raises(DatasetError, match="combines 3 folds"):
        enable_stacking(_FakePredictor(2), StackingLayer(3, 2))


def test_apply_stacking_checks_the_model(tmp_path):
    model = StackedModel("Dataset991_X", "nnUNetTrainerTMTV", "nnUNetPlans", "3d_tmtv", [0, 1],
                         "checkpoint_best.pth", 2)
    path = save_stacking_model(tmp_path / "s.pth", StackingLayer(2, 2), model)
    stages = [_FakePredictor(2), _FakePredictor(1)]
    info = [{"model": "nnUNetTrainerTMTV__nnUNetPlans__3d_tmtv", "folds": [0, 1]},
            {"model": "nnUNetTrainerTMTVRefiner__nnUNetPlans__3d_tmtv_refine", "folds": ["all"]}]
    with pytest.raises(DatasetError, match="pass --chk checkpoint_best.pth"):
        apply_stacking(path, stages, info, "checkpoint_final.pth")
    with pytest.raises(DatasetError, match="pass -f 0 1"):
        apply_stacking(path, stages, [{**info[0], "folds": [0]}, info[1]], "checkpoint_best.pth")
    with pytest.raises(DatasetError, match="not a stage of this prediction"):
        apply_stacking(path, stages[1:], info[1:], "checkpoint_best.pth")
    assert apply_stacking(path, stages, info, "checkpoint_best.pth") == 0  # stage 1 of the cascade
    assert info[0]["stacking"] == "s.pth" and "stacking" not in info[1]
