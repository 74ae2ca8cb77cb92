"""Figures of a run (training/plots.py, report.write_plots): units, integer epochs, the ROC curve's AUC and class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cgcnn_lab.data.graph import GraphConfig
from cgcnn_lab.inference import Predictions
from cgcnn_lab.model.config import ModelConfig
from cgcnn_lab.spec import ModelSpec
from cgcnn_lab.targets import TargetTransform
from cgcnn_lab.training import plots
from cgcnn_lab.training.report import write_plots


@pytest.fixture
def saved(monkeypatch) -> dict[str, Figure]:
    """File name -> the figure that would have been written there (nothing is written)."""
    figures: dict[str, Figure] = {}
    monkeypatch.setattr(Figure, "savefig", lambda self, path, *a, **k: figures.__setitem__(Path(path).name, self))
    return figures


def _ax(fig: Figure):
    fig.canvas.draw()  # tick positions and labels as they are rendered
    return fig.axes[0]


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _integer_ticks(ax) -> bool:
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    return len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)


def _metrics(epochs: int = 4) -> pd.DataFrame:
    e = np.arange(1, epochs + 1)
    return pd.DataFrame({"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "train_mae": 0.5 / e,
                         "val_mae": 0.6 / e, "train_accuracy": 0.5 + 0.1 * e, "val_accuracy": 0.55 + 0.05 * e})


@pytest.mark.parametrize("epochs", [3, 4, 7])
def test_learning_curve_epochs_are_integer_ticks(saved, epochs):
    plots.learning_curve(_metrics(epochs), "accuracy", "accuracy", Path("accuracy.png"))
    ax = _ax(saved["accuracy.png"])
    assert _integer_ticks(ax), ax.get_xticks()  # matplotlib's default: 1.0, 1.5, 2.0 … (2.5, 7.5 at 10 epochs)
    assert ax.get_xlabel() == "epoch"


def test_learning_curve_log_axis_reads_plain_numbers(saved):
    metrics = _metrics(3).assign(train_loss=[0.314, 0.31, 0.305], val_loss=[0.313, 0.307, 0.309])
    plots.learning_curve(metrics, "loss", "loss", Path("loss.png"), log=True)
    ax = _ax(saved["loss.png"])
    labels = [t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels() if t.get_text()]
    assert ax.get_yscale() == "log" and labels
    assert not any("times" in s or "^" in s for s in labels), labels  # not 3.1×10⁻¹


def test_parity_without_and_with_unit(saved):
    t, p = np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 2.5])
    plots.parity(t, p, "", "test split", Path("parity.png"))
    ax = _ax(saved["parity.png"])
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("target", "prediction")
    assert _legend(ax) == ["MAE 0.3333"]
    for unknown in (None, ""):
        plots.parity(t, p, unknown, "test split", Path("parity.png"))
        text = " ".join([*_legend(saved["parity.png"].axes[0]), saved["parity.png"].axes[0].get_xlabel()])
        assert "None" not in text and "target units" not in text
    plots.parity(t, p, "eV/atom", "test split", Path("parity.png"))
    ax = _ax(saved["parity.png"])
    assert (ax.get_xlabel(), _legend(ax)) == ("target (eV/atom)", ["MAE 0.3333 eV/atom"])


def test_roc_points_auc_matches_the_rank_statistic():
    labels = np.array([0, 0, 1, 1, 0, 1])
    prob = np.array([0.1, 0.4, 0.35, 0.8, 0.6, 0.9])
    fpr, tpr, auc = plots.roc_points(labels, prob)
    pos, neg = prob[labels == 1], prob[labels == 0]
    expected = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    assert auc == pytest.approx(expected) and auc == pytest.approx(7 / 9)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    # ties are one threshold: equal probabilities give the diagonal, not a staircase that depends on the order
    fpr, tpr, auc = plots.roc_points(np.array([1, 0, 1, 0]), np.full(4, 0.5))
    assert auc == pytest.approx(0.5) and fpr.tolist() == [0, 1] and tpr.tolist() == [0, 1]
    assert np.isnan(plots.roc_points(np.array([1, 1]), np.array([0.2, 0.7]))[2])  # one class: no AUC


def test_roc_auc_agrees_with_the_run_metrics():
    from cgcnn_lab.metrics import classification_metrics

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    p1 = np.round(np.clip(0.3 * labels + rng.random(60) * 0.7, 0, 1), 1)  # rounded: many ties
    expected = classification_metrics(labels, np.stack([1 - p1, p1], 1))["auc"]
    assert plots.roc_points(labels, p1)[2] == pytest.approx(expected, abs=1e-6)


def test_roc_legend_has_auc_and_title_names_the_positive_class(saved):
    labels, prob = np.array([0, 0, 1, 1, 0, 1]), np.array([0.1, 0.4, 0.35, 0.8, 0.6, 0.9])
    plots.roc_curve(labels, prob, Path("roc.png"), "test split ROC", positive="bandgap.energy > 0")
    ax = _ax(saved["roc.png"])
    assert "AUC 0.778" in _legend(ax)
    assert "positive: bandgap.energy > 0" in ax.get_title()


def _predictions(spec: ModelSpec, values: np.ndarray, targets: np.ndarray) -> Predictions:
    n = len(values)
    return Predictions(np.array([f"c{i}" for i in range(n)]), values, spec, np.arange(2, n + 2), targets=targets)


def test_write_plots_classification(tmp_path, saved):
    _metrics(10).to_csv(tmp_path / "metrics.csv", index=False)
    spec = ModelSpec(ModelConfig(task="classification", n_outputs=2), GraphConfig(), None, None,
                     target_names=["bandgap.energy"], threshold=0.0)
    gaps = np.array([0.0, 0.0, 1.2, 2.0, 0.0, 0.7])
    p1 = np.array([0.1, 0.4, 0.35, 0.8, 0.6, 0.9])
    write_plots(tmp_path, "val_loss", _predictions(spec, np.stack([1 - p1, p1], 1), gaps[:, None]), "test")
    roc = _ax(saved["roc.png"])
    assert "positive: bandgap.energy > 0" in roc.get_title()
    assert any(s.startswith("AUC 0.778") for s in _legend(roc))
    for name in ("accuracy.png", "loss.png"):
        assert _integer_ticks(_ax(saved[name])), name  # 10 epochs: not 2.5, 7.5


@pytest.mark.parametrize(("unit", "label"), [("eV", "MAE per atom (eV/atom)"), ("", "MAE per atom")])
def test_write_plots_per_atom_regression_units(tmp_path, saved, unit, label):
    _metrics(5).to_csv(tmp_path / "metrics.csv", index=False)
    spec = ModelSpec(ModelConfig(), GraphConfig(), None, TargetTransform(per_atom=True), target_names=["e"], unit=unit)
    totals = np.array([[-8.0], [-12.0], [-20.0]])
    write_plots(tmp_path, "val_mae", _predictions(spec, totals * 1.1, totals), "test")
    mae = _ax(saved["mae.png"])
    assert mae.get_ylabel() == label and _integer_ticks(mae)
    parity = _ax(saved["parity.png"])
    assert parity.get_xlabel() == ("target (eV/atom)" if unit else "target")
