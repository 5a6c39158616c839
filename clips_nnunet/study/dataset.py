"""The study's dataset: generate it (synthetic sources), plan and preprocess it once, write stratified splits, add
a narrower derived configuration. Every step is resumable (skipped when its output exists)."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from clips_nnunet.errors import DatasetError
from clips_nnunet.io_utils import atomic_write_json, read_json
from clips_nnunet.nnunet_env import run_logged
from clips_nnunet.study.config import StudyConfig
from clips_nnunet.study.layout import study_environment
from clips_nnunet.trainers.mixins import patch_within_plan, scaled_features

__all__ = ["prepare_dataset", "add_derived_configuration", "case_difficulty_from_metadata",
           "write_stratified_splits", "resolve_device"]


def _find_dataset_name(config: StudyConfig) -> str:
    raw = config.study_dir / "nnUNet_raw"
    hits = sorted(raw.glob(f"Dataset{config.dataset_id:03d}_*")) if raw.is_dir() else []
    if not hits:
        raise DatasetError(f"dataset {config.dataset_id} is not in {raw}: for source 'existing', link or copy "
                           f"Dataset{config.dataset_id:03d}_NAME there (or use source synthetic_raw / synth_dicom)")
    return hits[0].name.split("_", 1)[1]


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


def _make_synthetic_raw(config: StudyConfig) -> None:
    from clips_nnunet.synthetic.raw import make_synthetic_raw_dataset

    opts = dict(config.dataset_options)
    for key in ("shape", "spacing"):
        if key in opts:
            opts[key] = tuple(opts[key])
    folder = config.study_dir / "nnUNet_raw" / config.dataset_folder_name
    print(f"[study] generating synthetic dataset {folder} ({opts})", flush=True)
    make_synthetic_raw_dataset(config.study_dir / "nnUNet_raw", config.dataset_id, config.dataset_name, **opts)


def _make_synth_dicom(config: StudyConfig, echo: bool) -> None:
    logs = config.study_dir / "logs"
    cohort = config.study_dir / "cohort_dicom"
    opts = dict(config.dataset_options)
    n = str(opts.pop("n", 40))
    env = study_environment(config)
    synth = ["clips-nnunet", "synth", str(cohort), "-n", n, *_cli_options(opts)]
    if run_logged(synth, env, logs / "synth.log", echo=echo) != 0:
        raise DatasetError(f"clips-nnunet synth failed; see {logs / 'synth.log'}")
    conv = ["clips-nnunet", "convert", str(cohort), "-d", str(config.dataset_id), "-n", config.dataset_name,
            "--private-dir", str(config.study_dir / "private"), "--resume"]
    if run_logged(conv, env, logs / "convert.log", echo=echo) != 0:
        raise DatasetError(f"clips-nnunet convert failed; see {logs / 'convert.log'}")


def _plan_and_preprocess(config: StudyConfig, echo: bool) -> None:
    pre_folder = config.study_dir / "nnUNet_preprocessed" / config.dataset_folder_name
    data_folder = pre_folder / f"{config.plans}_{config.preprocess_configuration}"
    if (pre_folder / f"{config.plans}.json").is_file() and data_folder.is_dir() and any(data_folder.iterdir()):
        return
    cmd = ["nnUNetv2_plan_and_preprocess", "-d", str(config.dataset_id), "-c", config.preprocess_configuration,
           "-np", "1", "--verify_dataset_integrity"]
    env = study_environment(config)
    env["nnUNet_n_proc_DA"] = "1"  # nnU-Net's planner calls torch.set_num_threads(n_proc_DA): 0 would crash
    log = config.study_dir / "logs" / "plan_and_preprocess.log"
    if run_logged(cmd, env, log, echo=echo) != 0:
        raise DatasetError(f"nnUNetv2_plan_and_preprocess failed; see {log}")


def prepare_dataset(config: StudyConfig, echo: bool = True) -> StudyConfig:
    """Create (synthetic sources), plan and preprocess the dataset once (resumable); write splits if asked.

    Returns the config with the dataset name filled in for source ``existing``.
    """
    for sub in ("nnUNet_raw", "nnUNet_preprocessed"):
        (config.study_dir / sub).mkdir(parents=True, exist_ok=True)
    has_raw = (config.study_dir / "nnUNet_raw" / config.dataset_folder_name / "dataset.json").is_file()
    if config.dataset_source == "synthetic_raw" and not has_raw:
        _make_synthetic_raw(config)
    elif config.dataset_source == "synth_dicom" and not has_raw:
        _make_synth_dicom(config, echo)
    elif config.dataset_source == "existing":
        config = dataclasses.replace(config, dataset_name=config.dataset_name or _find_dataset_name(config))
    _plan_and_preprocess(config, echo)
    pre_folder = config.study_dir / "nnUNet_preprocessed" / config.dataset_folder_name
    if config.n_splits is not None and not (pre_folder / "splits_final.json").is_file():
        write_stratified_splits(config)
    if config.derive_from:
        add_derived_configuration(pre_folder / f"{config.plans}.json", config.configuration, config.derive_from,
                                  config.features_divisor, config.derive_patch_size)
    return config


def with_dataset_name(config: StudyConfig) -> StudyConfig:
    """The config with the dataset name of an ``existing`` dataset filled in (no preparation)."""
    if config.dataset_source == "existing" and not config.dataset_name:
        return dataclasses.replace(config, dataset_name=_find_dataset_name(config))
    return config


def add_derived_configuration(plans_file: Path, name: str, base: str, features_divisor: int,
                              patch_size: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """Add configuration ``name`` to an nnU-Net plans file: inherits ``base`` (same preprocessed data, so nothing
    is preprocessed again) with the U-Net's ``features_per_stage`` divided by ``features_divisor``
    (:func:`clips_nnunet.trainers.mixins.scaled_features`, the definition the demo's narrower network uses too).
    ``patch_size``: a smaller patch, each axis capped at the planned one and rounded down to a multiple of the
    network's total stride on that axis (at least one stride). nnU-Net resolves ``inherits_from`` with a shallow
    update, so the whole ``architecture`` entry is written. Idempotent; returns the new configuration entry."""
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
    arch["arch_kwargs"]["features_per_stage"] = scaled_features(feats, features_divisor)
    entry: Dict[str, Any] = {"inherits_from": base, "architecture": arch}
    if patch_size is not None:
        entry["patch_size"] = _patch_within_plan(plans_file, resolved, patch_size)
    if configs.get(name) != entry:
        configs[name] = entry
        atomic_write_json(plans_file, plans)
    return entry


def _patch_within_plan(plans_file: Path, resolved: Mapping[str, Any], patch_size: Sequence[int]) -> List[int]:
    """``patch_size`` capped at the planned patch and rounded down to multiples of the total stride per axis."""
    planned = [int(v) for v in resolved.get("patch_size", [])]
    strides = resolved["architecture"]["arch_kwargs"].get("strides") or []
    if len(planned) != len(patch_size):
        raise DatasetError(f"{plans_file}: derive_configuration.patch_size {list(patch_size)} has "
                           f"{len(patch_size)} axes, the planned patch {planned} has {len(planned)}")
    return patch_within_plan(patch_size, planned, strides)


def case_difficulty_from_metadata(config: StudyConfig) -> Dict[str, float]:
    """Difficulty of every labelled case from ``difficulty_key`` of the raw dataset's ``case_metadata.json``, by the
    project's one definition (:func:`clips_nnunet.curriculum.difficulty.difficulty_from_metadata`: rank in [0, 1],
    higher = harder, the measure's direction and the lesion-free rule from its table). Empty (with a warning) when
    there is no key, no file, or the key cannot rank the cases."""
    from clips_nnunet.curriculum.difficulty import difficulty_from_metadata, read_case_metadata
    from clips_nnunet.errors import CurriculumConfigError

    path = config.study_dir / "nnUNet_raw" / config.dataset_folder_name / "case_metadata.json"
    if not config.difficulty_key or not path.is_file():
        return {}
    try:
        return difficulty_from_metadata(read_case_metadata(path), measure=config.difficulty_key)
    except CurriculumConfigError as e:
        print(f"[study] WARNING: difficulty_key {config.difficulty_key!r} does not rank the cases of {path} ({e}); "
              "the splits are nnU-Net's seeded KFold", flush=True)
        return {}


def write_stratified_splits(config: StudyConfig) -> Path:
    """``splits_final.json`` with ``n_splits`` folds. With a known difficulty (``difficulty_key``), cases sorted by
    difficulty are dealt to folds in turn (each fold spans the whole difficulty range); otherwise nnU-Net's own
    seeded KFold. Written only if nnU-Net's preprocessed folder has none."""
    pre_folder = config.study_dir / "nnUNet_preprocessed" / config.dataset_folder_name
    gt = pre_folder / "gt_segmentations"
    keys = sorted(p.name[: -len(".nii.gz")] for p in gt.glob("*.nii.gz"))
    n_splits = config.n_splits or 5
    if len(keys) < n_splits:
        raise DatasetError(f"{gt} has {len(keys)} cases, fewer than n_splits = {n_splits}")
    difficulty = case_difficulty_from_metadata(config)
    if difficulty and all(k in difficulty for k in keys):
        order = sorted(keys, key=lambda k: (difficulty[k], k))
        folds: List[List[str]] = [[] for _ in range(n_splits)]
        for i, key in enumerate(order):
            folds[i % n_splits].append(key)
        splits = [{"train": sorted(k for j, f in enumerate(folds) if j != i for k in f), "val": sorted(folds[i])}
                  for i in range(n_splits)]
    else:
        from nnunetv2.utilities.crossval_split import generate_crossval_split

        splits = generate_crossval_split(keys, seed=12345, n_splits=n_splits)
    path = pre_folder / "splits_final.json"
    atomic_write_json(path, splits)
    return path


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu`` (:func:`clips_nnunet.nnunet_env.resolve_device`,
    which also refuses other values and ``cuda`` without a GPU), as the string nnU-Net's ``-device`` takes."""
    from clips_nnunet.nnunet_env import resolve_device as torch_device

    return torch_device(device).type