"""``CurriculumDataLoader``: nnU-Net's data loader drawing cases with probabilities read from shared memory.

nnU-Net's augmentation workers (``NonDetMultiThreadedAugmenter``) are forked copies of the data loader, so an
attribute the trainer changes later in the main process never reaches them. This loader therefore keeps its
sampling probabilities in a small float64 torch tensor moved to shared memory in ``__init__`` (before the workers
start): the trainer writes with :meth:`set_probabilities`, every worker reads the current values in
:meth:`get_indices`. Layout: ``[sequence, version, p_0, ..., p_{N-1}]``; a write makes ``sequence`` odd, writes,
and makes it even again, and a reader retries until it copied a consistent snapshot (a seqlock), so no lock is
shared with the workers. Each batch carries ``batch["curriculum_version"]``, the version it was drawn with, so the
trainer can measure the lag (batches already in flight when the probabilities changed).

The curriculum picks the *case*; nnU-Net's foreground oversampling (``get_bbox``) still picks the *patch*: with
batch size 2 and ``oversample_foreground_percent = 0.33`` the last slot of every batch is a foreground-forced patch
and the first a random one. :func:`case_has_foreground` reads which cases have any foreground voxel from the
preprocessed ``class_locations`` (nnU-Net's own record of where each class lies), so that the difficulty signal
can tell a background-only patch of a lesion case from a patch of a lesion-free case.
Each process draws cases with its own ``numpy.random.Generator``, created lazily in the process that samples
(seeded from numpy's global state, which nnU-Net's worker ``producer`` seeds with the worker seed, and the worker's
thread id), so forked workers never share a random stream. Works with ``nnUNet_n_proc_DA=0`` (the main process
samples) and with worker processes (fork or spawn: the tensor is shared, the numpy view is rebuilt per process).
"""
from __future__ import annotations

import os
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from clips_nnunet.errors import CurriculumConfigError, DatasetError


def max_sampling_lag(n_workers: int, num_cached: int) -> int:
    """Most batches drawn with the previous probabilities after a change (the lag): with worker processes,
    ``NonDetMultiThreadedAugmenter`` holds ``num_cached`` batches in its process queue, ``num_cached`` in the
    results-loop queue, one more in the results-loop thread's hands (taken from the first queue, waiting for room
    in the second) and one in each worker's hands, ``2 num_cached + n_workers + 1``; all of them are full at an
    epoch start because the queues refill while nnU-Net validates. 0 without workers (the main process samples)."""
    return 0 if int(n_workers) <= 0 else 2 * int(num_cached) + int(n_workers) + 1


def case_has_foreground(dataset, case_ids: Sequence[str], foreground_labels: Sequence[int]) -> np.ndarray:
    """Boolean per case: does its preprocessed segmentation contain any foreground voxel?

    Read from ``properties["class_locations"]`` of ``<case>.pkl`` in the preprocessed folder (written by nnU-Net's
    preprocessing; the locations its foreground oversampling draws from). Raises :class:`DatasetError` naming the
    case when the file or the field is missing (re-run ``nnUNetv2_preprocess``).
    """
    from batchgenerators.utilities.file_and_folder_operations import load_pickle

    folder = getattr(dataset, "source_folder", None)
    result = np.zeros(len(case_ids), dtype=bool)
    for i, case in enumerate(case_ids):
        path = os.path.join(str(folder), f"{case}.pkl")
        try:
            locations = load_pickle(path)["class_locations"]
        except (OSError, KeyError, EOFError) as e:
            raise DatasetError(f"case {case}: cannot read class_locations from {path} ({type(e).__name__}: {e}); "
                               f"re-run nnUNetv2_preprocess for this dataset") from None
        result[i] = any(len(locations.get(label, ())) > 0 for label in foreground_labels)
    return result


class CurriculumDataLoader(nnUNetDataLoader):
    """nnU-Net's ``nnUNetDataLoader`` whose ``get_indices`` samples case keys from shared probabilities.

    Arguments are those of ``nnUNetDataLoader`` plus ``seed`` (optional int mixed into each process's generator).
    ``case_ids`` (the order of the probability vector) is the loader's list of identifiers.
    """

    def __init__(self, data, batch_size: int, patch_size, final_patch_size, label_manager,
                 oversample_foreground_percent: float = 0.0, sampling_probabilities=None, pad_sides=None,
                 probabilistic_oversampling: bool = False, transforms=None, seed: Optional[int] = None):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=oversample_foreground_percent,
                         sampling_probabilities=None, pad_sides=pad_sides,
                         probabilistic_oversampling=probabilistic_oversampling, transforms=transforms)
        self.case_ids: List[str] = [str(i) for i in self.indices]
        if not self.case_ids:
            raise CurriculumConfigError("the training split of this fold has no cases; check splits_final.json")
        n = len(self.case_ids)
        self._shared = torch.zeros(n + 2, dtype=torch.float64).share_memory_()
        self._seed = seed
        self._pid: Optional[int] = None
        self._view: Optional[np.ndarray] = None
        self._rng: Optional[np.random.Generator] = None
        self.last_version = 0
        initial = np.full(n, 1.0 / n) if sampling_probabilities is None else sampling_probabilities
        self.set_probabilities(initial, version=0)

    # pickling (spawn start method): share the tensor, rebuild view and generator in the new process
    def __getstate__(self):
        d = dict(self.__dict__)
        d["_view"] = None
        d["_rng"] = None
        d["_pid"] = None
        return d

    def _buffer(self) -> np.ndarray:
        if self._view is None or self._pid != os.getpid():
            self._view = self._shared.numpy()
            self._pid = os.getpid()
            self._rng = None
        return self._view

    def _generator(self) -> np.random.Generator:
        self._buffer()
        if self._rng is None:
            # numpy's global state is seeded per worker by nnU-Net's producer (seeds or OS entropy)
            entropy = [int(np.random.randint(0, 2 ** 31 - 1)), int(getattr(self, "thread_id", 0))]
            if self._seed is not None:
                entropy.append(int(self._seed))
            self._rng = np.random.default_rng(entropy)
        return self._rng

    def set_probabilities(self, probabilities: Sequence[float], version: Optional[int] = None) -> int:
        """Publish new sampling probabilities (one per ``case_ids``; normalised here) to every worker.

        Returns the new version number (previous + 1 unless ``version`` is given).
        """
        p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        if p.size != len(self.case_ids):
            raise CurriculumConfigError(f"got {p.size} probabilities for {len(self.case_ids)} training cases")
        if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
            raise CurriculumConfigError("sampling probabilities must be finite, >= 0 and not all zero")
        p = p / p.sum()
        buf = self._buffer()
        new_version = int(buf[1]) + 1 if version is None else int(version)
        buf[0] += 1.0          # odd: write in progress
        buf[2:] = p
        buf[1] = float(new_version)
        buf[0] += 1.0          # even: consistent
        return new_version

    def read_probabilities(self) -> Tuple[np.ndarray, int]:
        """A consistent snapshot ``(probabilities, version)`` of the shared buffer."""
        buf = self._buffer()
        while True:
            seq = buf[0]
            if int(seq) % 2 == 0:
                p = buf[2:].copy()
                version = int(buf[1])
                if buf[0] == seq:
                    return p, version
            time.sleep(0)

    def get_indices(self):
        p, version = self.read_probabilities()
        self.last_version = version
        chosen = self._generator().choice(len(self.case_ids), size=self.batch_size, replace=True, p=p)
        return [self.case_ids[i] for i in chosen]

    def generate_train_batch(self):
        batch = super().generate_train_batch()
        batch["curriculum_version"] = self.last_version
        return batch
