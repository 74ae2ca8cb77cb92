"""What a network is, without building one: ``ModelConfig``, the registered convolutions and their
capabilities, activations and pooling. Imports no torch, so the command line and the saved-model spec can read it
for free; ``network.py`` and ``convs.py`` build the layers.

A new convolution is one class (a ``torch.nn.Module`` with the signature of ``convs.GatedConv``) plus one
``CONVOLUTIONS`` entry that names it and says what it can do.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field, fields

from cgcnn_lab.optionfield import option


@dataclass(frozen=True)
class Convolution:
    """A registered convolution: where its class lives (imported when a model is built) and its capabilities."""

    cls: str  # "module:Class"
    kwargs: dict = field(default_factory=dict)  # fixed keyword arguments of the class (e.g. which PyG layer)
    merges_graphs: bool = False  # weights sums, batch norms and pooling by multiplicity (data/batching.py)
    exportable: bool = False  # the original CGCNN format (`export --format cgcnn-original`) can hold it
    needs_degree: bool = False  # takes the in-degree histogram of the training graphs (PNA's scalers)
    pyg: bool = False  # built from PyTorch Geometric (imported only then)

    def layer_class(self):
        module, name = self.cls.split(":")
        return getattr(importlib.import_module(module), name)


_PYG = "cgcnn_lab.model.pyg:PyGConv"
CONVOLUTIONS: dict[str, Convolution] = {
    "gated": Convolution("cgcnn_lab.model.convs:GatedConv", merges_graphs=True, exportable=True),
    "shared": Convolution("cgcnn_lab.model.convs:SharedConv", merges_graphs=True),
    "egated": Convolution("cgcnn_lab.model.convs:EdgeGatedConv", merges_graphs=True),
    **{f"pyg-{kind}": Convolution(_PYG, {"kind": kind}, pyg=True, needs_degree=kind == "pna")
       for kind in ("cgconv", "gatv2", "transformer", "gine", "pna", "gen")},
}
NO_CONVOLUTION = Convolution("", merges_graphs=True)  # "none": atoms are pooled straight after the embedding
CONV_CHOICES = [*CONVOLUTIONS, "none"]

# activation name -> torch.nn class name (LeakyReLU's default slope is 0.01)
ACTIVATIONS = {"softplus": "Softplus", "relu": "ReLU", "silu": "SiLU", "gelu": "GELU", "tanh": "Tanh",
               "sigmoid": "Sigmoid", "leaky_relu": "LeakyReLU"}
POOLING = ("mean", "max", "sum")
LEGACY_DEGREE_HISTOGRAM = [0] * 12 + [1]  # what spec version 1 used for PNA: every atom at 12 neighbours


@dataclass
class ModelConfig:
    """Architecture. Defaults are the original CGCNN's (3 gated convs, 64 atom features, 128 hidden, mean pool)."""

    conv: str = option("gated", weights=True, group="model", choices=CONV_CHOICES,
                       help="gated: CGCNN (paper Eq. 5); shared: one weight matrix (course Eq. 3); none; egated: "
                            "edge-gated with bond updates; pyg-*: PyTorch Geometric layers")
    n_conv: int = option(3, weights=True, group="model", help="convolution layers (default 3)")
    atom_fea_len: int = option(64, weights=True, group="model", help="atom feature length (default 64)")
    h_fea_len: int = option(128, weights=True, group="model", help="hidden length after pooling (default 128)")
    n_h: int = option(1, weights=True, group="model", help="hidden layers after pooling (default 1)")
    activation: str = option("softplus", weights=True, group="model", choices=list(ACTIVATIONS), help="activation function")
    batchnorm: bool = option(True, weights=True, group="model", style="on-off", help="batch norm in the convolutions (on/off)")
    dropout: float = option(0.0, group="model", help="dropout after pooling (default 0)")
    pool: str = option("mean", weights=True, group="model", choices=list(POOLING), help="pooling of atoms into a crystal")
    atom_encoding: str = option("fixed", weights=True, group="model", choices=["fixed", "learned"],
                                help="fixed: element feature table (cgcnn92 / atom_init.json); learned: per-element "
                                     "embedding")
    readout: str = option("crystal", group="model", choices=["crystal", "atom"],
                          help="crystal: pool, then the output network (original); atom: output network per atom, "
                               "then pool (per-site contributions, see 'explain')")
    stoichiometry: bool = option(False, weights=True, group="model", style="on-off",
                                 help="give the output network the crystal's number of elements and the L^p norms "
                                      "of its element fractions (Magpie), which mean pooling cannot see (on/off)")
    task: str = option("regression", group="target", choices=["regression", "classification"], factor=False,
                       help="regression, or classification (class labels 0, 1, ... or --threshold)")
    n_outputs: int = 1  # targets (regression) or classes (classification); set from the data by training
    radius: float = 8.0  # Gaussian grid of the bond expansion, 0..radius (set from the graph by training)
    gaussian_step: float = 0.2
    gaussian_width: float | None = None
    degree_histogram: list[int] | None = None  # atoms per in-degree of the training graphs (needs_degree layers)

    def __post_init__(self) -> None:
        checks = {
            "conv": (self.conv, CONV_CHOICES),
            "pool": (self.pool, list(POOLING)),
            "task": (self.task, ["regression", "classification"]),
            "atom_encoding": (self.atom_encoding, ["fixed", "learned"]),
            "readout": (self.readout, ["crystal", "atom"]),
            "activation": (self.activation, list(ACTIVATIONS)),
        }
        for name, (value, choices) in checks.items():
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose from {', '.join(choices)}")
        if self.task == "classification" and self.n_outputs < 2:
            self.n_outputs = 2  # at least two classes; training sets the real count from the labels
        if self.n_h < 1 or self.n_conv < 0 or not 0 <= self.dropout < 1:
            raise ValueError("need n_h >= 1, n_conv >= 0 and 0 <= dropout < 1")

    @property
    def convolution(self) -> Convolution:
        """The registry entry of ``conv`` (validated in ``__post_init__``)."""
        return NO_CONVOLUTION if self.conv == "none" else CONVOLUTIONS[self.conv]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
