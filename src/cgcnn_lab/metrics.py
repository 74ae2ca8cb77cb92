"""Evaluation metrics on numpy arrays: the test split of a run and predictions with known targets."""

from __future__ import annotations

import numpy as np


def regression_metrics(target: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R² averaged over targets (columns)."""
    err = prediction - target
    ss_tot = ((target - target.mean(axis=0)) ** 2).sum(axis=0)
    r2 = 1 - (err**2).sum(axis=0) / np.where(ss_tot > 0, ss_tot, np.nan)
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": float(np.nanmean(r2)) if np.isfinite(r2).any() else float("nan"),
    }


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, ROC-AUC (one-vs-rest macro for more than two classes) and macro F1."""
    import torch  # torchmetrics takes ~3 s to import: only where a classifier is scored
    from torchmetrics.functional.classification import multiclass_auroc, multiclass_f1_score

    labels_t = torch.as_tensor(labels, dtype=torch.long)
    probs_t = torch.as_tensor(probabilities, dtype=torch.float32)
    n_classes = probs_t.shape[1]
    accuracy = float((probs_t.argmax(1) == labels_t).float().mean())
    present = torch.unique(labels_t).numel()
    auc = float(multiclass_auroc(probs_t, labels_t, n_classes, average="macro")) if present > 1 else float("nan")
    f1 = float(multiclass_f1_score(probs_t, labels_t, n_classes, average="macro"))
    return {"accuracy": accuracy, "auc": auc, "f1": f1}
