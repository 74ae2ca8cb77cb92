"""cgcnn-lab: Crystal Graph Convolutional Neural Networks, done properly.

The Python API has the command line's verbs, with the same options (keyword arguments named as the fields of
``DataOptions``, ``ModelConfig`` and ``TrainOptions``)::

    import cgcnn_lab
    result = cgcnn_lab.train("data.csv", targets=["e_form"], unit="eV", preset="matbench", epochs=50, out="runs/m")
    pred = cgcnn_lab.predict("runs/m", structures)      # pymatgen Structures, ASE Atoms, a data folder / table,
                                                        # or structure files (POSCAR, extxyz, ...)
    pred.frame()                                        # id, prediction (and target, prediction_std, ...)
    model = cgcnn_lab.load("runs/m")                    # a run folder, checkpoint or original .pth.tar

Each verb imports what it needs when called: ``import cgcnn_lab`` is free.
"""

from __future__ import annotations

from pathlib import Path

from cgcnn_lab.version import __version__

__all__ = ["__version__", "compare", "demo", "embed", "ensemble", "explain", "export", "featurize", "load", "models",
           "predict", "serve", "train"]


def load(model: str | Path, atom_init: str | Path | None = None):
    """A trained model (``TrainedModel``: the network, its ``spec`` and path) from a run folder, a checkpoint,
    or a checkpoint of the original CGCNN code (which needs its ``atom_init``)."""
    from cgcnn_lab.inference import load_trained

    return load_trained(model, atom_init)


def _is_path(data) -> bool:
    """A path, or a list of paths (structure files): read as ``cgcnn-lab`` reads its DATA argument."""
    return isinstance(data, (str, Path)) or (
        isinstance(data, (list, tuple)) and bool(data) and all(isinstance(d, (str, Path)) for d in data))


def _raw(data, y=None, **read):
    """A path (CGCNN folder, table, structure file) or a list of structure files read as ``cgcnn-lab`` reads them,
    or pymatgen Structures / ASE Atoms (with targets ``y``; ASE frames may carry their own, named by ``targets``)."""
    from cgcnn_lab.data.sources import RawDataset, from_structures, is_atoms, is_structure, load_dataset

    if isinstance(data, RawDataset):
        return data
    if _is_path(data):
        return load_dataset(str(data) if isinstance(data, (str, Path)) else data, read.get("targets") or [],
                            read.get("id_col"), read.get("structure_col"), read.get("strict", False),
                            require_targets=False)
    if is_structure(data) or is_atoms(data):  # one crystal, not an iterable of its sites
        data = [data]
    return from_structures(list(data), y, target_names=read.get("targets"), strict=True)


def predict(model: str | Path, data, *, ensemble=(), atom_init: str | Path | None = None, **read):
    """``Predictions`` of ``model`` (and the mean of ``ensemble`` models) for ``data``: pymatgen Structures, ASE
    Atoms, or a CGCNN folder / table / structure file path or a list of structure files (``targets=[...]``,
    ``id_col``, ``structure_col`` as on the command line; with targets, ``.scores()`` gives the errors).
    ``np.asarray(predictions)`` is the [S, T] array in the data's unit."""
    from cgcnn_lab.inference import predict_data

    structures = not _is_path(data)
    return predict_data([model, *ensemble], _raw(data, **read), atom_init, cache_dir=read.get("cache_dir"),
                        use_cache=not structures, strict=structures, log=lambda *_: None)


def train(data, y=None, *, preset: str | None = None, log=print, **options):
    """Train one model, as ``cgcnn-lab train``: ``data`` is a path, or pymatgen Structures / ASE Atoms with
    targets ``y`` (or, for ASE frames, ``targets=["energy"]``: their own properties);
    ``options`` are any option fields (``epochs=50``, ``conv="shared"``, ``per_atom=True``, ``out="runs/x"``),
    and win over the ``preset``'s values. Returns the ``RunResult`` (``.metrics``, ``.out``)."""
    from cgcnn_lab.training.run import train as run

    path = isinstance(data, (str, Path))
    data_opts, model, opts = _options(data if path else None, "runs/", preset, options)
    raw = None if path else _raw(data, y, targets=data_opts.targets or None)
    return run(data_opts, model, opts, raw=raw, log=log)


def _options(data, out_prefix: str, preset: str | None, options: dict):
    """(DataOptions, ModelConfig, TrainOptions) of a verb that trains, as the command line makes them: ``options``
    count as asked for (they win over the preset and are checked against an --init-from model); a path ``data``
    is the source and names the default run folder (``OUT_PREFIX<data name>``)."""
    from cgcnn_lab.model.config import ModelConfig
    from cgcnn_lab.training.options import DataOptions, TrainOptions, set_options
    from cgcnn_lab.training.presets import preset as named

    if data is not None and "out" not in options:
        options["out"] = f"{out_prefix}{Path(str(data).rstrip('/')).name.split('.')[0] or 'run'}"
    data_opts, model, opts = set_options((DataOptions(), ModelConfig(), TrainOptions(asked=tuple(options))), options)
    if preset:
        data_opts, model, opts = named(preset).apply(data_opts, model, opts, keep=options)
    if data is not None:
        data_opts.source = str(data)
    return data_opts, model, opts


def models() -> list[dict]:
    """The cards of the models shipped with cgcnn-lab (``cgcnn-lab models``); use one by its ``name`` anywhere a
    model is taken."""
    from cgcnn_lab import zoo

    return [zoo.card(name) for name in zoo.names()]


def _dataset(model: str | Path, data, atom_init=None, **read):
    """(model, dataset of ``data`` featurised with the model's graph settings), as ``embed`` and ``explain`` need."""
    from cgcnn_lab.data.dataset import build_dataset
    from cgcnn_lab.inference import load_trained

    raw = _raw(data, **read)
    trained = load_trained(model, atom_init=atom_init or raw.atom_init)
    structures = not _is_path(data)
    return trained, build_dataset(raw, trained.graph_config, trained.encoding, read.get("cache_dir"),
                                  use_cache=not structures, strict=structures)


def embed(model: str | Path, data, *, atoms: bool = False, atom_init: str | Path | None = None, **read):
    """``Embeddings`` (``.ids``, ``.vectors`` [S, F], ``.frame()``, ``.write(path)``) of ``data`` by ``model``,
    as ``cgcnn-lab embed``; ``atoms=True`` adds each atom's vector."""
    from cgcnn_lab.embedding import embed as run

    return run(*_dataset(model, data, atom_init, **read), atoms=atoms)


def explain(model: str | Path, data, *, atom_init: str | Path | None = None, **read):
    """Per-site contributions (a DataFrame: id, site, element, contribution, crystal_value) of a model trained
    with ``readout="atom"``, as ``cgcnn-lab explain``."""
    from cgcnn_lab.contributions import site_contributions

    return site_contributions(*_dataset(model, data, atom_init, **read))


def export(model: str | Path, out: str | Path, *, format: str = "cgcnn-original", atom_init=None) -> Path:
    """Write ``model`` as ``format``: "safetensors" (a packaged folder), "torchscript" or "onnx" (one file that
    predicts from graphs with torch or an ONNX runtime alone) or "cgcnn-original" (the original code's .pth.tar),
    as ``cgcnn-lab export`` (the same default). Returns ``out``."""
    from cgcnn_lab.deploy import export as run

    run(model, out, format, atom_init)
    return Path(out)


def ensemble(members, data, out: str | Path, *, select: bool = False, log=print, **read) -> dict:
    """An ensemble folder of run folders trained on one split, spread calibrated on validation, as ``cgcnn-lab
    ensemble`` (``data``: the data they were trained on). Returns its record (scale, test coverage, ...)."""
    from cgcnn_lab.ensembles import build

    return build(list(members), _raw(data, **read), out, select=select, log=log, cache_dir=read.get("cache_dir"))


def featurize(data, **options):
    """The featurised dataset (``CrystalDataset``: graphs, ids, targets) of ``data`` with the graph options given
    (``radius=8.0``, ``max_neighbors=12``, ...), cached as ``cgcnn-lab featurize`` caches it."""
    from cgcnn_lab.data.dataset import build_dataset
    from cgcnn_lab.data.elements import choose_encoding
    from cgcnn_lab.training.options import DataOptions, set_options

    data_opts, = set_options((DataOptions(),), options)
    raw = _raw(data, targets=data_opts.targets or None)
    return build_dataset(raw, data_opts.graph, choose_encoding(data_opts.atom_init, raw.atom_init),
                         data_opts.cache_dir, data_opts.use_cache and _is_path(data), data_opts.strict, data_opts.jobs)


def compare(data, grid: dict[str, list], *, seeds: int = 3, mode: str = "grid", parallel: int = 1,
            preset: str | None = None, log=print, **options):
    """Train every variant of ``grid`` ({"conv": ["gated", "shared"]}) over ``seeds`` seeds on identical splits
    and report, as ``cgcnn-lab compare``; returns the results table (a DataFrame)."""
    from cgcnn_lab.experiments import compare as run
    from cgcnn_lab.experiments import variants_of

    data_opts, model, opts = _options(data, "runs/compare-", preset, options)
    grid = {k: [str(v) for v in values] for k, values in grid.items()}
    return run(data_opts, model, opts, variants_of(grid, mode, data_opts, model, opts),
               [opts.seed + k for k in range(seeds)], opts.out, jobs=parallel, log=log)


def serve(models=(), *, host: str = "127.0.0.1", port: int = 8000, atom_init=None, zoo: bool = False,
          max_file_mb: float = 2.0, max_request_mb: float = 10.0, max_structures: int = 50, max_atoms: int = 500,
          log_level: str = "info") -> None:
    """Serve ``models`` (none: the zoo; ``zoo=True``: the zoo too) on a local page and JSON API until stopped, as
    ``cgcnn-lab serve`` (the serve extra: FastAPI and uvicorn)."""
    try:
        import uvicorn

        from cgcnn_lab.web.app import LOOPBACK, create_app
    except ImportError as err:
        raise ValueError(f"cgcnn-lab serve needs the serve extra ({err.name} is not installed): "
                         "pip install 'cgcnn-lab[serve]'") from None
    from cgcnn_lab.web.limits import Limits

    limits = Limits(file_bytes=int(max_file_mb * 1e6), request_bytes=int(max_request_mb * 1e6),
                    structures=max_structures, atoms=max_atoms)
    app = create_app(list(models), limits, atom_init=atom_init, with_zoo=True if zoo else None,
                     hosts=LOOPBACK if host in LOOPBACK else None)
    shown = f"[{host}]" if ":" in host else host
    print(f"cgcnn-lab serve: {', '.join(app.state.served)} at http://{shown}:{port}/ (API documentation at /docs); "
          "Ctrl-C stops")
    if host not in LOOPBACK:
        print(f"warning: listening on {host}: anyone who can reach it may use it (there is no login)")
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def demo(*, out: str = "runs/demo", n: int = 2000, epochs: int = 30, seed: int = 0, data_seed: int = 0,
         cache_dir: str | None = None, progress: bool = True, log=print):
    """Generate the offline demo dataset (charge-balanced ABX3 cells labelled with their Ewald energy: physics,
    not DFT) and train on it, as ``cgcnn-lab demo``. Returns the ``RunResult``."""
    import time

    from cgcnn_lab.data.demo import DEMO_TARGET, DEMO_UNIT, write_demo_dataset
    from cgcnn_lab.data.featurize import default_cache_dir

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    path = cache / "demo" / f"generated-perovskites-n{n}-seed{data_seed}.csv.gz"
    log("cgcnn-lab demo: this dataset is GENERATED, not DFT. It holds charge-balanced ABX3 perovskite cells with")
    log("random strains and displacements, labelled with their Ewald (Madelung) energy per atom from pymatgen.")
    if not path.exists():
        start = time.perf_counter()
        write_demo_dataset(path, n=n, seed=data_seed)
        log(f"generated {n} structures in {time.perf_counter() - start:.1f} s -> {path}")
    else:
        log(f"using the cached generated dataset {path}")
    return train(str(path), targets=[DEMO_TARGET], unit=DEMO_UNIT, cache_dir=cache_dir, epochs=epochs, batch_size=64,
                 seed=seed, out=out, progress=progress, log=log)
