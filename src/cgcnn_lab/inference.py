"""Inference: load a trained model safely and predict with it, one model or an ensemble, as a table with its
scores.

Inference needs the data and model floors and the saved-model spec, never the training stack: importing this
module imports neither Lightning nor PyTorch Geometric (``tests/test_layout.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cgcnn_lab.checkpoint import CheckpointError, resolve_checkpoint, safe_load
from cgcnn_lab.data.dataset import CrystalDataset, build_dataset
from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.data.graph import GraphConfig
from cgcnn_lab.data.sources import RawDataset
from cgcnn_lab.metrics import classification_metrics, regression_metrics
from cgcnn_lab.model.network import CGCNN
from cgcnn_lab.spec import ModelSpec, with_unit
from cgcnn_lab.targets import TargetTransform

__all__ = ["CheckpointError", "Predictions", "TrainedModel", "load_trained", "predict_data", "predict_outputs",
           "predict_structures", "resolve_checkpoint", "safe_load"]


@dataclass
class TrainedModel:
    """A model with everything needed to featurise new data and read its outputs."""

    model: CGCNN
    spec: ModelSpec
    path: Path

    @property
    def graph_config(self) -> GraphConfig:
        return self.spec.graph

    @property
    def encoding(self) -> ElementEncoding | None:
        return self.spec.encoding

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def transform(self) -> TargetTransform | None:
        return self.spec.transform


def load_trained(model: str | Path, atom_init: str | Path | None = None) -> TrainedModel:
    """A zoo model by name, a packaged model (safetensors + card), a cgcnn-lab run/checkpoint, or a checkpoint of
    the original CGCNN code (``*.pth.tar``).

    Original checkpoints carry no element encoding: ``atom_init`` (the ``atom_init.json`` the model was trained
    with) is then required. It is ignored for cgcnn-lab checkpoints, which store their encoding.
    """
    from cgcnn_lab import original, packaged, zoo

    named = zoo.find(model) if not Path(model).exists() else None
    if named is None and not Path(model).exists():
        raise CheckpointError(f"{model}: no such file or folder, and not a zoo model (cgcnn-lab models lists them: "
                              f"{', '.join(zoo.names())})")
    model = named or model
    if packaged.is_packaged(model):
        spec, state, _ = packaged.load_packaged(model)
        net = spec.build_model()
        net.load_state_dict(state)
        net.eval()
        return TrainedModel(net, spec, packaged.folder_of(model))
    path = resolve_checkpoint(model)
    ckpt = safe_load(path)
    if original.is_original(ckpt):
        if atom_init is None:
            raise CheckpointError(
                f"{path}: an original CGCNN checkpoint stores no element encoding; pass --atom-init FILE or "
                "put the atom_init.json it was trained with in the data folder"
            )
        try:
            net, spec = original.convert(ckpt, ElementEncoding.from_atom_init(atom_init))
        except original.OriginalFormatError as err:
            raise CheckpointError(f"{path}: original CGCNN checkpoint: {err}") from None
        return TrainedModel(net, spec, path)
    stored = (ckpt.get("hyper_parameters") or {}).get("spec") if isinstance(ckpt, dict) else None
    spec = ModelSpec.from_dict(stored, str(path))
    net = spec.build_model()
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    net.load_state_dict(state)
    net.eval()
    return TrainedModel(net, spec, path)


@torch.no_grad()
def predict_outputs(
    model: CGCNN, dataset: CrystalDataset, transform: TargetTransform | None, batch_size: int = 256, subset=None
) -> np.ndarray:
    """Predictions in the data's unit (regression: [S, T]; classification: class probabilities [S, K]) for the
    crystals ``subset`` (positions; default all), in that order."""
    was_training = model.training
    model.eval()
    outputs = []
    device = next(model.parameters()).device
    for batch in dataset.loader(subset, batch_size, collapse=model.merges_graphs, device=str(device)):
        out = model(batch)
        outputs.append(out.exp() if transform is None else transform.decode(out, batch))
    model.train(was_training)
    return torch.cat(outputs).double().cpu().numpy() if outputs else np.zeros((0, 1))


@dataclass
class Predictions:
    """What a model (or the mean of an ensemble) says about a set of crystals, with ids, unit and, where the data
    has them, the targets. ``np.asarray(predictions)`` is ``values``."""

    ids: np.ndarray
    values: np.ndarray  # [S, T] in the data's unit (regression), or class probabilities [S, K]
    spec: ModelSpec
    n_atoms: np.ndarray
    spread: np.ndarray | None = None  # standard deviation over ensemble members (None: one model)
    targets: np.ndarray | None = None  # [S, T] as read (classification: labels or thresholded values)
    seen: dict[str, int] | None = None  # how many of the crystals were in the model's train/val split

    def __len__(self) -> int:
        return len(self.ids)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.values if dtype is None else self.values.astype(dtype)

    @property
    def unit(self) -> str:
        return self.spec.unit

    @property
    def labels(self) -> np.ndarray | None:
        """Classification targets as class labels (thresholded with the model's threshold)."""
        if self.targets is None or self.spec.task != "classification":
            return None
        y, threshold = self.targets[:, 0], self.spec.threshold
        return (y > threshold).astype(int) if threshold is not None else y.astype(int)

    def columns(self) -> dict[str, np.ndarray]:
        """The table ``predict`` writes and ``train`` keeps as test_results.csv, by column: id, target(s),
        prediction(s), ``prediction_std`` for an ensemble, ``target_per_atom`` and ``prediction_per_atom`` for a
        per-atom model; for classes the most probable one and the probabilities ``p0..``."""
        cols, pred = {"id": np.asarray(self.ids)}, self.values
        if self.spec.task == "classification":
            if self.labels is not None:
                cols["target"] = self.labels
            cols["prediction"] = pred.argmax(1)  # the most probable class; p1 is the probability of class 1
            return cols | {f"p{k}": pred[:, k] for k in range(pred.shape[1])}
        single = pred.shape[1] == 1
        for k, name in enumerate(self.spec.target_names):
            suffix = "" if single else f":{name}"
            if self.targets is not None:
                cols[f"target{suffix}"] = self.targets[:, k]
            cols[f"prediction{suffix}"] = pred[:, k]
            if self.spread is not None:
                cols[f"prediction_std{suffix}"] = self.spread[:, k]
        if self.spec.per_atom:
            if self.targets is not None:
                cols["target_per_atom"] = self.targets[:, 0] / self.n_atoms
            cols["prediction_per_atom"] = pred[:, 0] / self.n_atoms
        return cols

    def frame(self):
        """:meth:`columns` as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.columns())

    def to_csv(self, path: str | Path) -> None:
        """:meth:`columns` as CSV, written with the standard library: ``cgcnn-lab predict`` never imports pandas
        (~0.3 s of a ~2 s command); the numbers are the shortest text that reads back to the same float, as pandas
        writes them."""
        import csv

        cols = self.columns()
        with open(path, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(cols)
            writer.writerows(zip(*(c.tolist() for c in cols.values()), strict=True))

    def scores(self) -> dict[str, float] | None:
        """Metrics against the targets (None without targets, or when they are not the model's class labels)."""
        if self.targets is None:
            return None
        if self.spec.task == "classification":
            labels = self.labels
            if not set(np.unique(labels)) <= set(range(self.values.shape[1])):
                return None
            return classification_metrics(labels, self.values)
        scores = regression_metrics(self.targets, self.values)
        if self.spec.per_atom:
            na = self.n_atoms[:, None].astype(np.float64)
            scores |= {f"{k}_per_atom": v for k, v in regression_metrics(self.targets / na, self.values / na).items()}
        return scores

    def score_lines(self, prefix: str = "") -> list[str]:
        """The scores as a user reads them, each with its unit."""
        s = self.scores()
        if s is None:
            return [] if self.targets is None else [f"no metrics: the targets are not class labels 0..{self.values.shape[1] - 1}"]
        if self.spec.task == "classification":
            return [f"{prefix}accuracy {s['accuracy']:.4f}   ROC-AUC {s['auc']:.4f}   F1 {s['f1']:.4f}"]
        u, mae, rmse = self.unit, f"MAE {s['mae']:.4g}", f"RMSE {s['rmse']:.4g}"
        lines = [f"{prefix}{with_unit(mae, u)}   {with_unit(rmse, u)}   R² {s['r2']:.4f}"]
        if "mae_per_atom" in s:
            per_atom = f"MAE per atom {s['mae_per_atom']:.4g}"
            lines.append(f"{prefix}{with_unit(per_atom, self.spec.learned_unit)}")
        return lines


    def confusion(self) -> list[list[int]] | None:
        """Classification counts, rows the true class and columns the most probable one (None without labels)."""
        labels = self.labels
        if labels is None:
            return None
        k = self.values.shape[1]
        counts = np.bincount(labels * k + self.values.argmax(1), minlength=k * k) if len(labels) else np.zeros(k * k)
        return counts.reshape(k, k).astype(int).tolist()

    def subset(self, mask: np.ndarray) -> Predictions:
        """The predictions of the crystals where ``mask`` is True (e.g. the ABO3 members of a test split)."""
        pick = (lambda a: None if a is None else a[mask])
        return Predictions(self.ids[mask], self.values[mask], self.spec, self.n_atoms[mask], pick(self.spread),
                           pick(self.targets))

    def warnings(self) -> list[str]:
        """What makes the scores misleading: crystals the model was trained on, or targets that cannot be the
        model's quantity (a total per cell against a per-atom model, another scale, R² below zero)."""
        seen = [f"{n} in its {name} split" for name, n in (self.seen or {}).items() if n]
        found = []
        if seen:
            found.append(f"of these {len(self)} crystals the model saw {' and '.join(seen)} while training: their "
                         "errors are not a test of the model")
        s = self.scores()
        if s is None or self.spec.task != "regression":
            return found
        found += _quantity_mismatch(self.targets[:, 0], self.values[:, 0], self.n_atoms.astype(np.float64))
        if s["r2"] < 0:
            found.append(f"R² {s['r2']:.2f} < 0: the predictions are further from the targets than their mean is; "
                         f"are these targets the model's quantity ({', '.join(self.spec.target_names)}"
                         f"{', ' + self.unit if self.unit else ''})?")
        return found


def _quantity_mismatch(y: np.ndarray, pred: np.ndarray, n_atoms: np.ndarray) -> list[str]:
    """A per-cell vs per-atom mix-up (one grows with the atom count, the other not), or a scale far off (another
    unit?)."""
    found = []
    if len(y) >= 10 and n_atoms.std() > 0 and y.std() > 0 and pred.std() > 0:
        scales = [abs(np.corrcoef(v, n_atoms)[0, 1]) for v in (y, pred)]
        if scales[0] > 0.8 and scales[1] < 0.5:
            found.append(f"the targets grow with the atom count (correlation {scales[0]:.2f}), the predictions do "
                         "not: totals per cell against a model of a per-atom quantity?")
        elif scales[1] > 0.8 and scales[0] < 0.5:
            found.append(f"the predictions grow with the atom count (correlation {scales[1]:.2f}), the targets do "
                         "not: values per atom against a model of totals per cell?")
    ratio = np.median(np.abs(y)) / max(np.median(np.abs(pred)), 1e-12)
    if not 0.05 < ratio < 20:
        found.append(f"the targets are ~{ratio:.3g} times the predictions in size: another unit or quantity?")
    return found


def split_of_run(checkpoint: Path) -> dict[str, set[str]]:
    """The train and validation ids of the run a checkpoint belongs to (its run folder's split.csv, a packaged
    model's split.csv.gz), or {}."""
    from cgcnn_lab.packaged import SPLIT, ids_by_split, is_packaged, read_split

    if is_packaged(checkpoint):
        return ids_by_split(read_split(Path(checkpoint) / SPLIT))
    in_run = checkpoint.parent.name == "checkpoints"
    return ids_by_split(read_split(checkpoint.parent.parent / "split.csv")) if in_run else {}


def _check_member(model, trained: TrainedModel, first: TrainedModel, ids: list, first_ids: list) -> None:
    """Models averaged together must predict the same thing for the same crystals."""
    a, b = trained.spec, first.spec
    for what, mine, theirs in [("task", a.task, b.task), ("target_names", a.target_names, b.target_names),
                               ("unit", a.unit, b.unit), ("number of outputs", a.n_outputs, b.n_outputs),
                               ("per-atom training", a.per_atom, b.per_atom)]:
        if mine != theirs:
            raise CheckpointError(f"--ensemble {model}: {what} {mine!r} differs from the first model's {theirs!r}")
    if ids != first_ids:
        raise CheckpointError(f"--ensemble {model}: its graph settings skip other structures than the first model's")


def predict_data(models: Sequence[str | Path], raw: RawDataset, atom_init: str | Path | None = None,
                 cache_dir=None, use_cache: bool = True, strict: bool = False, jobs: int = 0,
                 stream: bool | None = None, log=print) -> Predictions:
    """Predict ``raw`` with one model or the mean of several (an ensemble: ``spread`` is their std). Each model
    featurises with its own graph settings (the cache is shared)."""
    models, scale = expand_ensembles(models)
    values, first, first_ids = [], None, []
    for model in models:
        # an original CGCNN checkpoint takes its element encoding from atom_init or the data folder, as the original
        trained = load_trained(model, atom_init=atom_init or raw.atom_init)
        encoding = ElementEncoding.from_atom_init(atom_init) if atom_init else trained.encoding
        if atom_init and trained.encoding is not None and encoding.n_features != trained.encoding.n_features:
            raise CheckpointError(f"{atom_init} has {encoding.n_features} features; the model expects "
                                  f"{trained.encoding.n_features}")
        dataset = build_dataset(raw, trained.graph_config, encoding, cache_dir, use_cache, strict, jobs)
        dataset.stream = stream
        if first is None:
            first, first_ids = trained, list(dataset.ids)
            log(dataset.summary())
        else:
            _check_member(model, trained, first, list(dataset.ids), first_ids)
        values.append(predict_outputs(trained.model, dataset, trained.transform))
    if len(values) > 1:
        calibrated = " times the calibration's scale" if np.any(np.asarray(scale) != 1.0) else ""
        log(f"ensemble of {len(values)} models: the mean of their predictions (prediction_std: their spread"
            f"{calibrated})")
    ids = [str(i) for i in dataset.ids]
    seen = {name: len(in_split.intersection(ids)) for name, in_split in split_of_run(first.path).items()}
    spread = np.std(values, axis=0) * scale if len(values) > 1 else None
    return Predictions(dataset.ids, np.mean(values, axis=0), first.spec, dataset.n_atoms, spread, dataset.targets,
                       seen)


ENSEMBLE_FILE = "ensemble.json"  # written by ``cgcnn-lab ensemble`` (ensembles.py)


def expand_ensembles(models: Sequence[str | Path]) -> tuple[list, np.ndarray | float]:
    """The models to average, an ensemble folder replaced by its members (each as often as it counts), and the
    factor its calibration puts on their spread (1 for models given one by one)."""
    import json

    from cgcnn_lab import zoo

    models = [zoo.find(m) or m if not Path(m).exists() else m for m in models]  # a zoo ensemble, by name
    folders = [m for m in models if (Path(m) / ENSEMBLE_FILE).is_file()]
    if not folders:
        return list(models), 1.0
    if len(models) > 1:
        raise CheckpointError(f"{folders[0]} is an ensemble already (with a calibrated spread): predict with it alone")
    folder = Path(folders[0])
    record = json.loads((folder / ENSEMBLE_FILE).read_text())
    return ensemble_members(folder, record, counted=True), np.asarray(record["scale"], dtype=np.float64)


def ensemble_members(folder: Path, record: dict, counted: bool) -> list[Path]:
    """The members of an ensemble folder (its ensemble.json ``record``), each as often as it counts or once."""
    return [folder / m for m, n in zip(record["members"], record["counts"]) for _ in range(n if counted else 1)]


def predict_structures(model: str | Path, structures, ids=None, atom_init: str | Path | None = None) -> Predictions:
    """Predict for pymatgen Structures from Python: ``Predictions`` (``np.asarray`` gives [S, T] in the data's
    unit, or [S, K] probabilities; ``.frame()`` the table with ids).

    Structures that cannot be featurised raise DataError (strict), so rows always match the input.
    ``atom_init`` is needed (only) for a checkpoint of the original CGCNN code.
    """
    from cgcnn_lab.data.sources import from_structures

    raw = from_structures(structures, ids=ids, strict=True)
    return predict_data([model], raw, atom_init=atom_init, use_cache=False, strict=True, log=lambda *_: None)
