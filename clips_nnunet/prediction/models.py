"""Trained nnU-Net models for prediction from DICOM: which model (:class:`ModelSpec`, named as on
``nnUNetv2_predict``'s command line), where it lives (:func:`model_folder`, :func:`available_folds`) and the
loaded predictor(s) of one model applied case by case (:class:`CasePredictor`, the one place that calls nnU-Net's
``predict_single_npy_array`` for ``clips-nnunet predict``).
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from clips_nnunet.errors import ClipsError, DatasetError, UsageError
from clips_nnunet.io_utils import read_json
from clips_nnunet.nnunet_env import nnunet_folder, resolve_device
from clips_nnunet.trainers.checkpoints import load_trained_model

__all__ = ["ModelSpec", "CasePredictor", "model_folder", "available_folds", "FILE_ENDING"]

#: The image file ending of the converter's NIfTI files, the only one ``clips-nnunet predict`` feeds
FILE_ENDING = ".nii.gz"


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


def _make_predictor(folder: Path, folds: Optional[Sequence], checkpoint: str, device, use_mirroring: bool):
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
    n_channels = len(predictor.dataset_json["channel_names"])
    if n_channels != 2:
        raise DatasetError(f"the model in {folder} expects {n_channels} input channels; clips-nnunet predict feeds "
                           "2 (CT in HU, PET in SUV) as the converter writes them")
    if predictor.dataset_json.get("file_ending", FILE_ENDING) != FILE_ENDING:
        raise DatasetError(f"the model in {folder} was trained on {predictor.dataset_json['file_ending']} files; "
                           f"clips-nnunet predict writes {FILE_ENDING}")
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    reader = predictor.plans_manager.image_reader_writer_class
    if not issubclass(reader, SimpleITKIO):
        raise DatasetError(f"the model in {folder} reads its images with {reader.__name__}; clips-nnunet predict "
                           "feeds images as SimpleITKIO reads them (what clips-nnunet convert sets); use "
                           "nnUNetv2_predict on NIfTI files for this model")
    return predictor, list(folds)


def _stage_input(images: Sequence[sitk.Image]) -> Tuple[np.ndarray, Dict[str, Any]]:
    """The (channels, z, y, x) float32 array and the properties nnU-Net's ``SimpleITKIO`` reads from the
    converter's NIfTI files of ``images`` (spacing z, y, x)."""
    data = np.stack([sitk.GetArrayViewFromImage(im) for im in images]).astype(np.float32, copy=False)
    return data, {"spacing": [abs(float(v)) for v in images[0].GetSpacing()[::-1]]}


class CasePredictor:
    """nnU-Net predictor(s) of one model (one or two cascade stages), loaded once, applied case by case.

    :meth:`predict_images` returns the predicted label map as a SimpleITK image on the grid of the input images.
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
        plans = read_json(folder / "plans.json")
        config = plans.get("configurations", {}).get(spec.configuration)
        if config is None:
            raise DatasetError(f"configuration {spec.configuration!r} is not in {folder / 'plans.json'}; "
                               f"it has {sorted(plans.get('configurations', {}))}")
        previous = spec.prev_stage_configuration or config.get("previous_stage")
        if previous:
            prev_folder = model_folder(spec.dataset, spec.prev_stage_trainer or spec.trainer,
                                       spec.prev_stage_plans or spec.plans, previous)
            prev, prev_folds = _make_predictor(prev_folder, spec.prev_stage_folds or spec.folds, spec.checkpoint,
                                               self.device, use_mirroring)
            self.stages.append(prev)
            self.stage_info.append({"model": prev_folder.name, "folds": prev_folds, "stage": 1})
        main, folds = _make_predictor(folder, spec.folds, spec.checkpoint, self.device, use_mirroring)
        if main.configuration_manager.previous_stage_name is not None and not previous:
            raise DatasetError(f"{folder.name} is stage 2 of a cascade: name stage 1 with --prev-stage-config")
        self.stages.append(main)
        self.stage_info.append({"model": folder.name, "folds": folds, "stage": len(self.stages)})
        if spec.stacking:  # clips_nnunet.tmtv.stacking: checks the model, marks stage_info["stacking"]
            from clips_nnunet.tmtv.stacking import apply_stacking
            apply_stacking(spec.stacking, self.stages, self.stage_info, spec.checkpoint)

    def model_description(self) -> Dict[str, Any]:
        """Model, folds, checkpoint and device, for reports (no paths, no identifiers)."""
        return {"dataset": str(self.spec.dataset), "checkpoint": self.spec.checkpoint,
                "device": self.device.type, "stages": self.stage_info}

    def predict_images(self, images: Sequence[sitk.Image], case_id: str) -> sitk.Image:
        """Label map predicted from ``images`` (CT in HU, PET in SUV, on one grid) on that grid.

        Every stage goes through nnU-Net's ``predict_single_npy_array`` with the arrays its ``SimpleITKIO`` would
        read from the converter's NIfTI files; stage 2 of a cascade gets stage 1's segmentation.
        """
        data, properties = _stage_input(images)
        previous: Optional[np.ndarray] = None
        segmentation: Optional[np.ndarray] = None
        for predictor in self.stages:
            needs_previous = predictor.configuration_manager.previous_stage_name is not None
            with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints per case; keep the progress bar clean
                segmentation = predictor.predict_single_npy_array(
                    data, dict(properties), previous if needs_previous else None)
            previous = np.asarray(segmentation, dtype=np.float32)[None]  # as SimpleITKIO.read_seg reads it
        seg = np.asarray(segmentation)
        if seg.shape != tuple(images[0].GetSize()[::-1]):
            raise ClipsError(f"{case_id}: nnU-Net returned a {seg.shape} segmentation for a "
                             f"{tuple(images[0].GetSize()[::-1])} image (z, y, x)")
        out = sitk.GetImageFromArray(seg.astype(np.uint8, copy=False))
        out.CopyInformation(images[0])
        return out
