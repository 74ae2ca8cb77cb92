"""Load a trained model safely and predict with it."""

from __future__ import annotations

import contextlib
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cgcnn_lab.data.dataset import CrystalDataset
from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.data.graph import GraphConfig
from cgcnn_lab.model.network import CGCNN
from cgcnn_lab.train.module import build_model
from cgcnn_lab.train.targets import TargetTransform


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, not ours, or carrying unsafe pickled objects)."""


def _numpy_scalar_globals() -> list:
    """numpy scalars (e.g. the original's ``best_mae_error``) rebuild from a dtype and raw bytes: plain data.

    Listed under both module paths numpy has pickled them with; the object dtype is not allowed.
    """
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    kinds = ["Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"]
    dtypes = [getattr(np.dtypes, k) for k in kinds if hasattr(getattr(np, "dtypes", None), k)]
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype, *dtypes]


def safe_load(path: str | Path) -> dict:
    """``torch.load`` restricted to tensors and plain data: a file that would run code on unpickling is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
        with allow(_numpy_scalar_globals()) if allow else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        first = text.strip().splitlines()[0][:300]
        hint = ""
        if "argparse.Namespace" in text:  # newer forks of the original code pickle args as a Namespace
            hint = (
                " It stores 'args' as an argparse.Namespace, which cgcnn-lab does not unpickle. If you trust the "
                "file, convert it once in Python: ckpt = torch.load(f, weights_only=False); "
                "ckpt['args'] = vars(ckpt['args']); torch.save(ckpt, f)."
            )
        else:
            found = re.search(r"GLOBAL (\S+)", text)
            first = f"it needs {found.group(1)}" if found else first
        raise CheckpointError(
            f"{path}: refused to load: the file contains pickled objects other than tensors and plain data "
            f"({first}). Loading it could run arbitrary code; only use checkpoints from sources you trust.{hint}"
        ) from None
    except Exception as err:  # noqa: BLE001  any other failure: not a readable checkpoint
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


def load_trained(model: str | Path, atom_init: str | Path | None = None) -> TrainedModel:
    """A cgcnn-lab run/checkpoint, or a checkpoint of the original CGCNN code (``*.pth.tar``).

    Original checkpoints carry no element encoding: ``atom_init`` (the ``atom_init.json`` the model was trained
    with) is then required. It is ignored for cgcnn-lab checkpoints, which store their encoding.
    """
    path = resolve_checkpoint(model)
    ckpt = safe_load(path)
    from cgcnn_lab import original

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
        if transform is None:
            outputs.append(out.exp())
        else:
            outputs.append(transform.decode(out, batch))
    model.train(was_training)
    return torch.cat(outputs).double().cpu().numpy() if outputs else np.zeros((0, 1))


def predict_structures(model: str | Path, structures, ids=None, atom_init: str | Path | None = None) -> np.ndarray:
    """Predict for pymatgen Structures from Python: [S, T] in the data's unit (or [S, K] probabilities).

    Structures that cannot be featurised raise DataError (strict), so rows always match the input.
    ``atom_init`` is needed (only) for a checkpoint of the original CGCNN code.
    """
    from cgcnn_lab.data.dataset import build_dataset
    from cgcnn_lab.data.sources import from_structures

    trained = load_trained(model, atom_init=atom_init)
    raw = from_structures(structures, ids=ids, strict=True)
    dataset = build_dataset(raw, trained.graph_config, trained.encoding, use_cache=False, strict=True)
    return predict_outputs(trained.model, dataset, trained.transform)
