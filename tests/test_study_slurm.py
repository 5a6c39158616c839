"""``clips-nnunet study --slurm`` / ``--run-index`` / ``--prepare-only`` / ``--report-only``: the SLURM array job.

SLURM itself is not installed here. ``submit.sh`` runs against a stand-in ``sbatch`` that records each submission
(its options, script, array and dependencies) and answers a job id, as ``sbatch --parsable`` does. The integration
test then runs the recorded jobs as SLURM would: each array index as its own process with
``SLURM_ARRAY_TASK_ID`` set, teachers before their students, the report last; every run goes through the real
``nnUNetv2_train``.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from clips_nnunet.errors import ClipsError
from clips_nnunet.study import array_spec, parse_study_config, plan_runs, run_index, write_slurm_scripts
from clips_nnunet.study.runner import index_from_environment

BIN = Path(sys.executable).parent

FAKE_SBATCH = """#!{python}
import json, os, sys
log = os.environ["FAKE_SBATCH_LOG"]
n = sum(1 for _ in open(log)) if os.path.exists(log) else 0
args = sys.argv[1:]
assert args[0] == "--parsable", args
record = {{"id": str(1000 + n), "args": args[1:-1], "script": args[-1]}}
with open(log, "a") as f:
    f.write(json.dumps(record) + "\\n")
print(record["id"] + ";cluster")  # sbatch --parsable on a multi-cluster set-up
"""

RAW = {
    "name": "slurmtiny",
    # 2 folds and 1 iteration per run (issue 25: the array test took 471 s with 3 folds x 2 iterations): the teacher
    # still trains every fold, one arm runs independently and the student waits for the teacher
    "dataset": {"id": 990, "name": "ClipsTiny", "source": "existing", "n_splits": 2},
    "trainers": [{"name": "nnUNetTrainer", "trainer": "nnUNetTrainerClipsBase"},
                 {"name": "nnUNetTrainerCLSelfPacedRandom", "overrides": {"warmup_epochs": 0}},
                 {"name": "nnUNetTrainerCLTransferTeacher", "teacher": "nnUNetTrainer"}],
    "baseline": "nnUNetTrainer", "controls": ["nnUNetTrainerCLSelfPacedRandom"], "seeds": [0], "folds": [0],
    "budget": {"epochs": 1, "iterations_per_epoch": 1, "val_iterations_per_epoch": 1},
    "device": "cpu", "difficulty_key": "planted_difficulty",
}


def _fake_sbatch(tmp_path: Path) -> Dict[str, str]:
    folder = tmp_path / "fakebin"
    folder.mkdir()
    exe = folder / "sbatch"
    exe.write_text(FAKE_SBATCH.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "FAKE_SBATCH_LOG": str(tmp_path / "sbatch.jsonl")}


def _submit(submit: Path, tmp_path: Path, env: Dict[str, str]) -> List[dict]:
    """Run submit.sh against the stand-in sbatch; the recorded submissions, with the option values parsed."""
    fake = _fake_sbatch(tmp_path)
    proc = subprocess.run(["bash", str(submit)], env={**env, **fake}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    jobs = [json.loads(line) for line in Path(fake["FAKE_SBATCH_LOG"]).read_text().splitlines()]
    for job in jobs:
        args = job["args"]
        job["options"] = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")
                          and not args[i + 1].startswith("--")}
        job["flags"] = [a for a in args if a.startswith("--")]
    assert proc.stdout.strip().startswith(f"submitted study {jobs[0]['options']['--job-name'].split('-')[1]}")
    return jobs


def test_array_spec_by_hand():
    assert array_spec([0, 1, 2, 5]) == "0-2,5"
    assert array_spec([7, 3, 4, 4, 9, 10, 11]) == "3-4,7,9-11"
    assert array_spec([6]) == "6"
    for bad in ([], [-1, 0]):
        with pytest.raises(ValueError):
            array_spec(bad)


def test_scripts_parse_and_wire_teachers_before_students(tmp_path, monkeypatch):
    config = parse_study_config(RAW, study_dir=tmp_path / "study")
    cfg_file = tmp_path / "study.yaml"
    cfg_file.write_text(yaml.safe_dump(RAW))
    monkeypatch.chdir(tmp_path)
    submit = write_slurm_scripts(config, cfg_file, ["--partition", "gpu", "--gres", "gpu:1", "--comment", "a b"],
                                 echo=False)
    folder = submit.parent
    for name in ("submit.sh", "prepare.sbatch", "run.sbatch", "report.sbatch"):
        proc = subprocess.run(["bash", "-n", str(folder / name)], capture_output=True, text=True)
        assert proc.returncode == 0, (name, proc.stderr)
    run_script = (folder / "run.sbatch").read_text()
    assert f"--study-dir {config.study_dir} --run-index\n" in run_script and f"cd {tmp_path}" in run_script
    runs = json.loads((folder / "runs.json").read_text())
    # teacher: 2 folds at seed 0 (fold 0 is also the study run); then Random; then the student
    assert runs["runs"] == ["nnUNetTrainer fold 0 seed 0", "nnUNetTrainer fold 1 seed 0 (teacher)",
                            "nnUNetTrainerCLSelfPacedRandom fold 0 seed 0", "nnUNetTrainerCLTransferTeacher fold 0 seed 0"]
    assert runs["roles"] == {"teacher": [0, 1], "independent": [2], "student": [3]}
    assert [r.label for r in plan_runs(config, n_splits=2)] == runs["runs"]

    jobs = _submit(submit, tmp_path, dict(os.environ))
    names = [j["options"]["--job-name"] for j in jobs]
    assert names == ["clips-slurmtiny-prepare", "clips-slurmtiny-teachers", "clips-slurmtiny-runs",
                     "clips-slurmtiny-students", "clips-slurmtiny-report"]
    ids = {n.rsplit("-", 1)[1]: j["id"] for n, j in zip(names, jobs)}
    for job in jobs:  # the user's sbatch options on every job, quoted as given
        assert job["args"][:6] == ["--partition", "gpu", "--gres", "gpu:1", "--comment", "a b"]
    prepare, teachers, independent, students, report = jobs
    assert prepare["script"].endswith("prepare.sbatch") and "--dependency" not in prepare["flags"]
    assert teachers["options"]["--array"] == "0-1" and teachers["options"]["--dependency"] == f"afterok:{ids['prepare']}"
    assert independent["options"]["--array"] == "2" and independent["options"]["--dependency"] == f"afterok:{ids['prepare']}"
    assert students["options"]["--array"] == "3" and students["options"]["--dependency"] == f"afterok:{ids['teachers']}"
    assert "--kill-on-invalid-dep=yes" in students["flags"]  # a failed teacher cancels its students
    assert report["options"]["--dependency"] == f"afterany:{ids['teachers']}:{ids['runs']}:{ids['students']}"
    assert report["script"].endswith("report.sbatch")


def test_run_index_errors_name_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    with pytest.raises(ClipsError, match="SLURM_ARRAY_TASK_ID"):
        index_from_environment(None)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    assert index_from_environment(None) == 4 and index_from_environment(2) == 2
    raw = copy.deepcopy(RAW)
    raw["dataset"] = {"id": 990, "source": "existing", "n_splits": 2}  # no dataset on disk
    config = parse_study_config(raw, study_dir=tmp_path / "s")
    with pytest.raises(ClipsError, match=r"run index 4 is out of range: this study has 4 runs \(0..3\)"):
        run_index(config, 4, echo=False)
    with pytest.raises(ClipsError, match="dataset 990 is not in"):
        run_index(config, 0, echo=False)
    # scripts written for another plan: the array task refuses to run a different run under the same index
    (tmp_path / "s" / "slurm").mkdir(parents=True)
    (tmp_path / "s" / "slurm" / "runs.json").write_text(json.dumps({"runs": ["nnUNetTrainer fold 1 seed 0"]}))
    with pytest.raises(ClipsError, match="the study's arms or folds changed"):
        run_index(config, 0, echo=False)


def _run_job(job: dict, env: Dict[str, str], parallel: int = 2) -> None:
    """Run one recorded job as SLURM would: each array index in its own process, ``parallel`` at a time."""
    spec = job["options"].get("--array")
    indices = [None]
    if spec:
        indices = []
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            indices += list(range(int(lo), int(hi or lo) + 1))
    pending = list(indices)
    while pending:
        batch, pending = pending[:parallel], pending[parallel:]
        procs = []
        for i in batch:
            task_env = dict(env, SLURM_JOB_NAME=job["options"]["--job-name"])
            if i is not None:
                task_env["SLURM_ARRAY_TASK_ID"] = str(i)
            procs.append((i, subprocess.Popen(["bash", job["script"]], env=task_env, stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT, text=True)))
        for i, proc in procs:
            out, _ = proc.communicate(timeout=900)
            assert proc.returncode == 0, f"{job['options']['--job-name']} task {i}:\n{out[-4000:]}"


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_slurm_array_runs_each_index_then_reports(tiny_preprocessed, tmp_path):
    """Tiny study with a transfer teacher and a control, run as SLURM would run the submitted array jobs."""
    base, env, dataset_id = tiny_preprocessed
    study = tmp_path / "study"
    src = Path(env["nnUNet_raw"]) / f"Dataset{dataset_id:03d}_ClipsTiny"
    shutil.copytree(src, study / "nnUNet_raw" / src.name)
    pre = Path(env["nnUNet_preprocessed"]) / src.name
    shutil.copytree(pre, study / "nnUNet_preprocessed" / src.name,
                    ignore=shutil.ignore_patterns("nnUNetPlans_2d", "nnUNetPlans_3d_lowres", "splits_final.json"))
    cfg_file = tmp_path / "study.yaml"
    cfg_file.write_text(yaml.safe_dump({**RAW, "study_dir": "study"}))
    job_env = {k: v for k, v in env.items() if not k.startswith("nnUNet_") or k in
               ("nnUNet_def_n_proc", "nnUNet_n_proc_DA", "nnUNet_compile")}
    proc = subprocess.run([str(BIN / "clips-nnunet"), "study", str(cfg_file), "--slurm", "--partition", "debug"],
                          cwd=tmp_path, env=job_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    submit = study / "slurm" / "submit.sh"
    assert proc.stdout.strip().endswith(f"submit with: bash {submit}")
    jobs = _submit(submit, tmp_path, job_env)
    for job in jobs:
        _run_job(job, job_env)

    states = {}
    for path in sorted((study / "status").glob("*.json")):
        entry = json.loads(path.read_text())
        states[entry["index"]] = (entry["label"], entry["state"])
    assert sorted(states) == [0, 1, 2, 3]
    assert all(state.startswith("finished in") for _, state in states.values()), states
    # the teacher scored every case out of fold; the student trained on its fold's training cases only
    teacher_csv = (study / "difficulty_nnUNetTrainer.csv").read_text().splitlines()
    assert teacher_csv[0].startswith("case_id,difficulty,") and len(teacher_csv) == 1 + 12
    splits = json.loads((study / "nnUNet_preprocessed" / src.name / "splits_final.json").read_text())
    fold_csv = (study / "difficulty_nnUNetTrainer_fold0_train.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[0] for r in fold_csv) == sorted(splits[0]["train"])
    student_log = (study / "logs" / "nnUNetTrainerCLTransferTeacher_fold0_seed0_study.log").read_text()
    assert "CLIPS_DIFFICULTY_CSV=" in student_log and "CLIPS_SEED=0" in student_log
    report = (study / "report" / "report.md").read_text()
    assert "## Results against the baseline" in report and "### all cases (n = 6)" in report
    for arm in ("nnUNetTrainerCLSelfPacedRandom", "nnUNetTrainerCLTransferTeacher"):
        assert f"| {arm} | " in report
    assert "## Against the control `nnUNetTrainerCLSelfPacedRandom`" in report
    # the teacher's 2-fold cross-validation is counted in the student's budget (1 + 2 runs of 1 iteration)
    assert "| nnUNetTrainerCLTransferTeacher | 1 | 2 | 0 | 3 | **3.00x** |" in report
    assert "## Take-off" in report and "## A/A check" in report and (study / "report" / "per_run_case.csv").is_file()
    for label, _ in states.values():
        assert f"| {label} | finished in" in report
    assert "![per-case metrics](vs_nnUNetTrainer/plots/boxplots.png)" in report
