"""One training run, end to end: data -> graphs -> split -> Lightning fit -> test -> run folder.

The run folder holds everything a user needs afterwards::

    config.json            resolved options (rerun with the same numbers)
    checkpoints/best.ckpt  best validation epoch (use it to predict); checkpoints/last.ckpt for --resume
    metrics.csv            one row per epoch (train/val loss and MAE or accuracy, learning rate, time)
    test_results.csv       id,target,prediction on the test split, in the target's own unit
    metrics.json           test metrics with their unit
    loss.png, mae.png (or accuracy.png), parity.png (or roc.png)
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cgcnn_lab.data.batching import STREAM_ABOVE, PackedGraphs, PackedLoader, available_memory
from cgcnn_lab.data.dataset import CrystalDataset, build_dataset
from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.data.graph import GraphConfig
from cgcnn_lab.data.sources import DataError, RawDataset, load_dataset
from cgcnn_lab.model.network import ModelConfig
from cgcnn_lab.train import plots
from cgcnn_lab.train.metrics import classification_metrics, regression_metrics
from cgcnn_lab.train.module import SPEC_VERSION, CGCNNModule
from cgcnn_lab.train.splits import Split, fold_split, id_split, ratio_split, read_id_list
from cgcnn_lab.train.targets import TargetTransform


@dataclass
class DataOptions:
    """How to read the data and turn it into graphs."""

    source: str = ""
    targets: list[str] = field(default_factory=list)  # table columns; a CGCNN folder uses id_prop.csv
    id_col: str | None = None
    structure_col: str | None = None
    unit: str | None = None  # e.g. "eV"; shown next to every error
    per_atom: bool = False  # learn target / n_atoms (extensive targets such as a cell's total energy)
    threshold: float | None = None  # classification: label = target > threshold (e.g. band gap > 0: non-metal)
    element_ref: bool | None = None  # per-element reference baseline fitted on the training split; None: with per_atom
    atom_init: str | None = None  # atom_init.json; default: the data folder's, else the built-in cgcnn92
    strict: bool = False
    radius: float = 8.0
    max_neighbors: int = 12
    gaussian_step: float = 0.2
    gaussian_width: float | None = None
    shell_tol: float | None = None  # keep the rest of a neighbour shell split by the M-th neighbour (GraphConfig)
    cache_dir: str | None = None
    use_cache: bool = True
    jobs: int = 0
    stream: bool | None = None  # batches read from the memory-mapped cache; None: when too large for memory

    @property
    def use_element_ref(self) -> bool:
        return self.per_atom if self.element_ref is None else self.element_ref

    @property
    def graph(self) -> GraphConfig:
        return GraphConfig(self.radius, self.max_neighbors, self.gaussian_step, self.gaussian_width,
                           shell_tol=self.shell_tol)


@dataclass
class TrainOptions:
    """Split and optimisation."""

    train_ratio: float | None = None  # None: everything not in val/test
    val_ratio: float = 0.1
    test_ratio: float = 0.1
    train_ids: str | None = None
    val_ids: str | None = None
    test_ids: str | None = None
    fold_col: str | None = None
    test_fold: int | None = None
    epochs: int = 200
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: str = "cosine"
    loss: str = "mse"  # or "l1"
    patience: int = 0  # early stopping after this many epochs without validation improvement; 0: off
    ema: float = 0.0  # decay of an exponential moving average of the weights (e.g. 0.999), used to validate and
    #                   predict; 0: off
    seed: int = 0
    split_seed: int | None = None  # None: same as seed; fixed by the experiment lab so every variant shares splits
    out: str = "runs/cgcnn"
    resume: bool = False
    init_from: str | None = None  # checkpoint (ours or the original CGCNN's) to start from: fine-tuning
    freeze_convs: bool = False  # with init_from: train only the layers after pooling
    accelerator: str = "cpu"
    precision: str = "32-true"  # Lightning precision; "bf16-mixed" runs the convolutions in bfloat16
    devices: str = "1"  # per node; with several, --batch-size is the global batch, split over the processes
    strategy: str = "auto"  # Lightning strategy, e.g. "ddp" (torchrun compatible) or "ddp_spawn"
    num_nodes: int = 1
    progress: bool = True
    preset: str | None = None  # the named configuration the options came from (recorded in config.json)
    asked: tuple[str, ...] | None = None  # options given on the command line (for --init-from); None: from Python

    @property
    def split_seed_value(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed


@dataclass
class RunResult:
    out: Path
    metrics: dict
    dataset: CrystalDataset
    split: Split
    seconds: float


def choose_encoding(data: DataOptions, raw: RawDataset, model: ModelConfig) -> ElementEncoding | None:
    """The element encoding: none for a learned embedding; else --atom-init, the folder's file, or cgcnn92."""
    if model.atom_encoding == "learned":
        return None
    if data.atom_init:
        return ElementEncoding.from_atom_init(data.atom_init)
    if raw.atom_init is not None:
        return ElementEncoding.from_atom_init(raw.atom_init)
    return ElementEncoding.cgcnn92()


ARCHITECTURE = ("conv", "n_conv", "atom_fea_len", "h_fea_len", "n_h", "activation", "batchnorm", "pool", "atom_encoding")
BOND_FEATURES = ("radius", "gaussian_step", "gaussian_width")  # the first Linear of every layer is shaped by them
NEIGHBOR_CHOICE = ("max_neighbors", "shell_tol")  # which neighbours: no weight depends on it


def inherit_architecture(pretrained: dict, requested: ModelConfig) -> ModelConfig:
    """Fine-tuning keeps the pretrained network's shape; the task and head come from the new data."""
    return ModelConfig.from_dict({**requested.to_dict(), **{k: pretrained[k] for k in ARCHITECTURE}})


def non_default_options(data: DataOptions, model_cfg: ModelConfig) -> tuple[str, ...]:
    """The graph and architecture options set to other than their defaults: what counts as asked from Python."""
    data_defaults, model_defaults = DataOptions(), ModelConfig()
    return tuple(
        [n for n in (*NEIGHBOR_CHOICE, *BOND_FEATURES) if getattr(data, n) != getattr(data_defaults, n)]
        + [n for n in ARCHITECTURE if getattr(model_cfg, n) != getattr(model_defaults, n)]
    )


def fine_tuning_setup(
    pretrained, data: DataOptions, model_cfg: ModelConfig, asked: tuple[str, ...] | None
) -> tuple[GraphConfig, ModelConfig, list[str]]:
    """Graph and architecture of a run that starts from ``pretrained``: the checkpoint's, except the neighbour
    choice (M, completed shells), which is honoured when asked for because the weights do not depend on it.
    Asking for other bond features or another architecture is an error rather than silently ignored: the weights
    fit only the checkpoint's. ``asked`` names the options given on the command line (or set by a ``compare``
    variant); from Python (None), a value other than the default counts as asked for. Returns the graph, the model
    config and what was changed."""
    asked = non_default_options(data, model_cfg) if asked is None else asked
    graph, changed = pretrained.graph_config, []
    for name in NEIGHBOR_CHOICE:
        value = getattr(data, name)
        if name in asked and value != getattr(graph, name):
            # completed shells and the original's fake neighbours exclude each other: one replace for both
            graph = replace(graph, **{name: value}, **({"pad_to_max": False} if name == "shell_tol" and value else {}))
            changed.append(f"{name} {value}")
    requested = GraphConfig(data.radius, graph.max_neighbors, data.gaussian_step, data.gaussian_width)
    conflicts = [f"{name} {getattr(graph, name)} (asked: {getattr(data, name)})" for name in BOND_FEATURES
                 if name in asked and getattr(requested, name) != getattr(graph, name)
                 and not (name == "gaussian_width" and requested.width == graph.width)]  # None means the step
    arch = pretrained.spec["model"]
    conflicts += [f"{name} {arch[name]} (asked: {getattr(model_cfg, name)})" for name in ARCHITECTURE
                  if name in asked and getattr(model_cfg, name) != arch[name]]
    if conflicts:
        raise DataError(f"--init-from {pretrained.path}: its weights fit only its own bond features and architecture, "
                        f"and these were asked otherwise: {'; '.join(conflicts)}. Leave those options out to fine-tune it, "
                        "or train from scratch")
    return graph, inherit_architecture(arch, model_cfg), changed


def transfer_weights(source: torch.nn.Module, target: torch.nn.Module, freeze_convs: bool) -> int:
    """Copy every tensor whose name and shape match (the output layer only if the output count matches)."""
    own = target.state_dict()
    matching = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
    target.load_state_dict(matching, strict=False)
    if freeze_convs:
        for name, param in target.named_parameters():
            if name.startswith(("embedding.", "edge_embedding.", "convs.")):
                param.requires_grad_(False)
    return len(matching)


def class_labels(targets: np.ndarray, threshold: float | None, where: str) -> np.ndarray:
    """Integer class labels: thresholded targets, or targets that already are 0..K-1 integers."""
    y = targets[:, 0]
    if threshold is not None:
        return (y > threshold).astype(np.int64)
    if not np.all(np.equal(np.mod(y, 1), 0)) or y.min() < 0:
        raise DataError(f"{where}: classification targets must be class labels 0, 1, ... (or use --threshold X)")
    return y.astype(np.int64)


def _fold_number(where: str, value: object, column: str) -> int:
    try:
        number = float(value)  # type: ignore[arg-type]
        if number.is_integer():
            return int(number)
    except (TypeError, ValueError):
        pass
    raise DataError(f"{where}: fold column '{column}' holds {value!r}, not an integer fold number")


def make_split(dataset: CrystalDataset, raw: RawDataset, opts: TrainOptions) -> Split:
    if opts.fold_col:
        if opts.test_fold is None:
            raise DataError("--fold-col needs --test-fold K")
        by_id = {e.id: (e.where, e.extra[opts.fold_col]) for e in raw.entries}
        folds = np.array([_fold_number(*by_id[str(i)], opts.fold_col) for i in dataset.ids])
        return fold_split(folds, opts.test_fold, opts.val_ratio, opts.split_seed_value)
    if opts.train_ids or opts.val_ids or opts.test_ids:
        if not (opts.train_ids and opts.val_ids):
            raise DataError("explicit splits need at least --train-ids and --val-ids")
        lists = [read_id_list(p) if p else [] for p in (opts.train_ids, opts.val_ids, opts.test_ids)]
        return id_split(list(dataset.ids), *lists)
    return ratio_split(len(dataset), opts.train_ratio, opts.val_ratio, opts.test_ratio, opts.split_seed_value)


def _check_resumable(out: Path, saved: dict, spec: dict) -> None:
    """``--resume`` continues the same network on the same graphs: options that would change either (a forgotten
    ``--max-nbr 8``, another ``--n-conv``) stop it with the differences named, before config.json is rewritten.
    ``saved`` is the spec in the run's last checkpoint."""
    differences = [f"{part} {key}: {saved[part][key]!r} in the run, {spec[part][key]!r} now"
                   for part in ("graph", "model") for key in spec[part]
                   if key in saved.get(part, {}) and saved[part][key] != spec[part][key]]
    if differences:
        raise DataError(f"{out}: --resume needs the options the run was started with; "
                        + "; ".join(differences))


class EpochMetricsCSV:
    """Lightning callback that writes metrics.csv after every epoch (atomically: survives a killed run)."""

    def __new__(cls, path: Path):
        import lightning as L

        class _Writer(L.Callback):
            def __init__(self) -> None:
                self.path = path
                self.start = time.perf_counter()

            def on_train_epoch_end(self, trainer, pl_module) -> None:
                if trainer.sanity_checking or trainer.global_rank != 0:
                    return
                m = {k: float(v) for k, v in trainer.callback_metrics.items()}
                row = {"epoch": trainer.current_epoch + 1}
                for k in ("train_loss", "val_loss", "train_mae", "val_mae", "train_accuracy", "val_accuracy"):
                    if k in m:
                        row[k] = m[k]
                row["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
                row["seconds"] = round(time.perf_counter() - self.start, 3)
                frame = pd.DataFrame([row])
                if self.path.exists():  # a resumed run may repeat the epoch its checkpoint was taken in
                    earlier = pd.read_csv(self.path)
                    frame = pd.concat([earlier[earlier["epoch"] < row["epoch"]], frame])
                tmp = self.path.with_suffix(".tmp")
                frame.to_csv(tmp, index=False)
                os.replace(tmp, self.path)

        return _Writer()


def _ema_callback(decay: float):
    """Lightning's exponential moving average of the weights: validation, checkpoints' ``state_dict`` and therefore
    predictions use the averaged weights; the raw ones travel in the checkpoint for ``--resume``."""
    if not 0.0 < decay < 1.0:
        raise DataError(f"--ema {decay}: the decay must be between 0 and 1, e.g. 0.999")
    try:
        from lightning.pytorch.callbacks import EMAWeightAveraging
    except ImportError:
        raise DataError("--ema needs lightning >= 2.6 (EMAWeightAveraging)") from None
    return EMAWeightAveraging(decay=decay)


def _continue_transform(pretrained, dataset: CrystalDataset, split: Split, data: DataOptions,
                        fitted: TargetTransform, log) -> TargetTransform:
    """Fine-tuning on the pretrained model's own quantity: keep its output scale (see TargetTransform.continue_from)."""
    from cgcnn_lab.predict import predict_outputs

    base = pretrained.transform.with_per_atom(data.per_atom)
    zero_shot = predict_outputs(pretrained.model, dataset, base, subset=split.train)
    kept = TargetTransform.continue_from(
        base, dataset.targets[split.train], zero_shot, *dataset.graphs.atoms(split.train), data.per_atom,
        data.use_element_ref,
    )
    if kept is None:
        log("the targets are not on the pretrained model's scale: its output layer is rescaled to them")
        return fitted
    log("the targets are the pretrained model's quantity: training starts from its predictions"
        + (", with per-element references fitted to its errors on the training split" if kept.element_ref else ""))
    return kept


def quiet_lightning() -> None:
    """Lightning's banners ('GPU available', tips) are noise here; real warnings still show."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _unit(data: DataOptions) -> tuple[str, str]:
    """(unit of the target, unit of what the model learns)."""
    unit = data.unit or "target units"
    return unit, (f"{unit}/atom" if data.per_atom else unit)


def train(
    data: DataOptions, model_cfg: ModelConfig, opts: TrainOptions, raw: RawDataset | None = None, log=print
) -> RunResult:
    """Train one model; write the run folder; return the test metrics.

    ``raw`` replaces ``data.source`` when given (e.g. ``from_structures(...)`` from Python).
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    quiet_lightning()
    start = time.perf_counter()
    out = Path(opts.out)
    ckpt_dir = out / "checkpoints"
    resumed_spec: dict = {}
    if opts.resume:
        if not (ckpt_dir / "last.ckpt").is_file():
            raise DataError(f"{out}: nothing to resume (no checkpoints/last.ckpt)")
        from cgcnn_lab.predict import safe_load

        # refuse a damaged or untrusted checkpoint before Lightning unpickles it; its spec is checked below
        resumed_spec = (safe_load(ckpt_dir / "last.ckpt").get("hyper_parameters") or {}).get("spec") or {}
    if not opts.resume and (ckpt_dir / "last.ckpt").exists():
        raise DataError(f"{out} already holds a run; use --resume to continue it or choose another --out")

    # ---- data: every check happens here, before any epoch is spent
    extra = [opts.fold_col] if opts.fold_col else []
    own_raw = raw is None
    if own_raw:
        raw = load_dataset(data.source, data.targets, data.id_col, data.structure_col, data.strict, extra_cols=extra)
    if not raw.has_targets:
        raise DataError(f"{data.source or raw.name}: no targets to train on")
    pretrained = None
    if opts.init_from:
        from cgcnn_lab.predict import load_trained

        pretrained = load_trained(opts.init_from, atom_init=data.atom_init or raw.atom_init)
        graph, model_cfg, changed = fine_tuning_setup(pretrained, data, model_cfg, opts.asked)
        encoding = pretrained.encoding
        log(f"initialising from {pretrained.path}: its bond features, element encoding and architecture are used"
            + (f"; neighbours as asked: {', '.join(changed)}" if changed else ""))
    else:
        graph, encoding = data.graph, choose_encoding(data, raw, model_cfg)
    dataset = build_dataset(
        raw, graph, encoding, data.cache_dir, data.use_cache, data.strict, data.jobs, progress=opts.progress
    )
    dataset.stream = data.stream
    if own_raw:  # the structures' text is not needed once the graphs exist (200,000 CIFs: ~1 GB of strings)
        for entry in raw.entries:
            entry.content = ""
    log(dataset.summary())
    if len(dataset.target_names) > 1 and model_cfg.task == "classification":
        raise DataError("classification takes exactly one target column")
    split = make_split(dataset, raw, opts)
    log(f"split: {split.sizes()} (split seed {opts.split_seed_value}, seed {opts.seed})")

    targets = dataset.targets
    n_atoms = dataset.n_atoms.astype(np.float64)
    if model_cfg.task == "classification":
        labels = class_labels(targets, data.threshold, str(data.source))
        n_classes = max(int(labels.max()) + 1, model_cfg.n_outputs, 2)
        model_cfg = ModelConfig.from_dict({**model_cfg.to_dict(), "n_outputs": n_classes})
        train_targets = labels[:, None].astype(np.float64)
        transform = None
    else:
        model_cfg = ModelConfig.from_dict({**model_cfg.to_dict(), "n_outputs": targets.shape[1]})
        train_targets = targets
        transform = TargetTransform.fit(
            targets[split.train], *dataset.graphs.atoms(split.train), data.per_atom, data.use_element_ref
        )
        if pretrained is not None and pretrained.transform is not None:
            transform = _continue_transform(pretrained, dataset, split, data, transform, log)
    model_cfg = ModelConfig.from_dict(
        {**model_cfg.to_dict(), "radius": graph.radius, "gaussian_step": graph.gaussian_step,
         "gaussian_width": graph.gaussian_width}
    )
    unit, learned_unit = _unit(data)
    spec = {
        "version": SPEC_VERSION,
        "model": model_cfg.to_dict(),
        "graph": graph.to_dict(),
        "encoding": None if encoding is None else encoding.to_dict(),
        "transform": None if transform is None else transform.to_dict(),
        "target_names": dataset.target_names,
        "unit": unit,
        "threshold": data.threshold,
    }
    optim = {k: getattr(opts, k) for k in ("optimizer", "lr", "weight_decay", "momentum", "scheduler", "epochs", "loss")}
    if opts.resume:
        _check_resumable(out, resumed_spec, spec)

    out.mkdir(parents=True, exist_ok=True)
    config = {"data": asdict(data), "model": model_cfg.to_dict(), "train": asdict(opts), "split": split.sizes()}
    (out / "config.json").write_text(json.dumps(config, indent=2))

    # ---- fit
    L.seed_everything(opts.seed, workers=True, verbose=False)
    module = CGCNNModule(spec, optim)
    if pretrained is not None:
        copied = transfer_weights(pretrained.model, module.model, opts.freeze_convs)
        log(f"copied {copied} pretrained tensors" + (" (embedding and convolutions frozen)" if opts.freeze_convs else ""))
    log(f"model: {model_cfg.conv} conv x{model_cfg.n_conv if model_cfg.conv != 'none' else 0}, "
        f"{module.model.n_parameters():,} parameters; learning {'labels' if transform is None else learned_unit}")
    packed = PackedGraphs(dataset.graphs, train_targets, collapse=module.model.merges_graphs, stream=data.stream)
    if packed.stream:
        log(f"streaming batches from the memory-mapped graph cache ({dataset.graphs.nbytes() / 1e9:.2f} GB in memory "
            f"would be over {STREAM_ABOVE:.0%} of the {available_memory() / 1e9:.1f} GB free)"
            if data.stream is None else "streaming batches from the memory-mapped graph cache (--stream on)")
    if packed.merge:
        log(f"identical atoms and repeated edges merged: {packed.kept[0]:.2f} of the atoms and {packed.kept[1]:.2f} of "
            "the edges left (the same function, less work)")
    train_loader = PackedLoader(packed, split.train, opts.batch_size, shuffle=True, seed=opts.seed)
    val_loader = PackedLoader(packed, split.val, max(opts.batch_size, 256))
    monitor = "val_mae" if transform is not None else "val_loss"
    callbacks = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode="min", enable_version_counter=False),
        # every epoch (Lightning's save_last only follows the best checkpoint): a killed run loses at most one epoch
        ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, enable_version_counter=False),
        EpochMetricsCSV(out / "metrics.csv"),
    ]
    if opts.patience > 0:
        callbacks.append(EarlyStopping(monitor=monitor, mode="min", patience=opts.patience))
    if opts.ema:
        callbacks.append(_ema_callback(opts.ema))
    if not opts.resume and (out / "metrics.csv").exists():
        (out / "metrics.csv").unlink()
    trainer = L.Trainer(
        max_epochs=opts.epochs, accelerator=opts.accelerator, devices=_devices(opts.devices), callbacks=callbacks,
        strategy=opts.strategy, num_nodes=opts.num_nodes, precision=opts.precision,
        # bit-reproducible on CPU; CUDA's index_add (the neighbour sums) has no deterministic kernel
        logger=False, deterministic=opts.accelerator == "cpu", enable_model_summary=False, enable_progress_bar=opts.progress,
        num_sanity_val_steps=0, default_root_dir=str(out),
    )
    # Deterministic mode also fills every new uninitialised tensor (torch.empty) with NaN, to expose code that reads
    # memory it never wrote: ~270 extra fill kernels a step, 7% of a Castelli epoch. Nothing here reads such memory
    # (the killed-and-resumed run is checked bit for bit against an uninterrupted one), so the fill is switched off.
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec|isinstance|exists and is not empty).*")
            trainer.fit(module, train_loader, val_loader, ckpt_path=str(ckpt_dir / "last.ckpt") if opts.resume else None)
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = fill
    train_seconds = time.perf_counter() - start
    if trainer.global_rank != 0:  # data-parallel workers are done; rank 0 evaluates and writes the run folder
        return RunResult(out, {}, dataset, split, train_seconds)

    # ---- test with the best checkpoint, in the target's own unit
    from cgcnn_lab.predict import load_trained, predict_outputs

    best = load_trained(ckpt_dir / "best.ckpt")
    eval_idx = split.test if len(split.test) else split.val
    eval_name = "test" if len(split.test) else "val"
    pred = predict_outputs(best.model, dataset, best.transform, subset=eval_idx)
    ids = dataset.ids[eval_idx]
    metrics: dict = {"split": eval_name, "n_test": len(eval_idx), "unit": unit, "seconds": round(train_seconds, 2),
                     "epochs_run": int(trainer.current_epoch), "best_epoch": _best_epoch(out / "metrics.csv", monitor),
                     f"best_{monitor}": _best_value(out / "metrics.csv", monitor),
                     "n_parameters": module.model.n_parameters()}
    if transform is None:
        y = train_targets[eval_idx, 0].astype(np.int64)
        metrics.update({f"test_{k}": v for k, v in classification_metrics(y, pred).items()})
        frame = pd.DataFrame({"id": ids, "target": y, "prediction": pred[:, 1] if pred.shape[1] == 2 else pred.argmax(1)})
        for k in range(pred.shape[1]):
            frame[f"p{k}"] = pred[:, k]
    else:
        y = targets[eval_idx]
        m = regression_metrics(y, pred)
        metrics.update({f"test_{k}": v for k, v in m.items()})
        if data.per_atom:
            na = n_atoms[eval_idx][:, None]
            m_pa = regression_metrics(y / na, pred / na)
            metrics.update({f"test_{k}_per_atom": v for k, v in m_pa.items()})
            metrics["unit_per_atom"] = learned_unit
        frame = _result_frame(ids, y, pred, dataset.target_names)
    frame.to_csv(out / "test_results.csv", index=False)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _plots(out, monitor, transform, y, pred, data, eval_name, dataset.n_atoms[eval_idx])
    log(summary(out, metrics, transform is None))
    return RunResult(out, metrics, dataset, split, time.perf_counter() - start)


def _devices(devices: str):
    return int(devices) if str(devices).isdigit() else devices


def _best_epoch(path: Path, monitor: str) -> int | None:
    if not path.exists():
        return None
    m = pd.read_csv(path)
    return int(m.loc[m[monitor].idxmin(), "epoch"]) if monitor in m and m[monitor].notna().any() else None


def _best_value(path: Path, monitor: str) -> float | None:
    m = pd.read_csv(path) if path.exists() else pd.DataFrame()
    return float(m[monitor].min()) if monitor in m and m[monitor].notna().any() else None


def _result_frame(ids, y: np.ndarray, pred: np.ndarray, names: list[str]) -> pd.DataFrame:
    if y.shape[1] == 1:
        return pd.DataFrame({"id": ids, "target": y[:, 0], "prediction": pred[:, 0]})
    cols = {"id": ids}
    for k, n in enumerate(names):
        cols[f"target:{n}"] = y[:, k]
        cols[f"prediction:{n}"] = pred[:, k]
    return pd.DataFrame(cols)


def _plots(out: Path, monitor, transform, y, pred, data: DataOptions, eval_name: str, n_atoms: np.ndarray) -> None:
    metrics = pd.read_csv(out / "metrics.csv") if (out / "metrics.csv").exists() else pd.DataFrame()
    unit, learned_unit = _unit(data)
    if len(metrics):
        plots.learning_curve(metrics, "loss", "loss (normalised targets)" if transform else "NLL loss", out / "loss.png", log=True)
        if transform is not None:
            plots.learning_curve(metrics, "mae", f"MAE ({learned_unit})", out / "mae.png")
        else:
            plots.learning_curve(metrics, "accuracy", "accuracy", out / "accuracy.png")
    if transform is None:
        if pred.shape[1] == 2:
            plots.roc_curve(y, pred[:, 1], out / "roc.png", f"{eval_name} split ROC")
    elif data.per_atom:
        na = n_atoms[:, None].astype(float)
        plots.parity(y / na, pred / na, learned_unit, f"{eval_name} split (per atom)", out / "parity.png")
    else:
        plots.parity(y, pred, unit, f"{eval_name} split", out / "parity.png")


def summary(out: Path, metrics: dict, classification: bool) -> str:
    """The one-screen summary printed at the end of a run."""
    lines = ["", f"run folder: {out}"]
    if classification:
        lines.append(f"{metrics['split']} accuracy {metrics['test_accuracy']:.4f}   ROC-AUC {metrics['test_auc']:.4f}   "
                     f"F1 {metrics['test_f1']:.4f}   ({metrics['n_test']} crystals)")
    else:
        u = metrics["unit"]
        lines.append(f"{metrics['split']} MAE {metrics['test_mae']:.4g} {u}   RMSE {metrics['test_rmse']:.4g} {u}   "
                     f"R² {metrics['test_r2']:.4f}   ({metrics['n_test']} crystals)")
        if "test_mae_per_atom" in metrics:
            lines.append(f"{metrics['split']} MAE per atom {metrics['test_mae_per_atom']:.4g} {metrics['unit_per_atom']}")
    lines.append(f"best epoch {metrics['best_epoch']} of {metrics['epochs_run']}, {metrics['seconds']:.1f} s")
    lines.append(f"predict: cgcnn-lab predict {out} DATA --out predictions.csv")
    return "\n".join(lines)

