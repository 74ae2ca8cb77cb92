"""Deployment: ``cgcnn-lab export`` writes a model as a packaged folder (safetensors + card), as the original
CGCNN code's checkpoint, or as one TorchScript (or ONNX) file that predicts from precomputed graphs with nothing but
torch (or an ONNX runtime) installed: no cgcnn-lab, pymatgen or Lightning on the serving side.

The file holds the network, the element encoding and the target decoding (normaliser, per-element references,
per-atom scaling), so its output is in the data's unit (class probabilities for a classifier). Its inputs are
the tensors of a batch of crystal graphs::

    z           [N]     atomic numbers of the atoms of every crystal, crystal after crystal
    edge_index  [2, E]  (neighbour, centre) atom indices of each bond
    distance    [E]     bond lengths in Å
    batch       [N]     the crystal of each atom (0..S-1)
    ptr         [S+1]   offsets of each crystal's atoms (ptr[s]..ptr[s+1])

built with the graph settings stored beside the model (``settings["graph"]``: radius, neighbour count).
``torch.jit.load(path, _extra_files={"cgcnn_lab.json": ""})`` returns the model and fills that dict with the
settings as JSON; :func:`load_torchscript` does both.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

from cgcnn_lab.inference import TrainedModel
from cgcnn_lab.packaged import save_packaged, write_split
from cgcnn_lab.version import __version__

SETTINGS = "cgcnn_lab.json"
INPUTS = ("z", "edge_index", "distance", "batch", "ptr")


class Deployed(torch.nn.Module):
    """The network and its decoding behind a signature of plain tensors (what tracing and serving need)."""

    def __init__(self, trained: TrainedModel) -> None:
        super().__init__()
        self.net, self.transform = trained.model, trained.transform

    def forward(self, z, edge_index, distance, batch, ptr):
        # num_graphs from ptr's shape, never int(): the trace keeps the crystal count a dynamic size
        graph = SimpleNamespace(z=z, edge_index=edge_index, distance=distance, batch=batch, ptr=ptr,
                                num_graphs=ptr.shape[0] - 1)
        out = self.net(graph)
        return out.exp() if self.transform is None else self.transform.decode(out, graph)


def example_batch(trained: TrainedModel):
    """Graphs of two small generated crystals (cubic SrTiO3 and a strained double cell) to trace with."""
    from pymatgen.core import Lattice, Structure

    from cgcnn_lab.data.dataset import build_dataset
    from cgcnn_lab.data.sources import from_structures

    cubic = Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                      [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    double = cubic.copy()
    double.make_supercell([2, 1, 1])
    double.apply_strain([0.01, -0.01, 0.02])
    dataset = build_dataset(from_structures([cubic, double]), trained.graph_config, trained.encoding,
                            use_cache=False, strict=True)
    return next(iter(dataset.loader(batch_size=2)))


def _traceable(trained: TrainedModel, path: str | Path) -> tuple[Path, Deployed, tuple]:
    """(the file to write, its folder made; the model behind plain tensors; the example inputs to trace with)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = example_batch(trained)
    return path, Deployed(trained).eval(), tuple(getattr(example, name) for name in INPUTS)


def export_torchscript(trained: TrainedModel, path: str | Path) -> Path:
    """Trace the model on :func:`example_batch` and save it with its settings (graph, targets, unit, classes)."""
    path, deployed, inputs = _traceable(trained, path)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are traced as sizes, checked below
        traced = torch.jit.trace(deployed, inputs, check_trace=False)
        if not torch.allclose(traced(*inputs), deployed(*inputs), rtol=1e-5, atol=1e-6):
            raise RuntimeError("the traced model disagrees with the model on its own example")
    traced.save(str(path), _extra_files={SETTINGS: json.dumps(_settings(trained.spec))})
    return path


def _settings(spec) -> dict:
    """What a server needs besides the weights: the inputs, the graph settings and how to read the outputs."""
    return {"format": "cgcnn-lab-deployed", "inputs": list(INPUTS), "graph": spec.graph.to_dict(), "task": spec.task,
            "targets": spec.target_names, "unit": spec.unit or None,
            "classes": spec.class_names if spec.task == "classification" else None}


def export_onnx(trained: TrainedModel, path: str | Path) -> Path:
    """ONNX through ``torch.export`` with the atom, bond and crystal counts dynamic; the settings are the model's
    ``cgcnn_lab`` metadata entry. Needs the ``onnx`` extra."""
    try:
        import onnx
        import onnxscript  # noqa: F401  torch.onnx's exporter needs it
    except ImportError:
        raise ValueError("--format onnx needs onnx and onnxscript: pip install 'cgcnn-lab[onnx]'") from None
    from torch.export import Dim

    path, deployed, inputs = _traceable(trained, path)
    atoms, edges = Dim("atoms", min=2), Dim("edges", min=2)
    shapes = ({0: atoms}, {1: edges}, {0: edges}, {0: atoms}, {0: Dim("crystals_plus_one", min=3)})
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(deployed, inputs, str(path), dynamo=True, dynamic_shapes=shapes, verbose=False)
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"cgcnn_lab": json.dumps(_settings(trained.spec))})
    onnx.save(model, str(path))
    return path


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, dict]:
    """(model, settings) of an exported file; the same two lines work without cgcnn-lab."""
    extra = {SETTINGS: ""}
    model = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return model, json.loads(extra[SETTINGS])


FORMATS = ("safetensors", "torchscript", "onnx", "cgcnn-original")  # cli.EXPORT_FORMATS lists them too (a test checks)


def export(model: str | Path, out: str | Path, format: str = "cgcnn-original", atom_init=None) -> list[str]:
    """Write ``model`` (anything ``load_trained`` takes) to ``out`` as ``format``; returns what to tell the user."""
    from cgcnn_lab.inference import load_trained

    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    _check_out(Path(out), folder=format == "safetensors")
    if format == "safetensors":
        card = package_run(model, out, atom_init=atom_init)
        return [(f"wrote {out}/ (model.safetensors {card['size_bytes'] / 1024:.0f} KiB, card.json): predict with "
                f"cgcnn-lab predict {out} DATA; it loads without unpickling anything")]
    trained = load_trained(model, atom_init=atom_init)
    if format == "torchscript":
        path = export_torchscript(trained, out)
        return [(f"wrote {path} (TorchScript: the network, element encoding and target decoding; needs only torch); "
                "load it with torch.jit.load or cgcnn_lab.deploy.load_torchscript; inputs: z, edge_index, distance, "
                "batch, ptr (cgcnn_lab/deploy.py)")]
    if format == "onnx":
        path = export_onnx(trained, out)
        return [(f"wrote {path} (ONNX: the network, element encoding and target decoding; inputs z, edge_index, "
                "distance, batch, ptr; its metadata entry 'cgcnn_lab' holds the graph settings and unit)")]
    return export_original(trained, Path(out))


def _check_out(out: Path, folder: bool) -> None:
    """Before any work: safetensors writes a folder, the other formats one file."""
    if folder and out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; --format safetensors writes a folder (model.safetensors, card.json)")
    if not folder and (out.is_dir() or str(out).endswith(("/", "\\"))):
        raise ValueError(f"--out {out} is a folder; this format writes one file (e.g. {out.name or 'model'}.pt)")


def export_original(trained: TrainedModel, out: Path) -> list[str]:
    """The original CGCNN format, plus its atom_init.json, and what the original code will do differently."""
    from cgcnn_lab.checkpoint import safe_load
    from cgcnn_lab.original import OriginalFormatError, to_original, write_atom_init

    ckpt = safe_load(trained.path) if trained.path.is_file() else {}  # a packaged model records no epoch
    try:
        exported = to_original(trained.model, trained.spec, epoch=int(ckpt.get("epoch") or 0))
    except OriginalFormatError as err:  # main() prints it as one "error:" line
        raise OriginalFormatError(f"{trained.path}: {err}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(exported, out)
    atom_init = out.with_name(out.name.removesuffix(".pth.tar") + ".atom_init.json")
    write_atom_init(trained.encoding, atom_init)
    lines = [f"wrote {out} (original CGCNN format, {trained.task}) and its element encoding {atom_init}",
             "the original code reads the encoding as atom_init.json in the data folder: copy it there under that name"]
    graph = trained.graph_config
    if (graph.radius, graph.max_neighbors, trained.spec.model.gaussian_step) != (8.0, 12, 0.2):
        lines.append(f"note: graph settings (radius {graph.radius} Å, {graph.max_neighbors} neighbours) are stored "
                     "in args, but the original predict.py always uses 8 Å, 12 neighbours, step 0.2 Å")
    if not graph.pad_to_max:
        lines.append("note: the model was trained without the original's neighbour padding; the original code's "
                     f"numbers differ for atoms with fewer than {graph.max_neighbors} neighbours within {graph.radius} Å")
    return lines


def package_run(model: str | Path, out: str | Path, atom_init: str | Path | None = None, **card) -> dict:
    """A model (a run folder: its best checkpoint) as a packaged model in ``out``. From a run folder the card also
    gets the run's test scores, split sizes and epochs, and the split ships beside the weights; ``card``'s fields
    (description, data, licence, command, ...) are added as given. ``atom_init``: for an original checkpoint."""
    from cgcnn_lab.inference import load_trained
    from cgcnn_lab.packaged import SPLIT, is_packaged, load_packaged, read_split

    trained, out = load_trained(model, atom_init), Path(out)
    if is_packaged(trained.path):  # a zoo or packaged model: its card (data, licence, scores) and split go along
        if (trained.path / SPLIT).is_file():
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(trained.path / SPLIT, out / SPLIT)
        return save_packaged(trained.model.state_dict(), trained.spec, out,
                             {**load_packaged(trained.path)[2], "name": out.name, **card})
    run = trained.path.parent.parent if trained.path.parent.name == "checkpoints" else None
    card = {"name": out.name, **card, "cgcnn_lab_version": __version__}
    rows = []
    if run is not None and (run / "metrics.json").is_file():
        metrics = json.loads((run / "metrics.json").read_text())
        card["test"] = {k.removeprefix("test_"): v for k, v in metrics.items()
                        if k.startswith("test_") and isinstance(v, (int, float))}
        card |= {"best_epoch": metrics.get("best_epoch"), "epochs": metrics.get("epochs_run")}
    rows = read_split(run / "split.csv") if run is not None else []
    if rows:
        card["split_sizes"] = {s: sum(r[1] == s for r in rows) for s in ("train", "val", "test")}
    card = save_packaged(trained.model.state_dict(), trained.spec, out, card)
    if rows:
        write_split(out, rows)
    return card
