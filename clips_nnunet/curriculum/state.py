"""Per-case difficulty state: exponential moving average (EMA) of each case's training loss.

Self-paced learning (Kumar et al. 2010) ranks cases by their current loss. In nnU-Net a case is seen only a few
times per epoch, as random patches, so one patch's loss is noisy; we keep an EMA per case,
``d_i <- alpha * l + (1 - alpha) * d_i`` (first visit: ``d_i = l``), the latest raw loss (for DIH), the number of
visits and the last epoch the case was seen. Cases never seen count as the median of the seen ones (neither favoured
nor excluded), and when no case has been seen all estimates are 0 (the curriculum then falls back to uniform
sampling).
"""
from __future__ import annotations

import warnings
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from clips_nnunet.errors import CurriculumConfigError


class DifficultyState:
    """EMA of the per-case training loss, visit counts and last epoch seen, for a fixed list of case ids.

    ``ema_alpha`` in (0, 1] is the weight of a new observation (1 = keep only the latest loss).
    """

    def __init__(self, case_ids: Sequence[str], ema_alpha: float = 0.3):
        case_ids = [str(c) for c in case_ids]
        if len(case_ids) == 0:
            raise CurriculumConfigError("case_ids is empty: the training split of this fold has no cases; check "
                                        "splits_final.json")
        if len(set(case_ids)) != len(case_ids):
            dupes = sorted({c for c in case_ids if case_ids.count(c) > 1})
            raise CurriculumConfigError(f"case_ids contains duplicates: {dupes}")
        ema_alpha = float(ema_alpha)
        if not 0.0 < ema_alpha <= 1.0:
            raise CurriculumConfigError(f"loss_ema_alpha must be in (0, 1], got {ema_alpha}")
        self.case_ids: List[str] = case_ids
        self.ema_alpha = ema_alpha
        self._index: Dict[str, int] = {c: i for i, c in enumerate(case_ids)}
        self._ema = np.zeros(len(case_ids), dtype=np.float64)
        self._last = np.zeros(len(case_ids), dtype=np.float64)
        self.visits = np.zeros(len(case_ids), dtype=np.int64)
        self.last_seen = np.full(len(case_ids), -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.case_ids)

    def index_of(self, key: str) -> int:
        """Position of case ``key`` in ``case_ids``; :class:`CurriculumConfigError` if unknown."""
        try:
            return self._index[str(key)]
        except KeyError:
            raise CurriculumConfigError(f"unknown case id {key!r}: not in this fold's training split "
                                        f"({len(self.case_ids)} cases, e.g. {self.case_ids[:3]})") from None

    def update(self, keys: Iterable[str], losses: Iterable[float], epoch: int,
               raw_losses: Optional[Iterable[float]] = None) -> None:
        """Fold one loss per key into the EMA, in order (a case drawn twice is updated twice).

        ``raw_losses`` (one per key; default: ``losses``) are the uncentred training losses kept as
        :meth:`last_losses` (DIH reads the raw loss change, as its authors). Non-finite losses are skipped with a
        :func:`warnings.warn` naming the case (the estimate keeps its value).
        """
        keys = [str(k) for k in keys]
        losses = np.asarray(list(losses), dtype=np.float64).reshape(-1)
        raw = losses if raw_losses is None else np.asarray(list(raw_losses), dtype=np.float64).reshape(-1)
        if not len(keys) == losses.size == raw.size:
            raise CurriculumConfigError(f"update got {len(keys)} keys but {losses.size} losses ({raw.size} raw)")
        for key, loss, raw_loss in zip(keys, losses, raw):
            i = self.index_of(key)
            if not np.isfinite(loss):
                warnings.warn(f"case {key}: non-finite training loss ({loss}) ignored for the curriculum's "
                              f"difficulty estimate in epoch {epoch}", RuntimeWarning, stacklevel=2)
                continue
            if self.visits[i] == 0:
                self._ema[i] = loss
            else:
                self._ema[i] = self.ema_alpha * loss + (1.0 - self.ema_alpha) * self._ema[i]
            self._last[i] = raw_loss if np.isfinite(raw_loss) else loss
            self.visits[i] += 1
            self.last_seen[i] = int(epoch)

    @property
    def seen(self) -> np.ndarray:
        """Boolean mask of cases with at least one finite loss."""
        return self.visits > 0

    def estimates(self) -> np.ndarray:
        """Difficulty estimate per case (copy): the EMA; unseen cases get the median of the seen; all unseen: 0."""
        est = self._ema.copy()
        seen = self.seen
        if not seen.any():
            return np.zeros_like(est)
        est[~seen] = float(np.median(est[seen]))
        return est

    def last_losses(self) -> np.ndarray:
        """Latest raw (uncentred) training loss per case (copy); 0 for cases never seen (check :attr:`seen`)."""
        return self._last.copy()

    def to_dict(self) -> dict:
        """JSON-safe dictionary (lists and floats) for checkpoints and curriculum.json."""
        return {"case_ids": list(self.case_ids), "ema_alpha": self.ema_alpha, "ema": self._ema.tolist(),
                "last_loss": self._last.tolist(), "visits": self.visits.tolist(), "last_seen": self.last_seen.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "DifficultyState":
        """Inverse of :meth:`to_dict`."""
        try:
            state = cls(d["case_ids"], d["ema_alpha"])
            state._ema = np.asarray(d["ema"], dtype=np.float64)
            state.visits = np.asarray(d["visits"], dtype=np.int64)
            state.last_seen = np.asarray(d["last_seen"], dtype=np.int64)
            # states saved before the raw loss was kept: the EMA is the best stand-in
            state._last = np.asarray(d.get("last_loss", d["ema"]), dtype=np.float64)
        except KeyError as e:
            raise CurriculumConfigError(f"curriculum state is missing the field {e.args[0]!r}") from None
        n = len(state.case_ids)
        if not (state._ema.shape == state.visits.shape == state.last_seen.shape == state._last.shape
                == (n,)):
            raise CurriculumConfigError("curriculum state arrays do not match the number of case ids")
        return state
