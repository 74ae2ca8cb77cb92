"""The ``cgcnn-lab`` command: train, predict, export, featurize, demo.

Option groups are built from the dataclasses they fill (``DataOptions``, ``ModelConfig``, ``TrainOptions``),
so every command that trains takes exactly the same options.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from cgcnn_lab import __version__


def _add_data_options(p: argparse.ArgumentParser, graph: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("data", help="a CGCNN folder (id_prop.csv + ID.cif) or a table (.csv, .csv.gz, .json, .parquet)")
    g.add_argument("--target", action="append", default=[], metavar="COL",
                   help="table column(s) to learn (repeat for several targets)")
    g.add_argument("--id-col", help="table column with ids (default: id / material_id / row number)")
    g.add_argument("--structure-col", help="table column with CIF text or pymatgen JSON (default: structure / cif)")
    g.add_argument("--atom-init", help="atom_init.json element encoding (default: the data folder's, else cgcnn92)")
    g.add_argument("--strict", action="store_true", help="stop at the first bad entry instead of skipping it")
    g.add_argument("--cache-dir", help="graph cache folder (default: $CGCNN_LAB_CACHE or ~/.cache/cgcnn-lab)")
    g.add_argument("--no-cache", action="store_true", help="featurise from scratch and do not write the cache")
    g.add_argument("--jobs", type=int, default=0, help="featurisation processes (0: all cores for large data)")
    g.add_argument("--stream", choices=["auto", "on", "off"], default="auto",
                   help="read batches from the memory-mapped graph cache instead of loading it (auto: when the "
                        "graphs would take over a quarter of the free memory)")
    if graph:
        g = p.add_argument_group("crystal graph")
        g.add_argument("--radius", type=float, default=8.0, help="neighbour cutoff in Å (default 8)")
        g.add_argument("--max-nbr", type=int, default=12, dest="max_neighbors",
                       help="keep the M nearest neighbours per atom (default 12)")
        g.add_argument("--shell-tol", type=float, default=None, metavar="Å",
                       help="also keep every neighbour within this distance of the M-th nearest, so that a shell of "
                            "equally distant neighbours is never cut in two (e.g. 0.01; default: the hard cut at M)")
        g.add_argument("--gaussian-step", type=float, default=0.2, help="Gaussian grid step in Å (default 0.2)")
        g.add_argument("--gaussian-width", type=float, default=None, help="Gaussian width in Å (default: the step)")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from cgcnn_lab.model.convs import ACTIVATIONS, CONV_CHOICES
    from cgcnn_lab.model.network import POOLING
    from cgcnn_lab.presets import PRESETS

    p.add_argument("--preset", choices=list(PRESETS),
                   help="a named configuration (BENCHMARKS.md); options given explicitly override it")
    g = p.add_argument_group("target")
    g.add_argument("--task", choices=["regression", "classification"], default="regression")
    g.add_argument("--per-atom", action="store_true",
                   help="learn target / number of atoms (for extensive targets such as a cell's total energy)")
    g.add_argument("--unit", help="unit of the target, shown with every error (e.g. eV)")
    g.add_argument("--element-ref", choices=["auto", "on", "off"], default="auto",
                   help="subtract per-element reference values fitted on the training split (a linear composition "
                        "baseline, as CHGNet/M3GNet do); auto: on with --per-atom")
    g.add_argument("--threshold", type=float,
                   help="classification from a continuous target: class 1 if target > THRESHOLD")

    g = p.add_argument_group("model")
    g.add_argument("--conv", choices=CONV_CHOICES, default="gated",
                   help="gated: CGCNN (paper Eq. 5); shared: one weight matrix (course Eq. 3); none")
    g.add_argument("--n-conv", type=int, default=3, help="convolution layers (default 3)")
    g.add_argument("--atom-fea-len", type=int, default=64, help="atom feature length (default 64)")
    g.add_argument("--h-fea-len", type=int, default=128, help="hidden length after pooling (default 128)")
    g.add_argument("--n-h", type=int, default=1, help="hidden layers after pooling (default 1)")
    g.add_argument("--activation", choices=list(ACTIVATIONS), default="softplus")
    g.add_argument("--batchnorm", choices=["on", "off"], default="on")
    g.add_argument("--dropout", type=float, default=0.0)
    g.add_argument("--pool", choices=list(POOLING), default="mean")
    g.add_argument("--readout", choices=["crystal", "atom"], default="crystal",
                   help="crystal: pool, then the output network (original); atom: output network per atom, then "
                        "pool (per-site contributions, see 'explain')")
    g.add_argument("--atom-encoding", choices=["fixed", "learned"], default="fixed",
                   help="fixed: element feature table (cgcnn92 / atom_init.json); learned: per-element embedding")

    g = p.add_argument_group("split")
    g.add_argument("--train-ratio", type=float, default=None, help="default: all that is not val/test")
    g.add_argument("--val-ratio", type=float, default=0.1)
    g.add_argument("--test-ratio", type=float, default=0.1)
    g.add_argument("--train-ids", help="file with training ids (one per line)")
    g.add_argument("--val-ids", help="file with validation ids")
    g.add_argument("--test-ids", help="file with test ids")
    g.add_argument("--fold-col", help="table column with fold numbers (e.g. matbench_fold)")
    g.add_argument("--test-fold", type=int, help="fold used as the test set (with --fold-col)")

    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=200)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adamw")
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--scheduler", choices=["none", "cosine", "step", "plateau"], default="cosine")
    g.add_argument("--loss", choices=["mse", "l1"], default="mse")
    g.add_argument("--patience", type=int, default=0, help="early stopping patience in epochs (0: off)")
    g.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="validate and predict with an exponential moving average of the weights (e.g. 0.999; 0: off)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--split-seed", type=int, default=None,
                   help="seed of the train/validation/test split (default: --seed); fix it to train several seeds "
                        "on one split, e.g. ensemble members chosen on one validation set")
    g.add_argument("--out", default=None, help="run folder (default runs/<data name>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g.add_argument("--init-from", metavar="CHECKPOINT",
                   help="start from a trained model (a run folder, our .ckpt or an original CGCNN .pth.tar)")
    g.add_argument("--freeze-convs", action="store_true",
                   help="with --init-from: keep the embedding and convolutions fixed, train the rest")
    g.add_argument("--accelerator", default="cpu", help="cpu, gpu, auto (Lightning)")
    g.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"],
                   help="bf16-mixed / 16-mixed: convolutions in bfloat16 / float16 (GPUs; bf16 also on CPUs with "
                        "AMX/AVX512-BF16); batch-norm statistics, head and loss in fp32")
    g.add_argument("--devices", default="1", help="devices (processes) per node, e.g. 2; 'auto' for all GPUs")
    g.add_argument("--strategy", default="auto",
                   help="Lightning strategy: ddp (data parallel; torchrun/SLURM compatible), ddp_spawn, auto")
    g.add_argument("--num-nodes", type=int, default=1, help="machines for DDP (see README: SLURM)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in logs)")


def _data_options(args):
    from cgcnn_lab.train.run import DataOptions

    return DataOptions(
        source=args.data, targets=args.target, id_col=args.id_col, structure_col=args.structure_col,
        unit=getattr(args, "unit", None), per_atom=getattr(args, "per_atom", False),
        threshold=getattr(args, "threshold", None), element_ref=_element_ref(args), atom_init=args.atom_init, strict=args.strict,
        radius=getattr(args, "radius", 8.0), max_neighbors=getattr(args, "max_neighbors", 12),
        gaussian_step=getattr(args, "gaussian_step", 0.2), gaussian_width=getattr(args, "gaussian_width", None),
        shell_tol=getattr(args, "shell_tol", None), cache_dir=args.cache_dir, use_cache=not args.no_cache, jobs=args.jobs,
        stream={"auto": None, "on": True, "off": False}[args.stream],
    )


def _element_ref(args) -> bool | None:
    return {"on": True, "off": False}.get(getattr(args, "element_ref", "auto"))  # auto: None = with --per-atom


def _model_config(args):
    from cgcnn_lab.model.network import ModelConfig

    return ModelConfig(
        conv=args.conv, n_conv=args.n_conv, atom_fea_len=args.atom_fea_len, h_fea_len=args.h_fea_len, n_h=args.n_h,
        activation=args.activation, batchnorm=args.batchnorm == "on", dropout=args.dropout, pool=args.pool,
        atom_encoding=args.atom_encoding, readout=args.readout, task=args.task, n_outputs=2 if args.task == "classification" else 1,
    )


def _train_options(args, default_out: str):
    from cgcnn_lab.train.run import TrainOptions

    return TrainOptions(
        train_ratio=args.train_ratio, val_ratio=args.val_ratio, test_ratio=args.test_ratio,
        train_ids=args.train_ids, val_ids=args.val_ids, test_ids=args.test_ids, fold_col=args.fold_col,
        test_fold=args.test_fold, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
        lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum, scheduler=args.scheduler,
        loss=args.loss, patience=args.patience, ema=args.ema, seed=args.seed, split_seed=args.split_seed, out=args.out or default_out, resume=args.resume,
        init_from=args.init_from, freeze_convs=args.freeze_convs,
        accelerator=args.accelerator, precision=args.precision, devices=args.devices, strategy=args.strategy, num_nodes=args.num_nodes,
        progress=not args.no_progress, preset=getattr(args, "preset", None), asked=getattr(args, "asked", None),
    )


def cmd_train(args) -> int:
    from cgcnn_lab.train.run import train

    name = Path(args.data.rstrip("/")).name.split(".")[0] or "run"
    train(_data_options(args), _model_config(args), _train_options(args, f"runs/{name}"))
    return 0


def cmd_featurize(args) -> int:
    from cgcnn_lab.data.dataset import build_dataset
    from cgcnn_lab.data.sources import load_dataset
    from cgcnn_lab.model.network import ModelConfig
    from cgcnn_lab.train.run import choose_encoding

    data = _data_options(args)
    raw = load_dataset(data.source, data.targets, data.id_col, data.structure_col, data.strict, require_targets=False)
    encoding = choose_encoding(data, raw, ModelConfig())
    dataset = build_dataset(raw, data.graph, encoding, data.cache_dir, data.use_cache, data.strict, data.jobs,
                            progress=True)
    print(dataset.summary())
    g = dataset.graphs
    shells = f" (+ shells within {data.shell_tol} Å)" if data.shell_tol is not None else ""
    print(f"graph: radius {data.radius} Å, up to {data.max_neighbors} neighbours{shells}, "
          f"{data.graph.n_gaussians} Gaussian bond features; element encoding {encoding.name if encoding else 'learned'}")
    if len(g):
        print(f"atoms per crystal {g.n_atoms.min()}-{g.n_atoms.max()} (mean {g.n_atoms.mean():.1f}); "
              f"neighbours per atom {g.degree().min()}-{g.degree().max()}")
    return 0


def cmd_predict(args) -> int:
    import numpy as np
    import pandas as pd

    from cgcnn_lab.data.dataset import build_dataset
    from cgcnn_lab.data.elements import ElementEncoding
    from cgcnn_lab.data.sources import load_dataset
    from cgcnn_lab.predict import load_trained, predict_outputs
    from cgcnn_lab.train.metrics import classification_metrics, regression_metrics

    start = time.perf_counter()
    data = _data_options(args)
    raw = load_dataset(data.source, data.targets, data.id_col, data.structure_col, data.strict, require_targets=False)
    preds = []
    for model in [args.model, *args.ensemble]:
        # an original CGCNN checkpoint takes its element encoding from --atom-init or the data folder, as the original
        trained = load_trained(model, atom_init=args.atom_init or raw.atom_init)
        encoding = ElementEncoding.from_atom_init(args.atom_init) if args.atom_init else trained.encoding
        if args.atom_init and trained.encoding is not None and encoding.n_features != trained.encoding.n_features:
            raise SystemExit(f"error: {args.atom_init} has {encoding.n_features} features; the model expects "
                             f"{trained.encoding.n_features}")
        dataset = build_dataset(raw, trained.graph_config, encoding, data.cache_dir, data.use_cache, data.strict,
                                data.jobs)
        dataset.stream = data.stream
        if not preds:
            first, first_ids = trained, list(dataset.ids)
            print(dataset.summary())
        else:
            _check_ensemble_member(model, trained, first, list(dataset.ids), first_ids)
        preds.append(predict_outputs(trained.model, dataset, trained.transform))
    trained = first
    pred = np.mean(preds, axis=0)  # an ensemble averages predictions (class probabilities for classifiers)
    if len(preds) > 1:
        print(f"ensemble of {len(preds)} models: the mean of their predictions (prediction_std: their spread)")
    frame = pd.DataFrame({"id": dataset.ids})
    unit = trained.spec.get("unit", "target units")
    if trained.task == "classification":
        frame["prediction"] = pred[:, 1] if pred.shape[1] == 2 else pred.argmax(1)
        for k in range(pred.shape[1]):
            frame[f"p{k}"] = pred[:, k]
    else:
        names = trained.spec.get("target_names") or ["target"]
        spread = np.std(preds, axis=0)
        if pred.shape[1] == 1:
            frame["prediction"] = pred[:, 0]
            if len(preds) > 1:
                frame["prediction_std"] = spread[:, 0]
        else:
            for k, n in enumerate(names):
                frame[f"prediction:{n}"] = pred[:, k]
                if len(preds) > 1:
                    frame[f"prediction_std:{n}"] = spread[:, k]
        if trained.transform.per_atom:
            frame["prediction_per_atom"] = pred[:, 0] / dataset.n_atoms
    if dataset.targets is not None:
        y = dataset.targets
        if trained.task == "classification":
            threshold = trained.spec.get("threshold")
            labels = (y[:, 0] > threshold).astype(int) if threshold is not None else y[:, 0].astype(int)
            frame.insert(1, "target", labels)
            if set(np.unique(labels)) <= set(range(pred.shape[1])):
                m = classification_metrics(labels, pred)
                print(f"accuracy {m['accuracy']:.4f}  ROC-AUC {m['auc']:.4f}  F1 {m['f1']:.4f}")
            else:
                print(f"no metrics: the targets are not class labels 0..{pred.shape[1] - 1}")
        else:
            if y.shape[1] == 1:
                frame.insert(1, "target", y[:, 0])
            m = regression_metrics(y, pred)
            print(f"MAE {m['mae']:.4g} {unit}  RMSE {m['rmse']:.4g} {unit}  R² {m['r2']:.4f}")
            if trained.transform.per_atom:
                na = dataset.n_atoms[:, None].astype(np.float64)
                print(f"MAE per atom {regression_metrics(y / na, pred / na)['mae']:.4g} {unit}/atom")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    print(f"wrote {len(frame)} predictions ({unit}) to {out} in {time.perf_counter() - start:.1f} s")
    return 0


def _check_ensemble_member(model, trained, first, ids: list, first_ids: list) -> None:
    """Models averaged together must predict the same thing for the same crystals."""
    for key in ("task", "target_names", "unit"):
        mine = trained.task if key == "task" else trained.spec.get(key)
        theirs = first.task if key == "task" else first.spec.get(key)
        if mine != theirs:
            raise SystemExit(f"error: --ensemble {model}: {key} {mine!r} differs from the first model's {theirs!r}")
    if trained.task == "classification" and trained.spec["model"]["n_outputs"] != first.spec["model"]["n_outputs"]:
        raise SystemExit(f"error: --ensemble {model}: a different number of classes than the first model")
    if trained.transform is not None and trained.transform.per_atom != first.transform.per_atom:
        raise SystemExit(f"error: --ensemble {model}: trained per atom differently from the first model")
    if ids != first_ids:
        raise SystemExit(f"error: --ensemble {model}: its graph settings skip other structures than the first model's")


def cmd_export(args) -> int:
    """Write a cgcnn-lab model (or an original checkpoint) in the original CGCNN format, plus its atom_init.json."""
    import torch

    from cgcnn_lab.original import OriginalFormatError, to_original, write_atom_init
    from cgcnn_lab.predict import load_trained, safe_load

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
    if (graph.radius, graph.max_neighbors, trained.spec["model"]["gaussian_step"]) != (8.0, 12, 0.2):
        print(f"note: graph settings (radius {graph.radius} Å, {graph.max_neighbors} neighbours) are stored in args, "
              "but the original predict.py always uses 8 Å, 12 neighbours, step 0.2 Å")
    if not graph.pad_to_max:
        print("note: the model was trained without the original's neighbour padding; the original code's "
              f"numbers differ for atoms with fewer than {graph.max_neighbors} neighbours within {graph.radius} Å")
    return 0


def cmd_explain(args) -> int:
    from cgcnn_lab.data.dataset import build_dataset
    from cgcnn_lab.data.sources import load_dataset
    from cgcnn_lab.explain import plot_contributions, site_contributions
    from cgcnn_lab.predict import load_trained

    data = _data_options(args)
    raw = load_dataset(data.source, data.targets, data.id_col, data.structure_col, data.strict, require_targets=False)
    trained = load_trained(args.model, atom_init=args.atom_init or raw.atom_init)
    dataset = build_dataset(raw, trained.graph_config, trained.encoding, data.cache_dir, data.use_cache, data.strict,
                            data.jobs)
    frame = site_contributions(trained, dataset)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    unit = trained.spec.get("unit", "target units")
    if trained.transform is None:
        unit = "log-odds"
    elif trained.transform.per_atom:
        unit = f"{unit}/atom"
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
    name = Path(args.data.rstrip("/")).name.split(".")[0] or "data"
    data, model, opts = _data_options(args), _model_config(args), _train_options(args, f"runs/compare-{name}")
    if mode == "one-at-a-time":
        variants = one_at_a_time(grid, {k: base_value(k, data, model, opts) for k in grid})
    else:
        variants = full_grid(grid)
    seeds = [opts.seed + k for k in range(n_seeds)]
    compare(data, model, opts, variants, seeds, opts.out, jobs=args.parallel, report_only=args.report_only)
    return 0


def cmd_demo(args) -> int:
    from cgcnn_lab.data.demo import DEMO_TARGET, DEMO_UNIT, write_demo_dataset
    from cgcnn_lab.data.featurize import default_cache_dir
    from cgcnn_lab.model.network import ModelConfig
    from cgcnn_lab.train.run import DataOptions, TrainOptions, train

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
    parser = argparse.ArgumentParser(prog="cgcnn-lab", description="Crystal Graph Convolutional Neural Networks.")
    parser.add_argument("--version", action="version", version=f"cgcnn-lab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.set_defaults(subparsers=sub.choices)  # for --preset, which sets a subcommand's defaults

    p = sub.add_parser("train", help="train a model; writes a run folder with checkpoints, metrics and plots")
    _add_data_options(p)
    _add_train_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="predict with a trained model (a run folder or a checkpoint file)")
    p.add_argument("model", help="run folder, .ckpt file, or a checkpoint of the original CGCNN code (.pth.tar)")
    _add_data_options(p, graph=False)
    p.add_argument("--out", default="predictions.csv", help="CSV to write (default predictions.csv)")
    p.add_argument("--ensemble", nargs="+", default=[], metavar="MODEL",
                   help="more models (e.g. other seeds) whose predictions are averaged with the first's; "
                        "writes their spread as prediction_std")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="write a model in another format (the original CGCNN's .pth.tar)")
    p.add_argument("model", help="run folder, .ckpt file, or original .pth.tar (with --atom-init)")
    p.add_argument("--format", choices=["cgcnn-original"], default="cgcnn-original")
    p.add_argument("--out", required=True, help="file to write, e.g. model_best.pth.tar")
    p.add_argument("--atom-init", help="atom_init.json (only to re-export an original checkpoint)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("featurize", help="build (or reuse) the graph cache and report what was found")
    _add_data_options(p)
    p.set_defaults(func=cmd_featurize)

    p = sub.add_parser("explain", help="per-site contributions of a model trained with --readout atom")
    p.add_argument("model", help="run folder or .ckpt file")
    _add_data_options(p, graph=False)
    p.add_argument("--out", default="contributions.csv", help="CSV to write (default contributions.csv)")
    p.add_argument("--structure", help="id of the crystal to plot (default: the first)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("compare", help="train many variants over several seeds on identical splits; report")
    _add_data_options(p)
    _add_train_options(p)
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
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="generate an offline dataset from physics and train on it (about a minute)")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--n", type=int, default=2000, help="generated structures (default 2000)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--cache-dir")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def given_options(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[str, ...]:
    """The destinations of the options written on the command line, as opposed to defaults and a preset's values
    (``train --init-from`` honours or refuses what was asked, and must not mistake a default for a request)."""
    flags = {flag: action.dest for action in parser._actions for flag in action.option_strings}
    given = set()
    for token in argv:
        if token == "--":
            break
        if not token.startswith("--"):
            continue
        name = token.split("=", 1)[0]
        matches = [flag for flag in flags if flag == name] or [flag for flag in flags if flag.startswith(name)]
        if len(matches) == 1:  # argparse accepts unambiguous prefixes too
            given.add(flags[matches[0]])
    return tuple(sorted(given))


def main(argv: list[str] | None = None) -> int:
    from cgcnn_lab.data.elements import UnknownElementError
    from cgcnn_lab.data.sources import DataError
    from cgcnn_lab.predict import CheckpointError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "preset", None):  # re-parse with the preset as defaults: explicit options still win
            from cgcnn_lab.presets import preset_defaults

            args.subparsers[args.command].set_defaults(**preset_defaults(args.preset))
            args = parser.parse_args(argv)
        if args.command in ("train", "compare"):
            args.asked = given_options(args.subparsers[args.command], sys.argv[1:] if argv is None else argv)
        return args.func(args)
    except (DataError, CheckpointError, UnknownElementError, ValueError) as err:
        if os.environ.get("CGCNN_LAB_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; a run can continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
