"""Featurise once, cache on disk: structures -> packed crystal graphs.

All graphs of a dataset are packed into flat arrays with offsets (``atom_ptr``, ``edge_ptr``), the layout
PyTorch Geometric batches use internally. The cache file is a plain ``.npz`` (no pickle: safe to load even if
someone tampers with it), written atomically, keyed by the entries' ids and raw content plus the neighbour
parameters. Element encodings and targets are not part of the key: changing them never re-featurises.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cgcnn_lab.data.graph import CrystalGraph, GraphConfig, GraphError, structure_to_graph
from cgcnn_lab.data.sources import DataError, Entry, Problem

CACHE_VERSION = 2  # 2: problem messages are written "kind: detail"
PARALLEL_THRESHOLD = 1500  # below this, process start-up costs more than it saves


def default_cache_dir() -> Path:
    """``$CGCNN_LAB_CACHE``, else ``$XDG_CACHE_HOME/cgcnn-lab``, else ``~/.cache/cgcnn-lab``."""
    if os.environ.get("CGCNN_LAB_CACHE"):
        return Path(os.environ["CGCNN_LAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cgcnn-lab"


@dataclass
class GraphSet:
    """Packed graphs of the entries that featurised; ``problems`` lists those that did not."""

    ids: np.ndarray  # str [S]
    z: np.ndarray  # int64 [sum N]
    atom_ptr: np.ndarray  # int64 [S+1]
    edge_index: np.ndarray  # int64 [2, sum E], local to each crystal
    distance: np.ndarray  # float32 [sum E]
    edge_ptr: np.ndarray  # int64 [S+1]
    problems: list[Problem] = field(default_factory=list)
    from_cache: bool = False
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_atoms(self) -> np.ndarray:
        return np.diff(self.atom_ptr)

    @property
    def n_edges(self) -> np.ndarray:
        return np.diff(self.edge_ptr)

    def graph(self, i: int) -> CrystalGraph:
        a0, a1, e0, e1 = self.atom_ptr[i], self.atom_ptr[i + 1], self.edge_ptr[i], self.edge_ptr[i + 1]
        return CrystalGraph(self.z[a0:a1], self.edge_index[:, e0:e1], self.distance[e0:e1])

    def degree(self) -> np.ndarray:
        """Neighbours per atom over the whole set (for the fewer-than-M report)."""
        offsets = np.repeat(self.atom_ptr[:-1], self.n_edges)
        return np.bincount(self.edge_index[1] + offsets, minlength=len(self.z))

    def select(self, keep: np.ndarray) -> GraphSet:
        """A subset by boolean mask or index array (used to drop entries, e.g. unknown elements)."""
        idx = np.flatnonzero(keep) if keep.dtype == bool else np.asarray(keep)
        graphs = [self.graph(int(i)) for i in idx]
        packed = pack(list(self.ids[idx]), graphs)
        packed.problems, packed.from_cache, packed.seconds = self.problems, self.from_cache, self.seconds
        return packed


def pack(ids: Sequence[str], graphs: Sequence[CrystalGraph]) -> GraphSet:
    n_atoms = np.array([g.n_atoms for g in graphs], dtype=np.int64)
    n_edges = np.array([g.n_edges for g in graphs], dtype=np.int64)
    atom_ptr = np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64)
    edge_ptr = np.concatenate([[0], np.cumsum(n_edges)]).astype(np.int64)
    if graphs:
        z = np.concatenate([g.z for g in graphs])
        edge_index = np.concatenate([g.edge_index for g in graphs], axis=1)
        distance = np.concatenate([g.distance for g in graphs])
    else:
        z, edge_index, distance = np.zeros(0, np.int64), np.zeros((2, 0), np.int64), np.zeros(0, np.float32)
    return GraphSet(np.array(ids, dtype=str), z, atom_ptr, edge_index, distance, edge_ptr)


def _content_digest(entry: Entry) -> bytes:
    if not isinstance(entry.content, str):  # a pymatgen Structure
        text = json.dumps(entry.content.as_dict(), sort_keys=True, default=str)
    else:
        text = entry.content
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).digest()


def cache_key(entries: Sequence[Entry], config: GraphConfig) -> str:
    h = hashlib.sha256(json.dumps({"v": CACHE_VERSION, **config.neighbor_key()}).encode())
    for e in entries:
        h.update(e.id.encode())
        h.update(b"\0")
        h.update(_content_digest(e))
    return h.hexdigest()[:32]


def _featurize_chunk(args: tuple[list[Entry], GraphConfig]) -> list[CrystalGraph | Problem]:
    from cgcnn_lab.data.sources import parse_structure

    entries, config = args
    out: list[CrystalGraph | Problem] = []
    for entry in entries:
        try:
            structure = parse_structure(entry)
            out.append(structure_to_graph(structure, config, entry.id))
        except (DataError, GraphError) as err:
            out.append(Problem(entry.where, entry.id, _problem_message(err, entry)))
    return out


def _problem_message(err: Exception, entry: Entry) -> str:
    """``kind: detail`` without the entry's location (the Problem carries it)."""
    message = str(err)
    for prefix in (entry.where + ": ", f"structure {entry.id!r}: "):
        message = message.removeprefix(prefix)
    if isinstance(err, GraphError):
        if message.startswith("degenerate lattice"):  # already "kind: detail"
            return message
        kind = "isolated atom" if "no neighbour" in message else "cannot build graph"
        message = f"{kind}: {message}"
    return message


def featurize_entries(
    entries: Sequence[Entry], config: GraphConfig, jobs: int = 0, progress: bool = False
) -> tuple[list[str], list[CrystalGraph], list[Problem]]:
    """Parse + build graphs, in parallel processes for large datasets (``jobs=0``: all cores when worth it)."""
    entries = list(entries)
    jobs = jobs or (os.cpu_count() or 1)
    if len(entries) < PARALLEL_THRESHOLD:
        jobs = 1
    chunk = max(1, min(500, len(entries) // (jobs * 4) or 1))
    chunks = [(entries[i : i + chunk], config) for i in range(0, len(entries), chunk)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(entries), desc="featurising", unit="crystal", leave=False)
    results: list[CrystalGraph | Problem] = []
    if jobs == 1:
        for c in chunks:
            results.extend(_featurize_chunk(c))
            if bar:
                bar.update(len(c[0]))
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for c, res in zip(chunks, pool.map(_featurize_chunk, chunks)):
                results.extend(res)
                if bar:
                    bar.update(len(c[0]))
    if bar:
        bar.close()
    ids, graphs, problems = [], [], []
    for entry, res in zip(entries, results):
        if isinstance(res, Problem):
            problems.append(res)
        else:
            ids.append(entry.id)
            graphs.append(res)
    return ids, graphs, problems


def _save(path: Path, gs: GraphSet) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    problems = json.dumps([[p.where, p.id, p.message] for p in gs.problems])
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(
            tmp, ids=gs.ids, z=gs.z.astype(np.int16), atom_ptr=gs.atom_ptr, edge_index=gs.edge_index.astype(np.int32),
            distance=gs.distance, edge_ptr=gs.edge_ptr, problems=np.array(problems),
        )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(path: Path, entries: Sequence[Entry]) -> GraphSet | None:
    """Load a cache file, or None if it is missing or damaged (it is then rebuilt, never trusted)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            gs = GraphSet(
                ids=f["ids"], z=f["z"].astype(np.int64), atom_ptr=f["atom_ptr"].astype(np.int64),
                edge_index=f["edge_index"].astype(np.int64), distance=f["distance"].astype(np.float32),
                edge_ptr=f["edge_ptr"].astype(np.int64),
                problems=[Problem(*p) for p in json.loads(str(f["problems"]))],
            )
        return gs if _consistent(gs, entries) else None
    except Exception:  # noqa: BLE001  missing, truncated, garbage, pickled objects (refused), wrong shapes: rebuild
        return None


def _consistent(gs: GraphSet, entries: Sequence[Entry]) -> bool:
    """Pointers, shapes and indices agree, and every entry is accounted for exactly once (graph or problem)."""
    n = len(gs.ids)
    if gs.ids.ndim != 1 or gs.z.ndim != 1 or gs.edge_index.ndim != 2 or gs.edge_index.shape[0] != 2:
        return False
    if gs.atom_ptr.shape != (n + 1,) or gs.edge_ptr.shape != (n + 1,) or gs.atom_ptr[0] != 0 or gs.edge_ptr[0] != 0:
        return False
    if (np.diff(gs.atom_ptr) < 0).any() or (np.diff(gs.edge_ptr) < 0).any():
        return False
    if gs.atom_ptr[-1] != len(gs.z) or not gs.edge_ptr[-1] == gs.distance.shape[0] == gs.edge_index.shape[1]:
        return False
    local_limit = np.repeat(gs.n_atoms, gs.n_edges)
    if (gs.edge_index < 0).any() or (gs.edge_index >= local_limit).any() or not np.isfinite(gs.distance).all():
        return False
    if (gs.z < 1).any():
        return False
    accounted = [str(i) for i in gs.ids] + [p.id for p in gs.problems]
    return sorted(accounted) == sorted(e.id for e in entries)


def featurize(
    entries: Sequence[Entry],
    config: GraphConfig,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    jobs: int = 0,
    progress: bool = False,
) -> GraphSet:
    """Graphs for ``entries``: from the cache when the same entries and neighbour settings were seen before."""
    start = time.perf_counter()
    path = None
    if use_cache:  # the key hashes every entry (structures serialised): only worth it when the cache is used
        path = Path(cache_dir or default_cache_dir()) / "graphs" / f"{cache_key(entries, config)}.npz"
        cached = _load(path, entries)
        if cached is not None:
            where = {e.id: e.where for e in entries}  # the files may have moved since the cache was written
            cached.problems = [Problem(where.get(p.id, p.where), p.id, p.message) for p in cached.problems]
            cached.from_cache, cached.seconds = True, time.perf_counter() - start
            return cached
    ids, graphs, problems = featurize_entries(entries, config, jobs=jobs, progress=progress)
    gs = pack(ids, graphs)
    gs.problems = problems
    if path is not None:
        try:
            _save(path, gs)
        except OSError as err:  # a read-only or full disk must not stop a run
            import warnings

            warnings.warn(f"could not write graph cache {path}: {err}", stacklevel=2)
    gs.seconds = time.perf_counter() - start
    return gs
