"""End to end through nnU-Net's own CLI on the tiny dataset: train a short nnUNetTrainerCLSelfPaced subclass
defined in a test ext folder, crash after epoch 1, continue with --c (curriculum state restored, not restarted),
predict imagesTs with -tr, train a second fold and run nnUNetv2_find_best_configuration; bad pacing fails early."""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from clips_nnunet.curriculum.pacing import num_active_cases, pacing_fraction
from clips_nnunet.trainers.curriculum import read_history
from nnunet_helpers import nnunet_environment, run_cli

pytestmark = pytest.mark.integration

TRAINER = "nnUNetTrainerCLSelfPacedTiny"
EXT_MODULE = textwrap.dedent('''
    import os
    import torch
    from clips_nnunet.trainers.self_paced_trainers import nnUNetTrainerCLSelfPaced


    class nnUNetTrainerCLSelfPacedTiny(nnUNetTrainerCLSelfPaced):
        """3 epochs x 4 iterations (CLIPS_TEST_NUM_EPOCHS, CLIPS_TEST_ITERATIONS), 1 warm-up epoch, linear pacing
        from 30 %; may crash on request."""
        warmup_epochs = 1
        pacing = "linear"
        pacing_a = 1.0
        pacing_b = 0.3
        exploration_epsilon = 0.1
        min_cases = 2

        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = int(os.environ.get("CLIPS_TEST_NUM_EPOCHS", "3"))
            self.num_iterations_per_epoch = int(os.environ.get("CLIPS_TEST_ITERATIONS", "4"))
            self.num_val_iterations_per_epoch = 1
            self.save_every = 1

        def perform_actual_validation(self, save_probabilities=False):
            self.inference_allowed_mirroring_axes = None   # 1 instead of 8 forward passes per case (not under test)
            super().perform_actual_validation(save_probabilities)

        def on_epoch_end(self):
            super().on_epoch_end()
            crash = os.environ.get("CLIPS_TEST_CRASH_AFTER_EPOCH")
            if crash is not None and self.current_epoch == int(crash) + 1:
                os._exit(17)   # a killed job: no clean-up, checkpoint_latest.pth is what is left


    class nnUNetTrainerCLSelfPacedBadPacing(nnUNetTrainerCLSelfPacedTiny):
        pacing_a = 1.5


    class nnUNetTrainerCLSelfPacedMixtureTiny(nnUNetTrainerCLSelfPacedTiny):
        spl_scheme = "mixture"
        spl_soft_mechanism = "loss"        # weight the loss (normalised), sample the admitted cases uniformly
''')


@pytest.fixture(scope="module")
def cl_env(tiny_preprocessed, tmp_path_factory):
    base, env, dataset_id = tiny_preprocessed
    ext = tmp_path_factory.mktemp("user_ext")
    (ext / "clips_test_trainers.py").write_text(EXT_MODULE)
    env = nnunet_environment(base, extra_ext_folders=[ext])
    env["CLIPS_SEED"] = "0"
    return base, env, dataset_id


def _train(env, dataset_id, fold, *extra, check=True, crash_after=None, epochs=3, iterations=2):
    env = dict(env, CLIPS_TEST_NUM_EPOCHS=str(epochs), CLIPS_TEST_ITERATIONS=str(iterations))
    if crash_after is not None:
        env["CLIPS_TEST_CRASH_AFTER_EPOCH"] = str(crash_after)
    return run_cli(["nnUNetv2_train", str(dataset_id), "3d_fullres", str(fold), "-tr", TRAINER, "-device", "cpu",
                    *extra], env, timeout=900, check=check)


def _extras(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["clips_extras"]["curriculum"]


def test_train_crash_continue_predict_and_find_best(cl_env):
    base, env, dataset_id = cl_env
    fold0 = base / "nnUNet_results" / f"Dataset{dataset_id:03d}_ClipsTiny" / f"{TRAINER}__nnUNetPlans__3d_fullres" \
        / "fold_0"

    # 1) train and "crash" after epoch 1 (checkpoint_latest.pth written every epoch)
    proc = _train(env, dataset_id, 0, check=False, crash_after=1)
    assert proc.returncode == 17, proc.stdout[-3000:] + proc.stderr[-3000:]
    latest = _extras(fold0 / "checkpoint_latest.pth")
    assert latest["epoch"] == 1
    n_cases = len(latest["state"]["case_ids"])
    assert sum(latest["state"]["visits"]) == 2 * 2 * 2            # 2 epochs x 2 iterations x batch 2
    before = read_history(fold0)                                  # append-only history, float32 rows
    assert before.epochs.tolist() == [0, 1]
    assert not (fold0 / "curriculum.json").exists()

    # epoch 0 is warm-up (uniform); epoch 1 admits the pace(0) N lowest-EMA cases, others get epsilon / N
    e0, e1 = before.records
    assert e0["warmup"] and np.allclose(before.probabilities[0], 1.0 / n_cases)
    n_active = num_active_cases(pacing_fraction("linear", 0.0, 1.0, 0.3), n_cases, 0.3, 2)
    p1, d1 = before.probabilities[1], before.estimates[1]
    admitted = p1 > 0.1 / n_cases * (1 + 1e-5)
    assert admitted.sum() == n_active == e1["extra"]["n_active"]
    assert d1[admitted].max() <= d1[~admitted].min()               # the easiest (lowest EMA loss) are admitted
    np.testing.assert_allclose(p1[~admitted], 0.1 / n_cases, rtol=1e-6)
    np.testing.assert_allclose(p1[admitted], 0.9 / n_active + 0.1 / n_cases, rtol=1e-6)
    assert e1["active_fraction"] == pytest.approx(n_active / n_cases)
    assert e1["nonfinite_losses"] == 0 and e1["zero_weight_batches"] == 0 and e1["n_losses"] == 2 * 2
    assert e0["cl_mean_loss_weight"] == e1["cl_mean_loss_weight"] == 1.0      # hard SPL only samples

    # 2) continue: state restored (visits keep counting), the history keeps epochs 0-1 unchanged
    proc = _train(env, dataset_id, 0, "--c")
    final = _extras(fold0 / "checkpoint_final.pth")
    assert final["epoch"] == 2
    assert sum(final["state"]["visits"]) == 3 * 2 * 2              # a restart would give 4
    after = read_history(fold0)
    assert after.epochs.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(after.probabilities[:2], before.probabilities)
    assert after.records[:2] == before.records
    assert after.state["visits"] == final["state"]["visits"]
    logs = "".join(p.read_text() for p in fold0.glob("training_log_*.txt"))
    assert "curriculum: state restored from the checkpoint (epoch 1" in logs
    assert "sampling entropy" in logs and "lag" in logs
    config = json.loads((fold0 / "curriculum_config.json").read_text())
    assert config["scheduler"]["pacing"] == "linear" and config["scheduler"]["pacing_b"] == 0.3
    assert config["warmup_epochs"] == 1 and config["seed"] == 0 and config["n_cases"] == n_cases
    assert (fold0 / "curriculum.png").stat().st_size > 1000 and (fold0 / "progress.png").is_file()
    logging = torch.load(fold0 / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
    assert len(logging["cl_active_fraction"]) == len(logging["train_losses"]) == 3
    assert logging["cl_active_fraction"][0] == 1.0 and math.isnan(logging["cl_threshold"][0])
    assert logging["cl_sampling_entropy"][0] == pytest.approx(math.log(n_cases))
    assert (fold0 / "validation" / "summary.json").is_file()

    # 3) predict imagesTs with the trainer name (class found again from the checkpoint's trainer name)
    out = base / "pred_cl"
    run_cli(["nnUNetv2_predict", "-i", str(Path(env["nnUNet_raw"]) / f"Dataset{dataset_id:03d}_ClipsTiny" /
                                        "imagesTs"), "-o", str(out), "-d", str(dataset_id), "-c", "3d_fullres",
             "-f", "0", "-tr", TRAINER, "-chk", "checkpoint_final.pth", "-device", "cpu", "--disable_tta",
             "-npp", "1", "-nps", "1"], env, timeout=600)
    assert len(list(out.glob("*.nii.gz"))) == 2

    # 4) second fold, then nnU-Net's find_best_configuration over folds 0 and 1
    _train(env, dataset_id, 1, epochs=2)                           # warmup_epochs 1 < num_epochs
    run_cli(["nnUNetv2_find_best_configuration", str(dataset_id), "-c", "3d_fullres", "-tr", TRAINER,
             "-f", "0", "1", "--disable_ensembling", "-np", "1"], env, timeout=600)
    results = base / "nnUNet_results" / f"Dataset{dataset_id:03d}_ClipsTiny"
    assert (results / "inference_information.json").is_file()


def test_bad_pacing_fails_at_trainer_start(cl_env):
    base, env, dataset_id = cl_env
    proc = run_cli(["nnUNetv2_train", str(dataset_id), "3d_fullres", "0", "-tr", "nnUNetTrainerCLSelfPacedBadPacing",
                    "-device", "cpu"], env, timeout=600, check=False)
    assert proc.returncode != 0
    assert "pacing_a must be in (0, 1], got 1.5" in proc.stdout + proc.stderr


def test_soft_mixture_trainer_with_two_da_workers(cl_env):
    """Soft SPL weighting the loss (spl_soft_mechanism "loss", normalised weights) in a real nnU-Net run with 2
    augmentation workers."""
    base, env, dataset_id = cl_env
    env = dict(env, nnUNet_n_proc_DA="2", CLIPS_TEST_NUM_EPOCHS="2")
    trainer = "nnUNetTrainerCLSelfPacedMixtureTiny"
    run_cli(["nnUNetv2_train", str(dataset_id), "3d_fullres", "2", "-tr", trainer, "-device", "cpu"], env,
            timeout=900)
    fold = base / "nnUNet_results" / f"Dataset{dataset_id:03d}_ClipsTiny" / f"{trainer}__nnUNetPlans__3d_fullres" \
        / "fold_2"
    cur = read_history(fold)
    e1 = cur.records[1]
    assert not e1["warmup"] and e1["extra"]["scheme"] == "mixture"
    p = cur.probabilities[1]
    assert abs(p.sum() - 1) < 1e-6 and p.max() > p.min()          # not uniform after warm-up
    assert 0 <= e1["lag_batches"] <= 4                              # measured; at most the epoch's 4 batches
    assert e1["n_losses"] == 4 * 2
    assert cur.records[0]["cl_mean_loss_weight"] == 1.0                  # warm-up: nnU-Net's unweighted loss
    # weighted and normalised by the running mean: the first batch exactly 1, the epoch's 4 batches close to it
    assert 0.75 < e1["cl_mean_loss_weight"] < 1.25
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert all(np.isfinite(ckpt["logging"]["train_losses"]))
