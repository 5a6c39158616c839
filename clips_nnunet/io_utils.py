"""Atomic file writes and JSON helpers shared by every sub-package.

A write goes to a temporary file in the destination folder and is then moved into place with ``os.replace``,
so a killed run never leaves a half-written file behind, and readers see either the old or the new file.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(destination: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; on success move it onto ``destination``.

    ``suffix`` keeps the extension that writers such as SimpleITK use to pick a format (e.g. ``.nii.gz``).
    On any exception the temporary file is removed and ``destination`` is untouched.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=suffix or "".join(destination.suffixes),
                               dir=destination.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, destination)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(destination: PathLike, data: bytes) -> None:
    """Write ``data`` to ``destination`` atomically."""
    with atomic_path(destination) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(destination: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``destination`` atomically."""
    atomic_write_bytes(destination, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


def dumps_json(obj: Any) -> str:
    """JSON text with sorted keys and indentation; numpy scalars and arrays become plain numbers and lists."""
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"


def atomic_write_json(destination: PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON (sorted keys) to ``destination`` atomically."""
    atomic_write_text(destination, dumps_json(obj))


def read_json(path: PathLike) -> Any:
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)
