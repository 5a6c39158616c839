"""Compare trainers (curricula) on nnU-Net's out-of-fold validation predictions: tables, paired tests, box plots.

Library behind ``clips-nnunet compare``. The study harness calls :func:`compare_results` directly.

Inputs
------
A *group* is one trainer (or ensemble) evaluated on one or several results folders, e.g. the same trainer trained
with different seeds into separate ``nnUNet_results`` roots. Each folder is one of

* an nnU-Net model folder ``$nnUNet_results/DatasetXXX_Name/Trainer__Plans__Config``: the predictions of every
  ``fold_X/validation`` are pooled (out-of-fold: each training case is predicted once by the fold that did not
  train on it; a case found in two folds is an error; ``fold_all`` is ignored since it trained on every case);
* a folder holding predictions directly: ``crossval_results_folds_0_1_2_3_4`` (written by
  ``nnUNetv2_find_best_configuration`` / ``nnUNetv2_accumulate_crossval_results``) or
  ``$nnUNet_results/DatasetXXX/ensembles/ensemble___...`` (the cross-validation ensembles of
  ``nnUNetv2_find_best_configuration``).

References are ``--gt DIR`` or, by default, ``$nnUNet_preprocessed/DatasetXXX_Name/gt_segmentations`` (the name is
taken from the folder path), falling back to ``$nnUNet_raw/DatasetXXX_Name/labelsTr``. Where nnU-Net wrote
``summary.json`` files its per-case Dice is carried along as ``nnunet_dice`` (a cross-check of our Dice).

Runs: every results folder contributes one *run* per fold it validated (a seed of a fold; the unit of
replication). ``ComparisonResult.runs`` keeps every run's value of every case (``per_run_case.csv``);
``per_case`` averages a group's runs per case (``n_seeds``), for medians, plots and tertiles.

-------------------
Each case gets a difficulty (higher = harder) from, in order of precedence:
``difficulty_csv`` (``case_id,difficulty``, e.g. from ``clips-nnunet score``); ``metadata``
(``case_metadata.json``, ``metadata_key`` default ``tmtv_ml``) ranked by the same definition the curricula use
(:mod:`clips_nnunet.curriculum.difficulty`: each measure's direction, e.g. small TMTV or low SUVmax = hard, and
lesion-free cases at the median rank); by default the baseline's own ``1 - Dice`` (cases without true lesion have no
Dice and stay unassigned). Cases with a difficulty are sorted by (difficulty, case id) and split into three
near-equal tertiles *easy*, *medium*, *hard*.

Statistics (:mod:`clips_nnunet.evaluation.compare_analysis`, :mod:`clips_nnunet.evaluation.statistics`)
-----------------------------------------------------------------------------------------------------
Per group and stratum: the mean over runs of each run's mean over its cases (Dice over cases with a true lesion
only) with its 95 % t-interval over runs, and the median over cases of the run-averaged values. Against the
baseline, per stratum and metric: the mean difference of run means (group - baseline) from ``run_mean ~ arm +
C(fold)`` (statsmodels OLS; equal to the mixed model with patient and run intercepts for balanced data), its 95 %
interval and run-level p-value; Holm over every comparison x metric x stratum of the comparison. Take-off: a run
whose final model predicts no lesion in any of its validation patients failed to take off; rate per group with
Fisher's exact test against the baseline, and Dice among the runs that took off as a further comparison.
Undefined numbers (one run, identical runs) are said in words.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from clips_nnunet.curriculum.difficulty import difficulty_of_cases
from clips_nnunet.errors import CurriculumConfigError, DatasetError
from clips_nnunet.evaluation.compare_analysis import (ALL, TERTILES, Comparison, GroupSummary,
                                                      adjust_holm, compare_against, compare_took_off, summarise,
                                                      take_off)
from clips_nnunet.evaluation.evaluate import CaseFiles, detect_file_ending, evaluate_cases, list_cases
from clips_nnunet.evaluation.statistics import TakeOff
from clips_nnunet.metrics.case_metrics import AUTOPET_CONNECTIVITY
from clips_nnunet.nnunet_env import reference_masks_for_results
from clips_nnunet.io_utils import PathLike, read_json

#: metric -> True when higher is better.
COMPARE_METRICS: Dict[str, bool] = {
    "dice": True, "tmtv_abs_error_ml": False, "tmtv_abs_rel_error": False, "dmax_abs_error_mm": False,
    "fp_volume_ml": False, "fn_volume_ml": False, "lesion_sensitivity": True, "lesion_precision": True,
    "lesion_f1": True,
}
_FOLD_RE = re.compile(r"^fold_\d+$")  # fold_all is trained on every case: not out-of-fold, ignored


@dataclass
class PredictionSource:
    """The pooled predictions of one results folder."""

    folder: Path
    kind: str  # "crossval" (fold_X/validation pooled) or "folder" (predictions directly inside)
    predictions: Dict[str, Path]
    gt_dir: Path
    file_ending: str
    nnunet_dice: Dict[str, float] = field(default_factory=dict)
    folds: List[str] = field(default_factory=list)

    def fold_of(self, case_id: str) -> str:
        """The fold whose validation predicted ``case_id`` (``pooled`` for a folder of predictions)."""
        return self.predictions[case_id].parent.parent.name if self.kind == "crossval" else "pooled"


@dataclass
class ComparisonResult:
    """Everything :func:`compare_results` computed (typed; the DataFrames are the data behind the CSV files).

    ``runs``: one row per (group, run, case) (:mod:`~clips_nnunet.evaluation.compare_analysis`);
    ``per_case``: one row per (group, case), metrics averaged over the group's runs, ``n_seeds``, ``difficulty``,
    ``tertile``; ``summaries``: one :class:`GroupSummary` per (group, stratum, metric); ``comparisons``: one
    :class:`Comparison` per (group, stratum, metric) against the baseline (plus :data:`TOOK_OFF` for Dice when
    some run failed to take off), Holm-adjusted over all of them; ``take_off``: per group; ``strata``: stratum ->
    case ids (``all``, the tertiles, ``subsets``).
    """

    baseline: str
    groups: Dict[str, List[str]]
    metrics: Dict[str, bool]
    runs: Any
    per_case: Any
    summaries: List[GroupSummary]
    comparisons: List[Comparison]
    take_off: Dict[str, TakeOff]
    strata: Dict[str, List[str]]
    difficulty: Dict[str, float]
    difficulty_source: str
    out_dir: Optional[Path] = None
    files: Dict[str, Path] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)

    def summary(self, group: str, metric: str, stratum: str = ALL) -> Optional[GroupSummary]:
        """The summary of ``group``'s ``metric`` in ``stratum`` (None if not computed)."""
        return next((s for s in self.summaries if (s.group, s.metric, s.stratum) == (group, metric, stratum)), None)

    def comparison(self, group: str, metric: str, stratum: str = ALL) -> Optional[Comparison]:
        """``group`` against the baseline on ``metric`` in ``stratum`` (None if not compared)."""
        return next((c for c in self.comparisons if (c.group, c.metric, c.stratum) == (group, metric, stratum)),
                    None)

    @property
    def tertiles(self) -> Dict[str, str]:
        """``{case: easy|medium|hard}`` (cases without a difficulty are in no tertile)."""
        return {c: t for t in TERTILES for c in self.strata.get(t, [])}

    @property
    def subsets(self) -> Dict[str, List[str]]:
        """The strata beyond ``all`` and the tertiles."""
        return {k: v for k, v in self.strata.items() if k not in (ALL, *TERTILES)}


# ------------------------------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class DifficultySource:
    """Where the tertiles' difficulty comes from (module docstring): ``difficulty_csv`` (``case_id,difficulty``),
    else the ``metadata_key`` measure of ``metadata`` (``case_metadata.json``; ``harder_when`` ``low``/``high``
    only for a key the curricula's table does not know), else the baseline's own ``1 - Dice``."""

    metadata: Optional[PathLike] = None
    metadata_key: str = "tmtv_ml"
    harder_when: Optional[str] = None
    difficulty_csv: Optional[PathLike] = None


@dataclass(frozen=True)
class CaseEvaluation:
    """How every case of every folder is evaluated (as ``clips-nnunet evaluate``): reference folder ``gt_dir``
    (default from each folder's dataset), lesion ``labels`` (default all > 0), ``connectivity`` and
    ``lesion_connectivity`` (:func:`clips_nnunet.metrics.case_metrics.compute_case_metrics`), the per-case
    ``cache_dir`` (default ``out_dir/cache``; none when both are ``None``; several comparisons of the same folders
    can share one) and a ``progress`` bar."""

    gt_dir: Optional[PathLike] = None
    labels: Optional[Sequence[int]] = None
    connectivity: int = AUTOPET_CONNECTIVITY
    lesion_connectivity: int = 26
    cache_dir: Optional[PathLike] = None
    progress: bool = True


@dataclass(frozen=True)
class CompareOptions:
    """Everything :func:`compare_results` can be told besides the groups.

    ``baseline``: the group the others are tested against (default ``nnUNetTrainer`` if present, else the first
    group); ``metrics``: ``{metric: higher_is_better}`` (default :data:`COMPARE_METRICS`); ``subsets``: further
    strata ``{name: case ids}`` tabulated and tested like the tertiles (names other than ``all`` and the
    tertiles); ``difficulty``: :class:`DifficultySource`; ``evaluation``: :class:`CaseEvaluation`; ``out_dir``:
    where ``report.md``, the CSVs, ``comparison.json`` and (``plots``) the box plots go, ``None`` writes nothing.
    """

    baseline: Optional[str] = None
    metrics: Optional[Mapping[str, bool]] = None
    subsets: Optional[Mapping[str, Sequence[str]]] = None
    difficulty: DifficultySource = field(default_factory=DifficultySource)
    evaluation: CaseEvaluation = field(default_factory=CaseEvaluation)
    out_dir: Optional[PathLike] = None
    plots: bool = True

    def updated(self, **keywords: Any) -> "CompareOptions":
        """A copy with fields replaced by name; the fields of :class:`DifficultySource` and
        :class:`CaseEvaluation` are named directly (``metadata=...``, ``gt_dir=...``). ``TypeError`` for an
        unknown name."""
        from dataclasses import fields, replace

        parts: Dict[str, Dict[str, Any]] = {"difficulty": {}, "evaluation": {}, "": {}}
        homes = {**{f.name: "difficulty" for f in fields(DifficultySource)},
                 **{f.name: "evaluation" for f in fields(CaseEvaluation)},
                 **{f.name: "" for f in fields(CompareOptions)}}
        for name, value in keywords.items():
            if name not in homes:
                raise TypeError(f"compare_results() got an unexpected keyword argument {name!r}")
            parts[homes[name]][name] = value
        top = dict(parts[""])
        for part in ("difficulty", "evaluation"):
            if parts[part]:
                top[part] = replace(top.get(part, getattr(self, part)), **parts[part])
        return replace(self, **top)


# ------------------------------------------------------------------------------------------------ result folders
def _read_nnunet_summary(path: Path, ending: str) -> Dict[str, float]:
    """Per-case foreground-mean Dice from an nnU-Net ``summary.json`` (empty dict if absent/unreadable)."""
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
        out = {}
        for item in data.get("metric_per_case", []):
            name = Path(item["prediction_file"]).name
            if not name.endswith(ending):
                continue
            dices = [float(v["Dice"]) for v in item.get("metrics", {}).values() if "Dice" in v]
            dices = [d for d in dices if math.isfinite(d)]
            out[name[: -len(ending)]] = float(np.mean(dices)) if dices else float("nan")
        return out
    except (ValueError, KeyError, TypeError, OSError):
        return {}


def resolve_results_dir(folder: PathLike, gt_dir: Optional[PathLike] = None,
                        file_ending: Optional[str] = None) -> PredictionSource:
    """Find the predictions of one results folder (see module docstring) and its reference folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"results folder {folder} does not exist")
    fold_dirs = sorted((p for p in folder.iterdir() if p.is_dir() and _FOLD_RE.match(p.name)
                        and (p / "validation").is_dir()), key=lambda p: p.name)
    if fold_dirs:
        ending = file_ending or _ending_of(folder, [d / "validation" for d in fold_dirs])
        preds: Dict[str, Path] = {}
        nn_dice: Dict[str, float] = {}
        for d in fold_dirs:
            for cid, p in list_cases(d / "validation", ending).items():
                if cid in preds:
                    raise DatasetError(f"{folder}: case {cid} is in {preds[cid].parent.parent.name} and {d.name}; "
                                       f"out-of-fold pooling needs each case in one fold only (were the folds "
                                       f"made with different splits? remove the duplicate)")
                preds[cid] = p
            nn_dice.update(_read_nnunet_summary(d / "validation" / "summary.json", ending))
        kind, folds = "crossval", [d.name for d in fold_dirs]
    else:
        try:
            ending = file_ending or _ending_of(folder, [folder])
        except DatasetError:
            raise DatasetError(f"{folder}: neither fold_X/validation folders nor predicted masks inside; give a "
                               f"Trainer__Plans__Config folder whose folds were validated (nnUNetv2_train ... runs "
                               f"validation at the end; --val redoes it), a crossval_results_folds_* folder or an "
                               f"ensembles/ensemble___* folder") from None
        preds = list_cases(folder, ending)
        nn_dice = _read_nnunet_summary(folder / "summary.json", ending)
        kind, folds = "folder", []
    if not preds:
        raise DatasetError(f"{folder}: no predictions ending in {ending}")
    gt = Path(gt_dir) if gt_dir is not None else reference_masks_for_results(folder)
    if not gt.is_dir():
        raise DatasetError(f"reference folder {gt} does not exist")
    return PredictionSource(folder=folder, kind=kind, predictions=preds, gt_dir=gt, file_ending=ending,
                            nnunet_dice=nn_dice, folds=folds)


def _ending_of(model_folder: Path, pred_folders: Sequence[Path]) -> str:
    ds = model_folder / "dataset.json"
    if ds.is_file():
        try:
            e = read_json(ds).get("file_ending")
            if e:
                return str(e)
        except (ValueError, OSError):
            pass
    last: Optional[Exception] = None
    for f in pred_folders:
        try:
            return detect_file_ending(f)
        except DatasetError as e:
            last = e
    raise last if last else DatasetError(f"{model_folder}: no predictions")


def default_group_names(folders: Sequence[PathLike]) -> List[str]:
    """Display names: the trainer part of ``Trainer__Plans__Config`` when unique, else the full folder name
    (``crossval_results_folds_*`` folders are named after their model folder); duplicates get ``#2``, ``#3``."""
    bases = []
    for f in folders:
        p = Path(f).resolve()
        bases.append(p.parent.name if p.name.startswith("crossval_results_folds") else p.name)
    short = [b.split("__")[0] if "__" in b and not b.startswith("ensemble___") else b for b in bases]
    names = short if len(set(short)) == len(short) else bases
    out, seen = [], {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


# ------------------------------------------------------------------------------------------------------ difficulty
def assign_tertiles(difficulty: Mapping[str, float]) -> Dict[str, str]:
    """``{case: 'easy'|'medium'|'hard'}`` splitting cases sorted by (difficulty, case id) into 3 near-equal parts."""
    items = sorted(((float(v), k) for k, v in difficulty.items() if v is not None and math.isfinite(v)))
    out = {}
    for name, chunk in zip(TERTILES, np.array_split(np.arange(len(items)), 3)):
        for i in chunk:
            out[items[int(i)][1]] = name
    return out


# ------------------------------------------------------------------------------------------------ the pieces
def group_folders(groups: Union[Mapping[str, Sequence[PathLike]], Sequence[PathLike]],
                  baseline: Optional[str]) -> Tuple[Dict[str, List[Path]], str]:
    """``({group: [folder, ...]}, baseline)`` from a mapping or a list of folders (named by
    :func:`default_group_names`); the baseline defaults to ``nnUNetTrainer``, else the first group."""
    if isinstance(groups, Mapping):
        group_dirs = {str(k): [Path(p) for p in v] for k, v in groups.items()}
    else:
        folders = [Path(p) for p in groups]
        group_dirs = {n: [f] for n, f in zip(default_group_names(folders), folders)}
    if not group_dirs or any(not v for v in group_dirs.values()):
        raise CurriculumConfigError("compare needs at least one group with at least one results folder")
    if baseline is None:
        baseline = "nnUNetTrainer" if "nnUNetTrainer" in group_dirs else next(iter(group_dirs))
    if baseline not in group_dirs:
        raise CurriculumConfigError(f"baseline {baseline!r} is not one of the groups {list(group_dirs)}; pass "
                                    f"--baseline with one of those names")
    return group_dirs, baseline


def evaluate_groups(group_dirs: Mapping[str, Sequence[Path]], gt_dir: Optional[PathLike],
                    cache_root: Optional[Path], warnings: List[str], **evaluate_options):
    """The per-run, per-case table: every case of every folder evaluated (cached per folder under
    ``cache_root``), with ``group, folder, seed_index, fold, run`` (``group|seed_index|fold``) and nnU-Net's own
    per-case Dice (``nnunet_dice``). ``evaluate_options``: labels, connectivity, lesion_connectivity, progress."""
    import pandas as pd

    frames = []
    for gname, dirs in group_dirs.items():
        n_before = len(frames)
        for si, d in enumerate(dirs):
            src = resolve_results_dir(d, gt_dir=gt_dir)
            gts = list_cases(src.gt_dir, src.file_ending)
            lost = sorted(set(src.predictions) - set(gts))
            if lost:
                warnings.append(f"{gname} ({d}): {len(lost)} prediction(s) without reference in {src.gt_dir}: "
                                f"{lost[:5]}")
            cache = cache_root / hashlib.sha1(str(d.resolve()).encode()).hexdigest()[:12] if cache_root else None
            rows = evaluate_cases([CaseFiles(c, p, gts[c]) for c, p in src.predictions.items() if c in gts],
                                  cache_dir=cache, desc=f"{gname}[{si}]", **evaluate_options)
            warnings.extend(f"{gname} ({d}): {r['error']}" for r in rows if r["status"] != "ok")
            df = pd.DataFrame([r for r in rows if r["status"] == "ok"])
            if df.empty:
                warnings.append(f"{gname} ({d}): no case could be evaluated")
                continue
            df["nnunet_dice"] = df["case_id"].map(lambda c: src.nnunet_dice.get(c, float("nan")))
            df["fold"] = df["case_id"].map(src.fold_of)
            df.insert(0, "group", gname)
            df.insert(1, "folder", str(d))
            df.insert(2, "seed_index", si)
            df.insert(3, "run", [f"{gname}|{si}|{f}" for f in df["fold"]])
            frames.append(df)
        if len(frames) == n_before:
            raise DatasetError(f"group {gname}: none of its folders gave an evaluable case ({warnings[-3:]})")
    return pd.concat(frames, ignore_index=True).drop(columns=["status", "error"], errors="ignore")


def average_runs(runs):
    """One row per (group, case): every numeric metric averaged over the group's runs, ``n_seeds``."""
    skip = {"group", "folder", "seed_index", "fold", "run", "case_id", "has_true_lesion"}
    num = [c for c in runs.columns if c not in skip and str(runs[c].dtype) != "bool"
           and runs[c].dtype.kind in "fiu"]
    by = runs.groupby(["group", "case_id"], sort=False)
    out = by[num].mean()
    out["has_true_lesion"] = by["has_true_lesion"].first().astype(bool)
    out["n_seeds"] = by["seed_index"].nunique()
    return out.reset_index()


def case_difficulty(per_case, baseline: str, metadata: Optional[PathLike], metadata_key: str,
                    harder_when: Optional[str], difficulty_csv: Optional[PathLike]) -> Tuple[Dict[str, float], str]:
    """``({case: difficulty}, source)``: the CSV or metadata measure (the curricula's definition), else the
    baseline's own 1 - Dice (cases without a true lesion get none)."""
    if difficulty_csv is not None or metadata is not None:
        return difficulty_of_cases(sorted(set(per_case.case_id)), metadata, metadata_key, harder_when,
                                   difficulty_csv)
    b = per_case[per_case.group == baseline]
    return ({c: 1.0 - d for c, d, pos in zip(b.case_id, b.dice.astype(float), b.has_true_lesion)
             if pos and math.isfinite(d)}, f"baseline {baseline}: 1 - Dice")


def build_strata(cases: Sequence[str], tertile: Mapping[str, str],
                 subsets: Optional[Mapping[str, Sequence[str]]]) -> Dict[str, List[str]]:
    """``{all, easy, medium, hard, <subset>...: [case ids]}``; subset names must not clash."""
    subsets = {str(k): sorted(set(v)) for k, v in (subsets or {}).items()}
    clash = sorted(set(subsets) & {ALL, *TERTILES})
    if clash:
        raise CurriculumConfigError(f"subset name(s) {clash} clash with the built-in strata; rename them")
    strata = {ALL: sorted(cases)}
    strata.update({t: sorted(c for c in cases if tertile.get(c) == t) for t in TERTILES})
    strata.update(subsets)
    return strata


def stratify(per_case, baseline: str, source: DifficultySource,
             subsets: Optional[Mapping[str, Sequence[str]]], warnings: List[str]
             ) -> Tuple[Dict[str, float], str, Dict[str, List[str]]]:
    """``(difficulty, its source, strata)``: each case's difficulty (:func:`case_difficulty`), the tertiles
    (:func:`assign_tertiles`) and the strata (:func:`build_strata`); adds the ``difficulty`` and ``tertile``
    columns to ``per_case`` and a warning for cases without a difficulty."""
    difficulty, dsrc = case_difficulty(per_case, baseline, source.metadata, source.metadata_key, source.harder_when,
                                       source.difficulty_csv)
    all_cases = sorted(set(per_case.case_id))
    unknown = [c for c in all_cases if c not in difficulty]
    if unknown:
        warnings.append(f"{len(unknown)} case(s) have no difficulty and are in no tertile: {unknown[:5]}")
    present = set(all_cases)
    difficulty = {c: float(v) for c, v in difficulty.items() if c in present}
    tertile = assign_tertiles(difficulty)
    per_case["difficulty"] = per_case.case_id.map(lambda c: difficulty.get(c, float("nan")))
    per_case["tertile"] = per_case.case_id.map(lambda c: tertile.get(c, ""))
    return difficulty, dsrc, build_strata(all_cases, tertile, subsets)


def _case_set_warnings(per_case, groups: Sequence[str], baseline: str) -> List[str]:
    """A warning for every group whose evaluated cases differ from the baseline's."""
    case_sets = {g: set(per_case.case_id[per_case.group == g]) for g in groups}
    return [f"{g} has {len(s)} cases, baseline {baseline} {len(case_sets[baseline])}; run means of each group use "
            f"its own cases" for g, s in case_sets.items() if s != case_sets[baseline]]


def analyse(runs, per_case, groups: Sequence[str], baseline: str, strata: Mapping[str, List[str]],
            metrics: Mapping[str, bool]) -> Tuple[List[GroupSummary], List[Comparison], Dict[str, TakeOff]]:
    """The statistics of :mod:`~clips_nnunet.evaluation.compare_analysis`: summaries per group, stratum and metric;
    comparisons against the baseline (plus take-off), Holm-adjusted together; take-off per group."""
    names = list(groups)
    take = take_off(runs, names, baseline)
    comparisons = compare_against(runs, baseline, names, strata, metrics)
    comparisons += compare_took_off(runs, baseline, names, take)
    adjust_holm(comparisons)
    return summarise(runs, per_case, names, strata, metrics), comparisons, take


# ------------------------------------------------------------------------------------------------------ main entry
def compare_results(groups: Union[Mapping[str, Sequence[PathLike]], Sequence[PathLike]],
                    options: Optional[CompareOptions] = None, **keywords: Any) -> ComparisonResult:
    """Evaluate and compare groups of nnU-Net results folders (see module docstring).

    Args:
        groups: ``{name: [folder, ...]}`` (several folders = seeds of one trainer) or a list of folders (one group
            each, named by :func:`default_group_names`).
        options: a :class:`CompareOptions` (default: all defaults).
        keywords: fields of :class:`CompareOptions`, :class:`DifficultySource` or :class:`CaseEvaluation` by
            name (e.g. ``baseline="nnUNetTrainer", metadata=path, gt_dir=folder, out_dir=folder``), replacing those
            of ``options``.

    The steps, one function each: :func:`group_folders` -> :func:`evaluate_groups` (per run and case) ->
    :func:`average_runs` -> :func:`stratify` (difficulty, tertiles, strata) -> :func:`analyse` (summaries,
    comparisons, take-off, Holm) -> (with ``out_dir``) :func:`clips_nnunet.evaluation.compare_report.write_outputs`.
    """
    if options is not None and not isinstance(options, CompareOptions):
        raise TypeError(f"compare_results: options must be a CompareOptions, got {type(options).__name__}; pass "
                        "the baseline and other settings by name (baseline=...)")
    opts = (options or CompareOptions()).updated(**keywords)
    metrics = dict(opts.metrics or COMPARE_METRICS)
    group_dirs, baseline = group_folders(groups, opts.baseline)
    out = Path(opts.out_dir) if opts.out_dir is not None else None
    ev = opts.evaluation
    cache_root = Path(ev.cache_dir) if ev.cache_dir is not None else (out / "cache" if out else None)
    warnings: List[str] = []
    runs = evaluate_groups(group_dirs, ev.gt_dir, cache_root, warnings, labels=ev.labels,
                           connectivity=ev.connectivity, lesion_connectivity=ev.lesion_connectivity,
                           progress=ev.progress)
    per_case = average_runs(runs)
    warnings.extend(_case_set_warnings(per_case, list(group_dirs), baseline))
    difficulty, dsrc, strata = stratify(per_case, baseline, opts.difficulty, opts.subsets, warnings)
    summaries, comparisons, take = analyse(runs, per_case, list(group_dirs), baseline, strata, metrics)
    result = ComparisonResult(baseline=baseline, groups={g: [str(p) for p in v] for g, v in group_dirs.items()},
                              metrics=metrics, runs=runs, per_case=per_case, summaries=summaries,
                              comparisons=comparisons, take_off=take, strata=strata, difficulty=difficulty,
                              difficulty_source=dsrc, out_dir=out, warnings=warnings)
    if out is not None:
        from clips_nnunet.evaluation.compare_report import write_outputs

        write_outputs(result, opts.plots)
    return result
