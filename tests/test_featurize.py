"""Featurisation and its on-disk graph cache: keys, reuse, corruption, no pickle, parallel == serial."""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from cgcnn_lab.data import featurize as fz
from cgcnn_lab.data.dataset import build_dataset
from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.data.featurize import cache_key, default_cache_dir, featurize, featurize_entries
from cgcnn_lab.data.graph import GraphConfig, structure_to_graph
from cgcnn_lab.data.sources import Entry, RawDataset, from_structures, parse_structure

ARRAYS = ("ids", "z", "atom_ptr", "edge_index", "distance", "edge_ptr")


@functools.cache
def _nacl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def cif(structure: Structure) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return structure.to(fmt="cif")


@functools.cache
def _cifs() -> dict[str, str]:
    nacl = _nacl()
    cscl = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    kcl = Structure(Lattice.cubic(4.5), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    strained = nacl.copy()
    strained.apply_strain([0.02, 0.0, -0.01])
    isolated = Structure(Lattice.cubic(20.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return {"nacl": cif(nacl), "cscl": cif(cscl), "kcl": cif(kcl), "strained": cif(strained), "isolated": cif(isolated)}


def entries(names=("nacl", "cscl", "kcl"), targets=None) -> list[Entry]:
    out = []
    for k, name in enumerate(names):
        t = None if targets is None else np.array([targets[k]], dtype=float)
        out.append(Entry(name, f"{name}.cif", _cifs()[name], t))
    return out


def assert_same_graphs(a, b) -> None:
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert [(p.where, p.id, p.message) for p in a.problems] == [(p.where, p.id, p.message) for p in b.problems]


def cache_files(cache_dir: Path) -> list[Path]:
    """The committed cache folders (temporary ones being written start with a dot)."""
    root = cache_dir / "graphs"
    return sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []


# ----------------------------------------------------------------------------------- reuse


def test_second_call_loads_identical_graphs_from_cache(tmp_path):
    config = GraphConfig()
    first = featurize(entries(("nacl", "cscl", "isolated")), config, cache_dir=tmp_path)
    assert not first.from_cache
    assert list(first.ids) == ["nacl", "cscl"] and [p.id for p in first.problems] == ["isolated"]
    (path,) = cache_files(tmp_path)
    assert path.name == cache_key(entries(("nacl", "cscl", "isolated")), config)
    assert sorted(f.name for f in path.iterdir()) == [
        "distance.bin", "edges.bin", "ids.json", "meta.json", "n_atoms.bin", "n_edges.bin", "problems.json", "z.bin"]

    second = featurize(entries(("nacl", "cscl", "isolated")), config, cache_dir=tmp_path)
    assert second.from_cache
    assert_same_graphs(first, second)  # the skipped entry's problem is cached too
    for name in ARRAYS:
        assert getattr(second, name).dtype == getattr(first, name).dtype, name
    assert first.mapped and second.mapped  # memory-mapped from the folder, whether just written or found
    # and the packed graphs are what structure_to_graph gives for each crystal
    direct = structure_to_graph(parse_structure(entries(("cscl",))[0]), config, "cscl")
    got = second.graph(1)
    np.testing.assert_array_equal(got.z, direct.z)
    np.testing.assert_array_equal(got.edge_index, direct.edge_index)
    np.testing.assert_array_equal(got.distance, direct.distance)


def test_use_cache_false_neither_reads_nor_writes(tmp_path):
    gs = featurize(entries(), GraphConfig(), cache_dir=tmp_path, use_cache=False)
    assert not gs.from_cache and len(gs) == 3
    assert cache_files(tmp_path) == []


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CGCNN_LAB_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("CGCNN_LAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "cgcnn-lab"


# ----------------------------------------------------------------------------------- the key


def test_cache_key_depends_on_neighbour_settings_ids_and_content_only():
    base = entries()
    key = cache_key(base, GraphConfig())
    assert cache_key(entries(), GraphConfig()) == key
    # the Gaussian expansion and the targets are not part of the graph
    assert cache_key(base, GraphConfig(gaussian_step=0.1, gaussian_width=0.3)) == key
    assert cache_key(entries(targets=[1.0, 2.0, 3.0]), GraphConfig()) == key

    changed = {
        "radius": cache_key(base, GraphConfig(radius=6.0)),
        "max_neighbors": cache_key(base, GraphConfig(max_neighbors=8)),
        "order": cache_key(base[::-1], GraphConfig()),
        "subset": cache_key(base[:2], GraphConfig()),
        "id": cache_key([Entry("other", "x", base[0].content)] + base[1:], GraphConfig()),
        "one character of a CIF": cache_key(
            [Entry("nacl", "x", base[0].content.replace("5.64", "5.65", 1))] + base[1:], GraphConfig()
        ),
        "one CIF replaced": cache_key(entries(("strained", "cscl", "kcl")), GraphConfig()),
    }
    assert base[0].content.count("5.64") >= 1
    for what, other in changed.items():
        assert other != key, what
    assert len(set(changed.values())) == len(changed)


def test_key_for_structure_objects_follows_their_content():
    a = from_structures([_nacl().copy()]).entries
    b = from_structures([_nacl().copy()]).entries
    assert cache_key(a, GraphConfig()) == cache_key(b, GraphConfig())
    moved = _nacl().copy()
    moved.translate_sites([0], [0.01, 0, 0])
    assert cache_key(from_structures([moved]).entries, GraphConfig()) != cache_key(a, GraphConfig())


def test_changing_neighbour_settings_refeaturises(tmp_path):
    featurize(entries(), GraphConfig(), cache_dir=tmp_path)
    assert not featurize(entries(), GraphConfig(radius=6.0), cache_dir=tmp_path).from_cache
    small = featurize(entries(), GraphConfig(max_neighbors=4), cache_dir=tmp_path)
    assert not small.from_cache
    assert small.n_edges.tolist() == [8 * 4, 2 * 4, 2 * 4]
    assert len(cache_files(tmp_path)) == 3
    changed = entries(("strained", "cscl", "kcl"))
    assert not featurize(changed, GraphConfig(), cache_dir=tmp_path).from_cache
    assert featurize(entries(), GraphConfig(), cache_dir=tmp_path).from_cache


def test_changing_only_targets_reuses_graphs(tmp_path):
    enc = ElementEncoding.cgcnn92()
    first = build_dataset(RawDataset("d", entries(targets=[1, 2, 3]), ["e"]), GraphConfig(), enc, cache_dir=tmp_path)
    second = build_dataset(RawDataset("d", entries(targets=[7, 8, 9]), ["e"]), GraphConfig(), enc, cache_dir=tmp_path)
    assert not first.graphs.from_cache and second.graphs.from_cache
    assert "cached graphs" in second.summary()
    np.testing.assert_array_equal(second.targets[:, 0], [7, 8, 9])
    assert [float(d.y) for d in second] == [7, 8, 9]
    assert_same_graphs(first.graphs, second.graphs)


# ----------------------------------------------------------------------------------- damaged cache files


def _prime(tmp_path) -> tuple[Path, object]:
    featurize(entries(), GraphConfig(), cache_dir=tmp_path)
    (path,) = cache_files(tmp_path)
    return path, featurize(entries(), GraphConfig(), use_cache=False)  # in memory: the tests damage the files


def _rebuilt_from(tmp_path, path: Path, fresh) -> None:
    """The damaged file is not trusted: graphs are rebuilt, equal to fresh ones, and the file is repaired."""
    again = featurize(entries(), GraphConfig(), cache_dir=tmp_path)
    assert not again.from_cache
    assert_same_graphs(again, fresh)
    assert featurize(entries(), GraphConfig(), cache_dir=tmp_path).from_cache
    assert cache_files(tmp_path) == [path]


def test_truncated_cache_file_is_rebuilt(tmp_path):
    path, fresh = _prime(tmp_path)
    data = (path / "distance.bin").read_bytes()
    (path / "distance.bin").write_bytes(data[: len(data) // 2])
    _rebuilt_from(tmp_path, path, fresh)


@pytest.mark.parametrize("name", ["meta.json", "ids.json", "problems.json", "edges.bin"])
def test_garbage_cache_file_is_rebuilt(tmp_path, name):
    path, fresh = _prime(tmp_path)
    size = (path / name).stat().st_size
    (path / name).write_bytes((b"this is not what was written " * 1000)[:size])  # same size: only content differs
    _rebuilt_from(tmp_path, path, fresh)


@pytest.mark.parametrize("name", ["meta.json", "ids.json", "problems.json", "z.bin", "edges.bin"])
def test_pickled_object_in_cache_is_refused_not_unpickled(tmp_path, write_exploit, name):
    path, fresh = _prime(tmp_path / "cache")
    write_exploit(path / name, lambda payload: payload)
    _rebuilt_from(tmp_path / "cache", path, fresh)
    assert not (tmp_path / "pwned").exists()


def _edit(path: Path, name: str, dtype: str, change) -> None:
    array = np.fromfile(path / name, dtype=dtype)
    change(array)
    array.tofile(path / name)


@pytest.mark.parametrize("damage", ["edge_out_of_range", "pointer_mismatch", "other_entries", "missing_array",
                                    "lengths", "old_version", "nan_distance"])
def test_inconsistent_cache_is_rebuilt(tmp_path, damage):
    path, fresh = _prime(tmp_path)
    meta = json.loads((path / "meta.json").read_text())
    if damage == "edge_out_of_range":  # the last crystal (KCl) has atoms 0 and 1 only
        _edit(path, "edges.bin", "<i4", lambda a: a.__setitem__(-2, 2))
    elif damage == "pointer_mismatch":  # one more atom in NaCl than z holds
        _edit(path, "n_atoms.bin", "<i4", lambda a: a.__setitem__(0, a[0] + 1))
    elif damage == "other_entries":
        (path / "ids.json").write_text(json.dumps(["nacl", "cscl", "something-else"]))
    elif damage == "missing_array":
        (path / "distance.bin").unlink()
    elif damage == "lengths":  # meta and file sizes disagree
        meta["lengths"]["z"] += 1
        (path / "meta.json").write_text(json.dumps(meta))
    elif damage == "old_version":
        meta["version"] = 2
        (path / "meta.json").write_text(json.dumps(meta))
    else:
        _edit(path, "distance.bin", "<f4", lambda a: a.__setitem__(3, np.nan))
    _rebuilt_from(tmp_path, path, fresh)


def test_interrupted_featurisation_leaves_no_cache(tmp_path, monkeypatch):
    calls = []
    real = fz._featurize_chunk

    def dies_on_second_chunk(args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(args)

    monkeypatch.setattr(fz, "_featurize_chunk", dies_on_second_chunk)
    many = [Entry(f"{e.id}-{k}", e.where, e.content) for k in range(3) for e in entries()]  # 9 entries, 1 per chunk
    with pytest.raises(KeyboardInterrupt):
        featurize(many, GraphConfig(), cache_dir=tmp_path)
    assert list((tmp_path / "graphs").iterdir()) == []  # neither a half-written folder nor its temporary
    monkeypatch.setattr(fz, "_featurize_chunk", real)
    assert not featurize(many, GraphConfig(), cache_dir=tmp_path).from_cache
    assert featurize(many, GraphConfig(), cache_dir=tmp_path).from_cache


def test_write_failing_part_way_warns_and_still_returns_graphs(tmp_path, monkeypatch):
    real_add = fz._CacheWriter.add

    def disk_full(self, part):
        if self.ids:
            raise OSError(28, "No space left on device")
        real_add(self, part)

    monkeypatch.setattr(fz, "PARALLEL_THRESHOLD", 10**9)
    monkeypatch.setattr(fz._CacheWriter, "add", disk_full)
    many = [Entry(f"{e.id}-{k}", e.where, e.content) for k in range(3) for e in entries()]
    with pytest.warns(UserWarning, match="No space left"):
        gs = featurize(many, GraphConfig(), cache_dir=tmp_path)
    assert len(gs) == 9 and not gs.mapped and not gs.from_cache
    assert list((tmp_path / "graphs").iterdir()) == []
    assert_same_graphs(gs, featurize(many, GraphConfig(), use_cache=False))


def test_unwritable_cache_warns_once_and_still_returns_graphs(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="could not write graph cache") as record:
        gs = featurize(entries(), GraphConfig(), cache_dir=blocker)
    assert len(record) == 1 and len(gs) == 3 and not gs.from_cache


# ----------------------------------------------------------------------------------- parallel


def test_parallel_featurisation_equals_serial(tmp_path, monkeypatch):
    many = entries(("nacl", "cscl", "isolated", "kcl", "strained", "cscl", "kcl", "nacl"))
    for k, e in enumerate(many):
        e.id = f"{e.id}-{k}"
    config = GraphConfig(radius=6.0, max_neighbors=10)
    serial = featurize_entries(many, config, jobs=1)

    pools = []
    real_pool = fz.ProcessPoolExecutor

    def spy(*args, **kwargs):
        pools.append(kwargs.get("max_workers"))
        return real_pool(*args, **kwargs)

    monkeypatch.setattr(fz, "PARALLEL_THRESHOLD", 2)
    monkeypatch.setattr(fz, "ProcessPoolExecutor", spy)
    parallel = featurize_entries(many, config, jobs=2)
    assert pools == [2]  # really ran in worker processes

    s_ids, s_graphs, s_problems = serial
    p_ids, p_graphs, p_problems = parallel
    assert p_ids == s_ids == [e.id for e in many if not e.id.startswith("isolated")]
    assert [(p.id, p.message) for p in p_problems] == [(p.id, p.message) for p in s_problems]
    assert [p.id for p in p_problems] == ["isolated-2"]
    for a, b in zip(s_graphs, p_graphs, strict=True):
        np.testing.assert_array_equal(a.z, b.z)
        np.testing.assert_array_equal(a.edge_index, b.edge_index)
        np.testing.assert_array_equal(a.distance, b.distance)


def test_below_threshold_stays_serial(monkeypatch):
    def no_pool(*args, **kwargs):
        raise AssertionError("a process pool was started for a small dataset")

    monkeypatch.setattr(fz, "ProcessPoolExecutor", no_pool)
    ids, _, problems = featurize_entries(entries(), GraphConfig(), jobs=4)
    assert ids == ["nacl", "cscl", "kcl"] and problems == []


def test_cached_problems_name_the_current_location(tmp_path):
    old = [Entry(e.id, f"old/{e.id}.cif", e.content) for e in entries(("nacl", "isolated"))]
    new = [Entry(e.id, f"new/{e.id}.cif", e.content) for e in entries(("nacl", "isolated"))]
    assert featurize(old, GraphConfig(), cache_dir=tmp_path).problems[0].where == "old/isolated.cif"
    moved = featurize(new, GraphConfig(), cache_dir=tmp_path)
    assert moved.from_cache
    expected = (
        "new/isolated.cif: isolated atom: atom 0 (Na) has no neighbour within 8.0 Å (2 isolated atom(s)); "
        "increase --radius or check the cell"
    )
    assert [str(p) for p in moved.problems] == [expected]
