"""Tests for cgcnn_lab.model: convolutions (against their literal formulas) and the CGCNN network
(forward/backward over the configuration grid, invariances, supercell behaviour)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pymatgen.core import Lattice, Structure
from scipy.spatial.transform import Rotation
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import global_add_pool

from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.data.graph import GraphConfig, structure_to_graph
from cgcnn_lab.model.config import ACTIVATIONS, CONV_CHOICES, CONVOLUTIONS, POOLING, ModelConfig
from cgcnn_lab.model.convs import EdgeGatedConv, GatedConv, SharedConv
from cgcnn_lab.model.network import CGCNN

GRAPH = GraphConfig(radius=5.0, max_neighbors=8)
SMALL = {"atom_fea_len": 16, "h_fea_len": 24, "n_conv": 2, "radius": 5.0, "gaussian_step": 0.5}


@pytest.fixture(scope="module")
def table() -> np.ndarray:
    return ElementEncoding.cgcnn92().table


def triclinic() -> Structure:
    """A 4-atom triclinic cell, no symmetry (so invariance tests are not passed by accident)."""
    lattice = Lattice.from_parameters(3.9, 4.3, 4.7, 81.0, 97.0, 104.0)
    frac = [[0.02, 0.05, 0.01], [0.51, 0.47, 0.55], [0.48, 0.03, 0.52], [0.07, 0.53, 0.46]]
    return Structure(lattice, ["Sr", "Ti", "O", "O"], frac)


def distorted_perovskite() -> Structure:
    lattice = Lattice.from_parameters(3.95, 4.02, 4.10, 89.0, 91.5, 88.0)
    frac = [[0, 0, 0], [0.52, 0.48, 0.51], [0.5, 0.53, 0.02], [0.47, 0.01, 0.49], [0.03, 0.5, 0.48]]
    return Structure(lattice, ["Ba", "Ti", "O", "O", "O"], frac)


def to_data(structure: Structure) -> Data:
    g = structure_to_graph(structure, GRAPH, "test")
    return Data(
        z=torch.from_numpy(g.z),
        edge_index=torch.from_numpy(g.edge_index),
        distance=torch.from_numpy(g.distance),
        num_nodes=g.n_atoms,
    )


def make_batch(*structures: Structure) -> Batch:
    return Batch.from_data_list([to_data(s) for s in structures])


def training_batch() -> Batch:
    return make_batch(triclinic(), distorted_perovskite(), triclinic() * (1, 1, 2))


def build(table: np.ndarray, **kwargs) -> CGCNN:
    torch.manual_seed(0)
    return CGCNN(ModelConfig(**{**SMALL, **kwargs}), table)


def warmed_up(model: CGCNN) -> CGCNN:
    """Run training-mode forwards so batch-norm running stats are non-trivial, then switch to eval."""
    model.double().train()
    with torch.no_grad():
        for _ in range(3):
            model(training_batch())
    model.eval()
    return model


def forward_backward(model: CGCNN, batch: Batch) -> torch.Tensor:
    model.train()
    out = model(batch)
    c = model.config
    assert out.shape == (batch.num_graphs, c.n_outputs)
    assert torch.isfinite(out).all()
    if c.task == "classification":
        loss = F.nll_loss(out, torch.arange(batch.num_graphs) % c.n_outputs)
    else:
        loss = ((out - torch.linspace(-1, 1, out.numel()).view_as(out)) ** 2).mean()
    model.zero_grad()
    loss.backward()
    total = 0.0
    for name, p in model.named_parameters():
        assert p.requires_grad
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        total += float(p.grad.abs().sum())
    assert total > 0
    # the input layer is reached by the gradient (it is never right after a batch norm)
    assert model.embedding.weight.grad.abs().sum() > 0
    return out


# ----------------------------------------------------------------------------- forward / backward grid


@pytest.mark.parametrize(
    "conv, pool, batchnorm",
    list(itertools.product(["gated", "shared", "egated", "none"], list(POOLING), [True, False])),
)
def test_forward_backward_grid(table, conv: str, pool: str, batchnorm: bool) -> None:
    model = build(table, conv=conv, pool=pool, batchnorm=batchnorm)
    assert len(model.convs) == (0 if conv == "none" else 2)
    forward_backward(model, training_batch())


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_every_activation(table, act: str) -> None:
    model = build(table, activation=act, n_h=2)
    assert len(model.fcs) == 1
    forward_backward(model, training_batch())


@pytest.mark.parametrize("n_outputs", [1, 3])
def test_regression_outputs(table, n_outputs: int) -> None:
    out = forward_backward(build(table, n_outputs=n_outputs, dropout=0.1), training_batch())
    assert out.shape[1] == n_outputs


def test_classification_log_probabilities(table) -> None:
    model = build(table, task="classification", n_outputs=3, conv="shared")
    out = forward_backward(model, training_batch())
    assert (out <= 0).all()
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(out.shape[0]), atol=1e-5, rtol=0)


def test_learned_atom_encoding(table) -> None:
    model = CGCNN(ModelConfig(**SMALL, atom_encoding="learned"), None)
    assert isinstance(model.embedding, torch.nn.Embedding) and model.element_table is None
    forward_backward(model, training_batch())
    grad = model.embedding.weight.grad
    used = torch.unique(training_batch().z)
    assert grad[used].abs().sum(dim=1).gt(0).all()
    unused = torch.ones(grad.shape[0], dtype=torch.bool)
    unused[used] = False
    assert grad[unused].abs().sum() == 0


def test_fixed_encoding_needs_table() -> None:
    with pytest.raises(ValueError, match="element feature table"):
        CGCNN(ModelConfig(**SMALL), None)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"conv": "gcn"},
        {"pool": "attention"},
        {"task": "ranking"},
        {"atom_encoding": "onehot"},
        {"activation": "swish"},
        {"n_h": 0},
        {"dropout": 1.0},
    ],
)
def test_model_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ModelConfig(**kwargs)


def test_classification_defaults_to_two_classes() -> None:
    assert ModelConfig(task="classification").n_outputs == 2
    assert ModelConfig(task="classification", n_outputs=3).n_outputs == 3


def test_model_config_round_trip() -> None:
    cfg = ModelConfig(**SMALL, pool="max")
    assert ModelConfig.from_dict({**cfg.to_dict(), "unknown_key": 1}) == cfg


# ----------------------------------------------------------------------------- invariances


INVARIANCE_CONFIGS = [
    {"conv": "gated", "pool": "mean"},
    {"conv": "shared", "pool": "max"},
    {"conv": "gated", "pool": "sum", "batchnorm": False},
    {"conv": "egated", "pool": "mean"},
]


def predict(model: CGCNN, *structures: Structure) -> torch.Tensor:
    with torch.no_grad():
        return model(make_batch(*structures))


@pytest.fixture(scope="module", params=range(len(INVARIANCE_CONFIGS)))
def eval_model(request, table) -> CGCNN:
    return warmed_up(build(table, **INVARIANCE_CONFIGS[request.param], n_outputs=2))


@pytest.mark.parametrize("conv", ["gated", "shared", "egated"])
def test_batchnorm_running_stats_are_non_trivial(table, conv: str) -> None:
    model = warmed_up(build(table, conv=conv))
    for layer in model.convs:
        names = {"gated": ["bn2"], "shared": ["bn"], "egated": ["bn_atoms", "bn_edges"]}[conv]
        for bn in (getattr(layer, n) for n in names if hasattr(layer, n)):
            assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
            assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


@pytest.mark.parametrize("make", [triclinic, distorted_perovskite])
def test_site_permutation_invariance(eval_model, make) -> None:
    s = make()
    perm = np.roll(np.arange(len(s)), 1)  # cyclic shift: no site keeps its index
    assert (perm != np.arange(len(s))).all()
    permuted = Structure(s.lattice, [s[i].specie for i in perm], s.frac_coords[perm])
    torch.testing.assert_close(predict(eval_model, permuted), predict(eval_model, s), atol=1e-5, rtol=0)
    with torch.no_grad():
        x = eval_model.atom_features(make_batch(s))
        x_perm = eval_model.atom_features(make_batch(permuted))
    torch.testing.assert_close(x_perm, x[torch.from_numpy(perm)], atol=1e-5, rtol=0)


@pytest.mark.parametrize("make", [triclinic, distorted_perovskite])
def test_translation_invariance(eval_model, make) -> None:
    s = make()
    moved = s.copy()
    moved.translate_sites(list(range(len(s))), [1.37, -0.61, 2.9], frac_coords=False, to_unit_cell=True)
    assert not np.allclose(moved.frac_coords, s.frac_coords)
    torch.testing.assert_close(predict(eval_model, moved), predict(eval_model, s), atol=1e-5, rtol=0)


@pytest.mark.parametrize("make", [triclinic, distorted_perovskite])
def test_rotation_invariance(eval_model, make) -> None:
    s = make()
    rot = Rotation.from_euler("zyx", [37.0, -58.0, 111.0], degrees=True).as_matrix()
    rotated = Structure(Lattice(s.lattice.matrix @ rot.T), s.species, s.frac_coords)
    assert not np.allclose(rotated.cart_coords, s.cart_coords)
    torch.testing.assert_close(predict(eval_model, rotated), predict(eval_model, s), atol=1e-5, rtol=0)


def test_prediction_depends_on_the_structure(eval_model) -> None:
    """Guards the invariance tests: a real change of geometry or composition changes the prediction."""
    s = triclinic()
    strained = Structure(Lattice(s.lattice.matrix * 1.04), s.species, s.frac_coords)
    swapped = Structure(s.lattice, ["Ba", "Ti", "O", "O"], s.frac_coords)
    base = predict(eval_model, s)
    assert (predict(eval_model, strained) - base).abs().max() > 1e-4
    assert (predict(eval_model, swapped) - base).abs().max() > 1e-4


@pytest.mark.parametrize("make", [triclinic, distorted_perovskite])
def test_supercell(table, make) -> None:
    s = make()
    supercell = s * (2, 2, 2)
    assert len(supercell) == 8 * len(s)
    mean_model = warmed_up(build(table, pool="mean"))
    # intensive: mean pooling gives the same prediction for the supercell (also batched together)
    both = predict(mean_model, s, supercell)
    torch.testing.assert_close(both[1], both[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(predict(mean_model, supercell), predict(mean_model, s), atol=1e-5, rtol=0)
    # extensive: sum-pooled atom features scale by 8 (the readout is nonlinear, so compare before it)
    sum_model = warmed_up(build(table, pool="sum"))
    with torch.no_grad():
        cell_batch, super_batch = make_batch(s), make_batch(supercell)
        pooled_cell = global_add_pool(sum_model.atom_features(cell_batch), cell_batch.batch)
        pooled_super = global_add_pool(sum_model.atom_features(super_batch), super_batch.batch)
    torch.testing.assert_close(pooled_super, 8 * pooled_cell, atol=1e-5, rtol=1e-7)
    assert pooled_cell.abs().max() > 1e-3


def test_batching_is_independent(table) -> None:
    """In eval mode a crystal's prediction does not depend on what else is in the batch."""
    model = warmed_up(build(table))
    alone = predict(model, distorted_perovskite())
    batched = predict(model, triclinic(), distorted_perovskite(), triclinic())
    torch.testing.assert_close(batched[1:2], alone, atol=1e-8, rtol=0)


# ----------------------------------------------------------------------------- convolutions vs. literal formulas


def random_graph(n_atoms: int = 9, n_edges: int = 40, atom_dim: int = 6, edge_dim: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_atoms, atom_dim, generator=g, dtype=torch.float64)
    edge_index = torch.randint(0, n_atoms, (2, n_edges), generator=g)
    edge_index[1, :n_atoms] = torch.arange(n_atoms)  # every atom is a centre at least once
    edge_attr = torch.rand(n_edges, edge_dim, generator=g, dtype=torch.float64)
    return x, edge_index, edge_attr


def gated_reference(layer: GatedConv, x, edge_index, edge_attr) -> torch.Tensor:
    """The original CGCNN ConvLayer, literally: concatenate per edge, one Linear, BN, gate, sum, BN, add."""
    neighbor, center = edge_index
    z = torch.cat([x[center], x[neighbor], edge_attr], dim=1)
    gated = layer.bn1(layer.fc_full(z))
    nbr_filter, nbr_core = gated.chunk(2, dim=1)
    messages = torch.sigmoid(nbr_filter) * F.softplus(nbr_core)
    summed = torch.zeros_like(x)
    for e in range(edge_index.shape[1]):
        summed[center[e]] += messages[e]
    return F.softplus(x + layer.bn2(summed))


@pytest.mark.parametrize("batchnorm", [True, False])
def test_gated_conv_equals_literal_formulation(batchnorm: bool) -> None:
    torch.manual_seed(3)
    x, edge_index, edge_attr = random_graph()
    layer = GatedConv(6, 5, act="softplus", batchnorm=batchnorm).double()
    with torch.no_grad():  # make the batch-norm affine parameters non-trivial too
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    layer.train()
    torch.testing.assert_close(
        layer(x, edge_index, edge_attr), gated_reference(layer, x, edge_index, edge_attr), atol=1e-5, rtol=0
    )
    layer.eval()
    if batchnorm:
        assert not torch.allclose(layer.bn1.running_mean, torch.zeros_like(layer.bn1.running_mean))
    out = layer(x, edge_index, edge_attr)
    torch.testing.assert_close(out, gated_reference(layer, x, edge_index, edge_attr), atol=1e-5, rtol=0)
    # guard: the reference is sensitive to the order of the centre and neighbour halves
    neighbor, center = edge_index
    z_swapped = torch.cat([x[neighbor], x[center], edge_attr], dim=1)
    f, c = layer.bn1(layer.fc_full(z_swapped)).chunk(2, dim=1)
    swapped = F.softplus(
        x + layer.bn2(torch.zeros_like(x).index_add_(0, center, torch.sigmoid(f) * F.softplus(c)))
    )
    assert (out - swapped).abs().max() > 1e-3


def test_gated_conv_on_real_graph_float32(table) -> None:
    """Same check in float32 on a crystal graph with the real 41-wide expansion."""
    model = build(table, n_conv=1, radius=8.0, gaussian_step=0.2)
    batch = training_batch()
    x = model.embedding(model.element_table[batch.z]).detach()
    edge_attr = model.expansion(batch.distance)
    layer = model.convs[0]
    for mode in (True, False):
        layer.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(
                layer(x, batch.edge_index, edge_attr),
                gated_reference(layer, x, batch.edge_index, edge_attr),
                atol=1e-5,
                rtol=0,
            )


def shared_reference(layer: SharedConv, x, edge_index, edge_attr) -> torch.Tensor:
    """Eq. 3 literally: v_i' = g[(Σ_j v_j ⊕ u_ij) W_c + v_i W_s + b], atom by atom."""
    neighbor, center = edge_index
    w_c = layer.lin_neighbors.weight.T
    w_s, b = layer.lin_self.weight.T, layer.lin_self.bias
    rows = []
    for i in range(x.shape[0]):
        total = torch.zeros(x.shape[1] + edge_attr.shape[1], dtype=x.dtype)
        for e in torch.nonzero(center == i).flatten().tolist():
            total = total + torch.cat([x[neighbor[e]], edge_attr[e]])
        rows.append(total @ w_c + x[i] @ w_s + b)
    return layer.act(layer.bn(torch.stack(rows)))


@pytest.mark.parametrize("batchnorm", [True, False])
def test_shared_conv_equals_eq3(batchnorm: bool) -> None:
    torch.manual_seed(4)
    x, edge_index, edge_attr = random_graph(seed=1)
    layer = SharedConv(6, 5, act="softplus", batchnorm=batchnorm).double()
    assert layer.lin_neighbors.bias is None
    for mode in (True, False):
        layer.train(mode)
        torch.testing.assert_close(
            layer(x, edge_index, edge_attr),
            shared_reference(layer, x, edge_index, edge_attr),
            atol=1e-5,
            rtol=0,
        )
    # the activation is the configured one
    assert isinstance(layer.act, torch.nn.Softplus)


def edge_gated_reference(layer: EdgeGatedConv, x, edge_index, edge_attr) -> tuple[torch.Tensor, torch.Tensor]:
    """The edge-gated layer as written in its docstring, with separate matrices and a loop over centres."""
    neighbor, center = edge_index
    a = x.shape[1]
    w = layer.lin_atoms.weight.T
    b = layer.lin_atoms.bias
    w_c, w_n, w_v, w_s = (w[:, k * a:(k + 1) * a] for k in range(4))
    b_c, b_n, b_v, b_s = (b[k * a:(k + 1) * a] for k in range(4))
    w_e, w_b = layer.lin_edges.weight.T.chunk(2, dim=1)
    m = x[center] @ w_c + b_c + x[neighbor] @ w_n + b_n + edge_attr @ w_e
    rows = []
    for i in range(x.shape[0]):
        mine = center == i
        gate = torch.sigmoid(m[mine])
        mean = (gate * (x[neighbor[mine]] @ w_v + b_v + edge_attr[mine] @ w_b)).sum(0) / (gate.sum(0) + 1e-6)
        rows.append(x[i] @ w_s + b_s + mean)
    new_x = x + F.softplus(layer.bn_atoms(torch.stack(rows)))
    return new_x, edge_attr + F.softplus(layer.bn_edges(m))


@pytest.mark.parametrize("batchnorm", [True, False])
def test_edge_gated_conv_equals_its_formula(batchnorm: bool) -> None:
    torch.manual_seed(6)
    x, edge_index, _ = random_graph(seed=2)
    edges = torch.randn(edge_index.shape[1], 6, dtype=torch.float64)  # bond states have the atoms' width
    layer = EdgeGatedConv(6, 5, act="softplus", batchnorm=batchnorm).double()
    for mode in (True, False):
        layer.train(mode)
        got_x, got_e = layer(x, edge_index, edges)
        want_x, want_e = edge_gated_reference(layer, x, edge_index, edges)
        torch.testing.assert_close(got_x, want_x, atol=1e-8, rtol=0)
        torch.testing.assert_close(got_e, want_e, atol=1e-8, rtol=0)
    # guard: bond states are per edge and direction (i -> j and j -> i differ), and they change the atoms
    assert (got_e - edges).abs().max() > 1e-3
    flipped, _ = layer(x, edge_index.flip(0), edges)
    assert (flipped - got_x).abs().max() > 1e-3


def test_edge_gated_network_has_a_bond_embedding_and_no_unused_last_update(table) -> None:
    model = build(table, conv="egated")
    assert model.updates_edges and model.merges_graphs
    assert model.edge_embedding[0].in_features == model.expansion.out_features
    assert model.edge_embedding[0].out_features == model.config.atom_fea_len
    assert not build(table, conv="gated").updates_edges and not hasattr(build(table), "edge_embedding")
    assert [conv.update_edges for conv in model.convs] == [True, False]  # nothing reads the last bond update
    assert not hasattr(model.convs[-1], "bn_edges")


PYG_CONVS = [c for c in CONVOLUTIONS if c.startswith("pyg-")]


def degree_histogram(batch: Batch) -> list[int]:
    """Atoms per in-degree of the batch's graphs (what training computes for layers that need it)."""
    return torch.bincount(torch.bincount(batch.edge_index[1], minlength=batch.num_nodes)).tolist()


@pytest.mark.parametrize("conv", CONV_CHOICES)
def test_every_registered_convolution_builds_and_trains_on_8_neighbour_graphs(table, conv: str) -> None:
    """One class plus one registry entry is a layer: built from its entry on 8-neighbour graphs, it trains, and
    what the entry says (merges graphs, needs the degree histogram) is what the network does."""
    batch = training_batch()
    assert int(torch.bincount(batch.edge_index[1]).max()) == GRAPH.max_neighbors == 8
    entry = ModelConfig(conv=conv).convolution
    histogram = degree_histogram(batch) if entry.needs_degree else None
    model = build(table, conv=conv, degree_histogram=histogram)
    forward_backward(model, batch)
    assert model.merges_graphs == entry.merges_graphs
    if entry.needs_degree:  # PNA's scalers see the real histogram, peaked at 8 here, not a fixed 12
        assert len(histogram) == 9 and histogram[8] > 0
        mean_degree = np.average(np.arange(9), weights=histogram)
        assert model.convs[0].conv.aggr_module.init_avg_deg_lin == pytest.approx(mean_degree)
        with pytest.raises(ValueError, match="histogram"):
            build(table, conv=conv)


@pytest.mark.parametrize("conv", PYG_CONVS)
def test_pyg_convolutions_train_and_are_permutation_invariant(table, conv: str) -> None:
    histogram = degree_histogram(training_batch()) if conv == "pyg-pna" else None
    forward_backward(build(table, conv=conv, degree_histogram=histogram), training_batch())
    model = warmed_up(build(table, conv=conv, degree_histogram=histogram))
    s = distorted_perovskite()
    perm = np.roll(np.arange(len(s)), 2)
    permuted = Structure(s.lattice, [s[i].specie for i in perm], s.frac_coords[perm])
    torch.testing.assert_close(predict(model, permuted), predict(model, s), atol=1e-5, rtol=0)


def test_weighted_batch_norm_equals_batch_norm_on_repeated_rows() -> None:
    """The hand-written backward of the merged-edge batch norm against autograd of nn.BatchNorm1d on the
    expanded rows (float64: agreement to rounding)."""
    from cgcnn_lab.model.convs import weighted_batch_norm

    torch.manual_seed(0)
    rows, channels = 50, 6
    x = torch.randn(rows, channels, dtype=torch.float64, requires_grad=True)
    weight = torch.randint(1, 5, (rows,)).double()
    upstream = torch.randn(rows, channels, dtype=torch.float64)
    merged, expanded = (nn.BatchNorm1d(channels).double() for _ in range(2))
    with torch.no_grad():
        merged.weight.uniform_(0.5, 1.5)
        merged.bias.uniform_(-1, 1)
    expanded.load_state_dict(merged.state_dict())

    (weighted_batch_norm(x, merged, weight) * upstream).sum().backward()
    grads = [x.grad.clone(), merged.weight.grad, merged.bias.grad]
    x.grad = None
    repeat = torch.repeat_interleave(torch.arange(rows), weight.long())
    # each merged row stands for `weight` copies; its upstream gradient is their sum (as sum_over_neighbors gives)
    (expanded(x[repeat]) * (upstream / weight[:, None])[repeat]).sum().backward()
    for a, b in zip(grads, [x.grad, expanded.weight.grad, expanded.bias.grad], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(merged.running_mean, expanded.running_mean)
    torch.testing.assert_close(merged.running_var, expanded.running_var)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_weighted_batch_norm_keeps_fp32_statistics_under_autocast(dtype) -> None:
    """``--precision 16-mixed``: Σ weight · var is far above fp16's 65,504 for a batch of a few thousand atoms;
    the running variance must stay what nn.BatchNorm1d (which autocast runs in fp32) gets on the expanded rows."""
    from cgcnn_lab.model.convs import weighted_batch_norm

    torch.manual_seed(0)
    rows, channels = 2_000, 8
    x = 3.0 * torch.randn(rows, channels) + 1.0
    weight = torch.randint(1, 40, (rows,)).float()  # ~40,000 unmerged rows
    merged, expanded = nn.BatchNorm1d(channels), nn.BatchNorm1d(channels)
    with torch.autocast("cpu", dtype=dtype):
        out = weighted_batch_norm(x, merged, weight)
    expanded(x[torch.repeat_interleave(torch.arange(rows), weight.long())])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(merged.running_var, expanded.running_var, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(merged.running_mean, expanded.running_mean, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("merged_atoms", [False, True])
def test_fused_gated_messages_equal_the_composite(monkeypatch, merged_atoms: bool) -> None:
    """The hand-written edge step (training, merged edges, with and without merged atoms) against autograd through
    the composite, in float64: outputs, every gradient and the batch-norm running statistics."""
    torch.manual_seed(5)
    n_atoms, n_edges, n_bonds = 30, 200, 40
    x = torch.randn(n_atoms, 6, dtype=torch.float64, requires_grad=True)
    edge_index = torch.randint(0, n_atoms, (2, n_edges))
    bonds = torch.randn(n_bonds, 5, dtype=torch.float64, requires_grad=True)
    inverse = torch.randint(0, n_bonds, (n_edges,))
    weight = torch.randint(1, 4, (n_edges,)).double()
    atom_weight = torch.randint(1, 5, (n_atoms,)).double() if merged_atoms else None
    fused = GatedConv(6, 5).double()
    with torch.no_grad():
        fused.bn1.weight.uniform_(0.5, 1.5)
        fused.bn1.bias.uniform_(-0.5, 0.5)
        fused.bn1.bias[0] = 30.0  # a gate channel saturated and a core channel past softplus' linear threshold
        fused.bn1.bias[6] = 30.0
    composite = GatedConv(6, 5).double()
    composite.load_state_dict(fused.state_dict())
    assert fused._fused(inverse, weight, x)
    results = []
    for layer in (fused, composite):
        if layer is composite:
            monkeypatch.setattr(GatedConv, "_fused", lambda *_: False)
        out = layer(x, edge_index, bonds, inverse, weight, atom_weight)
        upstream = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(0))
        grads = torch.autograd.grad((out * upstream).sum(), [x, bonds, *layer.parameters()])
        results.append((out, grads, layer.bn1.running_mean.clone(), layer.bn1.running_var.clone(),
                        layer.bn2.running_var.clone()))
    (out_f, grads_f, mean_f, var_f, atoms_f), (out_c, grads_c, mean_c, var_c, atoms_c) = results
    torch.testing.assert_close(atoms_f, atoms_c)
    torch.testing.assert_close(out_f, out_c, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads_f, grads_c, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(mean_f, mean_c)
    torch.testing.assert_close(var_f, var_c)
    assert fused.bn1.num_batches_tracked == composite.bn1.num_batches_tracked == 1
    fused.eval()
    assert not fused._fused(inverse, weight, x)  # evaluation uses the running statistics: the composite path


# ----------------------------------------------------------------------------- stoichiometry (--stoichiometry on)


def test_stoichiometry_features_count_elements_and_ratios() -> None:
    from cgcnn_lab.model.stoichiometry import stoichiometry

    z = torch.tensor([38, 22, 8, 8, 8, 38, 8, 22, 8, 8])  # SrTiO3, then SrO + TiO2 (4 O in all)
    batch = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    features = stoichiometry(z, batch, 2)
    fractions = torch.tensor([0.2, 0.2, 0.6])
    expected = [3.0, *(float(fractions.pow(p).sum().pow(1 / p)) for p in (2, 3, 5, 7, 10))]
    torch.testing.assert_close(features[0], torch.tensor(expected))
    # one merged O row standing for three O atoms (data/batching.py) counts three times
    merged = stoichiometry(torch.tensor([38, 22, 8]), torch.tensor([0, 0, 0]), 1, torch.tensor([1.0, 1.0, 3.0]))
    torch.testing.assert_close(merged[0], features[0])
    torch.testing.assert_close(features[1], features[0])  # same element fractions: same features, as mean pooling


def test_stoichiometry_reaches_the_output_network(table) -> None:
    """An ABO3 and an A2BB'O6 cell whose atoms average alike (an encoding that only knows O from cations): with
    --stoichiometry on the model tells them apart; pooling alone cannot."""
    two = np.zeros_like(table[:, :2])
    two[:, 1], two[8] = 1.0, [1.0, 0.0]  # O, or a cation
    cubic = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    abo3 = Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"], cubic)
    double = Structure(Lattice.cubic(3.9), ["Sr", "Mg", "O", "O", "O"], cubic) * (2, 1, 1)
    double.replace([i for i, site in enumerate(double) if site.specie.symbol == "Mg"][1], "W")  # Sr2MgWO6
    assert double.composition.reduced_formula == "Sr2MgWO6"  # cations 40 %, as in SrTiO3
    for on in (False, True):
        out = build(two, conv="none", stoichiometry=on).double().eval()(make_batch(abo3, double))
        assert torch.allclose(out[0], out[1]) != on
    for readout in ("crystal", "atom"):
        forward_backward(build(table, readout=readout, stoichiometry=True), make_batch(abo3, double))


def test_the_bias_before_batch_norm_gets_its_exact_zero_gradient(table) -> None:
    """Batch norm takes the mean out, so the gated layer's fc_full bias cannot change the output in training; its
    gradient is exactly zero (rounding noise would become ±lr steps under Adam)."""
    model = build(table)
    forward_backward(model, training_batch())
    for conv in model.convs:
        assert conv.fc_full.bias.grad is not None and not conv.fc_full.bias.grad.any()
        assert conv.fc_full.weight.grad.abs().sum() > 0
