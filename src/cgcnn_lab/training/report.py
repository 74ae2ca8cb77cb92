"""The end of a run: test the best checkpoint (or the members of ``--members``) and write test_results.csv,
metrics.json, plots and the summary. The table and the scores are ``predict``'s own (``Predictions``), so a run and
a later ``predict`` agree."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cgcnn_lab.data.dataset import CrystalDataset
from cgcnn_lab.data.formula import subset_mask
from cgcnn_lab.inference import (
    ENSEMBLE_FILE,
    Predictions,
    TrainedModel,
    expand_ensembles,
    load_trained,
    predict_outputs,
)
from cgcnn_lab.spec import in_unit
from cgcnn_lab.training import plots
from cgcnn_lab.training.splits import Split


def evaluate(out: Path, dataset: CrystalDataset, split: Split, monitor: str, info: dict,
             subsets: Sequence[str] = ()) -> tuple[dict, Predictions, dict[str, Predictions]]:
    """Predict the test split (the validation split when there is none) with the run's model (``run_models``), in
    the target's own unit; write test_results.csv and metrics.json. ``info``: run facts kept in metrics.json;
    ``subsets``: formula patterns (ABO3) whose members are also scored on their own."""
    eval_idx, eval_name = (split.test, "test") if len(split.test) else (split.val, "val")
    models, scale = run_models(out)
    pred, members = predict_run(models, scale, dataset, eval_idx)
    best_epoch, best_value = _best(out / "metrics.csv", monitor)
    metrics = {"split": eval_name, "n_test": len(eval_idx), "unit": pred.spec.unit or None,
               "best_epoch": best_epoch, f"best_{monitor}": best_value, **info}  # info wins (--members: the ensemble's)
    metrics |= {f"test_{k}": v for k, v in (pred.scores() or {}).items()}
    if len(members) > 1:  # the ensemble's members alone, for comparison
        metrics["member_test_scores"] = [m.scores() for m in members]
    if pred.spec.per_atom:
        metrics["unit_per_atom"] = pred.spec.learned_unit or None
    parts = subset_predictions(pred, dataset, eval_idx, subsets)
    metrics |= subset_metrics(parts) | class_counts(pred)
    pred.to_csv(out / "test_results.csv")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics, pred, parts


def run_models(out: Path) -> tuple[list[TrainedModel], np.ndarray | float]:
    """A run folder's model: the members of a ``--members`` run with their spread's calibrated scale, or the best
    checkpoint."""
    if (out / ENSEMBLE_FILE).is_file():
        paths, scale = expand_ensembles([out])
        return [load_trained(p) for p in paths], scale
    return [load_trained(out / "checkpoints" / "best.ckpt")], 1.0


def predict_run(models: list[TrainedModel], scale, dataset: CrystalDataset, idx) -> tuple[Predictions, list]:
    """The models' mean (and calibrated spread) on the crystals ``idx`` of ``dataset``, and each model's own."""
    first = models[0]
    ids, n_atoms = dataset.ids[idx], dataset.n_atoms[idx]
    targets = None if dataset.targets is None else dataset.targets[idx]
    values = np.stack([predict_outputs(t.model, dataset, t.transform, subset=idx) for t in models])
    spread = values.std(0) * scale if len(models) > 1 else None
    members = [Predictions(ids, v, first.spec, n_atoms, targets=targets) for v in values]
    return Predictions(ids, values.mean(0), first.spec, n_atoms, spread, targets), members


def subset_predictions(pred: Predictions, dataset: CrystalDataset, idx, patterns: Sequence[str]) -> dict:
    """{pattern: the predictions of the crystals ``idx`` of ``dataset`` whose formula fits it}."""
    g = dataset.graphs
    return {p: pred.subset(subset_mask(p, g.z, g.atom_ptr, crystals=idx)) for p in patterns}


def class_counts(pred: Predictions) -> dict:
    """The confusion matrix and what each class means, for metrics.json (classification only)."""
    confusion = pred.confusion()
    return {} if confusion is None else {"test_confusion": confusion, "classes": pred.spec.class_names}


def subset_metrics(parts: dict[str, Predictions]) -> dict:
    """Flat metrics.json entries (``test_accuracy_ABO3``, ``n_test_ABO3``): compare's results.csv keeps them."""
    flat = {}
    for pattern, part in parts.items():
        flat[f"n_test_{pattern}"] = len(part)
        flat |= {f"test_{k}_{pattern}": v for k, v in (part.scores() or {}).items()}
    return flat


def _best(path: Path, monitor: str) -> tuple[int | None, float | None]:
    """(epoch, value) of the lowest ``monitor`` in metrics.csv ((None, None) before any epoch)."""
    m = pd.read_csv(path) if path.exists() else pd.DataFrame()
    if monitor not in m or not m[monitor].notna().any():
        return None, None
    row = m.loc[m[monitor].idxmin()]
    return int(row["epoch"]), float(row[monitor])


def write_plots(out: Path, monitor: str, pred: Predictions, eval_name: str) -> None:
    """Learning curves and the test split's parity plot (ROC curve for two classes, class 1 the positive one)."""
    metrics = pd.read_csv(out / "metrics.csv") if (out / "metrics.csv").exists() else pd.DataFrame()
    spec, regression = pred.spec, pred.spec.task == "regression"
    unit, learned_unit = spec.unit, spec.learned_unit
    if len(metrics):
        plots.learning_curve(metrics, "loss", "loss (normalised targets)" if regression else "NLL loss",
                             out / "loss.png", log=True)
        if regression:
            mae = "MAE per atom" if spec.per_atom else "MAE"
            plots.learning_curve(metrics, "mae", in_unit(mae, learned_unit), out / "mae.png")
        else:
            plots.learning_curve(metrics, "accuracy", "accuracy", out / "accuracy.png")
    y, values = pred.targets, pred.values
    if not regression:
        if pred.labels is not None:
            plots.confusion(pred.confusion(), spec.class_names, out / "confusion.png", f"{eval_name} split")
        if values.shape[1] == 2 and pred.labels is not None:
            plots.roc_curve(pred.labels, values[:, 1], out / "roc.png", f"{eval_name} split ROC",
                            positive=spec.class_names[1])
    elif spec.per_atom:
        na = pred.n_atoms[:, None].astype(float)
        plots.parity(y / na, values / na, learned_unit, f"{eval_name} split (per atom)", out / "parity.png")
    else:
        plots.parity(y, values, unit, f"{eval_name} split", out / "parity.png")


def summary(out: Path, metrics: dict, pred: Predictions, parts: dict[str, Predictions] | None = None) -> str:
    """The one-screen summary printed at the end of a run."""
    lines = ["", f"run folder: {out}", *_scored(pred, f"{metrics['split']} ")]
    for pattern, part in (parts or {}).items():
        lines += _scored(part, f"{metrics['split']} {pattern} ") if len(part) else [f"no {pattern} crystals"]
    if "test_confusion" in metrics:
        lines.append(f"confusion (rows: true {' / '.join(metrics['classes'])}; columns: predicted): "
                     f"{metrics['test_confusion']}")
    if "folds" in metrics:  # the fold models together are an ensemble trained on all the data
        others = " ".join(str(out / f"fold{k}") for k in range(1, metrics["folds"]))
        lines.append(f"{metrics['folds']} folds, every crystal tested once; {metrics['seconds']:.1f} s of training")
        if (out / "fold0" / ENSEMBLE_FILE).is_file():  # --members: each fold is an ensemble already
            lines.append(f"predict: cgcnn-lab predict {out / 'fold0'} DATA --out predictions.csv (or any fold)")
        else:
            lines.append(f"predict: cgcnn-lab predict {out / 'fold0'} DATA --ensemble {others} --out predictions.csv")
    elif "member_best_epochs" in metrics:
        lines.append(f"{metrics['members']} members, best epochs {metrics['member_best_epochs']} of "
                     f"{metrics['epochs_run']}, {metrics['seconds']:.1f} s")
    else:
        lines.append(f"best epoch {metrics['best_epoch']} of {metrics['epochs_run']}, {metrics['seconds']:.1f} s")
        lines.append(f"predict: cgcnn-lab predict {out} DATA --out predictions.csv")
    return "\n".join(lines)


def _scored(pred: Predictions, prefix: str) -> list[str]:
    """The score lines of ``pred``, the first with its crystal count."""
    scores = pred.score_lines(prefix=prefix)
    return [scores[0] + f"   ({len(pred)} crystals)", *scores[1:]] if scores else []
