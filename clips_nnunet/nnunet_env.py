"""nnU-Net's environment, owned in one place: its three folders, ``nnUNet_extTrainer``, and one logged runner.

Every other module asks this one for nnU-Net's folders (:func:`nnunet_folder`, :func:`dataset_folder`,
:func:`dataset_name_above`, :func:`reference_masks_dir`) and for the torch device (:func:`resolve_device`), so a
missing variable fails the same way everywhere: one line that names the variable and what to do.

nnU-Net v2 is configured by environment variables: ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results``
(where datasets, preprocessed data and trained models live) and ``nnUNet_extTrainer`` (extra folders searched for
trainer classes; clips-nnunet lists its discovery shim ``clips_nnunet/nnunet_ext`` there). This module builds
those values for a work folder (``clips-nnunet env``, the demo and the study use it) and runs nnU-Net's or
clips-nnunet's console scripts as subprocesses with one runner: the command is echoed as a user would type it
(with the ``nnUNet_*`` variables it depends on), appended to a log file, optionally streamed to the terminal and
bounded by a timeout.

Layer 1: standard library only at import time (torch is imported inside :func:`resolve_device`), and
:mod:`clips_nnunet.errors` / :mod:`clips_nnunet.io_utils` (layer 0).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, TextIO, Union

from clips_nnunet.errors import ClipsError, DatasetError

if TYPE_CHECKING:  # the one path type; io_utils itself imports numpy, which layer 1 does not load here
    from clips_nnunet.io_utils import PathLike

__all__ = ["EXT_TRAINER_DIR", "NNUNET_FOLDERS", "TIMEOUT_EXIT_CODE", "ext_trainer_value", "nnunet_folders",
           "nnunet_environment", "environment_applied", "bin_path", "shell_line", "run_logged", "split_folders",
           "nnunet_folder", "nnunet_folder_if_set", "dataset_folder", "dataset_name_above", "results_dataset_name",
           "reference_masks_for_results", "reference_masks_dir", "resolve_device", "DATASET_NAME_RE"]

#: The discovery shim listed first in ``nnUNet_extTrainer`` (re-exports the clips trainers for nnU-Net's lookup).
EXT_TRAINER_DIR = Path(__file__).resolve().parent / "nnunet_ext"
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
#: Exit code :func:`run_logged` returns when the command ran past its timeout (the code of coreutils' timeout).
TIMEOUT_EXIT_CODE = 124
#: Variables shown in front of an echoed command (those nnU-Net and the clips trainers read).
ECHO_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "CLIPS_SEED",
                  "CLIPS_DIFFICULTY_CSV")

#: nnU-Net's dataset folder name, ``DatasetXXX_Name``.
DATASET_NAME_RE = re.compile(r"^Dataset(\d{3})_.+")


def ext_trainer_value(existing: Optional[str] = None) -> str:
    """The value ``nnUNet_extTrainer`` should have: our shim folder first, then the folders in ``existing``
    (``os.pathsep``-separated, e.g. the user's current value), in order, without repeating the shim."""
    folders = [str(EXT_TRAINER_DIR)]
    for folder in (existing or "").split(os.pathsep):
        if folder.strip() and Path(folder).resolve() != EXT_TRAINER_DIR and folder not in folders:
            folders.append(folder)
    return os.pathsep.join(folders)


def nnunet_folders(workdir: PathLike, results: Optional[PathLike] = None) -> Dict[str, str]:
    """``{nnUNet_raw, nnUNet_preprocessed, nnUNet_results: folder}`` inside ``workdir`` (``results`` replaces the
    results folder, e.g. one results root per seed)."""
    workdir = Path(workdir)
    folders = {name: str(workdir / name) for name in NNUNET_FOLDERS}
    if results is not None:
        folders["nnUNet_results"] = str(results)
    return folders


def nnunet_environment(workdir: PathLike, ext_folders: Iterable[PathLike] = (),
                       results: Optional[PathLike] = None, base_env: Optional[Mapping[str, str]] = None,
                       keep_user_ext: bool = True) -> Dict[str, str]:
    """Environment for nnU-Net subprocesses working in ``workdir``.

    The three folders come from :func:`nnunet_folders`; ``nnUNet_extTrainer`` lists our shim, then
    ``ext_folders`` (e.g. the folder of generated budget subclasses), then (``keep_user_ext``) the folders the
    base environment already lists. ``nnUNet_compile`` defaults to ``false`` (compiling costs minutes on short
    runs). ``base_env`` defaults to ``os.environ``; it is copied, never modified.
    """
    env = dict(os.environ if base_env is None else base_env)
    env.update(nnunet_folders(workdir, results))
    user = [p for p in env.get("nnUNet_extTrainer", "").split(os.pathsep) if p] if keep_user_ext else []
    env["nnUNet_extTrainer"] = ext_trainer_value(os.pathsep.join([*(str(p) for p in ext_folders), *user]))
    env.setdefault("nnUNet_compile", "false")
    return env


@contextlib.contextmanager
def environment_applied(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``env`` inside the block and restored after it (variables it added removed):
    for nnU-Net code run in this process, which reads its folders and ``nnUNet_extTrainer`` from the environment."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def bin_path(name: str) -> str:
    """The console script ``name`` of the running Python environment (``.venv/bin/nnUNetv2_train``) if it exists,
    else ``name`` (looked up on ``PATH``)."""
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def shell_line(cmd: Sequence[str], env: Mapping[str, str], variables: Sequence[str] = ECHO_VARIABLES) -> str:
    """``cmd`` as a user would type it, preceded by the ``variables`` of ``env`` it depends on."""
    prefix = " ".join(f"{k}={shlex.quote(env[k])}" for k in variables if k in env)
    return f"{prefix} {shlex.join(cmd)}" if prefix else shlex.join(cmd)


def run_logged(cmd: Sequence[str], env: Mapping[str, str], log_path: PathLike, timeout: Optional[float] = None,
               echo: bool = False, stream: bool = False, indent: str = "    ",
               variables: Sequence[str] = ECHO_VARIABLES) -> int:
    """Run ``cmd`` (its first word resolved with :func:`bin_path`) and return its exit code.

    The command line (:func:`shell_line`) is appended to ``log_path`` (folders created) and printed first when
    ``echo``. The output goes to the log; with ``stream`` each line is also printed with ``indent`` (lines of
    Python warnings only go to the log). After ``timeout`` seconds the process is killed, a line saying so is
    logged and :data:`TIMEOUT_EXIT_CODE` is returned.
    """
    line = shell_line(cmd, env, variables)
    if echo:
        print(f"$ {line}", flush=True)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n$ {line}\n")
        log.flush()
        proc = subprocess.Popen([bin_path(cmd[0]), *cmd[1:]], env=dict(env), stderr=subprocess.STDOUT,
                                stdout=subprocess.PIPE if stream else log, text=stream, bufsize=1 if stream else -1)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout, kill) if timeout is not None else None
        if timer is not None:
            timer.start()
        try:
            if stream:
                _copy_lines(proc.stdout, log, indent)
            rc = proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
        if timed_out.is_set():
            log.write(f"\n[clips-nnunet] timed out after {timeout} s: {shlex.join(cmd)}\n")
            return TIMEOUT_EXIT_CODE
        return rc


def _copy_lines(source: Optional[TextIO], log: TextIO, indent: str) -> None:
    """Copy a process's output to the log and the terminal (warnings to the log only)."""
    assert source is not None
    for text in source:
        log.write(text)
        if "Warning" in text or "warnings.warn" in text:
            continue
        sys.stdout.write(indent + text)
        sys.stdout.flush()


def split_folders(value: Optional[str]) -> List[str]:
    """The non-empty folders of an ``os.pathsep``-separated value (``nnUNet_extTrainer``)."""
    return [p for p in (value or "").split(os.pathsep) if p.strip()]


def nnunet_folder(variable: str, env: Optional[Mapping[str, str]] = None, must_exist: bool = True) -> Path:
    """The folder that nnU-Net's ``variable`` (one of :data:`NNUNET_FOLDERS`) names in ``env`` (default
    ``os.environ``); :class:`DatasetError` in one line when it is unset or not a folder. ``must_exist=False``: a
    folder that does not exist yet is fine (an output root that is created on the first write, as nnU-Net does
    with ``nnUNet_results``), a file in its place is not."""
    folder = nnunet_folder_if_set(variable, env)
    if folder is None:
        raise DatasetError(f"{variable} is not set; export {variable}=/path/to/{variable} (nnU-Net's folders: "
                           f"{', '.join(NNUNET_FOLDERS)})")
    if folder.is_dir() or (not must_exist and not folder.exists()):
        return folder
    raise DatasetError(f"{variable}={folder} is not a folder; create it or point {variable} to nnU-Net's folder")


def nnunet_folder_if_set(variable: str, env: Optional[Mapping[str, str]] = None) -> Optional[Path]:
    """The folder nnU-Net's ``variable`` names, whether or not it exists yet (a converter creates
    ``nnUNet_preprocessed`` on first use); None when the variable is unset or empty."""
    if variable not in NNUNET_FOLDERS:
        raise ValueError(f"{variable!r} is not one of nnU-Net's folders {NNUNET_FOLDERS}")
    value = (os.environ if env is None else env).get(variable, "")
    return Path(value) if value.strip() else None


def dataset_folder(variable: str, dataset: Union[int, str], env: Optional[Mapping[str, str]] = None) -> Path:
    """``$variable/DatasetXXX_Name`` for a dataset id (``501``) or name (``Dataset501_Lymphoma``, ``501``);
    :class:`DatasetError` when there is none or more than one."""
    root = nnunet_folder(variable, env)
    text = str(dataset).strip()
    if DATASET_NAME_RE.match(text):
        matches = [root / text] if (root / text).is_dir() else []
    elif text.isdigit():
        matches = sorted(p for p in root.glob(f"Dataset{int(text):03d}_*") if p.is_dir())
    else:
        raise DatasetError(f"dataset {text!r}: give an nnU-Net dataset id (e.g. 501) or name (Dataset501_Name)")
    if len(matches) != 1:
        found = ", ".join(m.name for m in matches) if matches else "none"
        raise DatasetError(f"expected one dataset folder for {text} in {variable}={root}, found {found}")
    return matches[0]


def dataset_name_above(folder: PathLike) -> Optional[str]:
    """The ``DatasetXXX_Name`` folder that ``folder`` is (or lies below), e.g. of a results folder; None if none."""
    folder = Path(folder)
    for p in [folder, *folder.resolve().parents]:
        if DATASET_NAME_RE.match(p.name):
            return p.name
    return None


def results_dataset_name(results_dir: PathLike) -> Optional[str]:
    """``DatasetXXX_Name`` of an nnU-Net results folder (``Trainer__Plans__Config``): ``dataset_name`` of its
    ``plans.json``, else the ``DatasetXXX_Name`` folder it lies below; None when neither tells."""
    plans = Path(results_dir) / "plans.json"
    if plans.is_file():
        try:
            name = json.loads(plans.read_text(encoding="utf-8")).get("dataset_name")
        except (ValueError, OSError, AttributeError):
            name = None
        if name:
            return str(name)
    return dataset_name_above(results_dir)


def reference_masks_for_results(results_dir: PathLike, env: Optional[Mapping[str, str]] = None) -> Path:
    """:func:`reference_masks_dir` of the dataset of a results folder (:func:`results_dataset_name`)."""
    name = results_dataset_name(results_dir)
    if name is None:
        raise DatasetError(f"{results_dir}: cannot tell the dataset (no plans.json with dataset_name, no "
                           f"DatasetXXX_Name folder above it); pass the reference masks with --gt DIR")
    return reference_masks_dir(name, env)


def reference_masks_dir(dataset_name: str, env: Optional[Mapping[str, str]] = None) -> Path:
    """The reference masks of a dataset, as nnU-Net evaluates against them: ``$nnUNet_preprocessed/<name>/
    gt_segmentations``, else ``$nnUNet_raw/<name>/labelsTr``. :class:`DatasetError` naming what was tried and
    ``--gt DIR`` as the way out."""
    tried = []
    for variable, sub in (("nnUNet_preprocessed", "gt_segmentations"), ("nnUNet_raw", "labelsTr")):
        root = nnunet_folder_if_set(variable, env)
        if root is not None:
            candidate = root / dataset_name / sub
            tried.append(str(candidate))
            if candidate.is_dir():
                return candidate
    tried_text = ", ".join(tried) if tried else "nothing: nnUNet_preprocessed and nnUNet_raw are not set"
    raise DatasetError(f"no reference masks found for {dataset_name} (tried {tried_text}); pass the reference "
                       f"masks with --gt DIR")


def resolve_device(device: str = "auto"):
    """``torch.device`` for ``cuda``, ``cpu`` or ``auto`` (CUDA when available, else CPU); :class:`ClipsError`
    for another value or for ``cuda`` without a GPU."""
    if device not in ("auto", "cuda", "cpu"):
        raise ClipsError(f"--device must be auto, cuda or cpu, got {device!r}")
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ClipsError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(device)
