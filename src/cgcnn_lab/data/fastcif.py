"""A fast path for the CIF files datasets are made of: plain P1 cells, read with gemmi, checked with numpy.

pymatgen's CIF parser is general (symmetry expansion, site merging, disorder, magnetic CIFs) and costs ~4 ms per
small file: on the course set it was 80% of featurisation. Almost every dataset CIF (the Materials Project's,
Matbench's, anything written by pymatgen or ASE) is the simple case: space group P1 listed as the identity
operation, one fully occupied element per site, fractional coordinates. For those, gemmi's C++ CIF reader (~50 µs)
and a few array operations give the same crystal pymatgen would build, bit for bit, in the same atom order:

- coordinates within 1e-4 of 1/3 or 2/3 are snapped to them, then wrapped with ``x - floor(x)`` (as pymatgen);
- the lattice comes from ``Lattice.from_parameters`` (pymatgen's orientation, so identical Cartesian coordinates);
- atoms are stably sorted by (electronegativity, symbol), which is ``Structure.get_sorted_structure``'s order.

Anything else — other space groups, partial occupancy, labels instead of element symbols, oxidation-state symbols,
noble gases (no electronegativity: pymatgen's order is undefined), overlapping atoms, degenerate or huge cells,
unparsable numbers — returns None, and the caller takes pymatgen's path with its documented errors. The tests
check that both paths give identical graphs on the real datasets.
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np

from cgcnn_lab.data.graph import (
    MAX_SEARCH_POINTS,
    Cell,
    CrystalGraph,
    GraphConfig,
    cell_to_graph,
    neighbor_list,
    search_points,
    wrap_fractional,
)

_IDENTITY = re.compile(r"^\+?x,\+?y,\+?z$")
_ELEMENT = re.compile(r"^[A-Z][a-z]?$")
_SYMOP_KEYS = ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz", "_space_group_symop.operation_xyz")
_GROUP_KEYS = ("_symmetry_space_group_name_H-M", "_space_group_name_H-M_alt", "_symmetry_Int_Tables_number",
               "_space_group_IT_number")
_P1 = {"P1", "1"}
_THIN = 0.02  # Å: pymatgen's CIF parser refuses cells thinner than 0.01 Å; near that, let it decide
_UNSUPPORTED = ("_magn", "_atom_site_moment", "_atom_site_attached_hydrogens", "_atom_site_aniso_label_")


@functools.cache
def _element(symbol: str) -> tuple[int, float] | None:
    """(Z, Pauling electronegativity) of an element symbol, or None if pymatgen would not read it as that element."""
    from pymatgen.core import Element

    if not Element.is_valid_symbol(symbol):
        return None
    el = Element(symbol)
    x = el.X
    return (int(el.Z), float(x)) if np.isfinite(x) else None


def _number(text: str) -> float:
    """A CIF number, with its standard uncertainty "(n)" dropped; NaN for "?", "." and anything unreadable."""
    import gemmi

    return gemmi.cif.as_number(text) if text not in ("?", ".") else float("nan")


def plain_cif_graph(text: str, config: GraphConfig, structure_id: str = "?") -> CrystalGraph | None:
    """The graph of a plain P1 CIF (module docstring), or None: then pymatgen's path must read it.

    Every test of ``sources.check_structure`` and ``graph.structure_to_graph`` is made here too; a file that fails
    any of them goes to pymatgen's path, which reports the problem. One neighbour search serves both the overlap
    test and the graph.
    """
    from cgcnn_lab.data.sources import MIN_INTERATOMIC_DISTANCE

    with np.errstate(all="ignore"):  # impossible cells give NaN here; pymatgen's path explains them
        cell = read_plain_cif(text)
        if cell is None or not np.isfinite(cell.matrix).all() or not np.isfinite(cell.cart).all():
            return None
        radius = max(config.radius, MIN_INTERATOMIC_DISTANCE)
        n = len(cell.z)
        volume = abs(float(np.linalg.det(cell.matrix)))
        if not np.isfinite(volume) or volume < 1e-3 * n or search_points(cell.matrix, n, radius) > MAX_SEARCH_POINTS:
            return None
    pairs = neighbor_list(cell, radius)
    if (pairs[2] <= MIN_INTERATOMIC_DISTANCE + 1e-8).any():  # overlapping atoms (or sites pymatgen would merge)
        return None
    if radius > config.radius:
        keep = pairs[2] <= config.radius + 1e-8
        pairs = (pairs[0][keep], pairs[1][keep], pairs[2][keep])
    return cell_to_graph(cell, config, structure_id, pairs)


def read_plain_cif(text: str) -> Cell | None:
    """The cell of a plain P1 CIF as pymatgen would build it (same numbers, same atom order), or None."""
    import gemmi

    from cgcnn_lab.data.sources import CELL_KEYS, MAX_ATOMS

    if any(key in text for key in _UNSUPPORTED):
        return None
    try:
        doc = gemmi.cif.read_string(text)
    except (RuntimeError, ValueError):
        return None
    if len(doc) != 1:
        return None
    block = doc[0]
    ops = [v for key in _SYMOP_KEYS for v in block.find_values(key)]
    if ops:
        if any(not _IDENTITY.match(gemmi.cif.as_string(op).replace(" ", "").lower()) for op in ops):
            return None
    elif any(key in text for key in _SYMOP_KEYS):  # a loop of operations without rows: pymatgen fails on it
        return None
    else:  # no operations listed: pymatgen then generates them from the space group, if one is named
        names = [gemmi.cif.as_string(v).replace(" ", "") for key in _GROUP_KEYS for v in block.find_values(key)]
        if any(name not in _P1 for name in names):
            return None
    cell = [block.find_value(key) for key in CELL_KEYS]
    if any(v is None for v in cell):
        return None
    params = _numbers(cell)
    table = block.find("_atom_site_", ["label", "type_symbol", "fract_x", "fract_y", "fract_z", "?occupancy"])
    n = len(table)
    if not np.all(np.isfinite(params)) or n == 0 or n > MAX_ATOMS:
        return None
    symbols = [gemmi.cif.as_string(v) for v in table.column(1)]
    elements = [_element(s) if _ELEMENT.match(s) else None for s in symbols]
    if any(e is None for e in elements):
        return None
    if table.has_column(5) and not (_numbers(table.column(5)) == 1.0).all():
        return None
    frac = np.stack([_numbers(table.column(k)) for k in (2, 3, 4)], axis=1)
    if not np.isfinite(frac).all():
        return None
    for ideal in (1 / 3, 2 / 3):  # pymatgen's snapping of finite-precision thirds
        frac[np.abs(frac / ideal - 1) <= 1e-4] = ideal
    frac = wrap_fractional(frac - np.floor(frac))  # x - floor(x) rounds tiny negatives to 1.0: wrap as check_structure
    z = np.array([e[0] for e in elements], dtype=np.int64)
    x = np.array([e[1] for e in elements])
    order = np.lexsort((np.array(symbols), x))  # stable: file order among equal (electronegativity, symbol)
    from pymatgen.core.lattice import Lattice

    if not _thick_enough(*params):
        return None
    matrix = np.ascontiguousarray(Lattice.from_parameters(*params).matrix, dtype=float)
    # one np.dot per site, as pymatgen's PeriodicSite.coords: `frac @ matrix` goes through BLAS's gemm, whose
    # rounding differs from gemv's by an ulp on some CPUs, and an ulp reorders neighbours at equal distances
    cart = np.array([np.dot(f, matrix) for f in frac[order]])  # n >= 1: checked above
    return Cell(matrix, cart, z[order])


def _thick_enough(a: float, b: float, c: float, alpha: float, beta: float, gamma: float) -> bool:
    """Every distance between opposite faces is at least ``_THIN``, by the cheap bound V / (|b||c|) <= V / |b x c|
    (a few µs in plain floats, against ~100 µs for the exact ``graph.cell_heights`` of the matrix; a skewed but sound
    cell that fails the bound only takes pymatgen's slower path)."""
    if not min(a, b, c) > 0:
        return False
    ca, cb, cg = (math.cos(math.radians(x)) for x in (alpha, beta, gamma))
    volume = a * b * c * math.sqrt(max(1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg, 0.0))
    return min(volume / (b * c), volume / (c * a), volume / (a * b)) >= _THIN  # False for NaN too


def _numbers(values) -> np.ndarray:
    """CIF numbers as float64: numpy's parser, or one by one when some carry an uncertainty "(n)" or are "?"."""
    values = list(values)
    try:
        return np.array(values, dtype=float)
    except ValueError:
        return np.array([_number(v) for v in values])
