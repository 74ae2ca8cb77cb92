"""PyTorch Geometric's convolutions that use edge features, in the gated layer's residual block: the lab compares
message functions with them. The only module that imports torch_geometric (~4 s to import), and only when one of
these layers is built."""

from __future__ import annotations

import torch
import torch_geometric.nn as pyg
from torch import nn

from cgcnn_lab.model.convs import activation, batch_norm, per_edge


class PyGConv(nn.Module):
    """A PyTorch Geometric convolution that uses edge features, in the same residual block as the gated layer:

        v_i' = g(v_i + BN(conv(v, edges, u)_i))

    so that a comparison measures the message function, not a missing residual or normalisation. PyG layers
    take no edge multiplicities (attention normalises over the real edges), so merged edges are expanded back.
    """

    def __init__(self, atom_dim: int, edge_dim: int, act: str = "softplus", batchnorm: bool = True, *, kind: str,
                 degree_histogram: list[int] | None = None) -> None:
        super().__init__()
        self.conv = _pyg_layer(kind, atom_dim, edge_dim, degree_histogram)
        self.bn = batch_norm(atom_dim, batchnorm)
        self.act = activation(act)

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor, edge_inverse: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None, atom_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if atom_weight is not None:
            raise ValueError("PyG convolutions need every atom: build their batches without merging atoms")
        bonds = per_edge(edge_attr, edge_inverse)
        if edge_weight is not None:
            repeats = edge_weight.long()
            edge_index, bonds = edge_index.repeat_interleave(repeats, dim=1), bonds.repeat_interleave(repeats, dim=0)
        return self.act(x + self.bn(self.conv(x, edge_index, bonds)))


def _pyg_layer(kind: str, a: int, b: int, degree_histogram: list[int] | None) -> nn.Module:

    if kind == "cgconv":  # PyG's own CGCNN layer (no batch norm on the sum, no outer activation)
        return pyg.CGConv(a, dim=b, aggr="add", batch_norm=False)
    if kind == "gatv2":
        return pyg.GATv2Conv(a, a // 4, heads=4, edge_dim=b, add_self_loops=False)
    if kind == "transformer":
        return pyg.TransformerConv(a, a // 4, heads=4, edge_dim=b)
    if kind == "gine":
        return pyg.GINEConv(nn.Sequential(nn.Linear(a, a), nn.Softplus(), nn.Linear(a, a)), edge_dim=b)
    if kind == "pna":
        # PNA's degree scalers need the in-degree histogram: that of the training graphs (ModelConfig)
        if not degree_histogram:
            raise ValueError("pyg-pna needs the in-degree histogram of the training graphs (ModelConfig.degree_histogram)")
        deg = torch.tensor(degree_histogram, dtype=torch.long)
        return pyg.PNAConv(a, a, aggregators=["mean", "min", "max", "std"],
                           scalers=["identity", "amplification", "attenuation"], deg=deg, edge_dim=b, towers=1)
    if kind == "gen":
        return pyg.GENConv(a, a, aggr="softmax", learn_t=True, edge_dim=b)
    raise ValueError(f"unknown PyG convolution {kind!r}")
