"""Exceptions with messages a physicist can act on.

Every error names *what* is wrong (patient, file, DICOM tag, parameter) and *what to do* about it.

Exit codes of the ``clips-nnunet`` command (:func:`clips_nnunet.cli.main`):

* 0: done;
* 1: the command ran, but some patients/cases failed (listed in its report), or an unexpected internal error;
* 2: the command could not run as asked: bad arguments or input (:class:`ClipsError`), an unusable environment
  (full disk, read-only folder: :class:`OSError` / :class:`WriteError`), a busy dataset (:class:`LockedError`).
  Nothing is created for a bad argument; the message is one line.
"""
from __future__ import annotations


class ClipsError(Exception):
    """Base class of every error raised on purpose by clips-nnunet."""


class PatientError(ClipsError):
    """One patient (or study) cannot be converted or predicted; the rest of the cohort goes on.

    ``patient`` is a pseudonymous label (case id or a running number), never a PatientID or name.
    """

    def __init__(self, patient: str, reason: str):
        self.patient = patient
        self.reason = reason
        super().__init__(f"{patient}: {reason}")


class CurriculumConfigError(ClipsError, ValueError):
    """A curriculum hyper-parameter or input (case ids, difficulty file) is invalid."""


class DatasetError(ClipsError):
    """An nnU-Net dataset, plans file or results folder is missing or inconsistent."""


class WriteError(ClipsError, OSError):
    """A file could not be written completely (full disk, quota, read-only folder); nothing was published."""


class LockedError(ClipsError):
    """Another run holds the lock of a dataset or output folder."""


class UsageError(ClipsError, ValueError):
    """An argument is invalid (a command-line option or a function argument); the message says the valid range."""
