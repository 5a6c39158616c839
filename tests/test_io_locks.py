"""DirectoryLock: a second holder fails fast naming the first; a dead holder's lock is free; a lock inherited by a
surviving child of a dead holder is reported as such."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from clips_nnunet.errors import LockedError
from clips_nnunet.io_utils import DirectoryLock

HOLD = """
import sys, time
from clips_nnunet.io_utils import DirectoryLock
lock = DirectoryLock(sys.argv[1], what="dataset 501").acquire()
print("locked", flush=True)
time.sleep(60)
"""


def _start_holder(folder):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_holder_in_same_process_is_refused(tmp_path):
    with DirectoryLock(tmp_path, what="dataset 501") as first:
        assert first.held
        info = json.loads((tmp_path / ".clips.lock").read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        with pytest.raises(LockedError, match=rf"dataset 501 .*\(pid {os.getpid()} on host"):
            DirectoryLock(tmp_path, what="dataset 501").acquire()
    # released: can be taken again, and a clean release leaves no previous holder
    with DirectoryLock(tmp_path) as again:
        assert again.previous_holder is None


def test_other_process_holds_then_dies(tmp_path):
    p = _start_holder(tmp_path)
    try:
        t0 = time.monotonic()
        with pytest.raises(LockedError) as e:
            DirectoryLock(tmp_path, what="dataset 501").acquire()
        assert time.monotonic() - t0 < 1.0  # fails fast, does not wait
        assert f"pid {p.pid} on host {socket.gethostname()}" in str(e.value)
        assert "started 20" in str(e.value)
    finally:
        p.kill()
        p.wait()
    # killed holder: the OS released the flock; the next run sees what the killed run left
    with DirectoryLock(tmp_path) as lock:
        assert lock.previous_holder is not None and lock.previous_holder["pid"] == p.pid


def test_lock_kept_by_orphaned_child_is_reported_as_stale(tmp_path):
    script = HOLD.replace('print("locked", flush=True)', 'import os\nif os.fork() == 0:\n    time.sleep(60)\n'
                          'print("locked", flush=True)')
    p = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    try:
        with pytest.raises(LockedError, match=r"no longer running .*fuser -v"):
            DirectoryLock(tmp_path).acquire()
    finally:
        out = subprocess.run(["fuser", str(tmp_path / ".clips.lock")], capture_output=True, text=True).stdout
        for pid in out.split():
            os.kill(int(pid), signal.SIGKILL)


def test_check_free_names_the_holder_and_creates_nothing(tmp_path):
    """The early check a convert makes before indexing its cohort: a held lock fails at once naming the holder;
    a free one (or a folder never locked) passes and no lock file is created by the check."""
    from clips_nnunet.errors import LockedError
    from clips_nnunet.io_utils import DirectoryLock

    folder = tmp_path / "raw"
    folder.mkdir()
    DirectoryLock(folder, lock_name=".x.lock").check_free()
    assert not (folder / ".x.lock").exists()
    with DirectoryLock(folder, what="dataset 501", lock_name=".x.lock"):
        with pytest.raises(LockedError, match="dataset 501 .* in use by another run"):
            DirectoryLock(folder, what="dataset 501", lock_name=".x.lock").check_free()
    DirectoryLock(folder, lock_name=".x.lock").check_free()  # released: free again
    with DirectoryLock(folder, lock_name=".x.lock"):  # and the probe did not disturb a later holder
        pass
