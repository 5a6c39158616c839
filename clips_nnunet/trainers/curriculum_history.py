"""Curriculum history of a fold: append-only storage, the public reader and the bounded-cost plot.

Files in the fold folder (written by rank 0 only; every rank holds the same values):

- ``curriculum_history.json``: header, written once per run: ``format``, ``version``, ``trainer``, ``case_ids``
  (the column order), ``dtype`` (``float32``) and ``row`` (the layout of one row);
- ``curriculum_history.f32``: one binary row of little-endian float32 per epoch, appended:
  ``[epoch, p_0 .. p_{N-1}, d_0 .. d_{N-1}]`` with ``p`` the sampling probabilities of the epoch and ``d`` the
  per-case difficulty estimates the epoch was planned from; (2N + 1) x 4 bytes per epoch (550 cases: 4.4 kB,
  4.4 MB over 1000 epochs);
- ``curriculum_epochs.jsonl``: one JSON line per epoch with the scalars (warm-up, progress, active fraction,
  threshold, mean loss of active cases, sampling entropy, lag, number of losses, skipped patches, non-finite
  losses, skipped steps) and the scheduler's ``extra``;
- ``curriculum_state.json``: the latest difficulty state (EMA, visits, last epoch seen), replaced every epoch by
  an atomic rename (not fsynced: the durable copy is the one in nnU-Net's checkpoint); it does not grow.

Appending costs O(N) per epoch instead of rewriting O(N x epochs). A crash can leave a partial last row; readers
ignore it and a continued run (``--c``) truncates the files to the epochs before the one it restarts from.
Fold folders of earlier versions hold ``curriculum.json`` (every epoch's probabilities in one JSON file);
:func:`read_history` reads both.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from clips_nnunet.errors import DatasetError
from clips_nnunet.io_utils import atomic_path, atomic_write_json, atomic_write_text, read_json

HEADER_JSON = "curriculum_history.json"
ROWS_F32 = "curriculum_history.f32"
EPOCHS_JSONL = "curriculum_epochs.jsonl"
STATE_JSON = "curriculum_state.json"
LEGACY_JSON = "curriculum.json"
CURRICULUM_PNG = "curriculum.png"
FORMAT = "clips-curriculum-history"
VERSION = 1
#: most epochs (columns) and cases (rows) drawn in curriculum.png; more are subsampled evenly
PLOT_MAX_EPOCHS = 300
PLOT_MAX_CASES = 200


@dataclass
class CurriculumHistory:
    """What :func:`read_history` returns.

    - ``case_ids``: list of N case ids (column order);
    - ``epochs``: int array (E,), the epochs recorded, ascending;
    - ``probabilities``: float array (E, N), sampling probability of each case in each epoch;
    - ``estimates``: float array (E, N) or None, per-case difficulty estimate (EMA of the centred loss) the epoch was
      planned from;
    - ``records``: list of E dicts, the per-epoch scalars (``curriculum_epochs.jsonl``);
    - ``state``: the last difficulty state (``curriculum_state.json``: ``ema``, ``visits``, ``last_seen``) or None.

    Unpacks as ``case_ids, epochs, probabilities = read_history(fold_dir)``.
    """

    case_ids: List[str]
    epochs: np.ndarray
    probabilities: np.ndarray
    estimates: Optional[np.ndarray] = None
    records: List[Dict[str, Any]] = field(default_factory=list)
    state: Optional[Dict[str, Any]] = None

    def __iter__(self):
        return iter((self.case_ids, self.epochs, self.probabilities))


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


def _row_size(n_cases: int) -> int:
    return 2 * n_cases + 1


def read_history(fold_dir) -> CurriculumHistory:
    """The curriculum history of a trained (or running) fold folder, new format or legacy ``curriculum.json``.

    ``case_ids, epochs, probabilities = read_history(fold_dir)`` gives the N case ids, the E epochs recorded
    (int array) and the (E x N) float array of sampling probabilities; the returned :class:`CurriculumHistory`
    also carries per-case estimates, per-epoch records and the last state. Raises :class:`DatasetError` naming the
    folder when it holds no curriculum history (not a curriculum trainer's fold, or training not started).
    """
    fold_dir = os.fspath(fold_dir)
    header_path = os.path.join(fold_dir, HEADER_JSON)
    if os.path.isfile(header_path):
        return _read_new(fold_dir, read_json(header_path))
    legacy = os.path.join(fold_dir, LEGACY_JSON)
    if os.path.isfile(legacy):
        return _read_legacy(read_json(legacy))
    raise DatasetError(f"{fold_dir} holds no curriculum history ({HEADER_JSON} or {LEGACY_JSON}); is it the fold "
                       f"folder of a curriculum trainer (nnUNetTrainerCL...) that completed at least one epoch?")


def _read_rows(fold_dir: str, n_cases: int, epochs_wanted: Optional[np.ndarray] = None) -> np.ndarray:
    path = os.path.join(fold_dir, ROWS_F32)
    width = _row_size(n_cases)
    if not os.path.isfile(path) or os.path.getsize(path) < 4 * width:
        return np.zeros((0, width), dtype=np.float32)
    n_rows = os.path.getsize(path) // (4 * width)          # a partial last row (crash) is ignored
    rows = np.memmap(path, dtype="<f4", mode="r", shape=(n_rows, width))
    out = np.array(rows if epochs_wanted is None else rows[epochs_wanted])
    del rows
    return out


def _read_new(fold_dir: str, header: dict) -> CurriculumHistory:
    if header.get("format") != FORMAT:
        raise DatasetError(f"{os.path.join(fold_dir, HEADER_JSON)} is not a clips curriculum history header")
    case_ids = [str(c) for c in header["case_ids"]]
    n = len(case_ids)
    rows = _read_rows(fold_dir, n)
    records: List[dict] = []
    path = os.path.join(fold_dir, EPOCHS_JSONL)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:      # a partial last line after a crash
                    break
    by_epoch = {int(r["epoch"]): r for r in records}
    epochs = rows[:, 0].astype(np.int64)
    state_path = os.path.join(fold_dir, STATE_JSON)
    return CurriculumHistory(case_ids=case_ids, epochs=epochs, probabilities=rows[:, 1:n + 1].astype(np.float64),
                             estimates=rows[:, n + 1:].astype(np.float64),
                             records=[by_epoch.get(int(e), {"epoch": int(e)}) for e in epochs],
                             state=read_json(state_path) if os.path.isfile(state_path) else None)


def _read_legacy(data: dict) -> CurriculumHistory:
    case_ids = [str(c) for c in data["case_ids"]]
    epochs = data.get("epochs", [])
    probs = np.asarray([r["probabilities"] for r in epochs], dtype=np.float64).reshape(len(epochs), len(case_ids))
    est = [r.get("estimates") for r in epochs]
    estimates = np.asarray(est, dtype=np.float64) if epochs and all(e is not None for e in est) else None
    records = [{k: v for k, v in r.items() if k not in ("probabilities", "estimates")} for r in epochs]
    return CurriculumHistory(case_ids=case_ids, epochs=np.asarray([r["epoch"] for r in epochs], dtype=np.int64),
                             probabilities=probs, estimates=estimates, records=records, state=data.get("state"))


class HistoryWriter:
    """Appends one epoch at a time to a fold's history (rank 0). ``start(first_epoch)`` before the first append:
    it writes the header and truncates rows and records of epochs >= ``first_epoch`` (a continued run)."""

    def __init__(self, fold_dir: str, case_ids: Sequence[str], trainer: str):
        self.fold_dir = fold_dir
        self.case_ids = [str(c) for c in case_ids]
        self.trainer = trainer

    def path(self, name: str) -> str:
        return os.path.join(self.fold_dir, name)

    def _archive_other_split(self, old_ids: Sequence[str], first_epoch: int) -> str:
        """Move the history of another training split to ``curriculum_history_previous_split[_k]/``; the message."""
        k, target = 1, self.path("curriculum_history_previous_split")
        while os.path.exists(target):
            k += 1
            target = self.path(f"curriculum_history_previous_split_{k}")
        os.makedirs(target)
        for name in (HEADER_JSON, ROWS_F32, EPOCHS_JSONL, STATE_JSON):
            if os.path.isfile(self.path(name)):
                os.replace(self.path(name), os.path.join(target, name))
        added = sorted(set(self.case_ids) - set(old_ids))
        removed = sorted(set(old_ids) - set(self.case_ids))
        return (f"the training split changed since this fold's curriculum history was written ({len(old_ids)} cases "
                f"then, {len(self.case_ids)} now; added {added[:5]}, removed {removed[:5]}): the old history was "
                f"moved to {target} (read it with read_history) and a new history starts at epoch {first_epoch}")

    def start(self, first_epoch: int) -> Optional[str]:
        """Write the header and truncate to the epochs before ``first_epoch``; returns a message (None if nothing to
        report) when a continued run's split differs from its history's, whose files are then kept aside."""
        os.makedirs(self.fold_dir, exist_ok=True)
        message = None
        header = {"format": FORMAT, "version": VERSION, "trainer": self.trainer, "case_ids": self.case_ids,
                  "dtype": "float32", "byte_order": "little",
                  "row": ["epoch", "probability[N]", "estimate[N]"], "rows_file": ROWS_F32,
                  "epochs_file": EPOCHS_JSONL, "state_file": STATE_JSON}
        old = read_json(self.path(HEADER_JSON)) if os.path.isfile(self.path(HEADER_JSON)) else None
        if old is not None and first_epoch > 0 and old.get("case_ids") != self.case_ids:
            message = self._archive_other_split([str(c) for c in old.get("case_ids", [])], first_epoch)
            old = None
        keep_from_old = old is not None and old.get("case_ids") == self.case_ids and first_epoch > 0
        legacy = None
        if old is None and first_epoch > 0 and os.path.isfile(self.path(LEGACY_JSON)):
            legacy = _read_legacy(read_json(self.path(LEGACY_JSON)))
            legacy = legacy if legacy.case_ids == self.case_ids else None
        atomic_write_json(self.path(HEADER_JSON), header)
        width = _row_size(len(self.case_ids))
        rows_path = self.path(ROWS_F32)
        if keep_from_old and os.path.isfile(rows_path):
            rows = _read_rows(self.fold_dir, len(self.case_ids))
            keep = int(np.searchsorted(rows[:, 0], first_epoch, side="left")) if rows.size else 0
            with open(rows_path, "r+b") as f:
                f.truncate(keep * width * 4)
        else:
            with open(rows_path, "wb"):
                pass
        lines: List[str] = []
        if keep_from_old and os.path.isfile(self.path(EPOCHS_JSONL)):
            with open(self.path(EPOCHS_JSONL), encoding="utf-8") as f:
                for line in f:
                    try:
                        if int(json.loads(line)["epoch"]) < first_epoch:
                            lines.append(line if line.endswith("\n") else line + "\n")
                    except (json.JSONDecodeError, KeyError):
                        break
        atomic_write_text(self.path(EPOCHS_JSONL), "".join(lines))
        if legacy is not None:   # continue a run started by an earlier version: carry its epochs over
            for e, record, p, d in zip(legacy.epochs, legacy.records, legacy.probabilities,
                                       legacy.estimates if legacy.estimates is not None else legacy.probabilities * 0):
                if e < first_epoch:
                    self.append(int(e), p, d, record)
        return message

    def append(self, epoch: int, probabilities, estimates, record: Dict[str, Any],
               state: Optional[Dict[str, Any]] = None) -> None:
        n = len(self.case_ids)
        row = np.empty(_row_size(n), dtype="<f4")
        row[0] = epoch
        row[1:n + 1] = np.asarray(probabilities, dtype=np.float64)
        row[n + 1:] = np.asarray(estimates, dtype=np.float64)
        with open(self.path(ROWS_F32), "ab") as f:
            f.write(row.tobytes())
            f.flush()
            os.fsync(f.fileno())
        with open(self.path(EPOCHS_JSONL), "a", encoding="utf-8") as f:
            f.write(json.dumps({**record, "epoch": int(epoch)}, sort_keys=True, default=_plain) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if state is not None:
            # a convenience copy of the checkpoint's state: atomic (rename) but not fsynced, ~4x cheaper per epoch
            tmp = self.path(STATE_JSON + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(state, f, sort_keys=True, default=_plain)
            os.replace(tmp, self.path(STATE_JSON))


def _even(n: int, k: int) -> np.ndarray:
    """At most ``k`` evenly spaced indices of ``range(n)``, first and last included."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


def plot_curriculum(fold_dir: str, destination: Optional[str] = None) -> None:
    """``curriculum.png`` from :func:`read_history`: active fraction and threshold over epochs, and a case x epoch
    heat map of sampling probabilities. Bounded cost: at most :data:`PLOT_MAX_EPOCHS` epochs (evenly subsampled,
    last one included) and :data:`PLOT_MAX_CASES` case rows (mean of consecutive cases beyond that)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = read_history(fold_dir)
    destination = destination or os.path.join(fold_dir, CURRICULUM_PNG)
    idx = _even(len(history.epochs), PLOT_MAX_EPOCHS)
    epochs = history.epochs[idx]
    records = [history.records[i] for i in idx]
    probs = history.probabilities[idx].T if idx.size else np.zeros((len(history.case_ids), 1))
    n_cases = probs.shape[0]
    group = int(np.ceil(n_cases / PLOT_MAX_CASES))
    if group > 1:
        pad = (-n_cases) % group
        probs = np.pad(probs, ((0, pad), (0, 0)), constant_values=np.nan)
        probs = np.nanmean(probs.reshape(-1, group, probs.shape[1]), axis=1)
    # nnU-Net's logger calls seaborn.set(font_scale=2.5) globally: plot with matplotlib defaults
    with plt.style.context("default"):
        fig, (ax, ax_heat) = plt.subplots(2, 1, figsize=(10, 4 + 0.12 * min(probs.shape[0], 150)),
                                          gridspec_kw={"height_ratios": [1, 2]})
        ax.plot(epochs, [r.get("active_fraction", np.nan) for r in records], "b-o", ms=3, label="active fraction")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("epoch")
        ax.set_ylabel("active fraction", color="b")
        ax2 = ax.twinx()
        thresholds = [np.nan if r.get("threshold") is None else r["threshold"] for r in records]
        ax2.plot(epochs, thresholds, "r-s", ms=3, label="threshold")
        ax2.set_ylabel("threshold (loss / score)", color="r")
        warm = [int(e) for e, r in zip(epochs, records) if r.get("warmup")]
        if warm:
            ax.axvspan(min(warm) - 0.5, max(warm) + 0.5, color="0.9", zorder=0)
        sub = "" if len(idx) == len(history.epochs) else f", {len(idx)} of {len(history.epochs)} epochs shown"
        ax.set_title(f"curriculum (grey: warm-up, uniform sampling{sub})")
        lo, hi = (int(epochs.min()), int(epochs.max())) if epochs.size else (0, 0)
        im = ax_heat.imshow(probs, aspect="auto", interpolation="nearest", cmap="viridis",
                            extent=(lo - 0.5, hi + 0.5, n_cases - 0.5, -0.5))
        ax_heat.set_xlabel("epoch")
        ax_heat.set_ylabel("case" if group == 1 else f"case (mean of {group} per row)")
        if n_cases <= 40:
            ax_heat.set_yticks(range(n_cases))
            ax_heat.set_yticklabels(history.case_ids, fontsize=7)
        fig.colorbar(im, ax=ax_heat, label="sampling probability")
        fig.tight_layout()
        with atomic_path(destination, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=80, format="png")
        plt.close(fig)
