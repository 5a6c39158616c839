"""The case keys actually drawn in nnU-Net training batches follow the curriculum's probabilities, with 2
augmentation workers (forked copies of the loader reading shared memory) and in the main process; the lag after
a change of probabilities is measured and bounded."""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare

from clips_nnunet.trainers.data_loader import CurriculumDataLoader, max_sampling_lag

pytestmark = pytest.mark.integration


def _loader(tiny_preprocessed, seed=0):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    base, env, dataset_id = tiny_preprocessed
    pre = Path(env["nnUNet_preprocessed"]) / f"Dataset{dataset_id:03d}_ClipsTiny"
    folder = str(pre / "nnUNetPlans_3d_fullres")
    dataset_class = infer_dataset_class(folder)
    identifiers = sorted(dataset_class.get_identifiers(folder))
    dataset = dataset_class(folder, identifiers)
    label_manager = PlansManager(str(pre / "nnUNetPlans.json")).get_label_manager(
        json.loads((pre / "dataset.json").read_text()))
    return CurriculumDataLoader(dataset, 2, (32, 32, 32), (32, 32, 32), label_manager,
                                oversample_foreground_percent=0.33, seed=seed)


def _planted(case_ids, favoured, mass=0.9):
    """``mass`` spread over the favoured cases, the rest uniformly over the others."""
    p = np.array([mass / len(favoured) if c in favoured else (1 - mass) / (len(case_ids) - len(favoured))
                  for c in case_ids])
    return p / p.sum()


def _draw(gen, n_batches):
    keys, versions = [], []
    for _ in range(n_batches):
        batch = next(gen)
        keys.extend(batch["keys"])
        versions.append(batch["curriculum_version"])
    return keys, versions


def _assert_follows(keys, case_ids, p):
    counts = Counter(keys)
    observed = np.array([counts.get(c, 0) for c in case_ids])
    result = chisquare(observed, len(keys) * p)
    assert result.pvalue > 1e-3, (observed.tolist(), (len(keys) * p).round(1).tolist())


def test_keys_follow_probabilities_with_two_workers_and_lag_is_bounded(tiny_preprocessed):
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

    dl = _loader(tiny_preprocessed)
    ids = dl.case_ids
    easy, hard = set(ids[:3]), set(ids[-3:])          # planted difficulty rises with the case index
    p_easy = _planted(ids, easy)
    v1 = dl.set_probabilities(p_easy)
    num_cached = 6
    gen = NonDetMultiThreadedAugmenter(dl, None, num_processes=2, num_cached=num_cached, seeds=[11, 12],
                                       pin_memory=False, wait_time=0.002)
    try:
        keys, versions = _draw(gen, 120)
        assert set(versions) == {v1}
        _assert_follows(keys, ids, p_easy)
        assert 0.8 < sum(k in easy for k in keys) / len(keys) < 0.97

        # let every queue fill up, as during nnU-Net's validation between two epochs (the worst case), then
        # switch to hardest-first while workers run: count the batches still drawn with the old version
        time.sleep(5)
        p_hard = _planted(ids, hard)
        v2 = dl.set_probabilities(p_hard)
        lag = 0
        while True:
            batch = next(gen)
            if batch["curriculum_version"] == v2:
                break
            lag += 1
        # in flight: queue (num_cached) + results-loop queue (num_cached) + one batch in the results loop's hands
        # + one in each worker's hands: 2 x 6 + 1 + 2 = 15
        bound = max_sampling_lag(2, num_cached)
        assert bound == 15 and lag <= bound
        print(f"measured lag with 2 workers, num_cached={num_cached}: {lag} batches")
        keys, versions = _draw(gen, 120)
        # the other worker may still deliver batches it drew before the switch: they count as lag too
        stale = sum(v != v2 for v in versions)
        assert set(versions) <= {v1, v2} and lag + stale <= bound
        keys = [k for k, v in zip(keys, versions) if v == v2]
        _assert_follows(keys, ids, p_hard)
        assert 0.8 < sum(k in hard for k in keys) / len(keys) < 0.97
    finally:
        gen._finish()


def test_keys_follow_probabilities_in_main_process_without_lag(tiny_preprocessed):
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

    dl = _loader(tiny_preprocessed, seed=5)
    ids = dl.case_ids
    p = _planted(ids, set(ids[:2]), mass=0.7)
    gen = SingleThreadedAugmenter(dl, None)
    v = dl.set_probabilities(p)
    keys, versions = _draw(gen, 150)
    assert set(versions) == {v}                       # nnUNet_n_proc_DA=0: no batch in flight, no lag
    _assert_follows(keys, ids, p)
    p_one = np.zeros(len(ids))
    p_one[-1] = 1.0
    dl.set_probabilities(p_one)
    keys, _ = _draw(gen, 5)
    assert set(keys) == {ids[-1]}
