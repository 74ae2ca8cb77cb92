"""K CGCNN members as one network (``--members K``): every weight gets a leading member dimension.

An ensemble of K networks trained one after the other pays K times for everything: loading batches, gathering
edges, expanding distances, and on a GPU K times the few hundred kernel launches of a step. Stacked, the members
share the batch, the bond features and every gather; each weight matrix becomes a batched matmul over the members,
and one ``embedding_bag`` sums all members' edge rows. Batch-norm statistics, losses and gradients stay per member,
so member k computes exactly the function of its own ``CGCNN`` (checked in tests/test_members.py).

Weights are kept under the names and shapes of ``CGCNN``'s state dict with K in front, so member k's weights are
``{name: tensor[k]}``: a member is written out as an ordinary model (``member_state``), and predicting, explaining or
exporting it needs nothing from here. Built for the gated layer (the paper's and the ``matbench`` preset's); the
others train as separate runs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cgcnn_lab.model.compiled import MaybeCompiled
from cgcnn_lab.model.config import ModelConfig
from cgcnn_lab.model.convs import activation
from cgcnn_lab.model.network import CGCNN, pool
from cgcnn_lab.model.stoichiometry import stoichiometry

SHARED = ("element_table",)  # buffers every member has alike: kept once


def check_stackable(config: ModelConfig) -> None:
    """Raise ValueError naming what ``--members`` cannot stack."""
    if config.conv not in ("gated", "none"):
        raise ValueError(f"--members trains the gated convolution (or none) as one network; conv {config.conv!r}: "
                         "train the members as separate runs (--seed) and join them with `cgcnn-lab ensemble`")


def _key(name: str) -> str:
    return name.replace(".", "__")  # module attribute names cannot hold dots


class _EdgeIndex(NamedTuple):
    """A batch's edge indices, made once per batch and shared by every layer. The gathers run inside the compiled
    chains (``_bn_gate``); each sum over edges is one ``embedding_bag`` over all K members' rows (several times
    faster on CPU than ``index_add_`` along the edge dimension of a [K, E, C] tensor)."""

    center: torch.Tensor  # [E]: each edge's centre atom, neighbour atom and distinct distance (bond row)
    neighbor: torch.Tensor
    inverse: torch.Tensor
    multiplicity: torch.Tensor  # [E]: m_e, the identical edges a merged edge stands for at its centre
    member_rows: torch.Tensor  # [K·E, 3]: ``rows`` of every member in the [K·(2N + B)] rows of all (the composite)
    to_center: torch.Tensor  # [K·E]: edges in centre order (bags: to_center_offsets)
    to_center_offsets: torch.Tensor  # [K·N]
    center_weights: torch.Tensor  # [K·E]: m_e in centre order
    to_rows: torch.Tensor  # [K·3E]: edges in table-row order (bags: to_rows_offsets): the adjoint of the gather
    to_rows_offsets: torch.Tensor  # [K·(2N + B)]


def _bags(keys: torch.Tensor, n_bags: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of ``keys`` grouped by key (stable) and where each key's bag starts."""
    order = torch.argsort(keys, stable=True)
    offsets = torch.zeros(n_bags, dtype=torch.long, device=keys.device)
    torch.cumsum(torch.bincount(keys, minlength=n_bags)[:-1], 0, out=offsets[1:])
    return order, offsets


def _edge_index(k: int, n: int, n_bonds: int, center, neighbor, inverse, m) -> _EdgeIndex:
    e, n_rows = center.shape[0], 2 * n + n_bonds
    member = torch.arange(k, device=center.device).view(-1, 1)
    rows = torch.stack([center, neighbor + n, inverse + 2 * n], dim=1)
    by_center, center_offsets = _bags(center, n)
    by_row, row_offsets = _bags(rows.view(-1), n_rows)
    return _EdgeIndex(
        center=center, neighbor=neighbor, inverse=inverse, multiplicity=m,
        member_rows=(rows.unsqueeze(0) + n_rows * member.unsqueeze(2)).view(-1, 3),
        to_center=(by_center + e * member).view(-1), to_center_offsets=(center_offsets + e * member).view(-1),
        center_weights=m[by_center].repeat(k),
        to_rows=(torch.div(by_row, 3, rounding_mode="floor") + e * member).view(-1),
        to_rows_offsets=(row_offsets + 3 * e * member).view(-1))


def _weighted_statistics(x, w):
    """Each member's batch-norm statistics of x [K, R, C] over rows weighted by w [R, 1] (summing to 1): the mean,
    x centred, and the (biased) variance."""
    mean = (w * x).sum(1, keepdim=True)  # [K, 1, C]
    centred = x - mean
    return mean, centred, (w * centred * centred).sum(1, keepdim=True)


def _bn_gate_eager(centers, neighbors, bonds, index: _EdgeIndex, w, gamma, beta, eps: float):
    """The edge step from the fc_full parts of every atom as centre and as neighbour [K, N, 2A] and of every distinct
    distance [K, B, 2A], per member: each edge sums its three (z [K, E, 2A]), batch norm over the edges weighted by
    w [E, 1], the gate. Returns x̂, σ(y) (σ(f), and σ(c) = softplus'(c) for the
    backward), softplus(c), the messages σ(f)·softplus(c), and the statistics (mean, var, 1/√(var + eps)).
    Compiled, the gather is read inside the loops instead of written out first (0.4 ms a layer for 8 members),
    from the parts as the matmuls leave them (no concatenated table)."""
    a = centers.shape[-1] // 2
    z = centers[:, index.center] + neighbors[:, index.neighbor] + bonds[:, index.inverse]
    mean, centred, var = _weighted_statistics(z, w)
    inv = torch.rsqrt(var + eps)
    x_hat = centred * inv
    y = x_hat * gamma + beta
    sig = torch.sigmoid(y)
    core = F.softplus(y[..., a:])
    return x_hat, sig, core, sig[..., :a] * core, mean, var, inv


def _bn_gate_backward_eager(dout, center, m, sig, core, x_hat, w, inv, gamma):
    """``_bn_gate``'s backward from the centres' gradient dout [K, N, A] (each edge's m_e times its centre's) to z's,
    γ's and β's."""
    a = dout.shape[-1]
    dm = dout[:, center] * m.unsqueeze(1)
    gate, sig_c = sig[..., :a], sig[..., a:]
    dy = torch.cat([dm * core * gate * (1.0 - gate), dm * gate * sig_c], dim=-1)  # σ'(f) = σ(f)(1 − σ(f))
    dbeta = dy.sum(1, keepdim=True)
    dgamma = (dy * x_hat).sum(1, keepdim=True)
    g = gamma * inv
    return g * dy - w * (g * dbeta + x_hat * (g * dgamma)), dgamma, dbeta


def _residual_bn_softplus_eager(x, summed, w, gamma, beta, eps: float):
    """The gated layer's end in training, softplus(x + BN(Σ messages)), statistics per member over the atoms weighted
    by w [N, 1]; returns it with the (detached) statistics."""
    mean, centred, var = _weighted_statistics(summed, w)
    out = F.softplus(x + centred * torch.rsqrt(var + eps) * gamma + beta)
    return out, mean.detach(), var.detach()


def _gate_eval_eager(centers, neighbors, bonds, index: _EdgeIndex, mean, var, gamma, beta, eps: float):
    """The edge step in evaluation (batch norm with each member's running statistics [K, 1, 2A]): the messages."""
    a = centers.shape[-1] // 2
    z = centers[:, index.center] + neighbors[:, index.neighbor] + bonds[:, index.inverse]
    y = (z - mean) * torch.rsqrt(var + eps) * gamma + beta
    return torch.sigmoid(y[..., :a]) * F.softplus(y[..., a:])


def _residual_bn_softplus_eval_eager(x, summed, mean, var, gamma, beta, eps: float):
    """The layer's end in evaluation: softplus(x + BN(Σ messages)) with the running statistics."""
    return F.softplus(x + (summed - mean) * torch.rsqrt(var + eps) * gamma + beta)


_bn_gate = MaybeCompiled(_bn_gate_eager)
_residual_bn_softplus = MaybeCompiled(_residual_bn_softplus_eager)
_gate_eval = MaybeCompiled(_gate_eval_eager)
_residual_bn_softplus_eval = MaybeCompiled(_residual_bn_softplus_eval_eager)
_bn_gate_backward = MaybeCompiled(_bn_gate_backward_eager)


def _fc_parts(x, bonds, wc, wn, wu, bias) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``fc_full`` of every atom as centre (with the bias) and as neighbour [K, N, 2A], and of every distinct
    distance [K, B, 2A]: an edge's pre-activation is the sum of its three rows."""
    return torch.baddbmm(bias, x, wc), torch.bmm(x, wn), torch.matmul(bonds, wu)


def _sum_at_centers(messages: torch.Tensor, index: _EdgeIndex, n: int) -> torch.Tensor:
    """Σ over each centre's edges of m_e × messages [K, E, A] -> [K, N, A], as one bag over all members' rows."""
    k, _, a = messages.shape
    return F.embedding_bag(index.to_center, messages.reshape(-1, a), index.to_center_offsets, mode="sum",
                           per_sample_weights=index.center_weights).view(k, n, a)


class _StackedGatedMessages(torch.autograd.Function):
    """convs.py's ``_GatedMessages`` (the fused edge step of training) with a member dimension: x [K, N, A], weight
    blocks [K, in, 2A], one batched matmul per block; the gather, batch norm (statistics per member) and gate as one
    compiled chain each way (``_bn_gate``); each sum over edges one ``embedding_bag`` over all members' rows
    (``_EdgeIndex``). The bias before batch norm gets its exact zero gradient, as there."""

    @staticmethod
    def forward(ctx, x, bonds, wc, wn, wu, bias, index: _EdgeIndex, w, gamma, beta, eps: float):
        parts = _fc_parts(x, bonds, wc, wn, wu, bias)
        x_hat, sig, core, messages, mean, var, inv = _bn_gate(*parts, index, w, gamma, beta, eps)
        out = _sum_at_centers(messages, index, x.shape[1])
        ctx.save_for_backward(x, bonds, wc, wn, x_hat, sig, core, w, inv, gamma)
        ctx.index = index
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, dout, _dmean, _dvar):
        x, bonds, wc, wn, x_hat, sig, core, w, inv, gamma = ctx.saved_tensors
        index = ctx.index
        k, n, a = x.shape
        n_rows = 2 * n + bonds.shape[0]
        dz, dgamma, dbeta = _bn_gate_backward(dout, index.center, index.multiplicity, sig, core, x_hat, w, inv, gamma)
        d_table = F.embedding_bag(index.to_rows, dz.view(-1, 2 * a), index.to_rows_offsets,
                                  mode="sum").view(k, n_rows, 2 * a)
        d_center, d_neighbor, d_bond = d_table[:, :n], d_table[:, n : 2 * n], d_table[:, 2 * n :]
        dx = torch.baddbmm(torch.bmm(d_center, wc.transpose(1, 2)), d_neighbor, wn.transpose(1, 2))
        xt = x.transpose(1, 2)
        return (dx, None, torch.bmm(xt, d_center), torch.bmm(xt, d_neighbor), torch.matmul(bonds.T, d_bond),
                dz.new_zeros((k, 1, 2 * a)), None, None, dgamma, dbeta, None)


class MemberStack(nn.Module):
    """K ``CGCNN`` members of one architecture as one module; ``forward`` gives [K, crystals, outputs]."""

    def __init__(self, members: list[CGCNN]) -> None:
        super().__init__()
        first = members[0]
        self.config = c = first.config
        check_stackable(c)
        self.k = len(members)
        self.n_conv = len(first.convs)
        states = [m.state_dict() for m in members]
        self.stacked = nn.ParameterDict({_key(name): nn.Parameter(torch.stack([s[name] for s in states]).clone())
                                         for name, _ in first.named_parameters()})
        self._buffers_stacked = []
        for name, buf in first.named_buffers():
            if name in SHARED:
                self.register_buffer(_key(name), buf.clone())
            elif not name.startswith("expansion."):
                self.register_buffer(_key(name), torch.stack([s[name] for s in states]).clone())
                self._buffers_stacked.append(name)
        self.expansion = first.expansion
        self.act = activation(c.activation)
        self.dropout = nn.Dropout(c.dropout)
        bn = first.convs[0].bn1 if self.n_conv and c.batchnorm else nn.BatchNorm1d(1)
        self.eps, self.momentum = bn.eps, bn.momentum

    # ------------------------------------------------------------------------------------------ members in and out
    def stacked_tensors(self) -> dict[str, torch.Tensor]:
        """Every per-member tensor (parameters and running statistics) under its ``CGCNN`` name, K in front."""
        out = {name: self.stacked[_key(name)] for name in self._names()}
        out |= {name: getattr(self, _key(name)) for name in self._buffers_stacked}
        return out

    def member_state(self, k: int, tensors: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Member k's state dict for a ``CGCNN`` (from ``tensors``, a snapshot of ``stacked_tensors``, if given)."""
        state = {name: t[k].detach().clone() for name, t in (tensors or self.stacked_tensors()).items()}
        return state | {name: getattr(self, _key(name)).clone() for name in SHARED if hasattr(self, _key(name))}

    def member(self, k: int, tensors: dict[str, torch.Tensor] | None = None) -> CGCNN:
        table = getattr(self, _key("element_table"), None)
        model = CGCNN(self.config, table)
        model.load_state_dict(self.member_state(k, tensors))
        return model

    def _names(self) -> list[str]:
        return [key.replace("__", ".") for key in self.stacked]

    def _p(self, name: str) -> torch.Tensor:
        return self.stacked[_key(name)]

    def _linear(self, name: str, h: torch.Tensor) -> torch.Tensor:
        """h [K, R, in] through member k's ``name`` Linear -> [K, R, out]."""
        return torch.baddbmm(self._p(f"{name}.bias").unsqueeze(1), h, self._p(f"{name}.weight").transpose(1, 2))

    @property
    def merges_graphs(self) -> bool:
        """As ``CGCNN.merges_graphs``: merged rows are weighted in sums, batch norms and pooling."""
        return not (self.config.readout == "atom" and self.config.dropout > 0)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------------------------------ the network
    def forward(self, batch) -> torch.Tensor:
        c = self.config
        n_atoms, n_crystals = batch.z.shape[0], batch.num_graphs
        dtype = self.stacked[_key("fc_out.weight")].dtype
        atom_weight = _weights(getattr(batch, "atom_weight", None), n_atoms, dtype, batch.z.device)
        x = self._embed(batch.z)
        if self.n_conv:
            x = self._convolve(x, batch, atom_weight)
        stoich = stoichiometry(batch.z, batch.batch, n_crystals, atom_weight) if c.stoichiometry else None
        if c.readout == "atom":
            out = self._pool(self._head(x, None if stoich is None else stoich[batch.batch]), batch, atom_weight)
        else:
            out = self._head(self._pool(x, batch, atom_weight), stoich)
        return torch.log_softmax(out, dim=2) if c.task == "classification" else out

    def _embed(self, z: torch.Tensor) -> torch.Tensor:
        if self.config.atom_encoding == "learned":
            return self._p("embedding.weight")[:, z]
        features = getattr(self, _key("element_table"))[z]
        return self._linear("embedding", features.expand(self.k, -1, -1))

    def _convolve(self, x: torch.Tensor, batch, atom_weight: torch.Tensor) -> torch.Tensor:
        neighbor, center = batch.edge_index
        n, e = x.shape[1], center.shape[0]
        edge_weight = _weights(getattr(batch, "edge_weight", None), e, x.dtype, x.device)
        count = atom_weight.index_select(0, center) * edge_weight  # unmerged edges each row stands for
        distances, inverse = torch.unique(batch.distance, return_inverse=True)  # bond features per distance
        bonds = self.expansion(distances)
        graph = (bonds, _edge_index(self.k, n, bonds.shape[0], center, neighbor, inverse, edge_weight), count)
        for layer in range(self.n_conv):
            x = self._gated(layer, x, graph, atom_weight)
        return x

    def _gated(self, layer: int, x: torch.Tensor, graph, atom_weight: torch.Tensor) -> torch.Tensor:
        """``GatedConv`` for every member at once."""
        bonds, edges, count = graph
        k, n, a = x.shape
        prefix = f"convs.{layer}"
        weight, bias = self._p(f"{prefix}.fc_full.weight"), self._p(f"{prefix}.fc_full.bias").unsqueeze(1)
        wc, wn, wu = (weight[:, :, s].transpose(1, 2) for s in (slice(0, a), slice(a, 2 * a), slice(2 * a, None)))
        if self._compiled_step(x):
            if self.training:
                return self._gated_fused(prefix, x, bonds, (wc, wn, wu, bias), edges, count, atom_weight)
            return self._gated_eval(prefix, x, bonds, (wc, wn, wu, bias), edges)
        if self.training and self.config.batchnorm:
            bias = bias * 0 + bias.detach()  # its exact zero gradient, as in the fused step
        table = torch.cat(_fc_parts(x, bonds, wc, wn, wu, bias), dim=1)
        z = F.embedding_bag(edges.member_rows, table.view(-1, 2 * a), mode="sum").view(k, -1, 2 * a)
        gate, core = self._batch_norm(z, f"{prefix}.bn1", count).split(a, dim=2)
        messages = torch.sigmoid(gate) * self.act(core) * edges.multiplicity.view(1, -1, 1)
        summed = x.new_zeros((k, n, a)).index_add_(1, edges.center, messages)
        return self.act(x + self._batch_norm(summed, f"{prefix}.bn2", atom_weight))

    def _gated_fused(self, prefix: str, x, bonds, weights, edges: _EdgeIndex, count, atom_weight) -> torch.Tensor:
        """The gated layer in training (``_compiled_step``): the edge step and the layer's end, each written out or
        compiled."""
        w = (count / count.sum()).unsqueeze(1).to(x.dtype)  # [E, 1]
        summed, mean, var = _StackedGatedMessages.apply(x, bonds, *weights, edges, w, *self._affine(f"{prefix}.bn1"),
                                                        self.eps)
        self._track(f"{prefix}.bn1", mean, var, count.sum())
        w = (atom_weight / atom_weight.sum()).unsqueeze(1)  # [N, 1]
        out, mean, var = _residual_bn_softplus(x, summed, w, *self._affine(f"{prefix}.bn2"), self.eps)
        self._track(f"{prefix}.bn2", mean, var, atom_weight.sum())
        return out

    def _gated_eval(self, prefix: str, x, bonds, weights, edges: _EdgeIndex) -> torch.Tensor:
        """The gated layer in evaluation (``_compiled_step``): two compiled chains and one bag, where the composite's
        passes over [K, E, 2A] tensors of a 256-crystal batch (tens of MB) made 8 stacked members slower than 8
        separate models."""
        messages = _gate_eval(*_fc_parts(x, bonds, *weights), edges, *self._running(f"{prefix}.bn1"), self.eps)
        summed = _sum_at_centers(messages, edges, x.shape[1])
        return _residual_bn_softplus_eval(x, summed, *self._running(f"{prefix}.bn2"), self.eps)

    def _affine(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch norm's γ and β, each [K, 1, C]."""
        return self._p(f"{name}.weight").unsqueeze(1), self._p(f"{name}.bias").unsqueeze(1)

    def _running(self, name: str) -> tuple[torch.Tensor, ...]:
        """A batch norm's running mean and variance [K, 1, C], then its γ and β."""
        running = (getattr(self, _key(f"{name}.running_{s}")).unsqueeze(1) for s in ("mean", "var"))
        return (*running, *self._affine(name))

    def _compiled_step(self, x: torch.Tensor) -> bool:
        """The written-out, compiled gated layer (training: as ``GatedConv._fused``; evaluation: with the running
        statistics): batch norm, softplus, no autocast. Otherwise the composite."""
        return (self.config.batchnorm and self.config.activation == "softplus"
                and not torch.is_autocast_enabled(x.device.type))

    def _batch_norm(self, x: torch.Tensor, name: str, weight: torch.Tensor) -> torch.Tensor:
        """Batch norm of x [K, R, C] with statistics per member over rows weighted by ``weight`` [R]."""
        if not self.config.batchnorm:
            return x
        gamma, beta = self._affine(name)
        if not self.training:
            mean, var = getattr(self, _key(f"{name}.running_mean")), getattr(self, _key(f"{name}.running_var"))
            return torch.addcmul(beta, x - mean.unsqueeze(1), torch.rsqrt(var + self.eps).unsqueeze(1) * gamma)
        total = weight.sum()
        w = (weight / total).unsqueeze(0).to(x.dtype)  # [1, R]
        mean = torch.matmul(w, x)  # [K, 1, C]: one batched GEMV
        centred = x - mean
        var = torch.matmul(w, centred * centred)
        self._track(name, mean, var, total)
        return torch.addcmul(beta, centred, torch.rsqrt(var + self.eps) * gamma)

    def _track(self, name: str, mean: torch.Tensor, var: torch.Tensor, total: torch.Tensor) -> None:
        """``nn.BatchNorm1d``'s running estimates, per member (unbiased variance over the unmerged rows)."""
        with torch.no_grad():
            getattr(self, _key(f"{name}.num_batches_tracked")).add_(1)
            getattr(self, _key(f"{name}.running_mean")).lerp_(mean[:, 0], self.momentum)
            unbiased = var[:, 0] * (total / (total - 1).clamp_min(1))
            getattr(self, _key(f"{name}.running_var")).lerp_(unbiased, self.momentum)

    def _pool(self, x: torch.Tensor, batch, atom_weight: torch.Tensor) -> torch.Tensor:
        """``network.pool`` for every member at once: [K, N, F] as [N, K·F] -> [K, crystals, F]."""
        k, n, f = x.shape
        pooled = pool(self.config.pool, x.transpose(0, 1).reshape(n, k * f), batch.batch, batch.num_graphs, atom_weight)
        return pooled.view(-1, k, f).transpose(0, 1)

    def _head(self, h: torch.Tensor, stoich: torch.Tensor | None) -> torch.Tensor:
        """``CGCNN.head`` for every member."""
        h = self.act(h)
        if stoich is not None:
            h = torch.cat([h, stoich.to(h.dtype).expand(self.k, -1, -1)], dim=2)
        h = self.dropout(self.act(self._linear("conv_to_fc", h)))
        for i in range(self.config.n_h - 1):
            h = self.act(self._linear(f"fcs.{i}", h))
        return self._linear("fc_out", h)


def _weights(weight: torch.Tensor | None, n: int, dtype, device) -> torch.Tensor:
    """Row multiplicities of a merged batch (data/batching.py), or ones, in the weights' precision."""
    return torch.ones(n, dtype=dtype, device=device) if weight is None else weight.to(dtype)
