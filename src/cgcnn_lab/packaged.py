"""A packaged model: a folder with the weights as safetensors and a JSON card beside them, the format of the model
zoo and of ``cgcnn-lab export --format safetensors``.

    MODEL/model.safetensors   the network's tensors; its metadata holds the saved-model spec (``spec.py``) as JSON
    MODEL/card.json           what a reader wants to know: data, licence, target and unit, test scores, command
    MODEL/split.csv.gz        optional: id,split of the crystals it was trained, validated and tested on

Loading reads tensors and JSON only, never a pickle, so a packaged model from anywhere is safe to open. The spec
lives in one place (the weights file); the card repeats what a reader looks for and is generated from it.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where weights are read: listing the zoo's cards never pays for it
    from cgcnn_lab.spec import ModelSpec

WEIGHTS = "model.safetensors"
CARD = "card.json"
SPLIT = "split.csv.gz"


def is_packaged(path: str | Path) -> bool:
    """A packaged model's folder, or its weights file."""
    path = Path(path)
    return (path / WEIGHTS).is_file() or (path.is_file() and path.name.endswith(".safetensors"))


def folder_of(path: str | Path) -> Path:
    path = Path(path)
    return path.parent if path.is_file() else path


def save_packaged(state: dict, spec: ModelSpec, folder: str | Path, card: dict) -> dict:
    """Write the weights (``state``: the network's state dict) and the card; returns the card as written, with
    the generated fields (task, targets, unit, graph settings, parameter count, size, checksum)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(tensors, folder / WEIGHTS, metadata={"format": "cgcnn-lab-packaged", "spec": json.dumps(spec.to_dict())})
    (folder / WEIGHTS).chmod(0o644)  # safetensors writes 0600; a shipped model is read by everyone
    weights = (folder / WEIGHTS).read_bytes()
    card = {**card, **describe(spec), "parameters": spec.build_model().n_parameters(),
            "size_bytes": len(weights), "sha256": hashlib.sha256(weights).hexdigest()}
    (folder / CARD).write_text(json.dumps(card, indent=2) + "\n")
    return card


def describe(spec: ModelSpec) -> dict:
    """The card's fields generated from the spec: what it predicts, in what unit, from which graph."""
    g = spec.graph
    return {
        "task": spec.task, "targets": list(spec.target_names), "unit": spec.unit or None,
        "per_atom_training": spec.per_atom, "threshold": spec.threshold,
        "classes": spec.class_names if spec.task == "classification" else None,
        "graph": {"radius": g.radius, "max_neighbors": g.max_neighbors},
        "network": {"conv": spec.model.conv, "n_conv": spec.model.n_conv, "atom_fea_len": spec.model.atom_fea_len,
                    "h_fea_len": spec.model.h_fea_len, "readout": spec.model.readout, "pool": spec.model.pool},
    }


def load_packaged(path: str | Path) -> tuple[ModelSpec, dict, dict]:
    """(spec, state dict, card) of a packaged model; a clear error for a file that is not one."""
    from safetensors import SafetensorError, safe_open

    from cgcnn_lab.checkpoint import CheckpointError
    from cgcnn_lab.spec import ModelSpec

    folder = folder_of(path)
    weights = Path(path) if Path(path).is_file() else folder / WEIGHTS
    try:
        with safe_open(weights, framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  safe_open has no items()
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({err})") from None
    if "spec" not in meta:
        raise CheckpointError(f"{weights}: a safetensors file without a cgcnn-lab model spec in its metadata "
                              "(written by another tool?)")
    try:
        stored = json.loads(meta["spec"])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{weights}: its model spec is not valid JSON ({err})") from None
    card_path = folder / CARD
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    return ModelSpec.from_dict(stored, str(weights)), state, card


def write_split(folder: Path, rows) -> None:
    """(id, split) rows as split.csv.gz, byte-identical for identical rows (no timestamp in the gzip header)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["id", "split"])
    writer.writerows(rows)
    with open(Path(folder) / SPLIT, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(text.getvalue().encode())


def read_split(path: str | Path) -> list[tuple[str, str]]:
    """(id, split) rows of a run's split.csv or a packaged model's split.csv.gz ([] when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    with (gzip.open(path, "rt", newline="") if path.suffix == ".gz" else open(path, newline="")) as f:
        return [(r["id"], r["split"]) for r in csv.DictReader(f)]


def ids_by_split(rows: list[tuple[str, str]], names=("train", "val")) -> dict[str, set[str]]:
    return {name: {i for i, split in rows if split == name} for name in names} if rows else {}
