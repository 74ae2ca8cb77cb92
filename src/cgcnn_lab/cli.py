"""The ``cgcnn-lab`` command: train, predict, export, featurize, explain, compare, demo.

Every option is generated from the dataclass field that defines it (``ModelConfig``, ``DataOptions``,
``TrainOptions``; see ``optionfield.py``), so every command that trains takes exactly the same options with the
same defaults and help as Python does. Building the parser imports no torch: ``cgcnn-lab --help`` is instant, and
each command imports what it uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import Field
from pathlib import Path

from cgcnn_lab import __version__
from cgcnn_lab.cpu import set_threads
from cgcnn_lab.model.config import ModelConfig
from cgcnn_lab.optionfield import flag_of, options_of, parse_value, value_type
from cgcnn_lab.training.options import DataOptions, TrainOptions

GROUPS = {"data": "data", "graph": "crystal graph", "target": "target", "model": "model", "split": "split",
          "training": "training"}
TRAINING = (DataOptions, ModelConfig, TrainOptions)


def _converter(f: Field):
    """argparse type of an on/off or auto/on/off option; its name is what argparse shows in an error."""
    def convert(text: str):
        return parse_value(f, text)

    convert.__name__ = "auto/on/off" if f.metadata["style"] == "auto" else "on/off"
    return convert


def _argument(f: Field) -> dict:
    """argparse keywords of one option field."""
    m = f.metadata
    kw = {"dest": f.name, "help": m["help"]}
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if m["style"] == "negate":
        return kw | {"action": "store_false"}
    if m["style"] in ("on-off", "auto"):
        choices = "{auto,on,off}" if m["style"] == "auto" else "{on,off}"
        return kw | {"type": _converter(f), "default": default, "metavar": choices}
    kind = value_type(f)
    if kind == "bool":
        return kw | {"action": "store_true"}
    if kind.startswith("list"):
        return kw | {"action": "append", "default": [], "metavar": m["metavar"]}
    kw |= {"type": {"int": int, "float": float}.get(kind, str), "default": default}
    return kw | {k: m[k] for k in ("choices", "metavar") if m[k]}


def add_options(p: argparse.ArgumentParser, classes, groups) -> None:
    """The option fields of ``classes`` in ``groups``, as argument groups of ``p``."""
    made: dict[str, argparse._ArgumentGroup] = {}
    for cls in classes:
        for f in options_of(cls):
            group = f.metadata["group"]
            if group in groups:
                if group not in made:
                    made[group] = p.add_argument_group(GROUPS[group])
                made[group].add_argument(flag_of(f), **_argument(f))


def options(cls, args, **given):
    """An options object from the parsed arguments (the fields this command has), plus ``given``."""
    return cls(**{**{f.name: getattr(args, f.name) for f in options_of(cls) if hasattr(args, f.name)}, **given})


def training_options(args, default_out: str):
    """(DataOptions, ModelConfig, TrainOptions) of a command that trains, the preset applied under what was given."""
    data = options(DataOptions, args, source=args.data)
    model = options(ModelConfig, args)
    opts = options(TrainOptions, args, asked=args.asked, **({} if "out" in args.asked else {"out": default_out}))
    if args.preset:
        from cgcnn_lab.training.presets import preset

        data, model, opts = preset(args.preset).apply(data, model, opts, keep=args.asked)
    return data, model, opts


def _data_name(args) -> str:
    return Path(args.data.rstrip("/")).name.split(".")[0] or "run"


def cmd_train(args) -> int:
    from cgcnn_lab.training.run import train

    train(*training_options(args, f"runs/{_data_name(args)}"))
    return 0


def _read(args, require_targets: bool = False):
    from cgcnn_lab.data.sources import load_dataset

    return load_dataset(args.data, args.targets, args.id_col, args.structure_col, args.strict,
                        require_targets=require_targets)


def cmd_featurize(args) -> int:
    from cgcnn_lab.data.dataset import build_dataset
    from cgcnn_lab.data.elements import choose_encoding

    data = options(DataOptions, args, source=args.data)
    raw = _read(args)
    encoding = choose_encoding(data.atom_init, raw.atom_init)
    dataset = build_dataset(raw, data.graph, encoding, data.cache_dir, data.use_cache, data.strict, data.jobs,
                            progress=True)
    print(dataset.summary())
    g = dataset.graphs
    shells = f" (+ shells within {data.shell_tol} Å)" if data.shell_tol is not None else ""
    print(f"graph: radius {data.radius} Å, up to {data.max_neighbors} neighbours{shells}, "
          f"{data.graph.n_gaussians} Gaussian bond features; element encoding {encoding.name}")
    if len(g):
        print(f"atoms per crystal {g.n_atoms.min()}-{g.n_atoms.max()} (mean {g.n_atoms.mean():.1f}); "
              f"neighbours per atom {g.degree().min()}-{g.degree().max()}")
    return 0


def cmd_predict(args) -> int:
    from cgcnn_lab.inference import predict_data

    start = time.perf_counter()
    data = options(DataOptions, args, source=args.data)
    set_threads(data.threads)
    pred = predict_data([args.model, *args.ensemble], _read(args), args.atom_init, data.cache_dir, data.use_cache,
                        data.strict, data.jobs, data.stream)
    for line in pred.score_lines():
        print(line)
    for line in pred.warnings():
        print(f"warning: {line}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pred.to_csv(out)
    unit = f" ({pred.unit})" if pred.unit else ""
    print(f"wrote {len(pred)} predictions{unit} to {out} in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_explain(args) -> int:
    from cgcnn_lab.data.dataset import build_dataset
    from cgcnn_lab.explain import plot_contributions, site_contributions
    from cgcnn_lab.inference import load_trained

    data = options(DataOptions, args, source=args.data)
    set_threads(data.threads)
    raw = _read(args)
    trained = load_trained(args.model, atom_init=args.atom_init or raw.atom_init)
    dataset = build_dataset(raw, trained.graph_config, trained.encoding, data.cache_dir, data.use_cache, data.strict,
                            data.jobs)
    frame = site_contributions(trained, dataset)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    spec = trained.spec
    unit = f"log-odds of {spec.class_names[-1]}" if spec.transform is None else spec.learned_unit or "target's unit"
    crystal = args.structure or str(frame["id"].iloc[0])
    plot = plot_contributions(frame, crystal, unit, out.with_name(f"{out.stem}_{crystal}.png"))
    print(f"wrote {len(frame)} site contributions ({unit}) of {frame['id'].nunique()} crystals to {out}; plot {plot}")
    return 0


def cmd_compare(args) -> int:
    from cgcnn_lab.experiments import base_value, compare, full_grid, load_sweep, one_at_a_time, parse_grid

    grid, mode, n_seeds = parse_grid(args.grid), args.mode, args.seeds
    if args.sweep:
        sweep = load_sweep(args.sweep)
        grid = {**sweep["grid"], **grid}
        mode = sweep.get("mode", mode)
        n_seeds = int(sweep.get("seeds", n_seeds))
    if not grid:
        raise ValueError("nothing to compare: give --grid FACTOR=V1,V2 (repeatable) or --sweep FILE")
    data, model, opts = training_options(args, f"runs/compare-{_data_name(args)}")
    if mode == "one-at-a-time":
        variants = one_at_a_time(grid, {k: base_value(k, data, model, opts) for k in grid})
    else:
        variants = full_grid(grid)
    seeds = [opts.seed + k for k in range(n_seeds)]
    compare(data, model, opts, variants, seeds, opts.out, jobs=args.parallel, report_only=args.report_only)
    return 0


def cmd_export(args) -> int:
    """Write a cgcnn-lab model (or an original checkpoint) in the original CGCNN format, plus its atom_init.json."""
    import torch

    from cgcnn_lab.checkpoint import safe_load
    from cgcnn_lab.inference import load_trained
    from cgcnn_lab.original import OriginalFormatError, to_original, write_atom_init

    trained = load_trained(args.model, atom_init=args.atom_init)
    ckpt = safe_load(trained.path)
    try:
        exported = to_original(trained.model, trained.spec, epoch=int(ckpt.get("epoch") or 0))
    except OriginalFormatError as err:  # main() prints it as one "error:" line
        raise OriginalFormatError(f"{trained.path}: {err}") from None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(exported, out)
    atom_init = out.with_name(out.name.removesuffix(".pth.tar") + ".atom_init.json")
    write_atom_init(trained.encoding, atom_init)
    print(f"wrote {out} (original CGCNN format, {trained.task}) and its element encoding {atom_init}")
    print("the original code reads the encoding as atom_init.json in the data folder: copy it there under that name")
    graph = trained.graph_config
    if (graph.radius, graph.max_neighbors, trained.spec.model.gaussian_step) != (8.0, 12, 0.2):
        print(f"note: graph settings (radius {graph.radius} Å, {graph.max_neighbors} neighbours) are stored in args, "
              "but the original predict.py always uses 8 Å, 12 neighbours, step 0.2 Å")
    if not graph.pad_to_max:
        print("note: the model was trained without the original's neighbour padding; the original code's "
              f"numbers differ for atoms with fewer than {graph.max_neighbors} neighbours within {graph.radius} Å")
    return 0


def cmd_demo(args) -> int:
    from cgcnn_lab.data.demo import DEMO_TARGET, DEMO_UNIT, write_demo_dataset
    from cgcnn_lab.data.featurize import default_cache_dir
    from cgcnn_lab.training.run import train

    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    path = cache / "demo" / f"generated-perovskites-n{args.n}-seed{args.data_seed}.csv.gz"
    print("cgcnn-lab demo: this dataset is GENERATED, not DFT. It holds charge-balanced ABX3 perovskite cells with")
    print("random strains and displacements, labelled with their Ewald (Madelung) energy per atom from pymatgen.")
    if not path.exists():
        t = time.perf_counter()
        write_demo_dataset(path, n=args.n, seed=args.data_seed)
        print(f"generated {args.n} structures in {time.perf_counter() - t:.1f} s -> {path}")
    else:
        print(f"using the cached generated dataset {path}")
    data = DataOptions(source=str(path), targets=[DEMO_TARGET], unit=DEMO_UNIT, cache_dir=args.cache_dir)
    opts = TrainOptions(epochs=args.epochs, batch_size=64, seed=args.seed, out=args.out,
                        progress=not args.no_progress)
    if Path(args.out, "checkpoints", "last.ckpt").exists():
        raise SystemExit(f"error: {args.out} already holds a run; remove it or pass --out elsewhere")
    train(data, ModelConfig(), opts)
    return 0


def build_parser() -> argparse.ArgumentParser:
    # no abbreviations: in a script, --epoch 2 silently meaning --epochs 2 today could mean another option tomorrow
    parser = argparse.ArgumentParser(prog="cgcnn-lab", description="Crystal Graph Convolutional Neural Networks.",
                                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"cgcnn-lab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.set_defaults(subparsers=sub.choices)

    def command(name: str, func, help: str, groups=(), data: bool = True, **kw) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, allow_abbrev=False, **kw)
        if name in ("predict", "explain", "export"):
            p.add_argument("model", help="run folder, .ckpt file, or a checkpoint of the original CGCNN code (.pth.tar)")
        if data:
            p.add_argument("data", help="a CGCNN folder (id_prop.csv + ID.cif) or a table (.csv, .csv.gz, .json, "
                                        ".parquet)")
        add_options(p, TRAINING, groups)
        p.set_defaults(func=func)
        return p

    def trains(p: argparse.ArgumentParser) -> None:
        from cgcnn_lab.training.presets import PRESETS

        p.add_argument("--preset", choices=list(PRESETS),
                       help="a named configuration (BENCHMARKS.md); options given explicitly override it")

    trains(command("train", cmd_train, "train a model; writes a run folder with checkpoints, metrics and plots",
                   ("data", "graph", "target", "model", "split", "training")))
    p = command("predict", cmd_predict, "predict with a trained model (a run folder or a checkpoint file)", ("data",))
    p.add_argument("--out", default="predictions.csv", help="CSV to write (default predictions.csv)")
    p.add_argument("--ensemble", nargs="+", default=[], metavar="MODEL",
                   help="more models (e.g. other seeds) whose predictions are averaged with the first's; "
                        "writes their spread as prediction_std")
    p = command("export", cmd_export, "write a model in another format (the original CGCNN's .pth.tar)", data=False)
    p.add_argument("--format", choices=["cgcnn-original"], default="cgcnn-original")
    p.add_argument("--out", required=True, help="file to write, e.g. model_best.pth.tar")
    p.add_argument("--atom-init", help="atom_init.json (only to re-export an original checkpoint)")
    command("featurize", cmd_featurize, "build (or reuse) the graph cache and report what was found", ("data", "graph"))
    p = command("explain", cmd_explain, "per-site contributions of a model trained with --readout atom", ("data",))
    p.add_argument("--out", default="contributions.csv", help="CSV to write (default contributions.csv)")
    p.add_argument("--structure", help="id of the crystal to plot (default: the first)")
    p = command("compare", cmd_compare, "train many variants over several seeds on identical splits; report",
                ("data", "graph", "target", "model", "split", "training"))
    trains(p)
    g = p.add_argument_group("experiment")
    g.add_argument("--grid", action="append", default=[], metavar="FACTOR=V1,V2",
                   help="values of one factor (repeatable), e.g. conv=gated,shared,none or max_nbr=4,8,12")
    g.add_argument("--mode", choices=["grid", "one-at-a-time"], default="grid",
                   help="grid: every combination; one-at-a-time: the base options, then each factor changed alone")
    g.add_argument("--sweep", help="TOML/YAML sweep file: grid, mode, seeds")
    g.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    g.add_argument("--parallel", type=int, default=1, metavar="N", help="variants trained in N processes")
    g.add_argument("--report-only", action="store_true",
                   help="train nothing: summarise the runs that have finished (e.g. of a sweep still running)")
    p = command("demo", cmd_demo, "generate an offline dataset from physics and train on it (about a minute)",
                data=False)
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--n", type=int, default=2000, help="generated structures (default 2000)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--cache-dir")
    p.add_argument("--no-progress", action="store_true")
    return parser


def given_options(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[str, ...]:
    """The destinations of the options written on the command line, as opposed to defaults and a preset's values
    (``train --init-from`` honours or refuses what was asked, and must not mistake a default for a request)."""
    flags = {flag: action.dest for action in parser._actions for flag in action.option_strings}
    given = set()
    for token in argv:
        if token == "--":
            break
        name = token.split("=", 1)[0]
        if name in flags:
            given.add(flags[name])
    return tuple(sorted(given))


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parse_args``, but an unknown option is reported by its command, with the nearest known ones
    (``--epochz``: did you mean --epochs?), instead of the top-level usage."""
    import difflib

    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = args.subparsers[args.command]
        flags = [flag for action in command._actions for flag in action.option_strings]
        word = unknown[0].split("=", 1)[0]
        near = difflib.get_close_matches(word, flags, n=2, cutoff=0.75) if word.startswith("-") else []
        hint = f" (did you mean {' or '.join(near)}?)" if near else f"; see cgcnn-lab {args.command} --help"
        command.error(f"unrecognized argument{'s' if len(unknown) > 1 else ''}: {' '.join(unknown)}{hint}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parse(parser, argv)
        if args.command in ("train", "compare"):
            args.asked = given_options(args.subparsers[args.command], sys.argv[1:] if argv is None else argv)
        return args.func(args)
    except ValueError as err:  # DataError, CheckpointError, UnknownElementError, ...: the user's input, one line
        if os.environ.get("CGCNN_LAB_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; a run can continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
