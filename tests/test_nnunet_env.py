"""clips_nnunet.nnunet_env: nnU-Net's folders and nnUNet_extTrainer for a work folder, and the one logged runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clips_nnunet.nnunet_env import (EXT_TRAINER_DIR, TIMEOUT_EXIT_CODE, bin_path, environment_applied,
                                     ext_trainer_value, nnunet_environment, nnunet_folders, run_logged, shell_line,
                                     split_folders)


def test_ext_trainer_value_puts_the_shim_first_and_keeps_user_folders(tmp_path):
    assert ext_trainer_value() == str(EXT_TRAINER_DIR)
    assert EXT_TRAINER_DIR.name == "nnunet_ext" and (EXT_TRAINER_DIR / "clips_trainers.py").is_file()
    user = os.pathsep.join(["/a", str(EXT_TRAINER_DIR), "", "/b", "/a"])
    assert ext_trainer_value(user).split(os.pathsep) == [str(EXT_TRAINER_DIR), "/a", "/b"]
    assert split_folders(f"/x{os.pathsep}{os.pathsep} {os.pathsep}/y") == ["/x", "/y"]


def test_environment_for_a_work_folder(tmp_path):
    assert nnunet_folders(tmp_path) == {"nnUNet_raw": str(tmp_path / "nnUNet_raw"),
                                        "nnUNet_preprocessed": str(tmp_path / "nnUNet_preprocessed"),
                                        "nnUNet_results": str(tmp_path / "nnUNet_results")}
    base = {"PATH": "/bin", "nnUNet_extTrainer": "/user/ext", "nnUNet_compile": "true"}
    env = nnunet_environment(tmp_path, ext_folders=[tmp_path / "ext"], results=tmp_path / "seed_3",
                             base_env=base)
    assert env["nnUNet_results"] == str(tmp_path / "seed_3") and env["PATH"] == "/bin"
    assert env["nnUNet_extTrainer"].split(os.pathsep) == [str(EXT_TRAINER_DIR), str(tmp_path / "ext"), "/user/ext"]
    assert env["nnUNet_compile"] == "true"  # the user's choice is kept; default false
    assert nnunet_environment(tmp_path, base_env={})["nnUNet_compile"] == "false"
    alone = nnunet_environment(tmp_path, ext_folders=[tmp_path / "ext"], base_env=base, keep_user_ext=False)
    assert alone["nnUNet_extTrainer"].split(os.pathsep) == [str(EXT_TRAINER_DIR), str(tmp_path / "ext")]
    assert base["nnUNet_extTrainer"] == "/user/ext"  # the base environment is not modified


def test_bin_path_and_shell_line():
    assert bin_path("python") == str(Path(sys.executable).parent / "python")
    assert bin_path("no-such-tool-xyz") == "no-such-tool-xyz"
    env = {"nnUNet_raw": "/d/raw dir", "CLIPS_SEED": "2", "OTHER": "x"}
    assert shell_line(["nnUNetv2_train", "1", "3d_fullres", "0"], env) == \
        "nnUNet_raw='/d/raw dir' CLIPS_SEED=2 nnUNetv2_train 1 3d_fullres 0"
    assert shell_line(["echo", "a b"], env, variables=()) == "echo 'a b'"


def test_run_logged_logs_echoes_streams_and_returns_the_exit_code(tmp_path, capsys):
    log = tmp_path / "logs" / "x.log"
    code = "import sys; print('hello'); print('UserWarning: noise'); sys.exit(3)"
    assert run_logged(["python", "-c", code], {"PATH": os.environ["PATH"], "CLIPS_SEED": "1"}, log, echo=True,
                      stream=True, indent="  > ") == 3
    echo, *printed = capsys.readouterr().out.splitlines()
    assert echo == "$ CLIPS_SEED=1 python -c " + shell_line(["x", code], {}).split(" ", 1)[1]
    assert printed == ["  > hello"]  # the warning line goes to the log only
    text = log.read_text()
    assert text.startswith("\n$ CLIPS_SEED=1 python -c ") and "hello\n" in text and "UserWarning: noise" in text
    # not streamed: nothing printed, output appended to the same log
    assert run_logged(["python", "-c", "print('quiet')"], dict(os.environ), log) == 0
    assert capsys.readouterr().out == "" and log.read_text().endswith("quiet\n")


def test_run_logged_timeout_kills_and_says_so(tmp_path):
    log = tmp_path / "t.log"
    rc = run_logged(["python", "-c", "import time; time.sleep(30)"], dict(os.environ), log, timeout=1.0)
    assert rc == TIMEOUT_EXIT_CODE == 124
    assert "timed out after 1.0 s" in log.read_text()
    assert run_logged(["python", "-c", "pass"], dict(os.environ), log, timeout=30.0) == 0  # no false timeout


def test_layer_one_imports_no_heavy_package():
    code = ("import sys, clips_nnunet.nnunet_env; "
            "print(sorted(m for m in ('torch', 'nnunetv2', 'SimpleITK', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_environment_applied_restores_what_it_changed(monkeypatch):
    monkeypatch.setenv("CLIPS_TEST_KEPT", "before")
    monkeypatch.delenv("CLIPS_TEST_ADDED", raising=False)
    with pytest.raises(RuntimeError):
        with environment_applied({"CLIPS_TEST_KEPT": "inside", "CLIPS_TEST_ADDED": "new"}):
            assert os.environ["CLIPS_TEST_KEPT"] == "inside" and os.environ["CLIPS_TEST_ADDED"] == "new"
            raise RuntimeError("restored on errors too")
    assert os.environ["CLIPS_TEST_KEPT"] == "before" and "CLIPS_TEST_ADDED" not in os.environ


def test_one_owner_of_nnunet_folders(tmp_path):
    """nnUNet_* folders, the dataset of a results folder and its reference masks, one rule everywhere."""
    from clips_nnunet.errors import DatasetError
    from clips_nnunet.nnunet_env import (dataset_folder, nnunet_folder, reference_masks_for_results,
                                         results_dataset_name)

    env = {}
    with pytest.raises(DatasetError, match="nnUNet_raw is not set; export nnUNet_raw="):
        nnunet_folder("nnUNet_raw", env)
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    (raw / "Dataset501_Lymph" / "labelsTr").mkdir(parents=True)
    env = {"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre)}
    with pytest.raises(DatasetError, match="is not a folder"):
        nnunet_folder("nnUNet_preprocessed", env)
    assert nnunet_folder("nnUNet_preprocessed", env, must_exist=False) == pre  # an output root made on first write
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DatasetError, match="is not a folder"):
        nnunet_folder("nnUNet_preprocessed", {"nnUNet_preprocessed": str(tmp_path / "a_file")}, must_exist=False)
    assert dataset_folder("nnUNet_raw", 501, env) == raw / "Dataset501_Lymph"
    assert dataset_folder("nnUNet_raw", "Dataset501_Lymph", env) == raw / "Dataset501_Lymph"
    with pytest.raises(DatasetError, match="found none"):
        dataset_folder("nnUNet_raw", 502, env)
    results = tmp_path / "res" / "Dataset501_Lymph" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    results.mkdir(parents=True)
    assert results_dataset_name(results) == "Dataset501_Lymph"
    # no gt_segmentations: falls back to labelsTr (the audit did not, compare did: now one rule)
    assert reference_masks_for_results(results, env) == raw / "Dataset501_Lymph" / "labelsTr"
    (pre / "Dataset501_Lymph" / "gt_segmentations").mkdir(parents=True)
    assert reference_masks_for_results(results, env) == pre / "Dataset501_Lymph" / "gt_segmentations"
    with pytest.raises(DatasetError, match="pass the reference masks with --gt DIR"):
        reference_masks_for_results(tmp_path / "elsewhere", env)
