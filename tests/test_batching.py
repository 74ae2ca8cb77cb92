"""Packed batches: the same graphs as PyG's collation, merged edges the same function, shuffles that resume."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch_geometric.loader import DataLoader

from cgcnn_lab.data.batching import PackedGraphs, PackedLoader, concatenated_ranges, merge_repeated_edges
from cgcnn_lab.data.dataset import build_dataset
from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.data.graph import GaussianExpansion, GraphConfig
from cgcnn_lab.data.sources import from_structures
from cgcnn_lab.model.network import CGCNN, ModelConfig


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    structures = []
    for i in range(24):  # cubic perovskites (many repeated edges) and distorted cells (few)
        a = 3.8 + 0.3 * rng.random()
        s = Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
                      [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        if i % 2:
            s.perturb(0.1, 0.0)
            s = s * (1, 1, 2)
        structures.append(s)
    raw = from_structures(structures, targets=rng.normal(size=(24, 1)))
    return build_dataset(raw, GraphConfig(), ElementEncoding.cgcnn92(), cache_dir=tmp_path_factory.mktemp("cache"))


def test_concatenated_ranges():
    out = concatenated_ranges(torch.tensor([5, 0, 9]), torch.tensor([2, 3, 0]))
    assert out.tolist() == [5, 6, 0, 1, 2]


def test_packed_batch_equals_pyg_collation(dataset):
    order = torch.tensor([3, 0, 7, 1, 22])
    ours = PackedGraphs(dataset.graphs, dataset.targets).batch(order)
    pyg = next(iter(DataLoader([dataset[int(i)] for i in order], batch_size=len(order))))
    for key in ("z", "edge_index", "distance", "batch", "ptr", "y"):
        assert torch.equal(getattr(ours, key), getattr(pyg, key)), key
    assert ours.entry.tolist() == order.tolist() and ours.num_graphs == 5


def test_merging_keeps_every_edge_counted(dataset):
    g = dataset.graphs
    ei, dist, ptr, weight = merge_repeated_edges(g.edge_index, g.distance, g.edge_ptr)
    assert weight.sum() == len(g.distance) and len(dist) < len(g.distance)
    assert np.array_equal(np.diff(ptr) > 0, g.n_edges > 0)
    for i in range(len(g)):  # per crystal: same multiset of (centre, neighbour, distance), centres still grouped
        a = sorted(zip(g.edge_index[1, g.edge_ptr[i]:g.edge_ptr[i + 1]], g.edge_index[0, g.edge_ptr[i]:g.edge_ptr[i + 1]],
                       g.distance[g.edge_ptr[i]:g.edge_ptr[i + 1]]))
        sl = slice(ptr[i], ptr[i + 1])
        b = sorted(x for c, n, d, w in zip(ei[1, sl], ei[0, sl], dist[sl], weight[sl]) for x in [(c, n, d)] * int(w))
        assert a == b
        assert (np.diff(ei[1, sl]) >= 0).all()


@pytest.mark.parametrize("conv", ["gated", "shared", "egated", "pyg-gatv2"])
def test_merged_edges_compute_the_same_function(dataset, conv, monkeypatch):
    """Outputs, gradients and batch-norm running statistics agree with and without merging, in training mode."""
    monkeypatch.setattr("cgcnn_lab.data.batching.MERGE_WORTHWHILE", 1.0)  # always merge
    enc = ElementEncoding.cgcnn92()
    results = []
    for collapse in (False, True):
        torch.manual_seed(0)
        model = CGCNN(ModelConfig(conv=conv, n_conv=2), enc.table).train()
        batch = PackedGraphs(dataset.graphs, dataset.targets, collapse=collapse).batch(torch.arange(len(dataset)))
        assert (batch.edge_weight is not None) == collapse
        out = model(batch)
        out.square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        buffers = [b.clone() for name, b in model.named_buffers() if "running" in name]
        model.eval()
        results.append((out.detach(), grads, buffers, model(batch).detach()))
    (o1, g1, b1, e1), (o2, g2, b2, e2) = results
    torch.testing.assert_close(o1, o2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(e1, e2, rtol=1e-4, atol=1e-5)
    scale = max(float(a.abs().max()) for a in g1)  # float32 sums in another order: tolerance from the gradient scale
    assert scale < 1e3, scale  # keeps the tolerance meaningful
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * max(1.0, scale))
    for a, b in zip(b1, b2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_edges_are_merged_only_when_it_pays(dataset):
    g = dataset.graphs
    cubic = PackedGraphs(g.select(np.arange(0, len(g), 2)), collapse=True)  # ideal cells: few distinct edges
    distorted = PackedGraphs(g.select(np.arange(1, len(g), 2)), collapse=True)  # perturbed supercells
    assert cubic.edge_weight is not None and len(cubic.distance) < 0.7 * cubic.edge_weight.sum()
    assert distorted.edge_weight is None and len(distorted.distance) == len(g.select(np.arange(1, len(g), 2)).distance)


@pytest.mark.parametrize("collapse", [False, True])
def test_streamed_batches_equal_in_memory_ones(dataset, collapse, monkeypatch):
    """Batches read from the memory-mapped cache are the in-memory batches, merged edges included."""
    monkeypatch.setattr("cgcnn_lab.data.batching.MERGE_WORTHWHILE", 1.0)  # always merge
    monkeypatch.setattr("cgcnn_lab.data.featurize.CHUNK_EDGES", 500)  # whole-set passes in many chunks
    assert dataset.graphs.mapped
    loaded = PackedGraphs(dataset.graphs, dataset.targets, collapse=collapse, stream=False)
    streamed = PackedGraphs(dataset.graphs, dataset.targets, collapse=collapse, stream=True)
    assert streamed.stream and not hasattr(streamed, "distance")  # nothing but pointers held
    assert streamed.merge == loaded.merge == collapse
    for index in (torch.tensor([3, 0, 7, 1, 22]), torch.randperm(len(dataset), generator=torch.Generator().manual_seed(1))):
        a, b = loaded.batch(index), streamed.batch(index)
        for f in fields(a):
            x, y = getattr(a, f.name), getattr(b, f.name)
            assert (x is None) == (y is None) == (f.name == "edge_weight" and not collapse), f.name
            if x is not None:
                assert x.dtype == y.dtype and torch.equal(x, y), f.name


def test_streaming_is_chosen_by_size_for_mapped_graphs_only(dataset, monkeypatch):
    monkeypatch.setattr("cgcnn_lab.data.batching.available_memory", lambda: 4 * dataset.graphs.nbytes() - 1)
    assert PackedGraphs(dataset.graphs).stream  # over a quarter of the free memory
    assert not PackedGraphs(dataset.graphs, stream=False).stream
    in_memory = dataset.graphs.select(np.arange(len(dataset)))
    assert not in_memory.mapped and not PackedGraphs(in_memory).stream  # nothing to stream from
    monkeypatch.setattr("cgcnn_lab.data.batching.available_memory", lambda: 4 * dataset.graphs.nbytes() + 1)
    assert not PackedGraphs(dataset.graphs).stream


def test_chunked_passes_equal_whole_set_ones(dataset, monkeypatch):
    g = dataset.graphs
    whole_degree = g.degree()
    monkeypatch.setattr("cgcnn_lab.data.featurize.CHUNK_EDGES", 100)
    assert len(list(g.chunks())) > 5
    assert [c for pair in g.chunks() for c in pair][::2] + [len(g)] == sorted({c for pair in g.chunks() for c in pair})
    np.testing.assert_array_equal(g.degree(), whole_degree)
    z, ptr = g.atoms(np.array([5, 2]))
    np.testing.assert_array_equal(z, np.concatenate([g.graph(5).z, g.graph(2).z]))
    np.testing.assert_array_equal(ptr, [0, g.n_atoms[5], g.n_atoms[5] + g.n_atoms[2]])


def test_shuffle_depends_on_seed_and_epoch_only(dataset):
    packed = PackedGraphs(dataset.graphs, dataset.targets)
    first = PackedLoader(packed, np.arange(20), 4, shuffle=True, seed=3)
    orders = []
    for epoch in range(3):
        first.sampler.set_epoch(epoch)
        orders.append(torch.cat([b.entry for b in first]))
    assert not torch.equal(orders[0], orders[1])
    resumed = PackedLoader(packed, np.arange(20), 4, shuffle=True, seed=3)  # a new process after a restart
    resumed.sampler.set_epoch(2)
    assert torch.equal(torch.cat([b.entry for b in resumed]), orders[2])
    assert sorted(orders[1].tolist()) == list(range(20))


def test_a_single_crystal_last_batch_is_dropped_when_training(dataset):
    packed = PackedGraphs(dataset.graphs, dataset.targets)
    assert [b.num_graphs for b in PackedLoader(packed, np.arange(9), 4, shuffle=True)] == [4, 4]
    assert [b.num_graphs for b in PackedLoader(packed, np.arange(9), 4)] == [4, 4, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_expansion_has_no_denormals(dtype):
    d = torch.linspace(0, 12, 500, dtype=dtype)
    expansion = GaussianExpansion().to(dtype)
    u = expansion(d)
    assert not ((u != 0) & (u < 1e-13)).any()  # nothing tiny survives: exact zeros instead
    exact = torch.exp(-((d.unsqueeze(-1) - expansion.centers) ** 2) / expansion.width**2)
    kept = exact >= 1e-13
    torch.testing.assert_close(u[kept], exact[kept])  # everything else is the Gaussian itself
    assert (u[~kept] == 0).all() and kept.float().mean() < 0.5
    assert u.max() == pytest.approx(1.0, abs=1e-3)
