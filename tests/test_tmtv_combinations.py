"""TMTV x curriculum: generated ``nnUNetTrainerTMTVCL<Method>`` classes, their lookup, and one run on stock plans."""
from __future__ import annotations

import os
import pickle
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from clips_nnunet.cli.env import EXT_TRAINER_DIR
from clips_nnunet.trainers.curriculum import nnUNetTrainerCurriculum
from clips_nnunet.trainers.tmtv import combinations
from clips_nnunet.trainers.tmtv.recipe import TMTVRecipe
from nnunet_helpers import run_cli


def test_every_curriculum_trainer_has_a_tmtv_combination():
    curricula = combinations.discover_curriculum_trainers()
    assert "nnUNetTrainerCLSelfPaced" in curricula
    assert set(combinations.COMBINED) == {combinations.tmtv_name(n) for n in curricula}
    for name, cls in combinations.COMBINED.items():
        base = curricula["nnUNetTrainerCL" + name[len("nnUNetTrainerTMTVCL"):]]
        assert cls.__mro__[1:3] == (TMTVRecipe, base)  # recipe overrides first, then the curriculum
        assert issubclass(cls, nnUNetTrainerCurriculum)
        assert getattr(combinations, name) is cls and name in combinations.__all__
        assert cls.__module__ == combinations.__name__ and cls.__qualname__ == name
        own = set(vars(cls)) - {"__module__", "__qualname__", "__doc__", "__abstractmethods__", "_abc_impl"}
        assert not own, f"{name} must hold no code of its own, found {own}"  # one definition: no drift
        assert pickle.loads(pickle.dumps(cls)) is cls
        assert cls.grad_clip_norm == 1.0


def test_nnunet_finds_combinations_through_the_shim():
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    found = recursive_find_python_class(str(EXT_TRAINER_DIR), "nnUNetTrainerTMTVCLSelfPaced", None,
                                        base_folder=str(EXT_TRAINER_DIR), cleanup_imports_from_base_folder=True)
    assert found is combinations.nnUNetTrainerTMTVCLSelfPaced


def test_curricula_added_later_are_combined(tmp_path, monkeypatch):
    pkg = tmp_path / "later_curricula"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "fancy.py").write_text(textwrap.dedent("""
        from clips_nnunet.trainers.self_paced import nnUNetTrainerCLSelfPaced

        class nnUNetTrainerCLFancy(nnUNetTrainerCLSelfPaced):
            exploration_epsilon = 0.2

        class nnUNetTrainerNotACurriculum(nnUNetTrainerCLSelfPaced):
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    found = combinations.discover_curriculum_trainers("later_curricula")
    assert list(found) == ["nnUNetTrainerCLFancy"]
    try:
        cls = combinations.combine(found["nnUNetTrainerCLFancy"])
        assert combinations.nnUNetTrainerTMTVCLFancy is cls and cls.exploration_epsilon == 0.2
    finally:
        delattr(combinations, "nnUNetTrainerTMTVCLFancy")
        combinations.__all__.remove("nnUNetTrainerTMTVCLFancy")
        for name in [m for m in sys.modules if m.startswith("later_curricula")]:
            del sys.modules[name]


TINY = textwrap.dedent('''
    import torch
    from clips_nnunet.trainers.tmtv.combinations import nnUNetTrainerTMTVCLSelfPaced


    class nnUNetTrainerTMTVCLSelfPaced_Tiny(nnUNetTrainerTMTVCLSelfPaced):
        warmup_epochs = 1

        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 2, 2, 1
''')


@pytest.mark.integration
def test_tmtv_self_paced_on_stock_3d_fullres(tiny_preprocessed, tmp_path):
    """The recipe + a curriculum through nnUNetv2_train on nnU-Net's own 3d_fullres plans (CT normalisation)."""
    base, env, dataset_id = tiny_preprocessed
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "tmtv_cl_tiny.py").write_text(TINY)
    env = {**env, "nnUNet_extTrainer": env["nnUNet_extTrainer"] + os.pathsep + str(ext)}
    run_cli(["nnUNetv2_train", str(dataset_id), "3d_fullres", "0", "-tr", "nnUNetTrainerTMTVCLSelfPaced_Tiny",
             "-device", "cpu"], env)
    fold = next(Path(env["nnUNet_results"]).glob(
        "Dataset990_*/nnUNetTrainerTMTVCLSelfPaced_Tiny__nnUNetPlans__3d_fullres/fold_0"))
    assert (fold / "curriculum_history.json").is_file() and (fold / "validation" / "summary.json").is_file()
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["network_weights"]["stem.0.weight"].shape == (32, 5, 3, 3, 3)  # TMTV network with windowing
    assert ckpt["inference_allowed_mirroring_axes"] is None
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "active fraction" in log  # the curriculum ran after its warm-up epoch
