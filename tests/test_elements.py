"""Tests for cgcnn_lab.data.elements (element encodings)."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cgcnn_lab.data.elements import (
    CGCNN92_SEGMENTS,
    MAX_Z,
    ElementEncoding,
    UnknownElementError,
)

ATOM_INIT = (
    Path(__file__).parents[2] / "shared" / "data" / "homework" / "perovskite_energy" / "atom_init.json"
)

# Measured agreement of cgcnn92 with atom_init.json over Z = 1..100 (see the
# module docstring), minus a small margin so pymatgen data updates of one or two
# elements do not break the test but a broken recipe does.
MIN_AGREEMENT = {
    "group": 0.98,
    "period": 0.98,
    "electronegativity": 0.74,
    "covalent_radius": 0.38,
    "valence_electrons": 0.97,
    "first_ionization_energy": 0.97,
    "electron_affinity": 0.58,
    "block": 0.97,
    "atomic_volume": 0.79,
}


@pytest.fixture(scope="module")
def cgcnn92() -> ElementEncoding:
    return ElementEncoding.cgcnn92()


@pytest.fixture(scope="module")
def atom_init() -> ElementEncoding:
    if not ATOM_INIT.is_file():
        pytest.skip(f"shared data not present: {ATOM_INIT}")
    return ElementEncoding.from_atom_init(ATOM_INIT)


def segment_indices(table: np.ndarray) -> dict[str, np.ndarray]:
    """One-hot index per segment and row (-1 for an all-zero segment)."""
    out, start = {}, 0
    for name, n in CGCNN92_SEGMENTS:
        seg = table[:, start : start + n]
        out[name] = np.where(seg.sum(1) > 0, seg.argmax(1), -1)
        start += n
    return out


# ---------------------------------------------------------------- cgcnn92


def test_cgcnn92_shape_and_mask(cgcnn92: ElementEncoding) -> None:
    assert sum(n for _, n in CGCNN92_SEGMENTS) == 92
    assert cgcnn92.name == "cgcnn92"
    assert cgcnn92.n_features == 92
    assert cgcnn92.table.shape == (MAX_Z + 1, 92)
    assert cgcnn92.table.dtype == np.float32
    assert cgcnn92.available.dtype == bool
    assert cgcnn92.available[1:101].all()
    assert not cgcnn92.available[0]
    assert not cgcnn92.table[~cgcnn92.available].any()


def test_cgcnn92_segments_are_one_hot(cgcnn92: ElementEncoding) -> None:
    assert set(np.unique(cgcnn92.table)) <= {0.0, 1.0}
    start = 0
    for name, n in CGCNN92_SEGMENTS:
        sums = cgcnn92.table[1:101, start : start + n].sum(1)
        assert set(np.unique(sums)) <= {0.0, 1.0}, name
        start += n
    idx = segment_indices(cgcnn92.table[1:101])
    # Categorical segments are always defined.
    for name in ("group", "period", "valence_electrons", "block", "first_ionization_energy"):
        assert (idx[name] >= 0).all(), name


def test_cgcnn92_known_elements(cgcnn92: ElementEncoding) -> None:
    idx = segment_indices(cgcnn92.table)
    fe, la, cl = 26, 57, 17
    assert (idx["group"][fe], idx["period"][fe], idx["block"][fe]) == (8, 3, 2)
    assert idx["valence_electrons"][fe] == 8 - 1
    assert (idx["group"][la], idx["period"][la], idx["block"][la]) == (0, 5, 3)
    assert idx["valence_electrons"][cl] == 7 - 1
    assert idx["electronegativity"][9] == 9  # F, X = 3.98: last bin
    assert idx["electronegativity"][2] == -1  # He has no Pauling X


def test_cgcnn92_is_a_copy(cgcnn92: ElementEncoding) -> None:
    other = ElementEncoding.cgcnn92()
    other.table[1, 0] = 42.0
    assert ElementEncoding.cgcnn92().table[1, 0] != 42.0


def test_cgcnn92_agrees_with_atom_init(cgcnn92: ElementEncoding, atom_init: ElementEncoding) -> None:
    ours = segment_indices(cgcnn92.table[1:101])
    ref = segment_indices(atom_init.table[1:101])
    agreement = {name: float((ours[name] == ref[name]).mean()) for name, _ in CGCNN92_SEGMENTS}
    low = {k: v for k, v in agreement.items() if v < MIN_AGREEMENT[k]}
    assert not low, f"agreement below threshold: {low}"


# ---------------------------------------------------------------- atom_init


def test_from_atom_init_shared_file(atom_init: ElementEncoding) -> None:
    assert atom_init.n_features == 92
    assert atom_init.name == f"atom_init:{ATOM_INIT}"
    assert atom_init.available[1:101].all()
    assert not atom_init.available[101:].any()
    assert not atom_init.available[0]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "atom_init.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[[1, 2], [3, 4]]", "JSON object"),
        ("{}", "JSON object"),
        (json.dumps({"1": [1, 0], "2": [0, 1, 0]}), "different lengths"),
        (json.dumps({"H": [1, 0]}), "'H' is not an integer"),
        (json.dumps({"1.5": [1, 0]}), "is not an integer"),
        (json.dumps({"0": [1, 0]}), "outside 1..118"),
        (json.dumps({"1": "abc"}), "list of finite numbers"),
        (json.dumps({"1": [1, None]}), "list of finite numbers"),
        (json.dumps({"1": []}), "empty"),
        ('{"1": [1, 0], "01": [0, 1]}', "appears twice"),
    ],
)
def test_from_atom_init_bad_files(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=message) as info:
        ElementEncoding.from_atom_init(path)
    assert str(path) in str(info.value)


def test_from_atom_init_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(ValueError, match="nope.json"):
        ElementEncoding.from_atom_init(path)


def test_from_atom_init_small(tmp_path: Path) -> None:
    enc = ElementEncoding.from_atom_init(write(tmp_path, '{"1": [1, 0.5], "8": [0, 2]}'))
    assert enc.n_features == 2
    assert np.flatnonzero(enc.available).tolist() == [1, 8]
    np.testing.assert_array_equal(enc.table[8], [0, 2])


# ---------------------------------------------------------------- check / round trip


def test_check_names_element_and_structure(tmp_path: Path) -> None:
    enc = ElementEncoding.from_atom_init(write(tmp_path, '{"1": [1], "8": [2]}'))
    enc.check(np.array([1, 8, 8]), "water")
    with pytest.raises(UnknownElementError, match=r"'mp-123'.*\bFe\b.*Z=26") as info:
        enc.check(np.array([8, 26, 1, 29]), "mp-123")
    assert info.value.symbol == "Fe"
    assert info.value.structure_id == "mp-123"
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownElementError, match="Z=0"):
        enc.check(np.array([0]), "bad")
    with pytest.raises(UnknownElementError, match="Z=200"):
        enc.check(np.array([200]), "bad")


def test_check_cgcnn92_rejects_beyond_fermium(cgcnn92: ElementEncoding) -> None:
    cgcnn92.check(np.arange(1, 101), "all")
    with pytest.raises(UnknownElementError, match=r"\bMd\b"):
        cgcnn92.check(np.array([26, 101]), "s1")


def test_unknown_element_error_pickles() -> None:
    err = UnknownElementError("msg", symbol="Fe", structure_id="x")
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.symbol, back.structure_id) == ("msg", "Fe", "x")


def test_round_trip_via_weights_only_torch_load(cgcnn92: ElementEncoding) -> None:
    d = cgcnn92.to_dict()
    buf = io.BytesIO()
    torch.save({"encoding": d}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["encoding"]
    back = ElementEncoding.from_dict(loaded)
    assert back.name == cgcnn92.name
    np.testing.assert_array_equal(back.table, cgcnn92.table)
    np.testing.assert_array_equal(back.available, cgcnn92.available)


def test_round_trip_atom_init(tmp_path: Path) -> None:
    enc = ElementEncoding.from_atom_init(write(tmp_path, '{"3": [0.25, -1.5]}'))
    back = ElementEncoding.from_dict(json.loads(json.dumps(enc.to_dict())))
    assert back.name == enc.name
    np.testing.assert_array_equal(back.table, enc.table)
    np.testing.assert_array_equal(back.available, enc.available)


def test_post_init_validates_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        ElementEncoding("x", np.zeros((10, 3)), np.zeros(MAX_Z + 1, dtype=bool))


def test_anion_encoding_keeps_one_bit_of_chemistry(tmp_path: Path, monkeypatch) -> None:
    from cgcnn_lab.data.elements import choose_encoding

    enc = choose_encoding("anion:O", None)
    assert enc.name == "anion:O" and enc.n_features == 2
    assert enc.table[8].tolist() == [1.0, 0.0]
    assert enc.table[56].tolist() == enc.table[41].tolist() == [0.0, 1.0]  # Ba and Nb look alike
    assert enc.available[1:].all() and not enc.available[0]
    assert choose_encoding("cgcnn92", tmp_path / "atom_init.json").name == "cgcnn92"  # named: the folder's file loses
    with pytest.raises(ValueError, match="'Xx' is not an element symbol"):
        choose_encoding("anion:Xx", None)
    # a file of that name is a file
    (tmp_path / "anion:O").write_text(json.dumps({"8": [1.0], "56": [2.0]}))
    monkeypatch.chdir(tmp_path)
    assert choose_encoding("anion:O", None).n_features == 1
