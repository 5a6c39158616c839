"""TMTV x curriculum: the written-out ``nnUNetTrainerTMTVCL<Method>`` classes, their lookup, and one run on stock plans."""
from __future__ import annotations

import os
import pickle
import textwrap
from pathlib import Path

import pytest
import torch

from clips_nnunet.cli.env import EXT_TRAINER_DIR
from clips_nnunet.trainers.curriculum import nnUNetTrainerCurriculum
from clips_nnunet.tmtv import cl_trainers
from clips_nnunet.tmtv.recipe import TMTVRecipe
from nnunet_helpers import run_cli

TRAINERS = Path(__file__).resolve().parents[1] / "clips_nnunet" / "trainers"


def curriculum_trainer_names() -> set:
    """Every ``class nnUNetTrainerCL...`` written in clips_nnunet/trainers (read from the source, not imported)."""
    import ast
    names = set()
    for path in TRAINERS.rglob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and node.name.startswith(cl_trainers.CURRICULUM_PREFIX):
                names.add(node.name)
    return names


def test_every_curriculum_trainer_has_one_explicit_tmtv_combination():
    curricula = curriculum_trainer_names()
    assert "nnUNetTrainerCLSelfPaced" in curricula and len(curricula) >= 37
    combined = {c.__name__: c for c in cl_trainers.TMTV_CL_TRAINERS}
    assert set(combined) == {cl_trainers.tmtv_name(n) for n in curricula}
    source = (Path(cl_trainers.__file__)).read_text(encoding="utf-8")
    for name, cls in combined.items():
        assert f"class {name}(TMTVRecipe, " in source  # written out: grep finds it
        base = getattr(cl_trainers, "nnUNetTrainerCL" + name[len("nnUNetTrainerTMTVCL"):])
        assert cls.__mro__[1:3] == (TMTVRecipe, base)  # recipe overrides first, then the curriculum
        assert issubclass(cls, nnUNetTrainerCurriculum)
        assert cls.__module__ == cl_trainers.__name__ and cls.__qualname__ == name
        own = set(vars(cls)) - {"__module__", "__qualname__", "__doc__", "__abstractmethods__", "_abc_impl",
                                "__firstlineno__", "__static_attributes__"}
        assert not own, f"{name} must hold no code of its own, found {own}"  # one definition: no drift
        assert pickle.loads(pickle.dumps(cls)) is cls
        assert cls.grad_clip_norm == 1.0


def test_tmtv_name():
    assert cl_trainers.tmtv_name("nnUNetTrainerCLSelfPaced") == "nnUNetTrainerTMTVCLSelfPaced"
    with pytest.raises(ValueError, match="does not start with"):
        cl_trainers.tmtv_name("nnUNetTrainer")


def test_nnunet_finds_combinations_through_the_shim():
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    found = recursive_find_python_class(str(EXT_TRAINER_DIR), "nnUNetTrainerTMTVCLDIH", None,
                                        base_folder=str(EXT_TRAINER_DIR), cleanup_imports_from_base_folder=True)
    assert found is cl_trainers.nnUNetTrainerTMTVCLDIH


TINY = textwrap.dedent('''
    import torch
    from clips_nnunet.tmtv.cl_trainers import nnUNetTrainerTMTVCLSelfPaced


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
