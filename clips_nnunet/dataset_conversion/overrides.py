"""Per-patient SUV inputs supplied by the user when the DICOM headers lack (or have wrong) values.

CSV format (UTF-8, header row required; empty cells mean "use the DICOM header"):

======================  ==========================================================================================
column                  meaning
======================  ==========================================================================================
``PatientID``           DICOM PatientID (0010,0020) exactly as in the headers (required, unique)
``weight_kg``           body weight in kg (replaces PatientWeight (0010,1030))
``dose_bq``             injected activity in Bq (replaces RadionuclideTotalDose (0018,1074)); ``dose_mbq`` in MBq
``injection_datetime``  injection date and time, ISO 8601 ``2025-01-31T09:15:00`` or DICOM ``20250131091500``
``height_m``            height in m (replaces PatientSize (0010,1020)), used for SUV types other than body weight
``sex``                 ``M``, ``F`` or ``O`` (replaces PatientSex (0010,0040))
======================  ==========================================================================================

The file is private user input (it holds PatientIDs): keep it outside the dataset. Error messages name the row
number and column, never the PatientID.
"""
from __future__ import annotations

import csv
import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from clips_nnunet.io_utils import PathLike

from ..errors import ClipsError

__all__ = ["SuvOverrides", "load_overrides", "parse_datetime"]

_COLUMNS = ("PatientID", "weight_kg", "dose_bq", "dose_mbq", "injection_datetime", "height_m", "sex")


@dataclass(frozen=True)
class SuvOverrides:
    """Values that replace the DICOM header's for one patient (``None``: use the header)."""

    weight_kg: Optional[float] = None
    dose_bq: Optional[float] = None
    injection_datetime: Optional[_dt.datetime] = None
    height_m: Optional[float] = None
    sex: Optional[str] = None

    def __post_init__(self) -> None:
        for name, lo, hi in (("weight_kg", 0.5, 500.0), ("dose_bq", 1e5, 1e11), ("height_m", 0.3, 2.8)):
            v = getattr(self, name)
            if v is not None and not (lo <= float(v) <= hi):
                raise ValueError(f"SuvOverrides.{name}={v!r} is outside the plausible range [{lo:g}, {hi:g}]")
        if self.sex is not None and self.sex not in ("M", "F", "O"):
            raise ValueError(f"SuvOverrides.sex must be 'M', 'F' or 'O', got {self.sex!r}")
        if self.injection_datetime is not None and not isinstance(self.injection_datetime, _dt.datetime):
            raise TypeError("SuvOverrides.injection_datetime must be a datetime.datetime")


def parse_datetime(text: str) -> _dt.datetime:
    """Parse ISO 8601 (``2025-01-31T09:15:00``, ``2025-01-31 09:15``) or DICOM DT (``20250131091500.000``)."""
    text = text.strip()
    try:
        return _dt.datetime.fromisoformat(text)
    except ValueError:
        pass
    digits = text.split(".")[0]
    frac = text.split(".")[1] if "." in text else ""
    for fmt in ("%Y%m%d%H%M%S", "%Y%m%d%H%M"):
        try:
            value = _dt.datetime.strptime(digits, fmt)
            if frac:
                value += _dt.timedelta(seconds=float("0." + frac))
            return value
        except ValueError:
            continue
    raise ValueError(f"cannot parse date-time {text!r}; use 2025-01-31T09:15:00 or 20250131091500")


def load_overrides(csv_path: PathLike) -> Dict[str, SuvOverrides]:
    """Read the overrides CSV into ``{PatientID: SuvOverrides}``.

    Raises :class:`ClipsError` naming the file, row number and column for a missing/unknown column, an
    unparsable or implausible value, or a duplicate PatientID.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise ClipsError(f"overrides file {path} does not exist; pass a CSV with columns {', '.join(_COLUMNS)}")
    try:
        return _read_overrides(path)
    except (UnicodeDecodeError, csv.Error) as exc:  # a binary or otherwise non-CSV file
        raise ClipsError(f"{path} is not a CSV text file ({type(exc).__name__}: {str(exc)[:120]}); pass a UTF-8 "
                         f"CSV with columns {', '.join(_COLUMNS)}") from None


def _read_overrides(path: Path) -> Dict[str, SuvOverrides]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        if "PatientID" not in fields:
            raise ClipsError(f"{path}: the header row needs a PatientID column (columns: {', '.join(_COLUMNS)})")
        unknown = [c for c in fields if c not in _COLUMNS]
        if unknown:
            raise ClipsError(f"{path}: unknown column(s) {', '.join(unknown)}; allowed: {', '.join(_COLUMNS)}")
        result: Dict[str, SuvOverrides] = {}
        first_row: Dict[str, int] = {}
        for row_no, raw in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            pid = row.get("PatientID", "")
            if not pid:
                raise ClipsError(f"{path} row {row_no}: empty PatientID")
            if pid in first_row:
                raise ClipsError(f"{path} row {row_no}: same PatientID as row {first_row[pid]}; one row per patient")
            first_row[pid] = row_no
            values: Dict[str, object] = {}
            try:
                for col in ("weight_kg", "height_m"):
                    if row.get(col):
                        values[col] = float(row[col])
                if row.get("dose_bq") and row.get("dose_mbq"):
                    raise ValueError("give dose_bq or dose_mbq, not both")
                if row.get("dose_bq"):
                    values["dose_bq"] = float(row["dose_bq"])
                if row.get("dose_mbq"):
                    values["dose_bq"] = float(row["dose_mbq"]) * 1e6
                if row.get("injection_datetime"):
                    values["injection_datetime"] = parse_datetime(row["injection_datetime"])
                if row.get("sex"):
                    values["sex"] = row["sex"].upper()
                result[pid] = SuvOverrides(**values)
            except (ValueError, TypeError) as exc:
                raise ClipsError(f"{path} row {row_no}: {exc}; fix the value or leave the cell empty") from None
    return result
