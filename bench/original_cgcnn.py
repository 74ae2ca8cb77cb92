"""The original CGCNN code's training step, rewritten for timing it next to ours on the same machine and minutes.

The issue quotes the original code's speed on this machine as a fixed number (1,620 crystals/s), but the machine's
speed drifts by 20-30% within an hour (its fp32 matmul peak measured 117-292 GFLOP/s on different days). This module
does what github.com/txie-93/cgcnn does per step — the algorithm, not its text — so that `bench/speed.py --only
original-ab` can time both in alternating epochs:

- data: every crystal already featurised (the original caches ``CIFData.__getitem__``): element features
  [n, 92], Gaussian bond features [n, 12, 41] and neighbour indices [n, 12], each atom padded to 12 neighbours;
  ``collate`` is the original's ``collate_pool``: a Python loop over the batch's crystals, then ``torch.cat``;
- model: each atom's 12 neighbour rows [v_i, v_j, u_ij] through one Linear, batch norm over all N*12 rows, gate,
  sum over the neighbour axis, batch norm, residual softplus; mean pooling by a Python list of per-crystal index
  tensors; softplus, Linear(64, 32), softplus, Linear(32, 1);
- step: targets normalised, MSE, Adam; the MAE of the de-normalised outputs for its running averages.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def padded_features(graphs, table: np.ndarray, max_nbr: int = 12, step: float = 0.2, radius: float = 8.0):
    """Per-crystal tensors as the original's dataset returns them; ``graphs`` built with ``pad_to_max``."""
    centres = torch.arange(0.0, radius + step, step)
    crystals = []
    for i in range(len(graphs)):
        g = graphs.graph(i)
        n = g.n_atoms
        order = np.argsort(g.edge_index[1], kind="stable")  # edges grouped by centre atom, nearest first
        nbr = torch.from_numpy(g.edge_index[0][order]).view(n, max_nbr)
        d = torch.from_numpy(g.distance[order]).float().view(n, max_nbr, 1)
        gauss = torch.exp(-((d - centres) ** 2) / step**2)
        crystals.append((torch.from_numpy(table[g.z]).float(), gauss, nbr))
    return crystals


def collate(crystals, targets):
    """The original's ``collate_pool``: concatenate, offset the neighbour indices, list the atoms of each crystal."""
    atom_fea, nbr_fea, nbr_idx, crystal_atoms = [], [], [], []
    base = 0
    for a, b, c in crystals:
        n = a.shape[0]
        atom_fea.append(a)
        nbr_fea.append(b)
        nbr_idx.append(c + base)
        crystal_atoms.append(torch.arange(n) + base)
        base += n
    return torch.cat(atom_fea), torch.cat(nbr_fea), torch.cat(nbr_idx), crystal_atoms, torch.stack(targets)


class PaddedGatedConv(nn.Module):
    def __init__(self, atom_fea_len: int, nbr_fea_len: int) -> None:
        super().__init__()
        self.fc_full = nn.Linear(2 * atom_fea_len + nbr_fea_len, 2 * atom_fea_len)
        self.bn1 = nn.BatchNorm1d(2 * atom_fea_len)
        self.bn2 = nn.BatchNorm1d(atom_fea_len)

    def forward(self, x: torch.Tensor, nbr_fea: torch.Tensor, nbr_idx: torch.Tensor) -> torch.Tensor:
        n, m = nbr_idx.shape
        rows = torch.cat([x.unsqueeze(1).expand(n, m, x.shape[1]), x[nbr_idx], nbr_fea], dim=2)
        gated = self.bn1(self.fc_full(rows).view(n * m, -1)).view(n, m, -1)
        gate, core = gated.chunk(2, dim=2)
        summed = (torch.sigmoid(gate) * nn.functional.softplus(core)).sum(dim=1)
        return nn.functional.softplus(x + self.bn2(summed))


class OriginalCGCNN(nn.Module):
    def __init__(self, orig_atom_fea_len: int = 92, nbr_fea_len: int = 41, atom_fea_len: int = 64, n_conv: int = 4,
                 h_fea_len: int = 32) -> None:
        super().__init__()
        self.embedding = nn.Linear(orig_atom_fea_len, atom_fea_len)
        self.convs = nn.ModuleList([PaddedGatedConv(atom_fea_len, nbr_fea_len) for _ in range(n_conv)])
        self.conv_to_fc = nn.Linear(atom_fea_len, h_fea_len)
        self.fc_out = nn.Linear(h_fea_len, 1)

    def forward(self, atom_fea, nbr_fea, nbr_idx, crystal_atoms) -> torch.Tensor:
        x = self.embedding(atom_fea)
        for conv in self.convs:
            x = conv(x, nbr_fea, nbr_idx)
        pooled = torch.cat([x[atoms].mean(dim=0, keepdim=True) for atoms in crystal_atoms])
        h = nn.functional.softplus(self.conv_to_fc(nn.functional.softplus(pooled)))
        return self.fc_out(h)


def train_epoch(model, optimizer, crystals, targets, batch_size: int, order: np.ndarray) -> None:
    """One epoch as the original's ``train()``: collate each batch, normalised MSE, Adam, MAE for the log."""
    mean, std = targets.mean(), targets.std()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        atom_fea, nbr_fea, nbr_idx, crystal_atoms, y = collate([crystals[i] for i in idx], [targets[i] for i in idx])
        out = model(atom_fea, nbr_fea, nbr_idx, crystal_atoms)
        loss = nn.functional.mse_loss(out, (y - mean) / std)
        mae = (out.detach() * std + mean - y).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item(), mae.item()  # the running averages read both every step


def featurise(cif_texts, atom_init: dict, radius: float = 8.0, max_nbr: int = 12, step: float = 0.2):
    """The original's per-crystal featurisation (``CIFData.__getitem__``), for timing: pymatgen parses the CIF,
    ``get_all_neighbors`` lists neighbours, a Python sort keeps the 12 nearest (padding with atom 0 at radius + 1),
    and the distances are expanded in Gaussians."""
    from pymatgen.core import Structure

    centres = np.arange(0.0, radius + step, step)
    out = []
    for text in cif_texts:
        crystal = Structure.from_str(text, fmt="cif")
        atom_fea = np.vstack([atom_init[str(site.specie.number)] for site in crystal])
        nbr_idx, nbr_dist = [], []
        for nbrs in crystal.get_all_neighbors(radius, include_index=True):
            nbrs = sorted(nbrs, key=lambda x: x[1])[:max_nbr]
            pad = max_nbr - len(nbrs)
            nbr_idx.append([x[2] for x in nbrs] + [0] * pad)
            nbr_dist.append([x[1] for x in nbrs] + [radius + 1.0] * pad)
        gauss = np.exp(-((np.array(nbr_dist)[..., None] - centres) ** 2) / step**2)
        out.append((torch.Tensor(atom_fea), torch.Tensor(gauss), torch.LongTensor(nbr_idx)))
    return out
