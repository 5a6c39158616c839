"""Mixins for budget subclasses of any nnU-Net trainer: a fixed budget, a narrower U-Net, and a record
of the drawn case keys. Used by the demo and the study (``clips_nnunet.demo``, ``clips_nnunet.study``).

The nnU-Net way to change one thing is a small subclass, found by name through ``nnUNet_extTrainer``. The demo
and the study write such subclasses into an extension folder, one line per class and attribute, built from data
by :func:`trainer_module_source`::

    from clips_nnunet.trainers.mixins import BudgetMixin
    from clips_nnunet.trainers.self_paced_trainers import nnUNetTrainerCLSelfPaced

    class nnUNetTrainerCLSelfPacedStudy(BudgetMixin, nnUNetTrainerCLSelfPaced):
        budget_epochs = 3
        budget_iterations_per_epoch = 4

All behaviour lives here (importable, tested); the generated files hold only imports and class attributes.
Mixins go first in the bases so that they run around the trainer's own methods. Seeding is the trainer's own
(``CLIPS_SEED``, :class:`clips_nnunet.trainers.base.nnUNetTrainerClipsBase`); these mixins never seed.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from clips_nnunet.errors import ClipsError
from clips_nnunet.io_utils import atomic_write_json

__all__ = ["BudgetMixin", "FeaturesDivisorMixin", "DrawnKeysMixin", "scaled_features", "patch_within_plan",
           "TrainerClass", "trainer_module_source", "class_attributes"]

#: Smallest number of features per stage a narrower U-Net keeps (InstanceNorm and the decoder need a few).
MIN_FEATURES = 4


def scaled_features(features: Sequence[int], divisor: int) -> List[int]:
    """Features per stage of a U-Net ``divisor`` times narrower (at least :data:`MIN_FEATURES` per stage):
    ``scaled_features([32, 64, 320], 4) == [8, 16, 80]``."""
    if isinstance(divisor, bool) or int(divisor) != divisor or divisor < 1:
        raise ClipsError(f"features_divisor must be an integer >= 1, got {divisor!r}")
    return [max(MIN_FEATURES, int(f) // int(divisor)) for f in features]


def patch_within_plan(patch_size: Sequence[int], planned: Sequence[int], strides: Sequence[Any]) -> List[int]:
    """``patch_size`` with each axis at most the ``planned`` one and rounded down to a multiple (at least one) of
    the network's total downsampling on that axis (the product of ``strides``, each a number or one per axis)."""
    patch = []
    for axis, (want, have) in enumerate(zip(patch_size, planned)):
        step = 1
        for stride in strides:
            step *= int(stride[axis] if isinstance(stride, (list, tuple)) else stride)
        patch.append(max(step, (min(int(want), int(have)) // step) * step))
    return patch


class BudgetMixin:
    """A fixed budget: ``num_epochs``, ``num_iterations_per_epoch`` and ``num_val_iterations_per_epoch`` from the
    class attributes below (``None`` keeps the trainer's own value). Set after the trainer's ``__init__``, so a
    trainer that sets its own iterations (the TMTV recipe) is overridden too.

    On the CPU, ``OMP_NUM_THREADS`` (when set) is the number of PyTorch threads: ``nnUNetv2_train -device cpu``
    gives every run all cores (``torch.set_num_threads(cpu_count())``), and runs sharing a machine then spin
    against each other (seen here: two 2-thread runs on 2 shared cores had not finished their first 25-iteration
    epoch after 3 minutes; one alone needs 5 s)."""

    budget_epochs: Optional[int] = None
    budget_iterations_per_epoch: Optional[int] = None
    budget_val_iterations_per_epoch: Optional[int] = None

    # nnU-Net stores the constructor's arguments by reading its signature: keep nnUNetTrainer's exact one
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for attribute, value in (("num_epochs", self.budget_epochs),
                                 ("num_iterations_per_epoch", self.budget_iterations_per_epoch),
                                 ("num_val_iterations_per_epoch", self.budget_val_iterations_per_epoch)):
            if value is not None:
                setattr(self, attribute, int(value))
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if self.device.type == "cpu" and threads.isdigit() and int(threads) > 0:
            torch.set_num_threads(int(threads))


class FeaturesDivisorMixin:
    """The planned U-Net with ``features_per_stage`` divided by ``features_divisor`` (:func:`scaled_features`):
    a narrower network for CPUs, same patch size and depth. ``nnUNetv2_predict`` rebuilds the same network from the
    trainer class (``build_network_architecture`` is called on the class at inference)."""

    features_divisor: int = 1

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

        if cls.features_divisor != 1:
            configuration = copy.deepcopy(configuration_manager.configuration)
            arch_kwargs = configuration["architecture"]["arch_kwargs"]
            if "features_per_stage" not in arch_kwargs:
                raise ClipsError(f"{cls.__name__}: features_divisor needs a network with features_per_stage "
                                 f"(nnU-Net's U-Nets); {configuration['architecture'].get('network_class_name')} "
                                 "has none")
            arch_kwargs["features_per_stage"] = scaled_features(arch_kwargs["features_per_stage"],
                                                                cls.features_divisor)
            configuration_manager = ConfigurationManager(configuration)
        return super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                  num_output_channels, enable_deep_supervision)


class DrawnKeysMixin:
    """Record the case keys of every training batch in ``drawn_keys_file`` of the fold folder (with the trainer's
    seed, ``clips_seed()`` for clips trainers, else null), so that reproducibility can be checked run against run."""

    drawn_keys_file: str = "study_drawn_keys.json"
    drawn_keys: Optional[List[List[str]]] = None  # per instance once the first batch is drawn

    def train_step(self, batch: dict) -> dict:
        keys = batch.get("keys")
        if keys is not None:
            if getattr(self, "drawn_keys", None) is None:
                self.drawn_keys = []
            self.drawn_keys.append([str(k) for k in keys])
        return super().train_step(batch)

    def on_train_end(self):
        super().on_train_end()
        if self.local_rank == 0:
            seed = self.clips_seed() if hasattr(self, "clips_seed") else None
            atomic_write_json(os.path.join(self.output_folder, self.drawn_keys_file),
                              {"seed": seed, "keys": getattr(self, "drawn_keys", None) or []})


# ---------------------------------------------------------------------------------------------- generated modules

@dataclass(frozen=True)
class TrainerClass:
    """One generated subclass: ``name``, its bases as ``(module, class name)`` in order, and class attributes
    (values with a Python literal form: numbers, strings, booleans, None, lists/tuples/dicts of those)."""

    name: str
    bases: Tuple[Tuple[str, str], ...]
    attributes: Tuple[Tuple[str, Any], ...] = ()


def _literal(value: Any, where: str) -> str:
    """``repr`` of a literal value, refused when it would not read back as the same value."""
    import ast

    text = repr(value)
    try:
        same = ast.literal_eval(text) == value
    except (ValueError, SyntaxError):
        same = False
    if not same or (isinstance(value, float) and not math.isfinite(value)):
        raise ClipsError(f"{where} = {value!r} is not a plain literal (number, string, bool, None or a list of them)")
    return text


def trainer_module_source(classes: Sequence[TrainerClass], docstring: str) -> str:
    """Source of an extension module: the docstring, one import per base class, one ``class`` line per trainer
    followed by its ``attribute = literal`` lines. Names are checked to be identifiers; the text is compiled before
    it is returned."""
    imports: Dict[Tuple[str, str], str] = {}
    for cls in classes:
        for module, name in cls.bases:
            if not (all(p.isidentifier() for p in module.split(".")) and name.isidentifier()):
                raise ClipsError(f"base class {module}.{name} of {cls.name} is not an importable name")
            imports.setdefault((module, name), name)
    if len(set(imports.values())) != len(imports):
        raise ClipsError(f"two base classes share a name: {sorted(imports)}")
    lines = ['"""' + docstring.replace('"""', "'''").rstrip() + '\n"""']
    lines += [f"from {module} import {name}" for module, name in imports]
    for cls in classes:
        if not cls.name.isidentifier():
            raise ClipsError(f"generated class name {cls.name!r} is not an identifier")
        lines += ["", "", f"class {cls.name}({', '.join(name for _, name in cls.bases)}):"]
        for attribute, value in cls.attributes:
            if not attribute.isidentifier() or attribute.startswith("__"):
                raise ClipsError(f"{cls.name}: attribute name {attribute!r} is not a plain identifier")
            lines.append(f"    {attribute} = {_literal(value, f'{cls.name}.{attribute}')}")
        if not cls.attributes:
            lines.append("    pass")
    text = "\n".join(lines) + "\n"
    compile(text, "<generated trainers>", "exec")
    return text


def class_attributes(mapping: Mapping[str, Any]) -> Tuple[Tuple[str, Any], ...]:
    """``mapping`` as the ordered attribute tuple of :class:`TrainerClass` (``None`` values left out)."""
    return tuple((k, v) for k, v in mapping.items() if v is not None)
