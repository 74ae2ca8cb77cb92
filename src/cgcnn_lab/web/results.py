"""``Predictions`` as the API answers them: the CSV ``cgcnn-lab predict`` writes, and the same table as JSON rows."""

from __future__ import annotations

import math
import re
from pathlib import Path

from cgcnn_lab.data.sources import RawDataset
from cgcnn_lab.inference import Predictions
from cgcnn_lab.web.uploads import scrub


def plain(value):
    """A JSON value: numpy scalars as Python's, NaN and infinities as null (JSON has none)."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


def files_of(raw: RawDataset, folder: Path) -> dict[str, str]:
    """The uploaded file each structure id came from (``a.extxyz frame 3`` -> ``a.extxyz``)."""
    return {e.id: re.sub(r" (frame|row id) \d+$", "", scrub(e.where, folder)) for e in raw.entries}


def rows(pred: Predictions, files: dict[str, str]) -> tuple[list[str], list[dict]]:
    """(columns of the CSV, one dict per structure with ``file`` and, for classes, ``class`` added)."""
    cols = pred.columns()
    names = list(cols)
    out = []
    for k in range(len(pred)):
        row = {name: plain(cols[name][k]) for name in names}
        row["id"] = str(row["id"])
        row["file"] = files.get(row["id"], "")
        if pred.spec.task == "classification":
            row["class"] = pred.spec.class_names[int(row["prediction"])]
        out.append(row)
    return names, out


def csv_text(pred: Predictions, folder: Path) -> str:
    """The CSV exactly as ``cgcnn-lab predict --out`` writes it (written inside the request's folder)."""
    path = folder / "predictions.csv"
    pred.to_csv(path)
    return path.read_text()
