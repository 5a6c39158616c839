"""Zero-setup discovery: after ``pip install`` (regular or editable) a fresh shell with only nnU-Net's three folder
variables names any clips trainer with ``-tr`` (issue 21, point 1).

The installed ``clips_nnunet_autodiscovery.pth`` runs ``clips_nnunet.nnunet_ext.autodiscover()`` at every
interpreter start; these tests start fresh interpreters of this environment with a clean environment (``env -i``
style) so that nothing but the installation can provide ``nnUNet_extTrainer``.
"""
from __future__ import annotations

import os
import shutil
import signal
import site
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from clips_nnunet.nnunet_ext import OPT_OUT_VARIABLE, PTH_NAME, SHIM_DIR, autodiscover, autodiscovery_disabled
from nnunet_helpers import BIN, REPO_ROOT, run_cli

SHIM = str(Path(SHIM_DIR))


def clean_env(**extra: str) -> dict:
    """PATH and HOME only (plus ``extra``): what a fresh login shell of a new user has, without PYTHONPATH."""
    return {"PATH": f"{BIN}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": os.environ.get("HOME", "/tmp"), **extra}


def fresh_python(code: str, env: dict, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``code`` in a new interpreter of this environment, started outside the repository (so the checkout on
    sys.path cannot stand in for the installed package)."""
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------- the function the .pth line calls


def test_autodiscover_appends_shim_after_user_folders_once():
    env = {}
    assert autodiscover(env) is True and env["nnUNet_extTrainer"] == SHIM
    assert autodiscover(env) is False and env["nnUNet_extTrainer"] == SHIM          # idempotent
    env = {"nnUNet_extTrainer": os.pathsep.join(["/a", "", "/b"])}
    autodiscover(env)
    assert env["nnUNet_extTrainer"].split(os.pathsep) == ["/a", "/b", SHIM]          # user's folders first, kept
    env = {"nnUNet_extTrainer": os.pathsep.join([SHIM + os.sep + ".", "/a"])}       # listed already (other spelling)
    assert autodiscover(env) is False and env["nnUNet_extTrainer"] == os.pathsep.join([SHIM + os.sep + ".", "/a"])


@pytest.mark.parametrize("value, disabled", [("1", True), ("yes", True), ("0", False), ("", False), (" ", False)])
def test_opt_out_variable(value, disabled):
    env = {OPT_OUT_VARIABLE: value, "nnUNet_extTrainer": "/a"}
    assert autodiscovery_disabled(env) is disabled
    autodiscover(env)
    assert env["nnUNet_extTrainer"] == ("/a" if disabled else os.pathsep.join(["/a", SHIM]))


# ---------------------------------------------------------------- the installation


def test_environment_carries_the_pth_file():
    """The running environment was installed with the .pth (``pip install -e .`` / ``scripts/setup_venv.sh``)."""
    found = [Path(d) / PTH_NAME for d in site.getsitepackages() if (Path(d) / PTH_NAME).is_file()]
    assert found, (f"{PTH_NAME} is not in {site.getsitepackages()}: reinstall the package "
                   f"(pip install --no-deps -e {REPO_ROOT}) so that setup.py ships it")
    assert found[0].read_text() == (REPO_ROOT / PTH_NAME).read_text()


def test_fresh_interpreter_sets_keeps_and_opts_out(tmp_path):
    show = "import os; print(os.environ.get('nnUNet_extTrainer'))"
    assert fresh_python(show, clean_env(), tmp_path).stdout.strip() == SHIM
    user = os.pathsep.join([str(tmp_path / "mine"), "/other"])
    assert fresh_python(show, clean_env(nnUNet_extTrainer=user), tmp_path).stdout.strip() == user + os.pathsep + SHIM
    assert fresh_python(show, clean_env(**{OPT_OUT_VARIABLE: "1"}), tmp_path).stdout.strip() == "None"


def test_pth_left_behind_without_the_package_is_silent(tmp_path):
    """The .pth line does nothing (no "Error processing line 1" at every Python start) when the package cannot be
    imported, e.g. an editable install whose checkout was deleted; with the package it appends the shim."""
    (tmp_path / "site").mkdir()
    shutil.copy(REPO_ROOT / PTH_NAME, tmp_path / "site" / PTH_NAME)
    code = ("import os, site; os.environ.pop('nnUNet_extTrainer', None); site.addsitedir({!r}); "
            "print(os.environ.get('nnUNet_extTrainer'))").format(str(tmp_path / "site"))
    # -S: no site-packages, so clips_nnunet cannot be imported; -I: not from the working directory either
    without = subprocess.run([sys.executable, "-I", "-S", "-c", code], env=clean_env(), cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert without.returncode == 0 and without.stderr == "" and without.stdout.strip() == "None"
    with_package = fresh_python(code, clean_env(), tmp_path)
    assert with_package.returncode == 0 and with_package.stdout.strip() == SHIM


def test_env_command_reports_discovery_state(tmp_path):
    on = subprocess.run([str(BIN / "clips-nnunet"), "env"], env=clean_env(), cwd=tmp_path, capture_output=True,
                        text=True, timeout=300)
    assert on.returncode == 0 and f"export nnUNet_extTrainer={SHIM}" in on.stdout
    assert f"automatic discovery on ({Path(site.getsitepackages()[0]) / PTH_NAME}" in on.stdout
    assert "the clips trainers are found" in on.stdout
    off = subprocess.run([str(BIN / "clips-nnunet"), "env"], env=clean_env(**{OPT_OUT_VARIABLE: "1"}), cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert "automatic discovery is off" in off.stdout and "NOT found: run the export line" in off.stdout


CHILDREN = textwrap.dedent('''
    import multiprocessing as mp
    import sys

    def look_up(queue, name):
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        queue.put(recursive_find_trainer_class_by_name(name).__module__)

    if __name__ == "__main__":
        found = []
        for method in ("spawn", "fork"):   # DDP ranks (mp.spawn) and forked augmentation workers
            ctx = mp.get_context(method)
            queue = ctx.Queue()
            proc = ctx.Process(target=look_up, args=(queue, sys.argv[1]))
            proc.start()
            found.append(queue.get(timeout=600))
            proc.join(60)
            assert proc.exitcode == 0, method
        print("FOUND", *found)
''')


def test_spawned_and_forked_children_of_a_clean_shell_find_trainers(tmp_path):
    script = tmp_path / "children.py"
    script.write_text(CHILDREN)
    proc = subprocess.run([sys.executable, str(script), "nnUNetTrainerTMTVCLSelfPacedAnti"], env=clean_env(),
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("FOUND")[-1].split() == ["clips_nnunet.tmtv.cl_trainers"] * 2


def test_opt_out_leaves_nnunet_without_clips_trainers(tmp_path):
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
            "try:\n    f('nnUNetTrainerCLSelfPaced')\nexcept RuntimeError as e:\n    print('NOT FOUND', e)")
    proc = fresh_python(code, clean_env(**{OPT_OUT_VARIABLE: "1"}), tmp_path)
    assert "NOT FOUND Could not find requested nnunet trainer nnUNetTrainerCLSelfPaced" in proc.stdout, proc.stderr


# ---------------------------------------------------------------- nnU-Net's own commands from a clean shell

TINY = textwrap.dedent('''
    import torch
    from clips_nnunet.trainers.self_paced_trainers import nnUNetTrainerCLSelfPaced


    class nnUNetTrainerCLSelfPaced_DiscoveryTiny(nnUNetTrainerCLSelfPaced):
        warmup_epochs = 1

        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 2, 2, 1

        def perform_actual_validation(self, save_probabilities=False):
            self.inference_allowed_mirroring_axes = None   # 1 instead of 8 forward passes per case (not under test)
            super().perform_actual_validation(save_probabilities)
''')
TRAINER = "nnUNetTrainerCLSelfPaced"


def _train_until_first_epoch_starts(cmd, env, cwd, timeout=900) -> str:
    """Run ``nnUNetv2_train`` of the full-length trainer until it logs ``Epoch 0``, then stop it. By then the
    trainer was found by name and built, and its training and validation augmentation workers (separate processes)
    each delivered a batch: nnU-Net's ``get_dataloaders`` (and the clips base trainer's copy of it) draws one batch
    from each before training starts."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines, deadline = [], time.monotonic() + timeout
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.rstrip().endswith("Epoch 0") or time.monotonic() > deadline:
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)   # the trainer and its augmentation worker, started by this test
        proc.wait(60)
    return "".join(lines)


@pytest.mark.integration
@pytest.mark.timeout(3600)   # the shared fixture plans the tiny dataset first; 4 CLI calls after it
def test_nnunet_commands_in_a_clean_shell(tiny_preprocessed, tmp_path):
    """``nnUNetv2_train``, ``nnUNetv2_find_best_configuration`` and ``nnUNetv2_predict`` with ``-tr
    nnUNetTrainerCLSelfPaced`` in an environment holding PATH, HOME and nnU-Net's three folders only (plus
    single-process settings for the shared CPU: nnUNet_n_proc_DA=1 keeps one real augmentation worker,
    nnUNet_def_n_proc=1, OMP_NUM_THREADS=1, and PYTHONUNBUFFERED=1 to read the training log as it comes;
    none of them concerns discovery). The opt-out is checked by a unit test above."""
    base, env, dataset_id = tiny_preprocessed
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "discovery_tiny.py").write_text(TINY)
    tiny = "nnUNetTrainerCLSelfPaced_DiscoveryTiny"
    # a short model, trained the usual way, then filed under the real trainer's name for predict/find_best
    run_cli(["nnUNetv2_train", str(dataset_id), "3d_fullres", "0", "-tr", tiny, "-device", "cpu"],
            {**env, "nnUNet_extTrainer": env["nnUNet_extTrainer"] + os.pathsep + str(ext)}, timeout=1500)
    results = next(Path(env["nnUNet_results"]).glob(f"Dataset{dataset_id}_*"))
    model = results / f"{TRAINER}__nnUNetPlans__3d_fullres"
    shutil.rmtree(model, ignore_errors=True)
    shutil.copytree(results / f"{tiny}__nnUNetPlans__3d_fullres", model)
    ckpt_path = model / "fold_0" / "checkpoint_final.pth"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == tiny
    ckpt["trainer_name"] = TRAINER   # nnUNetv2_predict looks this name up
    torch.save(ckpt, ckpt_path)

    clean = clean_env(**{k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")},
                      nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1", OMP_NUM_THREADS="1")
    assert not any(k in clean for k in ("nnUNet_extTrainer", "PYTHONPATH", "VIRTUAL_ENV"))

    out = _train_until_first_epoch_starts([str(BIN / "nnUNetv2_train"), str(dataset_id), "3d_fullres", "1", "-tr",
                                         TRAINER, "-device", "cpu"], {**clean, "PYTHONUNBUFFERED": "1"}, tmp_path)
    assert "Could not find requested nnunet trainer" not in out, out[-3000:]
    assert f"Using trainer '{TRAINER}' from: {SHIM}" in out and out.rstrip().endswith("Epoch 0"), out[-3000:]

    proc = run_cli([str(BIN / "nnUNetv2_find_best_configuration"), str(dataset_id), "-c", "3d_fullres", "-tr",
                    TRAINER, "-f", "0", "--disable_ensembling"], clean)
    assert (results / "inference_instructions.txt").is_file()
    assert TRAINER in (results / "inference_instructions.txt").read_text(), proc.stdout[-2000:]

    images = Path(env["nnUNet_raw"]) / results.name / "imagesTr"
    one = tmp_path / "in"
    one.mkdir()
    for f in sorted(images.glob("*_0000.nii.gz"))[:1]:
        for channel in sorted(images.glob(f.name.replace("_0000.nii.gz", "_*.nii.gz"))):
            shutil.copy(channel, one / channel.name)
    run_cli([str(BIN / "nnUNetv2_predict"), "-i", str(one), "-o", str(tmp_path / "pred"), "-d", str(dataset_id),
             "-c", "3d_fullres", "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta"],
            clean)
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 1
