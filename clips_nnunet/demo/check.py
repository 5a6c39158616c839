"""The demo checks its own result: a model whose held-out mean Dice is below :data:`DICE_THRESHOLD` is not useful.

:func:`check_model` reads the evaluation summary (``clips-nnunet evaluate``'s ``summary.json``) and the epochs of
the training log (:func:`clips_nnunet.demo.progress.read_training_log`) and says plainly what went wrong, with
the likely cause measured from the pseudo Dice of the epochs:

* pseudo Dice 0 in every epoch: training never left the all-background start (the network predicts no lesion);
* pseudo Dice rising but still low at the last epoch: too little training for this machine's run;
* pseudo Dice high but held-out Dice low: the model does not carry over to the held-out patients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from clips_nnunet.demo.progress import EpochRecord

__all__ = ["DICE_THRESHOLD", "ALL_BACKGROUND_DICE", "ModelCheck", "check_model", "summary_mean"]

#: Held-out mean Dice below this: the demo's model is not useful and the demo exits with code 1.
DICE_THRESHOLD = 0.5
#: A pseudo Dice at or below this counts as "predicts no lesion" (nnU-Net's all-background start).
ALL_BACKGROUND_DICE = 0.01


@dataclass(frozen=True)
class ModelCheck:
    """Result of :func:`check_model`: ``useful`` (held-out mean Dice >= threshold), the Dice, and a plain message."""

    trainer: str
    useful: bool
    dice: Optional[float]
    message: str


def summary_mean(summary: Any, metric: str) -> Optional[float]:
    """The finite ``mean`` of ``metric`` anywhere in an evaluation summary (``{"metrics": {"dice": {"mean": ..}}}``)."""
    stack = [summary]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            value = item.get(metric)
            if isinstance(value, Mapping):
                value = value.get("mean")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                return float(value)
            stack.extend(v for v in item.values() if isinstance(v, (Mapping, list)))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, (Mapping, list)))
    return None


def _cause(epochs: Sequence[EpochRecord], dice: Optional[float], predicted_ml: Optional[float],
           threshold: float) -> str:
    """The likely cause, from the pseudo Dice of the training epochs."""
    nothing = " It predicted no lesion in any held-out patient." if predicted_ml is not None and predicted_ml <= 0 \
        else ""
    values = [e.pseudo_dice for e in epochs if e.pseudo_dice is not None]
    if not epochs:
        return ("Likely cause: unknown; the training log has no finished epoch (was the training step run "
                "elsewhere?)." + nothing)
    if not values:
        return (f"Likely cause: no validation patch held a lesion in any of the {len(epochs)} epochs, so "
                f"training could not be followed." + nothing)
    if max(values) <= ALL_BACKGROUND_DICE:
        return (f"Likely cause: training never left the all-background start: pseudo Dice 0.0 in every one of the "
                f"{len(epochs)} epochs.{nothing} Run again with another --seed or more --epochs.")
    last_ema = next((e.ema for e in reversed(epochs) if e.ema is not None), None)
    best = max(values)
    if last_ema is not None and last_ema < threshold:
        first = next(i for i, e in enumerate(epochs) if e.pseudo_dice is not None and
                     e.pseudo_dice > ALL_BACKGROUND_DICE)
        return (f"Likely cause: too little training: the pseudo Dice first rose above 0 in epoch {first + 1} of "
                f"{len(epochs)} and ended at EMA {last_ema:.2f} (best epoch {best:.2f}).{nothing} Run again with "
                f"more --epochs.")
    ema = "n/a" if last_ema is None else f"{last_ema:.2f}"
    return (f"Likely cause: the model does not carry over to the held-out patients: the pseudo Dice on the "
            f"validation patches reached EMA {ema} (best epoch {best:.2f}), the held-out patients got "
            f"{'no Dice' if dice is None else f'{dice:.2f}'}.{nothing} Look at their MIPs and reports.")


def check_model(trainer: str, summary: Optional[Mapping[str, Any]], epochs: Sequence[EpochRecord],
                n_heldout: int, threshold: float = DICE_THRESHOLD) -> ModelCheck:
    """Is ``trainer``'s model useful? ``summary``: the evaluation summary (None if missing); ``epochs``: the
    training epochs in order."""
    dice = summary_mean(summary, "dice") if summary is not None else None
    predicted_ml = summary_mean(summary, "tmtv_pred_ml") if summary is not None else None
    if dice is not None and dice >= threshold:
        return ModelCheck(trainer, True, dice, f"{trainer}: held-out mean Dice {dice:.3f} >= {threshold} on the "
                                               f"{n_heldout} held-out patients: a useful model.")
    if dice is None:
        head = (f"{trainer}: NOT A USEFUL MODEL: no held-out Dice could be computed (no evaluation summary, or no "
                f"held-out patient with a lesion).")
    else:
        head = (f"{trainer}: NOT A USEFUL MODEL: held-out mean Dice {dice:.3f} is below the demo's threshold "
                f"{threshold} on the {n_heldout} held-out patients.")
    return ModelCheck(trainer, False, dice, head + " " + _cause(epochs, dice, predicted_ml, threshold))
