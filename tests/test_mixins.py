"""clips_nnunet.trainers.mixins: budget, time budget, narrower network, drawn keys, and the generated module text.

The mixins are exercised on a small stand-in with nnUNetTrainer's constructor signature (what the mixins touch),
and the narrower network on nnU-Net's real network builder; the real nnUNetv2_train runs are in test_study.py and
test_demo.py's integration tests."""
from __future__ import annotations

import inspect
import json
import math

import pytest
import torch

from clips_nnunet.errors import ClipsError
from clips_nnunet.trainers.mixins import (BudgetMixin, DrawnKeysMixin, FeaturesDivisorMixin, TrainerClass,
                                          scaled_features, trainer_module_source)


class FakeTrainer:
    """What the mixins use of nnUNetTrainer: its constructor signature and budget attributes, hooks, a logger."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 1000, 250, 50
        self.device = device
        self.output_folder = plans["out"]
        self.local_rank = 0
        self.steps = 0
        self.dataloader_train = iter(range(10 ** 6))
        self.lr_scheduler = type("Poly", (), {"max_steps": 1000})()
        self.log = []
        self.events = []

    def on_train_start(self):
        self.events.append("start")

    def on_train_end(self):
        self.events.append("end")

    def train_step(self, batch):
        self.steps += 1
        return {"loss": 0.0}

    def print_to_log_file(self, *args):
        self.log.append(" ".join(str(a) for a in args))


def make(cls, tmp_path):
    return cls({"out": str(tmp_path)}, "3d_fullres", 0, {}, torch.device("cpu"))


def test_scaled_features_by_hand():
    assert scaled_features([32, 64, 128, 256, 320, 320], 4) == [8, 16, 32, 64, 80, 80]
    assert scaled_features([32, 64], 16) == [4, 4]  # never below 4
    assert scaled_features([30, 64], 1) == [30, 64]
    for bad in (0, 2.5, True):
        with pytest.raises(ClipsError, match="features_divisor"):
            scaled_features([32], bad)


def test_budget_mixin_sets_only_what_it_is_given(tmp_path):
    class Budget(BudgetMixin, FakeTrainer):
        budget_epochs = 3
        budget_iterations_per_epoch = 4

    t = make(Budget, tmp_path)
    assert (t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch) == (3, 4, 50)
    # nnU-Net stores the constructor arguments by the signature's names: identical to nnUNetTrainer's
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    assert list(inspect.signature(Budget.__init__).parameters) == list(inspect.signature(nnUNetTrainer.__init__).parameters)


def test_budget_mixin_keeps_the_cpu_thread_limit_nnunet_overrides(tmp_path, monkeypatch):
    """nnUNetv2_train -device cpu sets torch.set_num_threads(cpu_count()); OMP_NUM_THREADS (which the study sets
    for parallel CPU runs) wins again in the budget subclass; unset or on another device nothing changes."""
    class Budget(BudgetMixin, FakeTrainer):
        budget_epochs = 3

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        make(Budget, tmp_path)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        Budget({"out": str(tmp_path)}, "3d_fullres", 0, {}, torch.device("meta"))
        assert torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        make(Budget, tmp_path)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_drawn_keys_are_recorded_with_the_trainer_seed(tmp_path):
    class Seeded(FakeTrainer):
        def clips_seed(self):
            return 7

    class Drawn(DrawnKeysMixin, Seeded):
        pass

    t = make(Drawn, tmp_path)
    t.train_step({"keys": ["case_1", "case_2"]})
    t.train_step({"data": None})  # a batch without keys records nothing
    t.train_step({"keys": ("case_3",)})
    t.on_train_end()
    assert t.steps == 3 and t.events == ["end"]
    assert json.loads((tmp_path / "study_drawn_keys.json").read_text()) == \
        {"seed": 7, "keys": [["case_1", "case_2"], ["case_3"]]}

    class Unseeded(DrawnKeysMixin, FakeTrainer):
        pass

    (tmp_path / "u").mkdir()
    u = make(Unseeded, tmp_path / "u")
    u.on_train_end()
    assert json.loads((tmp_path / "u" / "study_drawn_keys.json").read_text()) == {"seed": None, "keys": []}


def _configuration_manager(features):
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 3, "features_per_stage": features, "conv_op": "torch.nn.modules.conv.Conv3d",
                            "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                            "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    return ConfigurationManager({"architecture": arch, "patch_size": [16, 16, 16]})


def test_features_divisor_builds_a_narrower_network_as_nnunet_calls_it():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class Narrow(FeaturesDivisorMixin, nnUNetTrainer):
        features_divisor = 4

    manager = _configuration_manager([32, 64, 128])
    # nnU-Net's predictor checks the signature, then calls it on the class
    assert "plans_manager" in inspect.signature(Narrow.build_network_architecture).parameters
    net = Narrow.build_network_architecture(None, manager, 2, 2, enable_deep_supervision=False)
    widths = [stage[0].convs[0].conv.out_channels for stage in net.encoder.stages]
    assert widths == [8, 16, 32]
    assert manager.configuration["architecture"]["arch_kwargs"]["features_per_stage"] == [32, 64, 128]
    stock = nnUNetTrainer.build_network_architecture(None, manager, 2, 2, False)
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in stock.parameters()) / 10


def test_generated_module_text_and_its_guards(tmp_path):
    classes = [TrainerClass("ArmStudy", (("clips_nnunet.trainers.mixins", "BudgetMixin"),
                                         ("clips_nnunet.trainers.base", "nnUNetTrainerClipsBase")),
                            (("budget_epochs", 3), ("ratios", [0.5, 1.0]), ("name", "x'y"), ("flag", None))),
               TrainerClass("Bare", (("clips_nnunet.trainers.base", "nnUNetTrainerClipsBase"),))]
    text = trainer_module_source(classes, 'Made by a test """quoted""".')
    assert text.splitlines()[1:4] == ['"""', "from clips_nnunet.trainers.mixins import BudgetMixin",
                                      "from clips_nnunet.trainers.base import nnUNetTrainerClipsBase"]
    assert "class ArmStudy(BudgetMixin, nnUNetTrainerClipsBase):\n    budget_epochs = 3\n    ratios = [0.5, 1.0]\n" \
           "    name = \"x'y\"\n    flag = None\n" in text
    assert "class Bare(nnUNetTrainerClipsBase):\n    pass\n" in text
    namespace: dict = {}
    exec(compile(text, "gen", "exec"), namespace)
    assert namespace["ArmStudy"].budget_epochs == 3 and namespace["ArmStudy"].name == "x'y"
    for bad_value in (object(), math.nan, float("inf")):
        with pytest.raises(ClipsError, match="not a plain literal"):
            trainer_module_source([TrainerClass("A", (("m", "B"),), (("x", bad_value),))], "d")
    with pytest.raises(ClipsError, match="not an importable name"):
        trainer_module_source([TrainerClass("A", (("m; import os", "B"),))], "d")
    with pytest.raises(ClipsError, match="not a plain identifier"):
        trainer_module_source([TrainerClass("A", (("m", "B"),), (("__init__", 1),))], "d")
    with pytest.raises(ClipsError, match="not an identifier"):
        trainer_module_source([TrainerClass("A B", (("m", "B"),))], "d")
