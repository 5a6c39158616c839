"""Every ``clips-nnunet`` sub-command on bad input: exit code 2, one ``error:`` line, no Python traceback, and
nothing created (issue 14, item 7; the exit-code policy is in clips_nnunet/errors.py).

The sub-commands are read from the real parser, so a newly registered command is covered too: by its rows in
``BAD_INPUTS`` or, without rows, by a generic input (every positional and path option a missing path, every
integer option 999, or an unknown option when it takes no required argument).
"""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

from clips_nnunet.cli import build_parser
from nnunet_helpers import BIN, mounted_tmpfs, nnunet_environment, run_cli

MISSING = "/nonexistent/clips-input"

# per command: (id, arguments); {tmp} is a fresh folder, {empty}, {junk}, {file} prepared below
BAD_INPUTS: Dict[str, List[tuple]] = {
    "convert": [
        ("missing-folder", ["convert", MISSING, "-d", "501", "-n", "Lym"]),
        ("empty-folder", ["convert", "{empty}", "-d", "501", "-n", "Lym"]),
        ("junk-only", ["convert", "{junk}", "-d", "501", "-n", "Lym"]),
        ("missing-test-folder", ["convert", "{junk}", "-d", "501", "-n", "Lym", "--test", MISSING]),
        ("bad-id", ["convert", "{junk}", "-d", "0", "-n", "Lym"]),
        ("bad-name", ["convert", "{junk}", "-d", "501", "-n", "Ly_m"]),
        ("bad-workers", ["convert", "{junk}", "-d", "501", "-n", "Lym", "-j", "0"]),
        ("bad-labels", ["convert", "{junk}", "-d", "501", "-n", "Lym", "--labels", "nifti:" + MISSING]),
        ("bad-roi", ["convert", "{junk}", "-d", "501", "-n", "Lym", "--roi", "(lymph"]),
        ("bad-spacing", ["convert", "{junk}", "-d", "501", "-n", "Lym", "--target-spacing", "0", "2", "2"]),
        ("missing-overrides", ["convert", "{junk}", "-d", "501", "-n", "Lym", "--overrides", MISSING + ".csv"]),
        ("binary-overrides", ["convert", "{junk}", "-d", "501", "-n", "Lym", "--overrides", "{binary}"]),
        ("bad-prefix", ["convert", "{junk}", "-d", "501", "-n", "Lym", "--prefix", "9x"]),
        ("private-inside-raw", ["convert", "{junk}", "-d", "501", "-n", "Lym", "--private-dir", "{raw}/p"]),
    ],
    "convert-autopet": [
        ("missing-folder", ["convert-autopet", MISSING, "-d", "502", "-n", "Auto"]),
        ("empty-folder", ["convert-autopet", "{empty}", "-d", "502", "-n", "Auto"]),
        ("bad-workers", ["convert-autopet", "{empty}", "-d", "502", "-n", "Auto", "-j", "-1"]),
    ],
    "synth": [
        ("too-few-patients", ["synth", "{tmp}/c", "-n", "4", "--faults",
                              "nac,localizer,missing-weight,second-study,corrupted"]),
        ("unknown-fault", ["synth", "{tmp}/c", "-n", "4", "--faults", "nac,typo"]),
        ("zero-patients", ["synth", "{tmp}/c", "-n", "0"]),
        ("output-is-a-file", ["synth", "{file}/c", "-n", "2"]),
    ],
    "predict": [
        ("missing-input", ["predict", MISSING, "-o", "{tmp}/out", "-d", "999", "-c", "3d_fullres"]),
        ("fold-not-a-number", ["predict", "{junk}", "-o", "{tmp}/out", "-d", "999", "-c", "3d_fullres", "-f", "x"]),
        ("trainer-with-separator", ["predict", "{junk}", "-o", "{tmp}/out", "-d", "999", "-c", "3d_fullres",
                                    "-tr", "a__b"]),
        ("binary-overrides", ["predict", "{junk}", "-o", "{tmp}/out", "-d", "999", "-c", "3d_fullres",
                              "--overrides", "{binary}"]),
    ],
    "evaluate": [("missing-folders", ["evaluate", MISSING, MISSING + "2"])],
    "compare": [("missing-folders", ["compare", MISSING, MISSING + "2"])],
    "score": [("missing-folder", ["score", MISSING, "-o", "{tmp}/scores.csv"])],
    "plan-tmtv": [("unknown-dataset", ["plan-tmtv", "-d", "999"])],
    "stack": [("unknown-dataset", ["stack", "-d", "999", "-o", "{tmp}/model"])],
    "study": [("missing-config", ["study", MISSING + ".toml"])],
    "demo": [("unknown-option", ["demo", "--no-such-option"])],
    "env": [("unknown-option", ["env", "--no-such-option"])],
}


def _subparsers() -> Dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _generic(name: str, sub: argparse.ArgumentParser) -> List[str]:
    args = [name]
    required = [a for a in sub._actions
                if not isinstance(a, argparse._HelpAction) and (not a.option_strings or a.required)]
    if not required:
        return args + ["--no-such-option"]
    for a in required:
        value = "999" if a.type is int else (a.choices[0] if a.choices else MISSING)
        args += ([a.option_strings[0]] if a.option_strings else []) + [str(value)]
    return args


def _cases():
    subs = _subparsers()
    cases = []
    for name in subs:
        rows = BAD_INPUTS.get(name) or [("generic-bad-path", _generic(name, subs[name]))]
        cases += [pytest.param(args, id=f"{name}:{case}") for case, args in rows]
    return cases


def _snapshot(base: Path) -> set:
    return {p for p in base.rglob("*")}


@pytest.fixture
def workspace(tmp_path):
    env = nnunet_environment(tmp_path / "nn")
    for sub in ("empty", "junk", "tmp"):
        (tmp_path / sub).mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("not DICOM\n")
    (tmp_path / "junk" / "fake.dcm").write_bytes(b"DICM" + b"\0" * 60)
    (tmp_path / "file").write_text("a file, not a folder\n")
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 4)  # e.g. a spreadsheet saved as .xlsx
    subst = {"{binary}": str(tmp_path / "binary.csv"), "{empty}": str(tmp_path / "empty"), "{junk}": str(tmp_path / "junk"), "{tmp}": str(tmp_path / "tmp"),
             "{file}": str(tmp_path / "file"), "{raw}": env["nnUNet_raw"]}
    return tmp_path, env, subst


def _fill(args: List[str], subst: Dict[str, str]) -> List[str]:
    out = []
    for a in args:
        for key, value in subst.items():
            a = a.replace(key, value)
        out.append(a)
    return out


@pytest.mark.parametrize("args", _cases())
def test_bad_input_is_one_line_exit_2_and_creates_nothing(args, workspace):
    base, env, subst = workspace
    args = _fill(args, subst)
    before = _snapshot(base)
    proc = subprocess.run([str(BIN / "clips-nnunet"), *args], env=env, cwd=base / "tmp", capture_output=True,
                          text=True, timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    error_lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1, proc.stderr
    created = sorted(str(p.relative_to(base)) for p in _snapshot(base) - before)
    assert not created, f"bad input created {created}"


def test_every_registered_command_is_covered():
    """A guard: the table or the generic input reaches each sub-command that `clips-nnunet --help` lists."""
    subs = _subparsers()
    assert {"convert", "convert-autopet", "synth", "predict", "evaluate"} <= set(subs)
    assert len(_cases()) >= len(subs)


@pytest.fixture
def read_only_raw(tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=64k", "cannot mount a read-only tmpfs here") as mnt:
        yield mnt


def test_convert_into_a_read_only_nnunet_raw(read_only_raw, tmp_path):
    """Where even the lock file cannot be written: one line naming the file and what to do, exit 2."""
    from clips_nnunet.synthetic.dicom_cohort import make_synthetic_cohort
    cohort = tmp_path / "cohort"
    make_synthetic_cohort(cohort, n_patients=1, seed=3, progress=False)
    env = nnunet_environment(tmp_path / "nn")
    env["nnUNet_raw"] = str(read_only_raw)
    proc = run_cli(["clips-nnunet", "convert", str(cohort), "-d", "501", "-n", "Lym", "--quiet"], env, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line, = [x for x in proc.stderr.splitlines() if "error:" in x]
    assert f"could not write {read_only_raw}/.Dataset501.clips-lock: Read-only file system" in line
    assert "make the folder writable" in line
