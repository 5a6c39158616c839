"""Exceptions with messages a physicist can act on.

Every error names *what* is wrong (patient, file, DICOM tag, parameter) and *what to do* about it.
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
