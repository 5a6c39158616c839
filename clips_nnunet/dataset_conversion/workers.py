"""Worker processes of conversion (``-j N``: header indexing and study conversion) that end with their parent and
stop at once on Ctrl-C.

:func:`process_pool` is a ``ProcessPoolExecutor`` (fork on POSIX) whose workers ignore SIGINT (the terminal sends it
to the whole process group; the parent decides) and die with the parent (:func:`die_with_parent`). On any
exception in its ``with`` body, Ctrl-C included, :func:`stop_pool` cancels the queue and ends the workers (SIGTERM,
then SIGKILL) before the exception goes on, so a dataset lock held around the pool outlives every worker.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator, Optional


def die_with_parent(parent_pid: int) -> None:
    """Make this (worker) process end when ``parent_pid`` ends; call it first in a process pool's initializer.

    On Linux the kernel sends SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread
    polls the parent pid every second. A parent that died before this call ends the worker at once.
    """
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        import ctypes
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        import time
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    if not sys.platform.startswith("linux"):
        threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _pool_worker_init(parent_pid: int, initializer: Optional[Callable[..., None]], initargs: tuple) -> None:
    """Initializer of every :func:`process_pool` worker: Ctrl-C is the parent's to handle (the terminal sends
    SIGINT to the whole process group), the worker ends with its parent, then the caller's initializer."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)
    if initializer is not None:
        initializer(*initargs)


def stop_pool(pool: Any, grace_s: float = 5.0) -> None:
    """Stop a ``ProcessPoolExecutor`` now: queued jobs are cancelled, running workers get SIGTERM, then SIGKILL
    after ``grace_s``, and this returns only when every worker has exited. A further Ctrl-C meanwhile is ignored
    (it can neither hang the stop nor leave workers behind)."""
    import signal
    import threading
    import time

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in processes:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in processes:
            if proc.is_alive():
                proc.kill()
                proc.join()
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def process_pool(workers: int, initializer: Optional[Callable[..., None]] = None, initargs: tuple = ()
                 ) -> Iterator[Any]:
    """A ``ProcessPoolExecutor`` (fork on POSIX) whose workers ignore Ctrl-C and end with this process.

    On normal exit it waits for its jobs. On an exception, Ctrl-C included, it does not run the rest of the queue
    (what ``with ProcessPoolExecutor()`` does): :func:`stop_pool` ends the workers within seconds and only then
    is the exception passed on, so a lock held around the pool is released after the last worker has exited.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_pool_worker_init,
                               initargs=(os.getpid(), initializer, tuple(initargs)))
    try:
        yield pool
    except BaseException:
        stop_pool(pool)
        raise
    pool.shutdown(wait=True)
