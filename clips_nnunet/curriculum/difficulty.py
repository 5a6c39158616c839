"""Difficulty sources for curricula (higher = harder), each normalised to ranks in [0, 1].

Three sources, all returning ``{case_id: difficulty}`` with 0 = easiest and 1 = hardest:

- :func:`difficulty_from_metadata`: one measure of the converter's ``case_metadata.json``
  (``$nnUNet_raw/DatasetXXX/case_metadata.json``); :data:`METADATA_MEASURES` gives each measure's direction.
- :func:`read_difficulty_csv`: a user file, either ``case_id,difficulty`` rows or a plain list of known-hard case ids,
  validated against the training keys.
- :func:`score_cross_validation` (transfer teacher / bootstrapping without leakage, Hacohen & Weinshall 2019;
  Yousefirizi et al. 2022): the out-of-fold predictions of an nnU-Net cross-validation (``fold_X/validation``), each
  case scored by the fold model that never trained on it; and :func:`score_with_model`, which runs a trained model
  (``nnUNetPredictor``) on the training cases. Write the result with :func:`write_difficulty_csv`.

Raw scores become ranks with :func:`rank_normalise` (ties share their average rank), so every source has the same
scale and the pacing functions only see an order.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

from clips_nnunet.errors import CurriculumConfigError, DatasetError
from clips_nnunet.io_utils import atomic_write_text, read_json

PathLike = Union[str, os.PathLike]

#: Direction of each ``case_metadata.json`` measure: +1 = a larger value makes a case harder, -1 = a smaller value
#: makes it harder. Lymphoma PET/CT reasoning: small total volume, small smallest lesion, low uptake and low
#: lesion-to-background contrast are easy to miss; many lesions and widely spread disease (large Dmax) are more
#: places to go wrong.
METADATA_MEASURES: Dict[str, int] = {
    "tmtv_ml": -1,
    "n_lesions": +1,
    "suv_max": -1,
    "suv_mean": -1,
    "tlg_g": -1,
    "smallest_lesion_ml": -1,
    "largest_lesion_ml": -1,
    "dmax_mm": +1,
    "lesion_to_background": -1,
    "planted_difficulty": +1,  # synthetic datasets only
}

#: Where lesion-free cases (``n_lesions == 0`` or ``tmtv_ml == 0``) go for lesion measures: their lesion measures
#: are 0 or missing, which the directions above would otherwise read as "hardest" or "easiest" by accident.
LESION_FREE_POLICIES = ("median", "easiest", "hardest")

SCORE_METRICS = ("dice", "tmtv", "loss")


def rank_normalise(values: Sequence[float]) -> np.ndarray:
    """Ranks of ``values`` scaled to [0, 1]: smallest -> 0, largest -> 1, ties share their average rank.

    ``(rank - 1) / (N - 1)`` with scipy's average ranks; one case gets 0.5. Non-finite values are an error.
    """
    from scipy.stats import rankdata

    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise CurriculumConfigError("rank_normalise needs a non-empty 1-D sequence of scores")
    if not np.all(np.isfinite(array)):
        raise CurriculumConfigError(f"difficulty scores must be finite; got {array[~np.isfinite(array)][:5]}")
    if array.size == 1:
        return np.array([0.5])
    return (rankdata(array, method="average") - 1.0) / (array.size - 1.0)


def _validate_case_ids(case_ids: Sequence[str]) -> List[str]:
    case_ids = [str(c) for c in case_ids]
    if not case_ids:
        raise CurriculumConfigError("the training split is empty: no case ids to give a difficulty to")
    duplicates = sorted({c for c in case_ids if case_ids.count(c) > 1})
    if duplicates:
        raise CurriculumConfigError(f"duplicate training case ids: {duplicates[:10]}")
    return case_ids


def load_case_metadata(raw_dataset_folder: PathLike) -> Dict[str, dict]:
    """``case_metadata.json`` of an nnU-Net raw dataset folder (written by the converter)."""
    path = Path(raw_dataset_folder) / "case_metadata.json"
    if not path.is_file():
        raise DatasetError(f"{path} does not exist: convert the cohort with clips-nnunet convert (it writes "
                           f"case_metadata.json), or give the curriculum a difficulty CSV instead")
    data = read_json(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path} must hold a JSON object case_id -> {{measure: value}}")
    return data


def _is_lesion_free(entry: Mapping) -> bool:
    n = entry.get("n_lesions")
    if n is not None and float(n) == 0:
        return True
    tmtv = entry.get("tmtv_ml")
    return tmtv is not None and float(tmtv) == 0


def difficulty_from_metadata(metadata: Mapping[str, Mapping], case_ids: Sequence[str], measure: str = "tmtv_ml",
                             lesion_free: str = "median") -> Dict[str, float]:
    """Difficulty rank of each training case from one measure of ``case_metadata.json``.

    ``measure``: a key of :data:`METADATA_MEASURES` (its direction says whether large or small values are hard).
    ``lesion_free``: rank given to lesion-free cases, which have no lesion to miss: ``"median"`` (0.5, default),
    ``"easiest"`` (0) or ``"hardest"`` (1); the cases with lesions are ranked among themselves over [0, 1].
    ``planted_difficulty`` is not a lesion measure, so the policy does not apply to it.
    """
    case_ids = _validate_case_ids(case_ids)
    if measure not in METADATA_MEASURES:
        raise CurriculumConfigError(f"unknown difficulty measure {measure!r}; choose one of "
                                    f"{sorted(METADATA_MEASURES)}")
    if lesion_free not in LESION_FREE_POLICIES:
        raise CurriculumConfigError(f"lesion_free must be one of {LESION_FREE_POLICIES}, got {lesion_free!r}")
    missing = [c for c in case_ids if c not in metadata]
    if missing:
        raise CurriculumConfigError(f"case_metadata.json has no entry for training cases {missing[:10]}"
                                    f"{' ...' if len(missing) > 10 else ''} ({len(missing)} in all): re-run the "
                                    f"conversion or use a difficulty CSV")
    direction = METADATA_MEASURES[measure]
    free = [c for c in case_ids if measure != "planted_difficulty" and _is_lesion_free(metadata[c])]
    ranked = [c for c in case_ids if c not in free]
    values = []
    for c in ranked:
        value = metadata[c].get(measure)
        if value is None or not np.isfinite(float(value)):
            raise CurriculumConfigError(f"case {c}: case_metadata.json has no finite {measure!r} "
                                        f"(got {value!r}); choose another measure or fix the metadata")
        values.append(direction * float(value))
    result: Dict[str, float] = {}
    if ranked:
        result.update(zip(ranked, (float(v) for v in rank_normalise(values))))
    fill = {"median": 0.5, "easiest": 0.0, "hardest": 1.0}[lesion_free]
    result.update({c: fill for c in free})
    return {c: result[c] for c in case_ids}


def groups_from_metadata(metadata: Mapping[str, Mapping], case_ids: Sequence[str], key: str = "vendor"
                         ) -> Dict[str, str]:
    """Group label of each case for diversity curricula (SPLD): a metadata field such as ``vendor``, or
    ``"lesion_band"`` = lesion-count band (``0``, ``1``, ``2-4``, ``5-9``, ``10+``) from ``n_lesions``.

    Cases without the field get the group ``"unknown"``; if no case has it, all cases form one group and a warning
    says so (SPLD then reduces to self-paced learning with a rank-dependent threshold).
    """
    case_ids = _validate_case_ids(case_ids)
    groups: Dict[str, str] = {}
    field = "n_lesions" if key == "lesion_band" else key
    for c in case_ids:
        value = (metadata.get(c) or {}).get(field)
        if value is None:
            groups[c] = "unknown"
        elif key == "lesion_band":
            n = int(value)
            groups[c] = "0" if n == 0 else "1" if n == 1 else "2-4" if n <= 4 else "5-9" if n <= 9 else "10+"
        else:
            groups[c] = str(value)
    if all(g == "unknown" for g in groups.values()):
        warnings.warn(f"no case has metadata field {field!r}: SPLD uses a single group", stacklevel=2)
        groups = {c: "all" for c in case_ids}
    return groups


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_difficulty_csv(path: PathLike, case_ids: Sequence[str], known_ids: Optional[Sequence[str]] = None
                        ) -> Dict[str, float]:
    """Difficulty rank of each training case from a CSV file.

    ``case_ids``: this fold's training cases; ``known_ids``: every case of the dataset (default: ``case_ids``).
    Listed ids that are known but not training cases of this fold (its validation cases, e.g. from a
    cross-validation CSV that scores every case) are ignored; ids that are not known at all are an error.

    Two formats:
    - ``case_id,difficulty`` (header optional; extra columns ignored): every training case must be listed;
      scores are rank-normalised (higher = harder);
    - a plain list of known-hard case ids (one per line, optional header ``case_id``): listed cases get
      difficulty 1, the others 0.
    Ids that are not training cases raise :class:`CurriculumConfigError` listing them.
    """
    case_ids = _validate_case_ids(case_ids)
    path = Path(path)
    if not path.is_file():
        raise CurriculumConfigError(f"difficulty file {path} does not exist: write one with `clips-nnunet score` "
                                    f"or give a CSV of case_id,difficulty")
    rows = [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(path.read_text(encoding="utf-8")))]
    rows = [r for r in rows if r and any(r) and not r[0].startswith("#")]
    if rows and rows[0][0].lower() in ("case_id", "case", "id", "key"):
        header, rows = rows[0], rows[1:]
    else:
        header = None
    if not rows:
        raise CurriculumConfigError(f"difficulty file {path} lists no cases")
    two_columns = all(len(r) >= 2 and r[1] != "" for r in rows)
    if two_columns and header is not None and "difficulty" in [h.lower() for h in header]:
        column = [h.lower() for h in header].index("difficulty")
    else:
        column = 1
    known = set(case_ids) | set(str(k) for k in (known_ids or ()))
    listed = [r[0] for r in rows]
    unknown = sorted(set(listed) - known)
    if unknown:
        raise CurriculumConfigError(
            f"difficulty file {path}: {len(unknown)} case id(s) are not cases of this dataset: {unknown[:20]}"
            f"{' ...' if len(unknown) > 20 else ''}; use the case ids of dataset.json / splits_final.json "
            f"(e.g. case_0003, without channel suffix or file ending)")
    duplicated = sorted({c for c in listed if listed.count(c) > 1})
    if duplicated:
        raise CurriculumConfigError(f"difficulty file {path}: case ids listed twice: {duplicated[:20]}")
    training = set(case_ids)
    rows = [r for r in rows if r[0] in training]  # other folds' training cases: not ours to rank
    listed = [r[0] for r in rows]
    if two_columns:
        bad = [r[0] for r in rows if len(r) <= column or not _looks_numeric(r[column])]
        if bad:
            raise CurriculumConfigError(f"difficulty file {path}: non-numeric difficulty for {bad[:10]}")
        missing = [c for c in case_ids if c not in set(listed)]
        if missing:
            raise CurriculumConfigError(
                f"difficulty file {path}: {len(missing)} training case(s) have no difficulty: {missing[:20]}; "
                f"score every training case (clips-nnunet score) or give a plain list of hard cases instead")
        scores = {r[0]: float(r[column]) for r in rows}
        ranks = rank_normalise([scores[c] for c in case_ids])
        return {c: float(v) for c, v in zip(case_ids, ranks)}
    hard = set(listed)
    return {c: 1.0 if c in hard else 0.0 for c in case_ids}


def write_difficulty_csv(path: PathLike, table: Mapping[str, Mapping[str, object]]) -> Path:
    """Write ``case_id,difficulty,...`` (rows sorted by case id; extra columns sorted by name) atomically.

    ``table``: case_id -> {"difficulty": float, other columns...}.
    """
    columns = sorted({k for row in table.values() for k in row if k != "difficulty"})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_id", "difficulty", *columns])
    for case_id in sorted(table):
        row = table[case_id]
        writer.writerow([case_id, _fmt(row["difficulty"]), *(_fmt(row.get(c, "")) for c in columns)])
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


def _fmt(value: object) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)


# ---------------------------------------------------------------------------------------------------- case scores

def dice_score(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of the foreground (label > 0), from :func:`clips_nnunet.evaluation.metrics.dice_coefficient`; for a
    difficulty, a lesion-free case predicted lesion-free counts as solved (1.0) instead of undefined (NaN)."""
    from clips_nnunet.evaluation.metrics import dice_coefficient

    dice = dice_coefficient(np.asarray(prediction), np.asarray(reference))
    return 1.0 if math.isnan(dice) else float(dice)


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

    image = sitk.ReadImage(str(path))
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
    dice = dice_score(prediction, reference)
    row = {"dice": dice,
           "tmtv_pred_ml": float((prediction > 0).sum()) * voxel_ml,
           "tmtv_ref_ml": float((reference > 0).sum()) * voxel_ml}
    if metric == "dice":
        row["difficulty"] = 1.0 - dice
    elif metric == "tmtv":
        row["difficulty"] = tmtv_error(prediction, reference, voxel_ml)
    else:
        npz = prediction_file.with_name(_strip_ending(prediction_file.name)[0] + ".npz")
        if not npz.is_file():
            raise DatasetError(f"{npz} does not exist: --metric loss needs the softmax of each validation case; "
                               f"re-run the validation with `nnUNetv2_train ... --val --npz`, or use --metric dice")
        with np.load(npz) as data:
            row["difficulty"] = probability_loss(data["probabilities"], reference)
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
    by ``nnUNetv2_train``). ``gt_folder``: labels; default ``$nnUNet_preprocessed/DatasetXXX/gt_segmentations``
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
    if gt_folder is None:
        preprocessed = os.environ.get("nnUNet_preprocessed")
        if not preprocessed:
            raise DatasetError("nnUNet_preprocessed is not set: export it or pass the labels folder (--labels)")
        gt_folder = Path(preprocessed) / results_folder.parent.name / "gt_segmentations"
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
                     case_ids: Optional[Sequence[str]] = None, output_folder: Optional[PathLike] = None
                     ) -> Dict[str, Dict[str, object]]:
    """Score training cases by running a trained model (``nnUNetPredictor``) on them: a teacher trained on other
    data (or the full model: then the scores are in-sample and optimistic; prefer :func:`score_cross_validation`).

    ``model_folder``: ``Trainer__Plans__Config`` folder; ``images_folder``: nnU-Net raw images (``imagesTr``);
    ``labels_folder``: labels (``labelsTr``). Predictions go to ``output_folder`` (default: a temporary folder).
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
    n_channels = len(dataset_json["channel_names"])
    inputs, names = [], []
    for case_id in wanted:
        files = [images_folder / f"{case_id}_{i:04d}{ending}" for i in range(n_channels)]
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
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    device=torch.device(device), verbose=False, allow_tqdm=True)
        predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=tuple(folds),
                                                       checkpoint_name=checkpoint_name)
        # no worker processes: works from any caller (notebooks, stdin scripts, spawn start method)
        predictor.predict_from_files_sequential(inputs, [str(output_folder / n) for n in names],
                                                save_probabilities=metric == "loss", overwrite=True)
        table = {}
        for case_id in names:
            table[case_id] = score_case(metric, output_folder / f"{case_id}{ending}", labels[case_id])
        return table
    finally:
        if tmp is not None:
            tmp.cleanup()


def difficulty_ranks_from_table(table: Mapping[str, Mapping[str, object]], case_ids: Sequence[str]
                                ) -> Dict[str, float]:
    """Rank-normalised difficulty of ``case_ids`` from a score table (see :func:`score_cross_validation`)."""
    case_ids = _validate_case_ids(case_ids)
    missing = [c for c in case_ids if c not in table]
    if missing:
        raise CurriculumConfigError(f"no score for training cases {missing[:20]}")
    ranks = rank_normalise([float(table[c]["difficulty"]) for c in case_ids])
    return {c: float(r) for c, r in zip(case_ids, ranks)}
