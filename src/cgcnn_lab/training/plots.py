"""Figures of a run: learning curves, a parity plot and a ROC curve, written as PNG.

Figures are built with matplotlib's object API (``Figure``), never pyplot: no backend is switched, so
importing this module leaves a notebook's inline plots alone. A unit given as "" (unknown) is not shown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation, MaxNLocator

from cgcnn_lab.spec import in_unit, with_unit


def epoch_axis(ax) -> None:
    """Epochs are whole numbers: ticks at 1, 2, 3 …, never at 2.5."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


class _PlainLogFormatter(LogFormatterSciNotation):
    """Labels the ticks matplotlib would label on a log axis, as plain numbers (0.31, not 3.1×10⁻¹)."""

    def __call__(self, x, pos=None):
        return f"{x:.3g}" if super().__call__(x, pos) else ""


def log_y(ax) -> None:
    """A log y axis whose tick labels read as plain numbers."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_PlainLogFormatter())
    ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))


def learning_curve(metrics: pd.DataFrame, metric: str, ylabel: str, path: Path, log: bool = False) -> Path | None:
    """Train vs validation ``metric`` per epoch; None if the metrics were not logged. ``ylabel`` carries the
    unit when there is one."""
    cols = [c for c in (f"train_{metric}", f"val_{metric}") if c in metrics]
    if not cols or metrics[cols].isna().all().all():
        return None
    fig = Figure(figsize=(5.5, 3.8), dpi=120)
    ax = fig.subplots()
    for col, style in zip(cols, ("-", "--")):
        ax.plot(metrics["epoch"], metrics[col], style, label=col.split("_")[0])
    epoch_axis(ax)
    ax.set_ylabel(ylabel)
    if log and (metrics[cols] > 0).all().all():
        log_y(ax)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def parity(target: np.ndarray, prediction: np.ndarray, unit: str | None, title: str, path: Path) -> Path:
    """Prediction vs DFT target on the test split, with MAE in the legend (``unit`` "" or None: none shown)."""
    fig = Figure(figsize=(4.6, 4.4), dpi=120)
    ax = fig.subplots()
    t, p = np.asarray(target, dtype=float).ravel(), np.asarray(prediction, dtype=float).ravel()
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    pad = 0.03 * (hi - lo or 1.0)
    mae = f"MAE {np.abs(p - t).mean():.4g}"
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", lw=1)
    ax.scatter(t, p, s=10, alpha=0.6, label=with_unit(mae, unit))
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel(in_unit("target", unit))
    ax.set_ylabel(in_unit("prediction", unit))
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left")
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path)
    return path


def roc_points(labels: np.ndarray, probability: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(false positive rates, true positive rates, area under the curve) of class 1 against the rest.

    Crystals with the same probability are one threshold (one diagonal step), so the area is the rank statistic
    ``roc_auc``/torchmetrics compute (the ``test_auc`` of metrics.json for two classes); NaN with one class only."""
    score = np.asarray(probability, dtype=float).ravel()
    y = np.asarray(labels).ravel() == 1
    order = np.argsort(-score, kind="stable")
    score, y = score[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(score) != 0), len(score) - 1] if len(score) else np.array([], dtype=int)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    tpr = np.r_[0.0, np.cumsum(y)[last] / max(n_pos, 1)]
    fpr = np.r_[0.0, np.cumsum(~y)[last] / max(n_neg, 1)]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)) if n_pos and n_neg else float("nan")  # trapezoids
    return fpr, tpr, auc


def roc_curve(labels: np.ndarray, probability: np.ndarray, path: Path, title: str, positive: str = "class 1") -> Path:
    """ROC of a binary classifier from the class 1 probability; the legend gives the AUC and the title says which
    class is the positive one (``positive``, e.g. ``spec.class_names[1]``: "bandgap.energy > 0")."""
    fpr, tpr, auc = roc_points(labels, probability)
    fig = Figure(figsize=(4.6, 4.4), dpi=120)
    ax = fig.subplots()
    ax.plot(fpr, tpr, label=f"AUC {auc:.3f}" if np.isfinite(auc) else "AUC n/a (one class only)")
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="chance (AUC 0.5)")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{title}\npositive: {positive}", fontsize=10)
    ax.legend(loc="lower right")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def confusion(counts: list[list[int]], names: list[str], path: Path, title: str) -> Path:
    """Confusion matrix: rows the true class, columns the predicted one, each cell with its count."""
    m = np.asarray(counts)
    fig = Figure(figsize=(4.6, 4.0), dpi=120)
    ax = fig.subplots()
    ax.imshow(m, cmap="Blues")
    for (i, j), n in np.ndenumerate(m):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > m.max() / 2 else "black")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8, rotation=90, va="center")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path
