"""What a training run reads (the data table, the class labels of a classifier) and what it returns: shared by one
run (``run.py``) and a cross-validation of several (``crossval.py``), which calls the run, so neither imports the
other's module for them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cgcnn_lab.data.dataset import CrystalDataset
from cgcnn_lab.data.sources import DataError, RawDataset, load_dataset
from cgcnn_lab.training.options import DataOptions, TrainOptions
from cgcnn_lab.training.splits import Split


@dataclass
class RunResult:
    """What ``train`` returns: the run folder, its metrics.json, the featurised data and the split."""

    out: Path
    metrics: dict
    dataset: CrystalDataset
    split: Split
    seconds: float


def read_data(data: DataOptions, opts: TrainOptions) -> RawDataset:
    """The data table of ``--data`` (with the ``--fold-col`` column, where one is named)."""
    extra = [opts.fold_col] if opts.fold_col else []
    return load_dataset(data.source, data.targets, data.id_col, data.structure_col, data.strict, extra_cols=extra)


def class_labels(targets: np.ndarray, threshold: float | None, where: str) -> np.ndarray:
    """Integer class labels: thresholded targets, or targets that already are 0..K-1 integers."""
    y = targets[:, 0]
    if threshold is not None:
        return (y > threshold).astype(np.int64)
    if not np.all(np.equal(np.mod(y, 1), 0)) or y.min() < 0:
        raise DataError(f"{where}: classification targets must be class labels 0, 1, ... (or use --threshold X)")
    return y.astype(np.int64)


def classes_of(dataset: CrystalDataset, data: DataOptions, task: str) -> np.ndarray | None:
    """The class labels of a classification run (None for regression): they stratify the split and are learned."""
    if task != "classification":
        return None
    if dataset.targets.shape[1] > 1:
        raise DataError("classification takes exactly one target column")
    return class_labels(dataset.targets, data.threshold, str(data.source))
