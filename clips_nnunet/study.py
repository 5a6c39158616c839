"""Curriculum study harness: does a curriculum beat the baseline at the same training budget?

A study is one YAML file (see ``benchmarks/learning/``). The harness

1. prepares the dataset (an existing nnU-Net dataset id, or the tiny synthetic generator
   :func:`clips_nnunet.synthetic.raw.make_synthetic_raw_dataset`, or the DICOM cohort generator
   ``clips-nnunet synth`` + ``clips-nnunet convert``), runs ``nnUNetv2_plan_and_preprocess`` and optionally writes a
   difficulty-stratified ``splits_final.json``;
2. generates one *budget subclass* per trainer in a study ext folder (``study_dir/ext/clips_study_trainers.py``):
   ``{name}Study`` derives from the trainer class, sets ``num_epochs``, ``num_iterations_per_epoch``,
   ``num_val_iterations_per_epoch`` and any class-attribute overrides of the config, seeds Python, NumPy and torch
   from ``CLIPS_SEED`` (plus the fold) and records the case keys drawn in every training batch
   (``fold_X/study_drawn_keys.json``) so that reproducibility can be checked;
3. runs every (trainer, fold, seed) through nnU-Net's own ``nnUNetv2_train`` as a subprocess, each seed into its own
   results root ``study_dir/seed_S/nnUNet_results`` with ``CLIPS_SEED=S``. A finished run (``checkpoint_final.pth``
   and ``validation/summary.json``) is skipped; an interrupted one continues with ``--c``;
4. for transfer-teacher trainers, first trains the teacher (normally the baseline) on *all* folds at the teacher seed,
   scores each case by the out-of-fold prediction of the fold model that never saw it (``clips-nnunet score``, or
   1 - Dice computed here when that command is missing), and passes the CSV in ``CLIPS_DIFFICULTY_CSV``;
5. evaluates every out-of-fold prediction against nnU-Net's ``gt_segmentations`` (Dice, TMTV, false-positive and
   false-negative volumes as autoPET defines them) and writes one Markdown + PNG report with paired Wilcoxon
   signed-rank tests against the baseline and the controls, overall and on the hardest third of the cases.

Every nnU-Net command is printed before it runs, so it can be copied.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from clips_nnunet.errors import ClipsError, DatasetError
from clips_nnunet.io_utils import atomic_write_json, atomic_write_text, read_json

__all__ = [
    "StudyConfigError", "TrainerSpec", "StudyConfig", "load_study_config", "parse_study_config",
    "study_class_name", "write_study_trainers", "RunSpec", "plan_runs", "run_is_finished", "build_train_command",
    "run_study", "study_groups", "write_report", "publish_report", "add_derived_configuration", "prepare_dataset",
]

GENERATED_MODULE = "clips_study_trainers.py"
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
DATASET_SOURCES = ("existing", "synthetic_raw", "synth_dicom")


class StudyConfigError(ClipsError, ValueError):
    """The study configuration is invalid (names the key and what to do)."""


# --------------------------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TrainerSpec:
    """One arm of the study.

    ``name`` labels the arm in the report and names the generated budget subclass (``{name}Study``);
    ``trainer`` is the nnU-Net trainer class it derives from (found with nnU-Net's own lookup, ext folders
    included); ``overrides`` are class attributes set on the subclass (the nnU-Net way of changing a
    hyper-parameter); ``teacher`` names the arm whose out-of-fold predictions give the difficulty
    (transfer teacher / bootstrapping).
    """

    name: str
    trainer: str
    overrides: Tuple[Tuple[str, Any], ...] = ()
    teacher: Optional[str] = None

    @property
    def class_name(self) -> str:
        return study_class_name(self.name)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """A validated study configuration (see :func:`parse_study_config` for the YAML keys)."""

    name: str
    study_dir: Path
    dataset_id: int
    dataset_name: str
    dataset_source: str
    dataset_options: Mapping[str, Any]
    n_splits: Optional[int]
    configuration: str
    plans: str
    trainers: Tuple[TrainerSpec, ...]
    baseline: str
    controls: Tuple[str, ...]
    folds: Tuple[int, ...]
    seeds: Tuple[int, ...]
    epochs: int
    iterations_per_epoch: int
    val_iterations_per_epoch: int
    device: str
    teacher_seed: int
    difficulty_key: Optional[str]
    skip_missing_trainers: bool
    run_timeout_s: Optional[float]
    n_proc_da: int
    parallel_runs: int = 1
    derive_from: Optional[str] = None
    features_divisor: int = 1

    @property
    def preprocess_configuration(self) -> str:
        """The nnU-Net configuration that is preprocessed (the derived one shares its data)."""
        return self.derive_from or self.configuration

    def trainer(self, name: str) -> TrainerSpec:
        for spec in self.trainers:
            if spec.name == name:
                return spec
        raise StudyConfigError(f"no trainer named {name!r} in 'trainers' (known: {[t.name for t in self.trainers]})")

    @property
    def dataset_folder_name(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.dataset_name}"

    @property
    def budget_iterations(self) -> int:
        return self.epochs * self.iterations_per_epoch


def study_class_name(name: str) -> str:
    """Name of the generated budget subclass of an arm: ``{name}Study`` (never contains ``__``)."""
    return f"{name}Study"


def _req(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in mapping or mapping[key] is None:
        raise StudyConfigError(f"study config: '{where}{key}' is missing; add it (see benchmarks/learning/README.md)")
    return mapping[key]


def _positive_int(value: Any, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise StudyConfigError(f"study config: '{key}' must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _int_list(value: Any, key: str, minimum: int = 0) -> Tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise StudyConfigError(f"study config: '{key}' must be a non-empty list of integers, got {value!r}")
    out = tuple(_positive_int(v, key, minimum) for v in value)
    if len(set(out)) != len(out):
        raise StudyConfigError(f"study config: '{key}' has duplicates: {list(out)}; list each value once")
    return out


def parse_study_config(raw: Mapping[str, Any], base_dir: Optional[Path] = None,
                       study_dir: Optional[Path] = None) -> StudyConfig:
    """Validate a study configuration mapping (the parsed YAML) and return a :class:`StudyConfig`.

    Keys (``*`` required): ``name``; ``study_dir`` (relative paths are relative to ``base_dir``, the config file's
    folder; the ``study_dir`` argument wins); ``dataset*`` {``id*``, ``name``, ``source``: existing | synthetic_raw |
    synth_dicom, ``options``: generator keyword arguments, ``n_splits``}; ``configuration`` (3d_fullres);
    ``plans`` (nnUNetPlans); ``trainers*``: list of {``name*``, ``trainer`` (default = name), ``overrides``,
    ``teacher``}; ``baseline*``; ``controls``; ``folds`` ([0]); ``seeds*``; ``budget*`` {``epochs*``,
    ``iterations_per_epoch*``, ``val_iterations_per_epoch`` (2)}; ``device`` (auto | cpu | cuda); ``teacher_seed``
    (first seed); ``difficulty_key`` (case_metadata.json key for the hardest third; default: teacher difficulty);
    ``skip_missing_trainers`` (true); ``run_timeout_s``; ``n_proc_da`` (0); ``parallel_runs`` (1: runs at once);
    ``derive_configuration`` {``from``: 3d_fullres, ``features_divisor``: 4}: ``configuration`` is then added to the
    plans as a smaller network inheriting ``from`` (same preprocessed data, features per stage divided), for
    studies on CPUs.
    """
    if not isinstance(raw, Mapping):
        raise StudyConfigError(f"study config must be a mapping (YAML dictionary), got {type(raw).__name__}")
    known = {"name", "study_dir", "dataset", "configuration", "plans", "trainers", "baseline", "controls", "folds",
             "seeds", "budget", "device", "teacher_seed", "difficulty_key", "skip_missing_trainers",
             "run_timeout_s", "n_proc_da", "parallel_runs", "derive_configuration", "description"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise StudyConfigError(f"study config: unknown key(s) {unknown}; known keys are {sorted(known)}")
    name = str(raw.get("name") or "study")
    base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
    if study_dir is None:
        study_dir = Path(raw.get("study_dir") or f"study_runs/{name}")
        if not study_dir.is_absolute():
            study_dir = base_dir / study_dir
    study_dir = Path(study_dir).resolve()

    dataset = _req(raw, "dataset", "")
    if not isinstance(dataset, Mapping):
        raise StudyConfigError("study config: 'dataset' must be a mapping with at least 'id'")
    dataset_id = _positive_int(_req(dataset, "id", "dataset."), "dataset.id")
    if dataset_id > 999:
        raise StudyConfigError(f"study config: 'dataset.id' must be 1..999 (nnU-Net dataset ids), got {dataset_id}")
    source = str(dataset.get("source", "existing"))
    if source not in DATASET_SOURCES:
        raise StudyConfigError(f"study config: 'dataset.source' must be one of {DATASET_SOURCES}, got {source!r}")
    dataset_name = str(dataset.get("name") or ("ClipsStudy" if source != "existing" else ""))
    if source != "existing" and not _NAME_RE.match(dataset_name):
        raise StudyConfigError(f"study config: 'dataset.name' must be letters/digits/underscores, got {dataset_name!r}")
    options = dataset.get("options") or {}
    if not isinstance(options, Mapping):
        raise StudyConfigError("study config: 'dataset.options' must be a mapping of generator arguments")
    n_splits = dataset.get("n_splits")
    if n_splits is not None:
        n_splits = _positive_int(n_splits, "dataset.n_splits", 2)

    trainers_raw = _req(raw, "trainers", "")
    if not isinstance(trainers_raw, list) or not trainers_raw:
        raise StudyConfigError("study config: 'trainers' must be a non-empty list of {name, trainer, ...}")
    trainers: List[TrainerSpec] = []
    for i, t in enumerate(trainers_raw):
        if isinstance(t, str):
            t = {"name": t}
        if not isinstance(t, Mapping):
            raise StudyConfigError(f"study config: trainers[{i}] must be a name or a mapping, got {t!r}")
        bad = sorted(set(t) - {"name", "trainer", "overrides", "teacher"})
        if bad:
            raise StudyConfigError(f"study config: trainers[{i}] has unknown key(s) {bad}; "
                                   "use name, trainer, overrides, teacher")
        tname = str(_req(t, "name", f"trainers[{i}]."))
        tclass = str(t.get("trainer") or tname)
        for label, value in (("name", tname), ("trainer", tclass)):
            if not _NAME_RE.match(value) or "__" in value:
                raise StudyConfigError(f"study config: trainers[{i}].{label} = {value!r} must be a Python identifier "
                                       "without '__' (nnU-Net splits result folders on '__')")
        overrides = t.get("overrides") or {}
        if not isinstance(overrides, Mapping) or not all(isinstance(k, str) and k.isidentifier() for k in overrides):
            raise StudyConfigError(f"study config: trainers[{i}].overrides must map attribute names to values")
        for k, v in overrides.items():
            if not isinstance(v, (int, float, str, bool, list, type(None))):
                raise StudyConfigError(f"study config: trainers[{i}].overrides.{k} must be a number, string, bool, "
                                       f"list or null, got {type(v).__name__}")
        trainers.append(TrainerSpec(tname, tclass, tuple(sorted(overrides.items())), t.get("teacher")))
    names = [t.name for t in trainers]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise StudyConfigError(f"study config: trainer names must be unique, duplicated: {dupes}")
    for t in trainers:
        if t.teacher is not None and t.teacher not in names:
            raise StudyConfigError(f"study config: trainer {t.name!r} has teacher {t.teacher!r}, which is not one of "
                                   f"the trainers {names}")
        if t.teacher == t.name:
            raise StudyConfigError(f"study config: trainer {t.name!r} cannot be its own teacher")
    baseline = str(_req(raw, "baseline", ""))
    if baseline not in names:
        raise StudyConfigError(f"study config: baseline {baseline!r} is not one of the trainers {names}")
    controls = tuple(str(c) for c in (raw.get("controls") or []))
    for c in controls:
        if c not in names:
            raise StudyConfigError(f"study config: control {c!r} is not one of the trainers {names}")

    folds = _int_list(raw.get("folds", [0]), "folds", 0)
    if n_splits is not None and max(folds) >= n_splits:
        raise StudyConfigError(f"study config: fold {max(folds)} does not exist with dataset.n_splits = {n_splits}")
    seeds = _int_list(_req(raw, "seeds", ""), "seeds", 0)
    budget = _req(raw, "budget", "")
    if not isinstance(budget, Mapping):
        raise StudyConfigError("study config: 'budget' must be a mapping {epochs, iterations_per_epoch}")
    epochs = _positive_int(_req(budget, "epochs", "budget."), "budget.epochs")
    iters = _positive_int(_req(budget, "iterations_per_epoch", "budget."), "budget.iterations_per_epoch")
    val_iters = _positive_int(budget.get("val_iterations_per_epoch", 2), "budget.val_iterations_per_epoch")
    device = str(raw.get("device", "auto"))
    if device not in ("auto", "cpu", "cuda"):
        raise StudyConfigError(f"study config: 'device' must be auto, cpu or cuda, got {device!r}")
    teacher_seed = raw.get("teacher_seed", seeds[0])
    teacher_seed = _positive_int(teacher_seed, "teacher_seed", 0)
    timeout = raw.get("run_timeout_s")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise StudyConfigError(f"study config: 'run_timeout_s' must be a positive number of seconds, got {timeout!r}")
    derive = raw.get("derive_configuration")
    derive_from, divisor = None, 1
    if derive is not None:
        if not isinstance(derive, Mapping) or not derive.get("from"):
            raise StudyConfigError("study config: 'derive_configuration' must be {from: 3d_fullres, "
                                   "features_divisor: N}")
        derive_from = str(derive["from"])
        divisor = _positive_int(derive.get("features_divisor", 1), "derive_configuration.features_divisor")
        if derive_from == str(raw.get("configuration", "3d_fullres")):
            raise StudyConfigError("study config: 'configuration' must be a new name (e.g. 3d_study) when "
                                   f"'derive_configuration.from' is {derive_from!r}")
    return StudyConfig(
        derive_from=derive_from, features_divisor=divisor,
        name=name, study_dir=study_dir, dataset_id=dataset_id, dataset_name=dataset_name, dataset_source=source,
        dataset_options=dict(options), n_splits=n_splits, configuration=str(raw.get("configuration", "3d_fullres")),
        plans=str(raw.get("plans", "nnUNetPlans")), trainers=tuple(trainers), baseline=baseline, controls=controls,
        folds=folds, seeds=seeds, epochs=epochs, iterations_per_epoch=iters, val_iterations_per_epoch=val_iters,
        device=device, teacher_seed=teacher_seed, difficulty_key=raw.get("difficulty_key"),
        skip_missing_trainers=bool(raw.get("skip_missing_trainers", True)),
        run_timeout_s=float(timeout) if timeout is not None else None,
        n_proc_da=_positive_int(raw.get("n_proc_da", 0), "n_proc_da", 0),
        parallel_runs=_positive_int(raw.get("parallel_runs", 1), "parallel_runs"))


def load_study_config(path: Path, study_dir: Optional[Path] = None) -> StudyConfig:
    """Read and validate a study YAML file (relative ``study_dir`` is resolved against the file's folder)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise StudyConfigError(f"study config file {path} does not exist; see benchmarks/learning/*.yaml for examples")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise StudyConfigError(f"study config file {path} is not valid YAML: {e}") from e
    return parse_study_config(raw, base_dir=path.resolve().parent, study_dir=study_dir)


# --------------------------------------------------------------------------------------------------------------------
# generated trainers
# --------------------------------------------------------------------------------------------------------------------

_TEMPLATE_HEADER = '''"""Generated by clips_nnunet.study for study {study!r}: budget subclasses, one per arm. Do not edit.

Each class: the budget ({epochs} epochs x {iters} iterations, {val_iters} validation iterations), the arm's class
attribute overrides, seeding of Python/NumPy/torch from CLIPS_SEED (+ fold) and a record of the drawn case keys.
"""
import json
import os
import random

import numpy as np
import torch

from clips_nnunet.io_utils import atomic_write_json


def _study_seed_everything(fold):
    seed = os.environ.get("CLIPS_SEED")
    if seed is None or seed == "":
        return None
    value = int(seed) * 1000 + (int(fold) if str(fold).isdigit() else 0)
    random.seed(value)
    np.random.seed(value % (2 ** 32))
    torch.manual_seed(value)
    return value


class _StudyBudgetMixin:
    """Budget, seeding and drawn-key record shared by the generated classes."""

    study_epochs = {epochs}
    study_iterations_per_epoch = {iters}
    study_val_iterations_per_epoch = {val_iters}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # nnU-Net reads the constructor's signature to store its init kwargs: keep nnUNetTrainer's exact one
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.study_epochs
        self.num_iterations_per_epoch = self.study_iterations_per_epoch
        self.num_val_iterations_per_epoch = self.study_val_iterations_per_epoch
        # clips trainers seed themselves from CLIPS_SEED (nnUNetTrainerClipsBase.initialize); others are seeded here
        self.study_seed = self.clips_seed() if hasattr(self, "clips_seed") else _study_seed_everything(self.fold)
        self.study_drawn_keys = []

    def train_step(self, batch):
        keys = batch.get("keys")
        if keys is not None:
            self.study_drawn_keys.append([str(k) for k in keys])
        return super().train_step(batch)

    def on_train_end(self):
        super().on_train_end()
        if self.local_rank == 0:
            atomic_write_json(os.path.join(self.output_folder, "study_drawn_keys.json"),
                              {{"seed": self.study_seed, "keys": self.study_drawn_keys}})
'''

_TEMPLATE_CLASS = '''

from {module} import {base} as _Base_{cls}


class {cls}(_StudyBudgetMixin, _Base_{cls}):
    """Study arm {name!r}: {base} with the study budget{extra}."""
{body}
'''


def _resolve_trainer_module(class_name: str, ext_folders: Sequence[str]) -> Optional[str]:
    """Importable module of a trainer class, found with nnU-Net's own lookup (nnunetv2's trainers first, then each
    ext folder, as ``recursive_find_trainer_class_by_name`` does). ``None`` when absent or not importable by name
    (classes defined directly in an ext folder module vanish from ``sys.modules`` after nnU-Net's lookup)."""
    import importlib
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


def _fast_trainer_module(class_name: str) -> Optional[str]:
    """Shortcut for the common cases (nnU-Net's own ``nnUNetTrainer``; classes of our shim) without importing every
    trainer module of nnunetv2, which takes minutes on a busy machine."""
    import importlib

    from clips_nnunet.cli.env import EXT_TRAINER_DIR

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


def write_study_trainers(config: StudyConfig, modules: Mapping[str, str], ext_dir: Path) -> Path:
    """Write the generated module with one ``{name}Study`` budget subclass per arm in ``modules``.

    ``modules`` maps arm name -> importable module of its base trainer class. Returns the module path.
    """
    text = _TEMPLATE_HEADER.format(study=config.name, epochs=config.epochs, iters=config.iterations_per_epoch,
                                   val_iters=config.val_iterations_per_epoch)
    for spec in config.trainers:
        if spec.name not in modules:
            continue
        body = "".join(f"    {k} = {v!r}\n" for k, v in spec.overrides) or "    pass\n"
        extra = (" and overrides " + ", ".join(f"{k}={v!r}" for k, v in spec.overrides)) if spec.overrides else ""
        text += _TEMPLATE_CLASS.format(module=modules[spec.name], base=spec.trainer, cls=spec.class_name,
                                       name=spec.name, extra=extra, body=body)
    path = Path(ext_dir) / GENERATED_MODULE
    atomic_write_text(path, text)
    return path


# --------------------------------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One nnUNetv2_train run: arm, fold, seed and the results root it writes into."""

    trainer: TrainerSpec
    fold: int
    seed: int
    results_root: Path
    purpose: str = "study"  # or "teacher"

    @property
    def label(self) -> str:
        return f"{self.trainer.name} fold {self.fold} seed {self.seed}" + (
            " (teacher)" if self.purpose == "teacher" else "")


def seed_results_root(config: StudyConfig, seed: int) -> Path:
    return config.study_dir / f"seed_{seed}" / "nnUNet_results"


def teacher_results_root(config: StudyConfig) -> Path:
    return config.study_dir / f"teacher_seed_{config.teacher_seed}" / "nnUNet_results"


def trainer_output_dir(config: StudyConfig, results_root: Path, spec: TrainerSpec) -> Path:
    return Path(results_root) / config.dataset_folder_name / f"{spec.class_name}__{config.plans}__{config.configuration}"


def fold_dir(config: StudyConfig, run: RunSpec) -> Path:
    return trainer_output_dir(config, run.results_root, run.trainer) / f"fold_{run.fold}"


def run_is_finished(folder: Path) -> bool:
    """A run is finished when nnU-Net wrote its final checkpoint and its validation summary."""
    folder = Path(folder)
    return (folder / "checkpoint_final.pth").is_file() and (folder / "validation" / "summary.json").is_file()


def plan_runs(config: StudyConfig, available: Optional[Iterable[str]] = None, n_splits: Optional[int] = None
              ) -> List[RunSpec]:
    """All runs in execution order. Teachers first: their study folds at the teacher seed (in the seed root; they
    are also the teacher's runs for those folds), then their other folds (teacher root); then seed by seed (so an
    interrupted study has whole seeds), within a seed the arms in config order."""
    names = set(available) if available is not None else {t.name for t in config.trainers}
    runs: List[RunSpec] = []
    teachers = sorted({t.teacher for t in config.trainers if t.teacher and t.name in names and t.teacher in names})
    for teacher in teachers:
        spec = config.trainer(teacher)
        for fold in teacher_folds(config, n_splits):
            if fold in config.folds and config.teacher_seed in config.seeds:
                runs.append(RunSpec(spec, fold, config.teacher_seed, seed_results_root(config, config.teacher_seed)))
            else:
                runs.append(RunSpec(spec, fold, config.teacher_seed, teacher_results_root(config), "teacher"))
    for seed in config.seeds:
        for spec in config.trainers:
            if spec.name not in names:
                continue
            for fold in config.folds:
                run = RunSpec(spec, fold, seed, seed_results_root(config, seed))
                if run not in runs:
                    runs.append(run)
    return runs


def teacher_folds(config: StudyConfig, n_splits: Optional[int] = None) -> Tuple[int, ...]:
    """Every fold of the split: a teacher must have predicted each case out of fold."""
    return tuple(range(n_splits or config.n_splits or 5))


def build_train_command(config: StudyConfig, run: RunSpec, device: str, resume: bool = False) -> List[str]:
    """The ``nnUNetv2_train`` command line of one run (what a user would type)."""
    cmd = ["nnUNetv2_train", str(config.dataset_id), config.configuration, str(run.fold), "-tr",
           run.trainer.class_name, "-p", config.plans, "-device", device]
    if resume:
        cmd.append("--c")
    return cmd


def study_environment(config: StudyConfig, run: Optional[RunSpec] = None,
                      difficulty_csv: Optional[Path] = None, base_env: Optional[Mapping[str, str]] = None
                      ) -> Dict[str, str]:
    """Environment of the nnU-Net subprocesses: the study's nnUNet_raw/preprocessed, the run's results root,
    the study ext folder after ours, ``CLIPS_SEED`` and (teacher students) ``CLIPS_DIFFICULTY_CSV``."""
    from clips_nnunet.cli.env import ext_trainer_value

    env = dict(os.environ if base_env is None else base_env)
    env["nnUNet_raw"] = str(config.study_dir / "nnUNet_raw")
    env["nnUNet_preprocessed"] = str(config.study_dir / "nnUNet_preprocessed")
    env["nnUNet_results"] = str(run.results_root if run else seed_results_root(config, config.seeds[0]))
    user_ext = [p for p in env.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    ext = ext_trainer_value(os.pathsep.join([str(config.study_dir / "ext"), *user_ext]))
    env["nnUNet_extTrainer"] = ext
    env.setdefault("nnUNet_def_n_proc", "1")
    env["nnUNet_n_proc_DA"] = str(config.n_proc_da)
    env.setdefault("nnUNet_compile", "false")
    env.setdefault("OMP_NUM_THREADS", "1" if config.device != "cuda" else env.get("OMP_NUM_THREADS", "4"))
    if run is not None:
        env["CLIPS_SEED"] = str(run.seed)
    if difficulty_csv is not None:
        env["CLIPS_DIFFICULTY_CSV"] = str(difficulty_csv)
    return env


def _shell_line(cmd: Sequence[str], env: Mapping[str, str]) -> str:
    keys = ["nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "CLIPS_SEED", "CLIPS_DIFFICULTY_CSV"]
    prefix = " ".join(f"{k}={shlex.quote(env[k])}" for k in keys if k in env)
    return f"{prefix} {shlex.join(cmd)}"


def _bin(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def _run_logged(cmd: Sequence[str], env: Mapping[str, str], log_path: Path, timeout: Optional[float],
                echo: bool = True) -> int:
    """Run a command, print it first, append its output to ``log_path``; returns the exit code (124 on timeout)."""
    if echo:
        print(f"$ {_shell_line(cmd, env)}", flush=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n$ {_shell_line(cmd, env)}\n")
        log.flush()
        try:
            proc = subprocess.run([_bin(cmd[0]), *cmd[1:]], env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout)
            return proc.returncode
        except subprocess.TimeoutExpired:
            log.write(f"\n[clips study] timed out after {timeout} s\n")
            return 124


# --------------------------------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------------------------------

def _find_dataset_name(config: StudyConfig) -> str:
    raw = config.study_dir / "nnUNet_raw"
    hits = sorted(raw.glob(f"Dataset{config.dataset_id:03d}_*")) if raw.is_dir() else []
    if not hits:
        raise DatasetError(f"dataset {config.dataset_id} is not in {raw}: for source 'existing', link or copy "
                           f"Dataset{config.dataset_id:03d}_NAME there (or use source synthetic_raw / synth_dicom)")
    return hits[0].name.split("_", 1)[1]


def prepare_dataset(config: StudyConfig, echo: bool = True) -> StudyConfig:
    """Create (synthetic sources), plan and preprocess the dataset once (resumable); write splits if asked.

    Returns the config with the dataset name filled in for source ``existing``.
    """
    raw_root = config.study_dir / "nnUNet_raw"
    pre_root = config.study_dir / "nnUNet_preprocessed"
    raw_root.mkdir(parents=True, exist_ok=True)
    pre_root.mkdir(parents=True, exist_ok=True)
    logs = config.study_dir / "logs"
    if config.dataset_source == "synthetic_raw":
        folder = raw_root / config.dataset_folder_name
        if not (folder / "dataset.json").is_file():
            from clips_nnunet.synthetic.raw import make_synthetic_raw_dataset

            opts = dict(config.dataset_options)
            for key in ("shape", "spacing"):
                if key in opts:
                    opts[key] = tuple(opts[key])
            print(f"[study] generating synthetic dataset {folder} ({opts})", flush=True)
            make_synthetic_raw_dataset(raw_root, config.dataset_id, config.dataset_name, **opts)
    elif config.dataset_source == "synth_dicom":
        folder = raw_root / config.dataset_folder_name
        if not (folder / "dataset.json").is_file():
            cohort = config.study_dir / "cohort_dicom"
            opts = dict(config.dataset_options)
            n = str(opts.pop("n", 40))
            synth = ["clips-nnunet", "synth", str(cohort), "-n", n, *_cli_options(opts)]
            env = study_environment(config)
            if _run_logged(synth, env, logs / "synth.log", None, echo) != 0:
                raise DatasetError(f"clips-nnunet synth failed; see {logs / 'synth.log'}")
            conv = ["clips-nnunet", "convert", str(cohort), "-d", str(config.dataset_id), "-n", config.dataset_name,
                    "--private-dir", str(config.study_dir / "private"), "--resume"]
            if _run_logged(conv, env, logs / "convert.log", None, echo) != 0:
                raise DatasetError(f"clips-nnunet convert failed; see {logs / 'convert.log'}")
    else:
        config = dataclasses.replace(config, dataset_name=config.dataset_name or _find_dataset_name(config))
    pre_folder = pre_root / config.dataset_folder_name
    plans_file = pre_folder / f"{config.plans}.json"
    data_folder = pre_folder / f"{config.plans}_{config.preprocess_configuration}"
    if not (plans_file.is_file() and data_folder.is_dir() and any(data_folder.iterdir())):
        cmd = ["nnUNetv2_plan_and_preprocess", "-d", str(config.dataset_id), "-c", config.preprocess_configuration,
               "-np", "1", "--verify_dataset_integrity"]
        env = study_environment(config)
        env["nnUNet_n_proc_DA"] = "1"  # nnU-Net's planner calls torch.set_num_threads(n_proc_DA): 0 would crash
        if _run_logged(cmd, env, logs / "plan_and_preprocess.log", None, echo) != 0:
            raise DatasetError(f"nnUNetv2_plan_and_preprocess failed; see {logs / 'plan_and_preprocess.log'}")
    if config.n_splits is not None and not (pre_folder / "splits_final.json").is_file():
        write_stratified_splits(config)
    if config.derive_from:
        add_derived_configuration(plans_file, config.configuration, config.derive_from, config.features_divisor)
    return config


def add_derived_configuration(plans_file: Path, name: str, base: str, features_divisor: int) -> Dict[str, Any]:
    """Add configuration ``name`` to an nnU-Net plans file: inherits ``base`` (same preprocessed data, so nothing
    is preprocessed again) with the U-Net's ``features_per_stage`` divided by ``features_divisor`` (at least 4).
    nnU-Net resolves ``inherits_from`` with a shallow update, so the whole ``architecture`` entry is written.
    Idempotent; returns the new configuration entry."""
    import copy

    plans = read_json(plans_file)
    configs = plans.get("configurations", {})
    if base not in configs:
        raise DatasetError(f"{plans_file} has no configuration {base!r} to derive {name!r} from "
                           f"(has {sorted(configs)})")
    resolved = copy.deepcopy(configs[base])
    while "inherits_from" in resolved:  # resolve the base's own inheritance for the architecture entry
        parent = copy.deepcopy(configs[resolved.pop("inherits_from")])
        parent.update(resolved)
        resolved = parent
    arch = copy.deepcopy(resolved["architecture"])
    feats = arch["arch_kwargs"].get("features_per_stage")
    if feats is None:
        raise DatasetError(f"{plans_file}: configuration {base!r} has no architecture.arch_kwargs.features_per_stage")
    arch["arch_kwargs"]["features_per_stage"] = [max(4, int(f) // features_divisor) for f in feats]
    entry = {"inherits_from": base, "architecture": arch}
    if configs.get(name) != entry:
        configs[name] = entry
        atomic_write_json(plans_file, plans)
    return entry


def _cli_options(opts: Mapping[str, Any]) -> List[str]:
    out: List[str] = []
    for k, v in opts.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            if v:
                out.append(flag)
        else:
            out += [flag, str(v)]
    return out


def case_difficulty_from_metadata(config: StudyConfig) -> Dict[str, float]:
    """``difficulty_key`` of every case in the raw dataset's ``case_metadata.json`` (empty if not available)."""
    path = config.study_dir / "nnUNet_raw" / config.dataset_folder_name / "case_metadata.json"
    if not config.difficulty_key or not path.is_file():
        return {}
    meta = read_json(path)
    out = {}
    for case, values in meta.items():
        if isinstance(values, Mapping) and values.get(config.difficulty_key) is not None:
            out[case] = float(values[config.difficulty_key])
    return out


def write_stratified_splits(config: StudyConfig) -> Path:
    """``splits_final.json`` with ``n_splits`` folds. With a known difficulty (``difficulty_key``), cases sorted by
    difficulty are dealt to folds in turn (each fold spans the whole difficulty range); otherwise nnU-Net's own
    seeded KFold. Written only if nnU-Net's preprocessed folder has none."""
    pre_folder = config.study_dir / "nnUNet_preprocessed" / config.dataset_folder_name
    gt = pre_folder / "gt_segmentations"
    keys = sorted(p.name[: -len(".nii.gz")] for p in gt.glob("*.nii.gz"))
    if len(keys) < (config.n_splits or 5):
        raise DatasetError(f"{gt} has {len(keys)} cases, fewer than n_splits = {config.n_splits}")
    difficulty = case_difficulty_from_metadata(config)
    if difficulty and all(k in difficulty for k in keys):
        order = sorted(keys, key=lambda k: (difficulty[k], k))
        folds: List[List[str]] = [[] for _ in range(config.n_splits)]
        for i, key in enumerate(order):
            folds[i % config.n_splits].append(key)
        splits = [{"train": sorted(k for j, f in enumerate(folds) if j != i for k in f), "val": sorted(folds[i])}
                  for i in range(config.n_splits)]
    else:
        from nnunetv2.utilities.crossval_split import generate_crossval_split

        splits = generate_crossval_split(keys, seed=12345, n_splits=config.n_splits)
    path = pre_folder / "splits_final.json"
    atomic_write_json(path, splits)
    return path


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------------------------------------------
# teacher difficulty
# --------------------------------------------------------------------------------------------------------------------

def compute_teacher_difficulty(config: StudyConfig, teacher: TrainerSpec, out_csv: Path, echo: bool = True) -> Path:
    """Difficulty of every case from the teacher's out-of-fold predictions with ``clips-nnunet score`` (1 - Dice of
    the fold model that never trained on the case; CSV ``case_id,difficulty``, higher = harder)."""
    results = trainer_output_dir(config, teacher_results_root(config), teacher)
    env = study_environment(config, RunSpec(teacher, 0, config.teacher_seed, teacher_results_root(config),
                                            "teacher"))
    cmd = ["clips-nnunet", "score", str(results), "-o", str(out_csv), "--metric", "dice"]
    log = config.study_dir / "logs" / "score.log"
    if _run_logged(cmd, env, log, None, echo) != 0 or not out_csv.is_file():
        raise DatasetError(f"clips-nnunet score failed for teacher {teacher.name} ({results}); see {log}")
    return out_csv


def training_cases_difficulty_csv(config: StudyConfig, teacher_csv: Path, fold: int) -> Path:
    """The teacher CSV restricted to the training cases of ``fold`` (the trainer rejects ids it does not train on)."""
    splits = read_json(config.study_dir / "nnUNet_preprocessed" / config.dataset_folder_name / "splits_final.json")
    train = set(splits[fold]["train"])
    with open(teacher_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    out = teacher_csv.with_name(f"{teacher_csv.stem}_fold{fold}_train.csv")
    text = "case_id,difficulty\n" + "".join(f"{r['case_id']},{r['difficulty']}\n" for r in rows
                                             if r["case_id"] in train)
    atomic_write_text(out, text)
    return out


# --------------------------------------------------------------------------------------------------------------------
# orchestration
# --------------------------------------------------------------------------------------------------------------------

def _ensure_teacher_fold_links(config: StudyConfig, teacher: TrainerSpec) -> None:
    """Teacher folds that are also study folds at the teacher seed are the same run: link, do not train twice."""
    for fold in config.folds:
        if config.teacher_seed not in config.seeds:
            continue
        src = fold_dir(config, RunSpec(teacher, fold, config.teacher_seed, seed_results_root(config,
                                                                                              config.teacher_seed)))
        dst = fold_dir(config, RunSpec(teacher, fold, config.teacher_seed, teacher_results_root(config), "teacher"))
        if run_is_finished(src) and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src, dst, target_is_directory=True)


def run_study(config: StudyConfig, dry_run: bool = False, echo: bool = True, max_runs: Optional[int] = None,
              report: bool = True) -> Dict[str, Any]:
    """Run the whole study (resumable) and write the report; returns a status dictionary
    (``runs``: per run label -> finished / skipped / failed / missing, ``report``: report path)."""
    from tqdm import tqdm

    from clips_nnunet.cli.env import ext_trainer_value

    study_dir = config.study_dir
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / "ext").mkdir(exist_ok=True)
    status: Dict[str, Any] = {"runs": {}, "missing_trainers": [], "started": time.strftime("%Y-%m-%dT%H:%M:%S")}

    user_ext = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    ext_folders = ext_trainer_value(os.pathsep.join(user_ext)).split(os.pathsep)
    modules: Dict[str, str] = {}
    for spec in config.trainers:
        module = _resolve_trainer_module(spec.trainer, ext_folders)
        if module is None:
            msg = (f"trainer class {spec.trainer!r} (arm {spec.name!r}) is not found by nnU-Net's lookup "
                   f"(nnunetv2 trainers and nnUNet_extTrainer={os.pathsep.join(ext_folders)})")
            if not config.skip_missing_trainers:
                raise StudyConfigError(msg + "; install it or remove the arm")
            print(f"[study] WARNING: {msg}; the arm is skipped", flush=True)
            status["missing_trainers"].append(spec.name)
        else:
            modules[spec.name] = module
    if config.baseline not in modules:
        raise StudyConfigError(f"the baseline arm {config.baseline!r} cannot run (its trainer class is missing)")
    for spec in config.trainers:
        if spec.name in modules and spec.teacher and spec.teacher not in modules:
            print(f"[study] WARNING: arm {spec.name!r} needs teacher {spec.teacher!r}, which cannot run; skipped")
            modules.pop(spec.name)
            status["missing_trainers"].append(spec.name)
    write_study_trainers(config, modules, study_dir / "ext")
    atomic_write_json(study_dir / "study_config.json", dataclasses.asdict(config))

    config = prepare_dataset(config, echo=echo) if not dry_run else config
    device = resolve_device(config.device) if not dry_run else config.device
    n_splits = config.n_splits
    if n_splits is None:
        splits = study_dir / "nnUNet_preprocessed" / config.dataset_folder_name / "splits_final.json"
        n_splits = len(read_json(splits)) if splits.is_file() else 5
    runs = plan_runs(config, modules.keys(), n_splits)
    difficulty_csvs: Dict[str, Path] = {}

    def teacher_ready(run: RunSpec) -> bool:
        """True when the run needs no teacher or the teacher's difficulty CSV exists (computed when possible)."""
        if not run.trainer.teacher:
            return True
        name = run.trainer.teacher
        if name not in difficulty_csvs:
            teacher = config.trainer(name)
            _ensure_teacher_fold_links(config, teacher)
            teacher_runs = [RunSpec(teacher, f, config.teacher_seed, teacher_results_root(config), "teacher")
                            for f in teacher_folds(config, n_splits)]
            if dry_run or not all(run_is_finished(fold_dir(config, r)) for r in teacher_runs):
                return False
            csv_path = study_dir / f"difficulty_{name}.csv"
            if not csv_path.is_file():
                compute_teacher_difficulty(config, config.trainer(name), csv_path, echo=echo)
            difficulty_csvs[name] = csv_path
        return True

    def execute(run: RunSpec, cmd: List[str], env: Dict[str, str]) -> str:
        folder = fold_dir(config, run)
        log = study_dir / "logs" / f"{run.trainer.name}_fold{run.fold}_seed{run.seed}_{run.purpose}.log"
        t0 = time.time()
        rc = _run_logged(cmd, env, log, config.run_timeout_s, echo)
        if rc == 0 and not run_is_finished(folder):
            # trained but validation missing (e.g. killed while validating): nnU-Net's --val redoes only that
            rc = _run_logged([*build_train_command(config, run, device), "--val"], env, log, config.run_timeout_s,
                             echo)
        if rc == 0 and run_is_finished(folder):
            return f"finished in {time.time() - t0:.0f} s"
        if echo:
            print(f"[study] {run.label} failed with exit code {rc}; see {log}", flush=True)
        return f"failed (exit {rc}, log {log.name})"

    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    pending = list(runs)
    started = 0
    bar = tqdm(total=len(runs), desc=f"study {config.name}", unit="run", disable=not echo)
    with ThreadPoolExecutor(max_workers=max(1, config.parallel_runs)) as pool:
        running: Dict[Any, RunSpec] = {}
        while pending or running:
            progressed = False
            for run in list(pending):
                if len(running) >= max(1, config.parallel_runs):
                    break
                folder = fold_dir(config, run)
                if run_is_finished(folder):
                    status["runs"][run.label] = "skipped (finished)"
                    pending.remove(run)
                    bar.update(1)
                    progressed = True
                    continue
                if not teacher_ready(run):
                    continue
                if max_runs is not None and started >= max_runs:
                    status["runs"][run.label] = "not started (max_runs)"
                    pending.remove(run)
                    bar.update(1)
                    continue
                csv_path = (training_cases_difficulty_csv(config, difficulty_csvs[run.trainer.teacher], run.fold)
                            if run.trainer.teacher else None)
                env = study_environment(config, run, csv_path)
                resume = (folder / "checkpoint_latest.pth").is_file()
                cmd = build_train_command(config, run, device, resume=resume)
                pending.remove(run)
                progressed = True
                if dry_run:
                    print(f"$ {_shell_line(cmd, env)}", flush=True)
                    status["runs"][run.label] = "dry run"
                    bar.update(1)
                    continue
                started += 1
                running[pool.submit(execute, run, cmd, env)] = run
            if running:
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    run = running.pop(fut)
                    try:
                        status["runs"][run.label] = fut.result()
                    except Exception as e:  # noqa: BLE001 - one broken run never stops the study
                        status["runs"][run.label] = f"failed ({type(e).__name__}: {e})"
                    bar.update(1)
                    bar.set_postfix_str(run.label)
                atomic_write_json(study_dir / "study_status.json", status)
            elif not progressed:
                for run in pending:  # only teacher-dependent runs whose teacher did not finish are left
                    status["runs"][run.label] = f"not run: teacher {run.trainer.teacher} has unfinished folds"
                    bar.update(1)
                pending.clear()
    bar.close()
    atomic_write_json(study_dir / "study_status.json", status)
    if report and not dry_run:
        status["report"] = str(write_report(config, status))
    return status


# --------------------------------------------------------------------------------------------------------------------
# evaluation and report
# --------------------------------------------------------------------------------------------------------------------

#: metrics shown in the study report (higher is better?): Dice, TMTV error, autoPET false-positive/-negative volumes
REPORT_METRICS: Dict[str, bool] = {"dice": True, "tmtv_abs_error_ml": False, "fp_volume_ml": False,
                                   "fn_volume_ml": False}


def study_groups(config: StudyConfig) -> Dict[str, List[Path]]:
    """``{arm: [trainer results folder of each seed whose study folds all finished]}`` (arms with none left out)."""
    groups: Dict[str, List[Path]] = {}
    for spec in config.trainers:
        for seed in config.seeds:
            root = seed_results_root(config, seed)
            if all(run_is_finished(fold_dir(config, RunSpec(spec, f, seed, root))) for f in config.folds):
                groups.setdefault(spec.name, []).append(trainer_output_dir(config, root, spec))
    return groups


def _compare(config: StudyConfig, groups: Mapping[str, Sequence[Path]], baseline: str, out_dir: Path):
    from clips_nnunet.evaluation.compare import compare_results

    gt_dir = config.study_dir / "nnUNet_preprocessed" / config.dataset_folder_name / "gt_segmentations"
    metadata = config.study_dir / "nnUNet_raw" / config.dataset_folder_name / "case_metadata.json"
    kwargs: Dict[str, Any] = {}
    if config.difficulty_key and metadata.is_file():
        kwargs = {"metadata": metadata, "metadata_key": config.difficulty_key}
    else:
        csvs = sorted(config.study_dir.glob("difficulty_*[!n].csv"))
        if csvs:
            kwargs = {"difficulty_csv": csvs[0]}
    return compare_results({k: list(v) for k, v in groups.items()}, baseline=baseline, gt_dir=gt_dir,
                           out_dir=out_dir, metrics=REPORT_METRICS, progress=False, **kwargs)


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _fmt_p(p: Any) -> str:
    if p is None or not isinstance(p, float) or not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


def write_report(config: StudyConfig, status: Optional[Mapping[str, Any]] = None,
                 out_dir: Optional[Path] = None) -> Path:
    """Compare the finished runs with the evaluator's :func:`clips_nnunet.evaluation.compare.compare_results`
    (against the baseline and against each control) and write one ``report.md`` with ``report.png`` into
    ``out_dir`` (default ``study_dir/report``); the full comparisons (CSV, JSON, box plots) go to ``vs_<arm>/``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir or config.study_dir / "report")
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = study_groups(config)
    lines = [f"# Curriculum study `{config.name}`", ""]
    lines += [f"- Dataset: {config.dataset_folder_name} (source `{config.dataset_source}`"
              + (f", {dict(config.dataset_options)}" if config.dataset_options else "") + ")",
              f"- nnU-Net configuration `{config.configuration}`, plans `{config.plans}`, device `{config.device}`",
              f"- Folds {list(config.folds)}" + (f" of a {config.n_splits}-fold split (stratified by "
                                                 f"`{config.difficulty_key}`)" if config.n_splits else ""),
              f"- Seeds {list(config.seeds)} (`CLIPS_SEED`; each seed in its own `nnUNet_results` root)",
              f"- Budget per run, equal for every arm: {config.epochs} epochs x {config.iterations_per_epoch} "
              f"iterations = {config.budget_iterations} training iterations",
              f"- Arms: " + ", ".join(f"`{t.name}` (= `{t.trainer}`"
                                      + (", " + ", ".join(f"{k}={v}" for k, v in t.overrides) if t.overrides else "")
                                      + (f", teacher `{t.teacher}`" if t.teacher else "") + ")"
                                      for t in config.trainers),
              f"- Baseline `{config.baseline}`; controls: {', '.join(f'`{c}`' for c in config.controls) or 'none'}",
              ""]
    default_budget = 1000 * 250
    lines += [f"Scale: nnU-Net's default budget is 1000 epochs x 250 iterations = {default_budget:,} iterations per "
              f"run; this study used {config.budget_iterations:,} ({100 * config.budget_iterations / default_budget:.3g} "
              f"%), on folds {list(config.folds)} only. Differences at this budget say how the arms behave early in "
              f"training on this data, not whether a curriculum helps a fully trained model.", ""]
    missing = [t.name for t in config.trainers if t.name not in groups]
    if missing:
        lines += [f"Arms without a finished run (not evaluated): {', '.join(missing)}.", ""]
    partial = {k: len(v) for k, v in groups.items() if len(v) < len(config.seeds)}
    if partial:
        lines += ["Arms with fewer finished seeds than configured (per-case values average the finished seeds): "
                  + ", ".join(f"{k} ({n}/{len(config.seeds)})" for k, n in partial.items()) + ".", ""]
    summary: Dict[str, Any] = {"groups": {k: [str(p) for p in v] for k, v in groups.items()}, "comparisons": {}}
    main = None
    if config.baseline in groups and len(groups) > 0:
        main = _compare(config, groups, config.baseline, out_dir / f"vs_{config.baseline}")
        summary["comparisons"][config.baseline] = str(out_dir / f"vs_{config.baseline}" / "comparison.json")
        lines += ["## Results against the baseline", "",
                  f"Out-of-fold validation cases: {main.per_case.case_id.nunique()}; difficulty for the tertiles: "
                  f"{main.difficulty_source}. Per case, metrics are averaged over seeds; tables give mean +- sd "
                  f"(median) over cases, [sd of the per-seed cohort means]. Tests: paired two-sided Wilcoxon "
                  f"signed-rank over cases, r = matched-pairs rank-biserial (Kerby 2014), Holm over the metrics. "
                  f"FP/FN volumes as autoPET defines them.", ""]
        text = (out_dir / f"vs_{config.baseline}" / "report.md").read_text().splitlines()
        body = [ln for ln in text[1:] if not ln.startswith("Files:")]
        body = [ln.replace("](plots/", f"](vs_{config.baseline}/plots/").replace("## ", "### ") for ln in body]
        lines += body
        for ref in config.controls:
            if ref not in groups or ref == config.baseline:
                continue
            res = _compare(config, groups, ref, out_dir / f"vs_{ref}")
            summary["comparisons"][ref] = str(out_dir / f"vs_{ref}" / "comparison.json")
            lines += [f"## Paired tests against the control `{ref}`", "",
                      f"diff = arm - {ref}; all cases and the hardest tertile; full tables in `vs_{ref}/`.", "",
                      "| arm | stratum | metric | n | median diff | r | p | p_holm | favours |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for _, r in res.tests[res.tests.stratum.isin(["all", "hard"])].iterrows():
                lines.append(f"| {r['group']} | {r['stratum']} | {r['metric']} | {r['n_pairs']} | "
                             f"{_fmt(r['median_diff'])} | {_fmt(r['rank_biserial'], 2)} | {_fmt_p(r['p_value'])} | "
                             f"{_fmt_p(r['p_holm'])} | {r['better']} |")
            lines.append("")
        _plot_summary(main, config, out_dir / "report.png", plt)
        lines.insert(2, "![Dice and TMTV error per arm, all cases and hardest tertile](report.png)\n")
    else:
        lines += [f"The baseline `{config.baseline}` has no finished run yet: nothing to compare.", ""]
    lines += ["## Runs", "", "| run | status |", "|---|---|"]
    for label, state in (status or {}).get("runs", {}).items():
        lines.append(f"| {label} | {state} |")
    lines += ["", "Reproduce: `clips-nnunet study CONFIG.yaml` (finished runs are skipped). Each run is "
              "`nnUNetv2_train DATASET CONFIG FOLD -tr <arm>Study` with `CLIPS_SEED=S` and "
              "`nnUNet_results=<study_dir>/seed_S/nnUNet_results`; the exact commands are in `<study_dir>/logs/`.",
              ""]
    atomic_write_json(out_dir / "report.json", summary)
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _plot_summary(res, config: StudyConfig, path: Path, plt) -> None:
    """Box plots of seed-averaged per-case Dice and |TMTV error| per arm, all cases and the hardest tertile."""
    arms = [config.baseline] + [g for g in res.groups if g != config.baseline]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), squeeze=False)
    pc = res.per_case
    for row, (metric, label) in enumerate((("dice", "Dice"), ("tmtv_abs_error_ml", "|TMTV error| (ml)"))):
        for col, stratum in enumerate(("all", "hard")):
            ax = axes[row][col]
            sub = pc if stratum == "all" else pc[pc.tertile == "hard"]
            data = []
            for a in arms:
                v = sub.loc[sub.group == a, metric].astype(float).to_numpy()
                v = v[np.isfinite(v)]
                data.append(v if v.size else np.array([np.nan]))
            ax.boxplot(data, showmeans=True)
            ax.set_xticks(range(1, len(arms) + 1))
            ax.set_xticklabels([a.replace("nnUNetTrainer", "") or "nnUNetTrainer" for a in arms], rotation=30,
                               ha="right", fontsize=8)
            n = sub.case_id.nunique()
            ax.set_title(f"{label}, {'all cases' if stratum == 'all' else 'hardest tertile'} (n={n})", fontsize=9)
    fig.suptitle(f"study {config.name}: {config.budget_iterations} iterations per run, seeds {list(config.seeds)}, "
                 f"folds {list(config.folds)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def publish_report(config: StudyConfig, dest: Path) -> Path:
    """Copy ``<study_dir>/report`` (Markdown, PNG, CSV, JSON) to ``dest`` (e.g. ``docs/results/<name>``), writing
    the study folder's absolute path as ``<study_dir>`` so the copy does not depend on this machine; the per-case
    cache is left out. Returns ``dest / "report.md"``."""
    src = config.study_dir / "report"
    if not (src / "report.md").is_file():
        raise DatasetError(f"{src / 'report.md'} does not exist: run the study (or --report-only) first")
    dest = Path(dest)
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_dir() or "cache" in rel.parts:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix in (".md", ".json", ".csv"):
            atomic_write_text(target, path.read_text().replace(str(config.study_dir), "<study_dir>"))
        else:
            shutil.copyfile(path, target)
    return dest / "report.md"
