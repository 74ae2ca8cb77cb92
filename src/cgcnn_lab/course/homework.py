"""Checkers and data helpers for the CGCNN homework notebooks (``notebooks/``).

The course this project grew from checked answers with ``assert out.item() == 0.6627039313316345`` (fails on
rounding) and ``assert torch.equal(nbr_fea_idx, nbr_fea_idx_standard)`` (fails on neighbour order). The checks
here compare **with tolerances**, **independently of order** and **shape first**, and when an answer is wrong
they say *what* is wrong and what to try (``HomeworkCheckError``'s message is the hint).

Every ``check_*`` function prints a one-line verdict and returns a :class:`CheckResult`; on a wrong answer it
raises :class:`HomeworkCheckError` (an ``AssertionError``) unless called with ``raise_on_fail=False``.

Data helpers: :func:`data_dir` (one variable, ``$CGCNN_DATA``), :func:`fast_mode` (``$CGCNN_HOMEWORK_FAST=1``
shrinks subsets and epochs for CI), :func:`energy_dataset` and :func:`bandgap_dataset` (the course data, or a
clearly labelled generated stand-in when it is absent).
"""

from __future__ import annotations

import copy
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "CheckResult",
    "HomeworkCheckError",
    "bandgap_dataset",
    "check_atom_features",
    "check_close",
    "check_conv",
    "check_gaussian",
    "check_neighbors",
    "check_shape",
    "check_species",
    "data_dir",
    "defined",
    "energy_dataset",
    "fast_mode",
    "inline_plots",
    "nacl_structure",
    "run_dir",
    "subset",
    "write_nacl_cif",
]


# ----------------------------------------------------------------------------------------------- results


class HomeworkCheckError(AssertionError):
    """A wrong answer; the message is the hint."""


@dataclass
class CheckResult:
    ok: bool
    message: str

    def __bool__(self) -> bool:
        return self.ok

    def _ipython_display_(self) -> None:  # already printed by the check: show it once, not twice
        pass

    def __str__(self) -> str:
        return ("OK: " if self.ok else "NOT YET: ") + self.message


def _verdict(ok: bool, message: str, raise_on_fail: bool, quiet: bool = False) -> CheckResult:
    result = CheckResult(ok, message)
    if not quiet:
        print(result)
    if not ok and raise_on_fail:
        raise HomeworkCheckError(message)
    return result


def _np(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


# ----------------------------------------------------------------------------------------------- generic


def defined(value, name: str, exercise: str):
    """``value``; a hint instead of a TypeError when it is None: the autograder's tests receive None for a name
    the notebook never defined (its cell raised, or was not run)."""
    if value is None:
        raise HomeworkCheckError(f"{name} is not defined: complete {exercise} and run its cell (and the cells above)")
    return value


def check_shape(
    value, expected: Sequence[int | None], name: str = "value", raise_on_fail: bool = True
) -> CheckResult:
    """``value.shape`` equals ``expected`` (``None`` = any size on that axis)."""
    shape = tuple(getattr(value, "shape", np.shape(value)))
    expected = tuple(expected)
    ok = len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected))
    want = "(" + ", ".join("any" if e is None else str(e) for e in expected) + ")"
    if ok:
        return _verdict(True, f"{name} has shape {shape}", raise_on_fail)
    hint = f"{name} has shape {shape}, expected {want}"
    if len(shape) == len(expected) and sorted(shape) == sorted(e for e in expected if e is not None):
        hint += ": the axes look swapped (transpose it?)"
    elif len(shape) == len(expected) - 1:
        hint += ": one axis is missing (unsqueeze / reshape?)"
    return _verdict(False, hint, raise_on_fail)


def check_close(
    value, expected, name: str = "value", rtol: float = 1e-5, atol: float = 1e-6, raise_on_fail: bool = True
) -> CheckResult:
    """Shapes equal, then values equal within ``atol + rtol * |expected|`` (never ``==`` on floats)."""
    v, e = _np(value), _np(expected)
    if v.shape != e.shape:
        return check_shape(v, e.shape, name, raise_on_fail)
    if not np.isfinite(v).all():
        return _verdict(False, f"{name} contains NaN or inf", raise_on_fail)
    err = np.abs(v - e)
    bad = err > atol + rtol * np.abs(e)
    if not bad.any():
        return _verdict(True, f"{name} matches (max abs. difference {err.max(initial=0):.2e})", raise_on_fail)
    return _verdict(
        False,
        f"{name}: {int(bad.sum())} of {bad.size} values differ (max abs. difference {err.max():.3g}, "
        f"tolerance {atol:g} + {rtol:g}·|expected|)",
        raise_on_fail,
    )


# ----------------------------------------------------------------------------------------------- crystals


def nacl_structure(a: float = 5.64):
    """Rock-salt NaCl, conventional cubic cell (8 atoms: Na at 0..3, Cl at 4..7), lattice constant ``a`` Å."""
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def write_nacl_cif(path: str | os.PathLike) -> Path:
    """Write the NaCl CIF the first notebook reads (used when the notebook's data folder is missing, e.g. Colab)."""
    from pymatgen.io.cif import CifWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    CifWriter(nacl_structure(), symprec=0.01).write_file(path)
    return path


def _species_values(values) -> list:
    """The answer as a flat list: a list/tuple as given, an array or tensor flattened, a single value as [value]."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        return [values]
    if hasattr(values, "tolist"):  # numpy array or torch tensor
        return np.asarray(values.tolist(), dtype=object).ravel().tolist()
    return [v.item() if isinstance(v, np.generic) or (isinstance(v, torch.Tensor) and v.numel() == 1) else v
            for v in values]


def _not_atomic_numbers(values: list, structure) -> str | None:
    """What is wrong when ``values`` are not atomic numbers (element symbols, pymatgen objects, ...), else None."""
    first = structure[0].specie
    example = f"{first.symbol} -> {first.Z}"
    for k, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)):
            break
        if isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer()):
            continue
        if isinstance(v, str) and v.strip().isdigit():
            continue
        break
    else:
        return None
    from pymatgen.core import Element

    symbols = [site.specie.symbol for site in structure]
    if isinstance(v, str) and Element.is_valid_symbol(v.strip()):
        right = [str(x).strip() for x in values] == symbols
        return (
            f"you gave element symbols ({', '.join(map(repr, values[:3]))}{', ...' if len(values) > 3 else ''})"
            f"{', the right ones' if right else ''}; the exercise asks for atomic numbers (integers, {example}): "
            "use site.specie.Z"
        )
    if hasattr(v, "specie"):
        return f"you gave pymatgen sites; take the atomic number of each: site.specie.Z (e.g. {example})"
    if hasattr(v, "Z"):
        return (
            f"you gave pymatgen {type(v).__name__} objects ({v}); take their atomic number: site.specie.Z "
            f"(e.g. {example})"
        )
    return (
        f"expected atomic numbers (integers, e.g. {example}), got {v!r} ({type(v).__name__}) at position {k}: "
        "use site.specie.Z"
    )


def check_species(atomic_numbers, structure, raise_on_fail: bool = True) -> CheckResult:
    """The atomic number of every site, in site order (integers: 11 for Na; symbols are named as such)."""
    values = _species_values(atomic_numbers)
    problem = _not_atomic_numbers(values, structure)
    if problem:
        return _verdict(False, problem, raise_on_fail)
    got = [int(z) for z in values]
    want = [site.specie.Z for site in structure]
    if len(got) != len(want):
        return _verdict(
            False,
            f"{len(got)} atomic numbers for {len(want)} sites: one per site, "
            "`for site in structure` (or structure[i] for i in range(len(structure)))",
            raise_on_fail,
        )
    if got == want:
        return _verdict(True, f"atomic numbers {sorted(set(want))} for {len(want)} sites", raise_on_fail)
    if sorted(got) == sorted(want):
        return _verdict(
            False,
            "right numbers, wrong order: keep the site order (structure[0], structure[1], ...)",
            raise_on_fail,
        )
    return _verdict(
        False,
        f"got {got}, expected {want}: the atomic number of site i is structure[i].specie.Z "
        "(`specie` is the pymatgen Element; `.Z` or `.number` is its atomic number)",
        raise_on_fail,
    )


def check_atom_features(features, structure, table, raise_on_fail: bool = True) -> CheckResult:
    """Row i = the element feature vector of site i: ``table[structure[i].specie.Z]``."""
    want = np.stack([np.asarray(table)[site.specie.Z] for site in structure])
    got = _np(features)
    if got.shape != want.shape:
        hint = f"features have shape {got.shape}, expected {want.shape} = (number of sites, features per element)"
        if got.shape == want.shape[::-1]:
            hint += ": transpose it"
        return _verdict(False, hint, raise_on_fail)
    if np.allclose(got, want, atol=1e-6):
        return _verdict(
            True, f"atom features {want.shape}: one {want.shape[1]}-wide row per site", raise_on_fail
        )
    shifted = np.stack([np.asarray(table)[site.specie.Z - 1] for site in structure])
    if np.allclose(got, shifted, atol=1e-6):
        return _verdict(
            False,
            "off by one: row z of the table is element z (row 0 is unused), index it with "
            "specie.Z, not Z - 1",
            raise_on_fail,
        )
    return _verdict(
        False,
        "rows do not match the element table: row i must be table[structure[i].specie.Z]",
        raise_on_fail,
    )


def _reference_pairs(structure, radius: float) -> list[tuple[int, int, float]]:
    centers, neighbors, _, distances = structure.get_neighbor_list(radius)
    return [(int(i), int(j), float(d)) for i, j, d in zip(centers, neighbors, distances)]


def _in_cell_pairs(structure, radius: float, minimum_image: bool) -> list[tuple[int, int, float]]:
    """What a student gets without periodic images: one distance per pair of atoms of the cell."""
    if minimum_image:  # structure.get_distance(i, j): the nearest image only
        dist = structure.lattice.get_all_distances(structure.frac_coords, structure.frac_coords)
    else:  # plain Cartesian distances inside the cell
        cart = structure.cart_coords
        dist = np.linalg.norm(cart[:, None, :] - cart[None, :, :], axis=-1)
    n = len(structure)
    return [(i, j, float(dist[i, j])) for i in range(n) for j in range(n) if i != j and dist[i, j] <= radius]


def _multiset(pairs, with_index: bool, decimals: int = 3) -> Counter:
    if with_index:
        return Counter((int(i), int(j), round(float(d), decimals)) for i, j, d in pairs)
    return Counter((int(i), round(float(d), decimals)) for i, _, d in pairs)


def _as_pairs(student) -> list[tuple[int, int, float]]:
    rows = [tuple(r) for r in (student.tolist() if hasattr(student, "tolist") else student)]
    if not all(len(r) == 3 for r in rows):
        raise HomeworkCheckError(
            "neighbours must be a list of (i, j, distance) triples: centre atom index i, "
            "neighbour atom index j (neighbor.index) and distance in Å (neighbor.nn_distance)"
        )
    return [(int(i), int(j), float(d)) for i, j, d in rows]


def _missing_hint(pairs, ref, structure, radius: float, max_neighbors: int | None, missing: Counter) -> str:
    """Why (i, distance) pairs are missing although every given one is right: too small a search radius (the
    answer is complete up to its own largest distance), no periodic images (each neighbour j at most once per
    atom, or exactly the in-cell pairs), both, or neighbours left out of some atoms (or not the M nearest kept)."""
    n_missing = sum(missing.values())
    reach = max(p[2] for p in pairs)  # the student's radius is at least this, and below the next missing distance
    within = [p for p in ref if p[2] <= reach + 1e-3]
    got_d = _multiset(pairs, False)
    beyond = sorted(d for (_, d), k in missing.items() for _ in range(k) if d > reach + 1e-3)
    complete_to_reach = got_d == _multiset(within, False)
    once_each = max(Counter((p[0], p[1]) for p in pairs).values(), default=0) == 1
    reference_to_reach = _reference_pairs(structure, reach + 1e-3)
    images_expected = max(Counter((p[0], p[1]) for p in reference_to_reach).values(), default=0) > 1
    in_cell = max_neighbors is None and any(
        _multiset(pairs, True) == _multiset(_in_cell_pairs(structure, reach + 1e-3, m), True) for m in (False, True)
    )
    no_images = in_cell or (once_each and images_expected)
    span = ""
    if beyond:
        low, high = beyond[0], beyond[-1]
        span = f"at {low:.3f} Å" if high - low < 1e-3 else f"between {low:.3f} and {high:.3f} Å"
    short = (
        f"your neighbours stop at {reach:.3f} Å but the radius is {radius} Å: {len(beyond)} missing neighbours "
        f"lie {span}. Search with the full radius, structure.get_neighbors(site, {radius})"
    )
    if complete_to_reach and beyond:  # right up to their own radius: the radius is too small, not the images
        if max_neighbors is not None:
            short += f", then keep the {max_neighbors} nearest of each atom"
        return f"your radius is too small: {short}"
    if no_images and beyond:
        return (
            f"two things: {n_missing - len(beyond)} neighbours within your {reach:.3f} Å are missing because you "
            "have no periodic images (each neighbour j appears at most once per atom, but through the neighbouring "
            f"cells the same j can be a neighbour several times), and {short}"
        )
    if no_images:
        return (
            f"your distances are right but {n_missing} neighbours are missing: each neighbour j appears at most "
            "once per atom, but through the periodic images of the cell the same j can be a neighbour several "
            "times. Include periodic images: use structure.get_neighbors(site, r) for every site"
        )
    also = f"; also, {short}" if beyond else ""
    if max_neighbors is not None:
        return (
            f"{n_missing} neighbours missing: keep the {max_neighbors} nearest of every atom "
            f"(sort its neighbours by distance, then take the first M){also}"
        )
    centres = sorted({i for i, _ in missing})
    return (
        f"your distances are right but {n_missing} neighbours are missing (atoms {centres[:6]}): keep every "
        f"neighbour that structure.get_neighbors(site, r) returns, for every site{also}"
    )


def check_neighbors(
    student, structure, radius: float, max_neighbors: int | None = None, raise_on_fail: bool = True
) -> CheckResult:
    """Student neighbour list vs pymatgen's, **order-independent**, distances to 1e-3 Å.

    ``student``: (i, j, d) triples; every atom i lists each neighbour j within ``radius`` (periodic images
    included: the same j can appear several times, at different distances). With ``max_neighbors`` M only
    the M nearest per atom are expected, and only the distances are compared (which of several neighbours
    at the same distance is kept is arbitrary).
    """
    try:
        pairs = _as_pairs(student)
    except HomeworkCheckError as err:
        return _verdict(False, str(err), raise_on_fail)
    n = len(structure)
    ref = _reference_pairs(structure, radius)
    if max_neighbors is not None:
        by_center: dict[int, list] = defaultdict(list)
        for p in ref:
            by_center[p[0]].append(p)
        ref = [p for i in sorted(by_center) for p in sorted(by_center[i], key=lambda q: q[2])[:max_neighbors]]
    with_index = max_neighbors is None
    if not pairs:
        return _verdict(
            False,
            "the neighbour list is empty: loop over the sites and call structure.get_neighbors(site, radius)"
            + (f" with radius = {radius} Å (the nearest neighbours lie at {min(p[2] for p in ref):.3f} Å)"
               if ref else ""),
            raise_on_fail,
        )
    bad_index = [p for p in pairs if not (0 <= p[0] < n and 0 <= p[1] < n)]
    if bad_index:
        return _verdict(
            False,
            f"index out of range in {bad_index[0]}: atom indices run 0..{n - 1} "
            "(use neighbor.index, the index of the neighbour in the unit cell)",
            raise_on_fail,
        )
    dists = np.array([p[2] for p in pairs])
    if (dists < 1e-6).any():
        return _verdict(
            False,
            "some distances are 0: an atom is not its own neighbour (get_neighbors leaves "
            "the atom itself out; do not add it)",
            raise_on_fail,
        )
    if (dists > radius + 1e-6).any():
        return _verdict(
            False,
            f"distances up to {dists.max():.3f} Å exceed the radius {radius} Å: keep d <= radius",
            raise_on_fail,
        )
    if ref and dists.max() < min(p[2] for p in ref) - 1e-3:
        return _verdict(
            False,
            f"all your distances are below the shortest bond ({min(p[2] for p in ref):.3f} Å): "
            "are they fractional coordinates? use Cartesian distances in Å (neighbor.nn_distance)",
            raise_on_fail,
        )
    got, want = _multiset(pairs, with_index), _multiset(ref, with_index)
    if got == want:
        what = (
            f"the {max_neighbors} nearest neighbours"
            if max_neighbors
            else f"all neighbours within {radius} Å"
        )
        return _verdict(
            True,
            f"{len(pairs)} edges: {what} of each of the {n} atoms (order does not matter)",
            raise_on_fail,
        )
    if with_index and any(
        got == _multiset(_in_cell_pairs(structure, radius, m), True) for m in (False, True)
    ):
        return _verdict(
            False,
            f"you found the {len(pairs)} neighbours inside one cell, but a crystal is periodic: "
            f"{len(ref)} are expected. Did you include periodic images? Use "
            "structure.get_neighbors(site, r), which searches the neighbouring cells too",
            raise_on_fail,
        )
    got_d, want_d = _multiset(pairs, False), _multiset(ref, False)
    if got_d == want_d:
        return _verdict(
            False,
            "the distances are right but the neighbour indices j are not: use neighbor.index "
            "(the index of the neighbour's site in the cell)",
            raise_on_fail,
        )
    missing, extra = want_d - got_d, got_d - want_d
    if missing and not extra:
        return _verdict(False, _missing_hint(pairs, ref, structure, radius, max_neighbors, missing), raise_on_fail)
    if extra and not missing:
        ref_full = _multiset(_reference_pairs(structure, radius), True)
        dup = [k for k, v in _multiset(pairs, True).items() if v > max(ref_full.get(k, 0), 1)]
        hint = f"{sum(extra.values())} neighbours too many"
        if max_neighbors is not None and max(Counter(p[0] for p in pairs).values()) > max_neighbors:
            hint += (
                f": keep only the {max_neighbors} nearest of every atom (sort by distance, take the first M)"
            )
        elif dup:
            hint += f", e.g. {dup[0]} is listed more often than it occurs: add each neighbour once"
        return _verdict(False, hint, raise_on_fail)
    counts = Counter(i for i, _, _ in pairs)
    ref_counts = Counter(i for i, _, _ in ref)
    wrong = [i for i in range(n) if counts.get(i, 0) != ref_counts.get(i, 0)]
    if wrong:
        i = wrong[0]
        return _verdict(
            False,
            f"atom {i} has {counts.get(i, 0)} neighbours, expected {ref_counts.get(i, 0)} "
            f"({len(wrong)} atoms have the wrong count); check the radius and the periodic images",
            raise_on_fail,
        )
    return _verdict(
        False,
        f"{sum(missing.values())} expected (i, distance) pairs are missing and "
        f"{sum(extra.values())} are unexpected: compare your distances with neighbor.nn_distance",
        raise_on_fail,
    )


# ----------------------------------------------------------------------------------------------- Gaussians


def check_gaussian(
    fn: Callable,
    radius: float = 8.0,
    step: float = 0.2,
    width: float | None = None,
    raise_on_fail: bool = True,
) -> CheckResult:
    """``fn(distances)`` [E] -> [E, K] against ``exp(-(d - mu_k)^2 / width^2)``, mu = 0, step, ..., radius."""
    from cgcnn_lab.model.expansion import GaussianExpansion

    ref_module = GaussianExpansion(radius, step, width)
    d = torch.tensor([0.0, 0.73, 1.5, 2.82, 3.99, 5.0, 7.95], dtype=torch.float32)
    want = ref_module(d).double().numpy()
    try:
        out = fn(d)
    except Exception:  # noqa: BLE001  a numpy-only answer: retry with an array
        try:
            out = fn(d.numpy())
        except Exception as err:  # noqa: BLE001
            return _verdict(
                False,
                f"calling your function on a 1-D tensor of distances failed: {type(err).__name__}: {err}",
                raise_on_fail,
            )
    got = _np(out)
    k = want.shape[1]
    if got.shape != want.shape:
        hint = f"output shape {got.shape}, expected {want.shape} = (number of distances, number of centres)"
        if got.shape == want.shape[::-1]:
            hint += ": transpose it (one row per distance)"
        elif got.ndim == 2 and got.shape[0] == len(d) and got.shape[1] == k - 1:
            hint += (
                f": {k - 1} centres instead of {k}; np.arange(0, radius, step) stops before the radius, "
                "use np.arange(0, radius + step, step)"
            )
        elif got.ndim == 1:
            hint += ": broadcast distances[:, None] against the centres[None, :]"
        return _verdict(False, hint, raise_on_fail)
    if not np.isfinite(got).all():
        return _verdict(
            False,
            "your output holds inf or NaN: the exponent must be negative, "
            "exp(-(d - mu)^2 / width^2), so every value lies in (0, 1]",
            raise_on_fail,
        )
    if np.allclose(got, want, atol=1e-5, rtol=1e-4):
        return _verdict(True, f"{k} Gaussians of width {ref_module.width} Å for each distance", raise_on_fail)
    w = ref_module.width
    mu = ref_module.centers.double().numpy()
    dd = d.double().numpy()[:, None]
    variants = {
        "missing the square on the width: divide by width**2": np.exp(-((dd - mu) ** 2) / w),
        "the normal-distribution form exp(-(d - mu)^2 / (2 width^2)); CGCNN uses exp(-(d - mu)^2 / width^2)": np.exp(
            -((dd - mu) ** 2) / (2 * w**2)
        ),
        "(d - mu) is not squared": np.exp(-np.abs(dd - mu) / w**2),
    }
    for hint, value in variants.items():
        if np.allclose(got, value, atol=1e-5, rtol=1e-4):
            return _verdict(False, f"right shape, but {hint}", raise_on_fail)
    peak = got.argmax(axis=1)
    if not np.array_equal(peak, want.argmax(axis=1)):
        return _verdict(
            False,
            "the largest Gaussian of each distance is at the wrong centre: the centres are "
            f"0, {step}, ..., {radius} Å",
            raise_on_fail,
        )
    return _verdict(
        False,
        f"values differ from exp(-(d - mu)^2 / width^2) by up to {np.abs(got - want).max():.3g}",
        raise_on_fail,
    )


# ----------------------------------------------------------------------------------------------- convolutions


def _aggregate(messages, center, n, mean: bool):
    out = messages.new_zeros((n, messages.shape[1])).index_add_(0, center, messages)
    if mean:
        count = torch.bincount(center, minlength=n).clamp(min=1).unsqueeze(1).to(messages.dtype)
        out = out / count
    return out


def _shared_variant(ref, x, edge_index, edge_attr, mean=False, flip=False, self_term=True, bn=True, act=True):
    neighbor, center = edge_index.flip(0) if flip else edge_index
    summed = _aggregate(torch.cat([x[neighbor], edge_attr], 1), center, x.shape[0], mean)
    h = ref.lin_neighbors(summed) + (ref.lin_self(x) if self_term else ref.lin_self.bias)
    h = ref.bn(h) if bn else h
    return ref.act(h) if act else h


def _gated_variant(
    ref, x, edge_index, edge_attr, mean=False, flip=False, residual=True, swap=False, order="ij", bn=True
):
    neighbor, center = edge_index.flip(0) if flip else edge_index
    parts = [x[center], x[neighbor]] if order == "ij" else [x[neighbor], x[center]]
    g = ref.fc_full(torch.cat(parts + [edge_attr], 1))
    g = ref.bn1(g) if bn else g
    f, c = g.chunk(2, dim=1)
    if swap:
        f, c = c, f
    m = torch.sigmoid(f) * ref.core_act(c)
    s = _aggregate(m, center, x.shape[0], mean)
    s = ref.bn2(s) if bn else s
    return ref.out_act(x + s if residual else s)


_SHARED_MISTAKES = {
    "you average over the neighbours; Eq. 3 sums them (index_add_ / scatter-sum over the centre index)": {
        "mean": True
    },
    "you aggregate onto the wrong atom: edge_index[1] is the centre i that receives, edge_index[0] the neighbour j": {
        "flip": True
    },
    "the self term v_i W_s is missing (lin_self(x))": {"self_term": False},
    "batch norm is missing: apply self.bn before the activation": {"bn": False},
    "the activation g is missing at the end": {"act": False},
}
_GATED_MISTAKES = {
    "you average over the neighbours; Eq. 5 sums them (index_add_ / scatter-sum over the centre index)": {
        "mean": True
    },
    "you aggregate onto the wrong atom: edge_index[1] is the centre i that receives, edge_index[0] the neighbour j": {
        "flip": True
    },
    "the residual connection is missing: the output is g(v_i + BN(sum)), not g(BN(sum))": {"residual": False},
    "filter and core are swapped: the first half of fc_full's output goes through the sigmoid (filter), the "
    "second through g (core)": {"swap": True},
    "z_ij is concatenated in the wrong order: it is v_i ⊕ v_j ⊕ u_ij (centre first, as the weights expect)": {
        "order": "ji"
    },
    "batch norm is missing: bn1 after fc_full, bn2 after the sum": {"bn": False},
}
_LAYER_NAMES = {
    "shared": "lin_neighbors = Linear(A + B, A, bias=False) (W_c), lin_self = Linear(A, A) (W_s, b), "
    "bn = BatchNorm1d(A)",
    "gated": "fc_full = Linear(2A + B, 2A) ([W_f | W_s] in one matrix), bn1 = BatchNorm1d(2A), bn2 = BatchNorm1d(A)",
}


def _conv_inputs(atom_dim: int, edge_dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    degree = torch.tensor([1, 4, 2, 5, 3, 2, 6])  # varying, so that a mean is not a scaled sum
    n = len(degree)
    center = torch.arange(n).repeat_interleave(degree)
    neighbor = (center + torch.randint(1, n, (len(center),), generator=g)) % n
    edge_index = torch.stack([neighbor, center])
    x = torch.randn(n, atom_dim, generator=g)
    edge_attr = torch.rand(len(center), edge_dim, generator=g)
    return x, edge_index, edge_attr


def check_conv(
    module_cls: Callable[..., nn.Module],
    reference: str = "gated",
    atom_dim: int = 4,
    edge_dim: int = 5,
    raise_on_fail: bool = True,
) -> CheckResult:
    """Your convolution ``module_cls(atom_dim, edge_dim)`` vs the library's ``GatedConv`` / ``SharedConv``.

    The library layer's weights are copied into yours (so the layer names must match: see the hint), then
    both run on the same small random graph in training mode; outputs must agree to 1e-5, and must not change
    when the edges are listed in another order. A wrong answer is compared with common mistakes.
    """
    from cgcnn_lab.model.convs import GatedConv, SharedConv

    if reference not in ("gated", "shared"):
        raise ValueError("reference is 'gated' or 'shared'")
    torch.manual_seed(0)
    ref = (GatedConv if reference == "gated" else SharedConv)(atom_dim, edge_dim)
    try:
        mine = module_cls(atom_dim, edge_dim)
    except Exception as err:  # noqa: BLE001
        return _verdict(
            False,
            f"{getattr(module_cls, '__name__', module_cls)}({atom_dim}, {edge_dim}) failed: "
            f"{type(err).__name__}: {err}; the constructor takes (atom_dim, edge_dim)",
            raise_on_fail,
        )
    own = mine.state_dict()
    ref_state = {k: v for k, v in ref.state_dict().items() if "running" not in k and "num_batches" not in k}
    missing = [k for k in ref_state if k not in own]
    if missing:
        return _verdict(
            False,
            f"your module has no parameter {missing[0]!r}; name the layers as in the library: "
            f"{_LAYER_NAMES[reference]}",
            raise_on_fail,
        )
    wrong_shape = [
        (k, tuple(own[k].shape), tuple(v.shape)) for k, v in ref_state.items() if own[k].shape != v.shape
    ]
    if wrong_shape:
        k, got, want = wrong_shape[0]
        return _verdict(
            False,
            f"{k} has shape {got}, expected {want}: {_LAYER_NAMES[reference]} "
            f"(A = atom_dim = {atom_dim}, B = edge_dim = {edge_dim})",
            raise_on_fail,
        )
    mine.load_state_dict(ref_state, strict=False)
    mine.train()
    ref.train()
    x, edge_index, edge_attr = _conv_inputs(atom_dim, edge_dim)
    with torch.no_grad():
        want = copy.deepcopy(ref)(x, edge_index, edge_attr)
        try:
            got = copy.deepcopy(mine)(x, edge_index, edge_attr)
        except Exception as err:  # noqa: BLE001
            return _verdict(
                False,
                f"forward(x, edge_index, edge_attr) failed: {type(err).__name__}: {err}. "
                f"Shapes: x [N, A] = {tuple(x.shape)}, edge_index [2, E] = {tuple(edge_index.shape)}, "
                f"edge_attr [E, B] = {tuple(edge_attr.shape)}",
                raise_on_fail,
            )
        if tuple(got.shape) != tuple(want.shape):
            return _verdict(
                False,
                f"output shape {tuple(got.shape)}, expected {tuple(want.shape)}: one new feature "
                "vector per atom, [N, A]",
                raise_on_fail,
            )
        perm = torch.randperm(edge_index.shape[1], generator=torch.Generator().manual_seed(1))
        shuffled = copy.deepcopy(mine)(x, edge_index[:, perm], edge_attr[perm])
        if not torch.allclose(shuffled, got, atol=1e-5):
            return _verdict(
                False,
                "your output changes when the same edges are listed in another order: a "
                "convolution must not depend on the order of neighbours (sum them with index_add_ "
                "instead of assuming a fixed layout)",
                raise_on_fail,
            )
        if torch.allclose(got, want, atol=1e-4, rtol=1e-3):  # batch norm on 7 atoms amplifies rounding
            return _verdict(
                True,
                f"your {reference} convolution matches cgcnn_lab's {type(ref).__name__} "
                f"(max abs. difference {(got - want).abs().max():.1e}) and ignores edge order",
                raise_on_fail,
            )
        variant = _gated_variant if reference == "gated" else _shared_variant
        mistakes = _GATED_MISTAKES if reference == "gated" else _SHARED_MISTAKES
        for hint, kwargs in mistakes.items():
            if torch.allclose(
                got, variant(copy.deepcopy(ref), x, edge_index, edge_attr, **kwargs), atol=1e-4, rtol=1e-3
            ):
                return _verdict(False, f"right shape, but {hint}", raise_on_fail)
    return _verdict(
        False,
        f"output differs from {type(ref).__name__} by up to {(got - want).abs().max():.3g}: "
        "follow the equation term by term (print intermediate shapes)",
        raise_on_fail,
    )


# ----------------------------------------------------------------------------------------------- data


def inline_plots() -> None:
    """Show matplotlib figures in the notebook (``cgcnn_lab.training.plots`` switches to the file-only Agg backend)."""
    import cgcnn_lab.training.plots  # noqa: F401  (imported first, so its matplotlib.use("Agg") happens now)

    try:
        ipython = get_ipython()  # type: ignore[name-defined]
    except NameError:
        return
    ipython.run_line_magic("matplotlib", "inline")


def fast_mode() -> bool:
    """``CGCNN_HOMEWORK_FAST=1`` (set by the CI test): small subsets, few epochs."""
    return os.environ.get("CGCNN_HOMEWORK_FAST", "") not in ("", "0")


def data_dir(default: str | os.PathLike = "../../../shared/data") -> Path:
    """The data folder: ``$CGCNN_DATA`` if set, else ``default`` (relative to the notebook's folder)."""
    return Path(os.environ.get("CGCNN_DATA", str(default))).expanduser()


def run_dir(name: str) -> str:
    """A fresh run folder ``$CGCNN_HOMEWORK_RUNS/name`` (default ``runs/name``): re-running a cell starts over."""
    import shutil

    path = Path(os.environ.get("CGCNN_HOMEWORK_RUNS", "runs")) / name
    if path.exists():
        shutil.rmtree(path)
    return str(path)


def subset(raw, n: int | None, seed: int = 0):
    """A reproducible random subset of ``n`` entries of a RawDataset (all of them if n is None or larger)."""
    if n is None or n >= len(raw.entries):
        return raw
    rng = np.random.default_rng(seed)
    keep = sorted(rng.choice(len(raw.entries), size=n, replace=False))
    out = copy.copy(raw)
    out.entries = [raw.entries[i] for i in keep]
    return out


def _cache_dir() -> Path:
    from cgcnn_lab.data.featurize import default_cache_dir

    return default_cache_dir()


def _demo_raw(n: int, seed: int, kind: str):
    from cgcnn_lab.data.demo import DEMO_TARGET, write_demo_dataset
    from cgcnn_lab.data.sources import from_structures, load_dataset

    path = _cache_dir() / "homework" / f"demo-{n}-{seed}.csv.gz"
    if not path.exists():
        write_demo_dataset(path, n=n, seed=seed)
    demo = load_dataset(path, [DEMO_TARGET])
    from pymatgen.core import Structure

    structures = [Structure.from_str(e.content, fmt="cif") for e in demo.entries]
    ids = [e.id for e in demo.entries]
    if (
        kind == "energy"
    ):  # per-atom Ewald energy -> an extensive "total energy of the cell", like the course's
        values = [float(e.targets[0]) * len(s) for e, s in zip(demo.entries, structures)]
        return from_structures(structures, values, ids, ["ewald_energy_total"])
    halide = {"F", "Cl", "Br", "I"}
    labels = [float(any(el.symbol in halide for el in s.composition)) for s in structures]
    return from_structures(structures, labels, ids, ["is_halide"])


GENERATED_NOTE = (
    "GENERATED stand-in data (not DFT): {n} distorted ABX3 perovskites from cgcnn_lab.data.demo, "
    "labelled with {what}. Set CGCNN_DATA to the course data folder for the real thing."
)


def energy_dataset(data: Path, n: int | None = None, seed: int = 0):
    """The course perovskites with the total energy of each cell (eV), or a generated stand-in.

    Returns ``(raw, description)``.
    """
    from cgcnn_lab.data.sources import read_cgcnn_folder

    folder = Path(data) / "homework" / "perovskite_energy"
    if (folder / "id_prop.csv").exists():
        raw = read_cgcnn_folder(folder)
        return subset(raw, n, seed), f"course perovskites ({folder}): total DFT energy of the cell, eV"
    count = n or 400
    print(GENERATED_NOTE.format(n=count, what="the Ewald (electrostatic) energy of the whole cell, eV"))
    return _demo_raw(count, seed, "energy"), "GENERATED perovskites: Ewald energy of the cell, eV (not DFT)"


ABO3_PROBES = {  # formula -> is it ABO3?, and what a wrong answer on it teaches
    "SrTiO3": (True, "the textbook perovskite"),
    "CaIrO3": (True, "a post-perovskite, but ABO3 all the same: the formula cannot tell"),
    "Sr2Ti2O6": (True, "the same as SrTiO3 once reduced: use Composition(formula).reduced_composition"),
    "Sr2TiO4": (False, "A2BO4 (Ruddlesden-Popper), not ABO3"),
    "SrTi2O6": (False, "A:B is 1:2 here, so not ABO3 even though it has O6 (it reduces to nothing smaller)"),
    "Ti2O3": (False, "two elements only: an ABO3 needs two different cations"),
    "BaO3": (False, "one cation only"),
    "LiNbO3": (True, "ABO3 (it is not a perovskite, which is the point of the ABO3 subset)"),
}


def check_abo3(is_abo3, raise_on_fail: bool = True) -> CheckResult:
    """``is_abo3(formula)`` on formulas chosen to catch the usual slips (unreduced formulas, A:B ratios)."""
    for formula, (want, why) in ABO3_PROBES.items():
        got = is_abo3(formula)
        if not isinstance(got, (bool, np.bool_)):
            return _verdict(False, f"is_abo3({formula!r}) returned {got!r}; return True or False", raise_on_fail)
        if bool(got) != want:
            return _verdict(False, f"is_abo3({formula!r}) should be {want}: {why}", raise_on_fail)
    return _verdict(True, f"is_abo3 is right on {len(ABO3_PROBES)} test formulas", raise_on_fail)


def bandgap_dataset(data: Path, n: int | None = None, seed: int = 0):
    """``(raw, threshold, description)``: the course band gaps (metal = gap 0), else Castelli's, else generated."""
    from cgcnn_lab.data.sources import load_dataset

    course = Path(data) / "homework" / "perovskites_mp.json.gz"
    castelli = Path(data) / "castelli_perovskites.csv.gz"
    if course.exists():
        raw = load_dataset(course, ["bandgap.energy"])
        return subset(raw, n, seed), 0.0, f"course perovskites ({course}): DFT band gap, eV; label = gap > 0"
    if castelli.exists():
        raw = load_dataset(castelli, ["gap_gllbsc"])
        return (
            subset(raw, n or 1000, seed),
            0.0,
            f"Castelli perovskites ({castelli}): GLLB-SC gap; label = gap > 0",
        )
    count = n or 400
    print(
        GENERATED_NOTE.format(n=count, what="1 = halide (X = F, Cl, Br, I), 0 = chalcogenide: not a band gap")
    )
    return _demo_raw(count, seed, "class"), None, "GENERATED perovskites: halide (1) vs chalcogenide (0)"
