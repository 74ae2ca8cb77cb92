"""Fuzzing the input pipeline with random crystals, and malformed inputs that test_sources.py does not cover.

Part 1 (``test_random_crystals_through_the_pipeline``): hypothesis draws batches of random crystals (skewed,
nearly flat and zero-volume cells, 0.5-200 Å lengths, extreme angles, Z = 1..118, 1-40 sites, duplicated and
overlapping sites, out-of-cell and NaN coordinates). Each crystal goes in as a pymatgen Structure
(``from_structures``) or as a CIF file written by pymatgen's CifWriter in a CGCNN folder (``load_dataset``), the
CIF sometimes truncated or mutated. ``build_dataset`` must return normally (or raise the documented "empty
dataset" DataError when nothing survives), account for every crystal exactly once as a graph or a Problem of a
documented kind, and produce valid graphs. Run with ``pytest -s`` to see the counts.

Part 2: a CIF without cell parameters, a structure above ``MAX_ATOMS``, a CSV whose target column is all text,
and malformed ``--train-ids/--val-ids/--test-ids`` files. Cases the library does not handle well are marked
``xfail(strict=True)`` with the reason, so fixing the library turns them into failures that ask for the marker
to be removed.

Nothing here touches the user's graph cache: ``use_cache=False`` or ``cache_dir=tmp_path`` everywhere.
"""

from __future__ import annotations

import faulthandler
import json
import math
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter
from test_fastcif import assert_readers_agree

from cgcnn_lab.data.dataset import build_dataset
from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.data.fastcif import plain_cif_graph
from cgcnn_lab.data.featurize import featurize_entries
from cgcnn_lab.data.graph import GraphConfig, GraphError
from cgcnn_lab.data.sources import (
    MAX_ATOMS,
    MIN_INTERATOMIC_DISTANCE,
    DataError,
    Problem,
    RawDataset,
    from_structures,
    load_dataset,
    problem_kind,
)

# ------------------------------------------------------------------------------------------------ part 1: fuzz

CONFIG = GraphConfig()  # the defaults: 8 Å, 12 neighbours
ENCODING = ElementEncoding.cgcnn92()  # Z = 1..100 only: 101..118 must come back as "unknown element"

# Every kind of per-entry problem that parsing/checking (sources.py), graph building (featurize.py/graph.py)
# and the element check (dataset.py) can report, as ``problem_kind`` spells it.
DOCUMENTED_KINDS = {
    "unreadable CIF",
    "unreadable structure JSON",
    "empty structure",
    "too many atoms",
    "disordered structure",
    "degenerate lattice",
    "non-finite atomic coordinates",
    "overlapping atoms",
    "isolated atom",
    "cannot build graph",
    "unknown element",
}

BATCHES = 520  # hypothesis examples of 8-12 crystals; it repeats many, ~1,150 are distinct
MIN_CRYSTALS = 1000
SLOW_BATCH_S = 30.0  # a batch slower than this fails the test (a blow-up, not a slow CI machine)
HANG_S = 300.0  # a batch still running after this dumps every thread's stack and ends the process

SEEN: set[str] = set()
FAILED = False
STATS: Counter = Counter()  # "tried", "graph", "problem: <kind>", "skipped: ..."; printed by the test
SLOWEST: list = [0.0, ""]

LENGTHS = st.one_of(  # mostly crystal-sized; a cell that is huge in all three directions costs ~1 s in the library
    st.floats(0.5, 15.0),
    st.floats(0.5, 200.0),
    st.sampled_from([0.5, 0.7, 1.0, 1.5, 2.5, 3.5, 4.2, 5.6, 8.0, 8.001, 16.0, 50.0, 120.0, 200.0]),
)
ANGLES = st.one_of(
    st.floats(60.0, 120.0),
    st.floats(0.5, 179.5),
    st.sampled_from([90.0, 90.0, 90.0, 60.0, 120.0, 109.47, 1.0, 5.0, 175.0, 179.0, 0.5, 179.5]),
)
ATOMIC_NUMBERS = st.one_of(st.integers(1, 118), st.sampled_from([1, 3, 6, 8, 11, 17, 26, 55, 92, 100, 101, 118]))
COPLANAR_EPS = st.sampled_from([0.0, 1e-12, 1e-6, 1e-4, 1e-3, 1e-2, 0.05, 0.2, 1.0])
CIF_TOKENS = ["?", ".", "nan", "abc", "0", "0.01", "1", "1e999", "-", "''"]  # in place of any CIF value


@st.composite
def lattice_matrices(draw) -> tuple[str, list[list[float]]]:
    mode = draw(st.sampled_from(["physical", "physical", "params", "orthogonal", "coplanar", "matrix"]))
    if mode == "physical":  # what real files hold: 2.5-15 Å, angles 60-120°
        a, b, c = (draw(st.floats(2.5, 15.0)) for _ in range(3))
        alpha, beta, gamma = (draw(st.floats(60.0, 120.0)) for _ in range(3))
        return mode, Lattice.from_parameters(a, b, c, alpha, beta, gamma).matrix.tolist()
    if mode == "orthogonal":
        a, b, c = draw(LENGTHS), draw(LENGTHS), draw(LENGTHS)
        return mode, [[a, 0, 0], [0, b, 0], [0, 0, c]]
    if mode == "params":  # invalid angle triples give a flat cell (pymatgen caps the cosines)
        a, b, c = draw(LENGTHS), draw(LENGTHS), draw(LENGTHS)
        alpha, beta, gamma = draw(ANGLES), draw(ANGLES), draw(ANGLES)
        return mode, Lattice.from_parameters(a, b, c, alpha, beta, gamma).matrix.tolist()
    if mode == "coplanar":  # c = s a + t b + eps n: zero or nearly zero volume, very skewed
        a, b = draw(LENGTHS), draw(LENGTHS)
        gamma = draw(ANGLES)
        s, t = draw(st.floats(-2, 2)), draw(st.floats(-2, 2))
        eps = draw(COPLANAR_EPS)
        va = np.array([a, 0.0, 0.0])
        vb = b * np.array([math.cos(math.radians(gamma)), math.sin(math.radians(gamma)), 0.0])
        vc = s * va + t * vb + np.array([0.0, 0.0, eps])
        return mode, [va.tolist(), vb.tolist(), vc.tolist()]
    cells = st.one_of(st.floats(-15, 15), st.floats(-200, 200), st.sampled_from([0.0, 0.0, 0.5, -0.5, 1.0, 5.0, 200.0]))
    return mode, [[draw(cells) for _ in range(3)] for _ in range(3)]


@st.composite
def crystals(draw) -> dict:
    """One crystal as plain data (printed by hypothesis when a case fails)."""
    mode, matrix = draw(lattice_matrices())
    n = draw(st.one_of(st.integers(1, 40), st.integers(1, 4)))
    palette = draw(st.lists(ATOMIC_NUMBERS, min_size=1, max_size=4))
    # Sites come from a seeded generator (keeps hypothesis' choice sequence short); hypothesis picks the seed,
    # the elements and how to spoil the coordinates.
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    zs = rng.choice(palette, size=n).tolist()
    coords = rng.random((n, 3))
    coord_mode = draw(st.sampled_from(["random", "random", "spread", "spread", "duplicates", "outside", "grid", "nan"]))
    if coord_mode == "spread":  # one atom per cell of a k x k x k grid, jittered: well separated
        k = math.ceil(n ** (1 / 3))
        cells = rng.permutation(k**3)[:n]
        coords = (np.stack([cells // (k * k), cells // k % k, cells % k], axis=1) + 0.5 + 0.3 * (coords - 0.5)) / k
    elif coord_mode == "duplicates" and n > 1:
        for _ in range(draw(st.integers(1, n))):
            i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
            coords[j] = coords[i] + draw(st.sampled_from([0.0, 0.0, 1e-9, 1e-3, 0.01, 1.0, -1.0]))
    elif coord_mode == "outside":
        coords = coords * 6.0 - 3.0
    elif coord_mode == "grid":  # a few special positions; many sites share them
        coords = rng.integers(0, 4, size=(n, 3)) / 4.0
    elif coord_mode == "nan":
        coords[draw(st.integers(0, n - 1)), draw(st.integers(0, 2))] = draw(st.sampled_from([math.nan, math.inf]))
    form = draw(st.sampled_from(["structure", "structure", "cif", "cif_mutated"]))
    mutation = None
    if form == "cif_mutated":
        mutation = (
            draw(st.sampled_from(["truncate", "drop_line", "dup_line", "token", "token"])),
            draw(st.floats(0.0, 1.0)),
            draw(st.sampled_from(CIF_TOKENS)),
        )
    return {
        "lattice": mode, "matrix": matrix, "zs": zs, "coords": coords.tolist(), "coord_mode": coord_mode,
        "form": form, "mutation": mutation,
    }


def _volume(matrix: np.ndarray) -> float:
    with np.errstate(all="ignore"):
        return abs(float(np.linalg.det(matrix))) if np.isfinite(matrix).all() else math.nan


def neighbour_search_cost(matrix: np.ndarray, frac: np.ndarray, radius: float) -> tuple[float, float]:
    """(points generated, cubes allocated) by pymatgen's periodic neighbour search (optimization/neighbors.pyx):
    atoms x lattice images in the box of the atoms' fractional extent +- radius / height along each cell vector
    (the given basis, not a reduced one), and cubes of edge max(radius, 1 Å) over the atoms' Cartesian extent
    + 2 radius, 224 bytes each. Coordinates are not wrapped into the cell first."""
    with np.errstate(all="ignore"):
        volume = _volume(matrix)
        areas = np.linalg.norm(np.cross(matrix[[1, 2, 0]], matrix[[2, 0, 1]]), axis=1)
        reach = radius * areas / volume  # radius / height, in cell lengths
        images = np.prod(np.ptp(frac, axis=0) + 2 * reach + 2)
        cubes = np.prod((np.ptp(frac @ matrix, axis=0) + 2 * radius) / max(radius, 1.0) + 1)
    return float(len(frac) * images), float(cubes)


MAX_POINTS = 2e7  # as the library's own limit (graph.MAX_SEARCH_POINTS): about 1 s
MAX_CUBES = 1.5e6  # about 340 MB and 0.3 s: a cell filled with atoms up to ~115 Å on every side


def library_refuses(matrix: np.ndarray, n_atoms: int, radius: float) -> bool:
    """Whether the library's own guard (graph.search_size_problem) refuses the search before running it."""
    from cgcnn_lab.data.graph import MAX_SEARCH_POINTS, search_points

    with np.errstate(all="ignore"):
        return search_points(matrix, n_atoms, radius) > MAX_SEARCH_POINTS


def known_blowup(spec: dict) -> str | None:
    """Crystals that would still exhaust memory or hang in pymatgen's neighbour search despite the library's
    guard (graph.search_size_problem, which counts periodic images from the cell's heights only): the cube grid
    over the atoms' Cartesian extent (after wrapping into the cell) costs 224 bytes per Å^3 at the 0.5 Å overlap check: a cell filled
    with atoms 200 Å on every side allocates ~1.8 GB. Such crystals are counted as skipped instead of being run;
    the reason is returned. For CIF input (which may lose atoms when parsed) the library's refusal is predicted
    for one atom, the search cost for all of them."""
    matrix = np.array(spec["matrix"], dtype=float)
    frac = np.array(spec["coords"], dtype=float)
    is_structure = spec["form"] == "structure"
    if not is_structure:  # the CIF parser may drop a site it cannot read
        frac = frac[np.isfinite(frac).all(axis=1)]
    n_min = len(frac) if is_structure else 1
    volume = _volume(matrix)
    if not (math.isfinite(volume) and volume >= 1e-3 * n_min) or not len(frac) or not np.isfinite(frac).all():
        return None  # reported as a degenerate lattice / non-finite coordinates before any neighbour search
    for radius in (MIN_INTERATOMIC_DISTANCE, CONFIG.radius):  # check_structure's search, then the graph's
        if library_refuses(matrix, n_min, radius):
            return None
        points, cubes = neighbour_search_cost(matrix, frac % 1.0, radius)  # the library wraps coordinates
        if not (points <= MAX_POINTS and cubes <= MAX_CUBES):
            return "cell too large for a cheap neighbour search"
    return None


def _structure(spec: dict) -> Structure:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return Structure(Lattice(spec["matrix"]), spec["zs"], spec["coords"])


def _cif_text(structure: Structure, mutation: tuple | None) -> str:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # pymatgen warns about exotic elements while writing
        text = str(CifWriter(structure))
    if mutation is None:
        return text
    kind, where, token = mutation
    lines = text.splitlines()
    k = min(int(where * len(lines)), len(lines) - 1)
    if kind == "truncate":
        return text[: int(where * len(text))]
    if kind == "drop_line":
        del lines[k]
    elif kind == "dup_line":
        lines.insert(k, lines[k])
    else:  # replace one whitespace-separated token of one line
        words = lines[k].split()
        if words:
            words[min(int(where * 7919) % len(words), len(words) - 1)] = token
            lines[k] = "  " + " ".join(words)
    return "\n".join(lines) + "\n"


def check_graph(graph, zs_in: list[int], form: str, where: str) -> None:
    n = graph.n_atoms
    ei, d = graph.edge_index, graph.distance
    assert ei.ndim == 2 and ei.shape[0] == 2 and ei.shape[1] == d.shape[0], where
    assert ei.dtype == np.int64 and d.dtype == np.float32, where
    assert ((ei >= 0) & (ei < n)).all(), f"{where}: edge index out of range"
    assert np.isfinite(d).all() and (d > 0).all(), f"{where}: distances {d.min()}..{d.max()}"
    assert d.max() <= CONFIG.radius * (1 + 1e-6), f"{where}: edge longer than the radius: {d.max()}"
    # the overlap check guarantees no two atoms (or an atom and its periodic images) closer than 0.5 Å
    assert d.min() >= MIN_INTERATOMIC_DISTANCE * (1 - 1e-6), f"{where}: edge of {d.min()} Å"
    degree = graph.degree()
    assert degree.max() <= CONFIG.max_neighbors, f"{where}: {degree.max()} edges on one atom"
    assert degree.min() >= 1, f"{where}: isolated atom in a graph"
    z = graph.z.tolist()
    assert all(ENCODING.available[v] for v in z), f"{where}: unknown element kept: {z}"
    if form == "structure":
        assert z == zs_in, where
    elif form == "cif":  # CIF parsing may merge duplicated sites
        assert n <= len(zs_in) and set(z) <= set(zs_in), where
    elif n != len(zs_in):  # a mutated symmetry operation ("nan y, z") can move, add or drop atoms silently
        STATS["graph from a mutated CIF with another number of atoms"] += 1


def _anchor() -> Structure:
    """CsCl: always featurises. Most batches include it, so build_dataset rarely ends with an empty dataset."""
    return Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def same_through_both_readers(entries) -> None:
    """The fast CIF reader (data/fastcif.py) and pymatgen's give identical graphs and identical problems."""
    assert_readers_agree(entries, CONFIG)
    for e in entries:
        try:
            fast_path = plain_cif_graph(e.content, CONFIG) is not None
        except GraphError:  # an isolated atom: the documented problem, raised by the fast reader's graph
            fast_path = True
        STATS["CIF read by the fast reader (same result as pymatgen's)"] += fast_path


def run_batch(specs: list[dict], with_anchor: bool) -> None:
    """Feed one batch through the real readers and ``build_dataset``; check and count every outcome."""
    structures, structure_ids, cif_texts = [], [], {}
    specs_by_id: dict[str, dict] = {}
    for k, spec in enumerate(specs):
        key = json.dumps(spec, sort_keys=True)
        if key in SEEN and not FAILED:  # hypothesis re-uses parts of earlier examples: run each crystal once
            STATS["repeats (not run again)"] += 1
            continue
        SEEN.add(key)
        blowup = known_blowup(spec)
        if blowup:
            STATS[f"skipped: {blowup}"] += 1
            continue
        s = _structure(spec)
        if spec["form"] == "structure":
            structures.append(s)
            structure_ids.append(f"s{k}")
            specs_by_id[f"s{k}"] = spec
        else:
            cif_texts[f"c{k}"] = _cif_text(s, spec["mutation"])
            specs_by_id[f"c{k}"] = spec
    if not specs_by_id:
        return
    if with_anchor:
        structures.append(_anchor())
        structure_ids.append("anchor")
        specs_by_id["anchor"] = {"zs": [55, 17], "form": "structure"}
    rng = np.random.default_rng(len(specs))

    with tempfile.TemporaryDirectory() as tmp:
        entries = []
        if structures:  # pymatgen objects
            raw_s = from_structures(structures, targets=rng.normal(size=len(structures)), ids=structure_ids)
            assert raw_s.problems == []
            entries += raw_s.entries
        if cif_texts:  # CIF files in a CGCNN folder
            folder = Path(tmp) / "fuzz"
            folder.mkdir()
            for cid, text in cif_texts.items():
                (folder / f"{cid}.cif").write_text(text, encoding="utf-8")
            (folder / "id_prop.csv").write_text("".join(f"{cid},{rng.normal():.6f}\n" for cid in cif_texts))
            raw_c = load_dataset(folder)
            assert raw_c.problems == [] and [e.id for e in raw_c.entries] == list(cif_texts)
            assert all(e.where == str(folder / f"{e.id}.cif") for e in raw_c.entries)
            entries += raw_c.entries
        raw = RawDataset("fuzz", entries, ["target"], [])
        expected_where = {e.id: e.where for e in entries}

        start = time.perf_counter()
        faulthandler.dump_traceback_later(HANG_S, exit=True)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    ds = build_dataset(raw, CONFIG, ENCODING, use_cache=False, jobs=1)
                    problems = ds.problems
                    graph_items = [(str(i), ds.graphs.graph(k)) for k, i in enumerate(ds.ids)]
                except DataError as err:  # documented only for "nothing survived"
                    assert not with_anchor, err
                    assert re.match(r"fuzz: empty dataset, no crystal could be featurised\nskipped \d+ entr", str(err)), err
                    STATS["batches ending in the documented 'empty dataset' DataError"] += 1
                    # account for every entry without build_dataset's element filtering
                    ids, graphs, problems = featurize_entries(entries, CONFIG, jobs=1)
                    for i, g in zip(ids, graphs):  # build_dataset dropped it: it must hold an unknown element
                        assert not ENCODING.available[g.z].all(), f"{i}: graph dropped without a reason"
                        problems.append(Problem(expected_where[i], i, "unknown element: dropped by build_dataset"))
                    graph_items = []
            same_through_both_readers([e for e in entries if e.id in cif_texts])
        finally:
            faulthandler.cancel_dump_traceback_later()
        seconds = time.perf_counter() - start
        if seconds > SLOWEST[0]:
            SLOWEST[:] = [seconds, repr(specs)[:300]]
        assert seconds < SLOW_BATCH_S, f"batch took {seconds:.1f} s: {specs!r}"
        for w in caught:
            STATS[f"warning leaked from build_dataset: {str(w.message).splitlines()[0][:60]} {w.filename}:{w.lineno}"] += 1

    accounted = [i for i, _ in graph_items] + [p.id for p in problems]
    assert sorted(accounted) == sorted(expected_where), "every crystal must be a graph or a problem, exactly once"
    for p in problems:
        kind = problem_kind(p.message)
        assert kind in DOCUMENTED_KINDS, f"undocumented problem kind {kind!r}: {p}"
        assert p.where == expected_where[p.id], p
        assert "\n" not in p.message and len(p.message) < 1000, p
        assert p.id != "anchor", p
        STATS[f"problem: {kind}"] += 1
    for i, g in graph_items:
        spec = specs_by_id[i]
        check_graph(g, spec["zs"], spec["form"], where=f"{i}: {spec!r}"[:2000])
        STATS["graph"] += i != "anchor"
    if with_anchor:
        assert "anchor" in {i for i, _ in graph_items}
    STATS["tried"] += len(specs_by_id) - with_anchor
    STATS["tried as Structure"] += len(structures) - with_anchor
    STATS["tried as CIF"] += len(cif_texts)


@settings(
    max_examples=BATCHES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(crystals(), min_size=8, max_size=12), st.sampled_from([True] * 7 + [False]))
def _fuzz(specs: list[dict], with_anchor: bool) -> None:
    global FAILED
    try:
        run_batch(specs, with_anchor)
    except BaseException:
        FAILED = True  # from now on run repeats too, so that hypothesis can replay and shrink the failure
        raise


def test_random_crystals_through_the_pipeline() -> None:
    global FAILED
    STATS.clear()
    SEEN.clear()
    FAILED = False
    start = time.perf_counter()
    _fuzz()
    seconds = time.perf_counter() - start
    lines = [f"fuzz: {STATS['tried']} crystals in {seconds:.1f} s (slowest batch {SLOWEST[0]:.2f} s)"]
    lines += [f"  {n:6d}  {k}" for k, n in sorted(STATS.items(), key=lambda kv: (-kv[1], kv[0])) if k != "tried"]
    print("\n" + "\n".join(lines))
    assert STATS["tried"] >= MIN_CRYSTALS
    assert STATS["graph"] > 0 and STATS["problem: overlapping atoms"] > 0 and STATS["problem: unknown element"] > 0


# ------------------------------------------------------------------------------------------------ part 2: malformed

BAD = "xq7"  # id of the bad entry; chosen so that it never occurs in a tmp_path name


def _cscl() -> Structure:
    return Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _cif(structure: Structure) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return structure.to(fmt="cif")


def _without_lines(text: str, prefix: str) -> str:
    kept = [line for line in text.splitlines() if not line.startswith(prefix)]
    assert len(kept) < len(text.splitlines())
    return "\n".join(kept) + "\n"


def test_huge_cells_do_not_blow_up():
    """200 Å cells at the 8 Å radius: a lone atom is an isolated atom, a close pair one edge each way."""
    lone = Structure(Lattice.cubic(200.0), ["Na"], [[0.5, 0.5, 0.5]])
    pair = Structure(Lattice.cubic(200.0), ["Na", "Cl"], [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5 + 2.8 / 200]])
    start = time.perf_counter()
    ds = build_dataset(from_structures([lone, pair], ids=["lone", "pair"]), CONFIG, ENCODING, use_cache=False, jobs=1)
    assert time.perf_counter() - start < 10
    assert list(ds.ids) == ["pair"]
    assert [str(p) for p in ds.problems] == [
        (
            "structure #0 (id lone): isolated atom: atom 0 (Na) has no neighbour within 8.0 Å (1 isolated atom(s)); "
            "increase --radius or check the cell"
        )
    ]
    graph = ds.graphs.graph(0)
    assert graph.edge_index.tolist() == [[1, 0], [0, 1]]
    np.testing.assert_allclose(graph.distance, [2.8, 2.8], atol=1e-4)


@pytest.mark.parametrize("missing", ["_cell_", "_cell_length_a"])
def test_cif_without_cell_parameters_is_skipped_naming_the_file(tmp_path, missing):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "good.cif").write_text(_cif(_cscl()))
    (folder / f"{BAD}.cif").write_text(_without_lines(_cif(_cscl()), missing))
    (folder / "id_prop.csv").write_text(f"good,1\n{BAD},2\n")
    ds = build_dataset(load_dataset(folder), CONFIG, ENCODING, cache_dir=tmp_path / "cache")
    assert list(ds.ids) == ["good"]
    (problem,) = ds.problems
    assert problem.where == str(folder / f"{BAD}.cif")
    assert problem.message.startswith("unreadable CIF: no cell parameters (_cell_length_a")
    with pytest.raises(DataError, match=rf"^{re.escape(str(folder / BAD))}\.cif: unreadable CIF: .*\(strict mode"):
        build_dataset(load_dataset(folder, strict=True), CONFIG, ENCODING, cache_dir=tmp_path / "cache", strict=True)


@pytest.mark.parametrize("missing", ["_cell_", "_cell_length_a"])
def test_cif_without_cell_parameters_says_what_is_missing(missing):
    from cgcnn_lab.data.sources import Entry, parse_structure

    entry = Entry(BAD, f"data/{BAD}.cif", _without_lines(_cif(_cscl()), missing))
    with pytest.raises(DataError, match=rf"^data/{BAD}\.cif: .*(_cell_length_a|cell parameter|lattice parameter)"):
        parse_structure(entry)


def test_more_atoms_than_max_atoms_is_skipped_naming_the_row(tmp_path):
    """MAX_ATOMS + 1 well separated atoms (a JSON table row) are refused before any neighbour search;
    exactly MAX_ATOMS are accepted."""
    k = math.ceil((MAX_ATOMS + 1) ** (1 / 3))
    grid = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), axis=-1).reshape(-1, 3) / k

    def hydrogens(n: int) -> Structure:
        return Structure(Lattice.cubic(2.0 * k), ["H"] * n, grid[:n])  # 2 Å apart

    path = tmp_path / "t.json"
    path.write_text(json.dumps([
        {"id": "good", "structure": _cscl().as_dict(), "e": 1.0},
        {"id": BAD, "structure": hydrogens(MAX_ATOMS + 1).as_dict(), "e": 2.0},
    ]))
    start = time.perf_counter()
    ds = build_dataset(load_dataset(path, targets=["e"]), CONFIG, ENCODING, cache_dir=tmp_path / "cache")
    assert time.perf_counter() - start < 20
    assert list(ds.ids) == ["good"]
    assert [str(p) for p in ds.problems] == [
        f"t.json row 2 (id {BAD}): too many atoms: {MAX_ATOMS + 1} (the limit is {MAX_ATOMS})"
    ]
    at_limit = build_dataset(from_structures([hydrogens(MAX_ATOMS)]), CONFIG, ENCODING, use_cache=False, jobs=1)
    assert at_limit.problems == [] and at_limit.n_atoms.tolist() == [MAX_ATOMS]


def test_csv_target_column_entirely_text(tmp_path):
    text = _cif(_cscl())
    path = tmp_path / "t.csv"
    pd.DataFrame({"id": ["a", "b", "c"], "cif": [text] * 3, "e": ["high", "low", "n/a"]}).to_csv(path, index=False)
    raw = load_dataset(path, targets=["e"])
    assert raw.entries == []
    rows = [
        "t.csv row 1 (id a): target 'e' is not a number: 'high'",
        "t.csv row 2 (id b): target 'e' is not a number: 'low'",
        "t.csv row 3 (id c): target 'e' is not a number: 'n/a'",
    ]
    assert [str(p) for p in raw.problems] == rows
    with pytest.raises(DataError) as err:
        build_dataset(raw, CONFIG, ENCODING, cache_dir=tmp_path / "cache")
    assert str(err.value).splitlines() == [
        "t: empty dataset, no usable crystals",
        "skipped 3 entries: 3 × target 'e' is not a number",
        *(f"  {row}" for row in rows),
    ]
    with pytest.raises(DataError, match=rf"^{re.escape(rows[0])} \(strict mode"):
        load_dataset(path, targets=["e"], strict=True)


# --train-ids / --val-ids / --test-ids: train/run.py reads each file with read_id_list and splits with id_split

IDS = ["a", "b", "c", "d"]


def _id_file(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def test_id_files_with_bom_crlf_comments_and_csv_columns(tmp_path):
    from cgcnn_lab.training.splits import id_split, read_id_list

    train = _id_file(tmp_path, "train.txt", "\ufeff# training ids\r\na\r\n\r\nb,0.5\r\n")
    val = _id_file(tmp_path, "val.txt", "c")
    test = _id_file(tmp_path, "test.csv", "d,1\n")
    assert read_id_list(train) == ["a", "b"]
    split = id_split(IDS, read_id_list(train), read_id_list(val), read_id_list(test))
    assert (split.train.tolist(), split.val.tolist(), split.test.tolist()) == ([0, 1], [2], [3])


def test_id_file_naming_ids_not_in_the_dataset(tmp_path):
    from cgcnn_lab.training.splits import id_split, read_id_list

    val = read_id_list(_id_file(tmp_path, "val.txt", "c\nzz\n"))
    with pytest.raises(DataError) as err:
        id_split(IDS, ["a", "b"], val, [])
    assert str(err.value) == "val ids not in the dataset (or skipped as bad entries): ['zz']"
    test = read_id_list(_id_file(tmp_path, "test.txt", "".join(f"x{i}\n" for i in range(7))))
    with pytest.raises(DataError) as err:
        id_split(IDS, ["a", "b"], ["c"], test)
    assert str(err.value) == (
        "test ids not in the dataset (or skipped as bad entries): ['x0', 'x1', 'x2', 'x3', 'x4'] and 2 more"
    )


def test_id_listed_in_two_split_files(tmp_path):
    from cgcnn_lab.training.splits import id_split, read_id_list

    train = read_id_list(_id_file(tmp_path, "train.txt", "a\nb\n"))
    val = read_id_list(_id_file(tmp_path, "val.txt", "b\nc\n"))
    with pytest.raises(DataError) as err:
        id_split(IDS, train, val, [])
    assert str(err.value) == "ids in more than one split: ['b']"


def test_missing_id_file(tmp_path):
    from cgcnn_lab.training.splits import read_id_list

    path = tmp_path / "nothere.txt"
    with pytest.raises(DataError) as err:
        read_id_list(path)
    assert str(err.value) == f"{path}: cannot read id list (No such file or directory)"


@pytest.mark.parametrize("content", [bytes(range(256)), "a\ncafé\n".encode("latin-1")], ids=["binary", "latin-1"])
def test_id_file_that_is_not_utf8_text(tmp_path, content):
    from cgcnn_lab.training.splits import read_id_list

    path = _id_file(tmp_path, "train.txt", content)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: .*UTF-8"):
        read_id_list(path)


@pytest.mark.parametrize("content", ["", "# no ids yet\n\n"], ids=["empty", "comments-only"])
def test_empty_id_file(tmp_path, content):
    from cgcnn_lab.training.splits import id_split, read_id_list

    path = _id_file(tmp_path, "train.txt", content)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}.*(empty|no ids)"):
        id_split(IDS, read_id_list(path), ["c"], [])


def test_id_listed_twice_in_one_file(tmp_path):
    from cgcnn_lab.training.splits import id_split, read_id_list

    path = _id_file(tmp_path, "train.txt", "a\nb\na\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: id 'a' listed twice$"):
        id_split(IDS, read_id_list(path), ["c"], [])


# ------------------------------------------------------------------------------------------------ known library bugs


def test_single_atom_close_to_its_own_image():
    tiny = Structure(Lattice.cubic(0.3), ["Na"], [[0, 0, 0]])
    ds = build_dataset(from_structures([tiny, _cscl()], ids=["tiny", "ok"]), CONFIG, ENCODING, use_cache=False, jobs=1)
    assert list(ds.ids) == ["ok"]
    assert [(p.where, problem_kind(p.message)) for p in ds.problems] == [("structure #0 (id tiny)", "overlapping atoms")]


UNWRAPPED = """
import resource, sys
from pymatgen.core import Lattice, Structure
from cgcnn_lab.data.sources import DataError, Entry, parse_structure

vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + 1_500_000_000, vm + 1_500_000_000))  # 1.5 GB more
# two atoms 50 Å apart once wrapped into the cell; the fractional coordinates (3, 3, 3.5) are not wrapped
structure = Structure(Lattice.cubic(100.0), ["Na", "Cl"], [[0, 0, 0], [3.0, 3.0, 3.5]])
try:
    parse_structure(Entry("far", "far.json", structure))
except DataError as err:
    print("DataError:", err)
except MemoryError as err:
    print("MemoryError:", err)
    sys.exit(3)
print("ok")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and RLIMIT_AS")
def test_unwrapped_coordinates_in_a_large_cell():
    out = subprocess.run([sys.executable, "-c", UNWRAPPED], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
