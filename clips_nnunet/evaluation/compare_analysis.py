"""The numbers of a comparison, from the per-run, per-case table: strata, per-group summaries, run-level
comparisons against a reference, take-off of runs. Typed results (dataclasses), no string filtering by callers.

A *run* is one results folder's one fold (one seed of one fold): the unit of replication
(:mod:`clips_nnunet.evaluation.statistics`). The per-run, per-case table (``ComparisonResult.runs``) has one row per
(group, run, case) with the columns ``group, folder, seed_index, fold, run, case_id`` and the case metrics of
:mod:`clips_nnunet.evaluation.evaluate`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from clips_nnunet.evaluation.statistics import (ALPHA, RunLevelDifference, RunMean, TakeOff, aa_split,
                                                fisher_take_off, holm, run_level_difference)

__all__ = ["ALL", "TERTILES", "TOOK_OFF", "GroupSummary", "Comparison", "metric_values", "run_means",
           "summarise", "compare_against", "take_off", "took_off_runs", "compare_took_off", "aa_comparison",
           "adjust_holm"]

ALL = "all"
TERTILES = ("easy", "medium", "hard")
#: stratum label of the comparisons restricted to the runs that took off (Dice, all cases)
TOOK_OFF = "all, runs that took off"


@dataclasses.dataclass(frozen=True)
class GroupSummary:
    """One group's metric in one stratum: ``mean`` of the run means with its 95 % t-interval over runs,
    ``sd_runs`` the sd of the run means, ``median_cases`` the median over cases of the seed-averaged values
    (labelled a median wherever printed)."""

    group: str
    stratum: str
    metric: str
    n_cases: int
    n_runs: int
    mean: float
    ci_low: float
    ci_high: float
    sd_runs: float
    median_cases: float


@dataclasses.dataclass
class Comparison:
    """``group`` against ``reference`` on ``metric`` in ``stratum``: the run-level difference (group - reference)
    and its Holm-adjusted p-value within ``family`` (the comparisons the report prints)."""

    group: str
    reference: str
    stratum: str
    metric: str
    higher_is_better: bool
    difference: RunLevelDifference
    p_holm: float = float("nan")
    family: int = 0

    @property
    def favours(self) -> str:
        """The side the mean difference favours, ``neither`` when its interval includes 0, ``undefined`` when
        there is no interval."""
        d = self.difference
        if not d.defined:
            return "undefined"
        if d.ci_low <= 0 <= d.ci_high:
            return "neither"
        return self.group if (d.estimate > 0) == self.higher_is_better else self.reference


def metric_values(df, metric: str):
    """A metric's per-case values; Dice only counts on cases with a true lesion (NaN elsewhere)."""
    v = df[metric].astype(float)
    if metric == "dice":
        v = v.where(df["has_true_lesion"].astype(bool))
    return v


def run_means(runs, group: str, metric: str, cases: Optional[Iterable[str]] = None,
              only_runs: Optional[Iterable[str]] = None) -> List[RunMean]:
    """Each run of ``group``: the mean of ``metric`` over its cases (in ``cases`` when given)."""
    sub = runs[runs.group == group]
    if cases is not None:
        sub = sub[sub.case_id.isin(set(cases))]
    if only_runs is not None:
        sub = sub[sub.run.isin(set(only_runs))]
    out = []
    for run, df in sub.groupby("run", sort=True):
        v = metric_values(df, metric).dropna()
        if len(v):
            out.append(RunMean(str(run), str(df.fold.iloc[0]), float(v.mean()), int(len(v))))
    return out


def summarise(runs, per_case, groups: Sequence[str], strata: Mapping[str, Sequence[str]],
              metrics: Mapping[str, bool]) -> List[GroupSummary]:
    """One :class:`GroupSummary` per (group, stratum, metric)."""
    from scipy.stats import t as t_dist

    out = []
    for g in groups:
        for sname, cases in strata.items():
            for m in metrics:
                if m not in runs.columns:
                    continue
                means = np.array([r.mean for r in run_means(runs, g, m, cases)])
                pc = per_case[(per_case.group == g) & per_case.case_id.isin(set(cases))]
                v = metric_values(pc, m).dropna()
                nan = float("nan")
                mean = float(means.mean()) if len(means) else nan
                sd = float(means.std(ddof=1)) if len(means) > 1 else nan
                half = float(t_dist.ppf(1 - ALPHA / 2, len(means) - 1) * sd / math.sqrt(len(means))) \
                    if len(means) > 1 else nan
                out.append(GroupSummary(g, sname, m, int(len(v)), int(len(means)), mean, mean - half, mean + half,
                                        sd, float(v.median()) if len(v) else nan))
    return out


def compare_against(runs, reference: str, groups: Sequence[str], strata: Mapping[str, Sequence[str]],
                    metrics: Mapping[str, bool]) -> List[Comparison]:
    """Every group but ``reference`` against it, per stratum and metric (run-level)."""
    out = []
    for g in groups:
        if g == reference:
            continue
        for sname, cases in strata.items():
            for m, higher in metrics.items():
                if m not in runs.columns:
                    continue
                d = run_level_difference(run_means(runs, g, m, cases), run_means(runs, reference, m, cases))
                out.append(Comparison(g, reference, sname, m, higher, d))
    return out


def take_off(runs, groups: Sequence[str], reference: str) -> Dict[str, TakeOff]:
    """Per group: the runs whose final model predicted a lesion in at least one of their validation patients,
    and Fisher's exact test of the take-off rate against ``reference``."""
    out: Dict[str, TakeOff] = {}
    for g in groups:
        sub = runs[runs.group == g]
        predicted = sub.groupby("run", sort=True)["n_lesions_pred"].apply(lambda s: bool((s.astype(float) > 0).any()))
        out[g] = TakeOff(g, int(len(predicted)), int(predicted.sum()),
                         tuple(str(r) for r, ok in predicted.items() if not ok))
    if reference in out:
        out = {g: (fisher_take_off(t, out[reference]) if g != reference else t) for g, t in out.items()}
    return out


def took_off_runs(runs, take: Mapping[str, TakeOff]) -> List[str]:
    """The runs of every group that took off."""
    failed = {r for t in take.values() for r in t.failed}
    return sorted(set(runs.run) - failed)


def compare_took_off(runs, reference: str, groups: Sequence[str], take: Mapping[str, TakeOff],
                     metric: str = "dice", higher_is_better: bool = True) -> List[Comparison]:
    """Dice (all cases) against ``reference`` among the runs that took off only (stratum :data:`TOOK_OFF`); only
    where some run failed to take off (else it repeats the all-runs comparison)."""
    if not any(t.failed for t in take.values()) or metric not in runs.columns:
        return []
    keep = took_off_runs(runs, take)
    return [Comparison(g, reference, TOOK_OFF, metric, higher_is_better,
                       run_level_difference(run_means(runs, g, metric, only_runs=keep),
                                            run_means(runs, reference, metric, only_runs=keep)))
            for g in groups if g != reference]


def aa_comparison(runs, baseline: str, metric: str = "dice", cases: Optional[Iterable[str]] = None
                  ) -> Tuple[RunLevelDifference, Tuple[List[str], List[str]]]:
    """The A/A check: ``baseline``'s runs split by seed into two pseudo-arms, analysed like a real comparison."""
    means = run_means(runs, baseline, metric, cases)
    seed_of = {r: str(s) for r, s in zip(runs.run, runs.seed_index)}
    first, second = aa_split(means, seed_of)
    return run_level_difference(first, second), ([r.run for r in first], [r.run for r in second])


def adjust_holm(comparisons: Sequence[Comparison]) -> None:
    """Holm over ``comparisons`` (one family): sets ``p_holm`` and ``family`` (number of defined p-values)."""
    adjusted = holm([c.difference.p_value for c in comparisons])
    family = sum(math.isfinite(c.difference.p_value) for c in comparisons)
    for c, p in zip(comparisons, adjusted):
        c.p_holm, c.family = p, family
