"""The study report: the finished runs compared with :func:`clips_nnunet.evaluation.compare.compare_results`
(against the baseline and each control), one ``report.md`` + ``report.png``; the comparison against the baseline
is rendered by the comparison's own renderer (:func:`~clips_nnunet.evaluation.compare.render_markdown`) as a
section of the study report."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from clips_nnunet.errors import DatasetError
from clips_nnunet.evaluation.formatting import fmt_fixed, fmt_p
from clips_nnunet.io_utils import atomic_write_json, atomic_write_text
from clips_nnunet.study.config import StudyConfig
from clips_nnunet.study.dataset import resolve_device
from clips_nnunet.study.layout import (RunSpec, fold_dir, run_is_finished, seed_results_root, teacher_csv_path,
                                       trainer_output_dir)
from clips_nnunet.study.memorisation import memorisation_section, planted_errors

__all__ = ["REPORT_METRICS", "study_groups", "write_report", "publish_report"]

#: metrics shown in the study report (higher is better?): Dice, TMTV error, autoPET false-positive/-negative volumes
REPORT_METRICS: Dict[str, bool] = {"dice": True, "tmtv_abs_error_ml": False, "fp_volume_ml": False,
                                   "fn_volume_ml": False, "lesion_f1": True}
#: the stratum of the patients whose training annotation carries a planted error
MISLABELLED = "mislabelled"
#: nnU-Net's default training budget (epochs x iterations per epoch), for the scale statement
NNUNET_DEFAULT_ITERATIONS = 1000 * 250


def study_groups(config: StudyConfig) -> Dict[str, List[Path]]:
    """``{arm: [trainer results folder of each seed whose study folds all finished]}`` (arms with none left out)."""
    groups: Dict[str, List[Path]] = {}
    for spec in config.trainers:
        for seed in config.seeds:
            root = seed_results_root(config, seed)
            if all(run_is_finished(fold_dir(config, RunSpec(spec, f, seed, root))) for f in config.folds):
                groups.setdefault(spec.name, []).append(trainer_output_dir(config, root, spec))
    return groups


def _difficulty_arguments(config: StudyConfig) -> Dict[str, Any]:
    """How ``compare`` ranks the cases for the tertiles: ``difficulty_key`` of ``case_metadata.json``, else the
    first teacher's difficulty CSV, else compare's default (the baseline's own 1 - Dice)."""
    metadata = config.study_dir / "nnUNet_raw" / config.dataset_folder_name / "case_metadata.json"
    if config.difficulty_key and metadata.is_file():
        return {"metadata": metadata, "metadata_key": config.difficulty_key}
    csvs = [teacher_csv_path(config, t) for t in config.teachers if teacher_csv_path(config, t).is_file()]
    return {"difficulty_csv": csvs[0]} if csvs else {}


def reference_masks(config: StudyConfig) -> Tuple[Path, Dict[str, List[str]], str]:
    """``(reference folder, {stratum: case ids}, description)``: the synthetic generator's **clean** masks and the
    cases with a planted annotation error when the study's dataset has them (``clips_truth/``, never part of the
    nnU-Net dataset), else the dataset's own references (nnU-Net's ``gt_segmentations``)."""
    truth = planted_errors(config)
    if truth is not None:
        clean, kinds = truth
        bad = sorted(kinds)
        return (clean, {MISLABELLED: bad} if bad else {},
                f"the generator's clean masks (`clips_truth/`; {len(bad)} training case(s) carry a planted "
                f"annotation error in the dataset the arms trained on)")
    return (config.study_dir / "nnUNet_preprocessed" / config.dataset_folder_name / "gt_segmentations", {},
            "the dataset's own reference masks (nnU-Net's gt_segmentations)")


def _compare(config: StudyConfig, groups: Mapping[str, Sequence[Path]], baseline: str, out_dir: Path,
             reference: Tuple[Path, Dict[str, List[str]], str]):
    from clips_nnunet.evaluation.compare import compare_results

    gt_dir, subsets, _ = reference
    return compare_results({k: list(v) for k, v in groups.items()}, baseline=baseline, gt_dir=gt_dir,
                           out_dir=out_dir, metrics=REPORT_METRICS, progress=False, subsets=subsets,
                           cache_dir=out_dir.parent / "cache", **_difficulty_arguments(config))


def _header(config: StudyConfig) -> List[str]:
    """Title, what was run, and the scale statement."""
    arms = ", ".join(f"`{t.name}` (= `{t.trainer}`"
                     + (", " + ", ".join(f"{k}={v}" for k, v in t.overrides) if t.overrides else "")
                     + (f", teacher `{t.teacher}`" if t.teacher else "") + ")" for t in config.trainers)
    lines = [f"# Curriculum study `{config.name}`", ""]
    lines += [f"- Dataset: {config.dataset_folder_name} (source `{config.dataset_source}`"
              + (f", {dict(config.dataset_options)}" if config.dataset_options else "") + ")",
              f"- nnU-Net configuration `{config.configuration}`, plans `{config.plans}`, device `{config.device}`",
              f"- Folds {list(config.folds)}" + (f" of a {config.n_splits}-fold split (stratified by "
                                                 f"`{config.difficulty_key}`)" if config.n_splits else ""),
              f"- Seeds {list(config.seeds)} (`CLIPS_SEED`; each seed in its own `nnUNet_results` root)",
              f"- Budget per run, equal for every arm: {config.epochs} epochs x {config.iterations_per_epoch} "
              f"iterations = {config.budget_iterations} training iterations",
              f"- Arms: {arms}",
              f"- Baseline `{config.baseline}`; controls: {', '.join(f'`{c}`' for c in config.controls) or 'none'}",
              ""]
    share = 100 * config.budget_iterations / NNUNET_DEFAULT_ITERATIONS
    lines += [f"Scale: nnU-Net's default budget is 1000 epochs x 250 iterations = {NNUNET_DEFAULT_ITERATIONS:,} "
              f"iterations per run; this study used {config.budget_iterations:,} ({share:.3g} %), on folds "
              f"{list(config.folds)} only. Whether a budget trains a model fully depends on the data: the section "
              f"*Does the baseline converge?* shows whether the baseline's validation Dice reached a plateau here; "
              f"where it did not, differences say how the arms behave early in training, not whether a "
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


def _baseline_section(config: StudyConfig, res, reference_text: str) -> List[str]:
    """The comparison against the baseline, rendered by compare's renderer one heading level down."""
    from clips_nnunet.evaluation.compare import render_markdown

    shared = set.intersection(*(set(res.per_case.case_id[res.per_case.group == g]) for g in res.groups))
    lines = ["## Results against the baseline", "",
             f"Out-of-fold validation cases: {res.per_case.case_id.nunique()}, evaluated against "
             f"{reference_text}; difficulty for the tertiles: {res.difficulty_source}. Per case, "
             f"metrics are averaged over seeds; tables give mean +- sd (median) over cases, [sd of the per-seed "
             f"cohort means]. Tests: paired two-sided Wilcoxon signed-rank over cases, r = matched-pairs "
             f"rank-biserial (Kerby 2014), Holm over the metrics. FP/FN volumes as autoPET defines them.", ""]
    return lines + render_markdown(res, REPORT_METRICS, len(shared), heading_level=2,
                                   link_base=f"vs_{config.baseline}/", title=False).splitlines() + [""]


def _control_section(ref: str, res) -> List[str]:
    lines = [f"## Paired tests against the control `{ref}`", "",
             f"diff = arm - {ref}; all cases, the hardest tertile and the mislabelled patients (if any); full "
             f"tables in `vs_{ref}/`.", "",
             "| arm | stratum | metric | n | median diff | r | p | p_holm | favours |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, r in res.tests[res.tests.stratum.isin(["all", "hard", MISLABELLED])].iterrows():
        lines.append(f"| {r['group']} | {r['stratum']} | {r['metric']} | {r['n_pairs']} | "
                     f"{fmt_fixed(r['median_diff'])} | {fmt_fixed(r['rank_biserial'], 2)} | {fmt_p(r['p_value'])} | "
                     f"{fmt_p(r['p_holm'])} | {r['better']} |")
    return lines + [""]


def _plateau_section(config: StudyConfig, out_dir: Path) -> Tuple[List[str], Dict[str, Any]]:
    """The baseline's per-epoch pseudo Dice of every seed and fold, the plateau criterion of
    :mod:`clips_nnunet.study.curves` for each, and ``baseline_curve.png``; also ``{run: criterion values}``."""
    from clips_nnunet.study.curves import curves_of, plateau, plot_curves

    spec = config.trainer(config.baseline)
    runs = {f"seed {s}, fold {f}": fold_dir(config, RunSpec(spec, f, s, seed_results_root(config, s)))
            for s in config.seeds for f in config.folds}
    curves = curves_of(runs)
    if not curves:
        return [], {}
    lengths = {len(v) for v in curves.values()}
    if len(curves) > 1 and len(lengths) == 1:  # the verdict: the runs' mean curve (less patch-sampling noise)
        curves[f"mean of the {len(curves)} runs"] = np.mean(list(curves.values()), axis=0).tolist()
    plot_curves(curves, out_dir / "baseline_curve.png",
                f"{config.baseline}: pseudo Dice per epoch ({config.iterations_per_epoch} iterations each)")
    results = {k: plateau(v) for k, v in curves.items()}
    w = next(iter(results.values()))
    lines = ["## Does the baseline converge?", "",
             f"Plateau criterion: the mean pseudo Dice (nnU-Net's per-epoch Dice of the validation patches, against "
             f"the dataset's own masks) of the last {w.window_epochs} epochs gained less than {w.tolerance} over the "
             f"{w.window_epochs} epochs before them. One epoch's pseudo Dice comes from a few patches, so the verdict "
             f"is read on the mean curve of the runs (last row) when there are several.", "",
             "![baseline pseudo Dice per epoch](baseline_curve.png)", "",
             "| run | epochs | mean of the window before | mean of the last window | gain | plateau |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {r.epochs} | {fmt_fixed(r.before)} | {fmt_fixed(r.last)} | {fmt_fixed(r.gain)} | "
              f"{'yes' if r.reached else 'no'} |" for k, r in results.items()]
    values = {k: {"epochs": r.epochs, "before": r.before, "last": r.last, "gain": r.gain, "reached": r.reached,
                  "pseudo_dice": curves[k]} for k, r in results.items()}
    return lines + [""], values


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
    (against the baseline and against each control) and write one ``report.md`` with ``report.png`` into
    ``out_dir`` (default ``study_dir/report``); the full comparisons (CSV, JSON, box plots) go to ``vs_<arm>/``.
    With planted annotation errors, the badly annotated training patients are predicted by every run (once;
    :mod:`clips_nnunet.study.memorisation`) and scored in ``memorisation/``."""
    import matplotlib

    matplotlib.use("Agg")  # before compare plots: reports are written on machines without a display
    out_dir = Path(out_dir or config.study_dir / "report")
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = study_groups(config)
    lines = _header(config) + _completeness(config, groups)
    summary: Dict[str, Any] = {"groups": {k: [str(p) for p in v] for k, v in groups.items()}, "comparisons": {}}
    if config.baseline in groups:
        reference = reference_masks(config)
        main = _compare(config, groups, config.baseline, out_dir / f"vs_{config.baseline}", reference)
        summary["comparisons"][config.baseline] = str(out_dir / f"vs_{config.baseline}" / "comparison.json")
        plateau_lines, summary["plateau"] = _plateau_section(config, out_dir)
        lines += plateau_lines + _baseline_section(config, main, reference[2])
        for ref, arms in config.control_pairs():
            arms = [a for a in arms if a in groups]
            if ref not in groups or ref == config.baseline or not arms:
                continue
            res = _compare(config, {k: groups[k] for k in [ref, *arms]}, ref, out_dir / f"vs_{ref}", reference)
            summary["comparisons"][ref] = str(out_dir / f"vs_{ref}" / "comparison.json")
            lines += _control_section(ref, res)
        memorisation_lines, summary["memorisation"] = memorisation_section(
            config, groups, resolve_device(config.device), out_dir / "memorisation", echo)
        lines += memorisation_lines
        _plot_summary(main, config, out_dir / "report.png")
        lines.insert(2, "![Dice and TMTV error per arm: all cases, hardest tertile, mislabelled patients]"
                        "(report.png)\n")
    else:
        lines += [f"The baseline `{config.baseline}` has no finished run yet: nothing to compare.", ""]
    lines += _runs_section(status)
    atomic_write_json(out_dir / "report.json", summary)
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _plot_summary(res, config: StudyConfig, path: Path) -> None:
    """Box plots of seed-averaged per-case Dice and |TMTV error| per arm: all cases, the hardest tertile and the
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
