"""Helpers for integration tests that run nnU-Net's real command line on tiny data."""
from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

from clips_nnunet.cli.env import ext_trainer_value

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_TESTDATA = REPO_ROOT.parent / "shared" / "testdata"
BIN = Path(sys.executable).parent


def nnunet_environment(base: Path, extra_ext_folders: Optional[List[Path]] = None) -> Dict[str, str]:
    """Environment for nnU-Net CLI calls: private nnUNet_raw/preprocessed/results under ``base``, CPU-friendly."""
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (base / name).mkdir(parents=True, exist_ok=True)
        env[name] = str(base / name)
    ext = ext_trainer_value(os.pathsep.join(str(p) for p in (extra_ext_folders or [])))
    env.update({"nnUNet_extTrainer": ext, "nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "0",
                "nnUNet_compile": "false", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "PYTHONPATH": str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")})
    return env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli(args: List[str], env: Dict[str, str], timeout: int = 600, check: bool = True
            ) -> subprocess.CompletedProcess:
    """Run an nnU-Net or clips-nnunet console script from this environment's bin folder; fail with its output."""
    exe = BIN / args[0]
    cmd = [str(exe) if exe.exists() else args[0], *args[1:]]
    start, cpu = time.monotonic(), _children_cpu()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if os.environ.get("CLIPS_TEST_CLI_LOG"):   # timing aid: one line per command (wall s, CPU s, command)
        with open(os.environ["CLIPS_TEST_CLI_LOG"], "a") as log:
            log.write(f"{time.monotonic() - start:7.1f} {_children_cpu() - cpu:7.1f} {' '.join(args)[:200]}\n")
    if check and proc.returncode != 0:
        raise AssertionError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n--- stdout ---\n"
                             f"{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, options: str, skip_reason: str) -> Iterator[Path]:
    """A tmpfs mounted at ``mount_point`` (created) with mount ``options`` (e.g. ``"ro,size=64k"``), unmounted
    afterwards; the test is skipped with ``skip_reason`` and mount's message where this machine does not allow it."""
    mount_point.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"{skip_reason} ({proc.stderr.strip() or proc.returncode})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
