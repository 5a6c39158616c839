"""Trained nnU-Net models for prediction from DICOM: which model (:class:`ModelSpec`, named as on
``nnUNetv2_predict``'s command line), where it lives (:func:`model_folder`, :func:`available_folds`), which input
each of its channels is (:func:`clips_nnunet.dataset_conversion.channels.channel_roles`) and the loaded predictor(s) of one model applied case by case
(:class:`CasePredictor`, the one place that calls nnU-Net's ``predict_single_npy_array``).

Any nnU-Net v2 model works, trained here or installed with ``nnUNetv2_install_pretrained_model_from_zip`` (a
results zip unpacks into ``$nnUNet_results/DatasetXXX_Name/Trainer__Plans__Config``, the same layout). Inputs are
given by role, ``CT`` (HU) and ``PET`` (SUV), the two images the converter writes as ``_0000`` and ``_0001``; each
model gets the channels its ``dataset.json`` ``channel_names`` ask for, in its order (a PET-only model gets the PET
alone). Several models merged into one mask: :mod:`clips_nnunet.prediction.ensemble`.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from clips_nnunet.dataset_conversion.channels import INPUT_ROLES, ROLE_NAMES, channel_roles
from clips_nnunet.errors import ClipsError, DatasetError, UsageError
from clips_nnunet.io_utils import read_json
from clips_nnunet.nnunet_env import nnunet_folder, resolve_device
from clips_nnunet.trainers.checkpoints import load_trained_model

__all__ = ["ModelSpec", "CasePredictor", "model_folder", "available_folds", "Images", "FILE_ENDING"]

#: The image file ending of the converter's NIfTI files, the only one ``clips-nnunet predict`` feeds
FILE_ENDING = ".nii.gz"

#: Input images of one case: a list in :data:`INPUT_ROLES` order, or ``{role: image}``
Images = Union[Sequence[sitk.Image], Mapping[str, sitk.Image]]


@dataclass
class ModelSpec:
    """Which trained nnU-Net model to use, named as on ``nnUNetv2_predict``'s command line.

    ``prev_stage_configuration`` / ``prev_stage_trainer`` / ``prev_stage_plans`` name stage 1 of a cascade; when the
    configuration's plans name a ``previous_stage`` and these are None, the configuration from the plans, the same
    trainer and the same plans are used.
    """

    dataset: Union[int, str]
    configuration: str
    trainer: str = "nnUNetTrainer"
    plans: str = "nnUNetPlans"
    folds: Optional[Sequence[Union[int, str]]] = None
    checkpoint: str = "checkpoint_final.pth"
    prev_stage_configuration: Optional[str] = None
    prev_stage_trainer: Optional[str] = None
    prev_stage_plans: Optional[str] = None
    prev_stage_folds: Optional[Sequence[Union[int, str]]] = None
    #: TMTV-Net's learned fold ensemble (a file from ``clips-nnunet stack``) instead of softmax averaging
    stacking: Optional[str] = None
    #: role of each input channel (``CT``/``PET``), only for a model whose ``dataset.json`` names cannot be matched
    channels: Optional[Sequence[str]] = None

    def __post_init__(self) -> None:
        if not self.configuration:
            raise UsageError("ModelSpec: `configuration` is required (e.g. 3d_fullres)")
        for what, value in (("trainer", self.trainer), ("plans", self.plans), ("configuration", self.configuration),
                            ("stage-1 trainer", self.prev_stage_trainer), ("stage-1 plans", self.prev_stage_plans)):
            if value is not None and "__" in str(value):
                raise UsageError(f"{what} name {value!r} must not contain '__' (nnU-Net uses it as the separator "
                                 "of results folder names)")
        self.folds = _folds(self.folds, "-f")
        self.prev_stage_folds = _folds(self.prev_stage_folds, "--prev-stage-folds")
        if self.channels is not None:
            self.channels = [_role(c, f"channels of {self.name}") for c in self.channels]

    @property
    def name(self) -> str:
        """``Dataset/Trainer__Plans__Configuration``, as nnU-Net names the results folder (for messages)."""
        return f"{self.dataset}/{self.trainer}__{self.plans}__{self.configuration}"


def _role(text: str, what: str) -> str:
    role = str(text).strip().upper()
    if role not in ROLE_NAMES:
        raise UsageError(f"{what}: {text!r} is not a role; use {' or '.join(ROLE_NAMES)}")
    return role


def _folds(folds: Optional[Sequence[Union[int, str]]], option: str) -> Optional[List[Union[int, str]]]:
    """Fold numbers (or ``all``) as nnU-Net names them; :class:`UsageError` for anything else."""
    if folds is None:
        return None
    out: List[Union[int, str]] = []
    for f in folds:
        text = str(f).strip()
        if text == "all":
            out.append("all")
        elif text.isdigit():
            out.append(int(text))
        else:
            raise UsageError(f"{option}: fold {f!r} must be a fold number (0, 1, ...) or 'all'")
    return out


def model_folder(dataset: Union[int, str], trainer: str, plans: str, configuration: str) -> Path:
    """The results folder ``$nnUNet_results/DatasetXXX_Name/trainer__plans__configuration``; clear error if absent."""
    nnunet_folder("nnUNet_results")  # one line when unset or not a folder (nnunet_env owns nnU-Net's folders)
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    try:
        folder = Path(get_output_folder(dataset, trainer, plans, configuration))
    except (RuntimeError, AssertionError) as e:
        raise DatasetError(f"dataset {dataset!r} is not found under nnUNet_raw/nnUNet_preprocessed/nnUNet_results "
                           f"({e}); check -d and the nnUNet_* environment variables") from e
    if not (folder / "plans.json").is_file():
        raise DatasetError(f"no trained model at {folder}: train it with nnUNetv2_train {dataset} {configuration} "
                           f"FOLD -tr {trainer} -p {plans}, or check -d/-c/-tr/-p")
    return folder


def available_folds(folder: Path, checkpoint: str) -> List[Union[int, str]]:
    """Folds of ``folder`` that hold ``checkpoint`` (numbered folds first, ``all`` only if nothing else)."""
    numbered = sorted(int(p.name.split("_")[1]) for p in folder.glob("fold_*")
                      if p.name.split("_")[1].isdigit() and (p / checkpoint).is_file())
    if numbered:
        return list(numbered)
    return ["all"] if (folder / "fold_all" / checkpoint).is_file() else []


def _make_predictor(folder: Path, folds: Optional[Sequence], checkpoint: str, device, use_mirroring: bool,
                    channels: Optional[Sequence[str]] = None) -> Tuple[Any, List[Union[int, str]], List[str]]:
    """(loaded ``nnUNetPredictor``, folds, role of each input channel) of one results folder."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    if folds is None:
        folds = available_folds(folder, checkpoint)
    if not folds:
        raise DatasetError(f"no fold of {folder} holds {checkpoint}: finish training (nnUNetv2_train) or name "
                           "another checkpoint with --chk (e.g. checkpoint_best.pth)")
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    load_trained_model(predictor, folder, folds, checkpoint)
    model = f"{folder.parent.name}/{folder.name}"
    names = predictor.dataset_json.get("channel_names") or predictor.dataset_json.get("modality") or {}
    if channels is not None:
        if len(channels) != len(names):
            raise DatasetError(f"model {model} has {len(names)} input channel(s) {list(names.values())}, but "
                               f"{len(channels)} role(s) {list(channels)} were given")
        roles = list(channels)
    else:
        roles = channel_roles(names, f"model {model}", hint="give the roles explicitly (--model's 7th field, e.g. "
                              ":CT,PET; ModelSpec channels)")
    if predictor.dataset_json.get("file_ending", FILE_ENDING) != FILE_ENDING:
        raise DatasetError(f"the model in {folder} was trained on {predictor.dataset_json['file_ending']} files; "
                           f"clips-nnunet predict writes {FILE_ENDING}")
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    reader = predictor.plans_manager.image_reader_writer_class
    if not issubclass(reader, SimpleITKIO):
        raise DatasetError(f"the model in {folder} reads its images with {reader.__name__}; clips-nnunet predict "
                           "feeds images as SimpleITKIO reads them (what clips-nnunet convert sets); use "
                           "nnUNetv2_predict on NIfTI files for this model")
    return predictor, list(folds), roles


def by_role(images: Images) -> Dict[str, sitk.Image]:
    """``{role: image}`` of a list in :data:`INPUT_ROLES` order or of a mapping (roles upper-cased)."""
    if isinstance(images, Mapping):
        return {str(k).upper(): v for k, v in images.items()}
    images = list(images)
    if len(images) != len(INPUT_ROLES):
        raise UsageError(f"give the images as [{', '.join(INPUT_ROLES)}] or as {{role: image}}; got {len(images)}")
    return dict(zip(INPUT_ROLES, images))


def _stage_input(images: Mapping[str, sitk.Image], roles: Sequence[str], case_id: str
                 ) -> Tuple[np.ndarray, Dict[str, Any]]:
    """The (channels, z, y, x) float32 array (one channel per role, in the model's order) and the properties
    nnU-Net's ``SimpleITKIO`` reads from the converter's NIfTI files of these images (spacing z, y, x)."""
    missing = [r for r in roles if r not in images]
    if missing:
        raise ClipsError(f"{case_id}: the model needs the {' and '.join(missing)} image, which this case lacks")
    chosen = [images[r] for r in roles]
    data = np.stack([sitk.GetArrayViewFromImage(im) for im in chosen]).astype(np.float32, copy=False)
    return data, {"spacing": [abs(float(v)) for v in chosen[0].GetSpacing()[::-1]]}


class CasePredictor:
    """nnU-Net predictor(s) of one model (one or two cascade stages), loaded once, applied case by case.

    :meth:`predict_images` returns the predicted label map as a SimpleITK image on the grid of the input images;
    :meth:`predict_probabilities` the class probabilities there (for averaging several models). Each stage gets
    the input channels its ``dataset.json`` names (:attr:`stage_roles`).
    """

    def __init__(self, spec: ModelSpec, device: str = "auto", use_mirroring: bool = True):
        import torch
        self.spec = spec
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            torch.set_num_threads(1)
        folder = model_folder(spec.dataset, spec.trainer, spec.plans, spec.configuration)
        self.stages: List[Any] = []
        self.stage_info: List[Dict[str, Any]] = []
        #: role of each input channel (``CT``/``PET``), per stage
        self.stage_roles: List[List[str]] = []
        plans = read_json(folder / "plans.json")
        config = plans.get("configurations", {}).get(spec.configuration)
        if config is None:
            raise DatasetError(f"configuration {spec.configuration!r} is not in {folder / 'plans.json'}; "
                               f"it has {sorted(plans.get('configurations', {}))}")
        previous = spec.prev_stage_configuration or config.get("previous_stage")
        if previous:
            prev_folder = model_folder(spec.dataset, spec.prev_stage_trainer or spec.trainer,
                                       spec.prev_stage_plans or spec.plans, previous)
            prev, prev_folds, prev_roles = _make_predictor(prev_folder, spec.prev_stage_folds or spec.folds,
                                                           spec.checkpoint, self.device, use_mirroring, spec.channels)
            self._add(prev, {"model": prev_folder.name, "folds": prev_folds, "stage": 1}, prev_roles)
        main, folds, roles = _make_predictor(folder, spec.folds, spec.checkpoint, self.device, use_mirroring,
                                             spec.channels)
        if main.configuration_manager.previous_stage_name is not None and not previous:
            raise DatasetError(f"{folder.name} is stage 2 of a cascade: name stage 1 with --prev-stage-config")
        self._add(main, {"model": folder.name, "folds": folds, "stage": len(self.stages) + 1}, roles)
        if spec.stacking:  # clips_nnunet.tmtv.stacking: checks the model, marks stage_info["stacking"]
            from clips_nnunet.tmtv.stacking import apply_stacking
            apply_stacking(spec.stacking, self.stages, self.stage_info, spec.checkpoint)

    def _add(self, predictor: Any, info: Dict[str, Any], roles: List[str]) -> None:
        self.stages.append(predictor)
        self.stage_info.append({**info, "channels": list(roles)})
        self.stage_roles.append(list(roles))

    @property
    def roles(self) -> List[str]:
        """The input roles this model reads (:data:`INPUT_ROLES` order), e.g. ``["PET"]`` for a PET-only model."""
        return [r for r in INPUT_ROLES if any(r in roles for roles in self.stage_roles)]

    @property
    def labels(self) -> Dict[str, Any]:
        """The ``labels`` of the (last stage's) ``dataset.json``."""
        return dict(self.stages[-1].dataset_json.get("labels", {}))

    def model_description(self) -> Dict[str, Any]:
        """Model, folds, checkpoint and device, for reports (no paths, no identifiers)."""
        return {"dataset": str(self.spec.dataset), "checkpoint": self.spec.checkpoint,
                "device": self.device.type, "stages": self.stage_info}

    def _run(self, images: Images, case_id: str, probabilities: bool) -> Any:
        """Every stage through nnU-Net's ``predict_single_npy_array`` with the arrays its ``SimpleITKIO`` would
        read from the converter's NIfTI files; stage 2 of a cascade gets stage 1's segmentation. Returns the last
        stage's segmentation, or (segmentation, probabilities) with ``probabilities``."""
        named = by_role(images)
        previous: Optional[np.ndarray] = None
        result: Any = None
        last = len(self.stages) - 1
        for i, (predictor, roles) in enumerate(zip(self.stages, self.stage_roles)):
            data, properties = _stage_input(named, roles, case_id)
            needs_previous = predictor.configuration_manager.previous_stage_name is not None
            with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints per case; keep the progress bar clean
                result = predictor.predict_single_npy_array(
                    data, dict(properties), previous if needs_previous else None,
                    save_or_return_probabilities=probabilities and i == last)
            segmentation = result[0] if probabilities and i == last else result
            previous = np.asarray(segmentation, dtype=np.float32)[None]  # as SimpleITKIO.read_seg reads it
        return result

    def _check_shape(self, array: np.ndarray, images: Images, case_id: str) -> sitk.Image:
        reference = next(iter(by_role(images).values()))
        if array.shape[-3:] != tuple(reference.GetSize()[::-1]):
            raise ClipsError(f"{case_id}: nnU-Net returned a {array.shape[-3:]} prediction for a "
                             f"{tuple(reference.GetSize()[::-1])} image (z, y, x)")
        return reference

    def predict_images(self, images: Images, case_id: str) -> sitk.Image:
        """Label map predicted from ``images`` (CT in HU, PET in SUV, on one grid: ``[ct, pet]`` or
        ``{role: image}``) on that grid."""
        seg = np.asarray(self._run(images, case_id, probabilities=False))
        reference = self._check_shape(seg, images, case_id)
        out = sitk.GetImageFromArray(seg.astype(np.uint8, copy=False))
        out.CopyInformation(reference)
        return out

    def predict_probabilities(self, images: Images, case_id: str) -> np.ndarray:
        """Class probabilities (classes, z, y, x; float32) of the last stage on the grid of ``images``, as nnU-Net
        exports them with ``--save_probabilities`` (softmax of the fold-averaged logits)."""
        _, probabilities = self._run(images, case_id, probabilities=True)
        probabilities = np.asarray(probabilities, dtype=np.float32)
        self._check_shape(probabilities, images, case_id)
        return probabilities
