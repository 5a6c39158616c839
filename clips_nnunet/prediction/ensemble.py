"""Several trained nnU-Net models as one: merged by the union of their foreground masks or by mean probability,
and run over a folder of nnU-Net raw images (for ``score --predict``, ``audit`` and ``compare``).

- ``union`` (LyROI's rule, ``scripts/merge_delinations.py`` of hzdr-MedImaging/LyROI: ``np.logical_or`` of the
  models' masks): a voxel is lesion (label 1) where any model predicts foreground (any label > 0). Each model
  predicts as it would alone (its folds softmax-averaged by nnU-Net), so the merged mask is exactly the voxel-wise
  union of the single-model masks.
- ``mean``: the class probabilities of the models (each already the fold average nnU-Net exports with
  ``--save_probabilities``) are averaged with equal weight and turned into labels by nnU-Net's own
  ``LabelManager.convert_probabilities_to_segmentation`` (argmax; regions: threshold 0.5), which is what
  ``nnUNetv2_ensemble`` does with probability files. The models must share their ``labels``.

Every model gets the input channels its ``dataset.json`` names (:func:`clips_nnunet.dataset_conversion.channels.channel_roles`),
so PET/CT and PET-only models mix.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from clips_nnunet.errors import DatasetError, UsageError
from clips_nnunet.dataset_conversion.write import write_image
from clips_nnunet.io_utils import PathLike, atomic_path, atomic_write_json, read_image, read_json
from clips_nnunet.dataset_conversion.channels import INPUT_ROLES, channel_roles
from clips_nnunet.prediction.models import CasePredictor, Images, ModelSpec, by_role

__all__ = ["Ensemble", "EnsemblePredictor", "MERGE_RULES", "Model", "load_predictor", "model_label", "raw_image_roles",
           "predict_raw_cases", "predict_reference_cases"]

#: How :class:`EnsemblePredictor` merges its models
MERGE_RULES = ("union", "mean")


@dataclass
class Ensemble:
    """Several models (:class:`ModelSpec`, each with its own dataset, configuration, trainer, plans, folds and
    checkpoint) merged by ``merge`` (:data:`MERGE_RULES`; ``union`` is LyROI's rule)."""

    models: List[ModelSpec] = field(default_factory=list)
    merge: str = "union"

    def __post_init__(self) -> None:
        self.models = list(self.models)
        if not self.models:
            raise UsageError("an ensemble needs at least one model")
        if self.merge not in MERGE_RULES:
            raise UsageError(f"merge rule {self.merge!r} is unknown; use {' or '.join(MERGE_RULES)}")


Model = Union[ModelSpec, Ensemble]


class EnsemblePredictor:
    """The models of an :class:`Ensemble`, loaded once, merged per case; used like :class:`CasePredictor`."""

    def __init__(self, ensemble: Ensemble, device: str = "auto", use_mirroring: bool = True):
        self.ensemble = ensemble
        self.members = [CasePredictor(spec, device=device, use_mirroring=use_mirroring) for spec in ensemble.models]
        if ensemble.merge == "mean":
            first = self.members[0].labels
            for spec, member in zip(ensemble.models[1:], self.members[1:]):
                if member.labels != first:
                    raise DatasetError(f"mean-probability ensemble: model {spec.name} has labels {member.labels}, "
                                       f"model {ensemble.models[0].name} {first}; average only models with the "
                                       "same labels, or merge by union")
        self.device = self.members[0].device

    @property
    def roles(self) -> List[str]:
        """The input roles any member reads (:data:`INPUT_ROLES` order)."""
        return [r for r in INPUT_ROLES if any(r in m.roles for m in self.members)]

    def model_description(self) -> Dict[str, Any]:
        """Every member's stages (``model`` prefixed with its dataset), the merge rule, for reports."""
        stages = []
        for k, member in enumerate(self.members, 1):
            for info in member.stage_info:
                stages.append({**info, "model": f"{member.spec.dataset}/{info['model']}",
                               "stage": f"{info['stage']} of model {k}"})
        return {"dataset": ", ".join(str(m.spec.dataset) for m in self.members),
                "checkpoint": ", ".join(sorted({m.spec.checkpoint for m in self.members})),
                "device": self.device.type, "merge": self.ensemble.merge, "stages": stages}

    def predict_images(self, images: Images, case_id: str) -> sitk.Image:
        """The merged label map on the grid of ``images`` (``[ct, pet]`` or ``{role: image}``)."""
        if self.ensemble.merge == "union":
            masks = [sitk.GetArrayFromImage(m.predict_images(images, case_id)) > 0 for m in self.members]
            merged = np.logical_or.reduce(masks).astype(np.uint8)
            out = sitk.GetImageFromArray(merged)
            out.CopyInformation(next(iter(by_role(images).values())))
            return out
        return _labels_image(self, self.predict_probabilities(images, case_id), images)

    def predict_probabilities(self, images: Images, case_id: str) -> np.ndarray:
        """Mean of the members' class probabilities (classes, z, y, x)."""
        total: Optional[np.ndarray] = None
        for member in self.members:
            p = member.predict_probabilities(images, case_id).astype(np.float64)
            total = p if total is None else total + p
        return (total / len(self.members)).astype(np.float32)


def _labels_image(predictor: Union[CasePredictor, EnsemblePredictor], probabilities: np.ndarray,
                  images: Images) -> sitk.Image:
    """Labels of ``probabilities`` by nnU-Net's ``LabelManager`` of the (first) model, on the grid of ``images``."""
    member = predictor.members[0] if isinstance(predictor, EnsemblePredictor) else predictor
    labels = member.stages[-1].label_manager.convert_probabilities_to_segmentation(probabilities)
    out = sitk.GetImageFromArray(np.asarray(labels).astype(np.uint8))
    out.CopyInformation(next(iter(by_role(images).values())))
    return out


def load_predictor(model: Model, device: str = "auto", use_mirroring: bool = True
                   ) -> Union[CasePredictor, EnsemblePredictor]:
    """A :class:`CasePredictor` for one model (or a one-model ensemble), else an :class:`EnsemblePredictor`."""
    if isinstance(model, Ensemble):
        if len(model.models) == 1:
            return CasePredictor(model.models[0], device=device, use_mirroring=use_mirroring)
        return EnsemblePredictor(model, device=device, use_mirroring=use_mirroring)
    return CasePredictor(model, device=device, use_mirroring=use_mirroring)


def model_label(model: Model) -> str:
    """A folder-safe name of a model or ensemble: ``Trainer__Plans__Config`` (``+`` between ensemble members, then
    ``__union``/``__mean``), dataset prefixed as ``dNNN_``."""
    specs = model.models if isinstance(model, Ensemble) else [model]
    names = [f"d{s.dataset}_{s.trainer}__{s.plans}__{s.configuration}" for s in specs]
    label = "+".join(names) + (f"__{model.merge}" if isinstance(model, Ensemble) and len(specs) > 1 else "")
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", label)


def raw_image_roles(images_folder: PathLike) -> Dict[str, int]:
    """``{role: channel index}`` of an nnU-Net raw images folder (``imagesTr``/``imagesTs``), from the
    ``dataset.json`` beside it; without one, the converter's layout (``_0000`` CT, ``_0001`` PET)."""
    dataset_json = Path(images_folder).parent / "dataset.json"
    if not dataset_json.is_file():
        return {role: i for i, role in enumerate(INPUT_ROLES)}
    names = read_json(dataset_json).get("channel_names") or {}
    return {role: i for i, role in enumerate(channel_roles(names, f"the images of {dataset_json.parent.name}"))}


def predict_raw_cases(predictor: Union[CasePredictor, EnsemblePredictor], images_folder: PathLike,
                      output_folder: PathLike, case_ids: Sequence[str], file_ending: str = ".nii.gz",
                      save_probabilities: bool = False, progress: bool = True) -> List[str]:
    """Predict ``case_ids`` of an nnU-Net raw images folder (``{case}_{channel:04d}{file_ending}``) into
    ``output_folder/{case}{file_ending}`` (and ``{case}.npz`` with ``probabilities`` (classes, z, y, x), as nnU-Net
    writes them, when ``save_probabilities``). Each model reads the channels of its roles
    (:func:`raw_image_roles`). Returns the cases predicted; a case without the images a model needs raises
    :class:`DatasetError` naming it."""
    from tqdm import tqdm

    images_folder, output_folder = Path(images_folder), Path(output_folder)
    roles = raw_image_roles(images_folder)
    missing = [r for r in predictor.roles if r not in roles]
    if missing:
        raise DatasetError(f"{images_folder.parent.name}: the model needs {' and '.join(missing)} but the images' "
                           f"dataset.json has {sorted(roles)}")
    output_folder.mkdir(parents=True, exist_ok=True)
    done = []
    for case_id in tqdm(list(case_ids), desc="predict", unit="case", disable=not progress):
        images = {}
        for role in predictor.roles:
            path = images_folder / f"{case_id}_{roles[role]:04d}{file_ending}"
            if not path.is_file():
                raise DatasetError(f"case {case_id}: no {role} image {path.name} in {images_folder}")
            images[role] = read_image(path, what=f"{role} image")
        if save_probabilities:  # one prediction: the labels from the probabilities, as nnU-Net's ensembling does
            probabilities = predictor.predict_probabilities(images, case_id)
            with atomic_path(output_folder / f"{case_id}.npz") as tmp:  # verified (zip), fsync'd, then renamed
                np.savez_compressed(tmp, probabilities=probabilities)
            mask = _labels_image(predictor, probabilities, images)
        else:
            mask = predictor.predict_images(images, case_id)
        write_image(mask, output_folder / f"{case_id}{file_ending}")  # atomic, read back and checked
        done.append(case_id)
    return done


def predict_reference_cases(model: Model, images_folder: PathLike, reference_folder: PathLike,
                            output_folder: PathLike, device: str = "auto", validation_layout: bool = False,
                            progress: bool = True) -> Path:
    """Predict, with a model or ensemble, every case of ``images_folder`` that has a reference mask in
    ``reference_folder``, so that the model enters ``audit`` or ``compare`` as one more prediction set.

    Writes ``output_folder/{case}{ending}`` (or, with ``validation_layout``, ``output_folder/fold_all/validation/``,
    the layout ``audit`` reads) and ``output_folder/dataset.json`` with the ``file_ending``. Returns
    ``output_folder``. Predicted without test-time mirroring, like ``score --predict``."""
    references = Path(reference_folder)
    if not references.is_dir():
        raise DatasetError(f"reference folder {references} does not exist; give the reference masks with --gt")
    ending = ".nii.gz"
    cases = sorted(f.name[: -len(ending)] for f in references.iterdir() if f.name.endswith(ending))
    if not cases:
        raise DatasetError(f"reference folder {references} holds no {ending} masks")
    output_folder = Path(output_folder)
    target = output_folder / "fold_all" / "validation" if validation_layout else output_folder
    predictor = load_predictor(model, device=device, use_mirroring=False)
    predict_raw_cases(predictor, images_folder, target, cases, file_ending=ending, progress=progress)
    atomic_write_json(output_folder / "dataset.json", {"file_ending": ending, "model": predictor.model_description()})
    return output_folder
