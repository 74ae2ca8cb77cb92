"""Crystal -> graph: periodic neighbour lists and the M-nearest cut (the Gaussian bond expansion of the distances
is a model layer: ``cgcnn_lab.model.expansion``).

A crystal graph is stored as plain arrays (atomic numbers, directed edges, distances) rather than expanded
features: the 41-wide Gaussian expansion of each distance is recomputed by the model on the fly, which keeps
the on-disk cache ~40x smaller and lets the expansion grid change without re-featurising.

Edge convention (as in PyTorch Geometric): ``edge_index[0]`` is the neighbour j (message source) and
``edge_index[1]`` the centre atom i that aggregates over its neighbours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pymatgen.core import Structure


class GraphError(ValueError):
    """A structure that cannot be turned into a crystal graph (e.g. an atom with no neighbour)."""


@dataclass(frozen=True)
class GraphConfig:
    """Graph parameters. Defaults are the original CGCNN's (8 Å, 12 neighbours, 0.2 Å grid)."""

    radius: float = 8.0
    max_neighbors: int = 12
    gaussian_step: float = 0.2
    gaussian_width: float | None = None  # None: same as the step, as in the original code
    # The original code gives every atom exactly max_neighbors edges: atoms with fewer neighbours within the
    # radius get fake ones (the crystal's atom 0 at radius + 1 Å). Off by default (variable degree, no fake
    # bonds); on to reproduce models trained with the original code (see cgcnn_lab.original).
    pad_to_max: bool = False
    # The M-th and (M+1)-th neighbours are often equally far (a third of the atoms of the Castelli perovskites at
    # M = 12: cubic cells have shells of 8 and 12 equal bonds), and then the hard cut keeps the part of the shell
    # that pymatgen's search order returns first, breaking the cell's symmetry. With shell_tol (Å) every neighbour
    # within shell_tol of the M-th is kept too. None: the original's hard cut (measured better; BENCHMARKS.md).
    shell_tol: float | None = None

    def __post_init__(self) -> None:
        if not self.radius > 0:
            raise ValueError(f"radius must be > 0 Å, got {self.radius}")
        if self.max_neighbors < 1:
            raise ValueError(f"max_neighbors must be >= 1, got {self.max_neighbors}")
        if not 0 < self.gaussian_step < self.radius:
            raise ValueError(f"gaussian_step must be in (0, radius), got {self.gaussian_step}")
        if self.gaussian_width is not None and not self.gaussian_width > 0:
            raise ValueError(f"gaussian_width must be > 0 Å (or None), got {self.gaussian_width}")
        if self.shell_tol is not None and not 0 <= self.shell_tol < self.radius:
            raise ValueError(f"shell_tol must be in [0, radius) Å (or None), got {self.shell_tol}")
        if self.shell_tol is not None and self.pad_to_max:
            raise ValueError("shell_tol and pad_to_max exclude each other: padding reproduces the original's graph")

    @property
    def width(self) -> float:
        return self.gaussian_step if self.gaussian_width is None else self.gaussian_width

    @property
    def n_gaussians(self) -> int:
        """Number of grid points 0, step, ..., radius (41 at the defaults), as ``np.arange(0, r + step, step)``."""
        return len(np.arange(0.0, self.radius + self.gaussian_step, self.gaussian_step))

    def neighbor_key(self) -> dict:
        """The parameters the neighbour list depends on (the expansion does not change the cache)."""
        key: dict = {"radius": float(self.radius), "max_neighbors": int(self.max_neighbors)}
        if self.pad_to_max:  # only when on, so caches written before the option existed stay valid
            key["pad_to_max"] = True
        if self.shell_tol is not None:
            key["shell_tol"] = float(self.shell_tol)
        return key

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CrystalGraph:
    """One crystal as arrays: ``z`` [N], ``edge_index`` [2, E] (source j, target i), ``distance`` [E] in Å."""

    z: np.ndarray
    edge_index: np.ndarray
    distance: np.ndarray

    @property
    def n_atoms(self) -> int:
        return int(self.z.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.distance.shape[0])

    def degree(self) -> np.ndarray:
        return np.bincount(self.edge_index[1], minlength=self.n_atoms)


def nearest_neighbor_edges(
    centers: np.ndarray, neighbors: np.ndarray, distances: np.ndarray, n_atoms: int, max_neighbors: int,
    shell_tol: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``max_neighbors`` nearest neighbours of every centre atom, vectorised; with ``shell_tol`` also
    every neighbour within ``shell_tol`` Å of the M-th nearest (the rest of a shell the cut would split).

    Sorting by (centre, distance) with a stable sort keeps pymatgen's order among equal distances, which is
    what the original code's stable ``sorted(..., key=distance)`` does. Returns (edge_index [2, E], distance [E]).
    """
    # = np.lexsort((distances, centers)), 1.4x faster: a stable sort on distance, then a stable (radix) sort on centre
    order = np.argsort(distances, kind="stable")
    key = centers[order]
    order = order[np.argsort(key.astype(np.int16) if n_atoms < 2**15 else key, kind="stable")]
    centers, neighbors, distances = centers[order], neighbors[order], distances[order]
    starts = np.searchsorted(centers, np.arange(n_atoms))
    rank = np.arange(len(centers)) - starts[centers]
    keep = rank < max_neighbors
    if shell_tol is not None and len(centers):
        counts = np.bincount(centers, minlength=n_atoms)
        last = starts + np.minimum(counts, max_neighbors) - 1  # the M-th nearest (or the farthest, if fewer)
        bound = np.where(counts > 0, distances[np.clip(last, 0, None)], -np.inf)
        keep |= distances <= bound[centers] + shell_tol
    edge_index = np.stack([neighbors[keep], centers[keep]]).astype(np.int64)
    return edge_index, distances[keep].astype(np.float32)


def pad_edges(
    edge_index: np.ndarray, distance: np.ndarray, n_atoms: int, max_neighbors: int, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """The original code's padding: each atom with d < M neighbours gets M - d edges from atom 0 at radius + 1.

    Mirrors ``nbr_fea_idx + [0] * (M - len)`` and ``nbr_fea + [radius + 1.] * (M - len)`` of the original
    ``cgcnn/data.py``; edges stay grouped by centre, real neighbours (nearest first) before the padding.
    """
    missing = np.clip(max_neighbors - np.bincount(edge_index[1], minlength=n_atoms), 0, None)
    if not missing.any():
        return edge_index, distance
    pad_centers = np.repeat(np.arange(n_atoms, dtype=np.int64), missing)
    pad = np.stack([np.zeros_like(pad_centers), pad_centers])
    edge_index = np.concatenate([edge_index, pad], axis=1)
    distance = np.concatenate([distance, np.full(len(pad_centers), radius + 1.0, dtype=np.float32)])
    order = np.argsort(edge_index[1], kind="stable")
    return edge_index[:, order], distance[order]


MAX_SEARCH_POINTS = 20_000_000  # periodic image points a neighbour search may generate (~0.5 GB in pymatgen)


def cell_heights(matrix: np.ndarray) -> np.ndarray:
    """Distances between opposite faces of the cell, along each axis: volume / |b x c|, etc."""
    m = np.asarray(matrix, dtype=float)
    faces = np.linalg.norm(np.cross(m[[1, 2, 0]], m[[2, 0, 1]]), axis=1)  # |b x c|, |c x a|, |a x b|
    with np.errstate(divide="ignore", invalid="ignore"):
        return abs(float(np.linalg.det(m))) / faces


def search_points(matrix: np.ndarray, n_atoms: int, radius: float) -> float:
    """How many periodic image points a neighbour search within ``radius`` generates: each atom repeated over
    the cells the sphere can reach, (2 ceil(r / h) + 1) per axis, h the cell's height along that axis.

    A normal cell needs a few hundred images per atom; a nearly flat or needle-like cell (heights of 0.01 Å
    from a broken file) needs billions, and the search would run for hours or exhaust memory.
    """
    heights = cell_heights(matrix)
    if not np.all(np.isfinite(heights)) or np.any(heights <= 0):
        return float("inf")
    return float(n_atoms * np.prod(2 * np.ceil(radius / heights) + 1))


def wrap_fractional(frac: np.ndarray) -> np.ndarray:
    """Fractional coordinates in [0, 1): the same array when they already are (no rounding), else mod 1."""
    return frac if ((frac >= 0) & (frac < 1)).all() else np.mod(frac, 1.0)


def wrap_into_cell(structure: Structure) -> Structure:
    """The same crystal with fractional coordinates in [0, 1). pymatgen's neighbour search grids the atoms'
    unwrapped extent: two atoms at (0,0,0) and (3,3,3.5) of a 100 Å cell asked for 6.9 GB."""
    frac = structure.frac_coords
    wrapped = wrap_fractional(frac)
    if wrapped is frac:
        return structure
    from pymatgen.core import Structure

    return Structure(structure.lattice, structure.species, wrapped, site_properties=structure.site_properties)


def search_size_problem(structure: Structure, radius: float) -> str | None:
    """Why a neighbour search within ``radius`` is refused (a degenerate, too thin cell), or None if it is fine."""
    points = search_points(structure.lattice.matrix, len(structure), radius)
    if points <= MAX_SEARCH_POINTS:
        return None
    heights = cell_heights(structure.lattice.matrix)
    return (
        f"degenerate lattice: the cell is only {', '.join(f'{h:.3g}' for h in heights)} Å thick along its axes, "
        f"so a neighbour search within {radius} Å would generate ~{points:.2g} periodic images "
        f"(limit {MAX_SEARCH_POINTS:.0e}); check the cell"
    )


@dataclass
class Cell:
    """One periodic crystal as arrays, whichever reader produced it: all that graph building needs."""

    matrix: np.ndarray  # float64 [3, 3] lattice vectors as rows, Å
    cart: np.ndarray  # float64 [N, 3] Cartesian coordinates, Å, of atoms wrapped into the cell
    z: np.ndarray  # int64 [N] atomic numbers

    @classmethod
    def from_structure(cls, structure: Structure) -> Cell:
        return cls(np.ascontiguousarray(structure.lattice.matrix, dtype=float),
                   np.ascontiguousarray(structure.cart_coords, dtype=float),
                   np.asarray(structure.atomic_numbers, dtype=np.int64))


def neighbor_list(cell: Cell, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centres, neighbours, distances) of all pairs within ``radius``, periodic images included, self excluded.

    pymatgen's C search, called as ``Structure.get_neighbor_list`` calls it (same arguments, same order).
    """
    from pymatgen.optimization.neighbors import find_points_in_spheres

    tol = 1e-8
    centers, neighbors, _, distances = find_points_in_spheres(
        cell.cart, cell.cart, r=radius, pbc=np.ones(3, dtype=np.int64), lattice=cell.matrix, tol=tol
    )
    keep = ~((centers == neighbors) & (distances <= tol))
    return centers[keep], neighbors[keep], distances[keep]


def structure_to_graph(structure: Structure, config: GraphConfig, structure_id: str = "?") -> CrystalGraph:
    """Build the periodic neighbour graph of one structure (pymatgen's C neighbour search, no Python loops)."""
    n_atoms = len(structure)
    if n_atoms == 0:
        raise GraphError(f"structure {structure_id!r} has no atoms")
    if not structure.is_ordered:
        raise GraphError(f"structure {structure_id!r} has partially occupied (disordered) sites")
    structure = wrap_into_cell(structure)
    problem = search_size_problem(structure, config.radius)
    if problem:
        raise GraphError(f"structure {structure_id!r}: {problem}")
    return cell_to_graph(Cell.from_structure(structure), config, structure_id)


def cell_to_graph(
    cell: Cell, config: GraphConfig, structure_id: str = "?",
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> CrystalGraph:
    """The graph of a checked cell: neighbours within the radius (``pairs`` if already searched), the M nearest
    kept (padded if asked)."""
    n_atoms = len(cell.z)
    centers, neighbors, distances = pairs if pairs is not None else neighbor_list(cell, config.radius)
    edge_index, distance = nearest_neighbor_edges(
        centers, neighbors, distances, n_atoms, config.max_neighbors, config.shell_tol
    )
    if config.pad_to_max:
        edge_index, distance = pad_edges(edge_index, distance, n_atoms, config.max_neighbors, config.radius)
    graph = CrystalGraph(z=np.asarray(cell.z, dtype=np.int64), edge_index=edge_index, distance=distance)
    isolated = np.flatnonzero(graph.degree() == 0)
    if len(isolated):
        from cgcnn_lab.data.elements import element_symbol

        i = int(isolated[0])
        raise GraphError(
            f"structure {structure_id!r}: atom {i} ({element_symbol(int(cell.z[i]))}) has no neighbour within "
            f"{config.radius} Å ({len(isolated)} isolated atom(s)); increase --radius or check the cell"
        )
    return graph
