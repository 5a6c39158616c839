"""``clips-nnunet import-tmtv``: TMTV-Net's released models as nnU-Net results folders.

Reads the released files (:mod:`clips_nnunet.tmtv.weights`: format, key mapping and checks), builds
our networks from the dataset's plans exactly as ``nnUNetv2_predict`` will (the trainer's
``build_network_architecture``), maps every tensor, and only when everything fits writes::

    $nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__3d_tmtv/
        plans.json, dataset.json              (the dataset's own, from $nnUNet_preprocessed)
        fold_0 .. fold_<n-1>/checkpoint_final.pth   (the ensemble's base models, in its order)
        stacking_checkpoint_final.pth         (the linear stacking layer; clips_nnunet.tmtv.stacking format)
        tmtv_import.json                      (source files, SHA-256, what was mapped)
    $nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__3d_tmtv_refine/
        plans.json, dataset.json, fold_all/checkpoint_final.pth (the refiner), tmtv_import.json

A checkpoint holds what nnU-Net's predictor reads (``network_weights``, ``trainer_name``, ``init_args`` with the
configuration, ``inference_allowed_mirroring_axes`` = None: TMTV-Net predicts without test-time mirroring) and what
``-pretrained_weights`` reads (``network_weights``); it holds no optimiser state, so it starts a fine-tuning run
(``-pretrained_weights``) but cannot be continued with ``nnUNetv2_train --c``. Checkpoints are written first and
``plans.json`` last, each atomically, so an interrupted import leaves no folder that looks like a finished model.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from clips_nnunet.errors import DatasetError
from clips_nnunet.nnunet_env import nnunet_folder
from clips_nnunet.tmtv.stacking import StackedModel, StackingLayer, save_stacking_model
from clips_nnunet.io_utils import PathLike, atomic_path, atomic_write_json, read_json
from clips_nnunet.tmtv import weights as iw
from clips_nnunet.tmtv.plans import REFINE, STAGE1

CHECKPOINT = "checkpoint_final.pth"
REFINER_FOLD = "all"
REPORT = "tmtv_import.json"


@dataclass
class ImportResult:
    """What an import wrote: the model folders, their folds, the stacking file (or None)."""
    dataset_name: str
    stage1_folder: Optional[Path] = None
    stage1_folds: List[int] = field(default_factory=list)
    stacking_file: Optional[Path] = None
    refiner_folder: Optional[Path] = None
    n_tensors: int = 0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_trainer_class(name: str) -> type:
    """The TMTV trainer class ``name``: clips-nnunet's TMTV trainers, else nnU-Net's lookup (``nnUNet_extTrainer``)."""
    from clips_nnunet.tmtv import cl_trainers, recipe

    cls = getattr(recipe, name, None) or getattr(cl_trainers, name, None)
    if cls is None:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        try:
            cls = recursive_find_trainer_class_by_name(name)
        except Exception:  # nnU-Net raises RuntimeError or fails on an unset nnUNet_extTrainer
            cls = None
    if not isinstance(cls, type) or not issubclass(cls, recipe.TMTVRecipe):
        raise DatasetError(f"trainer {name!r} is not a TMTV trainer that nnU-Net can find; use nnUNetTrainerTMTV "
                           "(or a subclass of it in a folder listed in nnUNet_extTrainer)")
    return cls


def _dataset(dataset: str, plans_identifier: str):
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    preprocessed_root = nnunet_folder("nnUNet_preprocessed")   # one line naming the variable when unusable
    nnunet_folder("nnUNet_results", must_exist=False)   # set; created on the first write, as nnU-Net does
    try:
        name = str(maybe_convert_to_dataset_name(str(dataset)))  # nnU-Net returns a numpy string
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise DatasetError(f"dataset {dataset!r} not found under nnUNet_raw/nnUNet_preprocessed/nnUNet_results: "
                           f"{str(exc).splitlines()[0][:160]}; convert and plan your cohort first "
                           "(nnUNetv2_plan_experiment, clips-nnunet plan-tmtv)") from None
    folder = preprocessed_root / name
    plans_file, dataset_file = folder / f"{plans_identifier}.json", folder / "dataset.json"
    for f in (plans_file, dataset_file):
        if not f.is_file():
            raise DatasetError(f"{f} not found: plan the dataset first (nnUNetv2_extract_fingerprint, "
                               f"nnUNetv2_plan_experiment, clips-nnunet plan-tmtv -d ID -p {plans_identifier})")
    plans, dataset_json = read_json(plans_file), read_json(dataset_file)
    configurations = plans.get("configurations", {})
    absent = [c for c in (STAGE1, REFINE) if c not in configurations]
    if absent:
        raise DatasetError(f"{plans_file.name} has no {' / '.join(absent)} configuration: run clips-nnunet plan-tmtv "
                           f"-d {dataset} -p {plans_identifier} first")
    labels = dataset_json.get("labels", {})
    values = sorted(v if isinstance(v, int) else -1 for v in labels.values())
    if values != [0, 1]:
        raise DatasetError(f"TMTV-Net predicts background and one lesion class, but {dataset_file} has labels "
                           f"{labels}; import into a dataset with labels {{'background': 0, 'lesion': 1}}")
    return name, plans, dataset_json


def build_network(trainer_class: type, plans: dict, dataset_json: dict, configuration: str) -> torch.nn.Module:
    """Our network for ``configuration``, built the way ``nnUNetv2_predict`` builds it."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    cm = manager.get_configuration(configuration)
    n_in = determine_num_input_channels(manager, cm, dataset_json)
    n_out = manager.get_label_manager(dataset_json).num_segmentation_heads
    return trainer_class.build_network_architecture(manager, cm, n_in, n_out, enable_deep_supervision=False)


def nnunet_checkpoint(weights: Dict[str, torch.Tensor], trainer_name: str, plans: dict, configuration: str,
                      fold: Any, dataset_json: dict, provenance: Dict[str, Any]) -> Dict[str, Any]:
    """The dictionary nnU-Net's ``save_checkpoint`` writes, less the training state (optimiser, logging)."""
    return {"network_weights": weights, "trainer_name": trainer_name,
            "init_args": {"plans": plans, "configuration": configuration, "fold": fold,
                          "dataset_json": dataset_json, "device": torch.device("cpu")},
            "inference_allowed_mirroring_axes": None, "current_epoch": 0, "_best_ema": None,
            "clips_nnunet_import": provenance}


def _save_checkpoint(path: Path, checkpoint: Dict[str, Any]) -> None:
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save(checkpoint, str(tmp))


def import_tmtv(models_dir: PathLike, dataset: str, plans_identifier: str = "nnUNetPlans",
                trainer: str = "nnUNetTrainerTMTV", overwrite: bool = False) -> ImportResult:
    """Import TMTV-Net's released models from ``models_dir`` into the dataset's nnU-Net results (module docstring).

    ``models_dir`` holds one stage-1 ensemble (``e_latest.model``) or stage-1 single models (one fold each, in name
    order), and at most one refiner (``r_latest.model``). Everything is read, mapped and checked before anything
    is written; existing checkpoints are replaced only with ``overwrite``.
    """
    files = iw.find_model_files(Path(models_dir))
    ensembles = [f for f in files if f.kind == iw.ENSEMBLE]
    singles = [f for f in files if f.kind == iw.STAGE1]
    refiners = [f for f in files if f.kind == iw.REFINER]
    if len(ensembles) > 1 or (ensembles and singles) or len(refiners) > 1:
        raise DatasetError(f"{models_dir} holds {len(ensembles)} ensemble, {len(singles)} stage-1 and "
                           f"{len(refiners)} refiner file(s) ({', '.join(f.name for f in files)}); keep one "
                           "ensemble (or the single stage-1 models) and at most one refiner")
    if not ensembles and not singles and not refiners:
        raise DatasetError(f"{models_dir} holds no TMTV-Net model")
    name, plans, dataset_json = _dataset(dataset, plans_identifier)
    cls = find_trainer_class(trainer)
    plans_name = plans.get("plans_name", plans_identifier)
    results = nnunet_folder("nnUNet_results", must_exist=False) / name
    sources = {f.name: _sha256(Path(models_dir) / f.name) for f in files}

    # ---- read and map everything first
    stage1_weights: List[Dict[str, torch.Tensor]] = []
    stacking: Optional[Dict[str, torch.Tensor]] = None
    stage1_sources: List[tuple] = []  # (label, file name) per fold
    if ensembles or singles:
        network = build_network(cls, plans, dataset_json, STAGE1)
        if ensembles:
            members, stacking = iw.split_ensemble(ensembles[0].state_dict, ensembles[0].name)
            for j, member in enumerate(members):
                label = f"{ensembles[0].name} (base model {j})"
                stage1_weights.append(iw.map_state_dict(member, network, label))
                stage1_sources.append((label, ensembles[0].name))
        else:
            for f in singles:
                stage1_weights.append(iw.map_state_dict(f.state_dict, network, f.name))
                stage1_sources.append((f.name, f.name))
    refiner_weights = None
    if refiners:
        refiner_weights = iw.map_state_dict(refiners[0].state_dict, build_network(cls, plans, dataset_json, REFINE),
                                            refiners[0].name)

    folders = {}
    if stage1_weights:
        folders[STAGE1] = (results / f"{trainer}__{plans_name}__{STAGE1}", list(range(len(stage1_weights))))
    if refiner_weights is not None:
        folders[REFINE] = (results / f"{trainer}__{plans_name}__{REFINE}", [REFINER_FOLD])
    if not overwrite:
        existing = [str(folder / f"fold_{f}" / CHECKPOINT) for folder, folds in folders.values() for f in folds
                    if (folder / f"fold_{f}" / CHECKPOINT).exists()]
        if existing:
            raise DatasetError(f"{existing[0]} exists (a trained or imported model); pass --overwrite to replace it, "
                               "or import with another trainer name (-tr) or dataset (-d)")

    # ---- write: checkpoints, stacking, report, dataset.json, plans.json last
    result = ImportResult(name)
    for configuration, (folder, folds) in folders.items():
        weights = stage1_weights if configuration == STAGE1 else [refiner_weights]
        origin = stage1_sources if configuration == STAGE1 else [(refiners[0].name, refiners[0].name)]
        for fold, state, (label, file_name) in zip(folds, weights, origin):
            provenance = {"source": label, "sha256": sources[file_name], "format": "TMTV-Net state dict "
                          "(qurit-frizi/TMTV-Net)", "mapping": "clips_nnunet.tmtv.weights"}
            _save_checkpoint(folder / f"fold_{fold}" / CHECKPOINT,
                             nnunet_checkpoint(state, trainer, plans, configuration, fold, dataset_json, provenance))
            result.n_tensors += len(state)
        report: Dict[str, Any] = {"source_files": sources, "trainer": trainer, "plans": plans_name,
                                  "configuration": configuration, "folds": folds, "checkpoint": CHECKPOINT,
                                  "sources_per_fold": {str(f): o[0] for f, o in zip(folds, origin)}}
        if configuration == STAGE1 and stacking is not None:
            layer = StackingLayer(len(stage1_weights), 2)
            layer.load_state_dict({"conv.weight": stacking["weight"], "conv.bias": stacking["bias"]})
            stacked = StackedModel(name, trainer, plans_name, STAGE1, list(folds), CHECKPOINT, 2)
            result.stacking_file = save_stacking_model(folder / f"stacking_{CHECKPOINT.replace('.pth', '')}.pth",
                                                       layer, stacked, {"source": ensembles[0].name,
                                                                        "sha256": sources[ensembles[0].name]})
            report["stacking_file"] = result.stacking_file.name
        atomic_write_json(folder / REPORT, report)
        atomic_write_json(folder / "dataset.json", dataset_json)
        atomic_write_json(folder / "plans.json", plans)
        if configuration == STAGE1:
            result.stage1_folder, result.stage1_folds = folder, list(folds)
        else:
            result.refiner_folder = folder
    return result

