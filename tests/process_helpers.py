"""Linux process helpers of the interrupt and crash tests: the descendants of a process and whether one is alive
(read from ``/proc``, no extra package)."""
from __future__ import annotations

from pathlib import Path
from typing import List


def descendants(pid: int) -> List[int]:
    """Every process below ``pid`` (children, grandchildren, ...), from each process's parent in ``/proc/*/stat``."""
    children = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                children.setdefault(int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
