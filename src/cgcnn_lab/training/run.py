"""One training run, end to end: data -> graphs -> split -> targets -> Lightning fit -> test -> run folder.

The run folder holds everything a user needs afterwards::

    config.json            resolved options (rerun with the same numbers)
    split.csv              id,split (train/val/test) of every crystal
    fold0/ ... fold{K-1}/  with --folds K: one such run per fold; the folder's own files pool their test splits
    checkpoints/best.ckpt  best validation epoch (use it to predict); checkpoints/last.ckpt for --resume
    metrics.csv            one row per epoch (train/val loss and MAE or accuracy, learning rate, time)
    test_results.csv       id,target,prediction on the test split, in the target's own unit
    metrics.json           test metrics with their unit
    loss.png, mae.png (or accuracy.png), parity.png (or roc.png)

``train`` reads as the list of its steps; each step is a function below it.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from cgcnn_lab.checkpoint import safe_load
from cgcnn_lab.console import interactive
from cgcnn_lab.cpu import CoreShare, set_threads
from cgcnn_lab.data.batching import STREAM_ABOVE, PackedGraphs, PackedLoader, available_memory
from cgcnn_lab.data.dataset import CrystalDataset, build_dataset
from cgcnn_lab.data.elements import choose_encoding
from cgcnn_lab.data.formula import parse_pattern
from cgcnn_lab.data.sources import DataError, RawDataset
from cgcnn_lab.inference import TrainedModel, load_trained
from cgcnn_lab.model.config import ModelConfig
from cgcnn_lab.spec import ModelSpec
from cgcnn_lab.targets import TargetTransform
from cgcnn_lab.training.callbacks import EpochLines, EpochMetricsCSV, ShareCores, ema_callback, quiet_lightning
from cgcnn_lab.training.crossval import cross_validate
from cgcnn_lab.training.finetune import continue_transform, degree_histogram, fine_tuning_setup, transfer_weights
from cgcnn_lab.training.inputs import RunResult, classes_of, read_data
from cgcnn_lab.training.options import DataOptions, TrainOptions
from cgcnn_lab.training.report import evaluate, summary, write_plots
from cgcnn_lab.training.splits import Split, make_split
from cgcnn_lab.training.tracking import check_loggers, log_config, log_final, make_loggers


def train(
    data: DataOptions, model_cfg: ModelConfig, opts: TrainOptions, raw: RawDataset | None = None, log=print
) -> RunResult:
    """Train one model; write the run folder; return the test metrics.

    ``raw`` replaces ``data.source`` when given (e.g. ``from_structures(...)`` from Python).
    """
    quiet_lightning()
    for pattern in opts.report_subset:  # a typo stops the run now, not after training
        parse_pattern(pattern)
    check_loggers(opts.logger)  # a missing tracking package too
    if opts.folds and opts.test_fold is None:
        return cross_validate(data, model_cfg, opts, raw, log, train_fold=train)
    start, out = time.perf_counter(), Path(opts.out)
    resumed = check_run_folder(out, opts.resume)  # every check happens before the first epoch
    raw_given = raw is not None
    raw = raw if raw_given else read_data(data, opts)
    if not raw.has_targets:
        raise DataError(f"{data.source or raw.name}: no targets to train on")
    pretrained = load_trained(opts.init_from, atom_init=data.atom_init or raw.atom_init) if opts.init_from else None
    graph, model_cfg, encoding = choose_network(data, model_cfg, raw, pretrained, opts.asked, log)
    dataset = featurise(raw, data, graph, encoding, opts.progress, free_text=not raw_given, log=log)
    classes = classes_of(dataset, data, model_cfg.task)
    split = make_split(dataset, raw, opts, strata=classes)
    log(f"split: {split.sizes()} (split seed {opts.split_seed_value}, seed {opts.seed})")
    spec, labels = fit_targets(dataset, split, data, model_cfg, graph, encoding, pretrained, classes, log)
    if resumed is not None:
        check_resumable(out, resumed, spec, opts.members)
    out.mkdir(parents=True, exist_ok=True)
    config = {"data": asdict(data), "model": spec.model.to_dict(), "train": asdict(opts), "split": split.sizes()}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    split.write(out / "split.csv", dataset.ids)
    loggers = make_loggers(opts.logger, out)
    log_config(loggers, config)

    module, packed = build_module(spec, opts, dataset, labels, pretrained, data.stream, log)
    monitor = "val_loss" if spec.task == "classification" else "val_mae"
    trainer = fit(module, packed, split, opts, monitor, data.threads, loggers)
    seconds = time.perf_counter() - start
    if trainer.global_rank != 0:  # data-parallel workers are done; rank 0 evaluates and writes the run folder
        return RunResult(out, {}, dataset, split, seconds)
    info = {"seconds": round(seconds, 2), "epochs_run": int(trainer.current_epoch),
            "n_parameters": module.model.n_parameters()}
    if opts.members > 1:
        info |= write_member_models(out, module, spec, dataset, split, labels, config, log)
    metrics, pred, parts = evaluate(out, dataset, split, monitor, info, opts.report_subset)
    write_plots(out, monitor, pred, metrics["split"])
    log_final(loggers, config, metrics, trainer.global_step)
    log(summary(out, metrics, pred, parts))
    return RunResult(out, metrics, dataset, split, time.perf_counter() - start)


def check_run_folder(out: Path, resume: bool) -> dict | None:
    """A new run needs an unused folder; ``--resume`` one with a last checkpoint, whose hyper-parameters (the spec,
    the member count) are returned (read safely, so a damaged or untrusted file is refused before Lightning
    unpickles it)."""
    last = out / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise DataError(f"{out}: nothing to resume (no checkpoints/last.ckpt)")
    if not resume and last.exists():
        raise DataError(f"{out} already holds a run; use --resume to continue it or choose another --out")
    return safe_load(last).get("hyper_parameters") or {} if resume else None


def choose_network(data: DataOptions, model_cfg: ModelConfig, raw: RawDataset, pretrained: TrainedModel | None,
                   asked, log):
    """(graph settings, architecture, element encoding): the options', or the pretrained model's."""
    if pretrained is None:
        encoding = None if model_cfg.atom_encoding == "learned" else choose_encoding(data.atom_init, raw.atom_init)
        return data.graph, model_cfg, encoding
    graph, model_cfg, changed = fine_tuning_setup(pretrained, data, model_cfg, asked)
    log(f"initialising from {pretrained.path}: its bond features, element encoding and architecture are used"
        + (f"; neighbours as asked: {', '.join(changed)}" if changed else ""))
    return graph, model_cfg, pretrained.encoding


def featurise(raw: RawDataset, data: DataOptions, graph, encoding, progress: bool, free_text: bool, log):
    dataset = build_dataset(raw, graph, encoding, data.cache_dir, data.use_cache, data.strict, data.jobs,
                            progress=progress)
    dataset.stream = data.stream
    if free_text:  # the structures' text is not needed once the graphs exist (200,000 CIFs: ~1 GB of strings)
        for entry in raw.entries:
            entry.content = ""
    log(dataset.summary())
    return dataset


def fit_targets(dataset: CrystalDataset, split: Split, data: DataOptions, model_cfg: ModelConfig, graph, encoding,
                pretrained: TrainedModel | None, labels: np.ndarray | None, log) -> tuple[ModelSpec, np.ndarray]:
    """The saved-model spec of the run (targets' transform fitted on the training split, output count, bond grid,
    degree histogram) and what the network is trained on (targets, or the class ``labels``)."""
    targets, transform = dataset.targets, None
    if model_cfg.task == "classification":
        n_outputs, trained_on = max(int(labels.max()) + 1, model_cfg.n_outputs, 2), labels[:, None].astype(np.float64)
    else:
        n_outputs, trained_on = targets.shape[1], targets
        transform = TargetTransform.fit(
            targets[split.train], *dataset.graphs.atoms(split.train), data.per_atom, data.use_element_ref
        )
        if pretrained is not None:
            transform = continue_transform(pretrained, dataset, split, data, transform, log)
    if model_cfg.task == "regression" and not data.per_atom:
        note_extensive(targets[split.train], dataset.n_atoms[split.train], dataset.target_names, log)
    histogram = degree_histogram(dataset, split.train) if model_cfg.convolution.needs_degree else None
    model_cfg = replace(model_cfg, n_outputs=n_outputs, radius=graph.radius, gaussian_step=graph.gaussian_step,
                        gaussian_width=graph.gaussian_width, degree_histogram=histogram)
    spec = ModelSpec(model_cfg, graph, encoding, transform, list(dataset.target_names),
                     data.unit or "", data.threshold)
    if spec.task == "classification":
        log(class_balance(spec.class_names, labels))
    return spec, trained_on


def class_balance(names: list[str], labels: np.ndarray) -> str:
    counts = np.bincount(labels, minlength=len(names))
    return "classes: " + ", ".join(f"{name}: {n} ({n / len(labels):.0%})" for name, n in zip(names, counts))


def note_extensive(targets: np.ndarray, n_atoms: np.ndarray, names, log) -> None:
    """Say so when a target grows with the cell (a total energy, say): learned per cell, its errors are mostly the
    atom count; ``--per-atom`` learns it per atom and scales back, as the course's total energies need."""
    if len(n_atoms) < 10 or n_atoms.std() == 0:
        return
    for k, name in enumerate(names):
        y = targets[:, k]
        r = np.corrcoef(y, n_atoms)[0, 1] if y.std() > 0 else 0.0
        if abs(r) > 0.8:
            log(f"note: {name} scales with the number of atoms in the cell (correlation {r:+.2f}): a total per "
                "cell? --per-atom learns it per atom and scales back, which is usually far more accurate")


def check_resumable(out: Path, hparams: dict, spec: ModelSpec, members: int) -> None:
    """``--resume`` continues the same network on the same graphs: options that would change either (a forgotten
    ``--max-nbr 8``, another ``--n-conv`` or ``--members``) stop it with the differences named, before config.json
    is rewritten. ``hparams``: the hyper-parameters in the run's last checkpoint."""
    saved, now = hparams.get("spec") or {}, spec.to_dict()
    differences = [f"{part} {key}: {saved[part][key]!r} in the run, {now[part][key]!r} now"
                   for part in ("graph", "model") for key in now[part]
                   if key in saved.get(part, {}) and saved[part][key] != now[part][key]]
    if hparams.get("members", 1) != members:
        differences.append(f"members: {hparams.get('members', 1)} in the run, {members} now")
    if differences:
        raise DataError(f"{out}: --resume needs the options the run was started with; " + "; ".join(differences))


def build_module(spec: ModelSpec, opts: TrainOptions, dataset: CrystalDataset, trained_on: np.ndarray,
                 pretrained: TrainedModel | None, stream: bool | None, log):
    """The Lightning module (seeded, pretrained weights copied) and the packed training graphs."""
    import lightning as L

    from cgcnn_lab.training.module import CGCNNModule

    L.seed_everything(opts.seed, workers=True, verbose=False)
    optim = {k: getattr(opts, k) for k in ("optimizer", "lr", "weight_decay", "momentum", "scheduler", "epochs", "loss")}
    if opts.members > 1:
        module = members_module(spec, optim, opts, pretrained)
    else:
        module = CGCNNModule(spec.to_dict(), optim)
    if pretrained is not None:
        copied = transfer_weights(pretrained.model, module.model, opts.freeze_convs)
        log(f"copied {copied} pretrained tensors" + (" (embedding and convolutions frozen)" if opts.freeze_convs else ""))
    m = spec.model
    learned = "class labels"
    if spec.transform is not None:
        learned = ", ".join(spec.target_names) + (" per atom" if spec.per_atom else "")
        learned += f" ({spec.learned_unit})" if spec.unit else " (no --unit given: errors are shown without one)"
    size = f"{module.model.n_parameters():,} parameters"
    if opts.members > 1:
        size = f"{opts.members} members of {module.model.n_parameters() // opts.members:,} parameters"
    log(f"model: {m.conv} conv x{m.n_conv if m.conv != 'none' else 0}, {size}; learning {learned}")
    packed = PackedGraphs(dataset.graphs, trained_on, collapse=module.model.merges_graphs, stream=stream)
    if packed.stream:
        log(f"streaming batches from the memory-mapped graph cache ({dataset.graphs.nbytes() / 1e9:.2f} GB in memory "
            f"would be over {STREAM_ABOVE:.0%} of the {available_memory() / 1e9:.1f} GB free)"
            if stream is None else "streaming batches from the memory-mapped graph cache (--stream on)")
    if packed.merge:
        log(f"identical atoms and repeated edges merged: {packed.kept[0]:.2f} of the atoms and {packed.kept[1]:.2f} of "
            "the edges left (the same function, less work)")
    return module, packed


def members_module(spec: ModelSpec, optim: dict, opts: TrainOptions, pretrained):
    """The Lightning module of a ``--members`` run, after the checks of what it cannot do (yet)."""
    from cgcnn_lab.model.members import check_stackable
    from cgcnn_lab.training.members import MembersModule

    for bad, what in ((pretrained is not None, "--init-from"),
                      (opts.devices not in ("1", 1) or opts.num_nodes != 1, "several devices or nodes")):
        if bad:
            raise DataError(f"--members {opts.members} does not combine with {what}: train the members as separate "
                            "runs (--seed) and join them with `cgcnn-lab ensemble`")
    try:
        check_stackable(spec.model)
    except ValueError as err:
        raise DataError(str(err)) from None
    return MembersModule(spec.to_dict(), optim, opts.members, opts.seed, opts.patience)


def fit(module, packed: PackedGraphs, split: Split, opts: TrainOptions, monitor: str, threads: int = 0,
        loggers: list | None = None):
    """Lightning's fit with best/last checkpoints, metrics.csv, early stopping and the weight average, on
    ``threads`` CPU threads (0: this training's share of the cores, see ``cpu.py``); ``loggers``: experiment
    tracking (``tracking.py``), which also gets the learning rate of every epoch."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

    out = Path(opts.out)
    ckpt_dir = out / "checkpoints"
    members = opts.members > 1  # each member keeps its own best epoch and patience (training/members.py)
    callbacks = [
        # every epoch (Lightning's save_last only follows the best checkpoint): a killed run loses at most one epoch
        ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, enable_version_counter=False),
        EpochMetricsCSV(out / "metrics.csv"),
    ]
    if members:
        from cgcnn_lab.training.members import KeepBestMembers

        callbacks.insert(0, KeepBestMembers())
    else:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode="min",
                                         enable_version_counter=False))
    if opts.patience > 0 and not members:
        callbacks.append(EarlyStopping(monitor=monitor, mode="min", patience=opts.patience))
    if opts.ema:
        callbacks.append(ema_callback(opts.ema))
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    share = CoreShare()
    if threads:
        set_threads(threads)
    else:
        callbacks.append(ShareCores(share))
    live = opts.progress and interactive()
    if opts.progress and not live:  # a log file: a line every ~10th of the run instead of a redrawn bar
        callbacks.append(EpochLines(every=max(1, opts.epochs // 10)))
    if not opts.resume and (out / "metrics.csv").exists():
        (out / "metrics.csv").unlink()
    trainer = L.Trainer(
        max_epochs=opts.epochs, accelerator=opts.accelerator, devices=_devices(opts.devices), callbacks=callbacks,
        strategy=opts.strategy, num_nodes=opts.num_nodes, precision=opts.precision,
        # bit-reproducible on CPU; CUDA's index_add (the neighbour sums) has no deterministic kernel
        logger=loggers or False, deterministic=opts.accelerator == "cpu", enable_model_summary=False,
        enable_progress_bar=live, num_sanity_val_steps=0, default_root_dir=str(out),
    )
    train_loader = PackedLoader(packed, split.train, opts.batch_size, shuffle=True, seed=opts.seed)
    val_loader = PackedLoader(packed, split.val, max(opts.batch_size, 256))
    # Deterministic mode also fills every new uninitialised tensor (torch.empty) with NaN, to expose code that reads
    # memory it never wrote: ~270 extra fill kernels a step, 7% of a Castelli epoch. Nothing here reads such memory
    # (the killed-and-resumed run is checked bit for bit against an uninterrupted one), so the fill is switched off.
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        with share, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec|isinstance|exists and is not "
                                    "empty|smaller than the logging interval).*")
            trainer.fit(module, train_loader, val_loader, ckpt_path=str(ckpt_dir / "last.ckpt") if opts.resume else None)
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = fill
    return trainer


def write_member_models(out: Path, module, spec: ModelSpec, dataset: CrystalDataset, split: Split,
                        trained_on: np.ndarray, config: dict, log) -> dict:
    """A ``--members`` run's members (OUT/member{k}, each at its best epoch) and OUT/ensemble.json; the facts
    metrics.json keeps about them."""
    from cgcnn_lab.training.members import write_ensemble, write_members

    command = "cgcnn-lab train " + json.dumps({k: v for k, v in config["train"].items() if v not in (None, [], False)})
    trained = write_members(out, module, spec, split.rows(dataset.ids), command)
    record = write_ensemble(out, trained, dataset, split.val, trained_on)
    epochs = [int(e) for e in module.best["epoch"]]
    log(f"{len(trained)} members in {out}/member0 ...: best epochs {epochs}"
        + (f"; spread calibrated on validation (x{record['scale'][0]:.3g})" if "val_mae" in record else ""))
    # the run's model is the ensemble: its validation value is what compare ranks by and --folds averages
    ensemble = {f"best_{k}": record[k] for k in ("val_mae", "val_loss") if k in record}
    if "val_mae_per_atom" in record:  # metrics.csv's val_mae is per atom with --per-atom
        ensemble["best_val_mae"] = record["val_mae_per_atom"]
    return {"members": len(trained), "member_best_epochs": epochs, "best_epoch": None, **ensemble}


def _devices(devices: str):
    return int(devices) if str(devices).isdigit() else devices
