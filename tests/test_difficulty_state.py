"""DifficultyState: EMA per case, visits, last epoch seen, unseen = median, JSON round trip."""
import json

import numpy as np
import pytest

from clips_nnunet.curriculum.state import DifficultyState
from clips_nnunet.errors import CurriculumConfigError


def test_ema_visits_last_seen_and_median_for_unseen():
    s = DifficultyState(["a", "b", "c"], ema_alpha=0.5)
    np.testing.assert_array_equal(s.estimates(), [0, 0, 0])          # nothing seen: zeros
    s.update(["a", "b"], [1.0, 2.0], epoch=0)
    s.update(["a"], [0.0], epoch=1)                                  # 0.5 * 0 + 0.5 * 1
    np.testing.assert_allclose(s.estimates(), [0.5, 2.0, 1.25])      # c = median(0.5, 2.0)
    np.testing.assert_array_equal(s.visits, [2, 1, 0])
    np.testing.assert_array_equal(s.last_seen, [1, 0, -1])
    assert s.index_of("c") == 2


def test_repeated_key_in_one_batch_updates_twice():
    s = DifficultyState(["a"], ema_alpha=0.5)
    s.update(["a", "a"], [4.0, 0.0], epoch=3)                        # 4, then 0.5 * 0 + 0.5 * 4
    assert s.estimates()[0] == pytest.approx(2.0)
    assert s.visits[0] == 2


def test_non_finite_loss_is_ignored_with_warning_naming_case():
    s = DifficultyState(["case_0001", "case_0002"], ema_alpha=0.3)
    with pytest.warns(RuntimeWarning, match="case_0002"):
        s.update(["case_0001", "case_0002"], [0.2, float("nan")], epoch=0)
    assert s.visits.tolist() == [1, 0]
    np.testing.assert_allclose(s.estimates(), [0.2, 0.2])


def test_errors():
    with pytest.raises(CurriculumConfigError, match="training split of this fold has no cases"):
        DifficultyState([])
    with pytest.raises(CurriculumConfigError, match="loss_ema_alpha must be in \\(0, 1\\]"):
        DifficultyState(["a"], ema_alpha=0.0)
    s = DifficultyState(["a"])
    with pytest.raises(CurriculumConfigError, match="unknown case id 'zzz'"):
        s.update(["zzz"], [1.0], 0)


def test_round_trip_json():
    s = DifficultyState(["a", "b"], ema_alpha=0.25)
    s.update(["b"], [0.7], epoch=4)
    d = json.loads(json.dumps(s.to_dict()))
    r = DifficultyState.from_dict(d)
    assert r.case_ids == ["a", "b"] and r.ema_alpha == 0.25
    np.testing.assert_allclose(r.estimates(), s.estimates())
    np.testing.assert_array_equal(r.visits, s.visits)
    np.testing.assert_array_equal(r.last_seen, [-1, 4])
