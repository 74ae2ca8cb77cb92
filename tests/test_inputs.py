"""The inputs users have: POSCAR/CONTCAR, extxyz with per-frame targets, ASE databases, a list of files, a folder
of structure files without id_prop.csv, ASE Atoms from Python; one structure to ``predict`` prints its value.

Every file is written to ``tmp_path``; graph caches live there too.
"""

from __future__ import annotations

import functools
import sqlite3
import warnings

import ase.db
import ase.io
import numpy as np
import pandas as pd
import pytest
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

import cgcnn_lab
from cgcnn_lab.cli import main, one_prediction
from cgcnn_lab.data.dataset import build_dataset
from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.data.featurize import cache_key, featurize
from cgcnn_lab.data.graph import GraphConfig
from cgcnn_lab.data.sources import DataError, from_structures, load_dataset
from cgcnn_lab.inference import Predictions
from cgcnn_lab.model.config import ModelConfig
from cgcnn_lab.spec import ModelSpec

SMALL = ["--n-conv", "1", "--atom-fea-len", "16", "--h-fea-len", "16", "--epochs", "2", "--no-progress"]


def srtio3(a: float = 3.905) -> Structure:
    return Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


@functools.cache
def _nacl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def write_cif(structure: Structure, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure.to(filename=str(path), fmt="cif")
    return path


def frames(n: int = 3, seed: int = 0) -> list:
    """SrTiO3 cells of different sizes as ASE Atoms: ``energy`` in the calculator (as extxyz stores it), ``gap`` in
    ``info``."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        a = 3.8 + 0.3 * rng.random()
        atoms = AseAtomsAdaptor.get_atoms(srtio3(a) * (2, 1, 1) if k % 2 else srtio3(a))
        energy = len(atoms) * (-8.0 + 2.0 * (a - 3.95) ** 2)
        atoms.calc = SinglePointCalculator(atoms, energy=energy)
        atoms.info["gap"] = 1.5 + a - 3.8
        out.append(atoms)
    return out


def energies(images) -> np.ndarray:
    return np.array([a.get_potential_energy() for a in images])


# ----------------------------------------------------------------------------------- reading files


def test_poscar_is_one_crystal_with_the_graph_of_its_cif(tmp_path):
    AseAtomsAdaptor.get_atoms(_nacl()).write(tmp_path / "POSCAR", format="vasp")
    cif = write_cif(_nacl(), tmp_path / "nacl.cif")
    poscar = load_dataset(tmp_path / "POSCAR", require_targets=False)
    (entry,) = poscar.entries
    assert (entry.id, entry.where, entry.targets) == (f"{tmp_path.name}/POSCAR", str(tmp_path / "POSCAR"), None)
    assert not poscar.has_targets
    from_cif = load_dataset(cif, require_targets=False)
    graphs = [build_dataset(raw, GraphConfig(), ElementEncoding.cgcnn92(), cache_dir=tmp_path).graphs
              for raw in (poscar, from_cif)]
    assert [sorted(g.z.tolist()) for g in graphs] == [[11] * 4 + [17] * 4] * 2
    np.testing.assert_allclose(*(np.sort(np.asarray(g.distance)) for g in graphs), atol=1e-4)


def test_the_same_file_hits_the_cache_and_targets_stay_out_of_its_key(tmp_path):
    images, path = frames(), tmp_path / "a.extxyz"
    ase.io.write(path, images)
    first = load_dataset(path, targets=["energy"])
    assert not featurize(first.entries, GraphConfig(), cache_dir=tmp_path).from_cache
    for atoms in images:
        atoms.calc.results["energy"] += 1.0
    ase.io.write(path, images)  # new energies, same crystals: the graphs are the cached ones
    again = load_dataset(path, targets=["energy"])
    np.testing.assert_allclose([e.targets[0] for e in again.entries], energies(images))
    assert cache_key(again.entries, GraphConfig()) == cache_key(first.entries, GraphConfig())
    assert featurize(again.entries, GraphConfig(), cache_dir=tmp_path).from_cache


def test_extxyz_frames_and_their_properties_as_targets(tmp_path):
    images = frames()
    path = tmp_path / "sto.extxyz"
    ase.io.write(path, images)
    raw = load_dataset(path, targets=["energy", "gap"])
    assert [e.id for e in raw.entries] == ["sto-0", "sto-1", "sto-2"]
    assert raw.entries[2].where == f"{path} frame 2" and raw.target_names == ["energy", "gap"]
    np.testing.assert_allclose(np.stack([e.targets for e in raw.entries]),
                               np.c_[energies(images), [a.info["gap"] for a in images]])
    ds = build_dataset(raw, GraphConfig(), ElementEncoding.cgcnn92(), cache_dir=tmp_path)
    assert ds.n_atoms.tolist() == [5, 10, 5]
    with pytest.raises(DataError, match=r"sto\.extxyz: name the target\(s\) with --target NAME \(e\.g\. --target "
                       r"energy\); numeric per-frame properties: energy, gap"):
        load_dataset(path)  # training needs one
    with pytest.raises(DataError, match=r"sto\.extxyz: no structure has the property 'energyy' .*numeric "
                       r"properties: energy, gap"):
        load_dataset(path, targets=["energyy"])
    assert not load_dataset(path, require_targets=False).has_targets  # prediction


def test_a_target_missing_from_some_frames_names_them(tmp_path):
    images = frames(4)
    del images[1].info["gap"]
    path = tmp_path / "t.extxyz"
    ase.io.write(path, images)
    raw = load_dataset(path, targets=["gap"])
    assert [e.id for e in raw.entries] == ["t-0", "t-2", "t-3"]
    (problem,) = raw.problems
    assert str(problem) == f"{path} frame 1: missing target 'gap': no such property here (numeric properties: energy)"
    with pytest.raises(DataError, match=r"t\.extxyz frame 1: missing target 'gap'.*strict mode"):
        load_dataset(path, targets=["gap"], strict=True)


def test_ase_database_rows_and_their_key_value_pairs(tmp_path):
    path = tmp_path / "rows.db"
    db = ase.db.connect(str(path))
    images = frames()
    for k, atoms in enumerate(images):
        db.write(atoms, **({"band_gap": 1.0 + k} if k != 1 else {}))
    raw = load_dataset(path, targets=["band_gap"])
    assert [e.id for e in raw.entries] == ["rows-1", "rows-3"]
    np.testing.assert_allclose([e.targets[0] for e in raw.entries], [1.0, 3.0])
    (problem,) = raw.problems
    assert str(problem).startswith(f"{path} row id 2: missing target 'band_gap': no such property here")
    stored = load_dataset(path, targets=["energy"])  # the calculator's results stored with each row
    np.testing.assert_allclose([e.targets[0] for e in stored.entries], energies(images))


def test_a_folder_of_structure_files_without_id_prop(tmp_path, capsys):
    folder = tmp_path / "new"
    folder.mkdir()
    write_cif(srtio3(), folder / "mp-5229.cif")
    AseAtomsAdaptor.get_atoms(_nacl()).write(folder / "nacl.vasp", format="vasp")
    (folder / "README.txt").write_text("where these came from")
    (folder / "atom_init.json").write_text("{}")
    raw = load_dataset(folder, require_targets=False)
    assert [e.id for e in raw.entries] == ["mp-5229", "nacl"] and raw.problems == []
    assert raw.entries[0].content.startswith("# generated using pymatgen")  # a CIF stays text: the fast reader's
    assert raw.notes == [f"1 file(s) in {folder} are not structure files by their name and were ignored (README.txt)"]
    assert raw.atom_init == folder / "atom_init.json"
    with pytest.raises(DataError, match=r"new: no targets to train on: structure files carry none .*id_prop\.csv"):
        load_dataset(folder)
    (folder / "README.txt").unlink()
    (folder / "mp-5229.cif").unlink()
    (folder / "nacl.vasp").unlink()
    with pytest.raises(DataError, match=r"new: no id_prop\.csv and no structure files \(none of its 1 file\(s\) "
                       r"\(atom_init\.json\) is one by its name\); expected the CGCNN layout"):
        load_dataset(folder, require_targets=False)
    (folder / "atom_init.json").unlink()
    with pytest.raises(DataError, match=r"new: no id_prop\.csv and no structure files \(it is empty\)"):
        load_dataset(folder, require_targets=False)
    assert main(["train", str(folder), "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    assert "no id_prop.csv" in capsys.readouterr().err


def test_a_list_of_files_keeps_contcars_of_several_calculations_apart(tmp_path):
    for name, s in (("relax1", srtio3()), ("relax2", srtio3(4.0))):
        (tmp_path / name).mkdir()
        AseAtomsAdaptor.get_atoms(s).write(tmp_path / name / "CONTCAR", format="vasp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        srtio3().to(filename=str(tmp_path / "sto.json"))  # a pymatgen Structure as JSON: a table of one row
    raw = load_dataset([tmp_path / "relax1" / "CONTCAR", tmp_path / "relax2" / "CONTCAR"], require_targets=False)
    assert [e.id for e in raw.entries] == ["relax1/CONTCAR", "relax2/CONTCAR"]
    assert [e.id for e in load_dataset(tmp_path / "sto.json", require_targets=False).entries] == ["sto"]
    with pytest.raises(DataError, match=r"sto\.json: a folder or a table is read alone"):
        load_dataset([tmp_path / "relax1" / "CONTCAR", tmp_path / "sto.json"], require_targets=False)


# ----------------------------------------------------------------------------------- bad files


def test_bad_structure_files_are_named_with_what_is_wrong(tmp_path):
    AseAtomsAdaptor.get_atoms(srtio3()).write(tmp_path / "POSCAR", format="vasp")
    text = (tmp_path / "POSCAR").read_text()
    (tmp_path / "cut.vasp").write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match=r"cut\.vasp: unreadable POSCAR: .*is the file truncated"):
        load_dataset(tmp_path / "cut.vasp", require_targets=False)
    ase.io.write(tmp_path / "water.xyz", molecule("H2O"))
    with pytest.raises(DataError, match=r"water\.xyz: no periodic cell: .*a molecule\? CGCNN needs a periodic crystal"):
        load_dataset(tmp_path / "water.xyz", require_targets=False)
    lines = (tmp_path / "POSCAR").read_text()
    ase.io.write(tmp_path / "two.extxyz", frames(2))
    head = (tmp_path / "two.extxyz").read_text().splitlines()
    (tmp_path / "cut.extxyz").write_text("\n".join(head[:-3]) + "\n")  # the second frame lacks atoms
    raw = load_dataset(tmp_path / "cut.extxyz", require_targets=False)
    assert [e.id for e in raw.entries] == ["cut-0"]
    assert str(raw.problems[0]).startswith(f"{tmp_path / 'cut.extxyz'} frame 1: unreadable extxyz: ")
    (tmp_path / "junk.db").write_text(lines)
    with pytest.raises(DataError, match=r"junk\.db: unreadable ASE database: file is not a database"):
        load_dataset(tmp_path / "junk.db", require_targets=False)
    with sqlite3.connect(tmp_path / "other.db") as con:
        con.execute("CREATE TABLE t (a INTEGER)")
    with pytest.raises(DataError, match=r"other\.db: unreadable ASE database: an SQLite file without ASE's tables"):
        load_dataset(tmp_path / "other.db", require_targets=False)
    (tmp_path / "notes.txt").write_text("not a structure\n")
    with pytest.raises(DataError, match=r"notes\.txt: not a format cgcnn-lab reads: expected a CGCNN folder, a table"):
        load_dataset(tmp_path / "notes.txt", require_targets=False)
    with pytest.raises(DataError, match=r"POSCAR: --structure-col selects a table column"):
        load_dataset(tmp_path / "POSCAR", structure_col="cif", require_targets=False)
    several = load_dataset([tmp_path / "POSCAR", tmp_path / "cut.vasp", tmp_path / "water.xyz"],
                           require_targets=False)  # one bad file among several: skipped and counted
    assert [e.id for e in several.entries] == [f"{tmp_path.name}/POSCAR"]
    assert [p.message.split(":")[0] for p in several.problems] == ["unreadable POSCAR", "no periodic cell"]


# ----------------------------------------------------------------------------------- ASE Atoms from Python


def test_ase_atoms_as_a_dataset(tmp_path):
    images = frames()
    raw = from_structures(images, target_names=["energy"])  # the frames' own energies
    np.testing.assert_allclose([e.targets[0] for e in raw.entries], energies(images))
    assert all(isinstance(e.content, str) for e in raw.entries)
    raw = from_structures(images, targets=[1.0, 2.0, 3.0])
    np.testing.assert_allclose([e.targets[0] for e in raw.entries], [1.0, 2.0, 3.0])
    with pytest.raises(DataError, match=r"structure #1 \(id structure-1\): no periodic cell"):
        from_structures([images[0], molecule("CH4")], strict=True)
    flat = bulk("Cu")
    flat.cell[2] = 0
    with pytest.raises(DataError, match=r"no periodic cell: the cell has 2 lattice vector"):
        from_structures([flat], strict=True)


# ----------------------------------------------------------------------------------- predicting


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny model trained on an extxyz file's energies, as the README says: ``train FILE --target energy``."""
    tmp = tmp_path_factory.mktemp("inputs")
    ase.io.write(tmp / "train.extxyz", frames(40, seed=1))
    out = tmp / "run"
    assert main(["train", str(tmp / "train.extxyz"), "--target", "energy", "--unit", "eV", "--out", str(out),
                 "--cache-dir", str(tmp / "cache"), *SMALL]) == 0
    return out


def test_the_same_crystal_predicts_the_same_from_cif_poscar_extxyz_and_atoms(model, tmp_path):
    # displaced atoms: in the cubic cell the 12-neighbour cut falls inside a shell of equal distances, and which
    # neighbours it keeps then depends on the coordinates' last digits (a CIF rounds them; --shell-tol avoids that)
    s = Structure(Lattice.orthorhombic(3.93, 3.95, 3.97), ["Sr", "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.51, 0.49, 0.52], [0.5, 0.46, 0.02], [0.53, 0, 0.5], [0.01, 0.5, 0.47]])
    write_cif(s, tmp_path / "sto.cif")
    atoms = AseAtomsAdaptor.get_atoms(s)
    atoms.write(tmp_path / "POSCAR", format="vasp")
    ase.io.write(tmp_path / "sto.extxyz", [atoms, atoms])
    cache = str(tmp_path / "cache")
    values = [np.asarray(cgcnn_lab.predict(model, data, cache_dir=cache))[:, 0] for data in
              (tmp_path / "sto.cif", tmp_path / "POSCAR", tmp_path / "sto.extxyz", [atoms], atoms, s,
               [tmp_path / "sto.cif", tmp_path / "POSCAR"])]
    assert [len(v) for v in values] == [1, 1, 2, 1, 1, 1, 2]
    np.testing.assert_allclose(np.concatenate(values), values[0][0], rtol=1e-5)


def test_predict_on_one_poscar_prints_the_value(model, tmp_path, capsys):
    AseAtomsAdaptor.get_atoms(srtio3()).write(tmp_path / "mp-5229.vasp", format="vasp")
    out = tmp_path / "p.csv"
    assert main(["predict", str(model), str(tmp_path / "mp-5229.vasp"), "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    value = pd.read_csv(out)["prediction"].iloc[0]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    name, text = last.split(": ")
    assert name == "mp-5229" and text.endswith(" eV") and float(text.split()[0]) == pytest.approx(value, rel=1e-5)


def test_predict_on_extxyz_with_targets_and_on_several_files(model, tmp_path, capsys):
    ase.io.write(tmp_path / "new.extxyz", frames(3, seed=7))
    out = tmp_path / "p.csv"
    assert main(["predict", str(model), str(tmp_path / "new.extxyz"), "--target", "energy", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    assert "MAE" in printed and "eV" in printed
    frame = pd.read_csv(out)
    assert frame["id"].tolist() == ["new-0", "new-1", "new-2"]
    np.testing.assert_allclose(frame["target"], energies(frames(3, seed=7)))
    write_cif(srtio3(), tmp_path / "a.cif")
    AseAtomsAdaptor.get_atoms(_nacl()).write(tmp_path / "b.vasp", format="vasp")
    assert main(["predict", str(model), str(tmp_path / "a.cif"), str(tmp_path / "b.vasp"), "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert pd.read_csv(out)["id"].tolist() == ["a", "b"]
    assert "a: " not in capsys.readouterr().out  # several crystals: the CSV, no single value


def test_train_on_ase_atoms_from_python(tmp_path):
    images = frames(30, seed=3)
    result = cgcnn_lab.train(images, energies(images) / 2, unit="eV", out=str(tmp_path / "run"), n_conv=1,
                             atom_fea_len=16, h_fea_len=16, epochs=1, progress=False, cache_dir=str(tmp_path / "cache"),
                             log=lambda *_: None)
    assert result.metrics["unit"] == "eV" and np.isfinite(result.metrics["test_mae"])
    assert len(cgcnn_lab.predict(result.out, images[:4])) == 4


def test_one_prediction_of_a_classifier_is_its_class_and_probability():
    spec = ModelSpec(ModelConfig(task="classification"), GraphConfig(), None, None, ["band_gap"], threshold=0.0)
    pred = Predictions(np.array(["x"]), np.array([[0.2, 0.8]]), spec, np.array([5]))
    assert one_prediction(pred) == "x: band_gap > 0 (class 1, probability 0.800)"
