"""Training curves of a study's runs and the plateau criterion that says whether a budget let the baseline converge.

nnU-Net logs, once per epoch, the *pseudo Dice*: the foreground Dice of the validation patches drawn that epoch
(``val_iterations_per_epoch`` batches; against the dataset's own references, i.e. the noisy ones when the dataset
has annotation errors). It is stored in ``checkpoint_final.pth`` under ``logging["mean_fg_dice"]``.

Plateau criterion (:func:`plateau`): the mean pseudo Dice of the last ``window`` share of the epochs gained less
than ``tolerance`` (absolute) over the mean of the ``window`` share before it. A mean over several epochs is used
because one epoch's pseudo Dice comes from a handful of patches; nnU-Net's own EMA (weight 0.9 on the past) lags
by about ten epochs and would call a short run unconverged only because it started at zero.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import numpy as np

__all__ = ["PlateauResult", "plateau", "read_pseudo_dice", "plot_curves"]


@dataclasses.dataclass(frozen=True)
class PlateauResult:
    """The plateau criterion of one curve: ``last`` and ``before`` are the means of the last two windows."""

    epochs: int
    window_epochs: int
    last: float
    before: float
    tolerance: float

    @property
    def gain(self) -> float:
        return self.last - self.before

    @property
    def reached(self) -> bool:
        return bool(np.isfinite(self.gain) and self.gain < self.tolerance)


def plateau(curve: Sequence[float], window: float = 0.2, tolerance: float = 0.02) -> PlateauResult:
    """Plateau criterion of a per-epoch curve (module docstring): compares the mean of the last
    ``ceil(window * epochs)`` epochs with the mean of the same number of epochs before them."""
    if not 0 < window <= 0.5:
        raise ValueError(f"window must be in (0, 0.5], got {window}")
    values = np.asarray(curve, dtype=float)
    n = len(values)
    w = max(1, int(np.ceil(window * n)))
    if n < 2 * w:
        return PlateauResult(n, w, float("nan"), float("nan"), tolerance)
    return PlateauResult(n, w, float(np.nanmean(values[n - w:])), float(np.nanmean(values[n - 2 * w:n - w])),
                         tolerance)


def read_pseudo_dice(fold_dir: Path) -> List[float]:
    """Per-epoch pseudo Dice of a finished nnU-Net run (``fold_X/checkpoint_final.pth``); ``[]`` if absent."""
    import torch

    path = Path(fold_dir) / "checkpoint_final.pth"
    if not path.is_file():
        return []
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return [float(v) for v in checkpoint.get("logging", {}).get("mean_fg_dice", [])]


def plot_curves(curves: Mapping[str, Sequence[float]], path: Path, title: str, window: float = 0.2) -> Path:
    """One line per run (label -> per-epoch pseudo Dice), the plateau windows of the longest curve shaded."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    longest = 0
    for label, curve in curves.items():
        ax.plot(np.arange(1, len(curve) + 1), curve, lw=1.2, label=label)
        longest = max(longest, len(curve))
    if longest:
        w = max(1, int(np.ceil(window * longest)))
        ax.axvspan(longest - 2 * w + 0.5, longest - w + 0.5, color="0.9", label="plateau windows")
        ax.axvspan(longest - w + 0.5, longest + 0.5, color="0.8")
    ax.set_xlabel("epoch")
    ax.set_ylabel("pseudo Dice (validation patches)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def curves_of(fold_dirs: Mapping[str, Path]) -> Dict[str, List[float]]:
    """``{label: pseudo Dice per epoch}`` of the runs that finished (others left out)."""
    out = {label: read_pseudo_dice(d) for label, d in fold_dirs.items()}
    return {k: v for k, v in out.items() if v}
