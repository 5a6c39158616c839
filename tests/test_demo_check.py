"""The demo checks its own result (issue 27): a model that predicts nothing ends ``clips-nnunet demo`` with exit
code 1 and a plain message with the likely cause; the per-epoch progress lines read from nnU-Net's output.

Values are hand-computed: the EMA follows nnU-Net's ``ema = 0.9 * ema + 0.1 * pseudo Dice``."""
from __future__ import annotations

import json
import sys

import pytest

from clips_nnunet.demo.check import DICE_THRESHOLD, check_model, summary_mean
from clips_nnunet.demo.progress import (EpochRecord, TrainingProgress, parse_pseudo_dice, read_training_log,
                                        run_training)


def nnunet_epoch(epoch: int, dice: str, seconds: float) -> list:
    """The lines ``nnUNetv2_train`` prints for one epoch (2.8.1, numpy 2)."""
    stamp = "2026-12-07 13:20:52.632795: "
    return [f"{stamp}\n", f"{stamp}Epoch {epoch}\n", f"{stamp}Current learning rate: 0.00982\n",
            f"{stamp}train_loss 0.1823\n", f"{stamp}val_loss 0.1544\n", f"{stamp}Pseudo dice [{dice}]\n",
            f"{stamp}Epoch time: {seconds} s\n"]


def test_parse_pseudo_dice_forms():
    assert parse_pseudo_dice("np.float32(0.4123)") == [0.4123]
    assert parse_pseudo_dice("np.float32(0.5), np.float64(0.25)") == [0.5, 0.25]
    assert parse_pseudo_dice("0.0, nan") == [0.0, None]  # nan: no lesion on the validation patches


def test_progress_line_per_epoch_with_ema_and_time_left():
    progress = TrainingProgress(total_epochs=10)
    lines = [progress.feed(t) for t in nnunet_epoch(0, "np.float32(0.2)", 20.0) + nnunet_epoch(1, "np.float32(0.6)", 10.0)]
    printed = [x for x in lines if x]
    assert len(printed) == 2  # one line per epoch, nothing for the other nnU-Net lines
    # epoch 1: EMA starts at 0.2; 9 epochs left x 20 s = 3 min
    assert printed[0] == "    epoch  1/10  pseudo Dice 0.200 (EMA 0.200)  20 s per epoch  about 3 min left"
    # epoch 2: EMA 0.9 * 0.2 + 0.1 * 0.6 = 0.24; 8 epochs left x mean(20, 10) s = 120 s
    assert printed[1] == "    epoch  2/10  pseudo Dice 0.600 (EMA 0.240)  10 s per epoch  about 2 min left"
    last = [progress.feed(t) for t in nnunet_epoch(9, "nan", 10.0)]
    assert last[-1].endswith("pseudo Dice n/a (no lesion on the validation patches) (EMA 0.240)  10 s per epoch  "
                             "last epoch done")
    assert "nan" not in " ".join(x for x in printed + last if x)


def test_run_training_streams_a_real_process(tmp_path, capsys):
    """A real subprocess that prints nnU-Net's epoch lines: the log keeps everything, the terminal one line per
    epoch; a failing run shows the last lines of its log and returns its exit code."""
    script = "import sys\n" + "".join(f"print({t!r}, end='')\n" for t in nnunet_epoch(0, "np.float32(0.0)", 3.0)) \
        + "print('Traceback: boom')\nsys.exit(3)\n"
    log = tmp_path / "logs" / "train.log"
    assert run_training([sys.executable, "-c", script], {"PATH": "/usr/bin"}, log, total_epochs=2) == 3
    out = capsys.readouterr().out
    assert "epoch 1/2  pseudo Dice 0.000 (EMA 0.000)  3 s per epoch  under 1 min left" in out
    progress_part, _, tail = out.partition("last lines of the training log:")
    assert "Current learning rate" not in progress_part  # nnU-Net's other lines go to the log only
    assert "Traceback: boom" in tail  # the tail of a failed run
    assert "Current learning rate: 0.00982" in log.read_text()
    assert [e.pseudo_dice for e in read_training_log(log, 2).history()] == [0.0]


def zero_epochs(n: int):
    return [EpochRecord(i, 0.0, 0.0, 15.0) for i in range(n)]


def test_check_useful_model():
    result = check_model("T", {"metrics": {"dice": {"n": 2, "mean": 0.62}}}, zero_epochs(3), 2)
    assert result.useful and result.dice == 0.62 and "a useful model" in result.message
    assert check_model("T", {"metrics": {"dice": {"mean": DICE_THRESHOLD}}}, [], 2).useful  # the threshold passes


def test_check_model_that_predicts_nothing():
    """Dice 0 on the held-out patients and pseudo Dice 0 in every epoch: the all-background start, said plainly."""
    summary = {"metrics": {"dice": {"n": 2, "mean": 0.0}, "tmtv_pred_ml": {"mean": 0.0}}}
    result = check_model("nnUNetTrainerCLSelfPacedDemo", summary, zero_epochs(19), 2)
    assert not result.useful and result.dice == 0.0
    assert "NOT A USEFUL MODEL: held-out mean Dice 0.000 is below the demo's threshold 0.5" in result.message
    assert "training never left the all-background start: pseudo Dice 0.0 in every one of the 19 epochs" \
        in result.message
    assert "predicted no lesion in any held-out patient" in result.message


def test_check_causes_too_little_training_and_no_transfer():
    rising = [EpochRecord(0, 0.0, 0.0, 15.0), EpochRecord(1, 0.0, 0.0, 15.0), EpochRecord(2, 0.4, 0.04, 15.0)]
    low = check_model("T", {"metrics": {"dice": {"mean": 0.1}}}, rising, 2)
    assert not low.useful and "too little training: the pseudo Dice first rose above 0 in epoch 3 of 3 and ended " \
                                  "at EMA 0.04" in low.message
    high = [EpochRecord(0, 0.8, 0.8, 15.0)]
    poor = check_model("T", {"metrics": {"dice": {"mean": 0.3}}}, high, 2)
    assert "does not carry over to the held-out patients" in poor.message and "EMA 0.80" in poor.message
    missing = check_model("T", None, high, 2)
    assert not missing.useful and "no held-out Dice could be computed" in missing.message


def test_summary_mean_skips_non_finite():
    assert summary_mean({"metrics": {"dice": {"mean": float("nan")}}}, "dice") is None
    assert summary_mean({"a": [{"dice": {"mean": 0.5}}]}, "dice") == 0.5


@pytest.mark.parametrize("dice, code", [(0.0, 1), (0.7, 0)])
def test_exit_code_of_clips_nnunet_demo(tmp_path, monkeypatch, capsys, dice, code):
    """Through ``clips-nnunet demo`` (the CLI's main): every step runs (fake commands: nnU-Net's epoch lines with
    pseudo Dice 0, an evaluation with the given held-out Dice); a useless model ends with exit code 1, the plain
    message and no "finished"; a useful one with 0 and "finished"."""
    import clips_nnunet.demo.pipeline as pipeline
    from clips_nnunet.cli import main

    workdir = tmp_path / "w"

    def fake_streamed(cmd, env, log):
        if cmd[1] == "evaluate":
            out = workdir / "evaluation" / pipeline.DEMO_TRAINER
            out.mkdir(parents=True, exist_ok=True)
            (out / "summary.json").write_text(json.dumps(
                {"metrics": {"dice": {"n": 2, "mean": dice}, "tmtv_pred_ml": {"mean": 0.0 if dice == 0 else 5.0}}}))
        return 0

    def fake_training(cmd, env, log, total_epochs, variables=()):
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(t for e in range(total_epochs) for t in nnunet_epoch(e, "np.float32(0.0)", 15.0)))
        return 0

    monkeypatch.setattr(pipeline, "_run_streamed", fake_streamed)
    monkeypatch.setattr(pipeline, "run_training", fake_training)
    monkeypatch.setattr(pipeline, "pair_with_ground_truth", lambda *a, **k: None)
    monkeypatch.setattr(pipeline, "add_demo_configuration", lambda *a, **k: None)
    assert main(["demo", "--workdir", str(workdir), "--device", "cpu", "--epochs", "4", "--seed", "3"]) == code
    captured = capsys.readouterr()
    assert "seed 3" in captured.out and "CLIPS_SEED=3" in captured.out
    if code:
        assert "clips-nnunet demo finished" not in captured.out + captured.err
        assert "FAILED its self-check" in captured.err
        assert "training never left the all-background start: pseudo Dice 0.0 in every one of the 4 epochs" \
            in captured.err
    else:
        assert "clips-nnunet demo finished." in captured.out and "0.700 >= 0.5" in captured.out
    assert "nan" not in (captured.out + captured.err).lower().replace("nnunet", "")
    assert (workdir / "demo_summary.md").is_file()
