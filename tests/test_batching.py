"""Packed batches: the same graphs as PyG's collation, merged graphs the same function, shuffles that resume."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch_geometric.loader import DataLoader

from cgcnn_lab.data.batching import PackedGraphs, PackedLoader, concatenated_ranges, equivalent_atoms, merge_equivalent
from cgcnn_lab.data.dataset import build_dataset
from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.data.featurize import GraphSet
from cgcnn_lab.data.graph import GraphConfig
from cgcnn_lab.data.sources import from_structures
from cgcnn_lab.model.expansion import GaussianExpansion
from cgcnn_lab.model.network import CGCNN, ModelConfig
from cgcnn_lab.targets import TargetTransform


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    structures = []
    for i in range(24):  # cubic perovskites (many repeated edges) and distorted cells (few)
        a = 3.8 + 0.3 * rng.random()
        s = Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
                      [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        if i % 2:
            s = s * (1, 1, 2)
            s.perturb(0.1, 0.0)
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


def _crystal(g, i):
    """(z, edge_index, distance) of crystal i of a GraphSet."""
    atoms, edges = slice(g.atom_ptr[i], g.atom_ptr[i + 1]), slice(g.edge_ptr[i], g.edge_ptr[i + 1])
    return g.z[atoms], g.edge_index[:, edges], g.distance[edges]


def test_merged_graphs_are_the_quotient_by_equivalent_atoms(dataset):
    """Every atom sees exactly its class's merged edges, and every atom and edge is counted once."""
    g = dataset.graphs
    classes = equivalent_atoms(g.z, g.atom_ptr, g.edge_index, g.distance, g.edge_ptr)
    z, atom_ptr, atom_weight, ei, dist, edge_ptr, edge_weight = merge_equivalent(
        g.z, g.atom_ptr, g.edge_index, g.distance, g.edge_ptr)
    assert len(z) < len(g.z) and len(dist) < len(g.distance)
    for i in range(len(g)):
        z0, ei0, d0 = _crystal(g, i)
        cls = classes[g.atom_ptr[i] : g.atom_ptr[i + 1]]
        rows, w = slice(atom_ptr[i], atom_ptr[i + 1]), atom_weight[atom_ptr[i] : atom_ptr[i + 1]]
        edges = slice(edge_ptr[i], edge_ptr[i + 1])
        assert w.sum() == len(z0) and (w[ei[1, edges]] * edge_weight[edges]).sum() == len(d0)
        first = {c: k for k, c in reversed(list(enumerate(cls)))}  # the kept atom of each class
        kept = sorted(first.values())
        assert z[rows].tolist() == z0[kept].tolist()
        assert sorted(w.tolist()) == sorted(np.bincount(np.unique(cls, return_inverse=True)[1].ravel()).tolist())
        row_of = {c: kept.index(k) for c, k in first.items()}
        merged = {r: sorted((int(n), float(d)) for c, n, d, m in zip(ei[1, edges], ei[0, edges], dist[edges],
                                                                    edge_weight[edges]) if c == r for _ in range(m))
                  for r in range(len(kept))}
        for atom in range(len(z0)):  # equitable: the atom's own edges, by neighbour class, are its class's
            own = sorted((row_of[cls[n]], float(d)) for c, n, d in zip(ei0[1], ei0[0], d0) if c == atom)
            assert own == merged[row_of[cls[atom]]], (i, atom)
        assert (np.diff(ei[1, edges]) >= 0).all()  # centres still grouped


def test_equivalent_atoms_of_known_crystals():
    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    perovskite = Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
                           [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    distorted = perovskite.copy()
    distorted.perturb(0.1, 0.0)
    raw = from_structures([rocksalt, perovskite, distorted, distorted * (1, 1, 2)])
    g = build_dataset(raw, GraphConfig(), ElementEncoding.cgcnn92(), use_cache=False).graphs
    classes = equivalent_atoms(g.z, g.atom_ptr, g.edge_index, g.distance, g.edge_ptr)
    sizes = [sorted(np.unique(classes[g.atom_ptr[i] : g.atom_ptr[i + 1]], return_counts=True)[1].tolist()) for i in range(4)]
    # 8 atoms of 2 kinds; Sr, Ti, 3 O; nothing alike; a supercell is its cell again
    assert sizes == [[4, 4], [1, 1, 3], [1, 1, 1, 1, 1], [2, 2, 2, 2, 2]]


def test_hash_collisions_fall_back_to_exact_classes(dataset, monkeypatch):
    """With every multiset hashing alike, the check finds the classes wrong and the exact refinement takes over."""
    g = dataset.graphs
    args = (g.z, g.atom_ptr, g.edge_index, g.distance, g.edge_ptr)
    hashed = equivalent_atoms(*args)
    monkeypatch.setattr("cgcnn_lab.data.batching._mix", lambda x: np.zeros_like(x))
    exact = equivalent_atoms(*args)
    same = lambda a, b: len(np.unique(np.stack([a, b]), axis=1).T) == len(np.unique(a)) == len(np.unique(b))
    assert same(hashed, exact) and len(np.unique(exact)) < len(g.z)


@pytest.mark.parametrize(("conv", "pool", "readout"), [
    ("gated", "mean", "crystal"), ("gated", "mean", "atom"), ("gated", "max", "crystal"), ("shared", "sum", "crystal"),
    ("egated", "mean", "crystal"), ("none", "sum", "crystal"), ("pyg-gatv2", "mean", "crystal"),
])
def test_merged_graphs_compute_the_same_function(dataset, conv, pool, readout, monkeypatch):
    """Outputs, gradients, batch-norm running statistics and crystal sizes agree with and without merging, in
    training mode."""
    monkeypatch.setattr("cgcnn_lab.data.batching.MERGE_WORTHWHILE", 1.0)  # always merge
    enc = ElementEncoding.cgcnn92()
    results = []
    for collapse in (False, True):
        torch.manual_seed(0)
        model = CGCNN(ModelConfig(conv=conv, n_conv=2, pool=pool, readout=readout), enc.table).train()
        merged = collapse and model.merges_graphs
        batch = PackedGraphs(dataset.graphs, dataset.targets, collapse=merged).batch(torch.arange(len(dataset)))
        assert (batch.edge_weight is not None) == (batch.atom_weight is not None) == merged
        assert (batch.num_nodes < len(dataset.graphs.z)) == merged
        out = model(batch)
        out.square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        buffers = [b.clone() for name, b in model.named_buffers() if "running" in name]
        model.eval()
        results.append((out.detach(), grads, buffers, model(batch).detach(), TargetTransform.sizes(batch)))
    (o1, g1, b1, e1, s1), (o2, g2, b2, e2, s2) = results
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)
    torch.testing.assert_close(o1, o2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(e1, e2, rtol=1e-4, atol=1e-5)
    scale = max(float(a.abs().max()) for a in g1)  # float32 sums in another order: tolerance from the gradient scale
    assert scale < 1e3, scale  # keeps the tolerance meaningful
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * max(1.0, scale))
    for a, b in zip(b1, b2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_element_references_count_merged_atoms(dataset, monkeypatch):
    monkeypatch.setattr("cgcnn_lab.data.batching.MERGE_WORTHWHILE", 1.0)
    transform = TargetTransform(True, [0.1], [2.0], np.linspace(-3, 3, 119)[:, None].tolist())
    out = torch.linspace(-1, 1, len(dataset)).unsqueeze(1)
    decoded = [transform.decode(out, PackedGraphs(dataset.graphs, collapse=c).batch(torch.arange(len(dataset))))
               for c in (False, True)]
    torch.testing.assert_close(decoded[0], decoded[1])


def test_atom_dropout_is_not_merged():
    enc = ElementEncoding.cgcnn92()
    assert not CGCNN(ModelConfig(readout="atom", dropout=0.1), enc.table).merges_graphs
    assert CGCNN(ModelConfig(readout="crystal", dropout=0.1), enc.table).merges_graphs


def test_edges_are_merged_only_when_it_pays(dataset):
    g = dataset.graphs
    cubic = PackedGraphs(g.select(np.arange(0, len(g), 2)), collapse=True)  # ideal cells: few distinct edges
    distorted = PackedGraphs(g.select(np.arange(1, len(g), 2)), collapse=True)  # perturbed supercells
    assert cubic.edge_weight is not None and len(cubic.distance) < 0.7 * len(g.select(np.arange(0, len(g), 2)).distance)
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
            assert (x is None) == (y is None) == (f.name in ("edge_weight", "atom_weight") and not collapse), f.name
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
    edgeless = GraphSet(np.array(["a", "b", "c"]), np.ones(3, dtype=np.int16), np.arange(4),
                        np.zeros((2, 2), dtype=np.int32), np.ones(2, dtype=np.float32), np.array([0, 0, 0, 2]))
    assert list(edgeless.chunks(1)) == [(0, 2), (2, 3)]  # the leading crystals without edges are covered too
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


@pytest.mark.parametrize("stream", [False, True])
def test_merged_share_is_reported(dataset, stream, monkeypatch):
    monkeypatch.setattr("cgcnn_lab.data.batching.MERGE_WORTHWHILE", 1.0)
    packed = PackedGraphs(dataset.graphs, collapse=True, stream=stream)
    full = PackedGraphs(dataset.graphs, collapse=False, stream=False)
    merged = PackedGraphs(dataset.graphs, collapse=True, stream=False)
    assert packed.merge and full.kept == (1.0, 1.0)
    assert packed.kept == pytest.approx((len(merged.z) / len(full.z), len(merged.distance) / len(full.distance)))
    assert packed.kept[0] < 1 and packed.kept[1] < 1
