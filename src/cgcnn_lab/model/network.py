"""The CGCNN network family: embed atoms, convolve, pool, read out. One class, configured by ``ModelConfig``.

Layer names follow the original code (``embedding``, ``convs``, ``conv_to_fc``, ``fcs``, ``fc_out``) so
published checkpoints map onto it parameter for parameter.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cgcnn_lab.model.config import ModelConfig
from cgcnn_lab.model.convs import activation, per_edge
from cgcnn_lab.model.expansion import GaussianExpansion
from cgcnn_lab.model.stoichiometry import N_FEATURES, stoichiometry


def _scatter_sum(x: torch.Tensor, batch: torch.Tensor, n: int) -> torch.Tensor:
    return x.new_zeros((n, x.shape[1])).scatter_add_(0, batch.unsqueeze(1).expand_as(x), x)


def pool(kind: str, x: torch.Tensor, batch: torch.Tensor, n_crystals: int | None, weight: torch.Tensor | None):
    """Pool atom rows into crystals; a row that stands for ``weight`` identical atoms counts that often.

    The same scatter operations as PyTorch Geometric's ``global_*_pool`` (bit for bit), written here so that
    building or running a model never imports torch_geometric (~4 s: most of ``cgcnn-lab predict``'s time)."""
    n = int(batch.max()) + 1 if n_crystals is None else n_crystals
    if kind == "max":
        index = batch.unsqueeze(1).expand_as(x)
        return x.new_zeros((n, x.shape[1])).scatter_reduce_(0, index, x, reduce="amax", include_self=False)
    if weight is None:
        total = _scatter_sum(x, batch, n)
        if kind == "sum":
            return total
        count = x.new_zeros(n).scatter_add_(0, batch, x.new_ones(x.shape[0])).clamp(min=1)
        return total / count.unsqueeze(1)
    weight = weight.to(x.dtype).unsqueeze(1)
    total = _scatter_sum(x * weight, batch, n)
    return total if kind == "sum" else total / _scatter_sum(weight, batch, n).clamp(min=1)


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
        n_conv = 0 if c.conv == "none" else c.n_conv
        conv_cls = c.convolution.layer_class() if n_conv else None
        extra = dict(c.convolution.kwargs, **({"degree_histogram": c.degree_histogram} if c.convolution.needs_degree else {}))
        # layers that update bonds start from a learnt embedding of the distance expansion, at the atoms' width
        self.updates_edges = bool(n_conv) and getattr(conv_cls, "updates_edges", False)
        last = {"update_edges": False} if self.updates_edges else {}  # no layer reads the last bond update
        self.convs = nn.ModuleList(
            conv_cls(c.atom_fea_len, edge_dim, act=c.activation, batchnorm=c.batchnorm, **extra,
                     **(last if k == n_conv - 1 else {}))
            for k in range(n_conv)
        )
        if self.updates_edges:
            self.edge_embedding = nn.Sequential(nn.Linear(edge_dim, c.atom_fea_len), activation(c.activation))
        self.act = activation(c.activation)
        self.conv_to_fc = nn.Linear(c.atom_fea_len + (N_FEATURES if c.stoichiometry else 0), c.h_fea_len)
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

    def head(self, h: torch.Tensor, stoich: torch.Tensor | None = None) -> torch.Tensor:
        """Features (and the stoichiometry, ``--stoichiometry on``) -> raw outputs (the original applies the
        activation before conv_to_fc too)."""
        h = self.act(h)
        h = self.act(self.conv_to_fc(h if stoich is None else torch.cat([h, stoich.to(h.dtype)], dim=1)))
        h = self.dropout(h)
        for fc in self.fcs:
            h = self.act(fc(h))
        return self.fc_out(h)

    def site_outputs(self, batch) -> torch.Tensor:
        """Per-atom raw outputs [N, n_outputs] of an ``readout="atom"`` model: pooling them gives the prediction,
        so each is the site's contribution (the CGCNN paper's interpretability analysis)."""
        if self.config.readout != "atom":
            raise ValueError("per-site contributions need a model trained with readout='atom' (--readout atom)")
        stoich = self._stoichiometry(batch, batch.num_graphs)
        return self.head(self.atom_features(batch), None if stoich is None else stoich[batch.batch])

    def _stoichiometry(self, batch, n_crystals) -> torch.Tensor | None:
        if not self.config.stoichiometry:
            return None
        n = int(batch.batch.max()) + 1 if n_crystals is None else n_crystals
        return stoichiometry(batch.z, batch.batch, n, getattr(batch, "atom_weight", None))

    def forward(self, batch) -> torch.Tensor:
        n_crystals = batch.num_graphs if hasattr(batch, "num_graphs") else None  # no int(): export keeps it symbolic
        x = self.atom_features(batch)
        atom_weight = getattr(batch, "atom_weight", None)
        # under bf16 autocast (--precision bf16-mixed) the convolutions run in bf16; pooling and the head stay in
        # the weights' precision (fp32), so predictions keep full resolution (bf16 steps are ~0.4% of the value)
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(self.fc_out.weight.dtype)
            stoich = self._stoichiometry(batch, n_crystals)
            if self.config.readout == "atom":  # the head per site, then pooling (see site_outputs)
                site_stoich = None if stoich is None else stoich[batch.batch]
                out = pool(self.config.pool, self.head(x, site_stoich), batch.batch, n_crystals, atom_weight)
            else:
                out = self.head(pool(self.config.pool, x, batch.batch, n_crystals, atom_weight), stoich)
        return torch.log_softmax(out, dim=1) if self.config.task == "classification" else out

    @property
    def merges_graphs(self) -> bool:
        """Whether identical atoms and repeated edges may be merged into weighted rows for this model
        (data/batching.py): when its convolution says it weights sums, batch norms and pooling by multiplicity
        (``Convolution.merges_graphs``). Dropout on every atom (``readout="atom"``) would draw one mask per merged
        row instead of one per atom: not merged either."""
        atom_dropout = self.config.readout == "atom" and self.config.dropout > 0
        return self.config.convolution.merges_graphs and not atom_dropout

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
