"""cgcnn-lab: Crystal Graph Convolutional Neural Networks, done properly.

The Python API has the command line's verbs, with the same options (keyword arguments named as the fields of
``DataOptions``, ``ModelConfig`` and ``TrainOptions``)::

    import cgcnn_lab
    result = cgcnn_lab.train("data.csv", targets=["e_form"], unit="eV", preset="matbench", epochs=50, out="runs/m")
    pred = cgcnn_lab.predict("runs/m", structures)      # pymatgen Structures, or a data folder / table
    pred.frame()                                        # id, prediction (and target, prediction_std, ...)
    model = cgcnn_lab.load("runs/m")                    # a run folder, checkpoint or original .pth.tar

Each verb imports what it needs when called: ``import cgcnn_lab`` is free.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("cgcnn-lab")  # pyproject.toml's, the one source
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"
__all__ = ["load", "predict", "train"]


def load(model: str | Path, atom_init: str | Path | None = None):
    """A trained model (``TrainedModel``: the network, its ``spec`` and path) from a run folder, a checkpoint,
    or a checkpoint of the original CGCNN code (which needs its ``atom_init``)."""
    from cgcnn_lab.inference import load_trained

    return load_trained(model, atom_init)


def _raw(data, y=None, **read):
    """A path (CGCNN folder or table) read as ``cgcnn-lab`` reads it, or pymatgen Structures (with targets)."""
    from cgcnn_lab.data.sources import RawDataset, from_structures, load_dataset

    if isinstance(data, RawDataset):
        return data
    if isinstance(data, (str, Path)):
        return load_dataset(str(data), read.get("targets") or [], read.get("id_col"), read.get("structure_col"),
                            read.get("strict", False), require_targets=False)
    return from_structures(list(data), y, target_names=read.get("targets"), strict=True)


def predict(model: str | Path, data, *, ensemble=(), atom_init: str | Path | None = None, **read):
    """``Predictions`` of ``model`` (and the mean of ``ensemble`` models) for ``data``: pymatgen Structures, or a
    CGCNN folder / table path (``targets=[...]``, ``id_col``, ``structure_col`` as on the command line; with
    targets, ``.scores()`` gives the errors). ``np.asarray(predictions)`` is the [S, T] array in the data's unit."""
    from cgcnn_lab.inference import predict_data

    structures = not isinstance(data, (str, Path))
    return predict_data([model, *ensemble], _raw(data, **read), atom_init, cache_dir=read.get("cache_dir"),
                        use_cache=not structures, strict=structures, log=lambda *_: None)


def train(data, y=None, *, preset: str | None = None, log=print, **options):
    """Train one model, as ``cgcnn-lab train``: ``data`` is a path, or pymatgen Structures with targets ``y``;
    ``options`` are any option fields (``epochs=50``, ``conv="shared"``, ``per_atom=True``, ``out="runs/x"``),
    and win over the ``preset``'s values. Returns the ``RunResult`` (``.metrics``, ``.out``)."""
    from cgcnn_lab.model.config import ModelConfig
    from cgcnn_lab.training.options import DataOptions, TrainOptions, set_options
    from cgcnn_lab.training.presets import preset as named
    from cgcnn_lab.training.run import train as run

    path = isinstance(data, (str, Path))
    if path and "out" not in options:  # as the command line: runs/<data name>
        options["out"] = f"runs/{Path(str(data).rstrip('/')).name.split('.')[0] or 'run'}"
    # what is given here counts as asked for: it wins over the preset and is checked against an --init-from model
    data_opts, model, opts = set_options((DataOptions(), ModelConfig(), TrainOptions(asked=tuple(options))), options)
    if preset:
        data_opts, model, opts = named(preset).apply(data_opts, model, opts, keep=options)
    if path:
        data_opts.source = str(data)
    raw = None if path else _raw(data, y, targets=data_opts.targets or None)
    return run(data_opts, model, opts, raw=raw, log=log)
