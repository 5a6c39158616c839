"""TMTV-Net's stacking ensemble: a learned 1x1x1 convolution over the fold models' probabilities.

TMTV-Net (qurit-frizi/TMTV-Net ``main/src/model_stacking.py``; trained by ``experiments/baseline/
098_v13_stacking_linear_v3.py`` in civodlu/AutoPET2022) combines its stage-1 fold models with
``Conv3d(n_models, 2, kernel_size=1)`` (weights initialised to ``1 / n_models``, bias 0) applied to each model's
softmax foreground probability; the fold models are frozen and the layer is trained with Dice + 0.5 focal
(gamma 1), AdamW (lr 1e-4, weight decay 1e-6), cosine warm restarts (every 100 epochs, peak x0.9), gradient-norm
clipping, batch 3 patches of 128x96x96 at 6 mm with 2-step gradient accumulation. Its training cases were the
training cases of the fold models (each case out-of-fold for at most one model).

Here, for an nnU-Net model (``trainer__plans__configuration``, numbered folds):

- **Training data** (:func:`collect_stacking_cases`): every case of the chosen folds' validation sets. Each fold
  model predicts each case with nnU-Net's own sliding window on the preprocessed data (the network grid, where
  TMTV-Net stacks), so every case carries one out-of-fold probability (the model whose validation set holds it;
  what ``nnUNetv2_train --npz`` exports) and in-fold ones from the other models, as in TMTV-Net. The ``--npz``
  files themselves are not usable: they hold one model per case, resampled to the original grid.
  One ``.npy`` per case (float16: foreground probability channels of every model, then the label).
- **Training** (:func:`train_stacking_model`): TMTV-Net's layer, loss, optimiser, schedule and batch, on random
  patches; the iteration count is a parameter (TMTV-Net: 2,000 epochs of 64 iterations).
- **Prediction** (:func:`enable_stacking`): an ``nnUNetPredictor`` loaded with the same folds predicts each fold
  separately and returns the stacking layer's logits instead of the softmax average; everything after (resampling
  to the input grid, export, the cascade's next stage) is nnU-Net's.

The model file (``torch.save``, readable with ``weights_only=True``) holds the layer's weights and the model it
stacks (dataset, trainer, plans, configuration, folds, checkpoint).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from clips_nnunet.errors import DatasetError
from clips_nnunet.nnunet_env import nnunet_folder
from clips_nnunet.io_utils import PathLike, atomic_path, read_json
from clips_nnunet.metrics.overlap import dice
from clips_nnunet.tmtv.loss import tmtv_loss_per_sample
from clips_nnunet.tmtv.schedule import cosine_warm_restarts_lr

FORMAT = "clips-nnunet-stacking/1"
#: TMTV-Net's stacking loss: LossDiceCrossEntropyFocal2(ce_factor=0.5, gamma=1.0), no sensitivity term
STACKING_LOSS_WEIGHTS = {"dice": 1.0, "focal": 0.5, "sensitivity": 0.0}


class StackingLayer(nn.Module):
    """``Conv3d(n_models * (n_classes - 1), n_classes, 1)`` over the models' foreground probabilities, initialised
    as in TMTV-Net (every weight ``1 / n_inputs``, bias 0)."""

    def __init__(self, n_models: int, n_classes: int = 2):
        super().__init__()
        if n_models < 2 or n_classes < 2:
            raise ValueError(f"stacking needs >= 2 models and >= 2 classes, got {n_models} and {n_classes}")
        self.n_models, self.n_classes = int(n_models), int(n_classes)
        n_inputs = self.n_models * (self.n_classes - 1)
        self.conv = nn.Conv3d(n_inputs, self.n_classes, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / n_inputs)
            self.conv.bias.zero_()

    def forward(self, foreground_probabilities: torch.Tensor) -> torch.Tensor:
        return self.conv(foreground_probabilities)


def foreground_channels(probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate channels 1.. of each model's (C, *spatial) or (B, C, *spatial) probabilities, model by model."""
    if len(probabilities) < 2:
        raise ValueError("stacking needs the probabilities of at least 2 models")
    shapes = {tuple(p.shape) for p in probabilities}
    if len(shapes) != 1:
        raise ValueError(f"the models' probabilities differ in shape: {sorted(shapes)}")
    dim = 0 if probabilities[0].ndim == 4 else 1
    return torch.cat([p.narrow(dim, 1, p.shape[dim] - 1) for p in probabilities], dim=dim)


# ---------------------------------------------------------------------------------------------- model file
@dataclass
class StackedModel:
    """What the stacking layer combines: an nnU-Net results folder and its folds."""
    dataset_name: str
    trainer: str
    plans: str
    configuration: str
    folds: List[int]
    checkpoint: str
    n_classes: int

    @property
    def folder_name(self) -> str:
        return f"{self.trainer}__{self.plans}__{self.configuration}"


def save_stacking_model(path: PathLike, layer: StackingLayer, model: StackedModel,
                        info: Optional[Dict[str, Any]] = None) -> Path:
    """Write the layer and its model description atomically (a ``torch.save`` dict of tensors and plain values)."""
    payload = {"format": FORMAT, "state_dict": {k: v.detach().cpu() for k, v in layer.state_dict().items()},
               "model": asdict(model), "info": json.loads(json.dumps(info or {}, default=float))}
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save(payload, str(tmp))
    return Path(path)


def load_stacking_model(path: PathLike) -> Tuple[StackingLayer, StackedModel, Dict[str, Any]]:
    """Read a file written by :func:`save_stacking_model`; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"stacking model {path} does not exist; train one with clips-nnunet stack")
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, not a torch file, pickled objects
        raise DatasetError(f"stacking model {path} cannot be read ({type(exc).__name__}); train it again with "
                           "clips-nnunet stack") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DatasetError(f"{path} is not a clips-nnunet stacking model ({FORMAT}); train one with "
                           "clips-nnunet stack")
    model = StackedModel(**payload["model"])
    layer = StackingLayer(len(model.folds), model.n_classes)
    layer.load_state_dict(payload["state_dict"])
    return layer.eval(), model, payload.get("info", {})


# ---------------------------------------------------------------------------------------------- prediction
def enable_stacking(predictor: Any, layer: StackingLayer) -> None:
    """Make an initialised ``nnUNetPredictor`` return the stacking layer's logits instead of the fold average.

    The predictor must hold exactly the stacked folds, in order (``initialize_from_trained_model_folder`` with the
    model's folds). Every prediction path of nnU-Net's predictor goes through
    ``predict_logits_from_preprocessed_data``; this instance's method is replaced by one that predicts each fold
    (nnU-Net's sliding window), applies softmax and the layer, and returns its logits on the CPU.
    """
    parameters = list(predictor.list_of_parameters)
    if len(parameters) != layer.n_models:
        raise DatasetError(f"the stacking model combines {layer.n_models} folds but the predictor holds "
                           f"{len(parameters)}; predict with the stacked folds (-f)")
    layer = layer.to("cpu").eval()

    @torch.inference_mode()
    def stacked_logits(data: torch.Tensor) -> torch.Tensor:
        probabilities = []
        for params in parameters:
            network = getattr(predictor.network, "_orig_mod", predictor.network)
            network.load_state_dict(params)
            logits = predictor.predict_sliding_window_return_logits(data).to("cpu").float()
            probabilities.append(torch.softmax(logits, dim=0))
        return layer(foreground_channels(probabilities)[None])[0]

    predictor.predict_logits_from_preprocessed_data = stacked_logits


def apply_stacking(stacking_file: PathLike, stages: Sequence[Any], stage_info: Sequence[Dict[str, Any]],
                   checkpoint: str) -> int:
    """Enable the stacking file on the predictor of the stage it was trained for (``clips-nnunet predict
    --stacking``): ``stages`` are initialised ``nnUNetPredictor`` objects, ``stage_info`` their descriptions
    (``model``: results folder name, ``folds``). Checks dataset, model folder, folds and checkpoint, each mismatch
    named with what to pass; marks ``stage_info[i]["stacking"]``. Returns the stage index."""
    layer, model, _ = load_stacking_model(stacking_file)
    name = Path(stacking_file).name
    matches = [i for i, info in enumerate(stage_info) if info.get("model") == model.folder_name]
    if not matches:
        raise DatasetError(f"stacking model {name} stacks {model.folder_name}, which is not a stage of this "
                           f"prediction ({[info.get('model') for info in stage_info]}); check -tr/-p/-c")
    i = matches[0]
    problems = []
    dataset = getattr(getattr(stages[i], "plans_manager", None), "dataset_name", model.dataset_name)
    if dataset != model.dataset_name:
        problems.append(f"it was trained on {model.dataset_name}, not {dataset}")
    folds = list(stage_info[i].get("folds", []))
    if [str(f) for f in folds] != [str(f) for f in model.folds]:
        problems.append(f"it stacks folds {model.folds}, not {folds} (pass -f {' '.join(map(str, model.folds))})")
    if checkpoint != model.checkpoint:
        problems.append(f"it was trained on {model.checkpoint}, not {checkpoint} (pass --chk {model.checkpoint})")
    if problems:
        raise DatasetError(f"stacking model {name} does not fit: " + "; ".join(problems))
    enable_stacking(stages[i], layer)
    stage_info[i]["stacking"] = name
    return i


# ---------------------------------------------------------------------------------------------- training data
def _validation_cases(preprocessed_dataset: Path, folds: Sequence[int]) -> Dict[int, List[str]]:
    splits_file = preprocessed_dataset / "splits_final.json"
    if not splits_file.is_file():
        raise DatasetError(f"{splits_file} not found: train the fold models (nnUNetv2_train writes it) first")
    splits = read_json(splits_file)
    missing = [f for f in folds if not 0 <= f < len(splits)]
    if missing:
        raise DatasetError(f"folds {missing} are not in {splits_file} ({len(splits)} folds)")
    return {f: sorted(splits[f]["val"]) for f in folds}


def collect_stacking_cases(folder: PathLike, folds: Sequence[int], checkpoint: str, work_dir: PathLike,
                           device: torch.device, progress: bool = False) -> Tuple[List[Path], StackedModel]:
    """Predict every validation case of ``folds`` with every fold model (module docstring) and write
    ``work_dir/<case>.npy`` (float16, channels: each model's foreground probabilities, then the label); existing
    files are reused. Returns the files and the description of the stacked model."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from clips_nnunet.trainers.checkpoints import load_trained_model

    folder, work_dir = Path(folder), Path(work_dir)
    folds = [int(f) for f in folds]
    if len(folds) < 2 or len(set(folds)) != len(folds):
        raise DatasetError(f"stacking needs at least 2 distinct numbered folds, got {folds}")
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    load_trained_model(predictor, folder, folds, checkpoint)
    cm = predictor.configuration_manager
    if cm.previous_stage_name is not None:
        raise DatasetError(f"{folder.name} is the second stage of a cascade; stack the first stage (TMTV-Net stacks "
                           f"its stage-1 models), e.g. -c {cm.previous_stage_name}")
    trainer, plans, configuration = folder.name.split("__")
    model = StackedModel(folder.parent.name, trainer, plans, configuration, folds, checkpoint,
                         len(predictor.label_manager.all_labels))
    if predictor.label_manager.has_regions:
        raise DatasetError("stacking needs softmax classes; this model predicts regions")
    root = nnunet_folder("nnUNet_preprocessed")   # the folder the model was trained from
    preprocessed = Path(root) / folder.parent.name
    data_folder = preprocessed / cm.data_identifier
    if not data_folder.is_dir():
        raise DatasetError(f"{data_folder} not found: run nnUNetv2_preprocess -d {folder.parent.name} -c "
                           f"{configuration} -plans_name {plans}")
    cases = sorted({c for v in _validation_cases(preprocessed, folds).values() for c in v})
    dataset = infer_dataset_class(str(data_folder))(str(data_folder), identifiers=cases)
    params = list(predictor.list_of_parameters)
    work_dir.mkdir(parents=True, exist_ok=True)
    files = []
    iterator = cases
    if progress:
        from tqdm import tqdm
        iterator = tqdm(cases, desc="stacking inputs", unit="case")
    for case in iterator:
        out = work_dir / f"{case}.npy"
        files.append(out)
        if out.is_file():
            continue
        data, seg, _, _ = dataset.load_case(case)
        data = torch.from_numpy(np.asarray(data, dtype=np.float32))
        probabilities = []
        for p in params:
            predictor.list_of_parameters = [p]
            logits = predictor.predict_logits_from_preprocessed_data(data).float()
            probabilities.append(torch.softmax(logits, dim=0))
        label = np.asarray(seg[0]).astype(np.float32)
        label[label < 0] = 0  # nnU-Net's "outside the nonzero region" is background
        stack = np.concatenate([foreground_channels(probabilities).numpy(), label[None]], 0).astype(np.float16)
        with atomic_path(out, suffix=".npy") as tmp:
            np.save(str(tmp), stack)
    predictor.list_of_parameters = params
    return files, model


# ---------------------------------------------------------------------------------------------- training
@dataclass
class StackingTrainingConfig:
    """TMTV-Net's stacking recipe (098_v13_stacking_linear_v3.py); ``iterations`` counts forward passes."""
    iterations: int = 128_000          # TMTV-Net: 2,000 epochs x 64 iterations (reservoir 192 / batch 3)
    batch_size: int = 3
    grad_accumulation: int = 2
    lr: float = 1e-4
    weight_decay: float = 1e-6
    restart_period: int = 6_400        # cosine warm restarts every 100 epochs x 64 iterations
    restart_decay: float = 0.9
    grad_clip_norm: float = 1.0
    patch_size: Tuple[int, int, int] = (128, 96, 96)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "grad_accumulation", "restart_period"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"lr must be > 0 and patch_size 3 positive sizes, got {self.lr}, {self.patch_size}")


def _crop(array: np.ndarray, size: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    starts = [int(rng.integers(0, s - p + 1)) for s, p in zip(array.shape[1:], size)]
    return np.asarray(array[(slice(None), *[slice(a, a + p) for a, p in zip(starts, size)])], dtype=np.float32)


def train_stacking_model(case_files: Sequence[PathLike], n_models: int, n_classes: int = 2,
                         config: StackingTrainingConfig = StackingTrainingConfig(),
                         device: torch.device = torch.device("cpu")) -> Tuple[StackingLayer, List[float]]:
    """Train TMTV-Net's stacking layer on :func:`collect_stacking_cases` files; returns the layer (CPU) and the
    loss of each optimiser step."""
    if not case_files:
        raise DatasetError("no stacking cases: the chosen folds have no validation cases")
    rng = np.random.default_rng(config.seed)
    arrays = [np.load(str(f), mmap_mode="r") for f in case_files]
    n_inputs = n_models * (n_classes - 1)
    for f, a in zip(case_files, arrays):
        if a.shape[0] != n_inputs + 1:
            raise DatasetError(f"{f} has {a.shape[0]} channels, expected {n_inputs + 1} ({n_models} models); "
                               "delete the work folder and run clips-nnunet stack again")
    size = [min([int(config.patch_size[i])] + [a.shape[i + 1] for a in arrays]) for i in range(3)]
    layer = StackingLayer(n_models, n_classes).to(device)
    optimiser = torch.optim.AdamW(layer.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    losses: List[float] = []
    running = 0.0
    for it in range(int(config.iterations)):
        if it % config.grad_accumulation == 0:
            optimiser.zero_grad(set_to_none=True)
            running = 0.0
        picks = rng.integers(0, len(arrays), size=config.batch_size)
        batch = torch.from_numpy(np.stack([_crop(arrays[i], size, rng) for i in picks])).to(device)
        logits = layer(batch[:, :n_inputs])
        loss = tmtv_loss_per_sample(logits, batch[:, n_inputs:].round().long(), STACKING_LOSS_WEIGHTS).mean()
        (loss / config.grad_accumulation).backward()
        running += float(loss.detach()) / config.grad_accumulation
        if (it + 1) % config.grad_accumulation == 0 or it + 1 == config.iterations:
            step = it // config.grad_accumulation
            lr = cosine_warm_restarts_lr(step, config.lr, max(1, config.restart_period // config.grad_accumulation),
                                         config.restart_decay)
            for group in optimiser.param_groups:
                group["lr"] = lr
            torch.nn.utils.clip_grad_norm_(layer.parameters(), config.grad_clip_norm)
            optimiser.step()
            losses.append(running)
    return layer.cpu().eval(), losses


def compare_on_cases(layer: StackingLayer, case_files: Sequence[PathLike]) -> Dict[str, Any]:
    """Per-case foreground Dice of the stacking layer and of softmax averaging (nnU-Net's fold ensemble) on
    :func:`collect_stacking_cases` files (network grid)."""
    n_fg = layer.n_classes - 1
    rows = []
    with torch.inference_mode():
        for f in case_files:
            a = np.load(str(f)).astype(np.float32)
            fg, label = torch.from_numpy(a[:-1]), a[-1]
            stacked = layer(fg[None])[0].argmax(0).numpy()
            per_model = fg.view(layer.n_models, n_fg, *fg.shape[1:])
            mean_fg = per_model.mean(0)
            mean = torch.cat([1 - mean_fg.sum(0, keepdim=True), mean_fg]).argmax(0).numpy()
            rows.append({"case": Path(f).stem, "dice_stacking": dice(stacked, label), "dice_average": dice(mean, label)})
    summary = {k: float(np.mean([r[k] for r in rows])) for k in ("dice_stacking", "dice_average")}
    return {"cases": rows, "mean": summary}
