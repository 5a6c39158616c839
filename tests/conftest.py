"""Shared fixtures. ``tiny_preprocessed`` plans and preprocesses one tiny synthetic dataset once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from clips_nnunet.synthetic.raw import make_synthetic_raw_dataset
from nnunet_helpers import nnunet_environment, run_cli

TINY_DATASET_ID = 990


@pytest.fixture(scope="session")
def tiny_preprocessed(tmp_path_factory):
    """(base folder, env, dataset id): Dataset990 with 12 training cases of 32^3, planned and preprocessed
    (3d_fullres). Tests must copy what they change; they may add trainers' results under nnUNet_results."""
    base = tmp_path_factory.mktemp("nnunet_tiny")
    env = nnunet_environment(base)
    make_synthetic_raw_dataset(Path(env["nnUNet_raw"]), TINY_DATASET_ID)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(TINY_DATASET_ID), "-c", "3d_fullres", "-np", "1",
             "--verify_dataset_integrity"], {**env, "nnUNet_n_proc_DA": "1"})  # planner: torch.set_num_threads(DA)
    return base, env, TINY_DATASET_ID


@pytest.fixture
def fresh_nnunet_env(tmp_path):
    """A private, empty nnU-Net folder triple and CLI environment for one test."""
    return tmp_path, nnunet_environment(tmp_path)
