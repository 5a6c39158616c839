"""Nothing lost, nothing mixed up (issue 14): a full disk, an injected short write, a second cohort, --resume with a
patient folder missing, --prune, stale splits, two runs at once, a second name under one id, orphaned workers."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from clips_nnunet.dataset_conversion import write as W
from clips_nnunet.dataset_conversion.convert import convert_cohort
from clips_nnunet.errors import DatasetError, WriteError
from clips_nnunet.io_utils import DirectoryLock, atomic_write_json, read_json, verify_nifti
from clips_nnunet.synthetic.dicom_cohort import make_synthetic_cohort
from nnunet_helpers import BIN, mounted_tmpfs, nnunet_environment, run_cli
from process_helpers import alive, descendants

NAME = "Dataset501_Lym"


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    base = tmp_path_factory.mktemp("cohorts")
    make_synthetic_cohort(base / "first", n_patients=3, seed=1, progress=False)
    make_synthetic_cohort(base / "second", n_patients=2, seed=5, progress=False)
    return base / "first", base / "second"


@pytest.fixture
def env(tmp_path, monkeypatch):
    e = nnunet_environment(tmp_path)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, e[k])
    return e


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _convert(cohort, **kw):
    return convert_cohort(cohort, 501, "Lym", progress=False, **kw)


def _splits_cases(env):
    return W.splits_cases(read_json(Path(env["nnUNet_preprocessed"]) / NAME / "splits_final.json"))


def _case_ids(env, sub="labelsTr"):
    return sorted(p.name[:-7] for p in (Path(env["nnUNet_raw"]) / NAME / sub).glob("*.nii.gz"))


# ----------------------------------------------------------------------------------------------------------------------
# verified writes
# ----------------------------------------------------------------------------------------------------------------------
def _image(shape=(20, 16, 12)):
    return sitk.GetImageFromArray(np.random.default_rng(0).normal(size=shape).astype(np.float32))


def test_short_write_is_never_published(tmp_path, monkeypatch):
    """SimpleITK 'succeeds' but leaves a truncated file (what a full disk does): write_image must refuse it."""
    real = sitk.WriteImage
    dest = tmp_path / "case_0001.nii.gz"
    W.write_image(_image(), dest)
    good = dest.read_bytes()

    def short_write(image, path, useCompression=True):
        real(image, path, useCompression=useCompression)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(W.sitk, "WriteImage", short_write)
    with pytest.raises(WriteError, match=r"could not write .*case_0001\.nii\.gz: incomplete or damaged compressed"):
        W.write_image(_image(), dest)
    assert dest.read_bytes() == good  # the old, complete file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["case_0001.nii.gz"]  # no temporary left


def test_nifti_whose_data_is_shorter_than_its_header_says_is_refused(tmp_path, monkeypatch):
    real = sitk.WriteImage

    def wrong_size(image, path, useCompression=True):  # a complete gzip stream, but 1 slice of data missing
        real(image[:, :, :-1], path, useCompression=useCompression)

    monkeypatch.setattr(W.sitk, "WriteImage", wrong_size)
    with pytest.raises(WriteError, match=r"header size \(12, 16, 19\) differs from the image written \(12, 16, 20\)"):
        W.write_image(_image(), tmp_path / "x.nii.gz")
    assert not list(tmp_path.iterdir())


def test_json_short_write_raises(tmp_path, monkeypatch):
    dest = tmp_path / "dataset.json"
    atomic_write_json(dest, {"a": 1})
    real_write = os.fsync

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(WriteError, match="No space left on device; nothing was published: free disk space"):
        atomic_write_json(dest, {"a": 2, "b": list(range(100))})
    monkeypatch.setattr(os, "fsync", real_write)
    assert read_json(dest) == {"a": 1}


@pytest.fixture
def small_fs(tmp_path):
    with mounted_tmpfs(tmp_path / "small", "size=1500k", "cannot mount a 1.5 MB tmpfs here; the injected "
                       "short-write tests above cover the check") as mnt:
        yield mnt


def test_disk_full_during_conversion(cohorts, env, small_fs, tmp_path):
    """nnUNet_raw on a 1.5 MB filesystem: 3 cases (about 1 MB each) do not fit. Failed cases say so, nothing
    truncated is published, and --resume on a larger disk redoes exactly what is missing."""
    first, _ = cohorts
    raw, private = small_fs / "nnUNet_raw", tmp_path / "private"
    report = convert_cohort(first, 501, "Lym", progress=False, raw_root=raw, private_dir=private,
                            preprocessed_root=Path(env["nnUNet_preprocessed"]))
    failed = report.failed
    assert failed, "the small filesystem should have been filled"
    for case in failed:
        assert "No space left on device" in report.cases[case]["reason"] or "incomplete" in report.cases[case]["reason"]
    published = list((raw / NAME).rglob("*.nii.gz"))
    for f in published:
        verify_nifti(f)  # every published image is complete
        assert not f.name.startswith(".")
    # every published case is complete and recorded; failed cases left no file
    for case in report.converted:
        assert W.verify_case(raw / NAME, case, True) is None
    for case in failed:
        assert not [f for f in published if f.name.startswith(case)]
    # move to a big disk and resume: the converted ones are re-verified and kept, the rest converted
    big = tmp_path / "raw"
    shutil.copytree(raw, big)
    again = convert_cohort(first, 501, "Lym", progress=False, raw_root=big, private_dir=private, resume=True,
                           preprocessed_root=Path(env["nnUNet_preprocessed"]))
    assert not again.failed and len(again.converted) == 3
    assert {c for c, r in again.cases.items() if r.get("resumed")} == set(report.converted)


def test_resume_reverifies_and_redoes_a_damaged_case(cohorts, env):
    first, _ = cohorts
    _convert(first)
    raw = Path(env["nnUNet_raw"]) / NAME
    victim = sorted((raw / "imagesTr").glob("*_0001.nii.gz"))[0]
    case = victim.name[: -len("_0001.nii.gz")]
    victim.write_bytes(victim.read_bytes()[:-2000])  # truncated behind our back
    report = _convert(first, resume=True)
    assert not report.cases[case].get("resumed") and report.cases[case]["status"] == "converted"
    assert sum(bool(r.get("resumed")) for r in report.cases.values()) == 2
    verify_nifti(victim)


# ----------------------------------------------------------------------------------------------------------------------
# membership: second cohort, missing folder, prune, splits
# ----------------------------------------------------------------------------------------------------------------------
def test_second_cohort_needs_add_and_keeps_the_first(cohorts, env):
    first, second = cohorts
    _convert(first)
    before = _case_ids(env)
    with pytest.raises(DatasetError, match=r"already holds 3 converted case\(s\) .* 2 new stud\(ies\) of 2 "
                                           r"patient\(s\): pass --add"):
        _convert(second)
    assert _case_ids(env) == before  # refused: nothing touched
    report = _convert(second, add=True)
    assert len(report.converted) == 2 and sum(r["status"] == "kept" for r in report.cases.values()) == 3
    assert len(_case_ids(env)) == 5
    assert _splits_cases(env) == set(_case_ids(env))
    assert read_json(Path(env["nnUNet_raw"]) / NAME / "dataset.json")["numTraining"] == 5
    # published dataset files follow the umask (readable by the group); the private folder is the owner's only
    mode = os.stat(next((Path(env["nnUNet_raw"]) / NAME / "imagesTr").iterdir())).st_mode & 0o777
    assert mode == 0o666 & ~_umask()
    private = Path(env["nnUNet_raw"]).parent / "clips_private" / NAME
    assert os.stat(private).st_mode & 0o777 == 0o700
    assert set(read_json(Path(env["nnUNet_raw"]) / NAME / "case_metadata.json")) == set(_case_ids(env))


def test_resume_with_a_patient_folder_missing_keeps_its_case(cohorts, env, tmp_path):
    first, _ = cohorts
    _convert(first)
    before = _case_ids(env)
    partial = tmp_path / "partial"
    shutil.copytree(first, partial, ignore=shutil.ignore_patterns("patient_002"))
    report = _convert(partial, resume=True)
    assert not report.failed and _case_ids(env) == before
    assert sum(r["status"] == "kept" for r in report.cases.values()) == 1
    assert _splits_cases(env) == set(before)
    assert read_json(Path(env["nnUNet_raw"]) / NAME / "dataset.json")["numTraining"] == 3


def test_prune_removes_and_prints_the_cases_not_in_the_cohort(cohorts, env):
    first, second = cohorts
    _convert(first)
    first_ids = _case_ids(env)
    proc = run_cli(["clips-nnunet", "convert", str(second), "-d", "501", "-n", "Lym", "--quiet", "--prune"], env)
    for case in first_ids:
        assert f"--prune: removed case {case}" in proc.stdout
    assert len(_case_ids(env)) == 2 and not set(_case_ids(env)) & set(first_ids)
    assert _splits_cases(env) == set(_case_ids(env))


def test_foreign_splits_that_do_not_match_fail_the_run(cohorts, env):
    first, _ = cohorts
    _convert(first)
    splits = Path(env["nnUNet_preprocessed"]) / NAME / "splits_final.json"
    atomic_write_json(splits, [{"train": ["Lym_0001"], "val": ["Lym_0099"]}])  # hand-made, wrong
    proc = run_cli(["clips-nnunet", "convert", str(first), "-d", "501", "-n", "Lym", "--quiet", "--resume"], env,
                   check=False)
    assert proc.returncode == 1 and "rerun with --force to regenerate it" in proc.stderr
    assert read_json(splits) == [{"train": ["Lym_0001"], "val": ["Lym_0099"]}]  # not ours: left alone
    run_cli(["clips-nnunet", "convert", str(first), "-d", "501", "-n", "Lym", "--quiet", "--resume", "--force"], env)
    assert _splits_cases(env) == set(_case_ids(env))


def test_second_name_under_an_existing_id_is_refused(cohorts, env):
    first, _ = cohorts
    _convert(first)
    with pytest.raises(DatasetError, match=r"dataset id 501 already belongs to Dataset501_Lym .* use -n Lym"):
        convert_cohort(first, 501, "Other", progress=False)
    assert not (Path(env["nnUNet_raw"]) / "Dataset501_Other").exists()


# ----------------------------------------------------------------------------------------------------------------------
# concurrency and worker processes
# ----------------------------------------------------------------------------------------------------------------------
def test_a_second_run_on_a_locked_dataset_fails_fast(cohorts, env):
    first, _ = cohorts
    with DirectoryLock(Path(env["nnUNet_raw"]), what="dataset 501", lock_name=".Dataset501.clips-lock"):
        t0 = time.monotonic()
        proc = run_cli(["clips-nnunet", "convert", str(first), "-d", "501", "-n", "Lym", "--quiet"], env,
                       check=False)
        assert time.monotonic() - t0 < 60
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"dataset 501 {env['nnUNet_raw']} is in use by another run (pid {os.getpid()} on host" in proc.stderr
    assert not (Path(env["nnUNet_raw"]) / NAME / "imagesTr").exists()


def test_two_real_runs_at_once(cohorts, env):
    first, _ = cohorts
    cmd = [str(BIN / "clips-nnunet"), "convert", str(first), "-d", "501", "-n", "Lym", "--quiet"]
    lock = Path(env["nnUNet_raw"]) / ".Dataset501.clips-lock"
    one = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.is_file() and lock.stat().st_size):
        time.sleep(0.05)
    two = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    out, err = one.communicate(timeout=300)
    assert one.returncode == 0, err
    assert two.returncode == 2 and f"(pid {one.pid} on host" in two.stderr
    assert len(_case_ids(env)) == 3 and _splits_cases(env) == set(_case_ids(env))


def _kill_and_list_survivors(proc, workers, grace_s):
    """SIGKILL ``proc``, give its ``workers`` ``grace_s`` seconds to end, and return (and then kill) those still
    alive, so that a failing test leaves no process behind."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + grace_s
    while time.time() < deadline and any(alive(p) for p in workers):
        time.sleep(0.05)
    left = [p for p in workers if alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    return left


def test_workers_end_when_the_main_process_is_killed(cohorts, env):
    first, _ = cohorts
    proc = subprocess.Popen([str(BIN / "clips-nnunet"), "convert", str(first), "-d", "501", "-n", "Lym", "--quiet",
                             "-j", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.time() + 120, []
    while time.time() < deadline and proc.poll() is None:
        workers = descendants(proc.pid)
        if len(workers) >= 2:
            break
        time.sleep(0.02)
    assert len(workers) >= 2, "no worker processes seen"
    left = _kill_and_list_survivors(proc, workers, grace_s=5)
    assert not left, f"worker processes {left} outlived the killed main process"


POOL = """
import os, sys, time
from clips_nnunet.dataset_conversion.cohort import _init_worker
from clips_nnunet.dataset_conversion.workers import process_pool
with process_pool(2, initializer=_init_worker) as pool:
    futures = [pool.submit(time.sleep, 60) for _ in range(2)]
    time.sleep(1.0)
    print(" ".join(str(p) for p in pool._processes), flush=True)
    time.sleep(60)
"""


def test_busy_pool_workers_die_with_their_parent():
    """Workers in the middle of a 60 s job end within seconds of a SIGKILL to the parent (without
    die_with_parent they would sleep on, as the conversion workers of a killed run did)."""
    import sys
    proc = subprocess.Popen([sys.executable, "-c", POOL], stdout=subprocess.PIPE, text=True)
    workers = [int(p) for p in proc.stdout.readline().split()]
    assert len(workers) == 2 and all(alive(p) for p in workers)
    left = _kill_and_list_survivors(proc, workers, grace_s=3)
    assert not left, f"worker processes {left} outlived their parent"
