"""Paired statistics of the comparison reports: Wilcoxon signed-rank test, matched-pairs rank-biserial effect size
(Kerby 2014) and Holm's step-down adjustment (see :mod:`clips_nnunet.evaluation.compare`, section Statistics)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

import numpy as np

__all__ = ["rank_biserial", "paired_test", "holm"]


def rank_biserial(diff: Sequence[float]) -> float:
    """Matched-pairs rank-biserial correlation (Kerby 2014) of paired differences; zeros dropped; NaN if none."""
    from scipy.stats import rankdata

    d = np.asarray(diff, float)
    d = d[np.isfinite(d) & (d != 0)]
    if len(d) == 0:
        return float("nan")
    r = rankdata(np.abs(d))
    pos, neg = r[d > 0].sum(), r[d < 0].sum()
    return float((pos - neg) / (pos + neg))


def paired_test(group_values: Sequence[float], baseline_values: Sequence[float]) -> Dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of ``group - baseline`` on pairs where both are finite."""
    from scipy.stats import wilcoxon

    g, b = np.asarray(group_values, float), np.asarray(baseline_values, float)
    ok = np.isfinite(g) & np.isfinite(b)
    g, b = g[ok], b[ok]
    d = g - b
    res: Dict[str, Any] = {"n_pairs": int(len(d)), "median_diff": float(np.median(d)) if len(d) else float("nan"),
                           "mean_diff": float(d.mean()) if len(d) else float("nan"),
                           "rank_biserial": rank_biserial(d), "statistic": float("nan"), "p_value": float("nan"),
                           "method": ""}
    if len(d) and np.all(d == 0):
        res["p_value"] = 1.0
    elif np.count_nonzero(d) >= 1:
        nz = np.abs(d[d != 0])
        # exact null distribution without ties/zeros (n <= 50); otherwise the normal approximation with tie
        # correction (scipy's permutation fallback costs ~1 s per test for n ~ 13 and adds nothing for reports)
        exact = len(nz) == len(d) and len(np.unique(nz)) == len(nz) and len(d) <= 50
        st = wilcoxon(g, b, zero_method="wilcox", alternative="two-sided", method="exact" if exact else "approx")
        res["statistic"], res["p_value"] = float(st.statistic), float(st.pvalue)
        res["method"] = "exact" if exact else "approx"

    return res


def holm(pvalues: Sequence[float]) -> List[float]:
    """Holm step-down adjusted p-values (NaN stays NaN)."""
    p = np.asarray(pvalues, float)
    out = np.full(len(p), np.nan)
    idx = [i for i in np.argsort(p) if math.isfinite(p[i])]
    m, running = len(idx), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()
