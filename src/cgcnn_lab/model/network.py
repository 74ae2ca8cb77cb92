"""The CGCNN network family: embed atoms, convolve, pool, read out. One class, configured by ``ModelConfig``.

Layer names follow the original code (``embedding``, ``convs``, ``conv_to_fc``, ``fcs``, ``fc_out``) so
published checkpoints map onto it parameter for parameter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn
from torch_geometric.nn import global_add_pool, global_max_pool, global_mean_pool

from cgcnn_lab.model.expansion import GaussianExpansion
from cgcnn_lab.model.convs import CONV_CHOICES, CONVOLUTIONS, activation, per_edge

POOLING = {"mean": global_mean_pool, "max": global_max_pool, "sum": global_add_pool}


def pool(kind: str, x: torch.Tensor, batch: torch.Tensor, n_crystals: int | None, weight: torch.Tensor | None):
    """Pool atom rows into crystals; a row that stands for ``weight`` identical atoms counts that often."""
    if weight is None or kind == "max":
        return POOLING[kind](x, batch, n_crystals)
    weight = weight.to(x.dtype).unsqueeze(1)
    total = global_add_pool(x * weight, batch, n_crystals)
    return total if kind == "sum" else total / global_add_pool(weight, batch, n_crystals)


@dataclass
class ModelConfig:
    """Architecture. Defaults are the original CGCNN's (3 gated convs, 64 atom features, 128 hidden, mean pool)."""

    conv: str = "gated"
    n_conv: int = 3
    atom_fea_len: int = 64
    h_fea_len: int = 128
    n_h: int = 1
    activation: str = "softplus"
    batchnorm: bool = True
    dropout: float = 0.0
    pool: str = "mean"
    atom_encoding: str = "fixed"  # "fixed": element feature table (cgcnn92 / atom_init.json); "learned": embedding
    readout: str = "crystal"  # "crystal": pool, then the MLP (original); "atom": MLP per atom, then pool
    task: str = "regression"  # or "classification"
    n_outputs: int = 1  # targets (regression) or classes (classification)
    radius: float = 8.0  # Gaussian grid of the bond expansion, 0..radius
    gaussian_step: float = 0.2
    gaussian_width: float | None = None

    def __post_init__(self) -> None:
        checks = {
            "conv": (self.conv, CONV_CHOICES),
            "pool": (self.pool, list(POOLING)),
            "task": (self.task, ["regression", "classification"]),
            "atom_encoding": (self.atom_encoding, ["fixed", "learned"]),
            "readout": (self.readout, ["crystal", "atom"]),
        }
        for name, (value, choices) in checks.items():
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose from {', '.join(choices)}")
        activation(self.activation)  # validates the name
        if self.task == "classification" and self.n_outputs < 2:
            self.n_outputs = 2  # at least two classes; training sets the real count from the labels
        if self.n_h < 1 or self.n_conv < 0 or not 0 <= self.dropout < 1:
            raise ValueError("need n_h >= 1, n_conv >= 0 and 0 <= dropout < 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class CGCNN(nn.Module):
    """Crystal Graph Convolutional Neural Network (Xie & Grossman, PRL 120, 145301, 2018).

    Input: a PyG batch with ``z`` (atomic numbers), ``edge_index``, ``distance`` and ``batch``.
    Output: [n_crystals, n_outputs] (log-probabilities for classification).
    """

    def __init__(self, config: ModelConfig, element_table: np.ndarray | torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = c = config
        if c.atom_encoding == "fixed":
            if element_table is None:
                raise ValueError("atom_encoding='fixed' needs an element feature table")
            table = torch.as_tensor(np.asarray(element_table), dtype=torch.float32)
            self.register_buffer("element_table", table)
            self.embedding = nn.Linear(table.shape[1], c.atom_fea_len)
        else:
            self.element_table = None
            self.embedding = nn.Embedding(119, c.atom_fea_len)
        self.expansion = GaussianExpansion(c.radius, c.gaussian_step, c.gaussian_width)
        edge_dim = self.expansion.out_features
        conv_cls = CONVOLUTIONS.get(c.conv)
        n_conv = 0 if c.conv == "none" else c.n_conv
        # layers that update bonds start from a learnt embedding of the distance expansion, at the atoms' width
        self.updates_edges = bool(n_conv) and getattr(conv_cls, "updates_edges", False)
        last = {"update_edges": False} if self.updates_edges else {}  # no layer reads the last bond update
        self.convs = nn.ModuleList(
            conv_cls(c.atom_fea_len, edge_dim, act=c.activation, batchnorm=c.batchnorm, **(last if k == n_conv - 1 else {}))
            for k in range(n_conv)
        )
        if self.updates_edges:
            self.edge_embedding = nn.Sequential(nn.Linear(edge_dim, c.atom_fea_len), activation(c.activation))
        self.act = activation(c.activation)
        self.conv_to_fc = nn.Linear(c.atom_fea_len, c.h_fea_len)
        self.fcs = nn.ModuleList(nn.Linear(c.h_fea_len, c.h_fea_len) for _ in range(c.n_h - 1))
        self.dropout = nn.Dropout(c.dropout)
        self.fc_out = nn.Linear(c.h_fea_len, c.n_outputs)

    def atom_features(self, batch) -> torch.Tensor:
        """Atom features after the convolutions (what pooling sees)."""
        if self.element_table is not None:
            x = self.embedding(self.element_table[batch.z])
        else:
            x = self.embedding(batch.z)
        if not self.convs:
            return x
        distances, inverse = torch.unique(batch.distance, return_inverse=True)  # see convs.py: deduplicated bonds
        edge_attr = self.expansion(distances)
        # merged graphs (data/batching.py): multiplicities of edges and of identical atoms
        weights = {"edge_weight": getattr(batch, "edge_weight", None), "atom_weight": getattr(batch, "atom_weight", None)}
        if self.updates_edges:  # bond states diverge per edge after the first layer: expand the embedding once
            edges = per_edge(self.edge_embedding(edge_attr), inverse)
            for conv in self.convs:
                x, edges = conv(x, batch.edge_index, edges, None, **weights)
            return x
        for conv in self.convs:
            x = conv(x, batch.edge_index, edge_attr, inverse, **weights)
        return x

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Features -> raw outputs (the original applies the activation before conv_to_fc too)."""
        h = self.act(self.conv_to_fc(self.act(h)))
        h = self.dropout(h)
        for fc in self.fcs:
            h = self.act(fc(h))
        return self.fc_out(h)

    def site_outputs(self, batch) -> torch.Tensor:
        """Per-atom raw outputs [N, n_outputs] of an ``readout="atom"`` model: pooling them gives the prediction,
        so each is the site's contribution (the CGCNN paper's interpretability analysis)."""
        if self.config.readout != "atom":
            raise ValueError("per-site contributions need a model trained with readout='atom' (--readout atom)")
        return self.head(self.atom_features(batch))

    def forward(self, batch) -> torch.Tensor:
        n_crystals = int(batch.num_graphs) if hasattr(batch, "num_graphs") else None
        x = self.atom_features(batch)
        atom_weight = getattr(batch, "atom_weight", None)
        # under bf16 autocast (--precision bf16-mixed) the convolutions run in bf16; pooling and the head stay in
        # the weights' precision (fp32), so predictions keep full resolution (bf16 steps are ~0.4% of the value)
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(self.fc_out.weight.dtype)
            if self.config.readout == "atom":  # the head per site, then pooling (see site_outputs)
                out = pool(self.config.pool, self.head(x), batch.batch, n_crystals, atom_weight)
            else:
                out = self.head(pool(self.config.pool, x, batch.batch, n_crystals, atom_weight))
        return torch.log_softmax(out, dim=1) if self.config.task == "classification" else out

    @property
    def merges_graphs(self) -> bool:
        """Whether identical atoms and repeated edges may be merged into weighted rows for this model
        (data/batching.py): the gated, edge-gated and shared layers weight sums, batch norms and pooling by
        multiplicity; PyG layers would expand them again, so they get plain graphs. Dropout on every atom
        (``readout="atom"``) would draw one mask per merged row instead of one per atom: not merged either."""
        atom_dropout = self.config.readout == "atom" and self.config.dropout > 0
        return self.config.conv in ("gated", "shared", "egated", "none") and not atom_dropout

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
