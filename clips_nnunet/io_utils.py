"""Verified atomic file writes, JSON helpers and a folder lock shared by every sub-package.

A write goes to a temporary file in the destination folder, is *verified* (some C++ writers, e.g. SimpleITK's
NIfTI writer, do not raise when the disk fills: they leave a truncated file), flushed to disk with ``fsync`` and
only then moved into place with ``os.replace``. A killed run or a full disk therefore never publishes a
half-written file: readers see either the old or the new, complete file. A write that fails raises
:class:`~clips_nnunet.errors.WriteError` naming the file, the reason and what to do.

:class:`DirectoryLock` keeps two runs from writing into the same dataset or output folder at once.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import gzip
import json
import os
import shutil
import socket
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union

import numpy as np

from clips_nnunet.errors import ClipsError, LockedError, WriteError

PathLike = Union[str, os.PathLike]
Verifier = Callable[[Path], None]

_CHUNK = 1 << 20
_PNG_END = b"IEND\xaeB`\x82"


def _process_umask() -> int:
    """The process umask, read once at import (``os.umask`` can only be read by setting it, which is not safe
    once threads run)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: published files get the permissions of an ordinary ``open()`` (``tempfile.mkstemp`` creates them 0600)
_FILE_MODE = 0o666 & ~_process_umask()


# ----------------------------------------------------------------------------------------------------------------------
# verification of written files
# ----------------------------------------------------------------------------------------------------------------------
def _read_stream(path: Path, compressed: bool, header_bytes: int = 0) -> Tuple[bytes, int]:
    """The first ``header_bytes`` bytes and the total (uncompressed) size; a gzip stream is read to its end, which
    checks its CRC and length (raises ``EOFError`` / ``gzip.BadGzipFile`` on a truncated or damaged stream)."""
    opener = gzip.open if compressed else open
    with opener(path, "rb") as f:
        head = f.read(header_bytes) if header_bytes else b""
        total = len(head)
        while True:
            block = f.read(_CHUNK)
            if not block:
                break
            total += len(block)
    return head, total


def nifti_header_shape(head: bytes) -> Tuple[Tuple[int, ...], int, int]:
    """(dims x, y, z, ..., bits per voxel, vox_offset) from the first bytes of a NIfTI-1 or NIfTI-2 file."""
    if len(head) < 348:
        raise ValueError(f"the file holds {len(head)} bytes, less than a NIfTI header")
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0]
        if size == 348 and len(head) >= 348:
            dim = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            vox_offset = int(struct.unpack(endian + "f", head[108:112])[0])
        elif size == 540 and len(head) >= 540:
            dim = struct.unpack(endian + "8q", head[16:80])
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            vox_offset = struct.unpack(endian + "q", head[168:176])[0]
        else:
            continue
        if not 1 <= dim[0] <= 7:
            raise ValueError(f"NIfTI header has dim[0]={dim[0]}")
        return tuple(int(d) for d in dim[1:dim[0] + 1]), int(bitpix), int(vox_offset)
    raise ValueError("not a NIfTI-1/NIfTI-2 header")


def verify_nifti(path: PathLike, expected_shape_xyz: Optional[Tuple[int, ...]] = None) -> Tuple[int, ...]:
    """Check that a ``.nii`` / ``.nii.gz`` file is complete: header readable, gzip stream complete (CRC), and the
    data as long as the header's dimensions say. Returns the dimensions (x, y, z, ...); raises ``ValueError``."""
    path = Path(path)
    compressed = path.name.lower().endswith(".gz")
    try:
        head, total = _read_stream(path, compressed, header_bytes=544)
    except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"incomplete or damaged compressed stream ({e})") from e
    shape, bitpix, vox_offset = nifti_header_shape(head)
    expected = vox_offset + int(np.prod(shape, dtype=np.int64)) * bitpix // 8
    if total < expected:
        raise ValueError(f"{total} bytes of image data, the header needs {expected}")
    if expected_shape_xyz is not None and tuple(shape[:len(expected_shape_xyz)]) != tuple(expected_shape_xyz):
        raise ValueError(f"header size {shape} differs from the image written {tuple(expected_shape_xyz)}")
    return shape


def verify_written_nifti(path: PathLike, shape_xyz: Tuple[int, ...], voxels: Optional[Any] = None) -> None:
    """Check a NIfTI file just written from an image of size ``shape_xyz`` whose voxel buffer (x fastest, as
    NIfTI stores it) is ``voxels`` (e.g. ``sitk.GetArrayViewFromImage(image)``); raises ``ValueError``.

    ``.nii.gz``: the header's size must be ``shape_xyz``, and the gzip trailer (CRC-32 and length of the
    uncompressed data, written by the writer after the last byte) must equal the CRC-32 and length of the header
    and ``voxels``: the writer wrote all of our data (a truncated file ends inside the compressed stream and has no
    such trailer). This costs a CRC of the data (~0.05 s for 56 MB) instead of decompressing the file again (~0.2 s);
    when the fast check does not match (another writer layout, no ``voxels``) the whole stream is decompressed
    (:func:`verify_nifti`), so a complete file is never refused. ``.nii``: :func:`verify_nifti`.
    """
    path = Path(path)
    if path.name.lower().endswith(".gz") and voxels is not None:
        try:
            with gzip.open(path, "rb") as f:
                head = f.read(544)
                shape, bitpix, vox_offset = nifti_header_shape(head)
                if len(head) < vox_offset:
                    head += f.read(vox_offset - len(head))
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(f"incomplete or damaged compressed stream ({e})") from e
        if tuple(shape[:len(shape_xyz)]) != tuple(shape_xyz):
            raise ValueError(f"header size {shape} differs from the image written {tuple(shape_xyz)}")
        data = memoryview(np.ascontiguousarray(voxels)).cast("B")
        expected = vox_offset + int(np.prod(shape, dtype=np.int64)) * bitpix // 8
        if len(data) == expected - vox_offset:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() >= 18:
                    f.seek(-8, os.SEEK_END)
                    crc, isize = struct.unpack("<II", f.read(8))
                    if isize == expected % (1 << 32) and crc == zlib.crc32(data, zlib.crc32(head[:vox_offset])):
                        return
    verify_nifti(path, tuple(shape_xyz))


def _gzip_trailer_size(path: Path) -> Optional[int]:
    """ISIZE of a gzip file (its last 4 bytes: the uncompressed length modulo 2**32), None for a too-short file."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 18:  # 10-byte header + 8-byte trailer
            return None
        f.seek(-4, os.SEEK_END)
        return struct.unpack("<I", f.read(4))[0]


def check_nifti_complete(path: PathLike) -> Tuple[int, ...]:
    """Fast check that a ``.nii`` / ``.nii.gz`` file holds all the image data its header promises, before a reader
    (SimpleITK zero-fills a short file without an error) gets it. Returns the dimensions; raises ``ValueError``.

    ``.nii``: the file size must reach ``vox_offset + voxels x bytes``. ``.nii.gz``: only the header is
    decompressed, and the gzip trailer (the last 4 bytes: uncompressed length modulo 2**32) must equal that size;
    a truncated file ends inside the compressed data, whose last 4 bytes match by chance with probability 2**-32.
    A file whose trailer differs (several gzip members, padding) gets the full check of :func:`verify_nifti`
    (the whole stream decompressed, CRC and length), so no complete file is ever refused.
    """
    path = Path(path)
    compressed = path.name.lower().endswith(".gz")
    try:
        if compressed:
            with gzip.open(path, "rb") as f:
                head = f.read(544)
        else:
            with open(path, "rb") as f:
                head = f.read(544)
    except (EOFError, zlib.error) as e:
        raise ValueError(f"incomplete or damaged compressed stream ({e})") from e
    except OSError as e:
        if isinstance(e, gzip.BadGzipFile):
            raise ValueError(f"not a gzip file or damaged ({e})") from e
        raise
    shape, bitpix, vox_offset = nifti_header_shape(head)
    expected = vox_offset + int(np.prod(shape, dtype=np.int64)) * bitpix // 8
    if not compressed:
        size = path.stat().st_size
        if size < expected:
            raise ValueError(f"{size} bytes, the header needs {expected}: the file is truncated")
        return shape
    if _gzip_trailer_size(path) == expected % (1 << 32):
        return shape
    return verify_nifti(path)


def read_image(path: PathLike, pixel_type: Optional[int] = None, what: str = "image"):
    """Read an image file with SimpleITK after checking that it is complete: the one reader of NIfTI (and other
    single-file) images for conversion, predictions and references.

    ``.nii`` / ``.nii.gz`` files are checked by :func:`check_nifti_complete` first (SimpleITK reads a truncated
    NIfTI as zeros, without an error). ``pixel_type``: a SimpleITK pixel type to cast to on reading. ``what``
    names the file's role in the message. Raises :class:`~clips_nnunet.errors.DatasetError` ("cannot read <what>
    <path>: <reason>"), one line; callers that report to a pseudonymous record replace the path themselves.
    """
    import SimpleITK as sitk

    from clips_nnunet.errors import DatasetError

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"cannot read {what} {path}: the file does not exist")
    try:
        if path.name.lower().endswith((".nii", ".nii.gz")):
            check_nifti_complete(path)
    except (ValueError, OSError) as e:
        raise DatasetError(f"cannot read {what} {path}: incomplete or damaged file ({e}); copy or write it again"
                           ) from e
    try:
        if pixel_type is None:
            return sitk.ReadImage(str(path))
        return sitk.ReadImage(str(path), pixel_type)
    except RuntimeError as e:
        text = str(e).strip().splitlines()
        raise DatasetError(f"cannot read {what} {path}: {text[-1][:200] if text else e}") from e


#: Largest difference (mm) of origins, and of voxel spacings, for two images to be on the same grid; direction
#: cosines within GRID_DIRECTION_TOL. The one definition, used by conversion (masks), autoPET and evaluation.
GRID_ORIGIN_TOL_MM = 1e-2
GRID_SPACING_TOL_MM = 1e-4
GRID_DIRECTION_TOL = 1e-4


def grid_difference(a: Any, b: Any) -> Optional[str]:
    """None when two SimpleITK images share size, origin, spacing and direction (within the tolerances above),
    else what differs, in words."""
    if tuple(a.GetSize()) != tuple(b.GetSize()):
        return f"size {a.GetSize()} vs {b.GetSize()}"
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0.0, atol=GRID_SPACING_TOL_MM):
        return f"spacing {a.GetSpacing()} vs {b.GetSpacing()}"
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0.0, atol=GRID_ORIGIN_TOL_MM):
        return f"origin {a.GetOrigin()} vs {b.GetOrigin()}"
    if not np.allclose(a.GetDirection(), b.GetDirection(), rtol=0.0, atol=GRID_DIRECTION_TOL):
        return "direction cosines differ"
    return None


def verify_file(path: PathLike, name: Optional[str] = None) -> None:
    """Cheap completeness check of a written file, chosen by its name (``name`` defaults to the path's name).

    ``.nii(.gz)``: :func:`verify_nifti`; other ``.gz``: the whole gzip stream; ``.json``: parses; ``.png``: ends
    with the IEND chunk; ``.pth`` / ``.zip`` / ``.npz``: the zip directory is present; anything else: exists.
    Raises ``ValueError`` with the reason.
    """
    path = Path(path)
    name = (name or path.name).lower()
    if not path.is_file():
        raise ValueError("the writer produced no file")
    if name.endswith((".nii", ".nii.gz")):
        verify_nifti(path)
    elif name.endswith(".gz"):
        try:
            _read_stream(path, True)
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(f"incomplete or damaged compressed stream ({e})") from e
    elif name.endswith(".json"):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"the JSON written does not parse back ({e})") from e
    elif name.endswith(".png"):
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - len(_PNG_END)))
            if f.read() != _PNG_END:
                raise ValueError("PNG file ends before its IEND chunk")
    elif name.endswith((".pth", ".zip", ".npz")):
        import zipfile
        if not zipfile.is_zipfile(path):
            raise ValueError("zip archive without its central directory (truncated)")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a folder; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free there"
    except OSError:
        return "free space unknown"


def write_error(destination: PathLike, reason: Any) -> WriteError:
    """A :class:`WriteError` for ``destination`` with ``reason`` (an exception or text) and what to do."""
    destination = Path(destination)
    if isinstance(reason, OSError) and reason.errno is not None:
        text = f"{os.strerror(reason.errno)}"
        if reason.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = "make the folder writable or choose another output folder"
        else:
            hint = f"free disk space ({_free_space(destination.parent)}) and run again"
    else:
        text = str(reason) or type(reason).__name__
        hint = f"check free disk space ({_free_space(destination.parent)}) and run again"
    return WriteError(f"could not write {destination}: {text}; nothing was published: {hint}")


@contextlib.contextmanager
def atomic_path(destination: PathLike, suffix: str = "", verify: Optional[Verifier] = None,
                by_name: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; on success verify, fsync and move it onto ``destination``.

    ``suffix`` keeps the extension that writers such as SimpleITK use to pick a format (e.g. ``.nii.gz``).
    After the ``with`` body the file is checked by :func:`verify_file` (by ``destination``'s name) and then by
    ``verify`` (called with the temporary path; raise ``ValueError`` for an incomplete file); ``by_name=False``
    skips the check by name when ``verify`` does it already (a NIfTI is decompressed once). On any failure the
    temporary file is removed, ``destination`` is untouched and :class:`WriteError` is raised for write problems.
    """
    destination = Path(destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=suffix or "".join(destination.suffixes),
                                   dir=destination.parent)
        os.close(fd)
    except OSError as e:
        raise write_error(destination, e) from e
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except WriteError:
            raise
        except OSError as e:
            raise write_error(destination, e) from e
        try:
            if by_name or verify is None:
                verify_file(tmp_path, destination.name)
            if verify is not None:
                verify(tmp_path)
        except ValueError as e:
            raise write_error(destination, e) from e
        try:
            _fsync_file(tmp_path)
            os.chmod(tmp_path, _FILE_MODE)
            os.replace(tmp_path, destination)
        except OSError as e:
            raise write_error(destination, e) from e
        _fsync_dir(destination.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(destination: PathLike, data: bytes) -> None:
    """Write ``data`` to ``destination`` atomically (verified: the file holds exactly ``len(data)`` bytes)."""
    def same_size(tmp: Path) -> None:
        if tmp.stat().st_size != len(data):
            raise ValueError(f"{tmp.stat().st_size} of {len(data)} bytes written")

    with atomic_path(destination, verify=same_size) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


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


# ----------------------------------------------------------------------------------------------------------------------
# folder lock
# ----------------------------------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


class DirectoryLock:
    """Exclusive, non-blocking lock of a folder (``fcntl.flock`` on ``folder/lock_name``) with holder information.

    Use as a context manager around a run that writes into ``folder``::

        with DirectoryLock(output_dir, what="prediction output folder"):
            ...

    A second holder (another process, or another lock object in the same process) gets :class:`LockedError` at
    once, naming the holder: pid, host and start time (written into the lock file as JSON). The operating system
    releases a ``flock`` when its process ends, so a killed run leaves no lock behind; its holder text stays in the
    file and is offered as :attr:`previous_holder` to the next run (a run that did not end cleanly). When the lock
    is held but the recorded pid is dead on this host, a child process that inherited the lock (e.g. a worker) is
    still alive: the error says so and how to find it. The lock file is never deleted (deleting it would let two
    runs lock two different files).
    """

    def __init__(self, folder: PathLike, what: str = "folder", lock_name: str = ".clips.lock"):
        self.folder = Path(folder)
        self.path = self.folder / lock_name
        self.what = what
        self.previous_holder: Optional[Dict[str, Any]] = None
        self._fd: Optional[int] = None

    @staticmethod
    def _parse(text: str) -> Optional[Dict[str, Any]]:
        try:
            info = json.loads(text)
        except ValueError:
            return None
        return info if isinstance(info, dict) and "pid" in info else None

    def holder(self) -> Optional[Dict[str, Any]]:
        """The holder information in the lock file (None when empty or unreadable)."""
        try:
            return self._parse(self.path.read_text(encoding="utf-8"))
        except OSError:
            return None

    def _busy_message(self) -> str:
        info = self.holder()
        if info is None:
            return (f"{self.what} {self.folder} is in use by another run (lock file {self.path}, holder unknown); "
                    "wait for it to finish")
        who = f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}"
        if info.get("host") == socket.gethostname() and not _pid_alive(int(info["pid"])):
            return (f"{self.what} {self.folder} is locked by a run that is no longer running ({who}), but a process "
                    f"it started still holds {self.path}: find it with `fuser -v {self.path}`, end it, then run "
                    "again (with --resume where the command has it)")
        return (f"{self.what} {self.folder} is in use by another run ({who}; lock file {self.path}): wait for it to "
                "finish or stop it, then run again")

    def acquire(self) -> "DirectoryLock":
        if self._fd is not None:
            raise LockedError(f"{self.what} {self.folder}: this lock object is already held")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(self.path, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(self._busy_message()) from None
        except OSError as e:
            os.close(fd)
            raise ClipsError(f"cannot lock {self.path} ({os.strerror(e.errno or 0)}): this filesystem does not "
                             f"support file locks; put the {self.what} on a local or lock-capable filesystem") from e
        try:
            with os.fdopen(os.dup(fd), "r", encoding="utf-8", errors="replace") as f:
                self.previous_holder = self._parse(f.read())
            info = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                    "started": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
            os.fsync(fd)
        except OSError as e:
            os.close(fd)
            raise write_error(self.path, e) from e
        self._fd = fd
        return self

    def check_free(self) -> None:
        """:class:`LockedError` (naming the holder) when another run holds the lock now; creates nothing. A cheap
        early check before long work (e.g. indexing a cohort); the lock itself is still taken with
        :meth:`acquire`."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:  # no lock file yet (nobody has ever held it) or unreadable: acquire() will tell
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockedError(self._busy_message()) from None
            except OSError:
                return
            fcntl.flock(fd, fcntl.LOCK_UN)  # our own open file description only: another holder is unaffected
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # a clean end: the next run sees no previous holder
        except OSError:
            pass
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
