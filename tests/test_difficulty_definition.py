"""One definition of case difficulty: the curriculum trainers, ``compare`` and the study agree.

Hand-made ``case_metadata.json`` of five cases (one lesion-free), ranked by hand from the directions of
docs/curricula.md: small TMTV, low SUVmax = hard; many lesions = hard; lesion-free cases at the median rank 0.5.
"""
from __future__ import annotations

import json
import types

import numpy as np
import pytest

from clips_nnunet.curriculum.difficulty import (METADATA_MEASURES, difficulty_from_metadata, difficulty_of_cases,
                                                parse_difficulty_csv, read_difficulty_csv, resolve_measure,
                                                write_difficulty_csv)
from clips_nnunet.errors import CurriculumConfigError

META = {
    "a": {"tmtv_ml": 50.0, "n_lesions": 1, "suv_max": 20.0, "has_label": True},
    "b": {"tmtv_ml": 0.0, "n_lesions": 0, "suv_max": None, "has_label": True},  # lesion-free
    "c": {"tmtv_ml": 5.0, "n_lesions": 4, "suv_max": 4.0, "has_label": True},
    "d": {"tmtv_ml": 200.0, "n_lesions": 10, "suv_max": 12.0, "has_label": True},
    "e": {"tmtv_ml": 20.0, "n_lesions": 2, "suv_max": 8.0, "has_label": True},
    "t": {"has_label": False},  # a test case without label: not ranked by default
}
CASES = ["a", "b", "c", "d", "e"]
#: by hand: the four lesion cases ranked 0, 1/3, 2/3, 1 from easiest to hardest; b (lesion-free) at 0.5
EXPECTED = {
    # SUVmax low = hard: a (20) easiest, d (12), e (8), c (4) hardest
    "suv_max": {"a": 0.0, "d": 1 / 3, "b": 0.5, "e": 2 / 3, "c": 1.0},
    # TMTV small = hard: d (200) easiest, a (50), e (20), c (5) hardest
    "tmtv_ml": {"d": 0.0, "a": 1 / 3, "b": 0.5, "e": 2 / 3, "c": 1.0},
    # many lesions = hard: a (1) easiest, e (2), c (4), d (10) hardest
    "n_lesions": {"a": 0.0, "e": 1 / 3, "b": 0.5, "c": 2 / 3, "d": 1.0},
}


def _curriculum(tmp_path, measure):
    """The difficulty a curriculum trainer loads (``_FamilyTrainer.load_difficulty``, the code nnU-Net runs)."""
    from clips_nnunet.trainers.family import _FamilyTrainer

    trainer = types.SimpleNamespace(difficulty_source="metadata", difficulty_measure=measure, lesion_free="median",
                                    order="curriculum", raw_dataset_folder=lambda: str(tmp_path),
                                    print_to_log_file=lambda *a, **k: None)
    values = _FamilyTrainer.load_difficulty(trainer, CASES)
    return dict(zip(CASES, values.tolist()))


def _compare(tmp_path, measure):
    """The difficulty and tertiles ``compare_results`` gives (one trainer, predictions = references)."""
    import SimpleITK as sitk

    from clips_nnunet.evaluation.compare import compare_results

    gt = tmp_path / "gt"
    validation = tmp_path / "Dataset999_Def" / "T__P__C" / "fold_0" / "validation"
    for folder in (gt, validation):
        folder.mkdir(parents=True, exist_ok=True)
        for case in CASES:
            mask = np.zeros((4, 4, 4), np.uint8)
            if case != "b":
                mask[1:3, 1:3, 1:3] = 1
            sitk.WriteImage(sitk.GetImageFromArray(mask), str(folder / f"{case}.nii.gz"))
    res = compare_results([validation.parent.parent], gt_dir=gt, metadata=tmp_path / "case_metadata.json",
                          metadata_key=measure, out_dir=None, plots=False, progress=False)
    tertiles = dict(zip(res.per_case.case_id, res.per_case.tertile))
    return res.difficulty, tertiles, res.difficulty_source


def _study(tmp_path, measure):
    """The difficulty the study's stratified splits use (every labelled case of the raw dataset's metadata)."""
    from clips_nnunet.study.dataset import case_difficulty_from_metadata

    raw = tmp_path / "study" / "nnUNet_raw" / "Dataset999_Def"
    raw.mkdir(parents=True)
    (raw / "case_metadata.json").write_text(json.dumps(META))
    config = types.SimpleNamespace(study_dir=tmp_path / "study", dataset_folder_name=raw.name, difficulty_key=measure)
    return case_difficulty_from_metadata(config)


@pytest.mark.parametrize("measure", sorted(EXPECTED))
def test_curriculum_compare_and_study_agree(tmp_path, measure):
    (tmp_path / "case_metadata.json").write_text(json.dumps(META))
    expected = EXPECTED[measure]
    curriculum = _curriculum(tmp_path, measure)
    compare, tertiles, source = _compare(tmp_path, measure)
    study = _study(tmp_path, measure)
    for got in (curriculum, compare, study):
        assert set(got) == set(CASES)
        for case in CASES:
            assert got[case] == pytest.approx(expected[case]), (measure, case)
    # tertiles of 5 cases sorted by (difficulty, id): 2 easy, 2 medium, 1 hard; the lesion-free case is "medium"
    order = sorted(CASES, key=lambda c: (expected[c], c))
    assert tertiles == {order[0]: "easy", order[1]: "easy", order[2]: "medium", order[3]: "medium",
                        order[4]: "hard"}
    assert tertiles["b"] == "medium"
    direction = "lower" if METADATA_MEASURES[measure].harder_when == "low" else "higher"
    assert source == f"case_metadata.json: {measure} ({direction} = harder), lesion-free cases at the median rank"


def test_highest_uptake_is_easiest_and_lesion_free_rule():
    """The two disagreements of issue 10: SUVmax direction and where a lesion-free case lands."""
    ranks = difficulty_from_metadata(META, CASES, "suv_max")
    assert min(ranks, key=ranks.get) == "a" and ranks["a"] == 0.0  # SUVmax 20: the most conspicuous case
    assert difficulty_from_metadata(META, CASES, "suv_max", lesion_free="hardest")["b"] == 1.0
    assert difficulty_from_metadata(META, CASES, "suv_max", lesion_free="easiest")["b"] == 0.0
    # planted_difficulty is not a lesion measure: no lesion-free rule, plain order
    planted = {c: {"planted_difficulty": v, "tmtv_ml": 0.0} for c, v in zip("xyz", (0.9, 0.1, 0.5))}
    assert difficulty_from_metadata(planted, measure="planted_difficulty") == {"x": 1.0, "y": 0.0, "z": 0.5}
    with pytest.raises(CurriculumConfigError, match="case c: case_metadata.json has no finite 'suv_max'"):
        difficulty_from_metadata({**META, "c": {"tmtv_ml": 5.0, "n_lesions": 4}}, CASES, "suv_max")


def test_direction_is_fixed_by_the_table():
    assert resolve_measure("tmtv_ml", "low").harder_when == "low"
    with pytest.raises(CurriculumConfigError, match="'suv_max' is harder when low"):
        resolve_measure("suv_max", "high")
    with pytest.raises(CurriculumConfigError, match="unknown difficulty measure 'stage'"):
        resolve_measure("stage")
    # a user's own key needs its direction and is not a lesion measure
    own = {c: {"stage": s, "n_lesions": 0} for c, s in zip("xyz", (4, 1, 2))}
    assert difficulty_from_metadata(own, measure="stage", harder_when="high") == {"x": 1.0, "y": 0.0, "z": 0.5}


def test_every_lesion_measure_is_written_by_the_converter():
    """The table's keys are the converter's keys (a measure that is never written would fail every training)."""
    from clips_nnunet.dataset_conversion.metadata import case_metadata

    mask = np.zeros((20, 20, 20), np.uint8)
    mask[5:8, 5:8, 5:8] = 1
    mask[12:15, 12:15, 12:15] = 1
    suv = np.full(mask.shape, 1.0, np.float32)
    suv[mask > 0] = 6.0
    record = case_metadata(mask, suv, (2.0, 2.0, 2.0))
    lesion_measures = [m for m, spec in METADATA_MEASURES.items() if spec.lesion_measure]
    assert [m for m in lesion_measures if m not in record] == []
    ranks = difficulty_from_metadata({"p": record, "q": {**record, "suv_max": 3.0}}, measure="suv_max")
    assert ranks == {"p": 0.0, "q": 1.0}


def test_empty_cell_is_an_error_naming_file_line_and_column(tmp_path):
    ids = ["case_0", "case_1", "case_2"]
    path = tmp_path / "difficulty.csv"
    path.write_text("case_id,difficulty\ncase_0,0.2\ncase_1,\ncase_2,0.7\n")
    with pytest.raises(CurriculumConfigError, match=rf"{path}, line 3, column 2 \('difficulty'\): empty "
                                                    r"difficulty for case case_1"):
        read_difficulty_csv(path, ids)
    # without header, and in a named column further right
    path.write_text("case_0,0.2\ncase_1,0.1\ncase_2,\n")
    with pytest.raises(CurriculumConfigError, match=r"line 3, column 2: empty difficulty for case case_2"):
        read_difficulty_csv(path, ids)
    path.write_text("case_id,fold,difficulty\ncase_0,0,0.2\ncase_1,1,abc\ncase_2,0,1\n")
    with pytest.raises(CurriculumConfigError, match=r"line 3, column 3 \('difficulty'\): difficulty 'abc' of case "
                                                    r"case_1 is not a number"):
        read_difficulty_csv(path, ids)
    path.write_text("case_id,difficulty\ncase_0,nan\ncase_1,1\ncase_2,2\n")
    with pytest.raises(CurriculumConfigError, match=r"line 2, .*'nan' of case case_0 is not finite"):
        read_difficulty_csv(path, ids)
    path.write_text("case_id,difficulty\ncase_0,1\n\n# comment\ncase_0,2\n")
    with pytest.raises(CurriculumConfigError, match=r"line 5: case case_0 is listed twice \(first on line 2\)"):
        parse_difficulty_csv(path)
    # the plain list stays a list (no second column anywhere), and a written score table reads back
    path.write_text("case_id\ncase_2\n")
    assert read_difficulty_csv(path, ids) == {"case_0": 0.0, "case_1": 0.0, "case_2": 1.0}
    write_difficulty_csv(path, {"case_0": {"difficulty": 0.5, "fold": 1}, "case_1": {"difficulty": 0.25},
                                "case_2": {"difficulty": 0.75, "fold": 0}})
    assert path.read_text().splitlines()[2] == "case_1,0.25,"  # missing extra column: empty, not an error
    assert read_difficulty_csv(path, ids) == {"case_0": 0.5, "case_1": 0.0, "case_2": 1.0}


def test_compare_refuses_a_plain_list_for_tertiles(tmp_path):
    path = tmp_path / "hard.csv"
    path.write_text("case_1\n")
    with pytest.raises(CurriculumConfigError, match="plain list of case ids"):
        difficulty_of_cases(["case_1", "case_2"], difficulty_csv=path)
