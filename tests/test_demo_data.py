"""Tests for the generated (non-DFT) perovskite demo dataset."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from pymatgen.analysis.ewald import EwaldSummation
from pymatgen.core import Structure

from cgcnn_lab.data.demo import (
    CHARGES,
    DEMO_TARGET,
    DEMO_UNIT,
    generate_perovskites,
    write_demo_dataset,
)

N = 50


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return generate_perovskites(n=N, seed=7)


def test_constants():
    assert DEMO_TARGET == "ewald_energy_per_atom"
    assert DEMO_UNIT == "eV/atom"


def test_columns_and_ids(df):
    assert list(df.columns) == ["id", "formula", "structure", DEMO_TARGET]
    assert len(df) == N
    assert df["id"].tolist() == [f"demo-{i:05d}" for i in range(N)]
    assert df["id"].is_unique


def test_deterministic_for_seed(df):
    again = generate_perovskites(n=N, seed=7)
    pd.testing.assert_frame_equal(df, again)
    other = generate_perovskites(n=N, seed=8)
    assert not df[DEMO_TARGET].equals(other[DEMO_TARGET])


def test_prefix_stable_only_within_n():
    # Different n draws different arrays, but each (n, seed) is reproducible on its own.
    a = generate_perovskites(n=5, seed=3)
    b = generate_perovskites(n=5, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert generate_perovskites(n=0, seed=3).empty


def test_one_oxidation_state_per_element():
    # Label must be a function of the plain-symbol CIF, so no element may carry two charges.
    assert len(CHARGES) == len(set(CHARGES))
    assert all(isinstance(q, int) and q != 0 for q in CHARGES.values())


def test_charge_balance_and_abx3(df):
    for cif in df["structure"]:
        s = Structure.from_str(cif, fmt="cif")
        comp = s.composition
        assert sum(CHARGES[el.symbol] * amt for el, amt in comp.items()) == pytest.approx(0.0)
        assert len(comp) == 3
        fu = len(s) // 5
        amounts = sorted(comp.values())
        assert amounts == [fu, fu, 3 * fu]


def test_cifs_roundtrip_and_energy(df):
    for formula, cif, e in zip(df["formula"], df["structure"], df[DEMO_TARGET]):
        assert "+" not in cif.split("_atom_site_occupancy", 1)[1]  # plain element symbols
        s = Structure.from_str(cif, fmt="cif")
        assert s.composition.reduced_formula == formula
        s.add_oxidation_state_by_element({el.symbol: CHARGES[el.symbol] for el in s.composition})
        e_again = EwaldSummation(s).total_energy / len(s)
        assert e_again == pytest.approx(e, abs=1e-3)


def test_cell_sizes_vary():
    sizes = {len(Structure.from_str(c, fmt="cif")) for c in generate_perovskites(n=40, seed=0)["structure"]}
    assert sizes == {5, 10}


def test_targets_finite_and_varied(df):
    y = df[DEMO_TARGET].to_numpy()
    assert np.isfinite(y).all()
    assert (y < 0).all()  # ionic crystals: Madelung energy is negative
    assert y.std() > 1.0
    assert df["formula"].nunique() > 10


def test_reasonable_geometry(df):
    for cif in df["structure"][:20]:
        s = Structure.from_str(cif, fmt="cif")
        d = s.distance_matrix + np.eye(len(s)) * 100
        assert d.min() > 1.2


def test_write_demo_dataset_roundtrip(tmp_path, df):
    path = tmp_path / "sub" / "demo.csv.gz"
    out = write_demo_dataset(path, n=N, seed=7)
    assert out == path and path.exists()
    with gzip.open(path, "rb") as fh:  # really gzip
        fh.read(10)
    back = pd.read_csv(path)
    pd.testing.assert_frame_equal(back, df, check_exact=False, rtol=1e-12)
    assert [p.name for p in path.parent.iterdir()] == ["demo.csv.gz"]  # no temp files left
    # byte-reproducible (no gzip timestamp), and overwriting works atomically
    first = path.read_bytes()
    write_demo_dataset(path, n=N, seed=7)
    assert path.read_bytes() == first
