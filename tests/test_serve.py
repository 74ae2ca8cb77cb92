"""``cgcnn-lab serve``'s JSON API as a program meets it: predictions equal to the command line's, every refusal
with the command line's message, nothing kept of an upload, nothing unpickled from one."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (the test extra)")
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[serve]'")

with warnings.catch_warnings():  # Starlette's note on its test client's HTTP library, not about this code
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient
from pymatgen.core import Lattice, Structure

import cgcnn_lab
from cgcnn_lab import zoo
from cgcnn_lab.cli import main
from cgcnn_lab.web.app import create_app
from cgcnn_lab.web.background import free_port
from cgcnn_lab.web.limits import Limits
from cgcnn_lab.web.uploads import safe_name

REGRESSION, EXPLAINED = "mp-perovskite-e-form", "perovskite-vs-oxides"  # zoo models; the second has an atom readout
LIMITS = Limits(file_bytes=20_000, request_bytes=200_000, structures=5, atoms=40)


def perovskite(a: float = 3.905, species=("Sr", "Ti", "O")) -> Structure:
    return Structure.from_spacegroup("Pm-3m", Lattice.cubic(a), list(species), [[0, 0, 0], [.5, .5, .5], [.5, .5, 0]])


def write(folder: Path, name: str, structure: Structure | None = None, text: str | bytes | None = None) -> Path:
    """A structure file (CIF or POSCAR by its name) or the given content."""
    path = folder / name
    if text is not None:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    elif name.endswith((".extxyz", ".xyz")):
        from ase.io import write as ase_write
        from pymatgen.io.ase import AseAtomsAdaptor

        ase_write(path, [AseAtomsAdaptor.get_atoms(s) for s in structure], format="extxyz")
    else:
        structure.to(filename=str(path), fmt="poscar" if name.endswith(".vasp") else "cif")
    return path


def upload(*paths: Path) -> list:
    return [("files", (p.name, p.read_bytes())) for p in paths]


@pytest.fixture(scope="module")
def client():
    return TestClient(create_app([REGRESSION, EXPLAINED], LIMITS))


@pytest.fixture
def good(tmp_path) -> list[Path]:
    return [write(tmp_path, "SrTiO3.cif", perovskite()), write(tmp_path, "BaTiO3.vasp", perovskite(4.0, ("Ba", "Ti", "O"))),
            write(tmp_path, "frames.extxyz", [perovskite(3.9), perovskite(3.95, ("Ca", "Ti", "O"))])]


def cli_error(capsys, *args: str) -> str:
    """What ``cgcnn-lab`` says after ``error:`` for ``args``."""
    assert main([*args]) == 2
    return capsys.readouterr().err.removeprefix("error: ").rstrip("\n")


def test_models_limits_and_the_openapi_page(client):
    models = {m["name"]: m for m in client.get("/models").json()}
    assert list(models) == [REGRESSION, EXPLAINED]
    assert models[REGRESSION]["unit"] == "eV/atom" and not models[REGRESSION]["atom_readout"]
    assert models[EXPLAINED]["atom_readout"] and models[EXPLAINED]["classes"] == ["is_perovskite = 0", "is_perovskite = 1"]
    limits = client.get("/limits").json()
    assert (limits["structures"], limits["atoms"], limits["file_bytes"]) == (5, 40, 20_000)
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/models", "/limits", "/view"} <= set(schema["paths"])
    assert LIMITS.describe() in schema["info"]["description"]
    assert LIMITS.describe() in schema["paths"]["/predict"]["post"]["description"]
    assert client.get("/docs").status_code == 200


def test_the_page_and_its_viewer_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/vendor/3Dmol-min.js" in page.text
    assert "src=\"http" not in page.text and "href=\"http" not in page.text  # nothing from a CDN
    viewer = client.get("/static/vendor/3Dmol-min.js")
    assert viewer.status_code == 200 and len(viewer.content) > 100_000
    assert "BSD" in client.get("/static/vendor/3Dmol-LICENSE.txt").text
    assert client.get("/static/app.js").status_code == 200


def test_predictions_are_the_command_lines(client, good, tmp_path):
    answer = client.post("/predict", data={"model": REGRESSION}, files=upload(*good))
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["unit"] == "eV/atom" and result["skipped"] == 0 and result["columns"] == ["id", "prediction"]
    assert [r["id"] for r in result["rows"]] == ["SrTiO3", "BaTiO3", "frames-0", "frames-1"]
    assert [r["file"] for r in result["rows"]] == ["SrTiO3.cif", "BaTiO3.vasp", "frames.extxyz", "frames.extxyz"]
    expected = cgcnn_lab.predict(REGRESSION, good)
    expected.to_csv(tmp_path / "cli.csv")
    assert result["csv"] == (tmp_path / "cli.csv").read_text()
    assert np.allclose([r["prediction"] for r in result["rows"]], np.asarray(expected)[:, 0])
    assert result["notes"][0].startswith("3 files: 4 crystals, 20 atoms")


def test_a_classifier_names_its_classes(client, good):
    result = client.post("/predict", data={"model": EXPLAINED}, files=upload(good[0])).json()
    row = result["rows"][0]
    assert result["columns"] == ["id", "prediction", "p0", "p1"]
    assert row["class"] == result["classes"][row["prediction"]] and abs(row["p0"] + row["p1"] - 1) < 1e-6


@pytest.mark.parametrize("content", ["data_broken\n_cell_length_a 3.9\nloop_\n_atom_site_label\n",
                                     b"\x80\x04\x95 binary, not a CIF"], ids=["truncated", "binary"])
def test_an_unreadable_file_gets_the_command_lines_message(client, capsys, tmp_path, content):
    bad = write(tmp_path, "bad.cif", text=content)
    answer = client.post("/predict", data={"model": REGRESSION}, files=upload(bad))
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert "bad.cif: unreadable CIF" in detail and str(tmp_path) not in detail and "cgcnn-lab-serve" not in detail
    assert detail == cli_error(capsys, "predict", REGRESSION, str(bad), "--out", str(tmp_path / "p.csv")).replace(
        f"{tmp_path}/", "")


def test_an_unknown_element_gets_the_command_lines_message(client, capsys, tmp_path):
    bad = write(tmp_path, "MdTiO3.cif", perovskite(species=("Md", "Ti", "O")))
    answer = client.post("/predict", data={"model": REGRESSION}, files=upload(bad))
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert "unknown element" in detail and "Md (Z=101)" in detail and "cgcnn-lab-serve" not in detail
    assert detail == cli_error(capsys, "predict", REGRESSION, str(bad), "--out", str(tmp_path / "p.csv")).replace(
        f"{tmp_path}/", "")


def test_a_bad_file_among_good_ones_is_skipped_and_named(client, good, tmp_path):
    bad = write(tmp_path, "bad.cif", text="not a crystal")
    result = client.post("/predict", data={"model": REGRESSION}, files=upload(good[0], bad)).json()
    assert [r["id"] for r in result["rows"]] == ["SrTiO3"] and result["skipped"] == 1
    assert any("bad.cif: unreadable CIF" in line for line in result["notes"])


def test_too_large_a_file_is_refused(client, good, tmp_path):
    big = write(tmp_path, "big.cif", text=good[0].read_text() + "#" * 25_000)
    answer = client.post("/predict", data={"model": REGRESSION}, files=upload(good[0], big))
    assert answer.status_code == 413
    assert answer.json()["detail"] == "big.cif: larger than the limit of 0.02 MB per file"


def test_too_large_a_request_is_refused_before_it_is_read(client):
    by_length = client.post("/predict", data={"model": REGRESSION}, files=[("files", ("a.cif", b"#" * 250_000))])
    assert by_length.status_code == 413 and "0.2 MB per request" in by_length.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(30):
            yield b"#" * 10_000

    chunked = client.post("/predict", content=chunks(),
                          headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert chunked.status_code == 413 and "0.2 MB per request" in chunked.json()["detail"]


def test_too_many_structures_or_atoms_are_refused(client, good, tmp_path):
    files = [write(tmp_path, f"s{k}.cif", perovskite(3.9 + k / 100)) for k in range(6)]
    answer = client.post("/predict", data={"model": REGRESSION}, files=upload(*files))
    assert answer.status_code == 413
    assert answer.json()["detail"] == "6 files: this server takes at most 5 structures per request; split them over " \
                                      "several requests"
    frames = write(tmp_path, "many.extxyz", [perovskite(3.9 + k / 100) for k in range(6)])
    answer = client.post("/predict", data={"model": REGRESSION}, files=upload(frames))
    assert answer.status_code == 413 and answer.json()["detail"].startswith("6 structures in the upload")
    large = write(tmp_path, "large.vasp", perovskite() * (3, 3, 1))  # 45 atoms
    answer = client.post("/predict", data={"model": REGRESSION}, files=upload(large))
    assert answer.status_code == 413
    assert answer.json()["detail"] == "large.vasp: too many atoms for this server (45 atoms): it takes at most 40 per " \
                                      "structure"


@pytest.mark.parametrize("name", ["model.pkl", "run.traj", "data.db", "structure.json", "weights.pth.tar"])
def test_only_text_structure_formats_are_read_and_nothing_is_unpickled(client, tmp_path, write_exploit, name):
    payload = write_exploit(tmp_path / name, lambda exploit: exploit)
    answer = client.post("/predict", data={"model": REGRESSION}, files=upload(payload))
    assert answer.status_code == 415 and "not a structure file this server reads" in answer.json()["detail"]
    disguised = write_exploit(tmp_path / "disguised.cif", lambda exploit: exploit)
    assert client.post("/predict", data={"model": REGRESSION}, files=upload(disguised)).status_code == 422
    assert not (tmp_path / "pwned").exists()


def test_a_model_is_picked_by_name_never_loaded_from_a_request(client, good):
    for model in ["no-such-model", str(zoo.find("mp-perovskite-band-gap")), "mp-perovskite-band-gap"]:
        answer = client.post("/predict", data={"model": model}, files=upload(good[0]))
        assert answer.status_code == 404
        assert answer.json()["detail"] == f"no model {model!r} on this server; it serves: {REGRESSION}, {EXPLAINED}"


def test_missing_fields_are_explained(client, good):
    answer = client.post("/predict", data={"model": REGRESSION})
    assert answer.status_code == 422 and answer.json()["detail"].startswith("no files: upload one or more")
    answer = client.post("/predict", files=upload(good[0]))
    assert answer.status_code == 422
    assert answer.json()["detail"] == f"no model: name one as the form field 'model' ({REGRESSION}, {EXPLAINED})"


def test_uploads_are_not_kept_and_no_cache_is_written(client, good, tmp_path, monkeypatch):
    scratch, cache = tmp_path / "scratch", tmp_path / "cache"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("CGCNN_LAB_CACHE", str(cache))
    assert client.post("/predict", data={"model": REGRESSION}, files=upload(*good)).status_code == 200
    assert client.post("/view", data={"model": EXPLAINED}, files=upload(good[0])).status_code == 200
    junk = write(tmp_path, "junk.cif", text="junk")
    assert client.post("/predict", data={"model": REGRESSION}, files=upload(junk)).status_code == 422
    assert list(scratch.iterdir()) == [] and not cache.exists()


def test_the_view_colours_atoms_by_their_contribution(client, good, tmp_path):
    answer = client.post("/view", data={"model": EXPLAINED, "id": "SrTiO3"}, files=upload(*good))
    assert answer.status_code == 200, answer.text
    view = answer.json()
    assert [a["element"] for a in view["atoms"]] == ["Sr", "Ti", "O", "O", "O"]
    assert main(["explain", EXPLAINED, str(good[0]), "--out", str(tmp_path / "sites.csv"), "--no-cache"]) == 0
    explained = pd.read_csv(tmp_path / "sites.csv")
    assert np.allclose([a["contribution"] for a in view["atoms"]], explained["contribution"])
    assert view["crystal_value"] == pytest.approx(float(np.mean(explained["contribution"])), rel=1e-5)
    assert view["contribution_unit"] == "log-odds of is_perovskite = 1" and view["note"] == ""
    assert view["prediction"]["id"] == "SrTiO3" and view["file"] == "SrTiO3.cif"
    xyz = np.array([a["xyz"] for a in view["atoms"]])
    for bond in view["bonds"]:  # each bond reaches the periodic image it was found at
        assert np.linalg.norm(np.array(bond["to"]) - xyz[bond["i"]]) == pytest.approx(bond["distance"], abs=2e-3)
        assert bond["distance"] <= view["graph"]["radius"]
    assert np.allclose(view["lattice"], np.eye(3) * 3.905)


def test_the_view_of_a_model_without_atom_readout_says_why(client, good):
    view = client.post("/view", data={"model": REGRESSION, "id": "frames-1"}, files=upload(*good)).json()
    assert view["id"] == "frames-1" and view["file"] == "frames.extxyz"
    assert all(a["contribution"] is None for a in view["atoms"]) and "no atom readout" in view["note"]
    answer = client.post("/view", data={"model": REGRESSION, "id": "nope"}, files=upload(*good))
    assert answer.status_code == 404 and answer.json()["detail"].startswith("no structure 'nope' in the upload")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two seeds of a tiny model on a generated table, and their ensemble folder."""
    from cgcnn_lab.data.demo import DEMO_TARGET, write_demo_dataset

    tmp = tmp_path_factory.mktemp("serve-runs")
    table = write_demo_dataset(tmp / "demo.csv.gz", n=80, seed=2)
    runs = [cgcnn_lab.train(str(table), targets=[DEMO_TARGET], unit="eV/atom", seed=seed, split_seed=0, n_conv=1,
                            atom_fea_len=8, h_fea_len=8, epochs=2, progress=False, out=str(tmp / f"seed{seed}"),
                            cache_dir=str(tmp / "cache"), log=lambda *_: None).out for seed in (0, 1)]
    assert main(["ensemble", str(table), "--target", DEMO_TARGET, "--members", *map(str, runs), "--out",
                 str(tmp / "ensemble"), "--cache-dir", str(tmp / "cache")]) == 0
    return runs[0], tmp / "ensemble"


def test_run_folders_and_ensembles_are_served_with_their_spread(trained, good, tmp_path, capsys):
    run, ensemble = trained
    client = TestClient(create_app([str(run), str(ensemble)], LIMITS))
    models = client.get("/models").json()
    assert [(m["name"], m["kind"], m["ensemble_members"]) for m in models] == [(str(run), "run", 1),
                                                                               (str(ensemble), "ensemble", 2)]
    result = client.post("/predict", data={"model": str(ensemble)}, files=upload(*good)).json()
    assert result["columns"] == ["id", "prediction", "prediction_std"] and result["unit"] == "eV/atom"
    assert all(r["prediction_std"] >= 0 for r in result["rows"])
    cgcnn_lab.predict(str(ensemble), good).to_csv(tmp_path / "cli.csv")
    assert result["csv"] == (tmp_path / "cli.csv").read_text()
    view = client.post("/view", data={"model": str(ensemble)}, files=upload(good[0])).json()
    assert view["note"].startswith("an ensemble") and "prediction_std" in view["prediction"]
    assert client.post("/predict", data={"model": str(run)}, files=upload(good[0])).status_code == 200


ORIGINAL = Path(__file__).resolve().parents[2] / "shared" / "pretrained" / "cgcnn-original"
ATOM_INIT = Path(__file__).resolve().parents[2] / "shared" / "data" / "homework" / "perovskite_energy" / "atom_init.json"


@pytest.mark.skipif(not ORIGINAL.is_dir() or not ATOM_INIT.is_file(), reason="../shared's original checkpoints absent")
def test_an_original_checkpoint_is_served_with_its_atom_init(good, tmp_path):
    checkpoint = ORIGINAL / "formation-energy-per-atom.pth.tar"
    client = TestClient(create_app([str(checkpoint)], LIMITS, atom_init=ATOM_INIT))
    assert client.get("/models").json()[0]["kind"] == "original"
    result = client.post("/predict", data={"model": str(checkpoint)}, files=upload(*good)).json()
    expected = cgcnn_lab.predict(str(checkpoint), good, atom_init=ATOM_INIT)
    assert np.allclose([r["prediction"] for r in result["rows"]], np.asarray(expected)[:, 0])


def test_without_the_serve_extra_the_command_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert cli_error(capsys, "serve") == ("cgcnn-lab serve needs the serve extra (uvicorn is not installed): "
                                          "pip install 'cgcnn-lab[serve]'")


def test_safe_names_stay_in_the_folder():
    taken: set[str] = set()
    assert safe_name("../../etc/passwd.cif", taken) == "passwd.cif"
    assert safe_name("C:\\data\\passwd.cif", taken) == "passwd-2.cif"
    assert safe_name(".hidden POSCAR", taken) == "hidden_POSCAR"
    assert safe_name("", taken) == "upload"


def test_the_command_starts_a_server(tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "cgcnn_lab.cli", "serve", REGRESSION, "--port", str(port),
                               "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "CGCNN_LAB_CACHE": str(tmp_path / "cache")})
    import httpx

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/models", timeout=5).json()
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.5)
        assert [m["name"] for m in models] == [REGRESSION]
        cif = write(tmp_path, "SrTiO3.cif", perovskite())
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", data={"model": REGRESSION}, files=upload(cif),
                            timeout=60)
        assert answer.status_code == 200 and answer.json()["rows"][0]["id"] == "SrTiO3"
    finally:
        server.terminate()
        out = server.communicate(timeout=30)[0]
    assert f"cgcnn-lab serve: {REGRESSION} at http://127.0.0.1:{port}/" in out


def test_the_command_refuses_a_model_it_cannot_load(capsys):
    message = cli_error(capsys, "serve", "no-such-model")
    assert message.startswith("no-such-model: no such file or folder, and not a zoo model")


def test_a_table_named_like_a_poscar_is_refused(client, tmp_path):
    table = write(tmp_path, "POSCAR.csv.gz", text=b"\x1f\x8b not a structure")
    answer = client.post("/predict", data={"model": REGRESSION}, files=upload(table))
    assert answer.status_code == 415


def test_an_upload_named_poscar_keeps_its_name_as_id(client, tmp_path):
    poscar = write(tmp_path, "POSCAR.vasp", perovskite())
    answer = client.post("/predict", data={"model": REGRESSION}, files=[("files", ("POSCAR", poscar.read_bytes()))])
    assert answer.status_code == 200 and [row["id"] for row in answer.json()["rows"]] == ["POSCAR"]


def test_pages_of_other_sites_and_other_host_names_are_refused(good, tmp_path):
    app = create_app([REGRESSION], LIMITS, hosts=["testserver"])
    client = TestClient(app)
    files = upload(good[0])
    assert client.post("/predict", data={"model": REGRESSION}, files=files).status_code == 200
    cross = client.post("/predict", data={"model": REGRESSION}, files=files, headers={"origin": "http://evil.example"})
    assert cross.status_code == 403 and "another site" in cross.json()["detail"]
    rebound = TestClient(app, base_url="http://evil.example")
    assert rebound.get("/models").status_code == 400
