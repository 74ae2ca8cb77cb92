"""The fast CIF reader gives pymatgen's graphs bit for bit, and hands every other file to pymatgen."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from cgcnn_lab.data.fastcif import plain_cif_graph, read_plain_cif
from cgcnn_lab.data.featurize import featurize_entries
from cgcnn_lab.data.graph import GraphConfig
from cgcnn_lab.data.sources import Entry, load_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CONFIG = GraphConfig()


def assert_readers_agree(entries, config: GraphConfig = CONFIG) -> None:
    """The fast CIF reader and pymatgen's give identical graphs and identical problems for ``entries``."""
    fast = featurize_entries(entries, config, jobs=1)
    slow = featurize_entries(entries, config, jobs=1, fast_cif=False)
    assert fast[0] == slow[0]
    assert [(p.id, p.message) for p in fast[2]] == [(p.id, p.message) for p in slow[2]]
    for i, a, b in zip(fast[0], fast[1], slow[1], strict=True):
        for name in ("z", "edge_index", "distance"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"{i}: {name}")


def texts_agree(texts: list[str], config: GraphConfig = CONFIG) -> None:
    assert_readers_agree([Entry(f"e{k}", f"e{k}.cif", t) for k, t in enumerate(texts)], config)


def cif(structure: Structure, **kw) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(CifWriter(structure, **kw))


def perovskite() -> Structure:
    return Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


@pytest.mark.parametrize("name, target", [
    ("homework/perovskite_energy", None), ("castelli_perovskites.csv.gz", "e_form"),
    ("mp_perovskites.csv.gz", "e_form_per_atom"),
])
def test_real_datasets_give_pymatgens_graphs_bit_for_bit(name, target):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    entries = load_dataset(str(path), [target] if target else []).entries
    sample = [entries[i] for i in np.random.default_rng(0).choice(len(entries), 150, replace=False)]
    assert all(plain_cif_graph(e.content, CONFIG) is not None for e in sample)  # all take the fast path
    texts_agree([e.content for e in sample])


def test_atoms_come_in_pymatgens_order():
    s = perovskite()
    text = cif(s).replace("  Sr  Sr0", "  Sr  Sr9")  # any label
    lines = text.splitlines()
    sites = [k for k, line in enumerate(lines) if line.strip().split()[:1] in (["Sr"], ["Ti"], ["O"])]
    lines[sites[0]], lines[sites[-1]] = lines[sites[-1]], lines[sites[0]]  # an O first, Sr last
    text = "\n".join(lines)
    cell = read_plain_cif(text)
    assert cell.z.tolist() == list(Structure.from_str(text, fmt="cif").atomic_numbers) == [38, 22, 8, 8, 8]
    texts_agree([text])


def test_thirds_written_with_few_digits_are_snapped_like_pymatgen():
    s = Structure(Lattice.hexagonal(3.2, 5.2), ["Zn", "Zn", "O", "O"],
                  [[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5], [1 / 3, 2 / 3, 0.38], [2 / 3, 1 / 3, 0.88]])
    text = cif(s).replace("0.33333333", "0.3333").replace("0.66666667", "0.6667")
    assert read_plain_cif(text) is not None
    texts_agree([text])


def test_numbers_with_uncertainties():
    text = cif(perovskite()).replace("3.90000000", "3.9000(2)").replace("0.50000000", "0.5000(1)")
    assert "(1)" in text and read_plain_cif(text) is not None
    texts_agree([text])


def nacl_symmetric() -> str:
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return cif(nacl, symprec=0.1)  # written with its space group: 2 sites + 192 operations


def partial_occupancy() -> str:
    s = perovskite()
    s.replace(0, {"Sr": 0.5, "Ba": 0.5})
    return cif(s)


@pytest.mark.parametrize("make, why", [
    (nacl_symmetric, "space group other than P1"),
    (partial_occupancy, "partial occupancy"),
    (lambda: cif(perovskite()).replace("  Sr  Sr0", "  Sr2+  Sr0"), "oxidation state in the symbol"),
    (lambda: cif(perovskite()).replace("0.50000000  0.50000000  0.50000000", "0.00000000  0.00000000  0.00000000"),
     "overlapping atoms"),
    (lambda: cif(Structure(Lattice.cubic(4.0), ["Ar"], [[0, 0, 0]])), "no electronegativity (order undefined)"),
    (lambda: cif(perovskite()).replace("_cell_length_b   3.90000000", "_cell_length_b   ?"), "unknown cell length"),
    (lambda: "data_x\n_cell_length_a 3\n" + "garbage " * 10, "not a crystal"),
    (lambda: cif(perovskite()) + "\n" + cif(perovskite()).replace("data_", "data_second"), "two data blocks"),
    (lambda: cif(perovskite()).replace("  1  'x, y, z'\n", ""), "a loop of operations with no rows (found by the fuzz test)"),
])
def test_other_files_take_pymatgens_path_with_the_same_result(make, why):
    text = make()
    assert read_plain_cif(text) is None or plain_cif_graph(text, CONFIG) is None, why
    texts_agree([text])


def test_a_symmetric_cif_is_expanded_by_pymatgen():
    (_ids, graphs, problems) = featurize_entries([Entry("nacl", "nacl.cif", nacl_symmetric())], CONFIG, jobs=1)
    assert problems == [] and graphs[0].n_atoms == 8  # the conventional cell, from 2 sites and the operations


def test_radius_below_the_overlap_distance():
    """The overlap test searches at 0.5 Å even when the graph's radius is smaller (then pymatgen's path decides)."""
    texts_agree([cif(perovskite())], GraphConfig(radius=0.3))


def test_cell_thinner_than_pymatgen_accepts_goes_to_pymatgen():
    # found by fuzzing: pymatgen's CIF parser refuses cells under 0.01 Å between opposite faces (here 0.007 Å)
    lattice = Lattice.from_parameters(200.000625, 7.4310316, 2.71570097, 93.85808483, 179.85676085, 86.14192724)
    text = cif(Structure(lattice, ["Sc", "Sc"], [[0.65, 0.70, 0.40], [0.40, 0.40, 0.84]]))
    assert read_plain_cif(text) is None
    texts_agree([text])
