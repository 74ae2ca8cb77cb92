"""Tests for cgcnn_lab.data.graph: periodic M-nearest neighbour lists and the Gaussian bond expansion."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from cgcnn_lab.data.graph import (
    CrystalGraph,
    GraphConfig,
    GraphError,
    nearest_neighbor_edges,
    structure_to_graph,
)
from cgcnn_lab.model.expansion import GaussianExpansion

TOL = 1e-5
ELEMENTS = ["H", "Li", "C", "O", "Na", "Mg", "Si", "Cl", "Ti", "Fe", "Sr", "Ba"]


# ----------------------------------------------------------------------------- helpers


def random_structure(rng: np.random.Generator, n_atoms: int, min_dist: float = 0.7) -> Structure:
    """A random triclinic cell with ``n_atoms`` atoms of random elements, no two closer than ``min_dist`` Å."""
    while True:
        a, b, c = rng.uniform(2.5, 6.5, size=3)
        alpha, beta, gamma = rng.uniform(65.0, 115.0, size=3)
        try:
            lattice = Lattice.from_parameters(a, b, c, alpha, beta, gamma)
        except ValueError:
            continue
        if not lattice.volume > 0.3 * a * b * c:  # avoid nearly degenerate cells
            continue
        frac = rng.uniform(0.0, 1.0, size=(n_atoms, 3))
        species = list(rng.choice(ELEMENTS, size=n_atoms))
        structure = Structure(lattice, species, frac)
        if n_atoms == 1 or structure.distance_matrix[np.triu_indices(n_atoms, 1)].min() > min_dist:
            return structure


def brute_force_neighbors(structure: Structure, radius: float) -> list[list[tuple[int, float]]]:
    """All (neighbour index, distance) within ``radius`` of every atom, over all periodic images, sorted by
    distance. Independent of pymatgen's search: enumerates lattice translations |n_k| <= ceil(r / h_k) + 1,
    where h_k is the cell height perpendicular to the other two lattice vectors."""
    lattice = np.asarray(structure.lattice.matrix, dtype=np.float64)  # rows are the lattice vectors
    frac = np.asarray(structure.frac_coords, dtype=np.float64) % 1.0
    cart = frac @ lattice
    volume = abs(np.linalg.det(lattice))
    heights = [
        volume / np.linalg.norm(np.cross(lattice[(k + 1) % 3], lattice[(k + 2) % 3])) for k in range(3)
    ]
    # |frac difference| < 1, so an image within r needs |n_k| <= r / h_k + 1.
    ranges = [np.arange(-(math.ceil(radius / h) + 1), math.ceil(radius / h) + 2) for h in heights]
    shifts = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
    zero = np.flatnonzero(~shifts.any(axis=1))[0]
    offsets = shifts @ lattice  # [T, 3]
    result = []
    for i in range(len(structure)):
        # displacement of image (j, n) from atom i: cart_j + n L - cart_i
        d = np.linalg.norm(cart[None, :, :] + offsets[:, None, :] - cart[i], axis=-1)  # [T, N]
        d[zero, i] = np.inf  # exclude the atom itself (zero offset)
        t_idx, j_idx = np.nonzero(d <= radius)
        pairs = sorted(zip(j_idx.tolist(), d[t_idx, j_idx].tolist()), key=lambda p: p[1])
        result.append(pairs)
    return result


def expected_nearest(pairs: list[tuple[int, float]], m: int) -> tuple[np.ndarray, dict, dict]:
    """From the full sorted neighbour list of one atom: the M nearest distances, and the neighbour multiset
    split into the part below any tie straddling the M-th distance (``certain``: index -> sorted distances)
    and the tied group at the cut (``tied``: index -> count of candidates)."""
    dists = np.array([d for _, d in pairs])
    kept = dists[:m]
    certain: dict[int, list[float]] = defaultdict(list)
    tied: dict[int, int] = defaultdict(int)
    straddles = len(dists) > m and dists[m] - dists[m - 1] < TOL
    cut = dists[m - 1] if straddles else np.inf
    for j, d in pairs[:m] if not straddles else pairs:
        if d < cut - TOL:
            certain[j].append(d)
        elif straddles and abs(d - cut) < TOL:
            tied[j] += 1
    return kept, certain, tied


def edges_by_center(graph: CrystalGraph) -> list[list[tuple[int, float]]]:
    out: list[list[tuple[int, float]]] = [[] for _ in range(graph.n_atoms)]
    for j, i, d in zip(graph.edge_index[0].tolist(), graph.edge_index[1].tolist(), graph.distance.tolist()):
        out[i].append((j, d))
    return out


def check_against_brute_force(structure: Structure, radius: float, m: int) -> int:
    """Assert the graph equals the brute-force M-nearest lists; returns the number of straddling ties seen."""
    brute = brute_force_neighbors(structure, radius)
    if any(len(p) == 0 for p in brute):
        with pytest.raises(GraphError):
            structure_to_graph(structure, GraphConfig(radius=radius, max_neighbors=m))
        return 0
    graph = structure_to_graph(structure, GraphConfig(radius=radius, max_neighbors=m), "random")
    assert graph.edge_index.shape == (2, graph.n_edges)
    assert graph.edge_index.dtype == np.int64 and graph.distance.dtype == np.float32
    np.testing.assert_array_equal(graph.z, [site.specie.Z for site in structure])
    n_ties = 0
    for i, (got, pairs) in enumerate(zip(edges_by_center(graph), brute)):
        kept, certain, tied = expected_nearest(pairs, m)
        assert len(got) == len(kept) == min(m, len(pairs)), f"atom {i}"
        np.testing.assert_allclose(sorted(d for _, d in got), kept, atol=TOL, rtol=0, err_msg=f"atom {i}")
        got_certain: dict[int, list[float]] = defaultdict(list)
        got_tied: dict[int, int] = defaultdict(int)
        cut = kept[-1] if tied else np.inf
        for j, d in got:
            if d < cut - TOL:
                got_certain[j].append(d)
            else:
                got_tied[j] += 1
        assert set(got_certain) == set(certain), f"atom {i}: neighbour identities differ"
        for j in certain:
            np.testing.assert_allclose(sorted(got_certain[j]), sorted(certain[j]), atol=TOL, rtol=0)
        if tied:
            n_ties += 1
            # the tied edges that were kept are some choice among the tied candidates
            assert all(got_tied[j] <= tied[j] for j in got_tied), f"atom {i}: kept a non-candidate at the cut"
            assert sum(got_tied.values()) == m - sum(len(v) for v in certain.values())
    return n_ties


# ----------------------------------------------------------------------------- neighbour lists


@pytest.mark.parametrize("seed", range(12))
def test_neighbor_lists_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    structure = random_structure(rng, n_atoms=1 + seed % 8)
    for radius, m in [(2.2, 3), (3.0, 4), (4.5, 1), (4.5, 7), (5.0, 12), (6.0, 30), (6.0, 500)]:
        check_against_brute_force(structure, radius, m)


def test_brute_force_comparison_sees_ties() -> None:
    """Self-images at ±n tie exactly, so odd M in a one-atom cell always cuts through a tie."""
    structure = random_structure(np.random.default_rng(123), n_atoms=1)
    assert check_against_brute_force(structure, 6.0, 5) == 1


def test_brute_force_helper_itself() -> None:
    """The reference must find e.g. the 6 + 12 neighbours of simple cubic (a = 3): 3 Å and 3√2 Å."""
    structure = Structure(Lattice.cubic(3.0), ["Po"], [[0, 0, 0]])
    (pairs,) = brute_force_neighbors(structure, 4.3)
    d = np.array([p[1] for p in pairs])
    assert len(d) == 18
    np.testing.assert_allclose(d[:6], 3.0)
    np.testing.assert_allclose(d[6:], 3.0 * math.sqrt(2))


def test_nearest_neighbor_edges_keeps_m_smallest_per_center() -> None:
    centers = np.array([1, 0, 1, 0, 1, 0, 2])
    neighbors = np.array([0, 1, 2, 2, 0, 1, 0])
    distances = np.array([3.0, 2.0, 1.0, 5.0, 2.0, 4.0, 1.5])
    edge_index, dist = nearest_neighbor_edges(centers, neighbors, distances, n_atoms=4, max_neighbors=2)
    # atom 0: (1, 2.0), (1, 4.0); atom 1: (2, 1.0), (0, 2.0); atom 2: (0, 1.5); atom 3: none
    assert edge_index.tolist() == [[1, 1, 2, 0, 0], [0, 0, 1, 1, 2]]
    np.testing.assert_allclose(dist, [2.0, 4.0, 1.0, 2.0, 1.5])


def test_shell_tol_keeps_the_rest_of_a_split_shell() -> None:
    # atom 0: 1.0, then a shell of three at 2.0 (one of them 2.0 + 1e-4), then 3.0; atom 1: one neighbour only
    centers = np.array([0, 0, 0, 0, 0, 1])
    neighbors = np.array([1, 2, 3, 4, 5, 0])
    distances = np.array([2.0, 1.0, 3.0, 2.0001, 2.0, 1.0])
    hard, _ = nearest_neighbor_edges(centers, neighbors, distances, n_atoms=3, max_neighbors=2)
    assert hard.tolist() == [[2, 1, 0], [0, 0, 1]]  # pymatgen's order decides which of the shell survives
    exact, _ = nearest_neighbor_edges(centers, neighbors, distances, n_atoms=3, max_neighbors=2, shell_tol=0.0)
    assert exact.tolist() == [[2, 1, 5, 0], [0, 0, 0, 1]]  # the exact tie, not the one 1e-4 Å farther
    whole, d = nearest_neighbor_edges(centers, neighbors, distances, n_atoms=3, max_neighbors=2, shell_tol=0.01)
    assert whole.tolist() == [[2, 1, 5, 4, 0], [0, 0, 0, 0, 1]]
    np.testing.assert_allclose(d, [1.0, 2.0, 2.0, 2.0001, 1.0], rtol=1e-6)
    # a tolerance wide enough for the next shell, and M beyond the neighbours an atom has
    wide, _ = nearest_neighbor_edges(centers, neighbors, distances, n_atoms=3, max_neighbors=9, shell_tol=1.0)
    assert wide.shape[1] == 6


def test_shell_tol_gives_equivalent_atoms_the_same_graph() -> None:
    # cubic SrTiO3: each O has 2 Ti at a/2, then 12 (4 Sr + 8 O) at a/sqrt(2). M = 12 keeps 10 of that shell, as
    # pymatgen's search order happens to return them (7 O and 3 of the 4 equivalent Sr here); completing the shell
    # gives each O all 14, and Ti its 8 Sr instead of 6.
    a = 3.905
    srtio3 = Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
                       [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])

    def o_neighbours(graph: CrystalGraph) -> list[list[int]]:
        return [sorted(graph.z[graph.edge_index[0][graph.edge_index[1] == i]].tolist()) for i in (2, 3, 4)]

    hard = structure_to_graph(srtio3, GraphConfig(max_neighbors=12), "SrTiO3")
    np.testing.assert_array_equal(hard.degree(), 12)
    shells = structure_to_graph(srtio3, GraphConfig(max_neighbors=12, shell_tol=0.01), "SrTiO3")
    assert shells.degree().tolist() == [12, 14, 14, 14, 14]  # Sr: 12 O; Ti: 6 O + 8 Sr; O: 2 Ti + 4 Sr + 8 O
    assert o_neighbours(shells) == [[8] * 8 + [22] * 2 + [38] * 4] * 3
    np.testing.assert_allclose(np.sort(shells.distance[shells.edge_index[1] == 2])[2:], a / math.sqrt(2), rtol=1e-6)
    # the cache tells the two graphs apart; the original's key is unchanged
    assert "shell_tol" in GraphConfig(shell_tol=0.01).neighbor_key()
    assert GraphConfig().neighbor_key() == {"radius": 8.0, "max_neighbors": 12}
    with pytest.raises(ValueError, match="shell_tol"):
        GraphConfig(shell_tol=-0.1)


def rocksalt() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_rocksalt_shells() -> None:
    structure = rocksalt()
    assert len(structure) == 8
    graph = structure_to_graph(structure, GraphConfig(radius=5.0, max_neighbors=18), "NaCl")
    z = graph.z
    for i, edges in enumerate(edges_by_center(graph)):
        edges = sorted(edges, key=lambda e: e[1])
        assert len(edges) == 18
        d = np.array([e[1] for e in edges])
        np.testing.assert_allclose(d[:6], 2.82, atol=1e-5)
        np.testing.assert_allclose(d[6:], 2.82 * math.sqrt(2), atol=1e-5)
        assert 2.82 * math.sqrt(2) == pytest.approx(3.988, abs=1e-3)
        # first shell: the other species; second shell: the same species
        assert all(z[j] != z[i] for j, _ in edges[:6])
        assert all(z[j] == z[i] for j, _ in edges[6:])
    # with M = 6 only the Na–Cl bonds remain, even with a large radius
    graph6 = structure_to_graph(structure, GraphConfig(radius=8.0, max_neighbors=6), "NaCl")
    assert graph6.n_edges == 6 * 8
    np.testing.assert_array_equal(graph6.degree(), 6)
    np.testing.assert_allclose(graph6.distance, 2.82, atol=1e-5)
    assert (graph6.z[graph6.edge_index[0]] != graph6.z[graph6.edge_index[1]]).all()


def test_isolated_atom_error_names_structure_and_atom() -> None:
    # in a 10 Å cube, O is 2.5 Å from Fe, while H at the body centre is 7.5 Å from anything
    structure = Structure(Lattice.cubic(10.0), ["Fe", "O", "H"], [[0, 0, 0], [0.25, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(GraphError, match=r"'my-crystal'.*atom 2 \(H\)"):
        structure_to_graph(structure, GraphConfig(radius=3.0, max_neighbors=12), "my-crystal")
    graph = structure_to_graph(structure, GraphConfig(radius=8.0, max_neighbors=12), "my-crystal")
    assert graph.degree().min() >= 1


def test_empty_and_disordered_structures_raise() -> None:
    with pytest.raises(GraphError, match="no atoms"):
        structure_to_graph(Structure(Lattice.cubic(3.0), [], []), GraphConfig(), "empty")
    disordered = Structure(Lattice.cubic(3.0), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])
    with pytest.raises(GraphError, match="disordered"):
        structure_to_graph(disordered, GraphConfig(), "dis")


# ----------------------------------------------------------------------------- Gaussian expansion


def test_gaussian_expansion_size() -> None:
    assert GraphConfig().n_gaussians == 41
    assert GaussianExpansion(8.0, 0.2).out_features == 41
    assert GaussianExpansion.from_config(GraphConfig()).out_features == 41
    for radius, step in [(6.0, 0.5), (5.0, 0.1), (4.0, 0.25)]:
        cfg = GraphConfig(radius=radius, gaussian_step=step)
        expected = round(radius / step) + 1
        assert cfg.n_gaussians == expected == GaussianExpansion.from_config(cfg).out_features


def test_gaussian_expansion_values() -> None:
    exp = GaussianExpansion(8.0, 0.2)
    k = 17  # grid point 3.4 Å
    mu = 0.2 * k
    out = exp(torch.tensor([mu, mu + 0.2, mu - 0.2, 0.0]))
    assert out.shape == (4, 41)
    assert out[0, k].item() == pytest.approx(1.0, abs=1e-6)
    assert out[0].argmax().item() == k
    assert out[1, k].item() == pytest.approx(math.exp(-1), abs=1e-6)
    assert out[2, k].item() == pytest.approx(math.exp(-1), abs=1e-6)
    assert out[0, k + 2].item() == pytest.approx(math.exp(-4), abs=1e-6)
    assert out[3, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert (out >= 0).all() and (out <= 1).all()
    # explicit width: exp(-1) one width from the centre
    wide = GaussianExpansion(8.0, 0.2, width=0.5)
    assert wide(torch.tensor([mu + 0.5]))[0, k].item() == pytest.approx(math.exp(-1), abs=1e-6)
    # batch shape preserved
    assert exp(torch.rand(3, 5) * 8).shape == (3, 5, 41)


# ----------------------------------------------------------------------------- GraphConfig


def test_graph_config_defaults_and_key() -> None:
    cfg = GraphConfig()
    assert (cfg.radius, cfg.max_neighbors, cfg.gaussian_step, cfg.width) == (8.0, 12, 0.2, 0.2)
    assert GraphConfig(gaussian_width=0.3).width == 0.3
    assert cfg.neighbor_key() == {"radius": 8.0, "max_neighbors": 12}
    assert cfg.to_dict()["gaussian_width"] is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"radius": 0.0}, "radius"),
        ({"radius": -1.0}, "radius"),
        ({"radius": float("nan")}, "radius"),
        ({"max_neighbors": 0}, "max_neighbors"),
        ({"gaussian_step": 0.0}, "gaussian_step"),
        ({"gaussian_step": 9.0}, "gaussian_step"),
        ({"gaussian_width": 0.0}, "gaussian_width"),
        ({"gaussian_width": -0.2}, "gaussian_width"),
    ],
)
def test_graph_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GraphConfig(**kwargs)


@pytest.mark.parametrize(
    "radius, step, width", [(8.0, 0.0, None), (8.0, -0.2, None), (8.0, 0.2, 0.0), (0.0, 0.2, None)]
)
def test_gaussian_expansion_validation(radius: float, step: float, width: float | None) -> None:
    with pytest.raises(ValueError, match="step < radius and width > 0"):
        GaussianExpansion(radius, step, width)


def test_degenerate_thin_cells_are_refused_quickly():
    """A nearly flat cell would make the neighbour search generate billions of images: refused at once."""
    import time

    from pymatgen.core import Lattice, Structure

    from cgcnn_lab.data.graph import GraphError, search_points

    flat = Structure(Lattice([[10, 0, 0], [0, 10, 0], [5, 5, 0.01]]), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    start = time.perf_counter()
    with pytest.raises(GraphError, match=r"degenerate lattice: the cell is only .* thick"):
        structure_to_graph(flat, GraphConfig(), "flat")
    assert time.perf_counter() - start < 1.0
    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert search_points(nacl.lattice.matrix, 2, 8.0) == 2 * 5**3  # (2 ceil(8 / 5.64) + 1)^3 images per atom
