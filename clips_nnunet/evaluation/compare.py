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

Seeds: per case, every metric is averaged over the group's folders that predicted that case (``n_seeds``
column); tests then compare the seed-averaged per-case values. ``sd_between_seeds`` in the table is the standard
deviation of the cohort means of the individual folders (how much a trainer's result moves between seeds).

Difficulty tertiles
-------------------
Each case gets a difficulty (higher = harder) from, in order of precedence:
``difficulty_csv`` (``case_id,difficulty``, e.g. from ``clips-nnunet score``); ``metadata``
(``case_metadata.json``, ``metadata_key`` default ``tmtv_ml``) ranked by the same definition the curricula use
(:mod:`clips_nnunet.curriculum.difficulty`: each measure's direction, e.g. small TMTV or low SUVmax = hard, and
lesion-free cases at the median rank); by default the baseline's own ``1 - Dice`` (cases without true lesion have no
Dice and stay unassigned). Cases with a difficulty are sorted by (difficulty, case id) and split into three
near-equal tertiles *easy*, *medium*, *hard*.

Statistics
----------
Per group and stratum: n, mean, sd, median of each metric (Dice over cases with a true lesion only). Against the
baseline, per metric: the paired two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, zero differences
dropped; exact p for n <= 50 without ties or zero differences, else the normal approximation with tie
correction) on cases both groups have finite values for, the median paired
difference (group - baseline), and the matched-pairs rank-biserial correlation (Kerby 2014)
``r = (R+ - R-) / (R+ + R-)`` of the non-zero differences (``+1``: the group is higher in every pair). ``better``
says which side the difference favours given the metric's direction. ``p_holm`` is Holm-adjusted over the metrics
of one group and stratum. No correction across groups or strata.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from clips_nnunet.curriculum.difficulty import difficulty_of_cases
from clips_nnunet.errors import CurriculumConfigError, DatasetError
from clips_nnunet.evaluation.evaluate import (CaseFiles, detect_file_ending, evaluate_cases, list_cases,
                                              write_rows_csv)
from clips_nnunet.evaluation.formatting import fmt_p, fmt_significant
from clips_nnunet.metrics.case_metrics import AUTOPET_CONNECTIVITY
from clips_nnunet.evaluation.statistics import holm, paired_test
from clips_nnunet.nnunet_env import reference_masks_for_results
from clips_nnunet.io_utils import PathLike, atomic_write_json, atomic_write_text, read_json

#: metric -> True when higher is better.
COMPARE_METRICS: Dict[str, bool] = {
    "dice": True, "tmtv_abs_error_ml": False, "tmtv_abs_rel_error": False, "dmax_abs_error_mm": False,
    "fp_volume_ml": False, "fn_volume_ml": False, "lesion_sensitivity": True, "lesion_precision": True,
    "lesion_f1": True,
}
TERTILES = ("easy", "medium", "hard")
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


@dataclass
class ComparisonResult:
    """Everything :func:`compare_results` computed.

    ``per_case``: one row per (group, case) with seed-averaged metrics, ``difficulty`` and ``tertile``;
    ``table``: one row per (group, stratum, metric) with n, mean, sd, median, sd_between_seeds;
    ``tests``: one row per (group, stratum, metric) against the baseline (n_pairs, p_value, p_holm,
    rank_biserial, median_diff, better). All three are pandas DataFrames.
    """

    per_case: Any
    table: Any
    tests: Any
    baseline: str
    groups: Dict[str, List[str]]
    difficulty: Dict[str, float]
    difficulty_source: str
    out_dir: Optional[Path] = None
    files: Dict[str, Path] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    subsets: Dict[str, List[str]] = field(default_factory=dict)


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


# ------------------------------------------------------------------------------------------------------ main entry
def _metric_values(df, metric: str):
    """Dice only counts on cases with a true lesion."""
    v = df[metric].astype(float)
    if metric == "dice":
        v = v.where(df["has_true_lesion"].astype(bool))
    return v


def compare_results(groups: Union[Mapping[str, Sequence[PathLike]], Sequence[PathLike]],
                    baseline: Optional[str] = None, gt_dir: Optional[PathLike] = None,
                    metadata: Optional[PathLike] = None, metadata_key: str = "tmtv_ml",
                    harder_when: Optional[str] = None, difficulty_csv: Optional[PathLike] = None,
                    out_dir: Optional[PathLike] = None, labels: Optional[Sequence[int]] = None,
                    connectivity: int = AUTOPET_CONNECTIVITY, lesion_connectivity: int = 26,
                    metrics: Optional[Mapping[str, bool]] = None, plots: bool = True,
                    progress: bool = True, cache_dir: Optional[PathLike] = None,
                    subsets: Optional[Mapping[str, Sequence[str]]] = None) -> ComparisonResult:
    """Evaluate and compare groups of nnU-Net results folders (see module docstring).

    Args:
        groups: ``{name: [folder, ...]}`` (several folders = seeds of one trainer, averaged per case) or a list of
            folders (one group each, named by :func:`default_group_names`).
        baseline: group the others are tested against; default ``nnUNetTrainer`` if present, else the first group.
        gt_dir: reference masks; default from each folder's dataset (module docstring).
        metadata, metadata_key, harder_when, difficulty_csv: difficulty source for the tertiles.
        out_dir: where to write ``report.md``, CSVs, ``comparison.json`` and plots (and a per-case cache);
            ``None`` writes nothing.
        labels: label values counted as lesion (default all > 0).
        connectivity, lesion_connectivity: as in :func:`clips_nnunet.metrics.case_metrics.compute_case_metrics`.
        metrics: ``{metric: higher_is_better}`` to compare (default :data:`COMPARE_METRICS`).
        cache_dir: per-case evaluation cache (default ``out_dir/cache``; none when both are ``None``). Several
            comparisons of the same folders (e.g. against different baselines) can share one cache.
        subsets: further strata ``{name: case ids}`` tabulated and tested like the tertiles (e.g. the patients with
            a known annotation error); names must differ from ``all`` and the tertiles.
    """
    import pandas as pd

    metrics = dict(metrics or COMPARE_METRICS)
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
    out = Path(out_dir) if out_dir is not None else None
    warnings: List[str] = []

    # evaluate every folder
    frames = []
    seed_frames = []
    for gname, dirs in group_dirs.items():
        per_seed = []
        for si, d in enumerate(dirs):
            src = resolve_results_dir(d, gt_dir=gt_dir)
            gts = list_cases(src.gt_dir, src.file_ending)
            cases = [CaseFiles(c, p, gts[c]) for c, p in src.predictions.items() if c in gts]
            lost = sorted(set(src.predictions) - set(gts))
            if lost:
                warnings.append(f"{gname} ({d}): {len(lost)} prediction(s) without reference in {src.gt_dir}: "
                                f"{lost[:5]}")
            cache_root = Path(cache_dir) if cache_dir is not None else (out / "cache" if out else None)
            cache = cache_root / hashlib.sha1(str(d.resolve()).encode()).hexdigest()[:12] if cache_root else None
            rows = evaluate_cases(cases, labels=labels, connectivity=connectivity,
                                  lesion_connectivity=lesion_connectivity, cache_dir=cache, progress=progress,
                                  desc=f"{gname}[{si}]")
            for r in rows:
                if r["status"] != "ok":
                    warnings.append(f"{gname} ({d}): {r['error']}")
            df = pd.DataFrame([r for r in rows if r["status"] == "ok"])
            if df.empty:
                warnings.append(f"{gname} ({d}): no case could be evaluated")
                continue
            df["nnunet_dice"] = df["case_id"].map(lambda c: src.nnunet_dice.get(c, float("nan")))
            df["seed"] = si
            per_seed.append(df)
        if not per_seed:
            raise DatasetError(f"group {gname}: none of its folders gave an evaluable case ({warnings[-3:]})")
        allseeds = pd.concat(per_seed, ignore_index=True)
        allseeds["group"] = gname
        seed_frames.append(allseeds)
        num_cols = [c for c in allseeds.columns if c not in ("case_id", "status", "error", "group", "seed")
                    and pd.api.types.is_numeric_dtype(allseeds[c]) and allseeds[c].dtype != bool]
        agg = allseeds.groupby("case_id", sort=True)[num_cols].mean()
        agg["has_true_lesion"] = allseeds.groupby("case_id", sort=True)["has_true_lesion"].first().astype(bool)
        agg["n_seeds"] = allseeds.groupby("case_id", sort=True)["seed"].nunique()
        agg = agg.reset_index()
        agg.insert(0, "group", gname)
        frames.append(agg)
    per_case = pd.concat(frames, ignore_index=True)
    seeds_df = pd.concat(seed_frames, ignore_index=True)

    case_sets = {g: set(per_case.loc[per_case.group == g, "case_id"]) for g in group_dirs}
    common = set.intersection(*case_sets.values())
    for g, s in case_sets.items():
        if s != case_sets[baseline]:
            warnings.append(f"{g} has {len(s)} cases, baseline {baseline} {len(case_sets[baseline])}; tests use the "
                            f"{len(s & case_sets[baseline])} shared cases")

    # difficulty
    if difficulty_csv is not None or metadata is not None:
        difficulty, dsrc = difficulty_of_cases(sorted(set(per_case.case_id)), metadata, metadata_key, harder_when,
                                               difficulty_csv)
    else:
        b = per_case[per_case.group == baseline]
        difficulty = {c: 1.0 - d for c, d, pos in zip(b.case_id, b.dice.astype(float), b.has_true_lesion)
                      if pos and math.isfinite(d)}
        dsrc = f"baseline {baseline}: 1 - Dice"
    all_cases = set(per_case.case_id)
    unknown = sorted(all_cases - set(difficulty))
    if unknown:
        warnings.append(f"{len(unknown)} case(s) have no difficulty and are in no tertile: {unknown[:5]}")
    tertile = assign_tertiles({c: v for c, v in difficulty.items() if c in all_cases})
    per_case["difficulty"] = per_case.case_id.map(lambda c: difficulty.get(c, float("nan")))
    per_case["tertile"] = per_case.case_id.map(lambda c: tertile.get(c, ""))

    # table
    subsets = {str(k): set(v) for k, v in (subsets or {}).items()}
    clash = sorted(set(subsets) & {"all", *TERTILES})
    if clash:
        raise CurriculumConfigError(f"subset name(s) {clash} clash with the built-in strata; rename them")
    strata = [("all", per_case)] + [(t, per_case[per_case.tertile == t]) for t in TERTILES]
    strata += [(name, per_case[per_case.case_id.isin(ids)]) for name, ids in subsets.items()]
    trows = []
    for g in group_dirs:
        for sname, sdf in strata:
            gdf = sdf[sdf.group == g]
            for m in metrics:
                if m not in gdf.columns:
                    continue
                v = _metric_values(gdf, m).dropna()
                row = {"group": g, "stratum": sname, "metric": m, "n": int(len(v)),
                       "mean": float(v.mean()) if len(v) else float("nan"),
                       "sd": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
                       "median": float(v.median()) if len(v) else float("nan"),
                       "n_seeds": len(group_dirs[g]), "sd_between_seeds": float("nan")}
                if sname == "all" and len(group_dirs[g]) > 1:
                    sd_ = seeds_df[seeds_df.group == g]
                    seed_means = [_metric_values(x, m).mean() for _, x in sd_.groupby("seed")]
                    row["sd_between_seeds"] = float(np.std(seed_means, ddof=1))
                trows.append(row)
    table = pd.DataFrame(trows)

    # tests against the baseline
    test_rows = []
    for g in group_dirs:
        if g == baseline:
            continue
        for sname, sdf in strata:
            block = []
            bdf = sdf[sdf.group == baseline].set_index("case_id")
            gdf = sdf[sdf.group == g].set_index("case_id")
            shared = sorted(set(bdf.index) & set(gdf.index))
            for m, higher_better in metrics.items():
                if m not in bdf.columns or m not in gdf.columns:
                    continue
                gv = _metric_values(gdf.loc[shared].reset_index(), m).to_numpy()
                bv = _metric_values(bdf.loc[shared].reset_index(), m).to_numpy()
                res = paired_test(gv, bv)
                md = res["median_diff"] if math.isfinite(res["median_diff"]) and res["median_diff"] != 0 \
                    else res["rank_biserial"]
                if not (isinstance(md, float) and math.isfinite(md)) or md == 0:
                    better = "tie"
                else:
                    better = g if (md > 0) == higher_better else baseline
                block.append({"group": g, "baseline": baseline, "stratum": sname, "metric": m,
                              "higher_is_better": higher_better, "better": better, **res})
            for row, ph in zip(block, holm([r["p_value"] for r in block])):
                row["p_holm"] = ph
            test_rows.extend(block)
    tests = pd.DataFrame(test_rows, columns=["group", "baseline", "stratum", "metric", "n_pairs", "mean_diff",
                                             "median_diff", "rank_biserial", "statistic", "p_value", "p_holm",
                                             "method", "better", "higher_is_better"])

    result = ComparisonResult(per_case=per_case, table=table, tests=tests, baseline=baseline,
                              groups={g: [str(p) for p in v] for g, v in group_dirs.items()},
                              difficulty={c: float(v) for c, v in difficulty.items() if c in all_cases},
                              difficulty_source=dsrc, out_dir=out, warnings=warnings,
                              subsets={k: sorted(v) for k, v in subsets.items()})
    if out is not None:
        _write_outputs(result, metrics, plots, n_common=len(common))
    return result


# -------------------------------------------------------------------------------------------------------- writing
def _write_outputs(res: ComparisonResult, metrics: Mapping[str, bool], plots: bool, n_common: int) -> None:
    from clips_nnunet.evaluation.evaluate import _to_json

    out = res.out_dir
    assert out is not None
    files = {"per_case_csv": write_rows_csv(res.per_case.to_dict("records"), out / "per_case.csv"),
             "summary_csv": write_rows_csv(res.table.to_dict("records"), out / "summary.csv"),
             "tests_csv": write_rows_csv(res.tests.to_dict("records"), out / "tests.csv")}
    atomic_write_json(out / "comparison.json", _to_json({
        "baseline": res.baseline, "groups": res.groups, "difficulty_source": res.difficulty_source,
        "warnings": res.warnings, "summary": res.table.to_dict("records"), "tests": res.tests.to_dict("records")}))
    files["comparison_json"] = out / "comparison.json"
    if plots:
        from clips_nnunet.evaluation import plots as P

        order = [res.baseline] + [g for g in res.groups if g != res.baseline]
        vals = {m: {g: _metric_values(res.per_case[res.per_case.group == g], m).tolist() for g in order}
                for m in metrics if m in res.per_case.columns}
        files["boxplots"] = P.grouped_boxplots(vals, out / "plots" / "boxplots.png",
                                               title="Per-case metrics (out-of-fold)")
        if "dice" in res.per_case.columns:
            tvals = {f"Dice, {t}": {g: _metric_values(res.per_case[(res.per_case.group == g)
                                                                   & (res.per_case.tertile == t)], "dice").tolist()
                                    for g in order} for t in TERTILES}
            files["boxplots_tertiles"] = P.grouped_boxplots(tvals, out / "plots" / "dice_by_tertile.png",
                                                            title=f"Dice by difficulty tertile ({res.difficulty_source})")
    res.files = files
    atomic_write_text(out / "report.md", render_markdown(res, metrics, n_common))
    res.files["report_md"] = out / "report.md"


def render_markdown(res: ComparisonResult, metrics: Mapping[str, bool], n_common: int, heading_level: int = 1,
                    link_base: str = "", title: bool = True) -> str:
    """The Markdown report (tables of mean +- sd (median) per stratum, tests, plots, warnings).

    To include it in a larger document (the study report): ``heading_level`` is the level of the title (its
    sections one below), ``link_base`` is prepended to the plot links and names the folder of the files (e.g.
    ``"vs_nnUNetTrainer/"``), ``title=False`` leaves the title out (the including document has its own heading).
    """
    if heading_level < 1:
        raise ValueError(f"heading_level must be >= 1, got {heading_level}")
    section = "#" * (heading_level + 1)
    L = [f"{'#' * heading_level} Curriculum comparison (out-of-fold validation)", ""] if title else []
    L.append(f"Baseline: **{res.baseline}**. Difficulty: {res.difficulty_source}. Cases shared by all groups: "
             f"{n_common}. Dice is averaged over cases with a true lesion only.")
    L.append("")
    L.append("| group | results folders |")
    L.append("|---|---|")
    for g, dirs in res.groups.items():
        L.append(f"| {g} | {'<br>'.join(dirs)} |")
    L.append("")
    mets = [m for m in metrics if m in set(res.table.metric)] if len(res.table) else []
    strata = list(dict.fromkeys(res.table.stratum)) if len(res.table) else []
    for stratum in strata:
        sub = res.table[res.table.stratum == stratum]
        base = res.per_case[res.per_case.group == res.baseline]
        n_cases = int(len(base) if stratum == "all" else (base.tertile == stratum).sum() if stratum in TERTILES
                      else base.case_id.isin(res.subsets.get(stratum, ())).sum())
        heading = ("All cases" if stratum == "all" else "Tertile: " + stratum if stratum in TERTILES
                   else "Subset: " + stratum)
        L.append(f"{section} {heading} (n = {n_cases})")
        L.append("")
        L.append("mean +- sd (median)" + ("; sd between seeds in brackets" if stratum == "all" and
                                          (sub.n_seeds > 1).any() else ""))
        L.append("")
        L.append("| group | " + " | ".join(f"{m} {'↑' if metrics[m] else '↓'}" for m in mets) + " |")
        L.append("|---|" + "---|" * len(mets))
        for g in [res.baseline] + [x for x in res.groups if x != res.baseline]:
            cells = []
            for m in mets:
                r = sub[(sub.group == g) & (sub.metric == m)]
                if r.empty:
                    cells.append("n/a")
                    continue
                r = r.iloc[0]
                c = f"{fmt_significant(r['mean'])} +- {fmt_significant(r['sd'])} ({fmt_significant(r['median'])})"
                if math.isfinite(r["sd_between_seeds"]):
                    c += f" [{fmt_significant(r['sd_between_seeds'])}]"
                cells.append(c)
            L.append(f"| {g} | " + " | ".join(cells) + " |")
        L.append("")
        t = res.tests[res.tests.stratum == stratum] if len(res.tests) else res.tests
        if len(t):
            L.append(f"Paired Wilcoxon signed-rank vs {res.baseline} (diff = group - baseline; r = matched-pairs "
                     f"rank-biserial; p_holm over metrics):")
            L.append("")
            L.append("| group | metric | n | median diff | r | p | p_holm | favours |")
            L.append("|---|---|---|---|---|---|---|---|")
            for _, r in t.iterrows():
                L.append(f"| {r['group']} | {r['metric']} | {r['n_pairs']} | {fmt_significant(r['median_diff'])} | "
                         f"{fmt_significant(r['rank_biserial'], 2)} | {fmt_p(r['p_value'])} | {fmt_p(r['p_holm'])} | "
                         f"{r['better']} |")
            L.append("")
    if "boxplots" in res.files:
        L += [f"{section} Plots", "", f"![per-case metrics]({link_base}plots/boxplots.png)", ""]
    if "boxplots_tertiles" in res.files:
        L += [f"![Dice by tertile]({link_base}plots/dice_by_tertile.png)", ""]
    if res.warnings:
        L += [f"{section} Warnings", ""] + [f"- {w}" for w in res.warnings] + [""]
    L += [f"Files{f' in `{link_base}`' if link_base else ''}: `per_case.csv` (seed-averaged per case), `summary.csv`, "
          "`tests.csv`, `comparison.json`.", ""]
    return "\n".join(L)
