"""The model zoo, packaged models (safetensors + card), embeddings and the TorchScript export, as a user meets them."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_api import SMALL, perovskites

import cgcnn_lab
from cgcnn_lab import zoo
from cgcnn_lab.cli import main
from cgcnn_lab.data.dataset import build_dataset
from cgcnn_lab.data.sources import load_dataset
from cgcnn_lab.inference import load_trained, predict_outputs

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small trained run folder (per-atom energies of generated SrTiO3 cells)."""
    tmp = tmp_path_factory.mktemp("zoo")
    structures, energies = perovskites(40)
    result = cgcnn_lab.train(structures, energies, per_atom=True, unit="eV", out=str(tmp / "run"),
                             cache_dir=str(tmp / "cache"), log=lambda *_: None, **SMALL)
    return Path(result.out)


def test_the_zoo_lists_its_models_with_cards(capsys):
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert zoo.names(), "the package ships no zoo models"
    for name in zoo.names():
        assert name in listing
        card = zoo.card(name)
        for field in ("description", "data", "licence", "command", "test", "split_sizes", "graph", "unit",
                      "cgcnn_lab_version"):
            assert field in card, f"{name}: card without {field}"
        weights = [Path(m) / "model.safetensors" for m in _members(name)]
        assert card["size_bytes"] == sum(w.stat().st_size for w in weights) < 2_000_000
        for member in _members(name):  # each weights file's checksum, in its own card
            member_card = json.loads((Path(member) / "card.json").read_text())
            assert member_card["sha256"] == hashlib.sha256((Path(member) / "model.safetensors").read_bytes()).hexdigest()
    assert main(["models", zoo.names()[0]]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == zoo.names()[0]


def test_a_zoo_ensemble_predicts_with_its_calibrated_spread(capsys, tmp_path):
    name = "perovskite-e-form-ensemble"
    if zoo.find(name) is None:
        pytest.skip("no ensemble in the zoo")
    cubic = _barium_titanate()
    members = [cgcnn_lab.predict(m, [cubic]) for m in _members(name)]
    pred = cgcnn_lab.predict(name, [cubic])
    values = np.array([np.asarray(m)[0, 0] for m in members])
    assert np.asarray(pred)[0, 0] == pytest.approx(values.mean(), rel=1e-6)
    assert pred.spread[0, 0] == pytest.approx(values.std() * zoo.card(name)["scale"][0], rel=1e-6)
    assert main(["models", name]) == 0 and '"band95"' in capsys.readouterr().out
    cubic.to(filename=str(tmp_path / "x.cif"))
    assert main(["embed", name, str(tmp_path / "x.cif")]) == 2  # one network is embedded, not an ensemble
    assert "is an ensemble" in capsys.readouterr().err


def test_an_unknown_model_name_is_refused_with_the_zoo_listed(capsys):
    assert main(["models", "perovskite-e-from"]) == 2
    err = capsys.readouterr().err
    assert "no zoo model 'perovskite-e-from'" in err and zoo.names()[0] in err


def test_the_zoo_loads_without_unpickling(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("torch.load called: a zoo model must load without pickle")

    monkeypatch.setattr(torch, "load", refuse)
    for name in zoo.names():
        for member in _members(name):
            assert cgcnn_lab.load(member).spec.target_names == zoo.card(name)["targets"]


def _members(name: str) -> list:
    """The packaged folders of a zoo model: itself, or an ensemble's members."""
    from cgcnn_lab.inference import expand_ensembles

    return expand_ensembles([name])[0] if (zoo.ZOO / name / "ensemble.json").is_file() else [zoo.ZOO / name]


def _test_subset(name: str):
    """(raw data of the held-out test crystals of zoo model ``name``, its card)."""
    card = zoo.card(name)
    with gzip.open(Path(_members(name)[0]) / "split.csv.gz", "rt", newline="") as f:  # an ensemble's: one split
        test_ids = {r["id"] for r in csv.DictReader(f) if r["split"] == "test"}
    assert len(test_ids) == card["split_sizes"]["test"]
    raw = load_dataset(SHARED / Path(card["data"]).name, card["targets"])
    raw.entries = [e for e in raw.entries if e.id in test_ids]
    return raw, card


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")
@pytest.mark.parametrize("name", zoo.names())
def test_each_zoo_card_states_the_test_score_its_model_gets(name, tmp_path):
    raw, card = _test_subset(name)
    pred = cgcnn_lab.predict(name, raw, cache_dir=str(tmp_path))
    assert len(pred) == card["split_sizes"]["test"]
    assert not any(pred.seen.values()), "the held-out crystals were in the model's train or validation split"
    scores = pred.scores()
    key = "accuracy" if card["task"] == "classification" else "mae"
    assert scores[key] == pytest.approx(card["test"][key], rel=1e-4, abs=1e-6)


def test_a_run_exported_as_safetensors_predicts_as_the_run(run, tmp_path, capsys):
    out = tmp_path / "my-model"
    assert main(["export", str(run), "--format", "safetensors", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "card.json", "split.csv.gz"}
    card = json.loads((out / "card.json").read_text())
    assert card["unit"] == "eV" and card["per_atom_training"] and "mae" in card["test"]
    structures, _ = perovskites(6, seed=3)
    a, b = cgcnn_lab.predict(run, structures), cgcnn_lab.predict(out, structures)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6)
    # the training crystals are recognised from the packaged split, as from the run folder
    trained_on, _ = perovskites(40)
    assert cgcnn_lab.predict(out, trained_on).seen["train"] > 0


def cif_folder(folder: Path, structures) -> Path:
    """A CGCNN folder of the structures (ids c0, c1, ...; target 0)."""
    from pymatgen.io.cif import CifWriter

    folder.mkdir()
    with open(folder / "id_prop.csv", "w") as f:
        for k, s in enumerate(structures):
            CifWriter(s).write_file(folder / f"c{k}.cif")
            f.write(f"c{k},0\n")
    return folder


def test_predict_names_the_zoo_when_a_model_is_not_found(tmp_path, capsys):
    assert main(["predict", "perovskite-e-from", str(cif_folder(tmp_path / "cifs", perovskites(2)[0]))]) == 2
    err = capsys.readouterr().err
    assert "perovskite-e-from" in err and "cgcnn-lab models" in err and zoo.names()[0] in err


def test_a_safetensors_file_from_another_tool_is_named(tmp_path, capsys):
    from safetensors.torch import save_file

    (tmp_path / "other").mkdir()
    save_file({"w": torch.zeros(2)}, tmp_path / "other" / "model.safetensors")
    data = cif_folder(tmp_path / "cifs", perovskites(2)[0])
    assert main(["predict", str(tmp_path / "other"), str(data)]) == 2
    assert "without a cgcnn-lab model spec" in capsys.readouterr().err


def test_init_from_takes_a_zoo_name(tmp_path):
    name = zoo.names()[0]
    structures, energies = perovskites(30, seed=2)
    result = cgcnn_lab.train(structures, energies, unit="eV", init_from=name, epochs=1, progress=False,
                             out=str(tmp_path / "ft"), cache_dir=str(tmp_path / "cache"), log=lambda *_: None)
    tuned, start = cgcnn_lab.load(result.out), cgcnn_lab.load(name)
    assert tuned.spec.model.atom_fea_len == start.spec.model.atom_fea_len
    assert tuned.spec.graph.max_neighbors == start.spec.graph.max_neighbors


def test_embeddings_are_the_pooled_atom_vectors(run, tmp_path, capsys):
    structures, _ = perovskites(8, seed=4)
    folder = cif_folder(tmp_path / "cifs", structures)
    out = tmp_path / "emb.parquet"
    assert main(["embed", str(run), str(folder), "--out", str(out), "--atoms"]) == 0
    crystals, atoms = pd.read_parquet(out), pd.read_parquet(tmp_path / "emb_atoms.parquet")
    width = cgcnn_lab.load(run).spec.model.atom_fea_len
    assert list(crystals["id"]) == [f"c{k}" for k in range(8)] and crystals.shape == (8, 1 + width)
    assert len(atoms) == sum(len(s) for s in structures) and set(atoms["element"]) == {"Sr", "Ti", "O"}
    vectors = [f"e{k}" for k in range(width)]
    pooled = atoms.groupby("id", sort=False)[vectors].mean()  # the model pools by the mean
    np.testing.assert_allclose(pooled.loc[crystals["id"]].to_numpy(), crystals[vectors].to_numpy(), rtol=1e-5,
                               atol=1e-6)
    assert main(["embed", str(run), str(folder), "--out", str(tmp_path / "emb.npz")]) == 0
    npz = np.load(tmp_path / "emb.npz")
    np.testing.assert_allclose(npz["vectors"], crystals[vectors].to_numpy(), rtol=1e-6)
    assert main(["embed", str(run), str(folder), "--out", str(tmp_path / "emb.xlsx")]) == 2
    assert "write embeddings as .parquet, .npz, .csv" in capsys.readouterr().err


def test_the_torchscript_export_predicts_as_the_model_with_torch_alone(run, tmp_path):
    path = tmp_path / "model.pt"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(path)]) == 0
    extra = {"cgcnn_lab.json": ""}
    exported = torch.jit.load(str(path), _extra_files=extra)  # what a server with only torch does
    settings = json.loads(extra["cgcnn_lab.json"])
    trained = load_trained(run)
    assert settings["graph"]["max_neighbors"] == trained.graph_config.max_neighbors and settings["unit"] == "eV"
    structures, _ = perovskites(7, seed=5)
    from cgcnn_lab.data.sources import from_structures

    dataset = build_dataset(from_structures(structures), trained.graph_config, trained.encoding, use_cache=False)
    expected = predict_outputs(trained.model, dataset, trained.transform)
    for size in (1, 3, 7):  # batches of other sizes than the traced example's two crystals
        got = [exported(b.z, b.edge_index, b.distance, b.batch, b.ptr) for b in dataset.loader(batch_size=size)]
        np.testing.assert_allclose(torch.cat(got).detach().double().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_the_python_api_has_every_command_line_verb():
    from cgcnn_lab.cli import EXPORT_FORMATS, build_parser
    from cgcnn_lab.deploy import FORMATS

    verbs = set(build_parser().parse_args(["models"]).subparsers)
    assert verbs <= set(cgcnn_lab.__all__), verbs - set(cgcnn_lab.__all__)
    assert EXPORT_FORMATS == FORMATS


def test_the_python_verbs_embed_export_and_list_models(run, tmp_path):
    structures, _ = perovskites(5, seed=6)
    vectors = cgcnn_lab.embed(run, structures)
    assert vectors.vectors.shape == (5, cgcnn_lab.load(run).spec.model.atom_fea_len)
    out = cgcnn_lab.export(run, tmp_path / "packaged", format="safetensors")
    np.testing.assert_allclose(np.asarray(cgcnn_lab.predict(out, structures)),
                               np.asarray(cgcnn_lab.predict(run, structures)), rtol=1e-6)
    assert [c["name"] for c in cgcnn_lab.models()] == zoo.names()
    dataset = cgcnn_lab.featurize(structures, max_neighbors=4)
    assert len(dataset.ids) == 5 and dataset.graphs.degree().max() <= 4


def test_the_onnx_export_predicts_as_the_model(run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnx

    path = tmp_path / "model.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(path)]) == 0
    settings = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["cgcnn_lab"])
    trained = load_trained(run)
    assert settings["unit"] == "eV" and settings["graph"]["radius"] == trained.graph_config.radius
    structures, _ = perovskites(7, seed=7)
    from cgcnn_lab.data.sources import from_structures

    dataset = build_dataset(from_structures(structures), trained.graph_config, trained.encoding, use_cache=False)
    expected = predict_outputs(trained.model, dataset, trained.transform)
    session = ort.InferenceSession(str(path))
    for size in (1, 4):
        got = [session.run(None, {n: getattr(b, n).numpy() for n in settings["inputs"]})[0]
               for b in dataset.loader(batch_size=size)]
        np.testing.assert_allclose(np.concatenate(got), expected, rtol=1e-5, atol=1e-5)


def _barium_titanate():
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(3.95), ["Ba", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def test_the_readme_zoo_commands_on_cifs_a_poscar_and_an_extxyz(tmp_path, capsys, monkeypatch):
    """What the README shows a new user, one command each, with the zoo models by name."""
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    monkeypatch.chdir(tmp_path)
    cubic = _barium_titanate()
    cubic.to(filename="POSCAR")
    frames = [cubic.copy().apply_strain(x) for x in (0.0, 0.01, 0.02)]
    ase.io.write("frames.extxyz", [AseAtomsAdaptor.get_atoms(s) for s in frames])
    folder = Path("cifs")
    folder.mkdir()
    for k, s in enumerate(frames):
        s.to(filename=str(folder / f"BaTiO3-{k}.cif"))
    capsys.readouterr()
    assert main(["predict", "mp-perovskite-e-form", "cifs/", "--out", "e_form.csv"]) == 0
    e_form = pd.read_csv("e_form.csv")
    assert sorted(e_form["id"]) == ["BaTiO3-0", "BaTiO3-1", "BaTiO3-2"]
    assert e_form["prediction"].between(-4, 0).all()  # BaTiO3 is stable: a negative formation energy per atom
    assert main(["predict", "mp-perovskite-band-gap", "POSCAR"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]  # the value, after the file it wrote
    assert line.startswith("POSCAR: ") and line.endswith(" eV") and 0 < float(line.split()[1]) < 5
    assert main(["predict", "perovskite-vs-oxides", "frames.extxyz"]) == 0
    classes = pd.read_csv("predictions.csv")
    assert list(classes["id"]) == ["frames-0", "frames-1", "frames-2"] and (classes["prediction"] == 1).all()


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")
def test_the_readme_embedding_command_on_the_course_perovskites(tmp_path):
    out = tmp_path / "emb.parquet"
    assert main(["embed", "mp-perovskite-e-form", str(SHARED / "homework" / "perovskite_energy"),
                 "--out", str(out)]) == 0
    frame = pd.read_parquet(out)
    assert len(frame) == 670 and frame.shape[1] == 1 + zoo.card("mp-perovskite-e-form")["network"]["atom_fea_len"]
    assert np.isfinite(frame.drop(columns="id").to_numpy()).all()


def test_importing_a_submodule_never_shadows_a_verb():
    """``import cgcnn_lab.x`` sets ``cgcnn_lab.x`` to the module: no module may be named after a verb."""
    import importlib

    for path in (Path(cgcnn_lab.__file__).parent).iterdir():
        name = path.stem if path.suffix == ".py" else path.name
        if name in cgcnn_lab.__all__:
            pytest.fail(f"cgcnn_lab/{path.name} has the name of the API's {name}()")
    importlib.import_module("cgcnn_lab.contributions")
    importlib.import_module("cgcnn_lab.ensembles")
    assert callable(cgcnn_lab.explain) and callable(cgcnn_lab.ensemble)


def test_exporting_a_zoo_model_keeps_its_card_and_split(tmp_path):
    out = tmp_path / "copy"
    assert main(["export", "perovskite-vs-oxides", "--format", "safetensors", "--out", str(out)]) == 0
    card, original = json.loads((out / "card.json").read_text()), zoo.card("perovskite-vs-oxides")
    assert card["name"] == "copy" and card["licence"] == original["licence"] and card["test"] == original["test"]
    assert (out / "split.csv.gz").read_bytes() == (zoo.ZOO / "perovskite-vs-oxides" / "split.csv.gz").read_bytes()


def test_export_says_when_out_is_the_wrong_kind_of_path(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    assert main(["export", "perovskite-vs-oxides", "--format", "safetensors", "--out", str(tmp_path / "file.txt")]) == 2
    assert "writes a folder" in capsys.readouterr().err
    assert main(["export", "perovskite-vs-oxides", "--format", "torchscript", "--out", str(tmp_path)]) == 2
    assert "writes one file" in capsys.readouterr().err


def test_the_demo_verb_from_python(tmp_path):
    lines = []
    result = cgcnn_lab.demo(n=60, epochs=1, out=str(tmp_path / "demo"), cache_dir=str(tmp_path / "cache"),
                            progress=False, log=lines.append)
    assert "GENERATED, not DFT" in lines[0] and "test_mae" in result.metrics
