"""Graph convolutions over crystal graphs. A new convolution is one class here (or in ``pyg.py``) plus one
``CONVOLUTIONS`` entry in ``config.py`` that names its capabilities.

Every layer maps atom features ``x`` [N, A] to new atom features [N, A], given directed edges
``edge_index`` [2, E] (row 0: neighbour j, row 1: centre i) and bond features ``edge_attr``. Bond features are
passed *deduplicated*: ``edge_attr`` [U, B] holds one row per distinct distance and ``edge_inverse`` [E] names
each edge's row. A crystal graph has far fewer distinct distances than edges (every bond appears as i→j and j→i,
and symmetry repeats them: 7,680 edges but 1,598 distances in a batch of 128 Castelli cells), so work that
depends on the bond alone is done ~5x less often. ``per_edge`` expands it back for layers that need E rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cgcnn_lab.model.config import ACTIVATIONS


def activation(name: str) -> nn.Module:
    try:
        return getattr(nn, ACTIVATIONS[name])()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}") from None


def batch_norm(dim: int, enabled: bool) -> nn.Module:
    return nn.BatchNorm1d(dim) if enabled else nn.Identity()


def per_edge(edge_attr: torch.Tensor, edge_inverse: torch.Tensor | None) -> torch.Tensor:
    """Bond features [E, B] from the deduplicated rows (or as they are, when not deduplicated)."""
    return edge_attr if edge_inverse is None else edge_attr.index_select(0, edge_inverse)


def sum_over_neighbors(
    messages: torch.Tensor, center: torch.Tensor, n_atoms: int, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Σ_j messages_ij for every centre i (deterministic on CPU); a merged edge counts ``weight`` times."""
    if weight is not None:
        messages = messages * weight.unsqueeze(1).to(messages.dtype)
    out = messages.new_zeros((n_atoms, messages.shape[1]))
    return out.index_add_(0, center, messages)


def edge_count(
    edge_weight: torch.Tensor | None, atom_weight: torch.Tensor | None, center: torch.Tensor
) -> torch.Tensor | None:
    """How many edges of the unmerged graph each edge row stands for: its multiplicity at its centre times the
    identical atoms that centre stands for (data/batching.py). Batch-norm statistics over edges count this."""
    if atom_weight is None:
        return edge_weight
    count = atom_weight.index_select(0, center)
    return count if edge_weight is None else count * edge_weight


def _weighted_bn_forward(x: torch.Tensor, w: torch.Tensor, gamma, beta, eps: float):
    """Normalise ``x`` in place with statistics that weight row e by ``w[0, e]`` (Σ w = 1): (y, x̂, mean, var, 1/σ)."""
    mean = w @ x  # [1, C]: a GEMV instead of elementwise passes
    centred = x.sub_(mean)
    var = w @ (centred * centred)
    inv = torch.rsqrt(var + eps)
    x_hat = centred.mul_(inv)
    return torch.addcmul(beta.to(x.dtype), x_hat, gamma.to(x.dtype)), x_hat, mean, var, inv


def _weighted_bn_backward(dy: torch.Tensor, x_hat: torch.Tensor, w: torch.Tensor, inv, gamma):
    """(dx, dγ, dβ) of ``_weighted_bn_forward``; ``dy`` is overwritten with dx."""
    dbeta = dy.sum(0)
    dgamma = (dy * x_hat).sum(0)
    g = gamma * inv  # [1, C]
    correction = torch.addcmul(g * dbeta, x_hat, g * dgamma).mul_(w.T)
    return dy.mul_(g).sub_(correction), dgamma, dbeta


class _WeightedBatchNorm(torch.autograd.Function):
    """Batch norm whose statistics count row e ``weight[e]`` times, with the backward written out.

    Autograd through the composite (two GEMVs, centring, rsqrt, addcmul) keeps several E×C intermediates and
    walks them in many passes; this keeps one (x̂): 5.6–6.5 ms against 7–11 ms forward + backward for a
    5,600 × 128 Castelli batch (one thread, busy machine). With w_e = weight_e / Σ weight (``w``, passed in) and
    g = γ / σ, the gradient of the multiplicity-weighted statistics is

        dx_e = g ⊙ (dy_e − w_e (Σ_k dy_k + x̂_e ⊙ Σ_k dy_k ⊙ x̂_k))

    which for unit weights is the familiar batch-norm backward (checked against autograd in tests/test_model.py).
    """

    @staticmethod
    def forward(ctx, x, w, gamma, beta, eps: float):
        w = w.unsqueeze(0).to(x.dtype)  # [1, E], sums to 1
        y, x_hat, mean, var, inv = _weighted_bn_forward(x.clone(), w, gamma, beta, eps)
        ctx.save_for_backward(x_hat, w, inv, gamma)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        x_hat, w, inv, gamma = ctx.saved_tensors
        dx, dgamma, dbeta = _weighted_bn_backward(dy.clone(), x_hat, w, inv, gamma)
        return dx, None, dgamma, dbeta, None


def _fc_columns(weight: torch.Tensor, a: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The centre, neighbour and bond column blocks of the gated layer's ``fc_full`` weight [2A, 2A + B]."""
    return weight[:, :a], weight[:, a : 2 * a], weight[:, 2 * a :]


class _GatedMessages(torch.autograd.Function):
    """The gated layer's edge step in training, forward and backward written out:

        T = [x W_c + b; x W_n; u W_u]   z_e = T[i_e] + T[N + j_e] + T[2N + k_e]   [f, c] = BN_w(z)
        out_i = Σ_{e: i_e = i} m_e σ(f_e) ⊙ softplus(c_e)

    (W_c, W_n, W_u: the centre, neighbour and bond columns of ``fc_full``; u: bond features per distinct distance,
    k_e the edge's; m_e: the multiplicity of a merged edge at its centre; w_e ∝ the unmerged edges it stands for).
    The three parts are written into one table and each edge sums its three rows in a single ``embedding_bag``
    (0.2 ms against 0.9 ms for three gathers and two adds on a Castelli batch). Autograd through the composite
    allocates a fresh E-row tensor at almost every step and keeps several for the backward; this works in place
    where it can, keeps x̂, σ(f) and softplus(c), and gets softplus'(c) = σ(c) from the saved softplus
    (σ(c) = 1 − e^(−softplus(c))). About as many operators, less memory traffic: the Castelli model loop went from 42.7 to 35.7 ms a step (one thread, interleaved A/B; BENCHMARKS.md).
    Checked against the composite in tests/test_model.py.
    """

    @staticmethod
    def forward(ctx, x, bonds, weight_matrix, bias, center, neighbor, inverse, multiplicity, count, gamma, beta,
                eps: float):
        n, a = x.shape
        w_center, w_neighbor, w_bond = _fc_columns(weight_matrix, a)
        table = x.new_empty((2 * n + bonds.shape[0], 2 * a))
        torch.addmm(bias, x, w_center.T, out=table[:n])
        torch.mm(x, w_neighbor.T, out=table[n : 2 * n])
        torch.mm(bonds, w_bond.T, out=table[2 * n :])
        rows = torch.stack([center, neighbor + n, inverse + 2 * n], dim=1)
        z = F.embedding_bag(rows, table, mode="sum")
        m = multiplicity.unsqueeze(1).to(z.dtype)
        w = (count / count.sum()).unsqueeze(0).to(z.dtype)  # [1, E]
        y, x_hat, mean, var, inv = _weighted_bn_forward(z, w, gamma, beta, eps)
        gate, core = torch.sigmoid(y[:, :a]), F.softplus(y[:, a:])
        messages = (gate * core).mul_(m)
        out = messages.new_zeros((n, a)).index_add_(0, center, messages)
        ctx.save_for_backward(x, bonds, weight_matrix, x_hat, gate, core, center, neighbor, inverse, m, w, inv, gamma)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, dout, _dmean, _dvar):
        x, bonds, weight_matrix, x_hat, gate, core, center, neighbor, inverse, m, w, inv, gamma = ctx.saved_tensors
        n, a = x.shape
        dm = dout.index_select(0, center).mul_(m)
        dy = torch.empty_like(x_hat)
        torch.mul(dm * gate, torch.expm1(core.neg()).neg_(), out=dy[:, a:])  # softplus'(c) = σ(c)
        torch.mul((dm * core).mul_(gate), 1.0 - gate, out=dy[:, :a])  # σ'(f) = σ(f)(1 − σ(f))
        dz, dgamma, dbeta = _weighted_bn_backward(dy, x_hat, w, inv, gamma)
        d_table = dz.new_zeros((2 * n + bonds.shape[0], 2 * a))
        d_center, d_neighbor, d_bond = d_table[:n], d_table[n : 2 * n], d_table[2 * n :]
        d_center.index_add_(0, center, dz)
        d_neighbor.index_add_(0, neighbor, dz)
        d_bond.index_add_(0, inverse, dz)
        w_center, w_neighbor, w_bond = _fc_columns(weight_matrix, a)
        need = ctx.needs_input_grad
        dx = torch.addmm(d_center @ w_center, d_neighbor, w_neighbor) if need[0] else None
        d_bonds = d_bond @ w_bond if need[1] else None
        d_weight = torch.cat([d_center.T @ x, d_neighbor.T @ x, d_bond.T @ bonds], dim=1) if need[2] else None
        # batch norm takes the mean out, so the bias before it has an exactly zero gradient; summed, dz gives
        # rounding noise, which Adam would normalise into steps of ±lr (its running mean then trails the bias and
        # evaluation shifts, differently on every host and member stack): the exact zero instead
        d_bias = dz.new_zeros(2 * a) if need[3] else None
        return dx, d_bonds, d_weight, d_bias, None, None, None, None, None, dgamma, dbeta, None


def _update_running_stats(bn: nn.BatchNorm1d, mean: torch.Tensor, var: torch.Tensor, total: torch.Tensor) -> None:
    """What ``nn.BatchNorm1d`` does with the batch statistics (unbiased variance over the unmerged rows). Both
    callers hand over fp32 (or fp64) statistics: under autocast the fused step is off and ``weighted_batch_norm``
    leaves it, since ``var · total`` overflows fp16."""
    with torch.no_grad():
        bn.num_batches_tracked += 1
        bn.running_mean.lerp_(mean[0].to(bn.running_mean.dtype), bn.momentum)
        bn.running_var.lerp_((var[0] * total / (total - 1).clamp_min(1)).to(bn.running_var.dtype), bn.momentum)


def weighted_batch_norm(x: torch.Tensor, bn: nn.Module, weight: torch.Tensor | None) -> torch.Tensor:
    """Batch norm over rows (edges or atoms) where a merged row stands for ``weight`` identical rows.

    Training statistics are the multiplicity-weighted mean and (biased) variance, and the running estimates get
    the unbiased one, exactly what ``nn.BatchNorm1d`` computes on the unmerged rows. Evaluation needs no weights.
    Under autocast it runs in fp32, as ``nn.BatchNorm1d`` does: fp16/bf16 weights and statistics would be off by
    up to a few per mille, and ``var · total`` overflows fp16.
    """
    if weight is None or not isinstance(bn, nn.BatchNorm1d) or not bn.training:
        return bn(x)
    dtype = torch.promote_types(x.dtype, torch.float32)  # fp16/bf16 -> fp32, float64 stays
    weight = weight.to(dtype)
    total = weight.sum()
    with torch.autocast(x.device.type, enabled=False):
        out, mean, var = _WeightedBatchNorm.apply(x.to(dtype), weight / total, bn.weight, bn.bias, bn.eps)
    _update_running_stats(bn, mean, var, total)
    return out


class GatedConv(nn.Module):
    """The CGCNN convolution (paper Eq. 5; "Eq. 4" in the course):

        z_ij = v_i ⊕ v_j ⊕ u_ij
        v_i' = g(v_i + BN(Σ_j σ(z_ij W_f + b_f) ⊙ g(z_ij W_s + b_s)))

    The filter and core weights are one ``Linear(2A + B -> 2A)`` (``fc_full``) followed by batch norm, as in
    the original code, so original checkpoints load as they are. Since a Linear over a concatenation is a sum
    of Linears over its parts, the v_i and v_j parts are computed once per *atom* and gathered per edge:
    the same function as the original with about 3x fewer FLOPs (12 edges per atom). Likewise the bond part is
    computed once per distinct distance.
    """

    def __init__(self, atom_dim: int, edge_dim: int, act: str = "softplus", batchnorm: bool = True) -> None:
        super().__init__()
        self.atom_dim = atom_dim
        self.fc_full = nn.Linear(2 * atom_dim + edge_dim, 2 * atom_dim)
        self.bn1 = batch_norm(2 * atom_dim, batchnorm)
        self.bn2 = batch_norm(atom_dim, batchnorm)
        self.core_act = activation(act)
        self.out_act = activation(act)

    def _fused(self, edge_inverse, edge_weight, x: torch.Tensor) -> bool:
        """Whether the hand-written edge step applies: training with batch norm on merged, deduplicated edges and
        the default softplus, outside autocast (bf16 keeps the composite, whose operators autocast knows)."""
        return (self.training and isinstance(self.bn1, nn.BatchNorm1d) and edge_weight is not None
                and edge_inverse is not None and isinstance(self.core_act, nn.Softplus)
                and self.core_act.beta == 1.0 and not torch.is_autocast_enabled(x.device.type))

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor, edge_inverse: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None, atom_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        neighbor, center = edge_index
        count = edge_count(edge_weight, atom_weight, center)
        if self._fused(edge_inverse, edge_weight, x):
            bn = self.bn1
            summed, mean, var = _GatedMessages.apply(x, edge_attr, self.fc_full.weight, self.fc_full.bias, center,
                                                     neighbor, edge_inverse, edge_weight, count, bn.weight, bn.bias,
                                                     bn.eps)
            _update_running_stats(bn, mean, var, count.sum())
        else:
            w_center, w_neighbor, w_bond = _fc_columns(self.fc_full.weight, self.atom_dim)
            from_center = x @ w_center.T  # [N, 2A]
            from_neighbor = x @ w_neighbor.T  # [N, 2A]
            bias = self.fc_full.bias
            if self.training and isinstance(self.bn1, nn.BatchNorm1d):
                bias = bias * 0 + bias.detach()  # its exact zero gradient, as in _GatedMessages.backward
            from_bond = per_edge(torch.addmm(bias, edge_attr, w_bond.T), edge_inverse)  # [E, 2A]
            # index_select (backward: index_add) is several times faster on CPU than x[idx] (backward: index_put)
            gated = from_bond + from_center.index_select(0, center) + from_neighbor.index_select(0, neighbor)
            gated = weighted_batch_norm(gated, self.bn1, count)
            nbr_filter, nbr_core = gated.chunk(2, dim=1)
            messages = torch.sigmoid(nbr_filter) * self.core_act(nbr_core)
            summed = sum_over_neighbors(messages, center, x.shape[0], edge_weight)
        return self.out_act(x + weighted_batch_norm(summed, self.bn2, atom_weight))


class SharedConv(nn.Module):
    """The shared-weight convolution (course Eq. 3): one matrix for all neighbours,

        v_i' = g[(Σ_j v_j ⊕ u_ij) W_c + v_i W_s + b]

    Σ_j (v_j ⊕ u_ij) is aggregated first, then one Linear: every neighbour is weighted identically, which
    is why this layer cannot tell a near from a far neighbour except through the summed bond features.
    """

    def __init__(self, atom_dim: int, edge_dim: int, act: str = "softplus", batchnorm: bool = True) -> None:
        super().__init__()
        self.lin_neighbors = nn.Linear(atom_dim + edge_dim, atom_dim, bias=False)  # W_c
        self.lin_self = nn.Linear(atom_dim, atom_dim)  # W_s, b
        self.bn = batch_norm(atom_dim, batchnorm)
        self.act = activation(act)

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor, edge_inverse: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None, atom_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        neighbor, center = edge_index
        bonds = per_edge(edge_attr, edge_inverse)
        summed = sum_over_neighbors(
            torch.cat([x.index_select(0, neighbor), bonds], dim=1), center, x.shape[0], edge_weight
        )
        return self.act(weighted_batch_norm(self.lin_neighbors(summed) + self.lin_self(x), self.bn, atom_weight))


class EdgeGatedConv(nn.Module):
    """Edge-gated convolution with bond updates (Bresson & Laurent 2017; the graph layer of ALIGNN):

        m_ij  = v_i W_c + v_j W_n + e_ij W_e
        v_i' = v_i + g(BN(v_i W_s + Σ_j σ(m_ij) ⊙ (v_j W_v + e_ij W_b) / (Σ_j σ(m_ij) + ε)))
        e_ij' = e_ij + g(BN(m_ij))

    In the CGCNN layer a bond is only ever its distance; here every bond has a state ``e_ij`` [E, A] that each
    layer refines from the atoms at both ends, and the gates are normalised over the neighbours, so an atom
    averages its neighbours' messages instead of summing a number of them that depends on M. One change from
    ALIGNN: the message carries the bond (``e_ij W_b``), not only the neighbour, as CGCNN's core term does; without
    it the bond reaches the atoms only through gate ratios (Castelli lab, 60 epochs, 3 seeds: 0.0805 ± 0.0005 with
    it, 0.0821 ± 0.0001 without, 0.0841 ± 0.0024 for the gated layer). The network embeds the distance expansion
    into the first ``e`` (``updates_edges``). The atom-side matrices are one Linear, computed once per atom and
    gathered per edge, as in the gated layer. A merged edge stands for identical edges (same centre, neighbour and
    distance), which stay identical under the update, so multiplicities still apply.
    """

    updates_edges = True

    def __init__(
        self, atom_dim: int, edge_dim: int, act: str = "softplus", batchnorm: bool = True, update_edges: bool = True
    ) -> None:
        super().__init__()
        del edge_dim  # bond states have atom_dim features: the network embeds the expansion to that width
        self.lin_atoms = nn.Linear(atom_dim, 4 * atom_dim)  # [W_c | W_n | W_v | W_s], one matmul per atom
        self.lin_edges = nn.Linear(atom_dim, 2 * atom_dim, bias=False)  # [W_e | W_b]
        self.bn_atoms = batch_norm(atom_dim, batchnorm)
        self.atom_act = activation(act)
        self.update_edges = update_edges  # the last layer's bond update would feed nothing: it has none
        if update_edges:
            self.bn_edges = batch_norm(atom_dim, batchnorm)
            self.edge_act = activation(act)

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor, edge_inverse: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None, atom_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        neighbor, center = edge_index
        e = per_edge(edge_attr, edge_inverse)
        from_center, from_neighbor, values, own = self.lin_atoms(x).chunk(4, dim=1)
        from_edge, from_bond = self.lin_edges(e).chunk(2, dim=1)
        m = from_edge + from_center.index_select(0, center) + from_neighbor.index_select(0, neighbor)
        gate = torch.sigmoid(m)
        gated_sum = sum_over_neighbors(gate * (values.index_select(0, neighbor) + from_bond), center, x.shape[0], edge_weight)
        gate_sum = sum_over_neighbors(gate, center, x.shape[0], edge_weight)
        x = x + self.atom_act(weighted_batch_norm(own + gated_sum / (gate_sum + 1e-6), self.bn_atoms, atom_weight))
        if self.update_edges:
            e = e + self.edge_act(weighted_batch_norm(m, self.bn_edges, edge_count(edge_weight, atom_weight, center)))
        return x, e
