"""The homework notebooks: generated from one source, checks that catch the usual mistakes, and every solution
notebook runs top to bottom (CGCNN_HOMEWORK_FAST=1, a temporary cache and run folder).

Select or skip the slow part with ``-m notebooks`` / ``-m "not notebooks"``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cgcnn_lab.course import homework as hw
from cgcnn_lab.model.convs import GatedConv, SharedConv
from cgcnn_lab.model.expansion import GaussianExpansion

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SOURCES = sorted((NOTEBOOKS / "src").glob("[0-9][0-9]_*.py"))
NOTEBOOK_TIMEOUT = 240  # seconds per notebook, FAST mode (they take 10-80 s on 2 busy cores)


# ----------------------------------------------------------------------------------------------- build


def test_build_check_passes() -> None:
    """The committed notebooks are exactly what notebooks/build.py generates from notebooks/src."""
    proc = subprocess.run(
        [sys.executable, str(NOTEBOOKS / "build.py"), "--check"], check=False, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_exercise_is_solution_without_todo_blocks(src: Path) -> None:
    sys.path.insert(0, str(NOTEBOOKS))
    try:
        import build
    finally:
        sys.path.remove(str(NOTEBOOKS))
    solution, exercise = (
        NOTEBOOKS / "solutions" / f"{src.stem}.ipynb",
        NOTEBOOKS / "exercises" / f"{src.stem}.ipynb",
    )
    sol_cells, ex_cells = _cells(solution), _cells(exercise)
    assert len(sol_cells) == len(ex_cells)
    todo = 0
    for s, e in zip(sol_cells, ex_cells):
        s_text, e_text = "".join(s["source"]), "".join(e["source"])
        for marker in build.MARKERS:
            assert marker not in s_text and marker not in e_text, f"solution marker {marker!r} leaked"
        if s["cell_type"] == "code":
            assert not s.get("outputs") and not e.get("outputs"), "commit notebooks without outputs"
            if "raise NotImplementedError" in e_text:
                todo += 1
                # outside the TODO blocks, the exercise's lines are the solution's, in the same order
                kept = [
                    ln for ln in e_text.splitlines() if "# TODO" not in ln and "NotImplementedError" not in ln
                ]
                it = iter(s_text.splitlines())
                assert all(any(ln == x for x in it) for ln in kept), (
                    f"exercise cell differs beyond its TODO:\n{e_text}"
                )
            else:
                assert s_text == e_text
        elif s_text != e_text:
            assert s_text.startswith("**Model answer.**") and e_text.startswith("**Your answer:**")
    assert todo >= 1, f"{exercise.name} has no TODO"
    assert any(c["source"] and "".join(c["source"]).startswith("**Model answer.**") for c in sol_cells), (
        "every notebook has written questions with model answers"
    )


def test_split_code_keeps_hints_and_indentation() -> None:
    sys.path.insert(0, str(NOTEBOOKS))
    try:
        from build import split_code
    finally:
        sys.path.remove(str(NOTEBOOKS))
    src = "def f(x):\n    # BEGIN SOLUTION: double it\n    # Hint: multiply\n    y = 2 * x\n    return y\n    # END SOLUTION\n"
    sol, ex, n = split_code(src)
    assert n == 1
    assert sol == "def f(x):\n    # Hint: multiply\n    y = 2 * x\n    return y"
    assert ex == "def f(x):\n    # TODO: double it\n    # Hint: multiply\n    raise NotImplementedError"


# ----------------------------------------------------------------------------------------------- checkers


def _message(result: hw.CheckResult) -> str:
    assert not result.ok, "the checker accepted a wrong answer"
    return result.message


@pytest.fixture(scope="module")
def nacl():
    return hw.nacl_structure()


def _right_pairs(structure, radius):
    return [
        (i, n.index, n.nn_distance)
        for i, s in enumerate(structure)
        for n in structure.get_neighbors(s, radius)
    ]


def test_species(nacl) -> None:
    assert hw.check_species([s.specie.Z for s in nacl], nacl)
    assert "specie.Z" in _message(hw.check_species([1] * len(nacl), nacl, raise_on_fail=False))
    assert "order" in _message(hw.check_species([s.specie.Z for s in nacl][::-1], nacl, raise_on_fail=False))
    with pytest.raises(hw.HomeworkCheckError, match="one per site"):
        hw.check_species([11], nacl)


def test_neighbors_correct_in_any_order(nacl) -> None:
    pairs = _right_pairs(nacl, 6.0)
    rng = np.random.default_rng(0)
    shuffled = [pairs[k] for k in rng.permutation(len(pairs))]
    noisy = [(i, j, d + 1e-5) for i, j, d in shuffled]  # rounding noise must not matter
    assert hw.check_neighbors(noisy, nacl, 6.0)
    assert hw.check_neighbors(np.array(shuffled), nacl, 6.0)


def test_neighbors_catch_typical_mistakes(nacl) -> None:
    pairs = _right_pairs(nacl, 6.0)
    cart = nacl.cart_coords
    in_cell = [(i, j, float(np.linalg.norm(cart[i] - cart[j]))) for i in range(8) for j in range(8) if i != j]
    assert "periodic images" in _message(hw.check_neighbors(in_cell, nacl, 6.0, raise_on_fail=False))
    min_image = [(i, j, nacl.get_distance(i, j)) for i in range(8) for j in range(8) if i != j]
    assert "periodic images" in _message(hw.check_neighbors(min_image, nacl, 6.0, raise_on_fail=False))
    msg = _message(hw.check_neighbors(pairs[:-4], nacl, 6.0, raise_on_fail=False))
    assert "distances are right but 4 neighbours are missing" in msg and "get_neighbors" in msg
    assert "0" in _message(hw.check_neighbors(pairs + [(0, 0, 0.0)], nacl, 6.0, raise_on_fail=False))
    assert "more often" in _message(hw.check_neighbors(pairs + [pairs[0]], nacl, 6.0, raise_on_fail=False))
    wrong_j = [(i, (j + 1) % 8, d) for i, j, d in pairs]
    assert "neighbor.index" in _message(hw.check_neighbors(wrong_j, nacl, 6.0, raise_on_fail=False))
    frac = [(i, j, d / 5.64) for i, j, d in pairs]
    assert "fractional" in _message(hw.check_neighbors(frac, nacl, 6.0, raise_on_fail=False))
    assert "triples" in _message(hw.check_neighbors([(0, 1)], nacl, 6.0, raise_on_fail=False))
    assert "exceed the radius" in _message(
        hw.check_neighbors(_right_pairs(nacl, 7.0), nacl, 6.0, raise_on_fail=False)
    )


def test_neighbors_max_neighbors_ties_are_fine(nacl) -> None:
    nearest = []
    for i, site in enumerate(nacl):
        nbrs = sorted(nacl.get_neighbors(site, 8.0), key=lambda n: n.nn_distance)
        nearest += [
            (i, n.index, n.nn_distance) for n in nbrs[::-1][-12:]
        ]  # another tie order, same distances
    assert hw.check_neighbors(nearest, nacl, 8.0, max_neighbors=12)
    all_pairs = _right_pairs(nacl, 8.0)
    assert "12 nearest" in _message(
        hw.check_neighbors(all_pairs, nacl, 8.0, max_neighbors=12, raise_on_fail=False)
    )


def test_gaussian_checker() -> None:
    assert hw.check_gaussian(GaussianExpansion())
    mu = torch.arange(0, 8.2, 0.2)

    def numpy_version(d):
        d = np.asarray(d)[:, None]
        return np.exp(-((d - np.arange(0, 8.1, 0.2)) ** 2) / 0.04)

    assert hw.check_gaussian(numpy_version)
    cases = {
        "radius + step": lambda d: torch.exp(-((d[:, None] - torch.arange(0, 8.0 - 1e-9, 0.2)) ** 2) / 0.04),
        "transpose": lambda d: torch.exp(-((d[:, None] - mu) ** 2) / 0.04).T,
        "square on the width": lambda d: torch.exp(-((d[:, None] - mu) ** 2) / 0.2),
        "2 width^2": lambda d: torch.exp(-((d[:, None] - mu) ** 2) / (2 * 0.04)),
        "exponent must be negative": lambda d: torch.exp(((d[:, None] - mu) ** 2) / 0.04),
    }
    for expected, fn in cases.items():
        assert expected in _message(hw.check_gaussian(fn, raise_on_fail=False)), expected


def test_close_and_shape_use_tolerances() -> None:
    assert hw.check_close(0.6627039313316345 + 1e-9, 0.6627039313316345)  # the course's failing assertion
    assert "differ" in _message(hw.check_close([1.0, 2.0], [1.0, 2.1], raise_on_fail=False))
    assert "swapped" in _message(hw.check_shape(np.zeros((41, 3)), (3, 41), raise_on_fail=False))
    assert hw.check_shape(np.zeros((3, 41)), (None, 41))


def test_atom_features(nacl) -> None:
    table = np.eye(119, 5)
    table[11, 0] = table[17, 1] = 1
    right = np.stack([table[s.specie.Z] for s in nacl])
    assert hw.check_atom_features(right, nacl, table)
    assert "off by one" in _message(
        hw.check_atom_features(
            np.stack([table[s.specie.Z - 1] for s in nacl]), nacl, table, raise_on_fail=False
        )
    )
    assert "transpose" in _message(hw.check_atom_features(right.T, nacl, table, raise_on_fail=False))


def _variant(ref_cls, **kwargs):
    """A module with the library's layer names whose forward is one of the checker's mistake variants."""
    from cgcnn_lab.course.homework import _gated_variant, _shared_variant

    fn = _gated_variant if ref_cls is GatedConv else _shared_variant

    class Variant(ref_cls):
        def forward(self, x, edge_index, edge_attr):
            return fn(self, x, edge_index, edge_attr, **kwargs)

    return Variant


def test_conv_checker_accepts_the_library_and_exact_reimplementations() -> None:
    assert hw.check_conv(GatedConv, "gated")
    assert hw.check_conv(SharedConv, "shared")
    assert hw.check_conv(
        _variant(GatedConv), "gated"
    )  # the checker's own reference form equals the library's
    assert hw.check_conv(_variant(SharedConv), "shared")


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"mean": True}, "average"),
        ({"flip": True}, "wrong atom"),
        ({"residual": False}, "residual"),
        ({"swap": True}, "swapped"),
        ({"order": "ji"}, "wrong order"),
        ({"bn": False}, "batch norm"),
    ],
)
def test_conv_checker_names_gated_mistakes(kwargs, expected) -> None:
    assert expected in _message(hw.check_conv(_variant(GatedConv, **kwargs), "gated", raise_on_fail=False))


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"mean": True}, "average"),
        ({"flip": True}, "wrong atom"),
        ({"self_term": False}, "self term"),
        ({"bn": False}, "batch norm"),
        ({"act": False}, "activation"),
    ],
)
def test_conv_checker_names_shared_mistakes(kwargs, expected) -> None:
    assert expected in _message(hw.check_conv(_variant(SharedConv, **kwargs), "shared", raise_on_fail=False))


def test_conv_checker_structure_and_order() -> None:
    class WrongNames(nn.Module):
        def __init__(self, a, b):
            super().__init__()
            self.linear = nn.Linear(2 * a + b, 2 * a)

    assert "fc_full" in _message(hw.check_conv(WrongNames, "gated", raise_on_fail=False))

    class OrderDependent(SharedConv):  # pretends every atom has its edges in one fixed block
        def forward(self, x, edge_index, edge_attr):
            out = super().forward(x, edge_index, edge_attr)
            return out + 1e-2 * edge_attr[: x.shape[0], :1]

    assert "order" in _message(hw.check_conv(OrderDependent, "shared", raise_on_fail=False))

    class WrongShape(SharedConv):
        def forward(self, x, edge_index, edge_attr):
            return super().forward(x, edge_index, edge_attr)[:, :2]

    assert "output shape" in _message(hw.check_conv(WrongShape, "shared", raise_on_fail=False))


def test_data_helpers_fall_back_to_generated_data(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CGCNN_LAB_CACHE", str(tmp_path / "cache"))
    raw, description = hw.energy_dataset(tmp_path / "no-data", n=12)
    assert "GENERATED" in description and "GENERATED" in capsys.readouterr().out
    assert len(raw.entries) == 12 and raw.target_names == ["ewald_energy_total"]
    raw, threshold, description = hw.bandgap_dataset(tmp_path / "no-data", n=12)
    assert threshold is None and {e.targets[0] for e in raw.entries} <= {0.0, 1.0}
    assert len(hw.subset(raw, 5).entries) == 5
    assert hw.data_dir("x") == Path(os.environ.get("CGCNN_DATA", "x"))


# ----------------------------------------------------------------------------------------------- execution


@pytest.mark.notebooks
@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_solution_notebook_runs(src: Path, tmp_path, monkeypatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("CGCNN_HOMEWORK_FAST", "1")
    monkeypatch.setenv("CGCNN_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CGCNN_HOMEWORK_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    path = NOTEBOOKS / "solutions" / f"{src.stem}.ipynb"
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=NOTEBOOK_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    if src.stem == "05_classification" and (ROOT.parent / "shared" / "data" / "perovskite_vs_oxides.csv.gz").exists():
        assert "the rule is right on" in printed and "ABO3 members (the rule" in printed  # the oxides part ran


# checkers: what a student is told when an answer is not yet right


def test_species_symbols_are_named_not_a_traceback(nacl):
    symbols = [site.specie.symbol for site in nacl]
    with pytest.raises(hw.HomeworkCheckError) as err:  # an AssertionError with a hint, not int()'s ValueError
        hw.check_species(symbols, nacl)
    message = str(err.value)
    assert "symbols" in message and "atomic numbers" in message and "specie.Z" in message and "11" in message
    assert "the right ones" in message
    wrong = _message(hw.check_species(["Na", "K"] * 4, nacl, raise_on_fail=False))
    assert "symbols" in wrong and "the right ones" not in wrong
    assert "Element" in _message(hw.check_species([s.specie for s in nacl], nacl, raise_on_fail=False))
    assert "sites" in _message(hw.check_species(list(nacl), nacl, raise_on_fail=False))
    odd = _message(hw.check_species([11, "x"] + [17] * 6, nacl, raise_on_fail=False))
    assert "'x'" in odd and "position 1" in odd and "atomic numbers" in odd
    assert "11.5" in _message(hw.check_species([11.5] * 8, nacl, raise_on_fail=False))


def test_species_number_forms_are_accepted(nacl):
    z = [site.specie.Z for site in nacl]
    assert hw.check_species(np.array(z), nacl)
    assert hw.check_species(torch.tensor(z), nacl)
    assert hw.check_species(list(torch.tensor(z)), nacl)
    assert hw.check_species([np.int64(v) for v in z], nacl)
    assert hw.check_species([str(v) for v in z], nacl)
    assert hw.check_species([float(v) for v in z], nacl)


def _pairs(structure, radius):
    return [(i, n.index, n.nn_distance) for i, s in enumerate(structure) for n in structure.get_neighbors(s, radius)]


def _in_cell(structure, radius):
    cart = structure.cart_coords
    n = len(structure)
    return [(i, j, float(np.linalg.norm(cart[i] - cart[j]))) for i in range(n) for j in range(n)
            if i != j and np.linalg.norm(cart[i] - cart[j]) <= radius]


def test_neighbors_too_small_radius_is_not_blamed_on_periodic_images(nacl):
    message = _message(hw.check_neighbors(_pairs(nacl, 4.5), nacl, 6.0, raise_on_fail=False))
    assert "radius is too small" in message and "periodic" not in message
    assert "3.988" in message and "6.0" in message and "4.884" in message  # where they stop, what is missing
    m_mode = _message(hw.check_neighbors(_pairs(nacl, 3.0), nacl, 8.0, max_neighbors=12, raise_on_fail=False))
    assert "radius is too small" in m_mode and "12 nearest" in m_mode and "periodic" not in m_mode


def test_neighbors_missing_images_and_both_causes(nacl):
    whole_cell = _message(hw.check_neighbors(_in_cell(nacl, 6.0), nacl, 6.0, raise_on_fail=False))
    assert "periodic images" in whole_cell and "radius is too small" not in whole_cell
    both = _message(hw.check_neighbors(_in_cell(nacl, 4.5), nacl, 6.0, raise_on_fail=False))
    assert "periodic images" in both and "3.988" in both and "radius is 6.0" in both
    first_image_only = []  # each neighbour j kept once per atom, from a correct search: images are lost
    for i, site in enumerate(nacl):
        seen = set()
        for n in nacl.get_neighbors(site, 6.0):
            if n.index not in seen:
                seen.add(n.index)
                first_image_only.append((i, n.index, n.nn_distance))
    once = _message(hw.check_neighbors(first_image_only, nacl, 6.0, raise_on_fail=False))
    assert "periodic images" in once and "radius is too small" not in once
    dropped = _message(hw.check_neighbors(_pairs(nacl, 6.0)[:-4], nacl, 6.0, raise_on_fail=False))
    assert "4 neighbours are missing" in dropped and "radius" not in dropped and "periodic" not in dropped


def test_neighbors_empty_list_names_the_nearest_distance(nacl):
    message = _message(hw.check_neighbors(_pairs(nacl, 1.0), nacl, 6.0, raise_on_fail=False))
    assert "empty" in message and "2.820" in message


def test_abo3_checker_teaches_reduction_and_ratios():
    from pymatgen.core import Composition

    def unreduced(formula):  # forgets to reduce: Sr2Ti2O6 is SrTiO3
        amounts = Composition(formula).get_el_amt_dict()
        return amounts.pop("O", 0) == 3 and sorted(amounts.values()) == [1, 1]

    with pytest.raises(hw.HomeworkCheckError, match="reduced_composition"):
        hw.check_abo3(unreduced)

    def oxygen_only(formula):  # looks at oxygen alone
        return Composition(formula).reduced_composition.get_el_amt_dict().get("O") == 3

    with pytest.raises(hw.HomeworkCheckError, match="cation"):
        hw.check_abo3(oxygen_only)
    assert not hw.check_abo3(lambda f: "yes", raise_on_fail=False).ok

    def right(formula):
        amounts = Composition(formula).reduced_composition.get_el_amt_dict()
        return amounts.pop("O", 0) == 3 and sorted(amounts.values()) == [1, 1]

    assert hw.check_abo3(right).ok
