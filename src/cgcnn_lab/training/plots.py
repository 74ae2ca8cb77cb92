"""Figures of a run: learning curves and a parity plot, written as PNG.

Figures are built with matplotlib's object API (``Figure``), never pyplot: no backend is switched, so
importing this module leaves a notebook's inline plots alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def learning_curve(metrics: pd.DataFrame, metric: str, ylabel: str, path: Path, log: bool = False) -> Path | None:
    """Train vs validation ``metric`` per epoch; None if the metrics were not logged."""
    cols = [c for c in (f"train_{metric}", f"val_{metric}") if c in metrics]
    if not cols or metrics[cols].isna().all().all():
        return None
    fig = Figure(figsize=(5.5, 3.8), dpi=120)
    ax = fig.subplots()
    for col, style in zip(cols, ("-", "--")):
        ax.plot(metrics["epoch"], metrics[col], style, label=col.split("_")[0])
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if log and (metrics[cols] > 0).all().all():
        ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def parity(target: np.ndarray, prediction: np.ndarray, unit: str, title: str, path: Path) -> Path:
    """Prediction vs DFT target on the test split, with MAE in the legend."""
    fig = Figure(figsize=(4.6, 4.4), dpi=120)
    ax = fig.subplots()
    t, p = target.ravel(), prediction.ravel()
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    pad = 0.03 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", lw=1)
    ax.scatter(t, p, s=10, alpha=0.6, label=f"MAE {np.abs(p - t).mean():.4g} {unit}")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel(f"target ({unit})")
    ax.set_ylabel(f"prediction ({unit})")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left")
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path)
    return path


def roc_curve(labels: np.ndarray, probability: np.ndarray, path: Path, title: str) -> Path:
    """ROC of a binary classifier (class 1 probability)."""
    order = np.argsort(-probability)
    y = labels[order] == 1
    tpr = np.concatenate([[0], np.cumsum(y) / max(y.sum(), 1)])
    fpr = np.concatenate([[0], np.cumsum(~y) / max((~y).sum(), 1)])
    fig = Figure(figsize=(4.4, 4.2), dpi=120)
    ax = fig.subplots()
    ax.plot(fpr, tpr)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path
