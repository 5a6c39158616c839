"""Did an arm learn its badly annotated training patients' wrong masks? Predictions of those patients by each run.

The out-of-fold strata of the report score patients whose own masks never reached the model that predicts them.
Whether a curriculum keeps a model from *memorising* wrong annotations shows on the patients it trained on: for the
first study fold, the training patients whose mask carries a planted annotation error (``clips_truth/``) are
predicted by every finished run's ``checkpoint_final.pth`` with nnU-Net's ``nnUNetPredictor`` (in this process,
no mirroring: :func:`clips_nnunet.evaluation.scoring.score_with_model`) and scored twice: against the clean mask
(high: the model resisted the error) and against the planted mask it trained on (high: it learned the error).

Layout: ``study_dir/memorisation/seed_<S>/<arm>/``: the predictions and ``checkpoint.json`` (size and time of the
checkpoint they came from: a retrained run is predicted again). Written to ``<arm>.partial`` and renamed once every
case is there, so an interrupted prediction is redone, never read.
"""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from clips_nnunet.errors import DatasetError
from clips_nnunet.evaluation.compare_report import p_text
from clips_nnunet.evaluation.formatting import fmt_fixed
from clips_nnunet.evaluation.statistics import describe
from clips_nnunet.io_utils import atomic_write_json, read_json
from clips_nnunet.nnunet_env import environment_applied
from clips_nnunet.study.config import StudyConfig
from clips_nnunet.study.layout import RunSpec, fold_dir, run_is_finished, seed_results_root, study_environment

__all__ = ["planted_errors", "planted_training_cases", "predict_planted_training_cases", "ceiling_dice",
           "Memorisation", "memorisation_results", "memorisation_lines"]


def planted_errors(config: StudyConfig) -> Optional[Tuple[Path, Dict[str, str]]]:
    """``(clean mask folder, {case: planted error kind})`` when the study's dataset comes from the synthetic
    generator's ground truth (``clips_truth/``, never part of the nnU-Net dataset; no cases when no error was
    planted), else None."""
    from clips_nnunet.synthetic.raw import ERRORS_JSON, truth_dir

    truth = truth_dir(config.study_dir / "nnUNet_raw", config.dataset_id, config.dataset_name)
    if not (truth / ERRORS_JSON).is_file() or not (truth / "labels_clean").is_dir():
        return None
    cases = read_json(truth / ERRORS_JSON).get("cases", {})
    return truth / "labels_clean", {c: str(rec["kind"]) for c, rec in cases.items() if rec.get("kind")}


def planted_training_cases(config: StudyConfig, fold: int) -> Dict[str, str]:
    """``{case: error kind}`` of the training patients of ``fold`` whose mask carries a planted error."""
    truth = planted_errors(config)
    if truth is None or not truth[1]:
        return {}
    kinds = truth[1]
    splits = config.study_dir / "nnUNet_preprocessed" / config.dataset_folder_name / "splits_final.json"
    if not splits.is_file():
        raise DatasetError(f"{splits} is missing: the study's dataset was not prepared (run the study first)")
    train = set(read_json(splits)[fold]["train"])
    return {c: k for c, k in sorted(kinds.items()) if c in train}


def _stamp(checkpoint: Path) -> Dict[str, int]:
    stat = checkpoint.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _complete(folder: Path, cases: List[str], stamp: Optional[Dict[str, int]] = None) -> bool:
    """Every case predicted (and, with ``stamp``, from that checkpoint)."""
    if not folder.is_dir() or not all(any(folder.glob(f"{c}.*")) for c in cases):
        return False
    marker = folder / "checkpoint.json"
    return stamp is None or (marker.is_file() and read_json(marker) == stamp)


def predict_planted_training_cases(config: StudyConfig, groups: Mapping[str, List[Path]], device: str,
                                   cases: Sequence[str], echo: bool = True) -> Dict[str, List[Path]]:
    """``{arm: [prediction folder per seed]}``: ``cases`` (training cases of the first study fold) predicted by
    that fold's runs when missing, with nnU-Net's ``nnUNetPredictor`` through
    :func:`clips_nnunet.evaluation.scoring.score_with_model`. A failed prediction leaves that seed out and says
    so."""
    from clips_nnunet.evaluation.scoring import score_with_model

    fold = config.folds[0]
    cases = list(cases)
    raw = config.study_dir / "nnUNet_raw" / config.dataset_folder_name
    out: Dict[str, List[Path]] = {}
    for spec in config.trainers:
        if spec.name not in groups:
            continue
        for seed in config.seeds:
            run = RunSpec(spec, fold, seed, seed_results_root(config, seed))
            if not run_is_finished(fold_dir(config, run)):
                continue
            dest = config.study_dir / "memorisation" / f"seed_{seed}" / spec.name
            stamp = _stamp(fold_dir(config, run) / "checkpoint_final.pth")
            if not _complete(dest, cases, stamp):
                partial = dest.with_name(dest.name + ".partial")
                shutil.rmtree(partial, ignore_errors=True)
                if echo:
                    print(f"[study] memorisation: {run.label} predicts {len(cases)} training cases", flush=True)
                log = config.study_dir / "logs" / f"memorisation_{spec.name}_seed{seed}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                try:  # nnU-Net's own output (progress bars, notes) goes to the log
                    with environment_applied(study_environment(config, run)), warnings.catch_warnings(), \
                            open(log, "a") as stream, contextlib.redirect_stdout(stream), \
                            contextlib.redirect_stderr(stream):
                        warnings.simplefilter("ignore")
                        score_with_model(fold_dir(config, run).parent, raw / "imagesTr", raw / "labelsTr",
                                         folds=(fold,), device=device, case_ids=cases, output_folder=partial)
                except (OSError, RuntimeError, ValueError, DatasetError) as e:
                    print(f"[study] memorisation: {run.label}: prediction failed ({e}); left out (log {log})",
                          flush=True)
                    continue
                if not _complete(partial, cases):
                    print(f"[study] memorisation: {run.label}: cases missing in {partial}; left out", flush=True)
                    continue
                atomic_write_json(partial / "checkpoint.json", stamp)
                shutil.rmtree(dest, ignore_errors=True)
                partial.rename(dest)
            out.setdefault(spec.name, []).append(dest)
    return out


def _compare(groups: Mapping[str, List[Path]], baseline: str, gt_dir: Path, out_dir: Path):
    from clips_nnunet.evaluation.compare import compare_results

    return compare_results(dict(groups), baseline=baseline, gt_dir=gt_dir, out_dir=out_dir,
                           metrics={"dice": True}, plots=False, progress=False)


def ceiling_dice(config: StudyConfig, cases: Sequence[str]) -> Dict[str, float]:
    """``{case: Dice(clean mask, planted mask)}``: how far a perfect model of the clean anatomy scores against the
    planted masks (and a model that learned every planted error against the clean ones)."""
    import SimpleITK as sitk

    from clips_nnunet.io_utils import read_image
    from clips_nnunet.metrics.overlap import dice

    truth = planted_errors(config)
    if truth is None:
        return {}
    labels = config.study_dir / "nnUNet_raw" / config.dataset_folder_name / "labelsTr"
    out = {}
    for case in cases:
        clean, planted = sorted(truth[0].glob(f"{case}.*")), sorted(labels.glob(f"{case}.*"))
        if clean and planted:
            out[case] = dice(sitk.GetArrayFromImage(read_image(planted[0], what="planted mask")),
                             sitk.GetArrayFromImage(read_image(clean[0], what="clean mask")))
    return out


@dataclasses.dataclass
class Memorisation:
    """The badly annotated training patients of ``fold`` predicted by every run, scored against the clean
    (``clean``) and the planted masks (``planted``); ``controls``: arm -> (its control, comparison against it on
    the clean masks); ``ceiling``: Dice(clean, planted) per case."""

    fold: int
    kinds: Dict[str, str]
    clean: Any
    planted: Any
    controls: Dict[str, Tuple[str, Any]]
    ceiling: Dict[str, float]
    reference: Optional[Any] = None
    reference_note: str = ""

    def printed_comparisons(self) -> List[Any]:
        """The comparisons the report prints (Dice vs the clean mask, all these patients): against the baseline
        and each arm's control (for the report's Holm family)."""
        out = [c for c in self.clean.comparisons if c.stratum == "all" and c.metric == "dice"]
        out += [c for arm, (_, res) in self.controls.items() for c in res.comparisons
                if c.group == arm and c.stratum == "all" and c.metric == "dice"]
        if self.reference is not None:
            out += [c for c in self.reference.comparisons if c.stratum == "all" and c.metric == "dice"]
        return out


def memorisation_results(config: StudyConfig, groups: Mapping[str, List[Path]], device: str, out_dir: Path,
                         echo: bool = True) -> Optional[Memorisation]:
    """Predict (once) and score the badly annotated training patients; None without planted errors."""
    fold = config.folds[0]
    kinds = planted_training_cases(config, fold)
    if not kinds:
        return None
    predicted = predict_planted_training_cases(config, groups, device, list(kinds), echo)
    if config.baseline not in predicted:
        return None
    clean_dir = planted_errors(config)[0]
    planted_dir = config.study_dir / "nnUNet_raw" / config.dataset_folder_name / "labelsTr"
    clean = _compare(predicted, config.baseline, clean_dir, out_dir / "vs_clean")
    planted = _compare(predicted, config.baseline, planted_dir, out_dir / "vs_planted")
    controls: Dict[str, Tuple[str, Any]] = {}
    for ref, arms in config.control_pairs():
        if ref in predicted and ref != config.baseline:
            present = {k: predicted[k] for k in [ref, *arms] if k in predicted}
            res = _compare(present, ref, clean_dir, out_dir / f"vs_clean_{ref}")
            controls.update({a: (ref, res) for a in arms if a in present})
    reference, note = _clean_condition_reference(config, predicted, list(kinds), device, out_dir, echo)
    return Memorisation(fold, kinds, clean, planted, controls, ceiling_dice(config, list(kinds)), reference, note)


def _same_inputs(config: StudyConfig, other: StudyConfig, cases: Sequence[str], fold: int) -> str:
    """Empty when ``other``'s dataset has the same images of ``cases`` and the same training split of ``fold``,
    else what differs."""
    import hashlib

    def digest(cfg: StudyConfig, case: str) -> str:
        folder = cfg.study_dir / "nnUNet_raw" / cfg.dataset_folder_name / "imagesTr"
        files = sorted(folder.glob(f"{case}_*"))
        return hashlib.sha1(b"".join(f.read_bytes() for f in files)).hexdigest() if files else ""

    def train(cfg: StudyConfig) -> List[str]:
        splits = cfg.study_dir / "nnUNet_preprocessed" / cfg.dataset_folder_name / "splits_final.json"
        return sorted(read_json(splits)[fold]["train"]) if splits.is_file() else []

    if train(config) != train(other):
        return f"its fold {fold} trains on other patients"
    differ = [c for c in cases if not digest(other, c) or digest(other, c) != digest(config, c)]
    return f"its images of {len(differ)} of these patients differ or are missing" if differ else ""


def _clean_condition_reference(config: StudyConfig, predicted: Mapping[str, List[Path]], cases: Sequence[str],
                               device: str, out_dir: Path, echo: bool) -> Tuple[Optional[Any], str]:
    """The baseline of ``config.memorisation_reference`` (same patients and split, clean masks) predicting the badly
    annotated training patients, compared with every arm on Dice against the planted masks: how much more an
    arm agrees with the planted errors than a model that never saw them. ``(None, why)`` when not available."""
    from clips_nnunet.study.config import StudyConfigError, load_study_config
    from clips_nnunet.study.report import study_groups

    path = config.memorisation_reference
    if path is None:
        return None, ""
    try:
        ref = load_study_config(path)
    except (OSError, StudyConfigError, ValueError) as e:
        return None, f"the clean-condition reference {path.name} could not be read ({e})"
    fold = config.folds[0]
    differs = _same_inputs(config, ref, cases, fold)
    if differs:
        return None, f"the clean-condition reference `{ref.name}` is not comparable: {differs}"
    runs = study_groups(ref).get(ref.baseline)
    if not runs or fold not in ref.folds:
        return None, f"the clean-condition reference `{ref.name}` has no finished run of its baseline on fold {fold}"
    ref_pred = predict_planted_training_cases(ref, {ref.baseline: runs}, device, cases, echo).get(ref.baseline)
    if not ref_pred:
        return None, f"the clean-condition reference `{ref.name}`: prediction failed (see its logs)"
    label = f"{ref.baseline} trained on clean masks ({ref.name})"
    planted_dir = config.study_dir / "nnUNet_raw" / config.dataset_folder_name / "labelsTr"
    return _compare({label: ref_pred, **predicted}, label, planted_dir, out_dir / "vs_planted_clean_reference"), ""


def _mean(res, arm: str) -> str:
    s = res.summary(arm, "dice")
    if s is None or not s.n_runs:
        return "no value"
    return f"{fmt_fixed(s.mean)}" + (f" [{fmt_fixed(s.ci_low)}, {fmt_fixed(s.ci_high)}]" if s.n_runs > 1 else "")


def _diff(c) -> str:
    if c is None:
        return "-"
    return f"{describe(c.difference)} (p_holm={p_text(c.p_holm)})"


def memorisation_lines(config: StudyConfig, m: Memorisation) -> Tuple[List[str], Dict[str, Any]]:
    """The report section (markdown lines) and its numbers."""
    kind_names = sorted(set(m.kinds.values()))
    pc = m.clean.per_case
    by_kind = pc.assign(kind=pc.case_id.map(m.kinds)).groupby(["group", "kind"]).dice.mean()
    ceiling = float(np.mean(list(m.ceiling.values()))) if m.ceiling else float("nan")
    lines = ["## Badly annotated training patients: did an arm learn the wrong masks?", "",
             f"The {len(m.kinds)} training patients of fold {m.fold} whose mask carries a planted error "
             f"({', '.join(f'{k}: {sum(v == k for v in m.kinds.values())}' for k in kind_names)}), predicted by "
             f"each run's final model (nnU-Net's `nnUNetPredictor`, no mirroring). Dice against the clean mask "
             f"(high: the model resisted the error) and against the planted mask it trained on (high: it learned "
             f"the error): means over runs [95 % interval]. Differences: run-level, Dice against the clean mask, "
             f"Holm-adjusted within the report's family.", ""]
    if m.ceiling:
        lines += [f"Ceiling: Dice(clean mask, planted mask) averages {fmt_fixed(ceiling)} over these patients "
                  f"(range {fmt_fixed(min(m.ceiling.values()))} to {fmt_fixed(max(m.ceiling.values()))}): a model "
                  f"that predicts the clean anatomy perfectly scores this against the planted masks, and a model "
                  f"that reproduced every planted error scores it against the clean ones.", ""]
    if m.reference is not None:
        lines += [f"Reference: `{m.reference.baseline}` predicts the same patients; it never saw their planted "
                  f"errors. Its Dice against the planted masks is "
                  f"{_mean(m.reference, m.reference.baseline)}; the column *vs planted, excess over the reference* "
                  f"is each arm's Dice against the planted masks minus the reference's (run-level; positive: the "
                  f"arm reproduces the planted errors more than a model that never saw them).", ""]
    elif m.reference_note:
        lines += [f"No clean-condition reference: {m.reference_note}.", ""]
    else:
        lines += ["No clean-condition reference (`memorisation_reference` not set): without it, Dice against the "
                  "planted masks cannot be told apart from ordinary segmentation quality.", ""]
    ref_col = " | vs planted, excess over the reference" if m.reference is not None else ""
    lines += ["| arm | Dice vs clean | Dice vs planted | " + " | ".join(f"vs clean: {k} (mean over patients)"
                                                                      for k in kind_names)
              + f" | diff vs `{config.baseline}` | diff vs control{ref_col} |",
              "|---|---|---|" + "---|" * len(kind_names) + "---|---|" + ("---|" if ref_col else "")]
    for arm in m.clean.groups:
        ref, res = m.controls.get(arm, (None, None))
        cells = [_mean(m.clean, arm), _mean(m.planted, arm)]
        cells += [fmt_fixed(float(by_kind.get((arm, k), float("nan")))) for k in kind_names]
        cells += ["-" if arm == config.baseline else _diff(m.clean.comparison(arm, "dice")),
                  "-" if res is None else f"{_diff(res.comparison(arm, 'dice'))} vs `{ref}`"]
        if m.reference is not None:
            cells.append(_diff(m.reference.comparison(arm, "dice")))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    numbers = {"fold": m.fold, "cases": m.kinds, "ceiling_dice_clean_vs_planted": m.ceiling,
               "dice_vs_clean": {g: m.clean.summary(g, "dice").mean for g in m.clean.groups},
               "dice_vs_planted": {g: m.planted.summary(g, "dice").mean for g in m.planted.groups},
               "clean_condition_reference": ({g: m.reference.summary(g, "dice").mean for g in m.reference.groups}
                                             if m.reference is not None else m.reference_note or None)}
    return lines + [""], numbers
