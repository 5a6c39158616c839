"""The demo's training as a subprocess with one progress line per epoch.

``nnUNetv2_train`` prints, per epoch, ``Epoch N``, the losses, ``Pseudo dice [...]`` (Dice of the foreground
classes on the validation patches of that epoch) and ``Epoch time: T s``. Its whole output goes to the step's log;
the terminal gets one line per epoch from :class:`TrainingProgress`::

    epoch  7/50  pseudo Dice 0.412 (EMA 0.215)  16 s per epoch  about 11 min left

The EMA is nnU-Net's own smoothing (``ema = 0.9 * ema + 0.1 * pseudo Dice``, the value that picks
``checkpoint_best.pth``); the time left is the mean of the last epochs' measured times times the epochs left.
"""
from __future__ import annotations

import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from clips_nnunet.nnunet_env import bin_path
from clips_nnunet.nnunet_env import shell_line as nnunet_shell_line

__all__ = ["TrainingProgress", "EpochRecord", "parse_pseudo_dice", "read_training_log", "run_training",
           "format_minutes"]

_EPOCH = re.compile(r"(?:^|:\s)Epoch (\d+)\s*$")
_PSEUDO = re.compile(r"Pseudo dice\s*\[(.*)\]")
_EPOCH_TIME = re.compile(r"Epoch time:\s*([0-9.]+)\s*s")
_NUMBER = re.compile(r"nan|[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
#: epochs whose times are averaged for the time left
RECENT_EPOCHS = 5


def parse_pseudo_dice(text: str) -> List[Optional[float]]:
    """Values of an nnU-Net ``Pseudo dice [...]`` list (``[np.float32(0.41), 0.2]`` or ``[0.41]``); ``nan``
    (no foreground on the validation patches) becomes None."""
    inner = re.sub(r"np\.float\d+\(", "(", text)
    values: List[Optional[float]] = []
    for token in _NUMBER.findall(inner):
        value = float(token)
        values.append(value if math.isfinite(value) else None)
    return values


def format_minutes(seconds: float) -> str:
    """``about 11 min`` (``under 1 min`` below a minute)."""
    if seconds < 60:
        return "under 1 min"
    return f"about {int(round(seconds / 60.0))} min"


@dataclass
class EpochRecord:
    """One finished epoch: 0-based index, mean foreground pseudo Dice (None: undefined), nnU-Net's EMA, seconds."""

    epoch: int
    pseudo_dice: Optional[float]
    ema: Optional[float]
    seconds: Optional[float]


@dataclass
class TrainingProgress:
    """Reads nnU-Net's output line by line (:meth:`feed`) and returns one progress line per finished epoch."""

    total_epochs: int
    epochs: Dict[int, EpochRecord] = field(default_factory=dict)
    _epoch: Optional[int] = None
    _dice: Optional[float] = None
    _ema: Optional[float] = None

    def feed(self, line: str) -> Optional[str]:
        line = line.rstrip("\n")
        m = _EPOCH.search(line)
        if m:
            self._epoch, self._dice = int(m.group(1)), None
            if self._epoch == 0:  # a new training from scratch (a --c continuation keeps the EMA)
                self._ema = None
            return None
        m = _PSEUDO.search(line)
        if m:
            values = [v for v in parse_pseudo_dice(m.group(1)) if v is not None]
            self._dice = sum(values) / len(values) if values else None
            return None
        m = _EPOCH_TIME.search(line)
        if m and self._epoch is not None:
            if self._dice is not None:  # nnU-Net's logger: the first value starts the EMA
                self._ema = self._dice if self._ema is None else 0.9 * self._ema + 0.1 * self._dice
            record = EpochRecord(self._epoch, self._dice, self._ema, float(m.group(1)))
            self.epochs[record.epoch] = record
            self._epoch = None
            return self.line(record)
        return None

    def seconds_left(self) -> Optional[float]:
        """Mean of the last :data:`RECENT_EPOCHS` epoch times times the epochs left (None before the first)."""
        if not self.epochs:
            return None
        recent = [r.seconds for r in sorted(self.epochs.values(), key=lambda r: r.epoch)[-RECENT_EPOCHS:]
                  if r.seconds is not None]
        if not recent:
            return None
        left = max(0, self.total_epochs - 1 - max(self.epochs))
        return left * sum(recent) / len(recent)

    def line(self, record: EpochRecord) -> str:
        width = len(str(self.total_epochs))
        dice = "n/a (no lesion on the validation patches)" if record.pseudo_dice is None \
            else f"{record.pseudo_dice:.3f}"
        ema = "" if record.ema is None else f" (EMA {record.ema:.3f})"
        seconds = "" if record.seconds is None else f"  {record.seconds:.0f} s per epoch"
        left = self.seconds_left()
        tail = "" if left is None else (f"  {format_minutes(left)} left" if left > 0 else "  last epoch done")
        return f"    epoch {record.epoch + 1:>{width}}/{self.total_epochs}  pseudo Dice {dice}{ema}{seconds}{tail}"

    def history(self) -> List[EpochRecord]:
        """The finished epochs in order (the last run of an epoch wins after a ``--c`` continuation)."""
        return [self.epochs[k] for k in sorted(self.epochs)]


def read_training_log(path: Path, total_epochs: int = 0) -> TrainingProgress:
    """The epochs recorded in a training log written by :func:`run_training` (all runs, continuations included)."""
    progress = TrainingProgress(total_epochs)
    if Path(path).is_file():
        with open(path, errors="replace") as f:
            for text in f:
                progress.feed(text)
    return progress


def run_training(cmd: Sequence[str], env: Mapping[str, str], log_path: Path, total_epochs: int,
                 variables: Sequence[str] = ()) -> int:
    """Run ``nnUNetv2_train``; all its output goes to ``log_path``, the terminal gets one line per epoch (and the
    last lines of the log when it fails). Returns its exit code."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    progress = TrainingProgress(total_epochs)
    tail: List[str] = []
    child_env = dict(env)
    child_env["PYTHONUNBUFFERED"] = "1"  # one line at a time, not 8 KB blocks
    with open(log_path, "a") as log:
        log.write(f"\n$ {nnunet_shell_line(cmd, env, variables)}\n")
        log.flush()
        proc = subprocess.Popen([bin_path(cmd[0]), *cmd[1:]], env=child_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1, errors="replace")
        assert proc.stdout is not None
        try:
            for text in proc.stdout:
                log.write(text)
                log.flush()
                tail = (tail + [text.rstrip()])[-8:]
                message = progress.feed(text)
                if message:
                    print(message, flush=True)
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
    if rc != 0:
        print("    last lines of the training log:\n" + "\n".join("      " + t for t in tail if t), flush=True)
    return rc
