"""Matplotlib (Agg) figures for evaluation and comparison reports, written atomically as PNG.

Every function takes plain sequences, draws one figure, writes it to ``path`` and closes it (no global state kept).
NaN values are dropped before plotting.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from clips_nnunet.io_utils import PathLike, atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: PathLike) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _plt().close(fig)
    return path


def _finite_pairs(a: Sequence[float], b: Sequence[float]):
    x, y = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def bland_altman_tmtv(true_ml: Sequence[float], pred_ml: Sequence[float], path: PathLike,
                      title: str = "Bland-Altman: TMTV") -> Path:
    """Difference (pred - true) against mean TMTV, with the bias and 95 % limits of agreement (bias +- 1.96 sd)."""
    plt = _plt()
    t, p = _finite_pairs(true_ml, pred_ml)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    mean, diff = (t + p) / 2, p - t
    ax.scatter(mean, diff, s=14, alpha=0.8)
    if len(diff):
        bias = float(diff.mean())
        sd = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
        ax.axhline(bias, color="k", lw=1, label=f"bias {bias:.3g} ml")
        for lim in (bias - 1.96 * sd, bias + 1.96 * sd):
            ax.axhline(lim, color="r", ls="--", lw=1)
        ax.legend(loc="best", fontsize=8, title=f"LoA +-{1.96 * sd:.3g} ml", title_fontsize=8)
    ax.set_xlabel("mean of predicted and true TMTV (ml)")
    ax.set_ylabel("predicted - true TMTV (ml)")
    ax.set_title(title)
    return _save(fig, path)


def tmtv_scatter(true_ml: Sequence[float], pred_ml: Sequence[float], path: PathLike,
                 title: str = "Predicted vs true TMTV") -> Path:
    """Predicted against true TMTV with the identity line (log-log axes when all values are positive)."""
    plt = _plt()
    t, p = _finite_pairs(true_ml, pred_ml)
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.scatter(t, p, s=14, alpha=0.8)
    hi = float(max(t.max(initial=0), p.max(initial=0), 1e-3))
    lo = float(min(t[t > 0].min(initial=hi), p[p > 0].min(initial=hi)))
    if len(t) and (t > 0).all() and (p > 0).all() and hi / max(lo, 1e-9) > 100:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    else:
        ax.plot([0, hi], [0, hi], "k--", lw=1)
    ax.set_xlabel("true TMTV (ml)")
    ax.set_ylabel("predicted TMTV (ml)")
    ax.set_title(title)
    return _save(fig, path)


def plot_dice_histogram(dice: Sequence[float], path: PathLike, title: str = "Dice per case") -> Path:
    """Histogram of per-case Dice (cases where Dice is undefined are left out and counted in the title)."""
    plt = _plt()
    d = np.asarray(dice, float)
    n_undef = int((~np.isfinite(d)).sum())
    d = d[np.isfinite(d)]
    fig, ax = plt.subplots(figsize=(5, 3.8))
    ax.hist(d, bins=np.linspace(0, 1, 21), edgecolor="k")
    if len(d):
        ax.axvline(float(np.median(d)), color="r", lw=1, label=f"median {np.median(d):.3f}")
        ax.legend(fontsize=8)
    ax.set_xlabel("Dice")
    ax.set_ylabel("cases")
    ax.set_title(title + (f" ({n_undef} undefined)" if n_undef else ""))
    return _save(fig, path)


def grouped_boxplots(values: Mapping[str, Mapping[str, Sequence[float]]], path: PathLike,
                     ylabels: Optional[Dict[str, str]] = None, title: str = "") -> Path:
    """One panel per metric (outer key), one box per group (inner key), points overlaid."""
    plt = _plt()
    metrics = list(values)
    n = max(len(metrics), 1)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, metric in zip(axes.ravel(), metrics):
        groups = list(values[metric])
        data = [np.asarray(values[metric][g], float) for g in groups]
        data = [d[np.isfinite(d)] for d in data]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(groups) + 1), groups, rotation=25, ha="right", fontsize=8)
        for i, d in enumerate(data, start=1):
            jitter = np.linspace(-0.12, 0.12, len(d)) if len(d) > 1 else np.zeros(len(d))
            ax.scatter(i + jitter, d, s=8, alpha=0.6, color="k")
        ax.set_title(metric, fontsize=9)
        if ylabels and metric in ylabels:
            ax.set_ylabel(ylabels[metric], fontsize=8)
    for ax in axes.ravel()[len(metrics):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
