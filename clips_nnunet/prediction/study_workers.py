"""Worker processes of ``predict``: each converts its studies (DICOM -> SUV PET and CT on the PET grid) and later
writes their outputs, while the main process runs nnU-Net.

Why processes and not threads: reading DICOM headers, the SUV factors, highdicom's SEG and pydicom's writers are
pure Python. In threads they take turns with each other and with nnU-Net's own Python (the GIL); in processes they
run beside the inference on the other cores of the machine.

Why the same worker converts a study and writes its outputs: the SEG and RTSTRUCT reference the PET headers the
conversion parsed (``PreparedStudy.pet_headers``, one pydicom dataset per slice). Sending those between processes
costs about as much as parsing them again (pickling 267 headers: 0.6 s of CPU); the worker keeps them instead. Only
the two images go to the main process (pickled arrays, ~0.1 s for a whole-body study) and only the mask comes back.

Study ``k`` goes to worker ``k % n``; each worker handles its commands in order (convert ``k``, write ``k``,
convert ``k + n``, ...), so with ``n`` workers ``n - 1`` studies are converted ahead while one is predicted, and
each worker holds at most two studies in memory. A worker ignores Ctrl-C (the parent decides) and dies with its
parent (:func:`clips_nnunet.dataset_conversion.workers.die_with_parent`). A worker that ends unexpectedly (killed,
out of memory) fails the studies it held, each with one line, and is replaced for the next ones.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_for
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["StudyWorkers", "default_workers", "WorkerReply", "run_pipeline"]

#: Most worker processes chosen by default: each holds up to two whole-body studies (~1-2 GB each while converting).
MAX_DEFAULT_WORKERS = 4


def default_workers() -> int:
    """Worker processes for ``predict``: one core is left to nnU-Net's process; at least 2 (one study converted
    ahead while one is predicted), at most :data:`MAX_DEFAULT_WORKERS`."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(2, min(MAX_DEFAULT_WORKERS, cores - 1))


@dataclass
class WorkerReply:
    """What a worker sends back for one command: ``kind`` ``converted`` (``payload``: the CT on the PET grid and the
    SUV PET, or a failed ``PatientResult``) or ``written`` (``payload``: the study's ``PatientResult``); ``start`` and
    ``end`` on the machine's monotonic clock (``time.perf_counter``), ``cpu`` the worker's CPU seconds for it."""

    kind: str
    k: int
    payload: Any
    start: float
    end: float
    cpu: float


def _worker_loop(conn: Any, parent_pid: int, convert: Callable[..., Any], write: Callable[..., Any]) -> None:
    """Body of a worker process: serve ``convert`` / ``write`` / ``drop`` / ``index`` commands until ``stop`` or EOF.

    ``convert(k, item) -> (prepared or None, payload)``; ``write(k, item, prepared, outputs) -> PatientResult``.
    Both never raise for a study's own problems (they return its failure)."""
    import signal

    from clips_nnunet.dataset_conversion.workers import die_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)
    _import_output_modules()  # while the main process indexes the input
    kept: Dict[int, Any] = {}
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        command = message[0]
        if command == "stop":
            return
        k = message[1]
        start, cpu = time.perf_counter(), time.process_time()
        if command == "convert":
            prepared, payload = convert(k, message[2])
            if prepared is not None:
                kept[k] = (message[2], prepared)
            conn.send(WorkerReply("converted", k, payload, start, time.perf_counter(), time.process_time() - cpu))
        elif command == "write":
            item, prepared = kept.pop(k)
            result = write(k, item, prepared, message[2])
            conn.send(WorkerReply("written", k, result, start, time.perf_counter(), time.process_time() - cpu))
        elif command == "drop":
            kept.pop(k, None)
        elif command == "index":
            from clips_nnunet.dataset_conversion.index import read_chunk
            records = read_chunk(message[2])
            conn.send(WorkerReply("indexed", k, records, start, time.perf_counter(), time.process_time() - cpu))


def _import_output_modules() -> None:
    """Import what the outputs need (highdicom, matplotlib, scipy.spatial: seconds on a busy machine) when the
    worker starts, before its first study."""
    import highdicom  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import scipy.spatial  # noqa: F401


class StudyWorkers:
    """``n`` worker processes (fork) serving :func:`_worker_loop`; a context manager that stops them on exit.

    ``convert(k, item)`` and ``write(k, item, prepared, outputs)`` run in the workers (module-level functions or
    closures: the workers are forked, so nothing is pickled but the commands and replies). ``dead(k, kind,
    reason)`` makes the failure reply of a study whose worker ended unexpectedly (``kind``: ``converted`` or
    ``written``; ``reason``: one line). The workers also read header chunks for the index (:meth:`map_chunks`).
    """

    def __init__(self, n: int, convert: Callable[..., Any], write: Callable[..., Any],
                 dead: Callable[[int, str, str], Any]) -> None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"workers must be a positive integer, got {n!r}")
        import multiprocessing as mp
        self._ctx = mp.get_context("fork")
        self.n = n
        self._convert, self._write, self._dead = convert, write, dead
        self._slots: List[Optional[Tuple[Any, Any]]] = [None] * n
        self._waiting: List[List[Tuple[str, int]]] = [[] for _ in range(n)]  # replies each worker still owes
        self._replies: Dict[Tuple[str, int], WorkerReply] = {}
        self._chunks = 0  # header chunks sent so far (:meth:`map_chunks`)
        #: CPU seconds the workers spent reading headers for :meth:`map_chunks`
        self.index_cpu = 0.0

    def __enter__(self) -> "StudyWorkers":
        for j in range(self.n):
            self._start(j)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(graceful=exc[0] is None)

    def _start(self, j: int) -> None:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_loop, args=(child, os.getpid(), self._convert, self._write),
                                 name=f"clips-predict-worker-{j}", daemon=True)
        proc.start()
        child.close()
        self._slots[j] = (proc, parent)

    def _send(self, k: int, message: tuple, reply: Optional[str]) -> None:
        j = k % self.n
        proc, conn = self._slots[j]
        try:
            conn.send(message)
        except (BrokenPipeError, EOFError, OSError):
            pass  # the worker is gone: noticed when its reply is awaited
        if reply is not None:
            self._waiting[j].append((reply, k))

    def convert(self, k: int, item: Any) -> None:
        """Queue study ``k``'s conversion on its worker."""
        self._send(k, ("convert", k, item), "converted")

    def write(self, k: int, outputs: Any) -> None:
        """Queue the outputs of study ``k`` (converted earlier by the same worker); ``outputs`` (the mask, ...)
        goes to the worker's ``write``."""
        self._send(k, ("write", k, outputs), "written")

    def drop(self, k: int) -> None:
        """Let study ``k``'s worker forget it (its prediction failed)."""
        self._send(k, ("drop", k), None)

    def map_chunks(self, chunks: List[List[str]]) -> List[Any]:
        """Header records of each chunk of DICOM files (:func:`clips_nnunet.dataset_conversion.index.read_chunk`),
        read by the workers in parallel; for ``index_dicom_folder(map_chunks=...)``. Raises
        :class:`clips_nnunet.errors.ClipsError` when a worker ends while reading."""
        from clips_nnunet.errors import ClipsError

        first = self._chunks
        self._chunks += len(chunks)
        # one chunk per worker at a time: a worker gets its next chunk only once its reply has been read, so
        # neither side can block on a full pipe while the other blocks sending to it
        for c in range(min(self.n, len(chunks))):
            self._send(first + c, ("index", first + c, chunks[c]), "indexed")
        parts = []
        for c in range(len(chunks)):
            r = self.reply("indexed", first + c)
            if c + self.n < len(chunks):
                self._send(first + c + self.n, ("index", first + c + self.n, chunks[c + self.n]), "indexed")
            if isinstance(r.payload, str):
                raise ClipsError(f"reading the DICOM headers failed: {r.payload}")
            self.index_cpu += r.cpu
            parts.append(r.payload)
        return parts

    def reply(self, kind: str, k: int) -> WorkerReply:
        """Wait for the ``kind`` reply of study ``k`` (replies the worker sends before it are kept for later)."""
        j = k % self.n
        while (kind, k) not in self._replies:
            proc, conn = self._slots[j]
            wait_for([conn, proc.sentinel])
            try:
                r = conn.recv() if conn.poll() else None
            except (EOFError, OSError):  # the worker is gone (or going) and its pipe is empty
                self._replace(j)
                continue
            if r is None:
                if not proc.is_alive():
                    self._replace(j)
                continue
            self._waiting[j].remove((r.kind, r.k))
            self._replies[(r.kind, r.k)] = r
        return self._replies.pop((kind, k))

    def _replace(self, j: int) -> None:
        """Worker ``j`` ended: every reply it owed becomes its study's failure, and a new worker takes its place."""
        proc, conn = self._slots[j]
        proc.join(5)
        reason = (f"the conversion/output worker process ended unexpectedly (exit code {proc.exitcode}; out of "
                  "memory?); predict this study again")
        now = time.perf_counter()
        for kind, k in self._waiting[j]:
            payload = reason if kind == "indexed" else self._dead(k, kind, reason)
            self._replies[(kind, k)] = WorkerReply(kind, k, payload, now, now, 0.0)
        self._waiting[j] = []
        conn.close()
        self._start(j)

    def close(self, graceful: bool = True) -> None:
        """Stop every worker: ``stop`` and a join when ``graceful``, else (an error, Ctrl-C) SIGTERM then SIGKILL."""
        for slot in self._slots:
            if slot is None:
                continue
            proc, conn = slot
            if graceful:
                try:
                    conn.send(("stop",))
                except (BrokenPipeError, OSError):
                    pass
        deadline = time.monotonic() + (30.0 if graceful else 5.0)
        for slot in self._slots:
            if slot is None:
                continue
            proc, conn = slot
            if not graceful and proc.is_alive():
                proc.terminate()
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
        self._slots = [None] * self.n


def run_pipeline(workers: StudyWorkers, items: Sequence[Any], predict: Callable[[int, Any], Any],
                 on_reply: Callable[[WorkerReply], None], waited: Callable[[str, int, float, float], None],
                 progress: Optional[Callable[[], None]] = None, queued: int = 0) -> None:
    """Predict the studies ``items`` through ``workers``: study ``k``'s conversion reply -> ``predict(k, images)``
    in this process -> its outputs in the worker, with the next studies converted meanwhile.

    ``predict`` returns what the worker's ``write`` needs (the mask, ...), or None when the study failed (its
    failure already recorded). ``on_reply`` gets
    every reply (failed conversions, written outputs, and the timings of each); ``waited(key, k, start, end)`` is
    told when this process waited for study ``k``'s conversion (``wait_conversion``, receiving its images included)
    or outputs (``wait_outputs``).
    ``queued``: the first studies whose conversions the caller has queued already (e.g. before loading a model).
    """
    n_studies = len(items)
    for k in range(queued, min(workers.n, n_studies)):
        workers.convert(k, items[k])
    written: List[int] = []
    for k in range(n_studies):
        t = time.perf_counter()
        reply = workers.reply("converted", k)
        waited("wait_conversion", k, t, time.perf_counter())
        on_reply(reply)
        images = reply.payload
        outputs = predict(k, images) if isinstance(images, tuple) else None
        if outputs is not None:
            workers.write(k, outputs)
            written.append(k)
        elif isinstance(images, tuple):
            workers.drop(k)
        if k + workers.n < n_studies:  # behind this study's outputs on the same worker
            workers.convert(k + workers.n, items[k + workers.n])
        if progress is not None:
            progress()
    for k in written:
        t = time.perf_counter()
        reply = workers.reply("written", k)
        waited("wait_outputs", k, t, time.perf_counter())
        on_reply(reply)

