"""The study's arms as nnU-Net trainers: find each arm's trainer class, write its budget subclass.

``{name}Study`` derives from :class:`~clips_nnunet.trainers.mixins.DrawnKeysMixin`,
:class:`~clips_nnunet.trainers.mixins.BudgetMixin` and the arm's trainer class; the generated file
(``study_dir/ext/clips_study_trainers.py``, listed in ``nnUNet_extTrainer``) holds only imports and class
attributes (the budget and the arm's overrides). With ``validation_mirroring: false`` every arm also derives first
from :class:`~clips_nnunet.study.validation.NoMirrorValidationMixin`. Seeding is the trainer's own ``CLIPS_SEED`` (clips trainers).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from clips_nnunet.io_utils import atomic_write_text
from clips_nnunet.nnunet_env import EXT_TRAINER_DIR
from clips_nnunet.study.config import StudyConfig, StudyConfigError
from clips_nnunet.trainers.mixins import TrainerClass, trainer_module_source

__all__ = ["GENERATED_MODULE", "resolve_trainer_module", "study_trainer_classes", "write_study_trainers",
           "resolve_arms"]

GENERATED_MODULE = "clips_study_trainers.py"
MIXINS = "clips_nnunet.trainers.mixins"
VALIDATION_MIXIN = ("clips_nnunet.study.validation", "NoMirrorValidationMixin")


def _fast_trainer_module(class_name: str) -> Optional[str]:
    """Shortcut for the common cases (nnU-Net's own ``nnUNetTrainer``; classes of our shim) without importing every
    trainer module of nnunetv2, which takes minutes on a busy machine."""
    candidates = ["nnunetv2.training.nnUNetTrainer.nnUNetTrainer"] if class_name == "nnUNetTrainer" else []
    candidates += [f"clips_nnunet.nnunet_ext.{p.stem}" for p in sorted(EXT_TRAINER_DIR.glob("*.py"))
                   if not p.stem.startswith("_")]
    for name in candidates:
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a shim that fails to import falls back to nnU-Net's lookup
            continue
        cls = getattr(module, class_name, None)
        if isinstance(cls, type):
            return cls.__module__
    return None


def resolve_trainer_module(class_name: str, ext_folders: Sequence[str]) -> Optional[str]:
    """Importable module of a trainer class, found with nnU-Net's own lookup (nnunetv2's trainers first, then each
    ext folder, as ``recursive_find_trainer_class_by_name`` does). ``None`` when absent or not importable by name
    (classes defined directly in an ext folder module vanish from ``sys.modules`` after nnU-Net's lookup)."""
    from os.path import join

    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    fast = _fast_trainer_module(class_name)
    if fast is not None:
        return fast
    cls = recursive_find_python_class(join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), class_name,
                                      "nnunetv2.training.nnUNetTrainer", nnunetv2.__path__[0])
    for folder in ext_folders:
        if cls is not None:
            break
        if folder.strip() and Path(folder).is_dir():
            cls = recursive_find_python_class(folder, class_name, None, base_folder=folder,
                                              cleanup_imports_from_base_folder=True)
    if cls is None:  # not (yet) listed in the shim: look in the clips_nnunet.trainers package itself
        import clips_nnunet.trainers as pkg

        cls = recursive_find_python_class(pkg.__path__[0], class_name, "clips_nnunet.trainers")
    if cls is None:
        return None
    try:
        module = importlib.import_module(cls.__module__)
    except ImportError:
        return None
    return cls.__module__ if isinstance(getattr(module, class_name, None), type) else None


def study_trainer_classes(config: StudyConfig, modules: Mapping[str, str]) -> List[TrainerClass]:
    """One budget subclass per arm in ``modules`` (arm name -> importable module of its trainer class)."""
    def budget(spec):  # the arm's budget_factor multiplies the epochs (the convergence ladder's 2x rung)
        return (("budget_epochs", config.epochs * spec.budget_factor),
                ("budget_iterations_per_epoch", config.iterations_per_epoch),
                ("budget_val_iterations_per_epoch", config.val_iterations_per_epoch))

    first = () if config.validation_mirroring else (VALIDATION_MIXIN,)
    return [TrainerClass(spec.class_name, first + ((MIXINS, "DrawnKeysMixin"), (MIXINS, "BudgetMixin"),
                                                   (modules[spec.name], spec.trainer)),
                         budget(spec) + tuple(spec.overrides))
            for spec in config.trainers if spec.name in modules]


def write_study_trainers(config: StudyConfig, modules: Mapping[str, str], ext_dir: Path) -> Path:
    """Write the generated module with one ``{name}Study`` budget subclass per arm in ``modules``.

    ``modules`` maps arm name -> importable module of its base trainer class. Returns the module path.
    """
    doc = (f"Generated by clips-nnunet study for study {config.name!r}: budget subclasses, one per arm "
           f"({config.epochs} epochs x {config.iterations_per_epoch} iterations, {config.val_iterations_per_epoch} "
           f"validation iterations; epochs times an arm's budget_factor). Do not edit: the behaviour is in {MIXINS}.")
    path = Path(ext_dir) / GENERATED_MODULE
    atomic_write_text(path, trainer_module_source(study_trainer_classes(config, modules), doc))
    return path


def _is_clips_trainer(module: str, class_name: str) -> bool:
    cls = getattr(importlib.import_module(module), class_name)
    return callable(getattr(cls, "clips_seed", None))


def _check_overrides(arm: str, class_name: str, module: str, names: Sequence[str]) -> None:
    """Refuse overrides that are not class attributes of the arm's trainer: the budget subclass sets them as class
    attributes, which change nothing for an attribute the trainer only sets in ``__init__`` (nnU-Net's
    ``oversample_foreground_percent``, ``initial_lr``, ... : a silent no-op otherwise)."""
    cls = getattr(importlib.import_module(module), class_name)
    unknown = [n for n in names if not hasattr(cls, n)]
    if unknown:
        raise StudyConfigError(f"arm {arm!r}: overrides {', '.join(unknown)} are not class attributes of {class_name} "
                               "(nnU-Net sets such attributes in __init__, so a class attribute would change "
                               "nothing); use a trainer class that sets them")


def resolve_arms(config: StudyConfig, ext_folders: Sequence[str], echo: bool = True
                 ) -> Tuple[Dict[str, str], List[str]]:
    """``({arm: module of its trainer class}, [arms that cannot run])``.

    An arm whose class nnU-Net cannot find is skipped with a warning (``skip_missing_trainers``) or refused; an arm
    whose teacher cannot run is skipped; the baseline must run. Arms whose trainer is not a clips trainer are not
    seeded by ``CLIPS_SEED`` (a warning says so)."""
    modules: Dict[str, str] = {}
    missing: List[str] = []
    for spec in config.trainers:
        module = resolve_trainer_module(spec.trainer, ext_folders)
        if module is None:
            msg = (f"trainer class {spec.trainer!r} (arm {spec.name!r}) is not found by nnU-Net's lookup "
                   f"(nnunetv2 trainers and nnUNet_extTrainer={os.pathsep.join(ext_folders)})")
            if not config.skip_missing_trainers:
                raise StudyConfigError(msg + "; install it or remove the arm")
            print(f"[study] WARNING: {msg}; the arm is skipped", flush=True)
            missing.append(spec.name)
            continue
        modules[spec.name] = module
        _check_overrides(spec.name, spec.trainer, module, [k for k, _ in spec.overrides])
        if echo and not _is_clips_trainer(module, spec.trainer):
            print(f"[study] WARNING: arm {spec.name!r} derives from {spec.trainer}, which is not a clips trainer: "
                  "CLIPS_SEED does not seed it (use trainer: nnUNetTrainerClipsBase for a seeded stock baseline)",
                  flush=True)
    if config.baseline not in modules:
        raise StudyConfigError(f"the baseline arm {config.baseline!r} cannot run (its trainer class is missing)")
    for spec in config.trainers:
        if spec.name in modules and spec.teacher and spec.teacher not in modules:
            print(f"[study] WARNING: arm {spec.name!r} needs teacher {spec.teacher!r}, which cannot run; skipped")
            modules.pop(spec.name)
            missing.append(spec.name)
    return modules, missing
