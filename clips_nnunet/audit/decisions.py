"""The reviewer's decisions on the audit page, exported as CSV, and the reader that turns them into the list of
badly segmented cases.

The page (:mod:`clips_nnunet.audit.html_page`) lets a physician mark each case *confirmed error*, *false alarm* or
*unsure* with a note; its "Export decisions (CSV)" button writes ``audit_decisions.csv`` with one row per case of
the page, in the page's order, and these columns (:data:`COLUMNS`):

=================  ====================================================================================================
``case_id``        the case id of ``audit.csv`` (nnU-Net case identifier)
``decision``       ``confirmed_error`` | ``false_alarm`` | ``unsure`` | ``not_reviewed``
``error_kind``     the audit's kind for the case: ``missed_lesion`` (the reference missed a lesion), ``extra_region``
                   (the reference holds a non-lesion region), ``boundary`` (the reference's outline is wrong),
                   ``hard_case`` or ``none``
``note``           the reviewer's free text (quoted as CSV requires)
``rank``           the case's rank on the page (1 = most suspect)
``suspicion``      the audit's suspicion score
``finding_x_mm``,  the finding's centre in DICOM patient coordinates (LPS, mm); empty without a finding
``finding_y_mm``,
``finding_z_mm``
``finding_slice``  the PET slice holding the finding (1-based, in the PET file's slice order); empty without one
=================  ====================================================================================================

:func:`confirmed_errors` reads it back as ``{case_id: error_kind}`` of the rows marked ``confirmed_error``: the same
shape as the planted-error list of the synthetic generators (``clips_nnunet.study.memorisation.planted_errors``'s
second item), so a study or a difficulty score can treat the confirmed cases as the badly segmented ones.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Dict, List

from clips_nnunet.errors import DatasetError
from clips_nnunet.io_utils import PathLike

COLUMNS = ("case_id", "decision", "error_kind", "note", "rank", "suspicion", "finding_x_mm", "finding_y_mm",
           "finding_z_mm", "finding_slice")
DECISIONS = ("confirmed_error", "false_alarm", "unsure", "not_reviewed")
DECISION_LABELS = {"confirmed_error": "confirmed error", "false_alarm": "false alarm", "unsure": "unsure"}
EXPORT_NAME = "audit_decisions.csv"


def read_decisions(path: PathLike) -> List[Dict[str, str]]:
    """The rows of a decisions CSV (dicts keyed by :data:`COLUMNS`; extra columns kept). Raises
    :class:`DatasetError` (one line naming the file) when it is unreadable, lacks ``case_id`` or ``decision``,
    holds an unknown decision or a case twice."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise DatasetError(f"decisions file {path.name}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"decisions file {path.name} is not UTF-8 text: give the audit page's exported "
                           f"{EXPORT_NAME}") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("case_id", "decision") if c not in (reader.fieldnames or [])]
    if missing:
        raise DatasetError(f"decisions file {path.name} lacks the column(s) {', '.join(missing)}: give the audit "
                           f"page's exported {EXPORT_NAME} (columns {', '.join(COLUMNS)})")
    rows: List[Dict[str, str]] = []
    seen = set()
    for line, row in enumerate(reader, start=2):
        case = (row.get("case_id") or "").strip()
        decision = (row.get("decision") or "").strip() or "not_reviewed"
        if not case:
            raise DatasetError(f"decisions file {path.name}, line {line}: empty case_id")
        if decision not in DECISIONS:
            raise DatasetError(f"decisions file {path.name}, line {line}: decision {decision!r} is not one of "
                               f"{', '.join(DECISIONS)}")
        if case in seen:
            raise DatasetError(f"decisions file {path.name}, line {line}: case {case} appears twice")
        seen.add(case)
        rows.append({**{k: (v or "") for k, v in row.items() if k is not None}, "case_id": case,
                     "decision": decision})
    return rows


def confirmed_errors(path: PathLike) -> Dict[str, str]:
    """``{case_id: error_kind}`` of the cases the reviewer marked ``confirmed_error`` (the badly segmented list)."""
    return {r["case_id"]: r.get("error_kind", "") or "unknown" for r in read_decisions(path)
            if r["decision"] == "confirmed_error"}
