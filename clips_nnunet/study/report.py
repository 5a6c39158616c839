"""The study report: the finished runs compared with :func:`clips_nnunet.evaluation.compare.compare_results`
(against the baseline and each control, run-level), one ``report.md`` + ``report.png`` + ``per_run_case.csv``
(every run's value of every case: anyone can recompute the numbers) + ``comparisons.csv`` (every comparison the
report prints, with the report's Holm adjustment). Sections: budgets (:mod:`.report_sections`), convergence
ladder, take-off, A/A check, results against the baseline and the controls, memorisation (:mod:`.memorisation`),
runs."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from clips_nnunet.errors import DatasetError
from clips_nnunet.evaluation.compare_analysis import ALL, TOOK_OFF, adjust_holm
from clips_nnunet.evaluation.compare_report import (METHOD_TEXT, comparison_rows, comparison_table, summary_table,
                                                    take_off_table)
from clips_nnunet.evaluation.evaluate import write_rows_csv
from clips_nnunet.io_utils import atomic_write_json, atomic_write_text
from clips_nnunet.study.config import StudyConfig
from clips_nnunet.study.dataset import resolve_device
from clips_nnunet.study.layout import (RunSpec, fold_dir, run_is_finished, seed_results_root, teacher_csv_path,
                                       trainer_output_dir)
from clips_nnunet.study.memorisation import memorisation_lines, memorisation_results, planted_errors
from clips_nnunet.study.report_sections import (aa_lines, attach_seeds, budget_lines, convergence_lines,
                                                ladder_verdict, per_run_case_table)

__all__ = ["REPORT_METRICS", "study_groups", "write_report", "publish_report"]

#: metrics shown in the study report (higher is better?): Dice, TMTV error, autoPET false-positive/-negative volumes
REPORT_METRICS: Dict[str, bool] = {"dice": True, "tmtv_abs_error_ml": False, "fp_volume_ml": False,
                                   "fn_volume_ml": False, "lesion_f1": True}
#: the stratum of the patients whose training annotation carries a planted error
MISLABELLED = "mislabelled"
#: the stratum of the user's badly segmented cases (``badly_segmented``: the audit's confirmed errors)
BADLY_SEGMENTED = "badly_segmented"
#: nnU-Net's default training budget (epochs x iterations per epoch), for the scale statement
NNUNET_DEFAULT_ITERATIONS = 1000 * 250


def study_groups(config: StudyConfig) -> Dict[str, List[Path]]:
    """``{arm: [trainer results folder of each seed whose study folds all finished]}`` (arms with none left out)."""
    return {arm: [folder for _, folder in runs] for arm, runs in _finished_seeds(config).items()}


def _finished_seeds(config: StudyConfig) -> Dict[str, List[Tuple[int, Path]]]:
    """``{arm: [(seed, results folder), ...]}`` of the seeds whose study folds all finished."""
    out: Dict[str, List[Tuple[int, Path]]] = {}
    for spec in config.trainers:
        for seed in config.seeds:
            root = seed_results_root(config, seed)
            if all(run_is_finished(fold_dir(config, RunSpec(spec, f, seed, root))) for f in config.folds):
                out.setdefault(spec.name, []).append((seed, trainer_output_dir(config, root, spec)))
    return out


def _difficulty_arguments(config: StudyConfig) -> Dict[str, Any]:
    """How ``compare`` ranks the cases for the tertiles: ``difficulty_key`` of ``case_metadata.json``, else the
    first teacher's difficulty CSV, else compare's default (the baseline's own 1 - Dice)."""
    metadata = config.study_dir / "nnUNet_raw" / config.dataset_folder_name / "case_metadata.json"
    if config.difficulty_key and metadata.is_file():
        return {"metadata": metadata, "metadata_key": config.difficulty_key}
    csvs = [teacher_csv_path(config, t) for t in config.teachers if teacher_csv_path(config, t).is_file()]
    csvs += [t.teacher_csv for t in config.trainers if t.teacher_csv is not None and t.teacher_csv.is_file()]
    return {"difficulty_csv": csvs[0]} if csvs else {}


def reference_masks(config: StudyConfig) -> Tuple[Path, Dict[str, List[str]], str]:
    """``(reference folder, {stratum: case ids}, description)``: the synthetic generator's **clean** masks and the
    cases with a planted annotation error when the study's dataset has them (``clips_truth/``, never part of the
    nnU-Net dataset), else the dataset's own references (nnU-Net's ``gt_segmentations``)."""
    truth = planted_errors(config)
    listed = _badly_segmented(config)
    if truth is not None:
        clean, kinds = truth
        bad = sorted(kinds)
        return (clean, {**({MISLABELLED: bad} if bad else {}), **listed},
                f"the generator's clean masks (`clips_truth/`; {len(bad)} training case(s) carry a planted "
                f"annotation error in the dataset the arms trained on)")
    return (config.study_dir / "nnUNet_preprocessed" / config.dataset_folder_name / "gt_segmentations", listed,
            "the dataset's own reference masks (nnU-Net's gt_segmentations)")


def _badly_segmented(config: StudyConfig) -> Dict[str, List[str]]:
    """``{BADLY_SEGMENTED: case ids}``: the ``confirmed_error`` cases of the config's ``badly_segmented``
    (the audit's ``audit_decisions.csv``), or ``{}`` without one."""
    if config.badly_segmented is None:
        return {}
    from clips_nnunet.audit.decisions import confirmed_errors

    cases = sorted(confirmed_errors(config.badly_segmented))
    return {BADLY_SEGMENTED: cases} if cases else {}


def out_of_fold_strata(config: StudyConfig, subsets: Mapping[str, Sequence[str]]) -> Dict[str, List[str]]:
    """The listed strata (mislabelled, badly segmented) restricted to the validation cases of the study's folds
    (``splits_final.json``), so that a stratum's n counts the patients the study predicts out of fold; empty strata
    are dropped. Unchanged without a split file."""
    from clips_nnunet.io_utils import read_json

    path = config.study_dir / "nnUNet_preprocessed" / config.dataset_folder_name / "splits_final.json"
    if not path.is_file():
        return {k: list(v) for k, v in subsets.items()}
    splits = read_json(path)
    oof = {c for f in config.folds if f < len(splits) for c in splits[f]["val"]}
    kept = {k: [c for c in v if c in oof] for k, v in subsets.items()}
    return {k: v for k, v in kept.items() if v}


def _compare(config: StudyConfig, groups: Mapping[str, Sequence[Path]], baseline: str, out_dir: Path,
             reference: Tuple[Path, Dict[str, List[str]], str], seeds: Mapping[str, Sequence[int]],
             metrics: Optional[Mapping[str, bool]] = None):
    from clips_nnunet.evaluation.compare import compare_results

    gt_dir, subsets, _ = reference
    subsets = out_of_fold_strata(config, subsets)
    res = compare_results({k: list(v) for k, v in groups.items()}, baseline=baseline, gt_dir=gt_dir,
                          out_dir=out_dir, metrics=metrics or REPORT_METRICS, progress=False, subsets=subsets,
                          cache_dir=out_dir.parent / "cache", **_difficulty_arguments(config))
    attach_seeds(res, seeds)
    return res


def _header(config: StudyConfig) -> List[str]:
    """Title, what was run, and the scale statement."""
    arms = ", ".join(f"`{t.name}` (= `{t.trainer}`"
                     + (", " + ", ".join(f"{k}={v}" for k, v in t.overrides) if t.overrides else "")
                     + (f", teacher `{t.teacher}`" if t.teacher else "") + ")" for t in config.trainers)
    lines = [f"# Curriculum study `{config.name}`", ""]
    lines += [f"- Dataset: {config.dataset_folder_name} (source `{config.dataset_source}`"
              + (f", {dict(config.dataset_options)}" if config.dataset_options else "") + ")",
              f"- nnU-Net configuration `{config.configuration}`, plans `{config.plans}`, device `{config.device}`",
              f"- Folds {list(config.folds)}" + (f" of a {config.n_splits}-fold split" if config.n_splits else "")
              + (f" (stratified by `{config.difficulty_key}`)" if config.n_splits and config.difficulty_key else ""),
              f"- Seeds {list(config.seeds)} (`CLIPS_SEED`; each seed in its own `nnUNet_results` root); a run "
              f"is one seed of one fold",
              f"- Budget per run at 1x: {config.epochs} epochs x {config.iterations_per_epoch} iterations = "
              f"{config.budget_iterations} training iterations (accounting per arm in *Budgets*)",
              f"- Arms: {arms}",
              f"- Baseline `{config.baseline}`; controls: {', '.join(f'`{c}`' for c in config.controls) or 'none'}",
              ""]
    share = 100 * config.budget_iterations / NNUNET_DEFAULT_ITERATIONS
    lines += [f"Scale: nnU-Net's default budget is 1000 epochs x 250 iterations = {NNUNET_DEFAULT_ITERATIONS:,} "
              f"iterations per run; this study used {config.budget_iterations:,} ({share:.3g} %), on folds "
              f"{list(config.folds)} only. Whether a budget trains a model fully depends on the data: the section "
              f"*Does the baseline converge?* compares the baseline at 1x and 2x the budget; where it has not "
              f"converged, differences say how the arms behave early in training, not whether a "
              f"curriculum helps a fully trained model.", ""]
    return lines


def _completeness(config: StudyConfig, groups: Mapping[str, Sequence[Path]]) -> List[str]:
    lines: List[str] = []
    missing = [t.name for t in config.trainers if t.name not in groups]
    if missing:
        lines += [f"Arms without a finished run (not evaluated): {', '.join(missing)}.", ""]
    partial = {k: len(v) for k, v in groups.items() if len(v) < len(config.seeds)}
    if partial:
        lines += ["Arms with fewer finished seeds than configured (per-case values average the finished seeds): "
                  + ", ".join(f"{k} ({n}/{len(config.seeds)})" for k, n in partial.items()) + ".", ""]
    return lines


def _baseline_section(config: StudyConfig, res, reference_text: str, family: int) -> List[str]:
    """The comparison against the baseline: per stratum the arms' means and the differences."""
    lines = ["## Results against the baseline", "",
             f"Out-of-fold validation cases: {len(res.strata[ALL])}, evaluated against {reference_text}; "
             f"difficulty for the tertiles: {res.difficulty_source}. {METHOD_TEXT} p_holm: Holm over all {family} "
             f"comparisons with a defined p-value that this report prints (every arm x stratum x metric against "
             f"the baseline, the comparisons against the controls, Dice among the runs that took off, and the "
             f"memorisation differences; the A/A check and the convergence ladder are not in the family). FP/FN "
             f"volumes as autoPET defines them. Full tables, CSV and plots in `vs_{config.baseline}/` (its own "
             f"p_holm there is within that comparison only).", ""]
    for stratum, cases in res.strata.items():
        heading = stratum if stratum != ALL else "all cases"
        lines += [f"### {heading} (n = {len(cases)})", ""] + summary_table(res, stratum)
        comps = [c for c in res.comparisons if c.stratum == stratum]
        lines += comparison_table(comps) if comps else []
    took = [c for c in res.comparisons if c.stratum == TOOK_OFF]
    if took:
        lines += ["### Dice among the runs that took off", "",
                  "The same comparison (Dice, all cases) restricted to the runs of every arm that took off:", ""]
        lines += comparison_table(took)
    if "boxplots" in res.files:
        lines += [f"![per-case metrics](vs_{config.baseline}/plots/boxplots.png)", ""]
    if "boxplots_tertiles" in res.files:
        lines += [f"![Dice by tertile](vs_{config.baseline}/plots/dice_by_tertile.png)", ""]
    return lines


def _printed_control_comparisons(res) -> List[Any]:
    return [c for c in res.comparisons if c.stratum in (ALL, "hard", MISLABELLED, TOOK_OFF)]


def _control_section(ref: str, res) -> List[str]:
    lines = [f"## Against the control `{ref}`", "",
             f"diff = arm - {ref}, run-level; all cases, the hardest tertile, the mislabelled patients (if any) and "
             f"Dice among the runs that took off (if some did not); full tables in `vs_{ref}/`.", ""]
    return lines + comparison_table(_printed_control_comparisons(res))


def _curve_plot(config: StudyConfig, out_dir: Path) -> Optional[str]:
    """``baseline_curve.png``: the baseline's per-epoch pseudo Dice of every seed and fold (description only)."""
    from clips_nnunet.study.curves import curves_of, plot_curves

    spec = config.trainer(config.baseline)
    runs = {f"seed {s}, fold {f}": fold_dir(config, RunSpec(spec, f, s, seed_results_root(config, s)))
            for s in config.seeds for f in config.folds}
    curves = curves_of(runs)
    if not curves:
        return None
    plot_curves(curves, out_dir / "baseline_curve.png",
                f"{config.baseline}: pseudo Dice per epoch ({config.iterations_per_epoch} iterations each)")
    return "baseline_curve.png"


def _runs_section(status: Optional[Mapping[str, Any]]) -> List[str]:
    lines = ["## Runs", "", "| run | status |", "|---|---|"]
    lines += [f"| {label} | {state} |" for label, state in (status or {}).get("runs", {}).items()]
    return lines + ["", "Reproduce: `clips-nnunet study CONFIG.yaml` (finished runs are skipped). Each run is "
                    "`nnUNetv2_train DATASET CONFIG FOLD -tr <arm>Study` with `CLIPS_SEED=S` and "
                    "`nnUNet_results=<study_dir>/seed_S/nnUNet_results`; the exact commands are in "
                    "`<study_dir>/logs/`.", ""]


def write_report(config: StudyConfig, status: Optional[Mapping[str, Any]] = None,
                 out_dir: Optional[Path] = None, echo: bool = True) -> Path:
    """Compare the finished runs with the evaluator's :func:`clips_nnunet.evaluation.compare.compare_results`
    (against the baseline, against each control, and the convergence ladder's rungs against the 1x baseline) and
    write ``report.md``, ``report.png``, ``per_run_case.csv`` and ``comparisons.csv`` into ``out_dir`` (default
    ``study_dir/report``); the full comparisons (CSV, JSON, box plots) go to ``vs_<arm>/`` and ``ladder_<arm>/``.
    With planted annotation errors, the badly annotated training patients are predicted by every run (once;
    :mod:`clips_nnunet.study.memorisation`) and scored in ``memorisation/``."""
    import matplotlib

    matplotlib.use("Agg")  # before compare plots: reports are written on machines without a display
    out_dir = Path(out_dir or config.study_dir / "report")
    out_dir.mkdir(parents=True, exist_ok=True)
    finished = _finished_seeds(config)
    groups = {arm: [folder for _, folder in runs] for arm, runs in finished.items()}
    seeds = {arm: [seed for seed, _ in runs] for arm, runs in finished.items()}
    lines = _header(config) + budget_lines(config) + _completeness(config, groups)
    summary: Dict[str, Any] = {"baseline": config.baseline, "comparisons": {},
                               "groups": {k: [str(p) for p in v] for k, v in groups.items()}}
    if config.baseline in groups:
        reference = reference_masks(config)
        arms = {k: v for k, v in groups.items() if k not in config.ladder_arms}
        main = _compare(config, arms, config.baseline, out_dir / f"vs_{config.baseline}", reference, seeds)
        summary["comparisons"][config.baseline] = str(out_dir / f"vs_{config.baseline}" / "comparison.json")
        controls = []
        for ref, names in config.control_pairs():
            names = [a for a in names if a in arms]
            if ref in arms and ref != config.baseline and names:
                res = _compare(config, {k: arms[k] for k in [ref, *names]}, ref, out_dir / f"vs_{ref}", reference,
                               seeds)
                summary["comparisons"][ref] = str(out_dir / f"vs_{ref}" / "comparison.json")
                controls.append((ref, res))
        ladder = {rung: _compare(config, {config.baseline: groups[config.baseline], rung: groups[rung]},
                                 config.baseline, out_dir / f"ladder_{rung}", reference, seeds, {"dice": True})
                  for rung in config.ladder_arms if rung in groups}
        memo = memorisation_results(config, arms, resolve_device(config.device), out_dir / "memorisation", echo)
        family = list(main.comparisons) + [c for _, r in controls for c in _printed_control_comparisons(r)]
        family += memo.printed_comparisons() if memo is not None else []
        adjust_holm(family)
        lines += convergence_lines(config, ladder, _curve_plot(config, out_dir))
        summary["ladder"] = {rung: {"difference": dataclasses.asdict(c.difference), "margin": config.convergence_margin,
                                    "verdict": ladder_verdict(c.difference, config.convergence_margin)}
                             for rung, res in ladder.items() for c in [res.comparison(rung, "dice")] if c is not None}
        lines += ["## Take-off", "", "A run took off when its final model predicted a lesion in at least one of "
                  "its validation patients; Fisher's exact test of each arm's rate against the baseline's.", ""]
        lines += take_off_table(main.take_off)
        aa, summary["aa_check"] = aa_lines(config, main)
        n_family = max((c.family for c in family), default=0)
        lines += aa + _baseline_section(config, main, reference[2], n_family)
        for ref, res in controls:
            lines += _control_section(ref, res)
        if memo is not None:
            memorisation_text, summary["memorisation"] = memorisation_lines(config, memo)
            lines += memorisation_text
        write_rows_csv(per_run_case_table([main, *ladder.values()]).to_dict("records"), out_dir / "per_run_case.csv")
        write_rows_csv(comparison_rows(family), out_dir / "comparisons.csv")
        lines += ["Files: `per_run_case.csv` (every run's value of every out-of-fold case, with arm, seed and fold: "
                  "every number above can be recomputed from it), `comparisons.csv` (every comparison in the Holm "
                  "family with the report's adjustment).", ""]
        _plot_summary(main, config, out_dir / "report.png")
        lines.insert(2, "![Dice and TMTV error per arm: all cases, hardest tertile, mislabelled patients]"
                        "(report.png)\n")
    else:
        lines += [f"The baseline `{config.baseline}` has no finished run yet: nothing to compare.", ""]
    lines += _runs_section(status)
    from clips_nnunet.evaluation.evaluate import _to_json

    atomic_write_json(out_dir / "report.json", _to_json(summary))
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _plot_summary(res, config: StudyConfig, path: Path) -> None:
    """Box plots of run-averaged per-case Dice and |TMTV error| per arm: all cases, the hardest tertile and the
    mislabelled patients (when the dataset has planted annotation errors)."""
    import matplotlib.pyplot as plt

    arms = [config.baseline] + [g for g in res.groups if g != config.baseline]
    pc = res.per_case
    strata = [("all cases", pc), ("hardest tertile", pc[pc.tertile == "hard"])]
    if res.subsets.get(MISLABELLED):
        strata.append(("mislabelled patients", pc[pc.case_id.isin(res.subsets[MISLABELLED])]))
    fig, axes = plt.subplots(2, len(strata), figsize=(5.5 * len(strata), 7), squeeze=False)
    for row, (metric, label) in enumerate((("dice", "Dice"), ("tmtv_abs_error_ml", "|TMTV error| (ml)"))):
        for col, (title, sub) in enumerate(strata):
            ax = axes[row][col]
            data = []
            for a in arms:
                v = sub.loc[sub.group == a, metric].astype(float).to_numpy()
                v = v[np.isfinite(v)]
                data.append(v if v.size else np.array([np.nan]))
            ax.boxplot(data, showmeans=True)
            ax.set_xticks(range(1, len(arms) + 1))
            ax.set_xticklabels([a.replace("nnUNetTrainer", "") or "nnUNetTrainer" for a in arms], rotation=30,
                               ha="right", fontsize=8)
            ax.set_title(f"{label}, {title} (n={sub.case_id.nunique()})", fontsize=9)
    fig.suptitle(f"study {config.name}: {config.budget_iterations} iterations per run, seeds {list(config.seeds)}, "
                 f"folds {list(config.folds)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def publish_report(config: StudyConfig, dest: Path) -> Path:
    """Copy ``<study_dir>/report`` (Markdown, PNG, CSV, JSON) to ``dest`` (e.g. ``docs/results/<name>``), writing
    the study folder's absolute path as ``<study_dir>`` so the copy does not depend on this machine; the per-case
    cache is left out. Returns ``dest / "report.md"``."""
    src = config.study_dir / "report"
    if not (src / "report.md").is_file():
        raise DatasetError(f"{src / 'report.md'} does not exist: run the study (or --report-only) first")
    dest = Path(dest)
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_dir() or "cache" in rel.parts:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix in (".md", ".json", ".csv"):
            atomic_write_text(target, path.read_text().replace(str(config.study_dir), "<study_dir>"))
        else:
            shutil.copyfile(path, target)
    return dest / "report.md"
