"""nnU-Net's own trainer lookup finds the clips trainers through the nnUNet_extTrainer shim (keeping their real
module, so they pickle), users' own subclasses in their own ext folder (os.pathsep list), and works in a process
started with the spawn method (DDP rank processes)."""
from __future__ import annotations

import multiprocessing as mp
import pickle
import textwrap

import pytest

from clips_nnunet.cli.env import ext_trainer_value

CLIPS_TRAINERS = ["nnUNetTrainerClipsBase", "nnUNetTrainerCLSelfPaced", "nnUNetTrainerCLSelfPacedLinear",
                  "nnUNetTrainerCLSelfPacedLog", "nnUNetTrainerCLSelfPacedMixture", "nnUNetTrainerCLSelfPacedRandom",
                  "nnUNetTrainerCLSelfPacedAnti"]

USER_MODULE = textwrap.dedent('''
    from clips_nnunet.trainers.self_paced_trainers import nnUNetTrainerCLSelfPaced

    class nnUNetTrainerMySelfPaced(nnUNetTrainerCLSelfPaced):
        pacing = "quadratic"
        pacing_b = 0.5
''')


@pytest.fixture
def ext_env(tmp_path, monkeypatch):
    user = tmp_path / "my_trainers"
    user.mkdir()
    (user / "my_trainer_module.py").write_text(USER_MODULE)
    monkeypatch.setenv("nnUNet_extTrainer", ext_trainer_value(str(user)))
    return user


@pytest.mark.parametrize("name", CLIPS_TRAINERS)
def test_lookup_finds_clips_trainers_with_real_module(ext_env, name):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    import clips_nnunet.trainers.self_paced_trainers as sp
    import clips_nnunet.trainers.base as base

    cls = recursive_find_trainer_class_by_name(name)
    assert cls.__name__ == name
    assert cls.__module__.startswith("clips_nnunet.trainers.")
    assert cls is getattr(sp, name, None) or cls is getattr(base, name, None)   # the same class object
    assert pickle.loads(pickle.dumps(cls)) is cls


def test_lookup_finds_user_subclass_in_own_ext_folder(ext_env):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from clips_nnunet.trainers.self_paced_trainers import nnUNetTrainerCLSelfPaced

    cls = recursive_find_trainer_class_by_name("nnUNetTrainerMySelfPaced")
    assert issubclass(cls, nnUNetTrainerCLSelfPaced) and cls.pacing == "quadratic"
    with pytest.raises(RuntimeError, match="Could not find requested nnunet trainer"):
        recursive_find_trainer_class_by_name("nnUNetTrainerDoesNotExist")


def _lookup_in_child(queue, name):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    cls = recursive_find_trainer_class_by_name(name)
    queue.put((cls.__module__, cls.__name__, [c.__name__ for c in cls.__mro__[:3]]))


def test_lookup_in_spawned_process(ext_env):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_lookup_in_child, args=(queue, "nnUNetTrainerCLSelfPacedAnti"))
    proc.start()
    module, name, mro = queue.get(timeout=300)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert (module, name) == ("clips_nnunet.trainers.self_paced_trainers", "nnUNetTrainerCLSelfPacedAnti")
    assert mro[1] == "nnUNetTrainerCLSelfPaced"


def test_shim_folder_holds_only_the_shim():
    from clips_nnunet.cli.env import EXT_TRAINER_DIR
    files = sorted(p.name for p in EXT_TRAINER_DIR.iterdir() if p.suffix == ".py")
    assert files == ["__init__.py", "clips_trainers.py"]   # nnU-Net's walk imports modules, never __init__
    import pkgutil
    assert [m.name for m in pkgutil.iter_modules([str(EXT_TRAINER_DIR)])] == ["clips_trainers"]


def test_shim_exports_every_trainer_class_of_the_package():
    """Every ``nnUNetTrainer*`` class defined in ``clips_nnunet.trainers`` or ``clips_nnunet.tmtv`` is reachable through the shim that
    nnU-Net's lookup imports (a class left out cannot be named with ``-tr``)."""
    import importlib
    import inspect
    import pkgutil

    import clips_nnunet.nnunet_ext.clips_trainers as shim
    import clips_nnunet.tmtv as tmtv
    import clips_nnunet.trainers as trainers

    defined = set()
    for package in (trainers, tmtv):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            defined |= {name for name, obj in vars(module).items() if inspect.isclass(obj)
                        and name.startswith("nnUNetTrainer") and obj.__module__ == module.__name__}
    assert {"nnUNetTrainerTMTVFinetune", "nnUNetTrainerTMTVCLDIHAnti", "nnUNetTrainerCLSelfPaced"} <= defined
    abstract = {"nnUNetTrainerCurriculum", "nnUNetTrainerCurriculumArm"}  # bases without a schedule of their own
    missing = sorted(name for name in defined - abstract if not hasattr(shim, name))
    assert not missing, f"add these to clips_nnunet/nnunet_ext/clips_trainers.py: {missing}"
