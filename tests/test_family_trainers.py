"""Every trainer of the curriculum family end to end on the tiny dataset (real nnU-Net, CPU).

To keep the CPU cost small, the trainers are trained in ONE Python process through nnU-Net's own Python entry
(``nnunetv2.run.run_training.run_training``, what ``nnUNetv2_train`` calls), each as a short subclass generated in a
test ext folder (found by nnU-Net's own trainer lookup): 3 epochs x 2 iterations, interrupted after epoch 2 and
continued with ``continue_training=True`` (what ``--c`` does). The sampled keys of every batch are recorded and must
have positive probability in that epoch's curriculum (exploration off). The smoothing trainer also runs through the
``nnUNetv2_train`` CLI (with the final validation) and ``nnUNetv2_predict``; the engine's own test covers the
``nnUNetv2_train --c`` command line.
"""
from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from clips_nnunet.io_utils import atomic_write_text
from clips_nnunet.trainers.family import FAMILY_TRAINERS
from clips_nnunet.trainers.curriculum import read_history
from nnunet_helpers import nnunet_environment, run_cli

pytestmark = pytest.mark.integration

EXT_MODULE = textwrap.dedent('''
    """Short test versions of the curriculum family: nnUNetTrainerCL<Method>Short."""
    import json
    import os

    import torch

    from clips_nnunet.trainers import family


    class FamilyTestInterrupt(RuntimeError):
        pass


    class _Short:
        warmup_epochs = 1
        exploration_epsilon = 0.0
        pacing = "linear"
        pacing_a = 1.0
        pacing_b = 0.3
        min_cases = 2
        dih_shrink = 0.5
        baby_steps_buckets = 3
        bandit_window = 2
        smoothing_every = 1
        smoothing_decay = 0.5
        smoothing_sigma_min = 0.2

        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            # CPU budget: the planned PlainConvUNet with 8x fewer features per stage (also in the saved plans.json,
            # so nnUNetv2_predict rebuilds the same network)
            small = None
            for cfg in (self.configuration_manager.configuration,
                        self.plans_manager.plans["configurations"][configuration]):
                kwargs = cfg["architecture"]["arch_kwargs"]
                small = small or [max(2, int(f) // 8) for f in kwargs["features_per_stage"]]
                kwargs["features_per_stage"] = small
            self.num_epochs = 3
            self.num_iterations_per_epoch = 2
            self.num_val_iterations_per_epoch = 1
            self.save_every = 1

        def train_step(self, batch):
            with open(os.path.join(self.output_folder, "sampled_keys.jsonl"), "a") as f:
                f.write(json.dumps({"epoch": int(self.current_epoch), "keys": [str(k) for k in batch["keys"]]}))
                f.write("\\n")
            return super().train_step(batch)

        def on_epoch_end(self):
            super().on_epoch_end()
            stop = os.environ.get("FAMILY_TEST_STOP_AFTER_EPOCH")
            if stop is not None and self.current_epoch == int(stop) + 1:
                raise FamilyTestInterrupt(f"stopped after epoch {stop}")

        def perform_actual_validation(self, save_probabilities=False):
            if os.environ.get("FAMILY_TEST_SKIP_FINAL_VALIDATION"):
                return
            return super().perform_actual_validation(save_probabilities)


    for _name in family.FAMILY_TRAINERS:
        globals()[_name + "Short"] = type(_name + "Short", (_Short, getattr(family, _name)), {})
    nnUNetTrainerCLSmoothingShort.warmup_epochs = 0  # noqa: F821  (blur from epoch 0; nothing to measure)
''')

DRIVER = textwrap.dedent('''
    """Train each trainer named on the command line: run 1 stops after epoch 1, run 2 continues (--c)."""
    import os
    import sys
    import time
    import traceback

    import torch
    from nnunetv2.run.run_training import run_training
    from nnunetv2.training.logging.nnunet_logger import MetaLogger

    import clips_nnunet.trainers.curriculum as engine

    # CPU budget: no per-epoch matplotlib figures in this process (progress.png, curriculum.png take ~3 s per
    # epoch here); the CLI test checks them
    MetaLogger.plot_progress_png = lambda self, output_folder: None
    engine.plot_curriculum = lambda *args, **kwargs: None

    dataset, results = sys.argv[1], {}
    os.environ["FAMILY_TEST_SKIP_FINAL_VALIDATION"] = "1"
    for name in sys.argv[2:]:
        start = time.time()
        try:
            os.environ["FAMILY_TEST_STOP_AFTER_EPOCH"] = "1"
            try:
                run_training(dataset, "3d_fullres", 0, name, device=torch.device("cpu"))
                raise AssertionError("the first run was not interrupted")
            except RuntimeError as e:
                if type(e).__name__ != "FamilyTestInterrupt":
                    raise
            del os.environ["FAMILY_TEST_STOP_AFTER_EPOCH"]
            run_training(dataset, "3d_fullres", 0, name, continue_training=True, device=torch.device("cpu"))
            print(f"FAMILY_OK {name} {time.time() - start:.1f}s", flush=True)
        except BaseException:
            traceback.print_exc()
            print(f"FAMILY_FAIL {name}", flush=True)
''')


@pytest.fixture(scope="module")
def family_env(tiny_preprocessed, tmp_path_factory):
    base, env, dataset_id = tiny_preprocessed
    ext = tmp_path_factory.mktemp("family_ext")
    (ext / "clips_family_test_trainers.py").write_text(EXT_MODULE)
    (ext / "family_driver.py").write_text(DRIVER)
    env = nnunet_environment(base, extra_ext_folders=[ext])
    env["CLIPS_SEED"] = "0"
    # a teacher CSV for TransferTeacher: planted difficulty reversed in name only (hard = high index)
    raw = Path(env["nnUNet_raw"]) / f"Dataset{dataset_id:03d}_ClipsTiny"
    metadata = json.loads((raw / "case_metadata.json").read_text())
    lines = ["case_id,difficulty"] + [f"{c},{m['planted_difficulty']:.4f}" for c, m in sorted(metadata.items())
                                      if m["split"] == "Tr"]
    # atomic: the raw folder is shared with the other pytest-xdist worker (the same content every time)
    atomic_write_text(raw / "difficulty.csv", "\n".join(lines) + "\n")
    return base, env, dataset_id, ext


def _fold_dir(base: Path, dataset_id: int, trainer: str, fold: int = 0) -> Path:
    return base / "nnUNet_results" / f"Dataset{dataset_id:03d}_ClipsTiny" / f"{trainer}__nnUNetPlans__3d_fullres" \
        / f"fold_{fold}"


def _check_run(fold: Path, trainer: str, resumed: bool = True) -> dict:
    """Checks common to every trainer; returns the history as ``{case_ids, epochs: [record + probabilities], state}``
    read through the public reader :func:`read_history`."""
    history = read_history(fold)
    epochs = [{**record, "epoch": int(e), "probabilities": history.probabilities[i].tolist()}
              for i, (e, record) in enumerate(zip(history.epochs, history.records))]
    data = {"case_ids": history.case_ids, "epochs": epochs, "state": history.state}
    assert [r["epoch"] for r in epochs] == [0, 1, 2], trainer
    # the resumed run continued the state: visits count all 3 epochs (a restart would count only epoch 2)
    assert sum(data["state"]["visits"]) == sum(r["n_losses"] for r in epochs) == 3 * 2 * 2, trainer
    log = "".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))
    assert ("state restored from the checkpoint" in log) == resumed, trainer
    assert (fold / "curriculum_config.json").is_file()
    # every sampled key had positive probability in its epoch (exploration is off in the test subclasses)
    ids = data["case_ids"]
    for line in (fold / "sampled_keys.jsonl").read_text().splitlines():
        record = json.loads(line)
        p = dict(zip(ids, epochs[record["epoch"]]["probabilities"]))
        assert all(p[k] > 0 for k in record["keys"]), (trainer, record, p)
    return data


def test_every_family_trainer_trains_resumes_and_samples_its_plan(family_env):
    base, env, dataset_id, ext = family_env
    names = [n + "Short" for n in FAMILY_TRAINERS]
    proc = run_cli([sys.executable, str(ext / "family_driver.py"), str(dataset_id), *names], env, timeout=1500,
                   check=False)
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAMILY_FAIL")]
    assert proc.returncode == 0 and not failed, proc.stdout[-8000:] + proc.stderr[-8000:]
    ok = {line.split()[1] for line in proc.stdout.splitlines() if line.startswith("FAMILY_OK")}
    assert ok == set(names)
    runs = {n: _check_run(_fold_dir(base, dataset_id, n + "Short"), n) for n in FAMILY_TRAINERS}

    n = len(runs["nnUNetTrainerCLPredefined"]["case_ids"])
    # epoch 0 is the warm-up of the test subclasses (uniform); epoch 1 is the first planned epoch (progress 0)
    first = lambda name: np.asarray(runs[name]["epochs"][1]["probabilities"])  # noqa: E731
    k0 = int(np.ceil(0.3 * n - 1e-9))
    # Predefined (tmtv_ml: small TMTV = hard): epoch 1 admits the ceil(0.3 N) largest-TMTV cases
    raw = Path(env["nnUNet_raw"]) / f"Dataset{dataset_id:03d}_ClipsTiny"
    metadata = json.loads((raw / "case_metadata.json").read_text())
    ids = runs["nnUNetTrainerCLPredefined"]["case_ids"]
    tmtv = np.array([metadata[c]["tmtv_ml"] for c in ids])
    assert set(np.flatnonzero(first("nnUNetTrainerCLPredefined"))) == set(np.argsort(-tmtv, kind="stable")[:k0])
    assert set(np.flatnonzero(first("nnUNetTrainerCLPredefinedAnti"))) == set(np.argsort(tmtv, kind="stable")[:k0])
    assert (first("nnUNetTrainerCLPredefinedRandom") > 0).sum() == k0
    # TransferTeacher read difficulty.csv (planted difficulty): the easiest planted cases first
    planted = np.array([metadata[c]["planted_difficulty"] for c in ids])
    assert set(np.flatnonzero(first("nnUNetTrainerCLTransferTeacher"))) == set(np.argsort(planted)[:k0])
    # DIH: epoch 2 draws a subset of max(ceil(0.3 N), ceil(N 0.5)) cases, with hardness carried over the resume
    dih = runs["nnUNetTrainerCLDIH"]["epochs"][2]
    assert dih["extra"]["n_active"] == max(int(np.ceil(0.3 * n)), int(np.ceil(0.5 * n)))
    assert dih["extra"]["mean_hardness"] > 0
    # SuperLoss: tau = running mean loss after the warm-up epoch; sampling uniform
    assert runs["nnUNetTrainerCLSuperLoss"]["epochs"][1]["extra"]["tau"] is not None
    # Smoothing: sigma 1 in epoch 0, halved in epoch 1, zero from progress 0.5 (epoch 2 of 3)
    sigmas = [r["extra"]["sigma"] for r in runs["nnUNetTrainerCLSmoothing"]["epochs"]]
    assert sigmas == [1.0, 0.5, 0.0]
    # teacher-student: task probabilities recorded for its buckets
    assert len(runs["nnUNetTrainerCLTeacherStudent"]["epochs"][2]["extra"]["task_probabilities"]) == 3


def test_cli_train_predict_and_score(family_env, tmp_path, monkeypatch):
    """``nnUNetv2_train`` (with nnU-Net's final validation) and ``nnUNetv2_predict`` of the smoothing trainer, whose
    training network has blur hooks and whose rebuilt network must not; ``clips-nnunet score`` then reads its
    out-of-fold predictions, and :func:`score_with_model` runs the trained model on the training images."""
    from clips_nnunet.evaluation.scoring import score_with_model

    base, env, dataset_id, ext = family_env
    name = "nnUNetTrainerCLSmoothingShort"
    fold = _fold_dir(base, dataset_id, name, fold=1)  # fold 0 belongs to the in-process test
    run_cli(["nnUNetv2_train", str(dataset_id), "3d_fullres", "1", "-tr", name, "-device", "cpu"], env, timeout=900)
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()
    _check_run(fold, name, resumed=False)
    assert (fold / "curriculum.png").is_file() and (fold / "progress.png").is_file()
    log = "".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))
    assert re.search(r"feature blur sigma 1\s*$", log, re.M) and re.search(r"feature blur sigma 0\s*$", log, re.M)
    out = tmp_path / "pred"
    raw = Path(env["nnUNet_raw"]) / f"Dataset{dataset_id:03d}_ClipsTiny"
    run_cli(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(dataset_id), "-c",
             "3d_fullres", "-f", "1", "-tr", name, "-device", "cpu", "--disable_tta"], env, timeout=600)
    assert len(list(out.glob("*.nii.gz"))) == 2
    csv_path = tmp_path / "difficulty.csv"
    run_cli(["clips-nnunet", "score", str(fold.parent), "-o", str(csv_path)], env, timeout=300)
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("case_id,difficulty") and len(rows) == 1 + 3  # fold 1 validates 3 of 12 cases
    monkeypatch.setenv("nnUNet_extTrainer", env["nnUNet_extTrainer"])  # the predictor looks the trainer up by name
    cases = ["case_0000", "case_0005", "case_0011"]  # a few cases keep the CPU cost down
    table = score_with_model(fold.parent, raw / "imagesTr", raw / "labelsTr", folds=(1,), case_ids=cases)
    assert sorted(table) == cases and all(0.0 <= row["difficulty"] <= 1.0 for row in table.values())
    assert all(row["difficulty"] == pytest.approx(1.0 - row["dice"]) for row in table.values())
