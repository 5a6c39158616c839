"""Load a trained nnU-Net model into an ``nnUNetPredictor`` with errors that name the checkpoint file.

nnU-Net's ``initialize_from_trained_model_folder`` loads every fold's checkpoint with ``torch.load``; a checkpoint
cut short (training killed while saving, a full disk, an interrupted copy) or of another model then fails with a
PyTorch message that names no file ("PytorchStreamReader failed reading zip archive"). :func:`load_trained_model`
checks each file first and turns any load failure into one :class:`~clips_nnunet.errors.DatasetError` line that
names the file and what to do. Used by ``clips-nnunet predict`` and by scoring (``clips-nnunet score``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

from clips_nnunet.errors import DatasetError
from clips_nnunet.io_utils import PathLike, verify_file

#: Keys nnU-Net's predictor reads from a checkpoint (``initialize_from_trained_model_folder``).
CHECKPOINT_KEYS = ("network_weights", "trainer_name", "init_args")

Fold = Union[int, str]


def _what_to_do(fold: Fold, checkpoint: str) -> str:
    return (f"re-run or continue the training of fold {fold} (nnUNetv2_train ... {fold} --c), use another "
            f"checkpoint (--chk checkpoint_best.pth instead of {checkpoint}), or leave fold {fold} out (-f)")


def checkpoint_problem(path: PathLike) -> Optional[str]:
    """Why ``path`` cannot be an nnU-Net checkpoint (None when it loads and has :data:`CHECKPOINT_KEYS`).

    Loads the file with ``torch.load`` (CPU), so call it only to explain a failure."""
    import torch

    try:
        data = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, not a torch file, unpickling errors: many types
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
    if not isinstance(data, dict):
        return f"it holds a {type(data).__name__}, not an nnU-Net checkpoint dictionary"
    missing = [k for k in CHECKPOINT_KEYS if k not in data]
    if missing:
        return f"it lacks {', '.join(missing)}; it is not an nnU-Net training checkpoint"
    return None


def load_trained_model(predictor: Any, folder: PathLike, folds: Sequence[Fold], checkpoint: str) -> None:
    """``predictor.initialize_from_trained_model_folder(folder, folds, checkpoint)`` with actionable errors.

    Before loading, each ``folder/fold_X/checkpoint`` must exist and be a complete zip archive (what
    ``torch.save`` writes). If nnU-Net's loading still fails, the checkpoints are examined one by one and the
    first that cannot be loaded is named; otherwise the error names the model folder. Raises
    :class:`DatasetError` (one line: file, reason, what to do).
    """
    folder = Path(folder)
    for fold in folds:
        path = folder / f"fold_{fold}" / checkpoint
        if not path.is_file():
            raise DatasetError(f"checkpoint {path} does not exist: train fold {fold}, leave it out (-f), or name "
                               "another checkpoint (--chk)")
        try:
            verify_file(path)
        except ValueError as exc:
            raise DatasetError(f"checkpoint {path} is damaged or incomplete ({exc}): {_what_to_do(fold, checkpoint)}"
                               ) from None
    try:
        predictor.initialize_from_trained_model_folder(str(folder), use_folds=tuple(folds),
                                                       checkpoint_name=checkpoint)
    except Exception as exc:
        for fold in folds:
            path = folder / f"fold_{fold}" / checkpoint
            problem = checkpoint_problem(path)
            if problem:
                raise DatasetError(f"checkpoint {path} cannot be loaded ({problem}): "
                                   f"{_what_to_do(fold, checkpoint)}") from exc
        text = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ""
        hint = ("; if the trainer class is not found, make it importable: eval \"$(clips-nnunet env)\" sets "
                "nnUNet_extTrainer" if "trainer" in text.lower() else "")
        raise DatasetError(f"nnU-Net cannot load the model in {folder} (checkpoint {checkpoint}, folds "
                           f"{list(folds)}): {type(exc).__name__}: {text}; check that the checkpoints belong to "
                           f"this folder's plans.json and dataset.json{hint}") from exc
