"""The pre-registered cluster protocol (``benchmarks/learning/dlbcl_protocol.yaml``, docs/protocol.md): its arms,
its run list and its ``--slurm`` GPU-hour estimate, checked on the same config with the budget scaled down.
Nothing is trained: ``--dry-run`` and ``--slurm`` only plan and write files."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from clips_nnunet.errors import ClipsError
from clips_nnunet.study import gpu_estimate, load_study_config, parse_study_config, plan_runs, run_study
from clips_nnunet.study import write_slurm_scripts
from clips_nnunet.study.config import REFERENCE_GPU_SECONDS_PER_ITERATION, StudyConfigError
from clips_nnunet.study.layout import runs_by_role
from clips_nnunet.study.report import BADLY_SEGMENTED, reference_masks

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "benchmarks" / "learning" / "dlbcl_protocol.yaml"
PROTOCOL_TMTV = ROOT / "benchmarks" / "learning" / "dlbcl_protocol_tmtv.yaml"
STOCK = "nnUNetTrainer"
PAIRS = {"nnUNetTrainerCLTransferTeacher": "nnUNetTrainerCLTransferTeacherRandom",
         "nnUNetTrainerCLSuperLoss": "nnUNetTrainerCLSuperLossRandom",
         "nnUNetTrainerCLSelfPacedLinear": "nnUNetTrainerCLSelfPacedLinearRandom",
         "nnUNetTrainerCLSelfPaced": "nnUNetTrainerCLSelfPacedRandom"}


def test_protocol_declares_the_preregistered_design(tmp_path):
    config = load_study_config(PROTOCOL, tmp_path / "study")
    assert (config.configuration, config.n_splits, config.folds) == ("3d_fullres", 5, (0, 1, 2, 3, 4))
    assert len(config.seeds) >= 3 and config.device == "cuda"
    assert config.baseline == STOCK and config.trainer(STOCK).trainer == "nnUNetTrainerClipsBase"
    assert config.ladder_arms == ("nnUNetTrainer2x",)
    assert {arm: config.trainer(arm).control for arm in PAIRS} == PAIRS
    assert config.trainer("nnUNetTrainerCLTransferTeacher").teacher == STOCK
    assert config.trainer("nnUNetTrainerCLTransferTeacherRandom").teacher == STOCK  # same teacher cost in both
    assert dict(config.control_pairs()) == {ctrl: (arm,) for arm, ctrl in PAIRS.items()}
    assert config.budget_iterations == 1000 * 250  # nnU-Net's default budget, equal for every arm
    assert config.gpu_seconds_per_iteration == REFERENCE_GPU_SECONDS_PER_ITERATION == 0.065
    tmtv = load_study_config(PROTOCOL_TMTV, tmp_path / "tmtv")
    assert tmtv.configuration == "3d_tmtv" and tmtv.trainers == config.trainers and tmtv.seeds == config.seeds


def test_protocol_full_scale_estimate_by_hand(tmp_path):
    config = load_study_config(PROTOCOL, tmp_path / "study")
    runs = plan_runs(config, n_splits=5)
    assert len(runs) == 10 * 5 * 3  # the teacher's 5 folds at seed 0 are study runs: no extra teacher folds
    est = gpu_estimate(config, runs)
    # 9 arms at 1x + the 2x rung = 11 budgets per (fold, seed); 15 (fold, seed); 250,000 + 50,000 iterations each
    assert (est.train_iterations, est.val_iterations) == (11 * 15 * 250_000, 11 * 15 * 50_000)
    assert est.gpu_hours == pytest.approx((41_250_000 + 8_250_000) * 0.065 / 3600)  # 893.75 h


def _scaled_down(tmp_path: Path) -> Path:
    """The protocol file itself, budget scaled down (extends it: every other key is the protocol's)."""
    path = tmp_path / "protocol_tiny.yaml"
    path.write_text(yaml.safe_dump({"extends": str(PROTOCOL), "study_dir": str(tmp_path / "study"),
                                    "budget": {"epochs": 1, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1},
                                    "gpu_seconds_per_iteration": 0.5, "gpu_seconds_per_run": 10}))
    return path


def test_protocol_dry_run_lists_every_run_teachers_first(tmp_path, capsys):
    config = load_study_config(_scaled_down(tmp_path))
    status = run_study(config, dry_run=True, echo=False)
    labels = list(status["runs"])
    assert status["missing_trainers"] == [] and len(labels) == 10 * 5 * 3
    assert labels[:5] == [f"{STOCK} fold {f} seed 0" for f in range(5)]  # the transfer teacher's 5-fold CV first
    expected = {f"{t.name} fold {f} seed {s}" for t in config.trainers for f in range(5) for s in config.seeds}
    assert set(labels) == expected
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    assert len(printed) == 150 and all("nnUNetv2_train 501 3d_fullres" in line for line in printed)
    students = [i for i, v in enumerate(status["runs"].values()) if "after teacher" in v]
    assert len(students) == 2 * 5 * 3 and min(students) > 4


def test_protocol_slurm_prints_job_count_and_gpu_hours(tmp_path, capsys, monkeypatch):
    cfg_file = _scaled_down(tmp_path)
    config = load_study_config(cfg_file)
    monkeypatch.chdir(tmp_path)
    submit = write_slurm_scripts(config, cfg_file, ["--partition", "gpu", "--gres", "gpu:1"], echo=False)
    out = capsys.readouterr().out
    # by hand: 150 runs; training 15 x (9 x 2 + 1 x 4) = 330, validation 15 x (9 x 1 + 1 x 2) = 165 iterations;
    # (330 + 165) x 0.5 s + 150 x 10 s = 1747.5 s = 0.485 h
    assert "150 array jobs" in out and "GPU-hour estimate: 0.5 h" in out and "(330 training + 165 per-epoch" in out
    assert gpu_estimate(config, plan_runs(config, n_splits=5)).gpu_hours == pytest.approx(1747.5 / 3600)
    roles = runs_by_role(config, plan_runs(config, n_splits=5))
    assert roles["teacher"] == [0, 1, 2, 3, 4] and len(roles["student"]) == 30
    assert "--array 0-4" in submit.read_text()


def test_gpu_estimate_hand_computed_on_a_tiny_study(tmp_path):
    raw = {"dataset": {"id": 990, "name": "Tiny", "n_splits": 2}, "baseline": "stock", "folds": [0],
           "seeds": [0, 1], "budget": {"epochs": 2, "iterations_per_epoch": 5, "val_iterations_per_epoch": 1},
           "gpu_seconds_per_iteration": 36, "gpu_seconds_per_run": 60,
           "trainers": [{"name": "stock", "trainer": "nnUNetTrainerClipsBase"},
                        {"name": "stock2x", "trainer": "nnUNetTrainerClipsBase", "budget_factor": 2},
                        {"name": "tt", "trainer": "nnUNetTrainerCLTransferTeacher", "teacher": "stock"}]}
    config = parse_study_config(raw, study_dir=tmp_path)
    runs = plan_runs(config, n_splits=2)
    # stock: folds 0 and 1 at seed 0 (fold 1 only as the teacher) + fold 0 seed 1; stock2x and tt: fold 0, 2 seeds
    assert len(runs) == 7
    est = gpu_estimate(config, runs)
    assert est.train_iterations == 3 * 10 + 2 * 20 + 2 * 10 == 90
    assert est.val_iterations == 3 * 2 + 2 * 4 + 2 * 2 == 18
    assert est.gpu_hours == pytest.approx((108 * 36 + 7 * 60) / 3600)  # 4308 s = 1.197 h
    assert math.isclose(parse_study_config({**raw, "gpu_seconds_per_run": 0}, study_dir=tmp_path)
                        .gpu_seconds_per_run, 0.0)
    assert parse_study_config({k: v for k, v in raw.items() if not k.startswith("gpu_")},
                              study_dir=tmp_path).gpu_seconds_per_iteration == 0.065


@pytest.mark.parametrize("key,value", [("gpu_seconds_per_iteration", 0), ("gpu_seconds_per_iteration", "fast"),
                                       ("gpu_seconds_per_run", -1), ("gpu_seconds_per_iteration", True)])
def test_bad_gpu_seconds_is_one_clear_error(tmp_path, key, value):
    raw = yaml.safe_load(PROTOCOL.read_text())
    with pytest.raises(StudyConfigError, match=key):
        parse_study_config({**raw, key: value}, study_dir=tmp_path)


def test_badly_segmented_list_becomes_a_stratum(tmp_path):
    decisions = tmp_path / "audit_decisions.csv"
    decisions.write_text("case_id,decision,error_kind\nDLBCL_0007,confirmed_error,missed_lesion\n"
                         "DLBCL_0002,false_alarm,boundary\nDLBCL_0003,confirmed_error,extra_region\n")
    raw = {**yaml.safe_load(PROTOCOL.read_text()), "badly_segmented": "audit_decisions.csv"}
    config = parse_study_config(raw, base_dir=tmp_path, study_dir=tmp_path / "study")
    assert config.badly_segmented == decisions.resolve()
    gt_dir, subsets, _ = reference_masks(config)
    assert subsets == {BADLY_SEGMENTED: ["DLBCL_0003", "DLBCL_0007"]}
    assert gt_dir.name == "gt_segmentations"
    without = parse_study_config(yaml.safe_load(PROTOCOL.read_text()), study_dir=tmp_path / "study")
    assert reference_masks(without)[1] == {}


def test_missing_badly_segmented_file_is_one_line(tmp_path):
    raw = {**yaml.safe_load(PROTOCOL.read_text()), "badly_segmented": "nowhere.csv"}
    config = parse_study_config(raw, base_dir=tmp_path, study_dir=tmp_path / "study")
    with pytest.raises(ClipsError) as err:
        reference_masks(config)
    assert "nowhere.csv" in str(err.value) and "\n" not in str(err.value)


def test_imported_model_as_external_transfer_teacher(tmp_path):
    """The protocol's transfer teacher taken from an imported model (TMTV-Net's released one): an arm with
    ``teacher_csv`` (what ``clips-nnunet score MODEL --predict`` writes) needs no trained teacher, runs as an
    independent array task, gets its fold's training cases only, and the CSV ranks the hardest third."""
    from clips_nnunet.study.report import _difficulty_arguments
    from clips_nnunet.study.report_sections import budget_lines
    from clips_nnunet.study.runner import READY, start_state

    (tmp_path / "difficulty_tmtvnet.csv").write_text("case_id,difficulty\nDLBCL_0001,0.9\nDLBCL_0002,0.1\n"
                                                     "DLBCL_0003,0.5\nDLBCL_0004,0.7\n")
    raw = yaml.safe_load(PROTOCOL.read_text())
    raw["trainers"] = [raw["trainers"][0],
                       {"name": "TransferTMTVNet", "trainer": "nnUNetTrainerCLTransferTeacher",
                        "teacher_csv": "difficulty_tmtvnet.csv", "control": "TransferTMTVNetRandom"},
                       {"name": "TransferTMTVNetRandom", "trainer": "nnUNetTrainerCLTransferTeacherRandom",
                        "teacher_csv": "difficulty_tmtvnet.csv"}]
    config = parse_study_config(raw, base_dir=tmp_path, study_dir=tmp_path / "study")
    assert config.trainer("TransferTMTVNet").teacher_csv == (tmp_path / "difficulty_tmtvnet.csv").resolve()
    runs = plan_runs(config, n_splits=5)
    assert len(runs) == 3 * 5 * 3 and config.teachers == ()  # no teacher cross-validation to train
    assert len(runs_by_role(config, runs)["independent"]) == 45
    splits = tmp_path / "study" / "nnUNet_preprocessed" / "Dataset501_DLBCL" / "splits_final.json"
    splits.parent.mkdir(parents=True)
    splits.write_text('[{"train": ["DLBCL_0001", "DLBCL_0003"], "val": ["DLBCL_0002", "DLBCL_0004"]}]')
    state, csv = start_state(config, runs[5], n_splits=1, echo=False)  # TransferTMTVNet fold 0 seed 0
    assert runs[5].trainer.name == "TransferTMTVNet" and state == READY
    assert csv.parent == config.study_dir and csv.read_text() == "case_id,difficulty\nDLBCL_0001,0.9\nDLBCL_0003,0.5\n"
    assert _difficulty_arguments(config) == {"difficulty_csv": config.trainer("TransferTMTVNet").teacher_csv}
    text = "\n".join(budget_lines(config))
    assert "| TransferTMTVNet | 250,000 | 0 | 0 | 250,000 | equal |" in text and "external model" in text
    (tmp_path / "difficulty_tmtvnet.csv").unlink()
    with pytest.raises(ClipsError, match="teacher_csv .*difficulty_tmtvnet.csv of arm TransferTMTVNet"):
        start_state(config, runs[5], n_splits=1, echo=False)
    raw["trainers"][1]["teacher"] = "nnUNetTrainer"
    with pytest.raises(StudyConfigError, match="give one"):
        parse_study_config(raw, base_dir=tmp_path, study_dir=tmp_path / "study")


def test_listed_strata_hold_only_out_of_fold_patients(tmp_path):
    """A badly segmented (or mislabelled) patient that the study's folds never predict out of fold is not counted in
    the stratum's n; a stratum left empty is dropped."""
    from clips_nnunet.study.report import out_of_fold_strata

    config = parse_study_config({**yaml.safe_load(PROTOCOL.read_text()), "folds": [0, 1]},
                                study_dir=tmp_path / "study")
    listed = {BADLY_SEGMENTED: ["DLBCL_0003", "DLBCL_0007", "DLBCL_0009"], "other": ["DLBCL_0009"]}
    assert out_of_fold_strata(config, listed) == listed  # no split file yet: unchanged
    splits = tmp_path / "study" / "nnUNet_preprocessed" / "Dataset501_DLBCL" / "splits_final.json"
    splits.parent.mkdir(parents=True)
    splits.write_text('[{"train": [], "val": ["DLBCL_0003"]}, {"train": [], "val": ["DLBCL_0007"]},'
                      ' {"train": [], "val": ["DLBCL_0009"]}]')
    assert out_of_fold_strata(config, listed) == {BADLY_SEGMENTED: ["DLBCL_0003", "DLBCL_0007"]}
