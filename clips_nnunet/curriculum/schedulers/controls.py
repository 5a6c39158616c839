"""Random and Anti controls of any curriculum, expressed one way.

Wu, Dyer & Neyshabur (2021, "When do curricula work?", ICLR) showed that the gain of a curriculum may come from its
pacing (a growing subset) rather than from its order, so every ordering needs a *random* and an *anti* arm that
differ from it only in the order. :class:`ControlScheduler` wraps the curriculum's own scheduler (the *arm*) and, every
epoch, lets the arm plan on the shared state and then moves the arm's probabilities to other cases:

    ``q[c_k] = p[r_k]``  for ``k = 1..N``,

with ``r`` the arm's ranking (most preferred first, :attr:`SamplingPlan.ranking`) and ``c`` the control's order:

- ``"random"``: a fixed random permutation of the cases, drawn once from the seeded generator and saved in the
  checkpoint (drawn anew each epoch when the arm itself draws a new subset every epoch, DIH);
- ``"anti"``: the arm's ranking reversed (hardest first).

So a control has exactly the arm's multiset of probabilities every epoch: the same number of admitted cases (ties
included), the same active fraction and sampling entropy, only other cases. Within strata (SPLD groups,
:meth:`CurriculumScheduler.control_strata`) the move stays inside each stratum, so the per-group counts match too.

For weighting curricula (soft SPL, SuperLoss) the loss weights move the same way. Case ``c_k`` takes the place of
its *partner* ``r_k`` (the case the arm puts at rank ``k``): it is sampled with the partner's probability and its loss
is weighted as the arm would weight the partner's, estimated from the case's own current loss and the two EMA
losses ``d`` of the plan's state:

    ``w(c) = v*(l_c - d_c + d_{partner(c)})``   (``v*`` the arm's weight function at its last plan).

When every case's current loss equals its EMA loss, every case gets exactly its partner's arm weight, so the control
has the arm's multiset of (probability, weight) pairs. Only a sample whose patch is of the type its case's
estimate is measured on is shifted (a lesion case's estimate comes from its foreground patches; its background-only
patches are weighted as the arm weights that loss: shifting them against a foreground-based estimate made a
control's mean weight drift from the arm's). The engine then normalises every arm's weights to a mean of 1 per
sampled case (:mod:`clips_nnunet.curriculum.weighting`), so arm and controls train at one step size. (Giving a batch the arm's weights of *that batch's* losses in
another order, an earlier rule, starves a control of a soft curriculum: its batches hold the cases the arm would
not admit, whose losses are above ``lam``, so most of its weights are 0.) Non-finite losses keep weight 0; "no
weighting" (None) stays None.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from clips_nnunet.curriculum.schedulers.base import CurriculumScheduler, SamplingPlan
from clips_nnunet.curriculum.state import DifficultyState
from clips_nnunet.errors import CurriculumConfigError

#: study arms: the curriculum as published and its two controls
ARMS = ("curriculum", "random", "anti")
CONTROLS = ("random", "anti")


def move_to_order(values, from_order, to_order, strata=None) -> np.ndarray:
    """``out[to_order[k]] = values[from_order[k]]`` (within each stratum when ``strata`` labels are given).

    Both orders are permutations of ``range(len(values))``; the result is a permutation of ``values``.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    src, dst = np.asarray(from_order, dtype=np.int64), np.asarray(to_order, dtype=np.int64)
    n = values.size
    for name, order in (("ranking", src), ("control order", dst)):
        if order.shape != (n,) or not np.array_equal(np.sort(order), np.arange(n)):
            raise CurriculumConfigError(f"the {name} must be a permutation of the {n} cases")
    out = np.empty(n)
    if strata is None:
        out[dst] = values[src]
        return out
    labels = np.asarray(strata).reshape(-1)
    for label in np.unique(labels):
        out[dst[labels[dst] == label]] = values[src[labels[src] == label]]
    return out


class ControlScheduler(CurriculumScheduler):
    """The ``control`` ("random" or "anti") arm of the curriculum scheduled by ``arm`` (see the module docstring)."""

    def __init__(self, arm: CurriculumScheduler, control: str):
        if not isinstance(arm, CurriculumScheduler):
            raise CurriculumConfigError(f"a control wraps a CurriculumScheduler, got {type(arm).__name__}")
        if not arm.has_order:
            raise CurriculumConfigError(f"{type(arm).__name__} has no case order, so it has no {control} control "
                                        f"(compare it with the uncurriculated baseline, nnUNetTrainerClipsBase)")
        if control not in CONTROLS:
            raise CurriculumConfigError(f"control must be one of {CONTROLS}, got {control!r}")
        super().__init__(arm.case_ids)
        self.arm, self.control = arm, control
        self.permutation: Optional[np.ndarray] = None
        #: per case: the partner's EMA loss minus its own, at the last plan (None before it)
        self._loss_shift: Optional[np.ndarray] = None
        self._index = {c: i for i, c in enumerate(self.case_ids)}

    def config(self) -> dict:
        return {"class": type(self).__name__, "control": self.control, "arm": self.arm.config()}

    def _control_order(self, ranking: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.control == "anti":
            return ranking[::-1].copy()
        if self.permutation is None or self.arm.random_control_redraws:
            if rng is None:
                raise CurriculumConfigError("the Random control needs the curriculum's random generator")
            self.permutation = rng.permutation(len(self.case_ids))
        return self.permutation

    def plan(self, state: DifficultyState, progress: float, epoch: int, rng: np.random.Generator) -> SamplingPlan:
        self._check_state(state)
        arm = self.arm.plan(state, progress, epoch, rng)
        if arm.ranking is None:
            raise CurriculumConfigError(f"{type(self.arm).__name__} has no case order, so it has no "
                                        f"{self.control} control (compare it with the uncurriculated baseline)")
        ranking = np.asarray(arm.ranking, dtype=np.int64)
        order = self._control_order(ranking, rng)
        strata = self.arm.control_strata()
        q = move_to_order(arm.probabilities, ranking, order, strata)
        d = state.estimates()
        self._loss_shift = move_to_order(d, ranking, order, strata) - d
        return SamplingPlan(q, arm.active_fraction, arm.threshold, {**arm.extra, "control": self.control},
                            order.copy())

    @property
    def weights_losses(self) -> bool:
        return self.arm.weights_losses

    def set_num_epochs(self, num_epochs: int) -> None:
        self.arm.set_num_epochs(num_epochs)

    def loss_weights(self, losses, keys: Optional[Sequence[str]] = None,
                     recorded=None) -> Optional[np.ndarray]:
        """The arm's weights of the batch's losses moved to the partners (module docstring); the arm's own weights
        (None: no weighting) before the first plan. Only a ``recorded`` sample (its patch of the type its case's
        estimate is measured on) is shifted; another (a background-only patch of a lesion case) is weighted as the
        arm weights that loss, as the partner's patch of that type would be."""
        losses = np.asarray(losses, dtype=np.float64).reshape(-1)
        if self._loss_shift is None:
            return self.arm.loss_weights(losses, keys, recorded)
        if keys is None or len(keys) != losses.size:
            raise CurriculumConfigError(f"the {self.control} control weights a batch by its cases: pass one case key "
                                        f"per loss ({losses.size} losses, "
                                        f"{'no' if keys is None else len(keys)} keys)")
        unknown = [str(k) for k in keys if str(k) not in self._index]
        if unknown:
            raise CurriculumConfigError(f"unknown case ids in the batch: {unknown[:5]}")
        rows = np.asarray([self._index[str(k)] for k in keys], dtype=np.int64)
        shift = self._loss_shift[rows]
        if recorded is not None:
            shift = np.where(np.asarray(recorded, dtype=bool).reshape(-1), shift, 0.0)
        return self.arm.loss_weights(losses + shift, keys, recorded)

    def state_dict(self) -> dict:
        return {"arm": self.arm.state_dict(),
                "permutation": None if self.permutation is None else self.permutation.tolist()}

    def load_state_dict(self, d: dict) -> None:
        # a checkpoint written before controls wrapped their arm holds the arm's own state at the top level
        self.arm.load_state_dict(d["arm"] if "arm" in d else d)
        perm = d.get("permutation")
        if perm is not None:
            perm = np.asarray(perm, dtype=np.int64)
            if not np.array_equal(np.sort(perm), np.arange(len(self.case_ids))):
                raise CurriculumConfigError("the saved random order does not match the number of training cases")
        self.permutation = perm


def with_control(arm: CurriculumScheduler, order: str = "curriculum") -> CurriculumScheduler:
    """``arm`` itself for ``order == "curriculum"``, else its :class:`ControlScheduler` ("random" or "anti")."""
    if order not in ARMS:
        raise CurriculumConfigError(f"order must be one of {ARMS}, got {order!r}")
    return arm if order == "curriculum" else ControlScheduler(arm, order)
