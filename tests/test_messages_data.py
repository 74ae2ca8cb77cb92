"""What a user reads when their data or homework answer is wrong: one clear message, never a traceback.

Messages are checked by content (the key names and numbers), not word for word. Real datasets from ``../shared``
are used when present; those tests skip cleanly in a fresh clone.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from cgcnn_lab.cli import main
from cgcnn_lab.data.sources import DataError, load_dataset

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data {SHARED} not available (fresh clone)")


@functools.cache
def _cif(formula: str = "CsCl") -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5] * 3]).to(fmt="cif")


def _error(capsys, argv: list[str]) -> str:
    """Run the CLI, expect the one-message user error (exit 2), return stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def _numeric_listing(message: str) -> list[str]:
    match = re.search(r"numeric columns of this table: (.*)$", message)
    assert match, message
    return match.group(1).split(", ")


# ----------------------------------------------------------------------------------- 1. table columns


def test_no_structure_column_names_the_usual_names_and_the_column_that_holds_structures(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"id": ["a", "b"], "crystal": [_cif(), _cif()], "e": [1.0, 2.0]}).to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        load_dataset(path, targets=["e"])
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "no structure column found" in message
    assert all(name in message for name in ("structure", "cif", "structure_json", "atoms"))
    assert "--structure-col crystal" in message and "['id', 'crystal', 'e']" in message
    assert "None" not in message
    # the structure column is checked before the target: with neither, the user first learns about the structure
    with pytest.raises(DataError, match="--structure-col crystal"):
        load_dataset(path)


def test_no_structure_column_json_dicts_and_no_candidate(tmp_path):
    records = [{"id": "a", "xtal": Structure(Lattice.cubic(4.1), ["Cs", "Cl"], [[0] * 3, [0.5] * 3]).as_dict(),
                "e": 1.0}]
    path = tmp_path / "t.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"no structure column found .*--structure-col xtal"):
        load_dataset(path, targets=["e"])
    plain = tmp_path / "p.csv"
    pd.DataFrame({"id": ["a"], "formula": ["CsCl"], "e": [1.0]}).to_csv(plain, index=False)
    with pytest.raises(DataError) as err:
        load_dataset(plain, targets=["e"])
    assert "--structure-col NAME" in str(err.value) and "['id', 'formula', 'e']" in str(err.value)


def test_no_target_lists_the_numeric_columns_this_table_has(tmp_path):
    frame = pd.DataFrame({
        "id": ["1", "2", "3"],  # numeric ids are ids, not targets
        "formula": ["CsCl", "NaCl", "KCl"],
        "band_gap": ["1.5", "", "0"],  # an empty cell does not make a column non-numeric
        "e_form_per_atom": [-1.0, -2.0, -0.5],
        "matbench_fold": [0, 1, 2],  # a fold column is not a target
        "is_metal": ["True", "False", "False"],
        "cif": [_cif()] * 3,
    })
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        load_dataset(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "--target" in message
    assert _numeric_listing(message) == ["band_gap", "e_form_per_atom"]
    assert "e_form)" not in message and "--target e_form " not in message  # no column this table lacks
    assert "--target band_gap" in message
    # featurising needs no target: the same table loads
    assert len(load_dataset(path, require_targets=False).entries) == 3


def test_no_target_json_nested_and_parquet(tmp_path):
    records = [
        {"structure": _cif(), "energy": -3.0, "bandgap": {"energy": 1.2, "direct": True}},
        {"structure": _cif(), "energy": -2.0, "bandgap": None},
    ]
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"mp-1": records[0], "mp-2": records[1]}))
    with pytest.raises(DataError) as err:
        load_dataset(path)
    listed = _numeric_listing(str(err.value))
    assert "energy" in listed and "bandgap.energy" in listed and "bandgap" not in listed  # all-null: no target
    pytest.importorskip("pyarrow")
    parquet = tmp_path / "t.parquet"
    pd.DataFrame({"id": ["a"], "cif": [_cif()], "y": [1.5], "label": ["x"]}).to_parquet(parquet)
    with pytest.raises(DataError) as err:
        load_dataset(parquet)
    assert _numeric_listing(str(err.value)) == ["y"]


def test_no_target_and_no_numeric_column(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"id": ["a"], "cif": [_cif()], "note": ["x"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"t\.csv: no --target given, and no column holds numbers.*'note'"):
        load_dataset(path)


def test_cli_column_errors_are_one_line(tmp_path, capsys):
    path = tmp_path / "t.csv"
    pd.DataFrame({"id": ["a", "b"], "crystal": [_cif(), _cif()], "y": [1.0, 2.0]}).to_csv(path, index=False)
    cache = str(tmp_path / "cache")
    err = _error(capsys, ["featurize", str(path), "--cache-dir", cache])
    assert len(err.strip().splitlines()) == 1 and "--structure-col crystal" in err
    good = tmp_path / "g.csv"
    pd.DataFrame({"id": ["a", "b"], "cif": [_cif(), _cif()], "y": [1.0, 2.0]}).to_csv(good, index=False)
    err = _error(capsys, ["train", str(good), "--epochs", "1", "--out", str(tmp_path / "run"), "--cache-dir", cache])
    assert len(err.strip().splitlines()) == 1 and "--target y" in err


@needs_shared
def test_real_tables_without_target_or_structure_column(tmp_path, capsys):
    oxides = SHARED / "perovskite_vs_oxides.csv.gz"
    err = _error(capsys, ["train", str(oxides), "--epochs", "1", "--out", str(tmp_path / "run")])
    assert "--target is_perovskite" in err and "e_form" not in err
    castelli = pd.read_csv(SHARED / "castelli_perovskites.csv.gz", nrows=5)
    renamed = tmp_path / "renamed.csv"
    castelli.rename(columns={"cif": "crystal"}).to_csv(renamed, index=False)
    err = _error(capsys, ["featurize", str(renamed), "--cache-dir", str(tmp_path / "cache")])
    assert "no structure column found" in err and "--structure-col crystal" in err and "'e_form'" in err
    with pytest.raises(DataError) as caught:
        load_dataset(SHARED / "castelli_perovskites.csv.gz")
    assert set(_numeric_listing(str(caught.value))) == {"cbm", "e_form", "fermi_level", "gap_gllbsc", "mu_b", "vbm"}


# ----------------------------------------------------------------------------------- 2. CGCNN folder


def _folder(path: Path, cif_names: list[str], ids: list[str]) -> Path:
    path.mkdir()
    for name in cif_names:
        (path / name).write_text(_cif())
    (path / "id_prop.csv").write_text("".join(f"{i},1.0\n" for i in ids))
    return path


@pytest.mark.parametrize("strict", [False, True])
def test_folder_whose_ids_match_no_cif_says_what_the_folder_holds(tmp_path, strict):
    ids = [str(1000 + k) for k in range(10)]
    folder = _folder(tmp_path / "f", [f"mp-{k}.cif" for k in range(12)], ids)
    with pytest.raises(DataError) as err:
        load_dataset(folder, strict=strict)
    lines = str(err.value).splitlines()
    assert len(lines) == 2
    assert str(folder) in lines[0] and "none of the 10 id(s)" in lines[0] and "1000.cif" in lines[0]
    assert "12 CIF file(s)" in lines[1] and "mp-0.cif" in lines[1] and "under other names" in lines[1]


def test_folder_name_case_and_empty_folder(tmp_path):
    folder = _folder(tmp_path / "c", ["a.CIF", "b.CIF"], ["a", "b"])
    if (folder / "a.cif").is_file():
        pytest.skip("case-insensitive file system")
    with pytest.raises(DataError, match=r"(?s)none of the 2 id\(s\).*2 of them .*differs only in upper/lower case"):
        load_dataset(folder)
    empty = _folder(tmp_path / "e", [], ["a", "b"])
    with pytest.raises(DataError, match=r"(?s)none of the 2 id\(s\).*no \.cif files"):
        load_dataset(empty)


def test_folder_partly_matching_keeps_going_with_one_note(tmp_path):
    folder = _folder(tmp_path / "p", ["a.cif", "b.cif", "x-1.cif", "x-2.cif"], ["a", "b", "1", "2"])
    raw = load_dataset(folder)
    assert [e.id for e in raw.entries] == ["a", "b"]
    assert len(raw.problems) == 2
    (note,) = raw.notes
    assert "2 CIF file(s)" in note and "x-1.cif" in note and "1.cif" in note and "match the file names" in note


@needs_shared
def test_real_perovskite_band_names_the_cifs_it_holds(tmp_path, capsys):
    folder = SHARED / "homework" / "perovskite_band"
    ids = [line.split(",")[0] for line in (folder / "id_prop.csv").read_text().splitlines() if line.strip()]
    cifs = sorted(p.name for p in folder.glob("*.cif"))
    if {Path(c).stem for c in cifs} & set(ids):
        pytest.skip("the folder's ids match its CIF files now")
    err = _error(capsys, ["train", str(folder), "--epochs", "1", "--out", str(tmp_path / "run")])
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert f"none of the {len(ids)} id(s)" in lines[0] and f"{ids[0]}.cif" in lines[0]
    assert f"{len(cifs)} CIF file(s)" in lines[1] and cifs[0] in lines[1]


# ----------------------------------------------------------------------------------- 4. notebook extra


def test_notebook_extra_has_ipywidgets():
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    names = {re.split(r"[<>=!~\[ ]", req, maxsplit=1)[0].lower() for req in extra}
    assert {"ipywidgets", "ipykernel", "nbclient"} <= names
    pytest.importorskip("ipywidgets")
    import tqdm.notebook

    assert tqdm.notebook.IProgress is not None  # what tqdm's "IProgress not found" warning is about
