"""Per-case difficulty scores from nnU-Net predictions (``clips-nnunet score``): the curriculum's teacher.

- :func:`score_cross_validation` (transfer teacher / bootstrapping without leakage, Hacohen & Weinshall 2019;
  Yousefirizi et al. 2022): the out-of-fold predictions of an nnU-Net cross-validation (``fold_X/validation``), each
  case scored by the fold model that never trained on it;
- :func:`score_with_model`: runs a trained model folder (``nnUNetPredictor``) on the training cases;
  :func:`score_with_models`: installed models named as nnU-Net names them, alone or as an ensemble.

Both return ``{case_id: {"difficulty": raw score (higher = harder), ...}}``; write it with
:func:`clips_nnunet.curriculum.difficulty.write_difficulty_csv`, the format the curriculum trainers read. The
scoring needs SimpleITK (and nnU-Net/torch for :func:`score_with_model`), which is why it lives here and not in
:mod:`clips_nnunet.curriculum` (plain numpy).
"""
from __future__ import annotations

import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Union

import numpy as np

from clips_nnunet.errors import CurriculumConfigError, DatasetError
from clips_nnunet.metrics.overlap import dice
from clips_nnunet.io_utils import PathLike, read_image, read_json
from clips_nnunet.nnunet_env import reference_masks_for_results

SCORE_METRICS = ("dice", "tmtv", "loss")


def tmtv_error(prediction: np.ndarray, reference: np.ndarray, voxel_ml: float, floor_ml: float = 1.0) -> float:
    """Relative absolute TMTV error ``|V_pred - V_ref| / max(V_ref, floor_ml)`` (volumes in ml).

    The floor keeps lesion-free and near-empty cases finite: there the error is the absolute error in ml.
    """
    v_pred = float((np.asarray(prediction) > 0).sum()) * voxel_ml
    v_ref = float((np.asarray(reference) > 0).sum()) * voxel_ml
    return abs(v_pred - v_ref) / max(v_ref, floor_ml)


def probability_loss(probabilities: np.ndarray, reference: np.ndarray, eps: float = 1e-6) -> float:
    """nnU-Net-style loss of a saved softmax (``--npz``): mean voxel cross-entropy + (1 - soft Dice of foreground).

    ``probabilities``: (C, *spatial); ``reference``: integer labels (*spatial). Returns a value >= 0.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(reference).astype(np.int64)
    if probabilities.shape[1:] != labels.shape:
        raise DatasetError(f"probabilities {probabilities.shape[1:]} and label {labels.shape} shapes differ")
    n_classes = probabilities.shape[0]
    labels = np.clip(labels, 0, n_classes - 1)
    picked = np.take_along_axis(probabilities, labels[None], axis=0)[0]
    ce = float(-np.log(np.clip(picked, eps, 1.0)).mean())
    dices = []
    for c in range(1, n_classes):
        onehot = labels == c
        denominator = probabilities[c].sum() + onehot.sum()
        dices.append(1.0 if denominator == 0 else 2.0 * (probabilities[c] * onehot).sum() / denominator)
    return ce + (1.0 - float(np.mean(dices)) if dices else 0.0)


def _read_image(path: Path):
    import SimpleITK as sitk

    image = read_image(path, what="file")  # verified complete: a truncated NIfTI is an error, not zeros
    return sitk.GetArrayFromImage(image), float(np.prod(image.GetSpacing())) / 1000.0


def score_case(metric: str, prediction_file: Path, reference_file: Path) -> Dict[str, float]:
    """Score one case: ``dice`` -> 1 - Dice, ``tmtv`` -> relative TMTV error, ``loss`` -> CE + (1 - soft Dice)
    from ``<prediction>.npz`` (saved with ``--npz``). Also returns ``dice`` and TMTVs for the CSV."""
    if metric not in SCORE_METRICS:
        raise CurriculumConfigError(f"unknown metric {metric!r}; choose one of {SCORE_METRICS}")
    prediction, voxel_ml = _read_image(prediction_file)
    reference, _ = _read_image(reference_file)
    if prediction.shape != reference.shape:
        raise DatasetError(f"{prediction_file.name}: prediction shape {prediction.shape} differs from its label "
                           f"{reference_file} {reference.shape}; were the labels re-sampled?")
    dice_value = dice(prediction, reference)
    row = {"dice": dice_value,
           "tmtv_pred_ml": float((prediction > 0).sum()) * voxel_ml,
           "tmtv_ref_ml": float((reference > 0).sum()) * voxel_ml}
    if metric == "dice":
        row["difficulty"] = 1.0 - dice_value
    elif metric == "tmtv":
        row["difficulty"] = tmtv_error(prediction, reference, voxel_ml)
    else:
        npz = prediction_file.with_name(_strip_ending(prediction_file.name)[0] + ".npz")
        if not npz.is_file():
            raise DatasetError(f"{npz} does not exist: --metric loss needs the softmax of each validation case; "
                               f"re-run the validation with `nnUNetv2_train ... --val --npz`, or use --metric dice")
        try:
            with np.load(npz) as data:
                probabilities = data["probabilities"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise DatasetError(f"cannot read {npz}: incomplete or damaged ({type(e).__name__}: {e}); re-run the "
                               "validation with --npz") from e
        row["difficulty"] = probability_loss(probabilities, reference)
    return row


_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".tif", ".png")


def _strip_ending(name: str):
    for ending in _ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)], ending
    return None, None


def _prediction_files(folder: Path) -> Dict[str, Path]:
    files = {}
    for f in sorted(folder.iterdir()):
        case_id, _ = _strip_ending(f.name)
        if case_id is not None and f.is_file():
            files[case_id] = f
    return files


def _find_reference(gt_folder: Path, case_id: str, ending: str) -> Path:
    candidate = gt_folder / f"{case_id}{ending}"
    if candidate.is_file():
        return candidate
    raise DatasetError(f"case {case_id}: no label {candidate}; give the labels folder with --labels")


def score_cross_validation(results_folder: PathLike, gt_folder: Optional[PathLike] = None, metric: str = "dice",
                           folds: Optional[Iterable[int]] = None, progress: bool = True
                           ) -> Dict[str, Dict[str, object]]:
    """Score every case by the out-of-fold prediction of the fold model that never trained on it.

    ``results_folder``: ``$nnUNet_results/DatasetXXX/Trainer__Plans__Config`` holding ``fold_X/validation/`` (written
    by ``nnUNetv2_train``). ``gt_folder``: labels; default ``$nnUNet_preprocessed/DatasetXXX/gt_segmentations``, else ``labelsTr``
    (the dataset name is the results folder's parent). Returns case_id -> {"difficulty": raw score (higher =
    harder), "fold", "dice", "tmtv_pred_ml", "tmtv_ref_ml"}. A case predicted by two folds (overlapping custom
    splits) is an error, because then it is unclear which model never saw it. A case that cannot be scored is
    reported and skipped (the others go on); no scored case at all is an error.
    """
    results_folder = Path(results_folder)
    if not results_folder.is_dir():
        raise DatasetError(f"results folder {results_folder} does not exist: give "
                           f"$nnUNet_results/DatasetXXX/Trainer__Plans__Config of a finished cross-validation")
    fold_dirs = sorted(p for p in results_folder.iterdir() if p.is_dir() and re.fullmatch(r"fold_\d+", p.name))
    if folds is not None:
        wanted = {int(f) for f in folds}
        fold_dirs = [p for p in fold_dirs if int(p.name.split("_")[1]) in wanted]
    fold_dirs = [p for p in fold_dirs if (p / "validation").is_dir()]
    if not fold_dirs:
        raise DatasetError(f"{results_folder} has no fold_X/validation folder: finish the cross-validation "
                           f"(nnUNetv2_train DATASET CONFIG FOLD for every fold) first")
    if gt_folder is None:  # nnU-Net's gt_segmentations, else labelsTr (one rule: nnunet_env)
        gt_folder = reference_masks_for_results(results_folder)
    gt_folder = Path(gt_folder)
    if not gt_folder.is_dir():
        raise DatasetError(f"labels folder {gt_folder} does not exist: pass --labels (e.g. labelsTr)")
    jobs: Dict[str, tuple] = {}
    for fold_dir in fold_dirs:
        fold = int(fold_dir.name.split("_")[1])
        for case_id, path in _prediction_files(fold_dir / "validation").items():
            if case_id in jobs:
                raise DatasetError(f"case {case_id} is predicted by fold {jobs[case_id][0]} and fold {fold}: the "
                                   f"folds overlap, so no single out-of-fold model exists for it")
            jobs[case_id] = (fold, path)
    from tqdm import tqdm

    table: Dict[str, Dict[str, object]] = {}
    failures = []
    for case_id, (fold, path) in tqdm(sorted(jobs.items()), desc="scoring out-of-fold predictions",
                                      disable=not progress):
        try:
            reference = _find_reference(gt_folder, case_id, _strip_ending(path.name)[1])
            row = score_case(metric, path, reference)
        except (DatasetError, RuntimeError, OSError) as e:  # one bad case never stops the cohort
            failures.append(f"{case_id}: {e}")
            continue
        row["fold"] = fold
        table[case_id] = row
    for failure in failures:
        warnings.warn(f"not scored: {failure}", stacklevel=2)
    if not table:
        raise DatasetError(f"no case of {results_folder} could be scored: " + "; ".join(failures[:5]))
    return table


def score_with_model(model_folder: PathLike, images_folder: PathLike, labels_folder: PathLike,
                     metric: str = "dice", folds: Sequence[Union[int, str]] = (0,),
                     checkpoint_name: str = "checkpoint_final.pth", device: str = "cpu",
                     case_ids: Optional[Sequence[str]] = None, output_folder: Optional[PathLike] = None,
                     prev_stage_folds: Optional[Sequence[Union[int, str]]] = None,
                     stacking: Optional[PathLike] = None) -> Dict[str, Dict[str, object]]:
    """Score training cases by running a trained model (``nnUNetPredictor``) on them: a teacher trained on other
    data (or the full model: then the scores are in-sample and optimistic; prefer :func:`score_cross_validation`),
    e.g. TMTV-Net's published model imported with ``clips-nnunet import-tmtv``.

    ``model_folder``: ``Trainer__Plans__Config`` folder; ``images_folder``: nnU-Net raw images (``imagesTr``);
    ``labels_folder``: labels (``labelsTr``). Predictions go to ``output_folder`` (default: a temporary folder).
    A cascade's second stage (plans with ``previous_stage``) first predicts the cases with the sibling folder
    ``Trainer__Plans__<previous stage>`` (``prev_stage_folds``, default: every fold holding the checkpoint), as
    ``nnUNetv2_predict -prev_stage_predictions`` does. ``stacking``: a stacking model (``clips-nnunet stack`` or
    ``import-tmtv``) that replaces the fold average of the stage it was trained for.
    The trainer class named in the checkpoint must be findable: for clips-nnunet trainers set ``nnUNet_extTrainer``
    (``eval "$(clips-nnunet env)"``).
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    if metric not in SCORE_METRICS:
        raise CurriculumConfigError(f"unknown metric {metric!r}; choose one of {SCORE_METRICS}")
    model_folder, images_folder, labels_folder = Path(model_folder), Path(images_folder), Path(labels_folder)
    for folder, what in ((model_folder, "model folder"), (images_folder, "images folder"),
                         (labels_folder, "labels folder")):
        if not folder.is_dir():
            raise DatasetError(f"{what} {folder} does not exist")
    dataset_json = read_json(model_folder / "dataset.json")
    ending = dataset_json["file_ending"]
    labels = {c: p for c, p in _prediction_files(labels_folder).items()}
    wanted = sorted(labels) if case_ids is None else [str(c) for c in case_ids]
    from clips_nnunet.prediction.ensemble import raw_image_roles
    from clips_nnunet.dataset_conversion.channels import channel_roles
    teacher_roles = channel_roles(dataset_json.get("channel_names", {}), model_folder.name)  # e.g. PET-only
    source = raw_image_roles(images_folder)
    missing = [r for r in teacher_roles if r not in source]
    if missing:
        raise DatasetError(f"{model_folder.name} needs {' and '.join(missing)}, which {images_folder} lacks")
    inputs, names = [], []
    for case_id in wanted:
        files = [images_folder / f"{case_id}_{source[r]:04d}{ending}" for r in teacher_roles]
        if not all(f.is_file() for f in files) or case_id not in labels:
            warnings.warn(f"case {case_id}: images or label missing, not scored", stacklevel=2)
            continue
        inputs.append([str(f) for f in files])
        names.append(case_id)
    if not inputs:
        raise DatasetError(f"no case of {images_folder} has images and a label in {labels_folder}")
    tmp = None
    if output_folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="clips_score_")
        output_folder = tmp.name
    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    try:
        stages = _stages(model_folder, folds, prev_stage_folds, checkpoint_name)
        stacked = _stacked_folder_name(stacking) if stacking is not None else None
        if stacked is not None and stacked not in [f.name for f, _ in stages]:
            raise DatasetError(f"stacking model {Path(stacking).name} stacks {stacked}, which is not a stage of "
                               f"{model_folder.name}; give the stacking file of this model")
        previous = None
        for i, (folder, stage_folds) in enumerate(stages):
            predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                        device=torch.device(device), verbose=False, allow_tqdm=True)
            from clips_nnunet.trainers.checkpoints import load_trained_model  # errors name the checkpoint file
            load_trained_model(predictor, folder, stage_folds, checkpoint_name)
            if folder.name == stacked:  # checks dataset, folds and checkpoint, then stacks instead of averaging
                from clips_nnunet.tmtv.stacking import apply_stacking
                holders = [predictor if j == i else None for j in range(len(stages))]
                apply_stacking(stacking, holders, [{"model": f.name, "folds": list(sf)} for f, sf in stages],
                               checkpoint_name)
            last = i == len(stages) - 1
            target = output_folder if last else output_folder / f"stage_{i + 1}"
            target.mkdir(parents=True, exist_ok=True)
            # no worker processes: works from any caller (notebooks, stdin scripts, spawn start method)
            predictor.predict_from_files_sequential(inputs, [str(target / n) for n in names],
                                                    save_probabilities=last and metric == "loss", overwrite=True,
                                                    folder_with_segs_from_prev_stage=previous)
            previous = str(target)
        table = {}
        for case_id in names:
            table[case_id] = score_case(metric, output_folder / f"{case_id}{ending}", labels[case_id])
        return table
    finally:
        if tmp is not None:
            tmp.cleanup()


def score_with_models(model, images_folder: PathLike, labels_folder: PathLike, metric: str = "dice",
                      device: str = "auto", case_ids: Optional[Sequence[str]] = None,
                      output_folder: Optional[PathLike] = None, progress: bool = True
                      ) -> Dict[str, Dict[str, object]]:
    """Score training cases with installed nnU-Net models (``score --predict --model``): ``model`` is a
    :class:`clips_nnunet.prediction.models.ModelSpec` or an :class:`clips_nnunet.prediction.ensemble.Ensemble`
    (union or mean probability), e.g. LyROI's configurations or a model installed from a zip. Each model reads the
    channels its ``dataset.json`` names from ``images_folder`` (nnU-Net raw images; roles from the ``dataset.json``
    beside it). ``metric`` ``loss`` needs probabilities: one model or a mean ensemble. Returns what
    :func:`score_with_model` returns."""
    from clips_nnunet.prediction.ensemble import Ensemble, load_predictor, predict_raw_cases

    if metric not in SCORE_METRICS:
        raise CurriculumConfigError(f"unknown metric {metric!r}; choose one of {SCORE_METRICS}")
    if metric == "loss" and isinstance(model, Ensemble) and len(model.models) > 1 and model.merge != "mean":
        raise CurriculumConfigError("--metric loss needs probabilities: a union ensemble has none; use --merge mean")
    images_folder, labels_folder = Path(images_folder), Path(labels_folder)
    for folder, what in ((images_folder, "images folder"), (labels_folder, "labels folder")):
        if not folder.is_dir():
            raise DatasetError(f"{what} {folder} does not exist")
    labels = _prediction_files(labels_folder)
    names = sorted(labels) if case_ids is None else [str(c) for c in case_ids if str(c) in labels]
    if not names:
        raise DatasetError(f"no case of {images_folder} has a label in {labels_folder}")
    ending = _strip_ending(labels[names[0]].name)[1]
    tmp = None
    if output_folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="clips_score_")
        output_folder = tmp.name
    try:
        predictor = load_predictor(model, device=device, use_mirroring=False)
        predict_raw_cases(predictor, images_folder, output_folder, names, file_ending=ending,
                          save_probabilities=metric == "loss", progress=progress)
        return {c: score_case(metric, Path(output_folder) / f"{c}{ending}", labels[c]) for c in names}
    finally:
        if tmp is not None:
            tmp.cleanup()


def _stacked_folder_name(stacking: PathLike) -> str:
    from clips_nnunet.tmtv.stacking import load_stacking_model
    return load_stacking_model(stacking)[1].folder_name


def _stages(model_folder: Path, folds: Sequence[Union[int, str]], prev_stage_folds: Optional[Sequence],
            checkpoint_name: str) -> list:
    """``[(folder, folds)]`` to predict in order: the previous stage's folder first for a cascade's second stage."""
    plans = read_json(model_folder / "plans.json")
    configuration = model_folder.name.split("__")[-1]
    previous = plans.get("configurations", {}).get(configuration, {}).get("previous_stage")
    if not previous:
        return [(model_folder, list(folds))]
    prev_folder = model_folder.with_name("__".join(model_folder.name.split("__")[:-1] + [previous]))
    if prev_stage_folds is None:
        prev_stage_folds = sorted(int(p.name[5:]) for p in prev_folder.glob("fold_*")
                                  if p.name[5:].isdigit() and (p / checkpoint_name).is_file()) or (
            ["all"] if (prev_folder / "fold_all" / checkpoint_name).is_file() else [])
    if not prev_folder.is_dir() or not prev_stage_folds:
        raise DatasetError(f"{model_folder.name} is the second stage of a cascade but {prev_folder} holds no "
                           f"{checkpoint_name}; train or import its first stage ({previous}) first")
    return [(prev_folder, list(prev_stage_folds)), (model_folder, list(folds))]
