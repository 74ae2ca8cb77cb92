"""The options of a training run, each defined once: the command line, ``compare``'s factors and the presets are
generated from these fields (``optionfield.py``). Plain dataclasses: importing this imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from cgcnn_lab.data.graph import GraphConfig
from cgcnn_lab.model.config import ModelConfig
from cgcnn_lab.optionfield import option

_GRAPH = GraphConfig()  # the graph defaults are GraphConfig's
LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")  # Lightning's loggers that --logger offers (training/tracking.py)


@dataclass
class DataOptions:
    """How to read the data and turn it into graphs."""

    source: str = ""  # the positional DATA argument
    targets: list[str] = option(group="data", flag="--target", metavar="COL", factor=False, default_factory=list,
                                help="table column(s) to learn (repeat for several targets); for extxyz files and ASE "
                                     "databases: a per-frame property, e.g. energy")
    id_col: str | None = option(None, group="data", factor=False,
                                help="table column with ids (default: id / material_id / row number); for extxyz "
                                     "files and ASE databases: a per-frame property (default: file name-frame)")
    structure_col: str | None = option(None, group="data", factor=False,
                                       help="table column with CIF text or pymatgen JSON (default: structure / cif)")
    atom_init: str | None = option(None, group="data", factor=False,
                                   help="element encoding: an atom_init.json, cgcnn92, or anion:X (two features: "
                                        "element X or not, e.g. anion:O; the structure with the chemistry reduced "
                                        "to one bit) (default: the data folder's atom_init.json, else cgcnn92)")
    strict: bool = option(False, group="data", factor=False,
                          help="stop at the first bad entry instead of skipping it")
    cache_dir: str | None = option(None, group="data", factor=False,
                                   help="graph cache folder (default: $CGCNN_LAB_CACHE or ~/.cache/cgcnn-lab)")
    use_cache: bool = option(True, group="data", flag="--no-cache", style="negate", factor=False,
                             help="featurise from scratch and do not write the cache")
    jobs: int = option(0, group="data", factor=False, help="featurisation processes (0: all cores for large data)")
    threads: int = option(0, group="data", factor=False,
                          help="CPU threads (0: this training's share of the cores: the cores it may use divided "
                               "by the cgcnn-lab trainings running, checked every epoch)")
    stream: bool | None = option(None, group="data", style="auto", factor=False,
                                 help="read batches from the memory-mapped graph cache instead of loading it (auto: "
                                      "when the graphs would take over a quarter of the free memory)")
    radius: float = option(_GRAPH.radius, weights=True, group="graph", help="neighbour cutoff in Å (default 8)")
    max_neighbors: int = option(_GRAPH.max_neighbors, group="graph", flag="--max-nbr", metavar="M",
                                help="keep the M nearest neighbours per atom (default 12)")
    shell_tol: float | None = option(_GRAPH.shell_tol, group="graph", metavar="Å",
                                     help="also keep every neighbour within this distance of the M-th nearest, so "
                                          "that a shell of equally distant neighbours is never cut in two (e.g. "
                                          "0.01; default: the hard cut at M)")
    gaussian_step: float = option(_GRAPH.gaussian_step, weights=True, group="graph", help="Gaussian grid step in Å (default 0.2)")
    gaussian_width: float | None = option(_GRAPH.gaussian_width, weights=True, group="graph",
                                          help="Gaussian width in Å (default: the step)")
    per_atom: bool = option(False, group="target",
                            help="learn target / number of atoms (for extensive targets such as a cell's total energy)")
    unit: str | None = option(None, group="target", factor=False,
                              help="unit of the target, shown with every error (e.g. eV)")
    element_ref: bool | None = option(None, group="target", style="auto",
                                      help="subtract per-element reference values fitted on the training split (a "
                                           "linear composition baseline, as CHGNet/M3GNet do); auto: on with "
                                           "--per-atom")
    threshold: float | None = option(None, group="target", factor=False,
                                     help="classification from a continuous target: class 1 if target > THRESHOLD")

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

    train_ratio: float | None = option(None, group="split", factor=False,
                                       help="default: all that is not val/test")
    val_ratio: float = option(0.1, group="split", factor=False, help="validation fraction (default 0.1)")
    test_ratio: float = option(0.1, group="split", factor=False, help="test fraction (default 0.1)")
    train_ids: str | None = option(None, group="split", factor=False, help="file with training ids (one per line)")
    val_ids: str | None = option(None, group="split", factor=False, help="file with validation ids")
    test_ids: str | None = option(None, group="split", factor=False, help="file with test ids")
    fold_col: str | None = option(None, group="split", factor=False,
                                  help="table column with fold numbers (e.g. matbench_fold)")
    test_fold: int | None = option(None, group="split", factor=False,
                                   help="fold used as the test set (with --fold-col, or one fold of --folds)")
    folds: int = option(0, group="split", factor=False, metavar="K",
                        help="K-fold cross-validation: K runs (fold0 ... in --out), each fold the test set once, "
                             "stratified for classification; the pooled out-of-fold predictions score every crystal "
                             "once (0: off)")
    report_subset: list[str] = option(group="split", metavar="FORMULA", factor=False, default_factory=list,
                                      help="also score the test crystals whose reduced formula fits a pattern, e.g. "
                                           "ABO3 or A2BO4 (A, B, M, X: any element, each a different one); repeatable")
    epochs: int = option(200, group="training", help="training epochs (default 200)")
    batch_size: int = option(64, group="training", help="crystals per batch (default 64)")
    optimizer: str = option("adamw", group="training", choices=["adam", "adamw", "sgd"], help="optimiser")
    lr: float = option(2e-3, group="training", help="learning rate (default 2e-3)")
    weight_decay: float = option(0.0, group="training", help="weight decay (default 0)")
    momentum: float = option(0.9, group="training", help="SGD momentum")
    scheduler: str = option("cosine", group="training", choices=["none", "cosine", "step", "plateau"],
                            help="learning-rate schedule")
    loss: str = option("mse", group="training", choices=["mse", "l1"], help="regression loss")
    patience: int = option(0, group="training", help="early stopping patience in epochs (0: off)")
    ema: float = option(0.0, group="training", metavar="DECAY",
                        help="validate and predict with an exponential moving average of the weights (e.g. 0.999; "
                             "0: off)")
    members: int = option(1, group="training", metavar="K",
                          help="train K ensemble members in one process, as one network with batched weights (gated "
                               "or no convolution): member k starts as a run with --seed SEED+k would, all see the "
                               "batches of --seed SEED; OUT holds the ensemble (OUT/member0 ...) (default 1)")
    seed: int = option(0, group="training", factor=False, help="split, initialisation and shuffling")
    split_seed: int | None = option(None, group="training", factor=False,
                                    help="seed of the train/validation/test split (default: --seed); fix it to train "
                                         "several seeds on one split, e.g. ensemble members chosen on one validation set")
    out: str = option("runs/cgcnn", group="training", factor=False, help="run folder (default runs/<data name>)")
    resume: bool = option(False, group="training", factor=False,
                          help="continue the run in --out from its last checkpoint")
    init_from: str | None = option(None, group="training", metavar="CHECKPOINT",
                                   help="start from a trained model (a run folder, our .ckpt or an original CGCNN "
                                        ".pth.tar)")
    freeze_convs: bool = option(False, group="training",
                                help="with --init-from: keep the embedding and convolutions fixed, train the rest")
    accelerator: str = option("cpu", group="training", factor=False, help="cpu, gpu, auto (Lightning)")
    precision: str = option("32-true", group="training", factor=False, choices=["32-true", "bf16-mixed", "16-mixed"],
                            help="bf16-mixed / 16-mixed: convolutions in bfloat16 / float16 (GPUs; bf16 also on CPUs "
                                 "with AMX/AVX512-BF16); batch-norm statistics, head and loss in fp32")
    devices: str = option("1", group="training", factor=False,
                          help="devices (processes) per node, e.g. 2; 'auto' for all GPUs")
    strategy: str = option("auto", group="training", factor=False,
                           help="Lightning strategy: ddp (data parallel; torchrun/SLURM compatible), ddp_spawn, auto")
    num_nodes: int = option(1, group="training", factor=False, help="machines for DDP (see README: SLURM)")
    progress: bool = option(True, group="training", flag="--no-progress", style="negate", factor=False,
                            help="no progress bars (e.g. in logs)")
    logger: list[str] = option(group="training", metavar="NAME", factor=False, default_factory=list, choices=LOGGERS,
                               help="track the run (options, every epoch's metrics, test metrics) offline in "
                                    "OUT/logs/NAME: csv, tensorboard, mlflow or wandb; repeat or comma-separate for "
                                    "several (all but csv need the extra of that name: pip install "
                                    "'cgcnn-lab[mlflow]')")
    preset: str | None = None  # the named configuration the options came from (recorded in config.json)
    asked: tuple[str, ...] | None = None  # options given on the command line (for --init-from); None: from Python

    def __post_init__(self) -> None:
        # Python's logger="tensorboard" or "csv,mlflow", the command line's repeated --logger: one list of names
        names = [self.logger] if isinstance(self.logger, str) else list(self.logger or [])
        names = [n.strip().lower() for item in names for n in item.split(",") if n.strip()]
        if unknown := [n for n in names if n not in LOGGERS]:
            raise ValueError(f"--logger {unknown[0]}: choose from {', '.join(LOGGERS)}")
        self.logger = list(dict.fromkeys(names))
        if self.members < 1:
            raise ValueError(f"--members {self.members}: need at least 1")

    @property
    def split_seed_value(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed


def set_options(objects: tuple[DataOptions, ModelConfig, TrainOptions], values: dict) -> tuple:
    """Copies of the three option objects with ``values`` (field name -> value), each set on the object it
    belongs to: what a preset, the Python API's keywords and the command line all come down to."""
    names = [{f.name for f in fields(obj)} for obj in objects]
    if unknown := set(values) - set().union(*names):
        raise ValueError(f"unknown options {sorted(unknown)}; see `cgcnn-lab train --help` (as snake_case names)")
    return tuple(replace(obj, **{k: v for k, v in values.items() if k in own}) for obj, own in zip(objects, names))
