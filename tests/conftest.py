"""Shared fixtures and the suite's scheduling. ``tiny_preprocessed`` plans and preprocesses one tiny synthetic dataset
once per run (shared by the pytest-xdist workers); the slowest modules are collected first and each module runs on one
pytest-xdist worker (``scripts/test.sh`` runs ``--dist loadscope``).
``CLIPS_TEST_CPU_LOG=file`` records each test's CPU seconds (``CLIPS_TEST_CLI_LOG=file``: each CLI call's, in
``nnunet_helpers.run_cli``)."""
from __future__ import annotations

import fcntl
import os
import resource
import shutil
from pathlib import Path

import pytest

from clips_nnunet.synthetic.raw import make_synthetic_raw_dataset
from nnunet_helpers import nnunet_environment, run_cli

TINY_DATASET_ID = 990


def _run_shared_folder(tmp_path_factory) -> Path:
    """A folder shared by every pytest-xdist worker of this run (the parent of the workers' base temp folders), or
    this session's own base temp folder without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _build_tiny_dataset(folder: Path) -> None:
    """Dataset990 (raw, planned and preprocessed) under ``folder``, with nnU-Net's default 5-fold split written up
    front: a training run would otherwise write splits_final.json while another worker's run reads it."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    from clips_nnunet.io_utils import atomic_write_json

    env = nnunet_environment(folder)
    raw = make_synthetic_raw_dataset(Path(env["nnUNet_raw"]), TINY_DATASET_ID)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(TINY_DATASET_ID), "-c", "3d_fullres", "-npfp", "1", "-np", "1",
             "--verify_dataset_integrity"], {**env, "nnUNet_n_proc_DA": "1"})  # planner: torch.set_num_threads(DA)
    cases = sorted(p.name[: -len(".nii.gz")] for p in (Path(raw) / "labelsTr").glob("*.nii.gz"))
    pre = Path(env["nnUNet_preprocessed"]) / Path(raw).name
    atomic_write_json(pre / "splits_final.json", generate_crossval_split(cases, seed=12345, n_splits=5))


@pytest.fixture(scope="session")
def tiny_preprocessed(tmp_path_factory):
    """(base folder, env, dataset id): Dataset990 with 12 training cases of 32^3, planned and preprocessed
    (3d_fullres), splits_final.json written. Built once per run: pytest-xdist workers share one read-only copy of
    nnUNet_raw and nnUNet_preprocessed (symlinked into each worker's base folder, built under a file lock); each
    worker has its own nnUNet_results. Tests must copy what they change; they may add results under nnUNet_results."""
    shared = _run_shared_folder(tmp_path_factory) / "nnunet_tiny_shared"
    with open(str(shared) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # the other worker waits here while the first one builds
        if not (shared / "ready").is_file():
            shutil.rmtree(shared, ignore_errors=True)   # a build that failed half-way
            _build_tiny_dataset(shared)
            (shared / "ready").write_text("")
    base = tmp_path_factory.mktemp("nnunet_tiny")
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        (base / name).symlink_to(shared / name, target_is_directory=True)
    return base, nnunet_environment(base), TINY_DATASET_ID


@pytest.fixture
def fresh_nnunet_env(tmp_path):
    """A private, empty nnU-Net folder triple and CLI environment for one test."""
    return tmp_path, nnunet_environment(tmp_path)


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its waited-for children (nnU-Net commands, their spawned pools)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With ``CLIPS_TEST_CPU_LOG=file``: append each test's CPU seconds (setup, call and teardown, children
    included) and its node id, a load-independent measure of what a test costs on an idle machine."""
    log = os.environ.get("CLIPS_TEST_CPU_LOG")
    start = _cpu_seconds() if log else 0.0
    yield
    if log:
        with open(log, "a") as f:
            f.write(f"{_cpu_seconds() - start:8.1f} {item.nodeid}\n")


# Rough seconds (idle 2-core machine, two pytest-xdist workers) of the slowest tests or modules (a module-scoped
# fixture's build). Only an order: ``scripts/test.sh`` deals the most expensive modules out first, so that no worker
# is left alone with a long module at the end. A stale number costs time, never a result.
SLOW_TESTS = {
    "tests/test_tmtv_integration.py": 220,
    "tests/test_cl_trainer_cli.py::test_train_crash_continue_predict_and_find_best": 120,
    "tests/test_study_slurm.py::test_slurm_array_runs_each_index_then_reports": 150,
    "tests/test_published_models.py": 140,
    "tests/test_import_tmtv_integration.py": 130,
    "tests/test_family_trainers.py::test_every_family_trainer_trains_resumes_and_samples_its_plan": 70,
    "tests/test_family_trainers.py::test_cli_train_predict_and_score": 70,
    "tests/test_predict_e2e.py::test_predict_from_dicom_end_to_end": 110,
    "tests/test_discovery_install.py::test_nnunet_commands_in_a_clean_shell": 90,
    "tests/test_study.py::test_tiny_real_study": 90,
    "tests/test_convert_cli.py": 90,
    "tests/test_resenc_presets.py::test_self_paced_trains_and_predicts_with_resenc_m_plans": 90,
    "tests/test_ddp_curriculum.py::test_trainer_hooks_give_identical_curricula_on_two_ranks": 60,
    "tests/test_tmtv_cl_trainers.py::test_tmtv_self_paced_on_stock_3d_fullres": 60,
    "tests/test_cl_trainer_cli.py::test_soft_mixture_trainer_with_two_da_workers": 55,
    "tests/test_convert_reruns.py": 55,
    "tests/test_cl_loss_parity.py::test_stock_and_weighting_curricula_take_the_same_step_with_unit_weights": 50,
    "tests/test_ddp_sync.py::test_two_gloo_ranks_compute_identical_curricula": 30,
    "tests/test_interrupt.py": 30,
}


def _dist_args(config) -> str:
    """The ``--dist`` mode of this run as given on the command line (a pytest-xdist worker, which is the one that
    collects and orders, sees ``config.option.dist == "no"``)."""
    args = list(config.invocation_params.args)
    for i, arg in enumerate(args):
        if arg.startswith("--dist="):
            return arg.split("=", 1)[1]
        if arg == "--dist" and i + 1 < len(args):
            return args[i + 1]
    return str(getattr(config.option, "dist", "no"))


def pytest_collection_modifyitems(config, items):
    """Under ``--dist loadscope`` (``scripts/test.sh``: each module runs on one worker, so a module-scoped fixture is
    built once): the most expensive modules first (a module's cost: its own ``SLOW_TESTS`` entry plus those of its
    tests), each module's tests in collection order. Other runs keep the collection order (``--dist load`` hands each
    worker a quarter of its share as one consecutive chunk: slowest first would give one worker all of them).

    pytest-xdist's ``--dist loadgroup`` is not used: its ``xdist_group`` marks do nothing with pytest 9 (xdist 3.8
    renames ``item._nodeid``, which pytest 9 no longer reads), so grouped tests were split between the workers and
    their module fixture was built twice."""
    if "loadscope" not in _dist_args(config):
        return
    module_cost = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        module_cost[module] = module_cost.get(module, SLOW_TESTS.get(module, 0)) + SLOW_TESTS.get(item.nodeid, 0)

    def cost(item: pytest.Item) -> float:
        return module_cost[item.nodeid.split("::")[0]]

    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (-cost(item), order[id(item)]))
