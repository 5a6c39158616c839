"""Sections of the study report that are about the study's design rather than one comparison: budget
accounting, the convergence ladder, the A/A check of the baseline's own runs, and the per-run, per-case CSV."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from clips_nnunet.evaluation.compare_report import p_text
from clips_nnunet.evaluation.formatting import fmt_fixed
from clips_nnunet.evaluation.statistics import RunLevelDifference, describe, minimum_detectable_difference
from clips_nnunet.study.config import StudyConfig
from clips_nnunet.study.layout import teacher_folds

__all__ = ["Budget", "budgets", "budget_lines", "ladder_verdict", "convergence_lines", "aa_lines",
           "attach_seeds", "per_run_case_table"]


@dataclasses.dataclass(frozen=True)
class Budget:
    """Training iterations behind one run of an arm: its own, its teacher's cross-validation (every fold of the
    split at the teacher seed: the difficulty cannot exist without it) and pretraining (none in a study)."""

    arm: str
    run: int
    teacher: int
    pretraining: int
    baseline_total: int

    @property
    def total(self) -> int:
        return self.run + self.teacher + self.pretraining

    @property
    def ratio(self) -> float:
        return self.total / self.baseline_total


def budgets(config: StudyConfig) -> List[Budget]:
    """One :class:`Budget` per arm (config order)."""
    base = config.run_iterations(config.baseline)
    out = []
    for spec in config.trainers:
        teacher = (config.run_iterations(spec.teacher) * len(teacher_folds(config))) if spec.teacher else 0
        out.append(Budget(spec.name, config.run_iterations(spec.name), teacher, 0, base))
    return out


def budget_lines(config: StudyConfig) -> List[str]:
    """The budget table: every arm's iterations per run with its teacher's cross-validation, and the ratio to the
    baseline where the budgets are not equal."""
    rows = budgets(config)
    equal = all(b.total == b.baseline_total for b in rows if b.arm not in config.ladder_arms)
    external = [t.name for t in config.trainers if t.teacher_csv is not None]
    lines = ["## Budgets", "",
             f"Training iterations behind one run of each arm ({config.epochs} epochs x "
             f"{config.iterations_per_epoch} iterations = {config.budget_iterations:,} per run at 1x). A teacher's "
             f"cross-validation ({len(teacher_folds(config))} folds at seed {config.teacher_seed}) is counted in "
             f"the budget of every arm that reads its difficulty; no arm starts from pretrained weights. "
             + ("Equal budget: true for every compared arm." if equal else
                "Equal budget: **false**; the ratio to the baseline is printed beside each arm."), "",
             "| arm | own training | teacher's cross-validation | pretraining | total | vs baseline |",
             "|---|---|---|---|---|---|"]
    for b in rows:
        ratio = "equal" if b.total == b.baseline_total else f"**{b.ratio:.2f}x**"
        if b.arm in config.ladder_arms:
            ratio += " (convergence ladder)"
        lines.append(f"| {b.arm} | {b.run:,} | {b.teacher:,} | {b.pretraining:,} | {b.total:,} | {ratio} |")
    if external:
        lines += ["", f"{', '.join(external)}: difficulty from an external model (`teacher_csv`, e.g. TMTV-Net's "
                      "released model), trained elsewhere on other patients; its training is not counted here."]
    return lines + [""]


def ladder_verdict(d: RunLevelDifference, margin: float) -> str:
    """``converged`` when the 95 % interval of (2x - 1x) Dice lies within +-margin, ``not converged`` when it
    lies wholly above +margin, else ``undetermined`` (with the reason when the interval is undefined)."""
    if not d.defined:
        return f"undetermined ({d.undefined})"
    if -margin <= d.ci_low and d.ci_high <= margin:
        return "converged"
    if d.ci_low > margin:
        return "not converged"
    return "undetermined (the interval crosses the margin)"


def convergence_lines(config: StudyConfig, ladder: Mapping[str, Any], curve_png: Optional[str]) -> List[str]:
    """The convergence ladder: each rung (baseline at a multiple of the budget) against the 1x baseline on
    clean-mask Dice, all out-of-fold patients; ``ladder``: rung arm -> its comparison result."""
    margin = config.convergence_margin
    lines = ["## Does the baseline converge? (budget ladder)", "",
             f"The baseline `{config.baseline}` trained again at a multiple of the budget (same seeds and folds). "
             f"Converged means: the 95 % interval of the mean difference in Dice (clean masks, all out-of-fold "
             f"patients, run-level) between the longer and the 1x runs lies within +-{margin}. Not converged: the "
             f"whole interval lies above +{margin}. These checks are not part of the Holm family (an equivalence "
             f"check, not a test of an arm).", ""]
    if not config.ladder_arms:
        lines += ["No ladder rung is configured (an arm with the baseline's trainer and `budget_factor: 2`), so "
                  "this study does not show whether its budget trains the baseline to convergence.", ""]
    else:
        lines += ["| rung | budget | runs (rung/1x) | Dice, rung - 1x [95 % interval] | verdict |",
                  "|---|---|---|---|---|"]
        for arm in config.ladder_arms:
            res = ladder.get(arm)
            comp = res.comparison(arm, "dice") if res is not None else None
            if comp is None:
                lines.append(f"| {arm} | {config.trainer(arm).budget_factor}x | 0 | no finished run | - |")
                continue
            d = comp.difference
            lines.append(f"| {arm} | {config.trainer(arm).budget_factor}x | {d.n_runs_arm}/{d.n_runs_reference} | "
                         f"{describe(d)} | {ladder_verdict(d, margin)} |")
        lines.append("")
    if curve_png:
        lines += ["The baseline's per-epoch pseudo Dice (validation patches, dataset masks) is shown for "
                  "description only: nnU-Net's PolyLR schedule flattens any curve in its last epochs, so no "
                  "verdict is read from it.", "", f"![baseline pseudo Dice per epoch]({curve_png})", ""]
    return lines


def aa_lines(config: StudyConfig, main) -> Tuple[List[str], Dict[str, Any]]:
    """The A/A check: the baseline's seeds split into two pseudo-arms, analysed exactly like an arm against the
    baseline (Dice, all cases); and the smallest difference the study could detect from its baseline's run
    variance."""
    from clips_nnunet.evaluation.compare_analysis import aa_comparison

    d, (first, second) = aa_comparison(main.runs, config.baseline)
    seeds_of = {r: s for r, s in zip(main.runs.run, main.runs.seed)} if "seed" in main.runs else {}
    label = (lambda runs: ", ".join(sorted({str(seeds_of.get(r, r)) for r in runs}))) if seeds_of else \
        (lambda runs: f"{len(runs)} runs")
    n_seeds = main.runs.seed_index[main.runs.group == config.baseline].nunique()
    if n_seeds < 2:
        verdict = "cannot be checked: the baseline has fewer than two finished seeds"
    elif not d.defined:
        verdict = f"cannot be checked: {d.undefined}"
    elif d.p_value < 0.05:
        verdict = ("**fails** (p < 0.05 between two halves of the same arm): the run-level statistics mistake "
                   "seed noise for an effect here; read every p-value of this report with that in mind")
    else:
        verdict = "passes (no difference between two halves of the same arm at alpha = 0.05)"
    s = main.summary(config.baseline, "dice")
    per_fold = max(1, (s.n_runs if s else 0) // max(1, len(config.folds)))
    mdd = minimum_detectable_difference(s.sd_runs if s else float("nan"), per_fold)
    lines = ["## A/A check: the baseline against itself", "",
             f"The baseline's seeds split into two pseudo-arms (seeds {label(first) or 'none'} vs "
             f"{label(second) or 'none'}), analysed exactly like an arm against the baseline (Dice, all cases, "
             f"run-level). Difference {describe(d)}, p = {p_text(d.p_value)}: {verdict}. The same analysis rejects "
             f"5.7 % of 2000 simulated null studies at alpha = 0.05 (`tests/test_statistics.py` requires <= 6 %).",
             ""]
    if math.isfinite(mdd):
        lines += [f"Smallest detectable difference: with {per_fold} runs per arm and fold and the baseline's sd of "
                  f"run means ({fmt_fixed(s.sd_runs)}), a two-sided test at alpha = 0.05 detects a true Dice "
                  f"difference of {fmt_fixed(mdd)} with 80 % power (statsmodels `TTestIndPower`; before Holm). "
                  f"Differences smaller than this are not excluded by a non-significant result.", ""]
    else:
        lines += ["Smallest detectable difference: undefined (fewer than two baseline runs per fold, or no "
                  "variance between them).", ""]
    numbers = {"difference": dataclasses.asdict(d), "runs": [first, second], "minimum_detectable_dice_difference": mdd}
    return lines, numbers


def attach_seeds(res, seeds: Mapping[str, Sequence[int]]) -> None:
    """Name each run of ``res`` by its study seed: a ``seed`` column in ``res.runs`` and run labels ``<arm> seed S
    fold_F`` (also in the take-off records); ``seeds``: arm -> seeds of its results folders, in the order they were
    given to compare."""
    if "seed" in res.runs.columns:
        return
    res.runs.insert(3, "seed", [seeds[g][i] for g, i in zip(res.runs.group, res.runs.seed_index)])
    labels = {old: f"{g} seed {s} {f}" for old, g, s, f in zip(res.runs.run, res.runs.group, res.runs.seed,
                                                                 res.runs.fold)}
    res.runs["run"] = res.runs.run.map(labels)
    res.take_off = {g: dataclasses.replace(t, failed=tuple(labels.get(r, r) for r in t.failed))
                    for g, t in res.take_off.items()}


def per_run_case_table(results: Sequence[Any]):
    """Every run's value of every case from the comparisons ``results`` (each group once)."""
    import pandas as pd

    frames, seen = [], set()
    for res in results:
        for g in res.groups:
            if g not in seen:
                seen.add(g)
                frames.append(res.runs[res.runs.group == g])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
