"""Reading checkpoint files safely: tensors and plain data only, never code.

Every checkpoint cgcnn-lab opens (its own, the original CGCNN code's, ``last.ckpt`` before a resume) goes through
:func:`safe_load`, i.e. ``torch.load(weights_only=True)`` with numpy scalars allowed as data.
"""

from __future__ import annotations

import contextlib
import pickle
import re
from pathlib import Path

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, not ours, or carrying unsafe pickled objects)."""


def _numpy_scalar_globals() -> list:
    """numpy scalars (e.g. the original's ``best_mae_error``) rebuild from a dtype and raw bytes: plain data.

    Listed under both module paths numpy has pickled them with; the object dtype is not allowed.
    """
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
    _check_looks_like_checkpoint(path)
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


MODEL_ARGUMENT = ("a model is a run folder, a .ckpt file, or a checkpoint of the original CGCNN code (.pth.tar) "
                  "(the model comes first: cgcnn-lab predict MODEL DATA)")


def _check_looks_like_checkpoint(path: Path) -> None:
    """A PyTorch file is a zip archive (``PK``) or, in the legacy format the original code used, a pickle
    (``\\x80``). Anything else (a CSV, a CIF, a gzipped table) is named, instead of an unpickling error about it."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return
    if head[:2] == b"\x1f\x8b":
        what = "a gzip-compressed file (a data table?)"
    elif not head:
        what = "an empty file"
    else:
        try:
            first = head.decode("utf-8").splitlines()[0].strip()
        except (UnicodeDecodeError, IndexError):
            what = "not a PyTorch checkpoint"
        else:
            kind = "a CSV table" if "," in first else "a text file"
            what = f"{kind} (first line: {first[:60]!r})"
    raise CheckpointError(f"{path} is {what}, not a model; {MODEL_ARGUMENT}")


def resolve_checkpoint(model: str | Path) -> Path:
    """A run folder (its best checkpoint) or a checkpoint file."""
    path = Path(model)
    if path.is_dir():
        best = path / "checkpoints" / "best.ckpt"
        if best.is_file():
            return best
        if (path / "ensemble.json").exists():
            raise CheckpointError(f"{path} is an ensemble (cgcnn-lab ensemble): predict with it; to load one model, "
                                  "load one of the members its ensemble.json lists")
        if (path / "id_prop.csv").exists():
            raise CheckpointError(f"{path} is a data folder (it has id_prop.csv), not a model; {MODEL_ARGUMENT}")
        if (path / "fold0" / "checkpoints" / "best.ckpt").is_file():
            raise CheckpointError(f"{path} is a cross-validation: its models are {path}/fold0, fold1, ...; predict "
                                  f"with one, or with all as an ensemble: {path}/fold0 DATA --ensemble {path}/fold1 ...")
        raise CheckpointError(f"{path}: run folder without checkpoints/best.ckpt (did training finish an epoch?)")
    return path
