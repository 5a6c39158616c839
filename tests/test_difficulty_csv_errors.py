"""A binary file given as the difficulty CSV (``compare --difficulty``, ``study``, the CSV curricula) is one clear
line naming the file, not a UnicodeDecodeError traceback."""
from __future__ import annotations

import pytest

from clips_nnunet.curriculum.difficulty import read_difficulty_csv
from clips_nnunet.errors import CurriculumConfigError


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b"case_id,difficulty\ncase_0,0.5\x00\x00\n"],
                         ids=["binary", "nul-bytes"])
def test_binary_difficulty_csv_is_one_line(tmp_path, content):
    path = tmp_path / "scores.csv"
    path.write_bytes(content)
    with pytest.raises(CurriculumConfigError, match="not a CSV text file") as info:
        read_difficulty_csv(path, ["case_0"])
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_text_csv_still_reads(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("case_id,difficulty\ncase_0,0.5\ncase_1,0.9\n")
    assert len(read_difficulty_csv(path, ["case_0", "case_1"])) == 2
