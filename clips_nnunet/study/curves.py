"""Training curves of a study's runs: nnU-Net's per-epoch *pseudo Dice*, for description only.

nnU-Net logs, once per epoch, the pseudo Dice: the foreground Dice of the validation patches drawn that epoch
(``val_iterations_per_epoch`` batches; against the dataset's own references, i.e. the noisy ones when the dataset
has annotation errors). It is stored in ``checkpoint_final.pth`` under ``logging["mean_fg_dice"]``.

No convergence verdict is read from these curves: nnU-Net's PolyLR schedule decays the learning rate to a few
per cent in the last epochs, so any curve flattens there, and a run stuck at zero is flat too (issue 22). Whether
a budget trains the baseline to convergence is decided by the budget ladder of the study report
(:func:`clips_nnunet.study.report_sections.convergence_lines`): the baseline at 2x the budget against 1x.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import numpy as np

__all__ = ["read_pseudo_dice", "plot_curves", "curves_of"]


def read_pseudo_dice(fold_dir: Path) -> List[float]:
    """Per-epoch pseudo Dice of a finished nnU-Net run (``fold_X/checkpoint_final.pth``); ``[]`` if absent."""
    import torch

    path = Path(fold_dir) / "checkpoint_final.pth"
    if not path.is_file():
        return []
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return [float(v) for v in checkpoint.get("logging", {}).get("mean_fg_dice", [])]


def plot_curves(curves: Mapping[str, Sequence[float]], path: Path, title: str) -> Path:
    """One line per run (label -> per-epoch pseudo Dice)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, curve in curves.items():
        ax.plot(np.arange(1, len(curve) + 1), curve, lw=1.2, label=label)
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
