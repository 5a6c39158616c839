"""Zero-setup discovery of the clips trainers by nnU-Net's ``nnUNet_extTrainer`` lookup.

nnU-Net v2 (2.8.1, ``nnunetv2/utilities/find_objects.py``) looks a ``-tr NAME`` up in its own trainer package and
then in every folder of ``os.environ["nnUNet_extTrainer"]`` (read when the lookup runs, not when nnunetv2 is
imported). This folder, ``clips_nnunet/nnunet_ext``, is the one clips-nnunet lists there: its only module,
``clips_trainers.py``, imports every clips trainer class (this ``__init__`` is skipped by nnU-Net's walk, which
imports modules, not ``__init__``).

Installing the package (``pip install .`` or ``pip install -e .``) puts ``clips_nnunet_autodiscovery.pth`` into
site-packages (``setup.py`` ships it). Python's ``site`` module runs its one line at every interpreter start::

    import importlib.util as _u; _u.find_spec("clips_nnunet") is None or __import__("clips_nnunet.nnunet_ext")...

that is, :func:`autodiscover` when the package can be imported, and nothing (no "Error processing line 1" at every
Python start) when its files are gone but the ``.pth`` stayed behind, e.g. an editable install whose checkout was
deleted.

:func:`autodiscover` appends this folder to ``nnUNet_extTrainer`` (after the folders the user already lists, which
are kept in their order) unless it is already there or ``CLIPS_NNUNET_NO_AUTODISCOVERY`` is set to anything but
``""``/``0``. Because it changes ``os.environ`` of the starting interpreter, every process nnU-Net starts (DDP
ranks through ``mp.spawn``, augmentation workers, forked or spawned) inherits the value, and spawned interpreters
run the line again (a no-op then). Only the standard library's ``os`` is used: it costs every Python start of the
environment a few microseconds and no import of torch or nnunetv2.
"""
from __future__ import annotations

import os
from typing import MutableMapping, Optional

__all__ = ["SHIM_DIR", "OPT_OUT_VARIABLE", "PTH_NAME", "autodiscover", "autodiscovery_disabled"]

#: This folder, the one nnU-Net's lookup searches (resolved, as ``nnunet_env.EXT_TRAINER_DIR``).
SHIM_DIR = os.path.dirname(os.path.realpath(__file__))
#: Set to ``1`` to keep ``nnUNet_extTrainer`` untouched at interpreter start.
OPT_OUT_VARIABLE = "CLIPS_NNUNET_NO_AUTODISCOVERY"
#: The file the installation puts into site-packages (see ``setup.py``).
PTH_NAME = "clips_nnunet_autodiscovery.pth"


def autodiscovery_disabled(environ: Optional[MutableMapping[str, str]] = None) -> bool:
    """Whether :data:`OPT_OUT_VARIABLE` is set to anything but ``""`` or ``"0"``."""
    environ = os.environ if environ is None else environ
    return environ.get(OPT_OUT_VARIABLE, "").strip() not in ("", "0")


def autodiscover(environ: Optional[MutableMapping[str, str]] = None) -> bool:
    """Append :data:`SHIM_DIR` to ``environ["nnUNet_extTrainer"]`` (default ``os.environ``); return whether the
    value changed. The user's folders stay first and in order; nothing happens when the shim is already listed
    (compared after resolving links) or the opt-out variable is set."""
    environ = os.environ if environ is None else environ
    if autodiscovery_disabled(environ):
        return False
    folders = [p for p in environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p.strip()]
    if any(os.path.realpath(p) == SHIM_DIR for p in folders):
        return False
    environ["nnUNet_extTrainer"] = os.pathsep.join([*folders, SHIM_DIR])
    return True
