"""Drift of the nnU-Net methods clips-nnunet re-implements or relies on line by line.

``clips_nnunet/trainers/base.py`` carries its own copies of ``nnUNetTrainer.train_step``, ``get_dataloaders`` and
``save_checkpoint`` (with hooks added) and works around ``load_checkpoint``; ``trainers/data_loader.py`` relies on
``nnUNetDataLoader.generate_train_batch`` drawing its cases through ``get_indices()``. When a new nnU-Net changes one
of them, our copy silently keeps the old behaviour. This test hashes the upstream source of each (docstrings,
comments and formatting removed: ``ast.unparse``) and compares it with the hash recorded for the installed
nnunetv2 version. A mismatch names the method and what to re-check; after re-checking (and porting the change),
record the new hash under the new version in :data:`UPSTREAM_HASHES`.
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.metadata
import inspect
import textwrap
from typing import Dict, Tuple

import pytest

#: (module, class, method) -> what to re-check in clips-nnunet when the upstream method changes.
WATCHED: Dict[Tuple[str, str, str], str] = {
    ("nnunetv2.training.nnUNetTrainer.nnUNetTrainer", "nnUNetTrainer", "train_step"):
        "nnUNetTrainerClipsBase.train_step (trainers/base.py) is a copy with the compute_loss / after_train_forward "
        "hooks: port the upstream change (AMP, grad scaler, clipping, returned dict)",
    ("nnunetv2.training.nnUNetTrainer.nnUNetTrainer", "nnUNetTrainer", "get_dataloaders"):
        "nnUNetTrainerClipsBase.get_dataloaders and build_train_data_loader (trainers/base.py) rebuild it with the "
        "curriculum data loader and seeded workers: port the upstream change (transforms, loaders, augmenters)",
    ("nnunetv2.training.nnUNetTrainer.nnUNetTrainer", "nnUNetTrainer", "save_checkpoint"):
        "nnUNetTrainerClipsBase.save_checkpoint (trainers/base.py) writes the same checkpoint keys plus "
        "clips_extras: add any new key so nnUNetv2_train --c and nnUNetv2_predict still load our checkpoints",
    ("nnunetv2.training.nnUNetTrainer.nnUNetTrainer", "nnUNetTrainer", "load_checkpoint"):
        "nnUNetTrainerClipsBase.load_checkpoint (trainers/base.py) saves a dict checkpoint to a file because 2.8.1 "
        "cannot load from a dict: check whether the workaround is still needed and that clips_extras is restored",
    ("nnunetv2.training.dataloading.data_loader", "nnUNetDataLoader", "generate_train_batch"):
        "CurriculumDataLoader (trainers/data_loader.py) overrides get_indices() only: check that the upstream batch "
        "still draws its cases through get_indices() and still returns 'keys'",
}

#: nnunetv2 version -> "Class.method" -> sha256 (first 16 hex digits) of the normalised upstream source.
UPSTREAM_HASHES: Dict[str, Dict[str, str]] = {
    "2.8.1": {
        "nnUNetTrainer.train_step": "e5ba754489b9d7d7",
        "nnUNetTrainer.get_dataloaders": "bd8496444af58fb0",
        "nnUNetTrainer.save_checkpoint": "9e8750076006db35",
        "nnUNetTrainer.load_checkpoint": "ec7cd0fea5090a84",
        "nnUNetDataLoader.generate_train_batch": "59a67401a54c5ba1",
    },
}


def hash_source(text: str) -> str:
    """sha256 (16 hex digits) of Python source without docstrings, comments or formatting."""
    tree = ast.parse(textwrap.dedent(text))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.unparse(tree).encode("utf-8")).hexdigest()[:16]


def normalised_source_hash(function) -> str:
    """:func:`hash_source` of ``function``'s source (``inspect.getsource``)."""
    return hash_source(inspect.getsource(function))


def drift_messages(version: str) -> list:
    """One line per watched method whose upstream source no longer matches the hash recorded for ``version``."""
    recorded = UPSTREAM_HASHES[version]
    changed = []
    for (module, cls, method), recheck in WATCHED.items():
        name = f"{cls}.{method}"
        got = normalised_source_hash(getattr(getattr(importlib.import_module(module), cls), method))
        if recorded.get(name) != got:
            changed.append(f"- {module}.{name} changed in nnunetv2 {version} (hash {got}, recorded "
                           f"{recorded.get(name)}): re-check {recheck}")
    return changed


def _ref_changed(self, batch):
    return {"loss": 0}


def test_normalisation_ignores_comments_docstrings_and_layout_only():
    plain = 'def f(x):\n    """doc"""\n    # a comment\n    return x + 1\n'
    layout = "    def f( x ):\n        return (x +\n                1)\n"
    changed = "def f(x):\n    return x + 2\n"
    assert hash_source(plain) == hash_source(layout) != hash_source(changed)


def test_a_changed_upstream_method_fails_naming_it(monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    version = next(iter(UPSTREAM_HASHES))
    monkeypatch.setattr(nnUNetTrainer, "train_step", _ref_changed)
    messages = [m for m in drift_messages(version) if "train_step" in m]
    assert len(messages) == 1
    assert "nnUNetTrainer.train_step changed" in messages[0] and "trainers/base.py" in messages[0]


def test_upstream_methods_we_copy_are_unchanged():
    version = importlib.metadata.version("nnunetv2")
    if version not in UPSTREAM_HASHES:
        pytest.fail(f"nnunetv2 {version} is not in the drift table of tests/test_nnunet_drift.py (known: "
                    f"{sorted(UPSTREAM_HASHES)}): re-check every method listed in WATCHED against this version, port "
                    f"what changed, then record its hashes under '{version}'")
    changed = drift_messages(version)
    assert not changed, "nnU-Net methods that clips-nnunet copies changed upstream:\n" + "\n".join(changed)
