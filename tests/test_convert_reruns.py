"""Re-runs and races of `convert` (issue 24, item 2): the dataset name is checked under the lock, case ids are the
same for one cohort whatever the folder, -j or order, and a re-run never deletes a case that was good before."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from clips_nnunet.dataset_conversion import cohort as C
from clips_nnunet.dataset_conversion.write import CaseRegistry
from clips_nnunet.errors import DatasetError


def test_dataset_name_is_checked_again_under_the_lock(tmp_path):
    """Two converts with one id and different names: both pass the early check, the first creates its folder;
    the second, once it holds the lock, must refuse (Dataset506_First and Dataset506_Second both existed)."""
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    raw.mkdir()
    pre.mkdir()
    second = C.resolve_target(506, "Second", tmp_path / "private2", raw, pre)
    C.resolve_target(506, "First", tmp_path / "private1", raw, pre)
    (raw / "Dataset506_First").mkdir()  # the first run, converting while the second one was indexing
    with second.lock():
        with pytest.raises(DatasetError, match="already belongs to Dataset506_First"):
            C.admit_cases(second, "Second", [("patient", "study")], add=False, prune=False)
    assert not (raw / "Dataset506_Second").exists() and not (tmp_path / "private2").exists()


def test_case_ids_do_not_depend_on_folder_or_order(tmp_path):
    keys = [(f"PID{p}", f"1.2.3.{p}.{s}") for p in range(6) for s in range(1 + p % 2)]
    assigned = []
    for run in range(3):
        shuffled = list(keys)
        random.Random(run).shuffle(shuffled)
        registry = CaseRegistry.load(tmp_path / f"private{run}", "Lym")
        ids = registry.assign(shuffled)
        registry.save()
        assigned.append((ids, dict(registry.groups)))
    assert assigned[0] == assigned[1] == assigned[2]
    # not the sort order of the PatientIDs (the ids reveal nothing of it)
    order = [assigned[0][0][k] for k in sorted(keys)]
    assert order != sorted(order)
    # a saved registry keeps its ids when patients are added, and new ones get the next numbers
    registry = CaseRegistry.load(tmp_path / "private0", "Lym")
    more = registry.assign(keys + [("PID9", "1.2.3.9.0")])
    assert {k: more[k] for k in keys} == assigned[0][0]
    assert more[("PID9", "1.2.3.9.0")] == f"Lym_{len(keys) + 1:04d}"


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    from clips_nnunet.synthetic.dicom_cohort import make_synthetic_cohort
    cohort = tmp_path_factory.mktemp("rerun") / "cohort"
    make_synthetic_cohort(cohort, n_patients=3, seed=4, progress=False)
    return cohort


def _convert(cohort: Path, base: Path, workers: int = 1):
    from clips_nnunet.dataset_conversion.convert import convert_cohort
    return convert_cohort(cohort, 507, "Rerun", workers=workers, raw_root=base / "raw",
                          preprocessed_root=base / "pre", private_dir=base / "private", progress=False)


def test_same_cohort_same_case_ids_in_fresh_folders_with_j1_and_j2(small_cohort, tmp_path):
    from clips_nnunet.io_utils import read_json
    for name, workers in (("a", 1), ("b", 2)):
        report = _convert(small_cohort, tmp_path / name, workers)
        assert not report.failed
    maps = [read_json(tmp_path / n / "private" / "case_mapping.json") for n in ("a", "b")]
    assert maps[0]["cases"] == maps[1]["cases"] and maps[0]["groups"] == maps[1]["groups"]


def test_rerun_keeps_a_good_case_whose_study_now_fails_and_leaves_the_splits(small_cohort, tmp_path):
    import shutil
    cohort = tmp_path / "cohort"
    shutil.copytree(small_cohort, cohort)
    base = tmp_path / "out"
    first = _convert(cohort, base)
    assert len(first.converted) == 3 and not first.failed
    dataset = base / "raw" / "Dataset507_Rerun"
    splits = base / "pre" / "Dataset507_Rerun" / "splits_final.json"
    before_splits = splits.read_bytes()
    before_files = {p.name: p.read_bytes() for p in sorted(dataset.rglob("*.nii.gz"))}
    # one patient's PET now has a truncated slice: its study cannot be read any more
    from clips_nnunet.io_utils import read_json
    mapping = read_json(base / "private" / "case_mapping.json")
    case = sorted(mapping["cases"])[0]
    patient = mapping["cases"][case]["patient"]
    from clips_nnunet.dataset_conversion.index import index_dicom_folder
    index = index_dicom_folder(cohort, progress=False)
    pet = next(s for s in index.patients[patient][mapping["cases"][case]["study"]] if s.modality == "PT")
    victim = Path(sorted(pet.files)[3])
    victim.write_bytes(victim.read_bytes()[:2000])

    second = _convert(cohort, base)
    record = second.cases[case]
    assert record["status"] == "kept" and "reconversion_failed" in record, record
    assert second.not_reconverted == [case] and not second.failed
    assert "earlier conversion kept" in second.summary_table()
    assert {p.name: p.read_bytes() for p in sorted(dataset.rglob("*.nii.gz"))} == before_files
    assert splits.read_bytes() == before_splits
    assert read_json(dataset / "dataset.json")["numTraining"] == 3
    assert case in read_json(dataset / "case_metadata.json")
