"""Case difficulty for curricula, comparisons and studies: ONE definition (higher = harder).

Everything in the project that ranks cases by difficulty goes through this module:

- :data:`METADATA_MEASURES`: the measures of the converter's ``case_metadata.json``
  (``$nnUNet_raw/DatasetXXX/case_metadata.json``) that can be a difficulty, each with its direction
  (``harder_when``: ``"low"`` = a smaller value makes the case harder) and the reason; docs/curricula.md has the table.
- The lesion-free rule (:func:`is_lesion_free`, :data:`LESION_FREE_RANKS`): a case without lesion has no lesion to
  miss; for lesion measures it gets a fixed rank (default the median, 0.5) instead of whatever its zero or missing
  value would give.
- :func:`difficulty_from_metadata`: ``{case: rank in [0, 1]}`` from one measure, used by the curriculum trainers
  (:mod:`clips_nnunet.trainers.family`), ``clips-nnunet compare`` (tertiles) and the study (stratified splits).
- :func:`parse_difficulty_csv` / :func:`read_difficulty_csv` / :func:`write_difficulty_csv`: the difficulty CSV
  (``case_id,difficulty[,...]`` or a plain list of known-hard case ids), as written by ``clips-nnunet score``
  (:mod:`clips_nnunet.evaluation.scoring`, which computes the scores with nnU-Net and SimpleITK).

Raw scores become ranks with :func:`rank_normalise` (ties share their average rank), so every source has the same
scale and the pacing functions only see an order. Plain numpy/scipy: this module imports neither torch, nnunetv2 nor
SimpleITK (a test checks it).
"""
from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from clips_nnunet.errors import CurriculumConfigError, DatasetError
from clips_nnunet.io_utils import PathLike, atomic_write_text, read_json


@dataclass(frozen=True)
class MetadataMeasure:
    """One ``case_metadata.json`` measure usable as a difficulty.

    ``harder_when``: ``"low"`` (a smaller value = a harder case) or ``"high"``; ``lesion_measure``: the value
    describes the lesions, so lesion-free cases follow the lesion-free rule instead of their value; ``reason``: why
    this direction (lymphoma FDG PET/CT segmentation).
    """

    name: str
    harder_when: str
    lesion_measure: bool
    reason: str

    @property
    def direction(self) -> int:
        """+1 when a larger value is harder, -1 when a smaller value is harder."""
        return 1 if self.harder_when == "high" else -1


#: The difficulty measures of ``case_metadata.json`` (keys as the converter writes them) and their direction.
METADATA_MEASURES: Dict[str, MetadataMeasure] = {m.name: m for m in (
    MetadataMeasure("tmtv_ml", "low", True,
                    "little disease = small, few lesions: easy to miss, and each missed voxel costs much Dice"),
    MetadataMeasure("n_lesions", "high", True, "each lesion is one more place to miss or to cut short"),
    MetadataMeasure("suv_max", "low", True,
                    "low-uptake (low-avidity) lesions are faint against background; intense uptake is conspicuous"),
    MetadataMeasure("suv_mean", "low", True, "as suv_max, over all lesion voxels"),
    MetadataMeasure("tlg", "low", True, "TLG = SUVmean x TMTV: small and faint disease is hard"),
    MetadataMeasure("smallest_lesion_ml", "low", True,
                    "a small lesion is near the PET resolution (partial volume): the easiest one to miss"),
    MetadataMeasure("largest_lesion_ml", "low", True, "if even the largest lesion is small, all lesions are small"),
    MetadataMeasure("dmax_mm", "high", True,
                    "widely spread disease (nodal and extranodal sites far apart) is more places to search"),
    MetadataMeasure("lesion_to_background", "low", True,
                    "low lesion-to-background contrast = lesions close to physiological uptake"),
    MetadataMeasure("planted_difficulty", "high", False,
                    "synthetic data only: the generator's own difficulty (faint, small lesions when high)"),
)}

#: Rank given to lesion-free cases for lesion measures (``lesion_free`` argument): a case without lesion has no
#: lesion to miss (easy) but physiological uptake to leave alone (not trivial); the default puts it at the median.
LESION_FREE_RANKS: Dict[str, float] = {"median": 0.5, "easiest": 0.0, "hardest": 1.0}
LESION_FREE_POLICIES = tuple(LESION_FREE_RANKS)

#: Header names accepted for the case id column of a difficulty CSV.
CASE_ID_HEADERS = ("case_id", "case", "id", "key")


def rank_normalise(values: Sequence[float]) -> np.ndarray:
    """Ranks of ``values`` scaled to [0, 1]: smallest -> 0, largest -> 1, ties share their average rank.

    ``(rank - 1) / (N - 1)`` with scipy's average ranks; one case gets 0.5. Non-finite values are an error.
    """
    from scipy.stats import rankdata

    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise CurriculumConfigError("rank_normalise needs a non-empty 1-D sequence of scores")
    if not np.all(np.isfinite(array)):
        raise CurriculumConfigError(f"difficulty scores must be finite; got {array[~np.isfinite(array)][:5]}")
    if array.size == 1:
        return np.array([0.5])
    return (rankdata(array, method="average") - 1.0) / (array.size - 1.0)


def _validate_case_ids(case_ids: Sequence[str]) -> List[str]:
    case_ids = [str(c) for c in case_ids]
    if not case_ids:
        raise CurriculumConfigError("the training split is empty: no case ids to give a difficulty to")
    seen, duplicates = set(), set()
    for c in case_ids:
        (duplicates if c in seen else seen).add(c)
    if duplicates:
        raise CurriculumConfigError(f"duplicate training case ids: {sorted(duplicates)[:10]}")
    return case_ids


# -------------------------------------------------------------------------------------------- case_metadata.json

def read_case_metadata(path: PathLike) -> Dict[str, dict]:
    """``{case_id: {measure: value}}`` from a ``case_metadata.json`` file (written by the converter)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist: convert the cohort with clips-nnunet convert (it writes "
                           f"case_metadata.json), or give a difficulty CSV instead")
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read it as JSON ({e}); re-run the conversion") from e
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DatasetError(f"{path} must hold a JSON object case_id -> {{measure: value}}")
    return data


def load_case_metadata(raw_dataset_folder: PathLike) -> Dict[str, dict]:
    """``case_metadata.json`` of an nnU-Net raw dataset folder (written by the converter)."""
    return read_case_metadata(Path(raw_dataset_folder) / "case_metadata.json")


def is_lesion_free(entry: Mapping) -> bool:
    """The lesion-free rule's test: ``n_lesions == 0`` or ``tmtv_ml == 0`` in a case's metadata."""
    for key in ("n_lesions", "tmtv_ml"):
        value = entry.get(key)
        if value is not None and float(value) == 0:
            return True
    return False


def resolve_measure(measure: str, harder_when: Optional[str] = None) -> MetadataMeasure:
    """The :class:`MetadataMeasure` of ``measure``.

    ``harder_when`` may repeat a table measure's direction (anything else is an error: the direction is part of the
    one definition); for a key that is not in :data:`METADATA_MEASURES` (e.g. a field you added to the metadata) it
    is required and defines a non-lesion measure.
    """
    if harder_when is not None and harder_when not in ("low", "high"):
        raise CurriculumConfigError(f"harder_when must be 'low' or 'high', got {harder_when!r}")
    known = METADATA_MEASURES.get(measure)
    if known is not None:
        if harder_when is not None and harder_when != known.harder_when:
            raise CurriculumConfigError(
                f"{measure!r} is harder when {known.harder_when} ({known.reason}); its direction is fixed by the "
                f"difficulty table (clips_nnunet.curriculum.difficulty.METADATA_MEASURES, docs/curricula.md); "
                f"drop harder_when / --harder-when")
        return known
    if harder_when is None:
        raise CurriculumConfigError(f"unknown difficulty measure {measure!r}; choose one of "
                                    f"{sorted(METADATA_MEASURES)}, or say harder_when='low'|'high' for your own key")
    return MetadataMeasure(measure, harder_when, False, "user-defined measure")


def difficulty_from_metadata(metadata: Mapping[str, Mapping], case_ids: Optional[Sequence[str]] = None,
                             measure: str = "tmtv_ml", lesion_free: str = "median",
                             harder_when: Optional[str] = None) -> Dict[str, float]:
    """Difficulty of each case from one measure of ``case_metadata.json``: ``{case: rank in [0, 1]}``, higher =
    harder.

    ``metadata``: ``{case_id: {measure: value}}`` (:func:`read_case_metadata`). ``case_ids``: the cases to rank
    (e.g. the training cases of a fold); default every case of ``metadata`` that has a label (``has_label`` not
    false). Ranks are over these cases only. ``measure``: a key of :data:`METADATA_MEASURES` (its direction says
    whether small or large values are hard; see :func:`resolve_measure` for other keys). ``lesion_free``: rank given
    to lesion-free cases (:func:`is_lesion_free`) for lesion measures: ``"median"`` (0.5, default), ``"easiest"`` (0)
    or ``"hardest"`` (1); the cases with lesions are ranked among themselves over [0, 1].

    A requested case without a metadata entry, or with a lesion but no finite value of ``measure``, is an error
    naming the case.
    """
    spec = resolve_measure(measure, harder_when)
    if lesion_free not in LESION_FREE_RANKS:
        raise CurriculumConfigError(f"lesion_free must be one of {LESION_FREE_POLICIES}, got {lesion_free!r}")
    if case_ids is None:
        case_ids = [c for c in sorted(metadata) if metadata[c].get("has_label", True) is not False]
    case_ids = _validate_case_ids(case_ids)
    missing = [c for c in case_ids if c not in metadata]
    if missing:
        raise CurriculumConfigError(f"case_metadata.json has no entry for training cases {missing[:10]}"
                                    f"{' ...' if len(missing) > 10 else ''} ({len(missing)} in all): re-run the "
                                    f"conversion or use a difficulty CSV")
    free = [c for c in case_ids if spec.lesion_measure and is_lesion_free(metadata[c])]
    free_set = set(free)
    ranked = [c for c in case_ids if c not in free_set]
    values = []
    for c in ranked:
        value = metadata[c].get(spec.name)
        finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not finite:
            raise CurriculumConfigError(f"case {c}: case_metadata.json has no finite {spec.name!r} "
                                        f"(got {value!r}); choose another measure or fix the metadata")
        values.append(spec.direction * float(value))
    result: Dict[str, float] = {}
    if ranked:
        result.update(zip(ranked, (float(v) for v in rank_normalise(values))))
    result.update({c: LESION_FREE_RANKS[lesion_free] for c in free})
    return {c: result[c] for c in case_ids}


def describe_metadata_difficulty(measure: str, lesion_free: str = "median",
                                 harder_when: Optional[str] = None) -> str:
    """One line for reports: ``"tmtv_ml (lower = harder), lesion-free cases at the median rank"``."""
    spec = resolve_measure(measure, harder_when)
    text = f"{spec.name} ({'lower' if spec.harder_when == 'low' else 'higher'} = harder)"
    if spec.lesion_measure:
        text += f", lesion-free cases {'at the median rank' if lesion_free == 'median' else lesion_free}"
    return text


def difficulty_of_cases(case_ids: Sequence[str], metadata: Optional[PathLike] = None, measure: str = "tmtv_ml",
                        harder_when: Optional[str] = None, difficulty_csv: Optional[PathLike] = None,
                        lesion_free: str = "median") -> Tuple[Dict[str, float], str]:
    """``({case: difficulty}, description)`` of ``case_ids`` from a difficulty CSV (its raw scores, higher = harder)
    or a ``case_metadata.json`` file (:func:`difficulty_from_metadata` ranks over the listed cases it knows); used
    by ``clips-nnunet compare`` for its tertiles. Cases the source does not know are left out (the caller says so);
    a plain list of hard cases is refused (tertiles need a score per case)."""
    if difficulty_csv is not None:
        table = parse_difficulty_csv(difficulty_csv)
        if table.hard_list:
            raise CurriculumConfigError(f"difficulty file {difficulty_csv} is a plain list of case ids; tertiles need "
                                        f"a score per case: 'case_id,difficulty' (as written by clips-nnunet score)")
        return ({c: table.scores[c] for c in case_ids if c in table.scores},
                f"difficulty CSV {Path(difficulty_csv).name}")
    if metadata is None:
        raise CurriculumConfigError("give a difficulty CSV or a case_metadata.json")
    meta = read_case_metadata(metadata)
    known = sorted(c for c in set(case_ids) if c in meta)
    if not known:
        raise CurriculumConfigError(f"metadata file {metadata}: none of the {len(case_ids)} evaluated cases is in it; "
                                    f"give the case_metadata.json of this dataset")
    return (difficulty_from_metadata(meta, known, measure, lesion_free, harder_when),
            f"{Path(metadata).name}: {describe_metadata_difficulty(measure, lesion_free, harder_when)}")


def groups_from_metadata(metadata: Mapping[str, Mapping], case_ids: Sequence[str], key: str = "vendor"
                         ) -> Dict[str, str]:
    """Group label of each case for diversity curricula (SPLD): a metadata field such as ``vendor``, or
    ``"lesion_band"`` = lesion-count band (``0``, ``1``, ``2-4``, ``5-9``, ``10+``) from ``n_lesions``.

    Cases without the field get the group ``"unknown"``; if no case has it, all cases form one group and a warning
    says so (SPLD then reduces to self-paced learning with a rank-dependent threshold).
    """
    case_ids = _validate_case_ids(case_ids)
    groups: Dict[str, str] = {}
    field = "n_lesions" if key == "lesion_band" else key
    for c in case_ids:
        value = (metadata.get(c) or {}).get(field)
        if value is None:
            groups[c] = "unknown"
        elif key == "lesion_band":
            n = int(value)
            groups[c] = "0" if n == 0 else "1" if n == 1 else "2-4" if n <= 4 else "5-9" if n <= 9 else "10+"
        else:
            groups[c] = str(value)
    if all(g == "unknown" for g in groups.values()):
        warnings.warn(f"no case has metadata field {field!r}: SPLD uses a single group", stacklevel=2)
        groups = {c: "all" for c in case_ids}
    return groups


# ---------------------------------------------------------------------------------------------- difficulty CSV

@dataclass(frozen=True)
class DifficultyCsv:
    """A parsed difficulty file (:func:`parse_difficulty_csv`).

    ``scores``: ``{case_id: raw score}`` (higher = harder); for a plain list of hard cases every listed case has 1.0.
    ``hard_list``: True for the plain-list format. ``lines``: the file line of each case (for messages).
    """

    path: Path
    scores: Dict[str, float]
    hard_list: bool
    lines: Dict[str, int]


def _csv_rows(path: Path) -> List[Tuple[int, List[str]]]:
    """``(line number, stripped cells)`` of every non-blank, non-comment row; :class:`CurriculumConfigError` (one
    line naming the file) for a file that is not CSV text, e.g. a binary file given by mistake."""
    try:
        text = path.read_text(encoding="utf-8-sig")
        if "\x00" in text:
            raise ValueError("it holds NUL bytes")
        reader = csv.reader(io.StringIO(text))
        rows = []
        for row in reader:
            cells = [cell.strip() for cell in row]
            if cells and any(cells) and not cells[0].startswith("#"):
                rows.append((reader.line_num, cells))
    except (UnicodeDecodeError, csv.Error, ValueError) as e:
        raise CurriculumConfigError(f"{path}: not a CSV text file ({str(e).splitlines()[0][:120]}); give the "
                                    "difficulty CSV written by clips-nnunet score (case_id,difficulty)") from None
    return rows


def parse_difficulty_csv(path: PathLike) -> DifficultyCsv:
    """Read a difficulty file without knowing the dataset's cases (:func:`read_difficulty_csv` checks those).

    Two formats:

    - scores: ``case_id,difficulty`` rows (header optional; with a header the ``difficulty`` column is used, else
      the second column; extra columns ignored). Chosen when the header names a ``difficulty`` column or any row
      has a second cell. Every row then needs a finite number there: an empty or non-numeric cell is an error
      naming the file, line and column (it never switches the file to the other format);
    - a plain list of known-hard case ids (one per line, optional header ``case_id``): listed cases score 1.

    Ids listed twice are an error.
    """
    path = Path(path)
    if not path.is_file():
        raise CurriculumConfigError(f"difficulty file {path} does not exist: write one with `clips-nnunet score` "
                                    f"or give a CSV of case_id,difficulty")
    rows = _csv_rows(path)
    header: Optional[List[str]] = None
    if rows and rows[0][1][0].lower() in CASE_ID_HEADERS:
        header, rows = [h.lower() for h in rows[0][1]], rows[1:]
    if not rows:
        raise CurriculumConfigError(f"difficulty file {path} lists no cases")
    if header is not None and "difficulty" in header:
        column = header.index("difficulty")
    elif (header is not None and len(header) >= 2) or any(len(cells) >= 2 and cells[1] for _, cells in rows):
        column = 1
    else:
        column = None  # plain list of hard cases
    name = ""
    if column is not None:
        name = f"column {column + 1}" + (f" ({header[column]!r})" if header and column < len(header) else "")
    scores: Dict[str, float] = {}
    lines: Dict[str, int] = {}
    for line, cells in rows:
        case = cells[0]
        if not case:
            raise CurriculumConfigError(f"difficulty file {path}, line {line}, column 1: empty case id")
        if case in lines:
            raise CurriculumConfigError(f"difficulty file {path}, line {line}: case {case} is listed twice (first "
                                        f"on line {lines[case]}); keep one row per case")
        if column is None:
            value = 1.0
        else:
            cell = cells[column] if column < len(cells) else ""
            if cell == "":
                raise CurriculumConfigError(
                    f"difficulty file {path}, line {line}, {name}: empty difficulty for case {case}; give a number "
                    f"for every case (or, for a plain list of hard cases, only case ids and no difficulty column)")
            try:
                value = float(cell)
            except ValueError:
                raise CurriculumConfigError(f"difficulty file {path}, line {line}, {name}: difficulty {cell!r} of "
                                            f"case {case} is not a number") from None
            if not math.isfinite(value):
                raise CurriculumConfigError(f"difficulty file {path}, line {line}, {name}: difficulty {cell!r} of "
                                            f"case {case} is not finite; score that case again or remove the row")
        scores[case], lines[case] = value, line
    return DifficultyCsv(path=path, scores=scores, hard_list=column is None, lines=lines)


def read_difficulty_csv(path: PathLike, case_ids: Sequence[str], known_ids: Optional[Sequence[str]] = None
                        ) -> Dict[str, float]:
    """Difficulty rank of each training case from a difficulty file (formats: :func:`parse_difficulty_csv`).

    ``case_ids``: this fold's training cases; ``known_ids``: every case of the dataset (default: ``case_ids``).
    Listed ids that are known but not training cases of this fold (its validation cases, e.g. from a
    cross-validation CSV that scores every case) are ignored; ids that are not known at all are an error listing
    them. Scores: every training case must be listed; they are rank-normalised over the training cases (higher =
    harder). Plain list: listed cases get difficulty 1, the others 0.
    """
    case_ids = _validate_case_ids(case_ids)
    table = parse_difficulty_csv(path)
    known = set(case_ids) | set(str(k) for k in (known_ids or ()))
    unknown = sorted(set(table.scores) - known)
    if unknown:
        raise CurriculumConfigError(
            f"difficulty file {table.path}: {len(unknown)} case id(s) are not cases of this dataset: {unknown[:20]}"
            f"{' ...' if len(unknown) > 20 else ''}; use the case ids of dataset.json / splits_final.json "
            f"(e.g. case_0003, without channel suffix or file ending)")
    if table.hard_list:
        return {c: 1.0 if c in table.scores else 0.0 for c in case_ids}
    missing = [c for c in case_ids if c not in table.scores]
    if missing:
        raise CurriculumConfigError(
            f"difficulty file {table.path}: {len(missing)} training case(s) have no difficulty: {missing[:20]}; "
            f"score every training case (clips-nnunet score) or give a plain list of hard cases instead")
    ranks = rank_normalise([table.scores[c] for c in case_ids])
    return {c: float(v) for c, v in zip(case_ids, ranks)}


def write_difficulty_csv(path: PathLike, table: Mapping[str, Mapping[str, object]]) -> Path:
    """Write ``case_id,difficulty,...`` (rows sorted by case id; extra columns sorted by name) atomically.

    ``table``: case_id -> {"difficulty": float, other columns...}. A missing extra value is written as an empty
    cell (only the ``difficulty`` column must be complete).
    """
    columns = sorted({k for row in table.values() for k in row if k != "difficulty"})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_id", "difficulty", *columns])
    for case_id in sorted(table):
        row = table[case_id]
        writer.writerow([case_id, _fmt(row["difficulty"]), *(_fmt(row.get(c, "")) for c in columns)])
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


def _fmt(value: object) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)

