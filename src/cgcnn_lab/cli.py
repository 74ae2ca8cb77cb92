"""The ``cgcnn-lab`` command: train, predict, embed, export, models, serve, featurize, explain, compare,
demo.

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
EXPORT_FORMATS = ("safetensors", "torchscript", "onnx", "cgcnn-original")  # deploy.export's; here without importing torch


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
    if len(pred) == 1:  # one structure (a POSCAR, one frame): the answer itself, not only a file holding it
        print(one_prediction(pred))
    return 0


def one_prediction(pred) -> str:
    """``id: value unit`` of the first crystal (``± spread`` for an ensemble, the value per atom for a per-atom
    model), or its most probable class with the probability."""
    from cgcnn_lab.spec import with_unit

    spec, values, name = pred.spec, pred.values[0], str(pred.ids[0])
    if spec.task == "classification":
        k = int(values.argmax())
        return f"{name}: {spec.class_names[k]} (class {k}, probability {values[k]:.3f})"
    spread = [""] * len(values) if pred.spread is None else [f" ± {s:.2g}" for s in pred.spread[0]]
    parts = [with_unit(f"{v:.6g}{s}", spec.unit) for v, s in zip(values, spread)]
    if len(parts) > 1:
        parts = [f"{target} {part}" for target, part in zip(spec.target_names, parts)]
    text = ", ".join(parts)
    if spec.per_atom:
        per_atom = f"{values[0] / pred.n_atoms[0]:.6g}"
        text += f" ({with_unit(per_atom, spec.learned_unit) if spec.unit else per_atom + ' per atom'})"
    return f"{name}: {text}"


def _model_and_data(args):
    """(the model, the data featurised with its graph settings) of a command that takes MODEL DATA."""
    from cgcnn_lab.data.dataset import build_dataset
    from cgcnn_lab.inference import load_trained

    data = options(DataOptions, args, source=args.data)
    set_threads(data.threads)
    raw = _read(args)
    trained = load_trained(args.model, atom_init=args.atom_init or raw.atom_init)
    return trained, build_dataset(raw, trained.graph_config, trained.encoding, data.cache_dir, data.use_cache,
                                  data.strict, data.jobs)


def cmd_explain(args) -> int:
    from cgcnn_lab.contributions import plot_contributions, site_contributions

    trained, dataset = _model_and_data(args)
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
    from cgcnn_lab.experiments import compare, load_sweep, parse_grid, variants_of

    grid, mode, n_seeds = parse_grid(args.grid), args.mode, args.seeds
    if args.sweep:
        sweep = load_sweep(args.sweep)
        grid = {**sweep["grid"], **grid}
        mode = sweep.get("mode", mode)
        n_seeds = int(sweep.get("seeds", n_seeds))
    if not grid:
        raise ValueError("nothing to compare: give --grid FACTOR=V1,V2 (repeatable) or --sweep FILE")
    data, model, opts = training_options(args, f"runs/compare-{_data_name(args)}")
    seeds = [opts.seed + k for k in range(n_seeds)]
    compare(data, model, opts, variants_of(grid, mode, data, model, opts), seeds, opts.out, jobs=args.parallel,
            report_only=args.report_only)
    return 0


def cmd_export(args) -> int:
    """Write a model in another format: packaged (safetensors + card), TorchScript, or the original CGCNN's."""
    from cgcnn_lab.deploy import export

    for line in export(args.model, args.out, args.format, args.atom_init):
        print(line)
    return 0


def cmd_models(args) -> int:
    """The zoo: one line per model, or one model's card."""
    import json

    from cgcnn_lab import zoo

    if args.name:
        print(json.dumps(zoo.card(args.name), indent=2))
        return 0
    rows = [("name", "predicts", "held-out test", "trained on", "size")]
    for name in zoo.names():
        c = zoo.card(name)
        what = f"{', '.join(c['targets'])}{' (' + c['unit'] + ')' if c.get('unit') else ''}"
        if c["task"] == "classification":
            what = f"{c['classes'][-1]} or not"
        test = c.get("test", {})
        score = (f"accuracy {test['accuracy']:.3f}" if c["task"] == "classification" and "accuracy" in test
                 else f"MAE {test['mae']:.4g}" if "mae" in test else "-")
        sizes = c.get("split_sizes", {})
        trained = f"{sizes.get('train', '?')} crystals of {Path(c['data']).name}" if c.get("data") else "-"
        rows.append((name, what, score, trained, f"{c['size_bytes'] / 1024:.0f} KiB"))
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print("\nuse one by name: cgcnn-lab predict NAME DATA; its card (data, licence, scores, command): "
          "cgcnn-lab models NAME")
    return 0


def cmd_serve(args) -> int:
    """A local page and JSON API to try models on structure files (the serve extra: FastAPI and uvicorn)."""
    from cgcnn_lab import serve

    serve(args.models, host=args.host, port=args.port, atom_init=args.atom_init, zoo=args.zoo,
          max_file_mb=args.max_file_mb, max_request_mb=args.max_request_mb, max_structures=args.max_structures,
          max_atoms=args.max_atoms, log_level=args.log_level)
    return 0


def cmd_embed(args) -> int:
    from cgcnn_lab.embedding import FORMATS, embed

    out = Path(args.out)
    if out.suffix.lower() not in FORMATS:  # before any work
        raise ValueError(f"--out {out}: write embeddings as {', '.join(FORMATS)}")
    trained, dataset = _model_and_data(args)
    print(dataset.summary())
    result = embed(trained, dataset, atoms=args.atoms)
    files = result.write(out)
    atoms = f" and {len(result.atom_vectors)} atom vectors" if args.atoms else ""
    print(f"wrote {len(result.ids)} crystal vectors of {result.vectors.shape[1]} features{atoms} to "
          f"{', '.join(map(str, files))}")
    return 0


def cmd_ensemble(args) -> int:
    from cgcnn_lab.ensembles import build

    data = options(DataOptions, args, source=args.data)
    set_threads(data.threads)
    record = build(args.members, _read(args, require_targets=True), args.out, select=args.select,
                   cache_dir=data.cache_dir, use_cache=data.use_cache, strict=data.strict, jobs=data.jobs)
    files = "ensemble.json, test_results.csv, calibration.png" if "n_test" in record else "ensemble.json"
    print(f"wrote {args.out} ({files}): cgcnn-lab predict {args.out} DATA")
    return 0


def cmd_demo(args) -> int:
    from cgcnn_lab import demo

    if Path(args.out, "checkpoints", "last.ckpt").exists():
        raise SystemExit(f"error: {args.out} already holds a run; remove it or pass --out elsewhere")
    demo(out=args.out, n=args.n, epochs=args.epochs, seed=args.seed, data_seed=args.data_seed,
         cache_dir=args.cache_dir, progress=not args.no_progress)
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
        if name in ("predict", "explain", "export", "embed"):
            p.add_argument("model", help="a zoo model's name (cgcnn-lab models), a run folder, a .ckpt file, a "
                                         "packaged model folder, or a checkpoint of the original CGCNN code (.pth.tar)")
        if data:
            several = name == "predict"  # predict MODEL a.cif b.vasp
            p.add_argument("data", nargs="+" if several else None,
                           help="a CGCNN folder (id_prop.csv + ID.cif), a table (.csv, .csv.gz, .json, .parquet), a "
                                "structure file (CIF, POSCAR, extxyz, ASE .db, ...) or a folder of them"
                                + ("; or several structure files" if several else ""))
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
    p = command("export", cmd_export, "write a model in another format (safetensors + card, or the original "
                "CGCNN's .pth.tar)", data=False)
    p.add_argument("--format", choices=EXPORT_FORMATS, default="cgcnn-original",
                   help="safetensors: a folder with model.safetensors and card.json (no pickle; what the zoo ships); "
                        "torchscript: one file that predicts from graphs with only torch installed; onnx: the same "
                        "for an ONNX runtime (the onnx extra); "
                        "cgcnn-original: the original code's .pth.tar (default)")
    p.add_argument("--out", required=True, help="file or folder to write, e.g. model_best.pth.tar or my-model/")
    p.add_argument("--atom-init", help="atom_init.json (only to re-export an original checkpoint)")
    p = command("embed", cmd_embed, "write each crystal's learned vector (and each atom's) for maps and search",
                ("data",))
    p.add_argument("--out", default="embeddings.parquet",
                   help="file to write: .parquet, .csv (per atom beside it as NAME_atoms) or .npz (default "
                        "embeddings.parquet)")
    p.add_argument("--atoms", action="store_true", help="also write every atom's vector")
    p = command("ensemble", cmd_ensemble, "average runs into one model whose spread is calibrated on validation",
                ("data",))
    p.add_argument("--members", nargs="+", required=True, metavar="RUN",
                   help="run folders trained on one split (e.g. --seed 0, 1, 2 with the same --split-seed)")
    p.add_argument("--out", required=True, help="ensemble folder to write; predict with it as with a model")
    p.add_argument("--select", action="store_true",
                   help="choose members by greedy forward selection on the validation MAE (default: all)")
    p = sub.add_parser("models", help="list the models shipped with cgcnn-lab (the zoo), or show one's card",
                       allow_abbrev=False)
    p.add_argument("name", nargs="?", help="a zoo model: print its card")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("serve", help="a local web page and JSON API to try models on structure files (the serve "
                       "extra)", allow_abbrev=False)
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="models to offer: zoo names, run folders, checkpoints, ensembles (default: the whole zoo)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--zoo", action="store_true", help="offer the zoo's models too when MODELs are named")
    p.add_argument("--atom-init", help="atom_init.json of original CGCNN checkpoints among the MODELs")
    p.add_argument("--max-structures", type=int, default=50, help="structures per request (default 50)")
    p.add_argument("--max-atoms", type=int, default=500, help="atoms per structure (default 500)")
    p.add_argument("--max-file-mb", type=float, default=2.0, help="MB per uploaded file (default 2)")
    p.add_argument("--max-request-mb", type=float, default=10.0, help="MB per request (default 10)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="what the server logs (default info: one line per request)")
    p.set_defaults(func=cmd_serve)
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
    except BrokenPipeError:  # cgcnn-lab models | head: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; a run can continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
