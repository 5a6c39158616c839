"""Study harness: configuration errors, generated budget trainers, seeding environment, resumability, splits, and
one tiny real run through nnUNetv2_train (integration)."""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from clips_nnunet.errors import DatasetError
from clips_nnunet.nnunet_env import environment_applied
from clips_nnunet.study import (RunSpec, StudyConfigError, build_train_command, fold_dir, load_study_config,
                                parse_study_config, plan_runs, run_is_finished, run_study, seed_results_root,
                                study_environment, teacher_results_root, training_cases_difficulty_csv,
                                write_stratified_splits, write_study_trainers)
from clips_nnunet.study.memorisation import planted_training_cases
from clips_nnunet.synthetic.raw import ERRORS_JSON, truth_dir

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "name": "t",
    "dataset": {"id": 994, "name": "StudyT", "source": "synthetic_raw", "n_splits": 3},
    "trainers": [{"name": "nnUNetTrainer", "trainer": "nnUNetTrainerClipsBase"},
                 {"name": "nnUNetTrainerCLSelfPaced", "overrides": {"warmup_epochs": 1}},
                 {"name": "nnUNetTrainerCLTransferTeacher", "teacher": "nnUNetTrainer"}],
    "baseline": "nnUNetTrainer",
    "controls": [],
    "seeds": [0, 1],
    "folds": [0],
    "budget": {"epochs": 2, "iterations_per_epoch": 3},
    "device": "cpu",
}


def cfg(tmp_path, **changes):
    raw = copy.deepcopy(BASE)
    raw.update(changes)
    return parse_study_config(raw, study_dir=tmp_path / "study")


@pytest.mark.parametrize("change, message", [
    ({"seeds": []}, "'seeds'"),
    ({"seeds": [0, 0]}, "duplicates"),
    ({"budget": {"epochs": 0, "iterations_per_epoch": 3}}, "budget.epochs"),
    ({"budget": {"epochs": 2}}, "budget.iterations_per_epoch"),
    ({"baseline": "nnUNetTrainerFoo"}, "baseline"),
    ({"controls": ["nnUNetTrainerAnti"]}, "control"),
    ({"device": "tpu"}, "device"),
    ({"folds": [3]}, "n_splits"),
    ({"trainers": [{"name": "nnUNetTrainer__X"}]}, "__"),
    ({"trainers": [{"name": "A"}, {"name": "A"}], "baseline": "A"}, "unique"),
    ({"trainers": [{"name": "A", "teacher": "B"}], "baseline": "A"}, "teacher"),
    ({"trainers": [{"name": "A", "speed": 2}], "baseline": "A"}, "unknown key"),
    ({"dataset": {"id": 1000}}, "dataset.id"),
    ({"dataset": {"id": 5, "source": "ftp"}}, "dataset.source"),
    ({"budgett": {}}, "unknown key"),
    ({"parallel_runs": 0}, "parallel_runs"),
])
def test_config_errors_name_the_key(tmp_path, change, message):
    with pytest.raises(StudyConfigError, match=message.replace("(", r"\(")):
        cfg(tmp_path, **change)


def test_config_missing_required_and_file_errors(tmp_path):
    raw = copy.deepcopy(BASE)
    del raw["budget"]
    with pytest.raises(StudyConfigError, match="'budget' is missing"):
        parse_study_config(raw)
    with pytest.raises(StudyConfigError, match="does not exist"):
        load_study_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(StudyConfigError, match="not valid YAML"):
        load_study_config(bad)


def test_shipped_configs_are_valid():
    for name in ("synthetic_cpu.yaml", "gpu_lease.yaml"):
        config = load_study_config(REPO / "benchmarks" / "learning" / name)
        assert len(config.trainers) == 5 and len(config.seeds) == 3
        assert config.baseline == "nnUNetTrainer" and config.trainer("nnUNetTrainer").trainer == "nnUNetTrainerClipsBase"
        assert config.trainer("nnUNetTrainerCLTransferTeacher").teacher == "nnUNetTrainer"


def test_plan_orders_teacher_first_and_reuses_its_study_fold(tmp_path):
    config = cfg(tmp_path)
    runs = plan_runs(config, n_splits=3)
    labels = [r.label for r in runs]
    # teacher: fold 0 at the teacher seed is the study run itself; folds 1, 2 go to the teacher root
    assert labels[:3] == ["nnUNetTrainer fold 0 seed 0", "nnUNetTrainer fold 1 seed 0 (teacher)",
                          "nnUNetTrainer fold 2 seed 0 (teacher)"]
    assert runs[0].results_root == seed_results_root(config, 0)
    assert runs[1].results_root == teacher_results_root(config)
    assert len(runs) == 2 + 3 * 2  # 2 extra teacher folds + 3 arms x 2 seeds, no duplicate
    assert len(set(runs)) == len(runs)


def test_environment_carries_seed_results_root_ext_and_difficulty(tmp_path):
    config = cfg(tmp_path)
    run = RunSpec(config.trainer("nnUNetTrainerCLTransferTeacher"), 0, 1, seed_results_root(config, 1))
    env = study_environment(config, run, difficulty_csv=tmp_path / "d.csv", base_env={"PATH": "/bin"})
    assert env["CLIPS_SEED"] == "1"
    assert env["nnUNet_results"] == str(tmp_path / "study" / "seed_1" / "nnUNet_results")
    assert env["nnUNet_preprocessed"] == str(tmp_path / "study" / "nnUNet_preprocessed")
    assert env["CLIPS_DIFFICULTY_CSV"] == str(tmp_path / "d.csv")
    ext = env["nnUNet_extTrainer"].split(":")
    assert ext[0].endswith("clips_nnunet/nnunet_ext") and str(tmp_path / "study" / "ext") in ext
    assert env["nnUNet_n_proc_DA"] == "0"
    cmd = build_train_command(config, run, "cpu")
    assert cmd == ["nnUNetv2_train", "994", "3d_fullres", "0", "-tr", "nnUNetTrainerCLTransferTeacherStudy", "-p",
                   "nnUNetPlans", "-device", "cpu"]
    assert build_train_command(config, run, "cuda", resume=True)[-3:] == ["-device", "cuda", "--c"]


def test_generated_budget_trainers(tmp_path):
    config = cfg(tmp_path)
    modules = {"nnUNetTrainer": "clips_nnunet.trainers.base",
               "nnUNetTrainerCLSelfPaced": "clips_nnunet.trainers.self_paced_trainers"}
    path = write_study_trainers(config, modules, tmp_path)
    spec = importlib.util.spec_from_file_location("clips_study_trainers_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from clips_nnunet.trainers.base import nnUNetTrainerClipsBase
    from clips_nnunet.trainers.self_paced_trainers import nnUNetTrainerCLSelfPaced

    assert issubclass(module.nnUNetTrainerStudy, nnUNetTrainerClipsBase)
    assert issubclass(module.nnUNetTrainerCLSelfPacedStudy, nnUNetTrainerCLSelfPaced)
    from clips_nnunet.trainers.mixins import BudgetMixin, DrawnKeysMixin

    assert module.nnUNetTrainerCLSelfPacedStudy.warmup_epochs == 1
    assert module.nnUNetTrainerStudy.__mro__[1:4] == (DrawnKeysMixin, BudgetMixin, nnUNetTrainerClipsBase)
    assert module.nnUNetTrainerStudy.budget_epochs == 2 and module.nnUNetTrainerStudy.budget_iterations_per_epoch == 3
    assert module.nnUNetTrainerStudy.budget_val_iterations_per_epoch == 2  # the config's default
    assert not hasattr(module, "nnUNetTrainerCLTransferTeacherStudy")  # not in modules: not generated
    assert all("__" not in n for n in dir(module) if n.startswith("nnUNetTrainer"))


def test_validation_without_mirroring(tmp_path):
    """validation_mirroring: false puts NoMirrorValidationMixin first; it clears the mirroring axes during nnU-Net's
    validation only and restores them afterwards (also when the validation fails)."""
    from clips_nnunet.study.validation import NoMirrorValidationMixin

    with pytest.raises(StudyConfigError, match="validation_mirroring"):
        cfg(tmp_path, validation_mirroring="no")
    config = cfg(tmp_path, validation_mirroring=False)
    path = write_study_trainers(config, {"nnUNetTrainer": "clips_nnunet.trainers.base"}, tmp_path)
    spec = importlib.util.spec_from_file_location("clips_study_trainers_nomirror", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.nnUNetTrainerStudy.__mro__[1] is NoMirrorValidationMixin
    assert "NoMirrorValidationMixin" not in write_study_trainers(cfg(tmp_path), {"nnUNetTrainer": "clips_nnunet."
                                                                 "trainers.base"}, tmp_path).read_text()

    class Base:
        inference_allowed_mirroring_axes = (0, 1, 2)
        seen = []

        def perform_actual_validation(self, save_probabilities=False):
            self.seen.append((self.inference_allowed_mirroring_axes, save_probabilities))
            if save_probabilities:
                raise RuntimeError("export failed")

    class Trainer(NoMirrorValidationMixin, Base):
        pass

    trainer = Trainer()
    trainer.perform_actual_validation()
    with pytest.raises(RuntimeError):
        trainer.perform_actual_validation(True)
    assert Base.seen == [(None, False), (None, True)] and trainer.inference_allowed_mirroring_axes == (0, 1, 2)


def test_generated_file_holds_only_imports_and_class_attributes(tmp_path):
    """No behaviour in the generated file: a docstring, imports, classes whose bodies are literal assignments."""
    import ast

    config = cfg(tmp_path)
    path = write_study_trainers(config, {"nnUNetTrainer": "clips_nnunet.trainers.base",
                                         "nnUNetTrainerCLSelfPaced": "clips_nnunet.trainers.self_paced_trainers"}, tmp_path)
    tree = ast.parse(path.read_text())
    kinds = [type(node).__name__ for node in tree.body]
    assert kinds == ["Expr", "ImportFrom", "ImportFrom", "ImportFrom", "ImportFrom", "ClassDef", "ClassDef"]
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        assert all(isinstance(s, ast.Assign) and isinstance(s.value, (ast.Constant, ast.List)) for s in cls.body)
    assert "def " not in path.read_text() and "import os" not in path.read_text()


def test_non_clips_trainer_is_warned_unseeded(tmp_path, capsys):
    """An arm on nnU-Net's own trainer runs, but CLIPS_SEED cannot seed it: the study says so."""
    raw = copy.deepcopy(BASE)
    raw["trainers"] = [{"name": "nnUNetTrainer", "trainer": "nnUNetTrainerClipsBase"},
                       {"name": "Stock", "trainer": "nnUNetTrainer"}]
    status = run_study(parse_study_config(raw, study_dir=tmp_path / "s"), dry_run=True, report=False)
    out = capsys.readouterr().out
    assert "arm 'Stock' derives from nnUNetTrainer, which is not a clips trainer" in out
    assert "arm 'nnUNetTrainer' derives" not in out
    assert status["runs"]["Stock fold 0 seed 1"] == "dry run"


def _fake_finished(folder: Path) -> None:
    (folder / "validation").mkdir(parents=True)
    (folder / "checkpoint_final.pth").write_bytes(b"x")
    (folder / "validation" / "summary.json").write_text("{}")


def test_finished_run_is_skipped_and_interrupted_run_resumes(tmp_path, capsys):
    raw = copy.deepcopy(BASE)
    raw["trainers"] = raw["trainers"][:2]
    config = parse_study_config(raw, study_dir=tmp_path / "study")
    spec = config.trainer("nnUNetTrainer")
    finished = fold_dir(config, RunSpec(spec, 0, 0, seed_results_root(config, 0)))
    _fake_finished(finished)
    partial = fold_dir(config, RunSpec(spec, 0, 1, seed_results_root(config, 1)))
    partial.mkdir(parents=True)
    (partial / "checkpoint_latest.pth").write_bytes(b"x")
    assert run_is_finished(finished) and not run_is_finished(partial)
    status = run_study(config, dry_run=True, report=False)
    assert status["runs"]["nnUNetTrainer fold 0 seed 0"] == "skipped (finished)"
    assert status["runs"]["nnUNetTrainer fold 0 seed 1"] == "dry run"
    assert status["runs"]["nnUNetTrainerCLSelfPaced fold 0 seed 0"] == "dry run"
    out = capsys.readouterr().out
    assert "CLIPS_SEED=1 nnUNetv2_train 994 3d_fullres 0 -tr nnUNetTrainerStudy -p nnUNetPlans -device cpu --c" in out
    assert "CLIPS_SEED=0 nnUNetv2_train 994 3d_fullres 0 -tr nnUNetTrainerStudy " not in out
    assert "-tr nnUNetTrainerCLSelfPacedStudy" in out
    generated = (tmp_path / "study" / "ext" / "clips_study_trainers.py").read_text()
    assert "class nnUNetTrainerCLSelfPacedStudy" in generated and "warmup_epochs = 1" in generated


def test_missing_trainer_class_is_skipped_or_refused(tmp_path):
    raw = copy.deepcopy(BASE)
    raw["trainers"] = [{"name": "nnUNetTrainer", "trainer": "nnUNetTrainerClipsBase"},
                       {"name": "nnUNetTrainerDoesNotExist"}]
    config = parse_study_config(raw, study_dir=tmp_path / "a")
    status = run_study(config, dry_run=True, report=False, echo=False)
    assert status["missing_trainers"] == ["nnUNetTrainerDoesNotExist"]
    raw["skip_missing_trainers"] = False
    with pytest.raises(StudyConfigError, match="nnUNetTrainerDoesNotExist"):
        run_study(parse_study_config(raw, study_dir=tmp_path / "b"), dry_run=True, report=False, echo=False)


def test_stratified_splits_and_teacher_csv_per_fold(tmp_path):
    config = cfg(tmp_path, difficulty_key="planted_difficulty")
    gt = config.study_dir / "nnUNet_preprocessed" / config.dataset_folder_name / "gt_segmentations"
    gt.mkdir(parents=True)
    meta = {}
    for i in range(9):
        (gt / f"case_{i:04d}.nii.gz").write_bytes(b"")
        meta[f"case_{i:04d}"] = {"planted_difficulty": i / 8}
    raw = config.study_dir / "nnUNet_raw" / config.dataset_folder_name
    raw.mkdir(parents=True)
    (raw / "case_metadata.json").write_text(json.dumps(meta))
    splits = json.loads(write_stratified_splits(config).read_text())
    assert len(splits) == 3
    assert splits[0]["val"] == ["case_0000", "case_0003", "case_0006"]  # each fold spans easy..hard
    assert sorted(splits[0]["train"] + splits[0]["val"]) == sorted(meta)
    teacher_csv = config.study_dir / "difficulty_nnUNetTrainer.csv"
    teacher_csv.write_text("case_id,difficulty\n" + "".join(f"case_{i:04d},{i / 10}\n" for i in range(9)))
    fold_csv = training_cases_difficulty_csv(config, teacher_csv, 0)
    rows = fold_csv.read_text().splitlines()
    assert rows[0] == "case_id,difficulty" and len(rows) == 1 + 6
    assert not any(r.startswith(("case_0000,", "case_0003,", "case_0006,")) for r in rows)


def test_planted_training_cases_of_a_fold(tmp_path):
    """Only the fold's training cases with a planted error (kind not None) are predicted for the memorisation check."""
    config = cfg(tmp_path)
    assert planted_training_cases(config, 0) == {}  # no clips_truth: no planted errors
    truth = truth_dir(config.study_dir / "nnUNet_raw", config.dataset_id, config.dataset_name)
    (truth / "labels_clean").mkdir(parents=True)
    (truth / ERRORS_JSON).write_text(json.dumps({"cases": {"case_0000": {"kind": "threshold"},
                                                           "case_0001": {"kind": None},
                                                           "case_0002": {"kind": "slice_shift"},
                                                           "case_0003": {"kind": "physiological"}}}))
    with pytest.raises(DatasetError, match="splits_final.json is missing"):
        planted_training_cases(config, 0)
    splits = config.study_dir / "nnUNet_preprocessed" / config.dataset_folder_name / "splits_final.json"
    splits.parent.mkdir(parents=True)
    splits.write_text(json.dumps([{"train": ["case_0000", "case_0001", "case_0002"], "val": ["case_0003"]},
                                  {"train": ["case_0003"], "val": ["case_0000", "case_0001", "case_0002"]}]))
    assert planted_training_cases(config, 0) == {"case_0000": "threshold", "case_0002": "slice_shift"}
    assert planted_training_cases(config, 1) == {"case_0003": "physiological"}


def test_memorisation_predictions_are_redone_for_a_retrained_run(tmp_path):
    """A prediction folder counts only with every case and the stamp of the checkpoint it came from."""
    from clips_nnunet.study.memorisation import _complete, _stamp

    checkpoint = tmp_path / "checkpoint_final.pth"
    checkpoint.write_bytes(b"model 1")
    folder = tmp_path / "pred"
    folder.mkdir()
    (folder / "case_0000.nii.gz").write_bytes(b"")
    stamp = _stamp(checkpoint)
    assert not _complete(folder, ["case_0000", "case_0001"], stamp)  # a case missing
    (folder / "case_0001.nii.gz").write_bytes(b"")
    assert not _complete(folder, ["case_0000", "case_0001"], stamp)  # no stamp yet
    (folder / "checkpoint.json").write_text(json.dumps(stamp))
    assert _complete(folder, ["case_0000", "case_0001"], stamp)
    checkpoint.write_bytes(b"model 2, retrained")
    assert not _complete(folder, ["case_0000", "case_0001"], _stamp(checkpoint))


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_tiny_real_study(tiny_preprocessed, tmp_path):
    """Two seeds of the seeded stock baseline, 1 epoch x 2 iterations each, run in parallel through nnUNetv2_train:
    both finish, the drawn case keys differ between seeds, the report has the Dice table, a re-run skips, and the
    same seed run again in a fresh results root draws exactly the same keys."""
    import shutil

    base, env, dataset_id = tiny_preprocessed
    study = tmp_path / "study"
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        src = Path(env[name]) / f"Dataset{dataset_id:03d}_ClipsTiny"
        shutil.copytree(src, study / name / src.name,
                        ignore=shutil.ignore_patterns("nnUNetPlans_2d", "nnUNetPlans_3d_lowres", "splits_final.json"))
    raw = {"name": "tiny", "dataset": {"id": dataset_id, "name": "ClipsTiny", "source": "existing", "n_splits": 3},
           "trainers": [{"name": "nnUNetTrainer", "trainer": "nnUNetTrainerClipsBase"}],
           "baseline": "nnUNetTrainer", "seeds": [0, 1], "budget": {"epochs": 1, "iterations_per_epoch": 2,
                                                                     "val_iterations_per_epoch": 1},
           "device": "cpu", "difficulty_key": "planted_difficulty", "parallel_runs": 2}
    config = parse_study_config(raw, study_dir=study)
    # every case "badly annotated", with a clean mask equal to the planted one: the memorisation section must
    # predict fold 0's training cases once per seed and score them the same against both masks
    labels = study / "nnUNet_raw" / f"Dataset{dataset_id:03d}_ClipsTiny" / "labelsTr"
    truth = truth_dir(study / "nnUNet_raw", dataset_id, "ClipsTiny")
    shutil.copytree(labels, truth / "labels_clean")
    cases = sorted(p.name[: -len(".nii.gz")] for p in labels.glob("*.nii.gz"))
    (truth / ERRORS_JSON).write_text(json.dumps({"cases": {c: {"kind": "missed_lesion"} for c in cases}}))
    threads_and_path = {"OMP_NUM_THREADS": "1", "PYTHONPATH": env["PYTHONPATH"]}
    with environment_applied(threads_and_path):
        status = run_study(config, echo=False)
    assert all(str(v).startswith("finished") for v in status["runs"].values()), status
    keys = []
    for seed in (0, 1):
        folder = fold_dir(config, RunSpec(config.trainer("nnUNetTrainer"), 0, seed, seed_results_root(config, seed)))
        record = json.loads((folder / "study_drawn_keys.json").read_text())
        assert record["seed"] == seed and len(record["keys"]) == 2
        keys.append(record["keys"])
    assert keys[0] != keys[1]  # another seed draws other cases
    report = Path(status["report"]).read_text()
    assert "| nnUNetTrainer | " in report and "dice" in report
    train = json.loads((study / "nnUNet_preprocessed" / f"Dataset{dataset_id:03d}_ClipsTiny"
                        / "splits_final.json").read_text())[0]["train"]
    for seed in (0, 1):
        predicted = sorted(p.name for p in (study / "memorisation" / f"seed_{seed}" / "nnUNetTrainer").glob("*.nii.gz"))
        assert predicted == sorted(f"{c}.nii.gz" for c in train)
    numbers = json.loads((Path(status["report"]).parent / "report.json").read_text())["memorisation"]
    assert sorted(numbers["cases"]) == sorted(train)
    assert numbers["dice_vs_clean"]["nnUNetTrainer"] == pytest.approx(numbers["dice_vs_planted"]["nnUNetTrainer"])
    assert f"The {len(train)} training patients of fold 0" in report
    again = run_study(config, echo=False, report=False)
    assert set(again["runs"].values()) == {"skipped (finished)"}
    # the same seed in a fresh results root draws the same cases in the same order
    repro = dataclasses.replace(config, seeds=(0,), study_dir=tmp_path / "repro")
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.copytree(study / name, repro.study_dir / name)
    with environment_applied(threads_and_path):
        status = run_study(repro, echo=False, report=False)
    folder = fold_dir(repro, RunSpec(repro.trainer("nnUNetTrainer"), 0, 0, seed_results_root(repro, 0)))
    assert json.loads((folder / "study_drawn_keys.json").read_text())["keys"] == keys[0]


def test_derived_small_configuration(tmp_path):
    from clips_nnunet.study import add_derived_configuration

    with pytest.raises(StudyConfigError, match="new name"):
        cfg(tmp_path, derive_configuration={"from": "3d_fullres", "features_divisor": 4})
    config = cfg(tmp_path, configuration="3d_study", derive_configuration={"from": "3d_fullres",
                                                                            "features_divisor": 4})
    assert config.preprocess_configuration == "3d_fullres" and config.configuration == "3d_study"
    plans = tmp_path / "plans.json"
    arch = {"network_class_name": "X", "arch_kwargs": {"features_per_stage": [32, 64, 128, 320], "n_stages": 4}}
    plans.write_text(json.dumps({"configurations": {"3d_fullres": {"patch_size": [32, 32, 32],
                                                                   "architecture": arch}}}))
    entry = add_derived_configuration(plans, "3d_study", "3d_fullres", 4)
    saved = json.loads(plans.read_text())["configurations"]
    assert saved["3d_study"] == entry and entry["inherits_from"] == "3d_fullres"
    assert entry["architecture"]["arch_kwargs"]["features_per_stage"] == [8, 16, 32, 80]
    assert saved["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] == [32, 64, 128, 320]
    with pytest.raises(Exception, match="no configuration '2d'"):
        add_derived_configuration(plans, "2d_small", "2d", 2)


def test_derived_configuration_patch_size(tmp_path):
    """A smaller patch: capped at the planned one, rounded down to the total stride per axis (z 1*2*2 = 4,
    y 1*2*2 = 4, x 1*2*1 = 2)."""
    from clips_nnunet.study import add_derived_configuration

    config = cfg(tmp_path, configuration="3d_study", derive_configuration={"from": "3d_fullres",
                                                                            "features_divisor": 2,
                                                                            "patch_size": [30, 64, 7]})
    assert config.derive_patch_size == (30, 64, 7)
    with pytest.raises(StudyConfigError, match="patch_size"):
        cfg(tmp_path, configuration="3d_study", derive_configuration={"from": "3d_fullres", "patch_size": 32})
    plans = tmp_path / "plans.json"
    arch = {"network_class_name": "X", "arch_kwargs": {"features_per_stage": [32, 64, 128],
                                                       "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 1]]}}
    plans.write_text(json.dumps({"configurations": {"3d_fullres": {"patch_size": [96, 40, 48],
                                                                   "architecture": arch}}}))
    entry = add_derived_configuration(plans, "3d_study", "3d_fullres", 2, config.derive_patch_size)
    assert entry["patch_size"] == [28, 40, 6]
    assert entry["architecture"]["arch_kwargs"]["features_per_stage"] == [16, 32, 64]
    assert json.loads(plans.read_text())["configurations"]["3d_fullres"]["patch_size"] == [96, 40, 48]
    assert add_derived_configuration(plans, "3d_tiny", "3d_fullres", 1, [2, 2, 1])["patch_size"] == [4, 4, 2]


def test_publish_report_rewrites_study_dir(tmp_path):
    from clips_nnunet.study import publish_report

    config = cfg(tmp_path)
    with pytest.raises(Exception, match="report.md"):
        publish_report(config, tmp_path / "pub")
    report = config.study_dir / "report"
    (report / "vs_nnUNetTrainer" / "cache").mkdir(parents=True)
    (report / "report.md").write_text(f"folder {config.study_dir}/seed_0/nnUNet_results\n")
    (report / "report.png").write_bytes(b"\x89PNG")
    (report / "vs_nnUNetTrainer" / "cache" / "x.json").write_text("{}")
    (report / "vs_nnUNetTrainer" / "tests.csv").write_text(f"a,{config.study_dir}\n")
    out = publish_report(config, tmp_path / "pub")
    assert out.read_text() == "folder <study_dir>/seed_0/nnUNet_results\n"
    assert (tmp_path / "pub" / "vs_nnUNetTrainer" / "tests.csv").read_text() == "a,<study_dir>\n"
    assert (tmp_path / "pub" / "report.png").read_bytes() == b"\x89PNG"
    assert not (tmp_path / "pub" / "vs_nnUNetTrainer" / "cache").exists()


def test_extends_merges_mappings_and_replaces_lists(tmp_path):
    import yaml

    base = copy.deepcopy(BASE)
    base["dataset"]["options"] = {"n_train": 30, "label_error_fraction": 0.25}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({
        "extends": "base.yaml", "name": "child", "dataset": {"options": {"label_error_fraction": 0.0}},
        "budget": {"epochs": 5, "iterations_per_epoch": 1}, "seeds": [3]}))
    child = load_study_config(tmp_path / "child.yaml", study_dir=tmp_path / "s")
    assert child.name == "child" and child.seeds == (3,)
    assert dict(child.dataset_options) == {"n_train": 30, "label_error_fraction": 0.0}
    assert child.dataset_id == 994 and child.epochs == 5 and child.iterations_per_epoch == 1
    assert [t.name for t in child.trainers] == [t["name"] for t in BASE["trainers"]]
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(StudyConfigError, match="loops back"):
        load_study_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(StudyConfigError, match="missing.yaml.*extended by"):
        load_study_config(tmp_path / "orphan.yaml")


def test_per_arm_controls_pair_each_arm_with_its_own_control(tmp_path):
    trainers = [{"name": "nnUNetTrainer", "trainer": "nnUNetTrainerClipsBase"},
                {"name": "nnUNetTrainerCLSelfPaced", "control": "nnUNetTrainerCLSelfPacedRandom"},
                {"name": "nnUNetTrainerCLSelfPacedRandom"},
                {"name": "nnUNetTrainerCLDIH", "control": "nnUNetTrainerCLDIHRandom"},
                {"name": "nnUNetTrainerCLDIHRandom"}]
    config = cfg(tmp_path, trainers=trainers)
    assert config.controls == ("nnUNetTrainerCLSelfPacedRandom", "nnUNetTrainerCLDIHRandom")
    assert config.control_pairs() == (("nnUNetTrainerCLSelfPacedRandom", ("nnUNetTrainerCLSelfPaced",)),
                                      ("nnUNetTrainerCLDIHRandom", ("nnUNetTrainerCLDIH",)))
    # a control only listed in 'controls' is tested against every other arm but the baseline
    listed = cfg(tmp_path, controls=["nnUNetTrainerCLSelfPaced"])
    assert listed.control_pairs() == (("nnUNetTrainerCLSelfPaced", ("nnUNetTrainerCLTransferTeacher",)),)
    with pytest.raises(StudyConfigError, match="control 'nnUNetTrainerX'"):
        cfg(tmp_path, trainers=[{"name": "nnUNetTrainer", "control": "nnUNetTrainerX"}])


def test_converging_study_conditions_differ_only_where_stated():
    """The three conditions of the converging CPU study: same arms, seeds, folds and images; clean has no errors,
    short has 7.5 % of the iterations (3 of 40 per epoch) over the same number of epochs."""
    noisy, clean, short = (load_study_config(REPO / "benchmarks" / "learning" / f"converging_cpu_{c}.yaml")
                           for c in ("noisy", "clean", "noisy_short"))
    for other in (clean, short):
        assert other.trainers == noisy.trainers and other.seeds == noisy.seeds == (0, 1, 2)
        assert other.folds == noisy.folds and other.dataset_id == noisy.dataset_id
        assert other.study_dir != noisy.study_dir
    assert noisy.dataset_options["label_error_fraction"] == 0.25 and clean.dataset_options["label_error_fraction"] == 0
    assert clean.dataset_options["seed"] == noisy.dataset_options["seed"] and clean.dataset_options[
        "physiological_uptake"] is True
    assert short.dataset_options == noisy.dataset_options and short.epochs == noisy.epochs
    assert short.budget_iterations / noisy.budget_iterations == pytest.approx(0.075)
    ordered = {"nnUNetTrainerCLSelfPaced", "nnUNetTrainerCLSelfPacedLinear", "nnUNetTrainerCLTransferTeacher",
               "nnUNetTrainerCLDIH"}
    assert {arms[0] for _, arms in noisy.control_pairs()} == ordered
    for control, (arm,) in noisy.control_pairs():
        assert control == arm + "Random"
        assert noisy.trainer(control).overrides == noisy.trainer(arm).overrides
        assert noisy.trainer(control).teacher == noisy.trainer(arm).teacher
