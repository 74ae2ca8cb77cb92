"""Load a trained model safely and predict with it."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_geometric.loader import DataLoader

from cgcnn_lab.data.dataset import CrystalDataset
from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.data.graph import GraphConfig
from cgcnn_lab.model.network import CGCNN
from cgcnn_lab.train.module import build_model
from cgcnn_lab.train.targets import TargetTransform


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, not ours, or carrying unsafe pickled objects)."""


def safe_load(path: str | Path) -> dict:
    """``torch.load`` restricted to tensors and plain data: a file that would run code on unpickling is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0][:300]
        raise CheckpointError(
            f"{path}: refused to load: the file contains pickled objects other than tensors and plain data "
            f"({first}). Loading it could run arbitrary code; only use checkpoints from sources you trust."
        ) from None
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from None


def resolve_checkpoint(model: str | Path) -> Path:
    """A run folder (its best checkpoint) or a checkpoint file."""
    path = Path(model)
    if path.is_dir():
        best = path / "checkpoints" / "best.ckpt"
        if not best.is_file():
            raise CheckpointError(f"{path}: run folder without checkpoints/best.ckpt (did training finish an epoch?)")
        return best
    return path


@dataclass
class TrainedModel:
    """A model with everything needed to featurise new data and read its outputs."""

    model: CGCNN
    spec: dict
    path: Path

    @property
    def graph_config(self) -> GraphConfig:
        return GraphConfig(**self.spec["graph"])

    @property
    def encoding(self) -> ElementEncoding | None:
        e = self.spec.get("encoding")
        return None if e is None else ElementEncoding.from_dict(e)

    @property
    def task(self) -> str:
        return self.spec["model"]["task"]

    @property
    def transform(self) -> TargetTransform | None:
        return TargetTransform.from_dict(self.spec["transform"]) if self.task == "regression" else None


def load_trained(model: str | Path) -> TrainedModel:
    path = resolve_checkpoint(model)
    ckpt = safe_load(path)
    spec = (ckpt.get("hyper_parameters") or {}).get("spec") if isinstance(ckpt, dict) else None
    if spec is None:
        raise CheckpointError(f"{path}: not a cgcnn-lab checkpoint (no model spec inside)")
    net = build_model(spec)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    net.load_state_dict(state)
    net.eval()
    return TrainedModel(net, spec, path)


@torch.no_grad()
def predict_outputs(
    model: CGCNN, dataset: CrystalDataset | list, transform: TargetTransform | None, batch_size: int = 256
) -> np.ndarray:
    """Predictions in the data's unit (regression: [S, T]; classification: class probabilities [S, K])."""
    was_training = model.training
    model.eval()
    outputs = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        out = model(batch)
        if transform is None:
            outputs.append(out.exp())
        else:
            outputs.append(transform.decode(out, batch))
    model.train(was_training)
    return torch.cat(outputs).double().numpy() if outputs else np.zeros((0, 1))


def predict_structures(model: str | Path, structures, ids=None) -> np.ndarray:
    """Predict for pymatgen Structures from Python: [S, T] in the data's unit (or [S, K] probabilities).

    Structures that cannot be featurised raise DataError (strict), so rows always match the input.
    """
    from cgcnn_lab.data.dataset import build_dataset
    from cgcnn_lab.data.sources import from_structures

    trained = load_trained(model)
    raw = from_structures(structures, ids=ids, strict=True)
    dataset = build_dataset(raw, trained.graph_config, trained.encoding, use_cache=False, strict=True)
    return predict_outputs(trained.model, dataset, trained.transform)
