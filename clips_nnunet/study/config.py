"""The study configuration: one YAML file (see ``benchmarks/learning/``), validated into a :class:`StudyConfig`.

Every error names the key and what to do (:class:`StudyConfigError`).
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from clips_nnunet.errors import ClipsError

__all__ = ["StudyConfigError", "TrainerSpec", "StudyConfig", "parse_study_config", "load_study_config",
           "study_class_name", "DATASET_SOURCES", "REFERENCE_GPU_SECONDS_PER_ITERATION"]

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
DATASET_SOURCES = ("existing", "synthetic_raw", "synth_dicom")
KNOWN_KEYS = ("name", "study_dir", "dataset", "configuration", "plans", "trainers", "baseline", "controls", "folds",
              "seeds", "budget", "device", "teacher_seed", "difficulty_key", "skip_missing_trainers", "run_timeout_s",
              "n_proc_da", "parallel_runs", "derive_configuration", "description", "convergence_margin",
              "memorisation_reference", "gpu_seconds_per_iteration", "gpu_seconds_per_run", "badly_segmented",
              "validation_mirroring")
#: Reference seconds per training iteration for the ``--slurm`` GPU-hour estimate: nnU-Net's default 3d_fullres U-Net,
#: 2 channels, 128^3 patch, batch 2, AMP on an H200 (the project's reference/target figure, docs/performance.md; not
#: measured by this project: ``benchmarks/gpu/run.sh`` measures it on the user's GPU).
REFERENCE_GPU_SECONDS_PER_ITERATION = 0.065
#: Literal types an arm's class-attribute override may have (written as ``attribute = value`` lines).
OVERRIDE_TYPES = (int, float, str, bool, list, type(None))


class StudyConfigError(ClipsError, ValueError):
    """The study configuration is invalid (names the key and what to do)."""


def study_class_name(name: str) -> str:
    """Name of the generated budget subclass of an arm: ``{name}Study`` (never contains ``__``)."""
    return f"{name}Study"


@dataclasses.dataclass(frozen=True)
class TrainerSpec:
    """One arm of the study.

    ``name`` labels the arm in the report and names the generated budget subclass (``{name}Study``);
    ``trainer`` is the nnU-Net trainer class it derives from (found with nnU-Net's own lookup, ext folders
    included); ``overrides`` are class attributes set on the subclass (the nnU-Net way of changing a
    hyper-parameter); ``teacher`` names the arm whose out-of-fold predictions give the difficulty
    (transfer teacher / bootstrapping); ``teacher_csv`` is instead a difficulty CSV made elsewhere
    (``case_id,difficulty``, e.g. ``clips-nnunet score MODEL --predict`` with TMTV-Net's released model imported by
    ``clips-nnunet import-tmtv``: a model that never saw the cohort, so every case is out of fold for it); ``control`` names the arm's matched control (e.g. its Random order), which
    the report tests it against; ``budget_factor`` multiplies the study's epochs for this arm (the baseline's
    trainer at 2 is the convergence ladder's 2x rung; any other arm with a factor has an unequal budget, and the
    report prints the ratio).
    """

    name: str
    trainer: str
    overrides: Tuple[Tuple[str, Any], ...] = ()
    teacher: Optional[str] = None
    control: Optional[str] = None
    budget_factor: int = 1
    teacher_csv: Optional[Path] = None

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
    derive_patch_size: Optional[Tuple[int, ...]] = None
    convergence_margin: float = 0.02
    memorisation_reference: Optional[Path] = None
    gpu_seconds_per_iteration: float = REFERENCE_GPU_SECONDS_PER_ITERATION
    gpu_seconds_per_run: float = 0.0
    badly_segmented: Optional[Path] = None
    validation_mirroring: bool = True

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

    def run_iterations(self, name: str) -> int:
        """Training iterations of one run of arm ``name`` (its ``budget_factor`` included)."""
        return self.budget_iterations * self.trainer(name).budget_factor

    @property
    def ladder_arms(self) -> Tuple[str, ...]:
        """The convergence ladder's rungs above 1x: arms with the baseline's trainer and overrides and a
        ``budget_factor`` above 1."""
        base = self.trainer(self.baseline)
        return tuple(t.name for t in self.trainers if t.budget_factor > 1 and (t.trainer, t.overrides, t.teacher)
                     == (base.trainer, base.overrides, base.teacher))

    def control_pairs(self) -> Tuple[Tuple[str, Tuple[str, ...]], ...]:
        """``((control, (arm, ...)), ...)``: each control with the arms tested against it: the arms naming it as
        their ``control``, else (a control only listed in ``controls``) every other arm but the baseline."""
        pairs = []
        for ref in self.controls:
            arms = tuple(t.name for t in self.trainers if t.control == ref)
            pairs.append((ref, arms or tuple(t.name for t in self.trainers if t.name not in (ref, self.baseline))))
        return tuple(pairs)

    @property
    def teachers(self) -> Tuple[str, ...]:
        """Arms that are the teacher of another arm, sorted."""
        return tuple(sorted({t.teacher for t in self.trainers if t.teacher}))


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


def _parse_dataset(raw: Mapping[str, Any]) -> Dict[str, Any]:
    """``dataset_id, dataset_name, dataset_source, dataset_options, n_splits`` of :class:`StudyConfig`."""
    dataset = _req(raw, "dataset", "")
    if not isinstance(dataset, Mapping):
        raise StudyConfigError("study config: 'dataset' must be a mapping with at least 'id'")
    dataset_id = _positive_int(_req(dataset, "id", "dataset."), "dataset.id")
    if dataset_id > 999:
        raise StudyConfigError(f"study config: 'dataset.id' must be 1..999 (nnU-Net dataset ids), got {dataset_id}")
    source = str(dataset.get("source", "existing"))
    if source not in DATASET_SOURCES:
        raise StudyConfigError(f"study config: 'dataset.source' must be one of {DATASET_SOURCES}, got {source!r}")
    name = str(dataset.get("name") or ("ClipsStudy" if source != "existing" else ""))
    if source != "existing" and not _NAME_RE.match(name):
        raise StudyConfigError(f"study config: 'dataset.name' must be letters/digits/underscores, got {name!r}")
    options = dataset.get("options") or {}
    if not isinstance(options, Mapping):
        raise StudyConfigError("study config: 'dataset.options' must be a mapping of generator arguments")
    n_splits = dataset.get("n_splits")
    if n_splits is not None:
        n_splits = _positive_int(n_splits, "dataset.n_splits", 2)
    return {"dataset_id": dataset_id, "dataset_name": name, "dataset_source": source,
            "dataset_options": dict(options), "n_splits": n_splits}


def _parse_trainer(i: int, t: Any, base_dir: Optional[Path] = None) -> TrainerSpec:
    if isinstance(t, str):
        t = {"name": t}
    if not isinstance(t, Mapping):
        raise StudyConfigError(f"study config: trainers[{i}] must be a name or a mapping, got {t!r}")
    bad = sorted(set(t) - {"name", "trainer", "overrides", "teacher", "control", "budget_factor", "teacher_csv"})
    if bad:
        raise StudyConfigError(f"study config: trainers[{i}] has unknown key(s) {bad}; "
                               "use name, trainer, overrides, teacher, teacher_csv, control, budget_factor")
    if t.get("teacher") and t.get("teacher_csv"):
        raise StudyConfigError(f"study config: trainers[{i}] has both 'teacher' (a trained arm) and 'teacher_csv' (an "
                               "external difficulty CSV); give one")
    name = str(_req(t, "name", f"trainers[{i}]."))
    trainer = str(t.get("trainer") or name)
    for label, value in (("name", name), ("trainer", trainer)):
        if not _NAME_RE.match(value) or "__" in value:
            raise StudyConfigError(f"study config: trainers[{i}].{label} = {value!r} must be a Python identifier "
                                   "without '__' (nnU-Net splits result folders on '__')")
    overrides = t.get("overrides") or {}
    if not isinstance(overrides, Mapping) or not all(isinstance(k, str) and k.isidentifier() for k in overrides):
        raise StudyConfigError(f"study config: trainers[{i}].overrides must map attribute names to values")
    for k, v in overrides.items():
        if not isinstance(v, OVERRIDE_TYPES):
            raise StudyConfigError(f"study config: trainers[{i}].overrides.{k} must be a number, string, bool, "
                                   f"list or null, got {type(v).__name__}")
    return TrainerSpec(name, trainer, tuple(sorted(overrides.items())), t.get("teacher"), t.get("control"),
                       _positive_int(t.get("budget_factor", 1), f"trainers[{i}].budget_factor"),
                       _relative_path(t.get("teacher_csv"), base_dir))


def _parse_arms(raw: Mapping[str, Any], base_dir: Optional[Path] = None) -> Dict[str, Any]:
    """``trainers, baseline, controls`` of :class:`StudyConfig` (names unique, teachers/baseline/controls known)."""
    trainers_raw = _req(raw, "trainers", "")
    if not isinstance(trainers_raw, list) or not trainers_raw:
        raise StudyConfigError("study config: 'trainers' must be a non-empty list of {name, trainer, ...}")
    trainers = [_parse_trainer(i, t, base_dir) for i, t in enumerate(trainers_raw)]
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
        if t.control is not None and (t.control not in names or t.control == t.name):
            raise StudyConfigError(f"study config: trainer {t.name!r} has control {t.control!r}, which must be another "
                                   f"of the trainers {names}")
    baseline = str(_req(raw, "baseline", ""))
    if baseline not in names:
        raise StudyConfigError(f"study config: baseline {baseline!r} is not one of the trainers {names}")
    controls = tuple(str(c) for c in (raw.get("controls") or []))
    controls += tuple(dict.fromkeys(t.control for t in trainers if t.control and t.control not in controls))
    for c in controls:
        if c not in names:
            raise StudyConfigError(f"study config: control {c!r} is not one of the trainers {names}")
    return {"trainers": tuple(trainers), "baseline": baseline, "controls": controls}


def _parse_budget(raw: Mapping[str, Any]) -> Dict[str, int]:
    budget = _req(raw, "budget", "")
    if not isinstance(budget, Mapping):
        raise StudyConfigError("study config: 'budget' must be a mapping {epochs, iterations_per_epoch}")
    return {"epochs": _positive_int(_req(budget, "epochs", "budget."), "budget.epochs"),
            "iterations_per_epoch": _positive_int(_req(budget, "iterations_per_epoch", "budget."),
                                                  "budget.iterations_per_epoch"),
            "val_iterations_per_epoch": _positive_int(budget.get("val_iterations_per_epoch", 2),
                                                      "budget.val_iterations_per_epoch")}


def _parse_derived(raw: Mapping[str, Any], configuration: str) -> Dict[str, Any]:
    derive = raw.get("derive_configuration")
    if derive is None:
        return {"derive_from": None, "features_divisor": 1, "derive_patch_size": None}
    if not isinstance(derive, Mapping) or not derive.get("from"):
        raise StudyConfigError("study config: 'derive_configuration' must be {from: 3d_fullres, features_divisor: N}")
    derive_from = str(derive["from"])
    divisor = _positive_int(derive.get("features_divisor", 1), "derive_configuration.features_divisor")
    if derive_from == configuration:
        raise StudyConfigError("study config: 'configuration' must be a new name (e.g. 3d_study) when "
                               f"'derive_configuration.from' is {derive_from!r}")
    patch = derive.get("patch_size")
    if patch is not None:
        if not isinstance(patch, (list, tuple)) or not patch:
            raise StudyConfigError("study config: 'derive_configuration.patch_size' must be a list of positive "
                                   f"integers (one per axis), got {patch!r}")
        patch = tuple(_positive_int(v, "derive_configuration.patch_size") for v in patch)
    return {"derive_from": derive_from, "features_divisor": divisor, "derive_patch_size": patch}


def _resolve_study_dir(raw: Mapping[str, Any], name: str, base_dir: Optional[Path],
                       study_dir: Optional[Path]) -> Path:
    if study_dir is None:
        study_dir = Path(raw.get("study_dir") or f"study_runs/{name}")
        if not study_dir.is_absolute():
            study_dir = (Path(base_dir) if base_dir is not None else Path.cwd()) / study_dir
    return Path(study_dir).resolve()


def _relative_path(value: Any, base_dir: Optional[Path]) -> Optional[Path]:
    """A path from the YAML, relative to the config file's folder (``base_dir``) unless absolute."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise StudyConfigError(f"study config: expected a file path, got {value!r}")
    path = Path(value)
    return (path if path.is_absolute() else (Path(base_dir) if base_dir is not None else Path.cwd()) / path).resolve()


def _seconds(raw: Mapping[str, Any], key: str, default: float, positive: bool) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (positive and value == 0):
        raise StudyConfigError(f"study config: '{key}' must be a {'positive' if positive else 'non-negative'} number "
                               f"of seconds, got {value!r}")
    return float(value)


def parse_study_config(raw: Mapping[str, Any], base_dir: Optional[Path] = None,
                       study_dir: Optional[Path] = None) -> StudyConfig:
    """Validate a study configuration mapping (the parsed YAML) and return a :class:`StudyConfig`.

    Keys (``*`` required): ``name``; ``study_dir`` (relative paths are relative to ``base_dir``, the config file's
    folder; the ``study_dir`` argument wins); ``dataset*`` {``id*``, ``name``, ``source``: existing | synthetic_raw |
    synth_dicom, ``options``: generator keyword arguments, ``n_splits``}; ``configuration`` (3d_fullres);
    ``plans`` (nnUNetPlans); ``trainers*``: list of {``name*``, ``trainer`` (default = name), ``overrides``,
    ``teacher``, ``teacher_csv`` (an external difficulty CSV, relative to the YAML), ``control``, ``budget_factor``
    (1)}; ``baseline*``; ``controls``; ``folds`` ([0]); ``seeds*``;
    ``budget*`` {``epochs*``,
    ``iterations_per_epoch*``, ``val_iterations_per_epoch`` (2)}; ``device`` (auto | cpu | cuda); ``teacher_seed``
    (first seed); ``difficulty_key`` (case_metadata.json key for the hardest third; default: teacher difficulty);
    ``skip_missing_trainers`` (true); ``run_timeout_s``; ``n_proc_da`` (0); ``parallel_runs`` (1: runs at once);
    ``derive_configuration`` {``from``: 3d_fullres, ``features_divisor``: 4}: ``configuration`` is then added to the
    plans as a smaller network inheriting ``from`` (same preprocessed data, features per stage divided; optional
    ``patch_size`` [z, y, x]: a smaller patch, each axis at most the planned one and rounded down to a multiple of
    the network's total stride on that axis), for studies on CPUs; ``convergence_margin`` (0.02): the convergence ladder's margin (Dice, clean masks) within
    which the 2x baseline must stay of the 1x baseline, interval included; ``memorisation_reference``: the study
    YAML of the same patients with clean masks (e.g. the clean condition), whose baseline runs predict this study's
    badly annotated training patients as the reference of the memorisation section; ``gpu_seconds_per_iteration``
    (:data:`REFERENCE_GPU_SECONDS_PER_ITERATION`) and ``gpu_seconds_per_run`` (0: start-up and final validation,
    not counted unless given): the ``--slurm`` GPU-hour estimate; ``badly_segmented``: the audit's
    ``audit_decisions.csv`` (``clips-nnunet audit``), whose ``confirmed_error`` cases form the report's
    ``badly_segmented`` stratum; ``validation_mirroring`` (true): false validates every arm without nnU-Net's
    test-time mirroring (:mod:`clips_nnunet.study.validation`; 8x fewer passes in 3D, for CPU studies).
    """
    if not isinstance(raw, Mapping):
        raise StudyConfigError(f"study config must be a mapping (YAML dictionary), got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(KNOWN_KEYS))
    if unknown:
        raise StudyConfigError(f"study config: unknown key(s) {unknown}; known keys are {sorted(KNOWN_KEYS)}")
    name = str(raw.get("name") or "study")
    dataset = _parse_dataset(raw)
    arms = _parse_arms(raw, base_dir)
    folds = _int_list(raw.get("folds", [0]), "folds", 0)
    if dataset["n_splits"] is not None and max(folds) >= dataset["n_splits"]:
        raise StudyConfigError(f"study config: fold {max(folds)} does not exist with dataset.n_splits = "
                               f"{dataset['n_splits']}")
    seeds = _int_list(_req(raw, "seeds", ""), "seeds", 0)
    budget = _parse_budget(raw)
    device = str(raw.get("device", "auto"))
    if device not in ("auto", "cpu", "cuda"):
        raise StudyConfigError(f"study config: 'device' must be auto, cpu or cuda, got {device!r}")
    timeout = raw.get("run_timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise StudyConfigError(f"study config: 'run_timeout_s' must be a positive number of seconds, got {timeout!r}")
    configuration = str(raw.get("configuration", "3d_fullres"))
    margin = raw.get("convergence_margin", 0.02)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 < margin < 1:
        raise StudyConfigError(f"study config: 'convergence_margin' must be a Dice difference in (0, 1), got "
                               f"{margin!r}")
    return StudyConfig(
        name=name, study_dir=_resolve_study_dir(raw, name, base_dir, study_dir), **dataset, **arms, **budget,
        **_parse_derived(raw, configuration), configuration=configuration, plans=str(raw.get("plans", "nnUNetPlans")),
        folds=folds, seeds=seeds, device=device,
        teacher_seed=_positive_int(raw.get("teacher_seed", seeds[0]), "teacher_seed", 0),
        difficulty_key=raw.get("difficulty_key"), skip_missing_trainers=bool(raw.get("skip_missing_trainers", True)),
        run_timeout_s=float(timeout) if timeout is not None else None,
        n_proc_da=_positive_int(raw.get("n_proc_da", 0), "n_proc_da", 0),
        parallel_runs=_positive_int(raw.get("parallel_runs", 1), "parallel_runs"), convergence_margin=float(margin),
        memorisation_reference=_relative_path(raw.get("memorisation_reference"), base_dir),
        gpu_seconds_per_iteration=_seconds(raw, "gpu_seconds_per_iteration", REFERENCE_GPU_SECONDS_PER_ITERATION,
                                           True),
        gpu_seconds_per_run=_seconds(raw, "gpu_seconds_per_run", 0.0, False),
        badly_segmented=_relative_path(raw.get("badly_segmented"), base_dir),
        validation_mirroring=_boolean(raw, "validation_mirroring", True))


def _boolean(raw: Mapping[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise StudyConfigError(f"study config: '{key}' must be true or false, got {value!r}")
    return value


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> Dict[str, Any]:
    """``base`` updated by ``override``: mappings are merged key by key, everything else (lists too) replaced."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) \
            else value
    return out


def _read_yaml(path: Path, chain: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """The YAML mapping of ``path`` with its ``extends: other.yaml`` chain merged in (the extending file wins)."""
    import yaml

    if not path.is_file():
        where = f" (extended by {chain[-1]})" if chain else ""
        raise StudyConfigError(f"study config file {path}{where} does not exist; see benchmarks/learning/*.yaml for "
                               f"examples")
    if path.resolve() in chain:
        raise StudyConfigError(f"study config file {path}: 'extends' loops back to itself")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise StudyConfigError(f"study config file {path} is not valid YAML: {e}") from e
    if not isinstance(raw, Mapping) or "extends" not in raw:
        return raw
    parent = Path(str(raw["extends"]))
    parent = parent if parent.is_absolute() else path.resolve().parent / parent
    merged = _merge(_read_yaml(parent, chain + (path.resolve(),)), raw)
    merged.pop("extends")
    return merged


def load_study_config(path: Path, study_dir: Optional[Path] = None) -> StudyConfig:
    """Read and validate a study YAML file (relative ``study_dir`` is resolved against the file's folder).

    ``extends: other.yaml`` (relative to the file) starts from that file's configuration: mappings are merged key
    by key, other values (lists such as ``trainers``) replaced; a study's conditions share one base this way."""
    path = Path(path)
    return parse_study_config(_read_yaml(path), base_dir=path.resolve().parent, study_dir=study_dir)
