"""Append-only curriculum history (clips_nnunet.trainers.curriculum_history): write, read back, continue a run
(truncation), survive a partial last row, read legacy curriculum.json, plot at bounded cost."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from clips_nnunet.errors import DatasetError
from clips_nnunet.trainers.curriculum import read_history
from clips_nnunet.trainers.curriculum_history import (EPOCHS_JSONL, HEADER_JSON, ROWS_F32, HistoryWriter,
                                                      plot_curriculum)

IDS = ["case_a", "case_b", "case_c"]


def probs(epoch):
    p = np.array([1.0 + epoch, 2.0, 3.0])
    return p / p.sum()


def write(fold, epochs, first=0):
    writer = HistoryWriter(str(fold), IDS, "nnUNetTrainerCLTest")
    writer.start(first)
    for e in epochs:
        writer.append(e, probs(e), [0.1 * e, -0.2, 0.3], {"warmup": e == 0, "active_fraction": 1.0,
                                                           "threshold": None if e == 0 else 0.5 + e},
                      state={"visits": [e, e, e]})
    return writer


def test_write_and_read_back(tmp_path):
    write(tmp_path, range(4))
    case_ids, epochs, p = read_history(tmp_path)          # the three-field unpacking
    assert case_ids == IDS and epochs.tolist() == [0, 1, 2, 3] and p.shape == (4, 3)
    np.testing.assert_allclose(p[2], probs(2), rtol=1e-6)       # float32 storage
    h = read_history(tmp_path)
    np.testing.assert_allclose(h.estimates[3], [0.3, -0.2, 0.3], rtol=1e-6)
    assert h.records[0]["warmup"] and h.records[3]["threshold"] == pytest.approx(3.5)
    assert h.state == {"visits": [3, 3, 3]}
    # one float32 row (epoch, N probabilities, N estimates) per epoch
    assert os.path.getsize(tmp_path / ROWS_F32) == 4 * (2 * 3 + 1) * 4
    assert json.loads((tmp_path / HEADER_JSON).read_text())["case_ids"] == IDS


def test_continue_truncates_later_epochs_and_a_partial_row_is_ignored(tmp_path):
    write(tmp_path, range(5))
    with open(tmp_path / ROWS_F32, "ab") as f:                   # a crash in the middle of an append
        f.write(b"\x00" * 10)
    with open(tmp_path / EPOCHS_JSONL, "a") as f:
        f.write('{"epoch": 5, "warm')
    assert read_history(tmp_path).epochs.tolist() == [0, 1, 2, 3, 4]
    write(tmp_path, [3, 4, 5], first=3)                         # nnUNetv2_train --c from epoch 3
    h = read_history(tmp_path)
    assert h.epochs.tolist() == [0, 1, 2, 3, 4, 5]
    assert [r["epoch"] for r in h.records] == [0, 1, 2, 3, 4, 5]
    # a fresh run (epoch 0) starts a new history
    write(tmp_path, [0])
    assert read_history(tmp_path).epochs.tolist() == [0]


def test_a_changed_split_on_continue_keeps_the_old_history_with_a_message(tmp_path):
    """--c with another training split: the old history is moved aside (readable) with a message naming the cases,
    not reset silently; the new history starts at the continued epoch."""
    write(tmp_path, range(3))
    writer = HistoryWriter(str(tmp_path), ["case_a", "case_b", "case_d"], "nnUNetTrainerCLTest")
    message = writer.start(3)
    assert message and "training split changed" in message and "case_d" in message and "case_c" in message
    kept = tmp_path / "curriculum_history_previous_split"
    assert read_history(kept).epochs.tolist() == [0, 1, 2] and read_history(kept).case_ids == IDS
    writer.append(3, [0.2, 0.3, 0.5], [0.0, 0.0, 0.0], {"warmup": False})
    assert read_history(tmp_path).epochs.tolist() == [3]
    # the same split again: no message; a second change keeps the first archive
    assert writer.start(4) is None
    assert HistoryWriter(str(tmp_path), IDS, "nnUNetTrainerCLTest").start(5)
    assert (tmp_path / "curriculum_history_previous_split_2" / HEADER_JSON).is_file()


def test_legacy_curriculum_json_is_read_and_carried_over_on_continue(tmp_path):
    legacy = {"trainer": "nnUNetTrainerCLSelfPaced", "case_ids": IDS, "state": {"visits": [1, 1, 1]},
              "epochs": [{"epoch": e, "warmup": e == 0, "active_fraction": 1.0, "threshold": None,
                          "probabilities": probs(e).tolist(), "estimates": [0.0, 0.1, 0.2]} for e in range(3)]}
    (tmp_path / "curriculum.json").write_text(json.dumps(legacy))
    case_ids, epochs, p = read_history(tmp_path)
    assert case_ids == IDS and epochs.tolist() == [0, 1, 2]
    np.testing.assert_allclose(p[1], probs(1))
    assert read_history(tmp_path).state == {"visits": [1, 1, 1]}
    write(tmp_path, [2, 3], first=2)                            # continued by this version
    h = read_history(tmp_path)
    assert h.epochs.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(h.probabilities[0], probs(0), rtol=1e-6)


def test_missing_history_names_the_folder(tmp_path):
    with pytest.raises(DatasetError, match="holds no curriculum history"):
        read_history(tmp_path)


def test_plot_is_bounded_and_written(tmp_path):
    ids = [f"c{i:03d}" for i in range(450)]
    writer = HistoryWriter(str(tmp_path), ids, "nnUNetTrainerCLTest")
    writer.start(0)
    rng = np.random.default_rng(0)
    for e in range(700):
        writer.append(e, rng.dirichlet(np.ones(len(ids))), rng.normal(size=len(ids)),
                      {"warmup": e < 10, "active_fraction": min(1.0, 0.3 + e / 700), "threshold": float(e)})
    plot_curriculum(str(tmp_path))
    assert (tmp_path / "curriculum.png").stat().st_size > 1000
