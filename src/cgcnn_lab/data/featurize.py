"""Featurise once, cache on disk: structures -> packed crystal graphs.

All graphs of a dataset are packed into flat arrays with offsets (``atom_ptr``, ``edge_ptr``), the layout
PyTorch Geometric batches use internally. The cache is a folder of raw arrays (``LAYOUT``) plus JSON: no pickle,
so it is safe to load even if someone tampers with it. Featurisation appends each finished chunk to the files, so
it never holds the whole dataset, and the folder is renamed into place only when complete (atomic). Loading
memory-maps the arrays: a set larger than memory is streamed into training batch by batch (data/batching.py).
The cache is keyed by the entries' ids and raw content plus the neighbour parameters. Element encodings and
targets are not part of the key: changing them never re-featurises.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cgcnn_lab.console import interactive
from cgcnn_lab.data.fastcif import plain_cif_graph
from cgcnn_lab.data.graph import CrystalGraph, GraphConfig, GraphError, structure_to_graph
from cgcnn_lab.data.sources import DataError, Entry, Problem

CACHE_VERSION = 4  # 4: fast-reader coordinates computed per site as pymatgen does (3: a folder of memory-mapped
#                   raw arrays; 2: one .npz read into memory)
PARALLEL_THRESHOLD = 1500  # below this, process start-up costs more than it saves
CHUNK_EDGES = 1 << 22  # whole-set checks and statistics run over crystals in chunks of about this many edges

# The arrays on disk: name -> (little-endian dtype, columns). dtypes are fixed here, never read from the files;
# meta.json gives the lengths, which must match the file sizes exactly. 4 + 4 bytes per edge (+2 per atom).
LAYOUT = {"z": ("<i2", 1), "edges": ("<i4", 2), "distance": ("<f4", 1), "n_atoms": ("<i4", 1), "n_edges": ("<i4", 1)}


def default_cache_dir() -> Path:
    """``$CGCNN_LAB_CACHE``, else ``$XDG_CACHE_HOME/cgcnn-lab``, else ``~/.cache/cgcnn-lab``."""
    if os.environ.get("CGCNN_LAB_CACHE"):
        return Path(os.environ["CGCNN_LAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cgcnn-lab"


def _ptr(counts: np.ndarray) -> np.ndarray:
    ptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """cat([arange(s, s + c) for s, c in zip(starts, counts)]) without a Python loop."""
    ends = np.cumsum(counts)
    return np.arange(int(ends[-1]) if len(ends) else 0) + np.repeat(starts - (ends - counts), counts)


@dataclass
class GraphSet:
    """Packed graphs of the entries that featurised; ``problems`` lists those that did not.

    The arrays may be memory-mapped from the cache (read-only, paged in on use): whole-set passes go through
    :meth:`chunks`, batches read only their own rows.
    """

    ids: np.ndarray  # str [S]
    z: np.ndarray  # int16 [sum N]
    atom_ptr: np.ndarray  # int64 [S+1]
    edge_index: np.ndarray  # int32 [2, sum E] (neighbour, centre), local to each crystal
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

    @property
    def mapped(self) -> bool:
        """True when the edge arrays live in the cache files rather than in memory."""
        return isinstance(self.distance, np.memmap)

    def nbytes(self) -> int:
        """Memory the packed arrays take once loaded as training tensors (int64 indices, float32 distances)."""
        return len(self.distance) * (2 * 8 + 4 + 4) + len(self.z) * 8 + len(self) * 16

    def graph(self, i: int) -> CrystalGraph:
        a0, a1, e0, e1 = self.atom_ptr[i], self.atom_ptr[i + 1], self.edge_ptr[i], self.edge_ptr[i + 1]
        return CrystalGraph(
            self.z[a0:a1].astype(np.int64), self.edge_index[:, e0:e1].astype(np.int64), np.array(self.distance[e0:e1])
        )

    def chunks(self, max_edges: int | None = None) -> Iterator[tuple[int, int]]:
        """Consecutive crystal ranges [c0, c1) of about ``max_edges`` edges each: whole-set passes in bounded memory."""
        max_edges = max_edges or CHUNK_EDGES
        bounds = np.searchsorted(self.edge_ptr, np.arange(0, self.edge_ptr[-1], max_edges), side="right") - 1
        bounds = np.unique(np.concatenate([[0], bounds, [len(self)]]).clip(0, len(self)))  # 0: edgeless leaders
        yield from zip(bounds[:-1].tolist(), bounds[1:].tolist())

    def degree(self) -> np.ndarray:
        """Neighbours per atom over the whole set (for the fewer-than-M report)."""
        out = np.zeros(len(self.z), dtype=np.int64)
        for c0, c1 in self.chunks():
            a0, a1, e0, e1 = self.atom_ptr[c0], self.atom_ptr[c1], self.edge_ptr[c0], self.edge_ptr[c1]
            offsets = np.repeat(self.atom_ptr[c0:c1] - a0, self.n_edges[c0:c1])
            out[a0:a1] = np.bincount(self.edge_index[1, e0:e1] + offsets, minlength=a1 - a0)
        return out

    def atoms(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(z, atom_ptr) of the crystals ``index``, packed: what composition fits need, without the edges."""
        index = np.asarray(index, dtype=np.int64)
        n_atoms = self.n_atoms[index]
        return self.z[_ranges(self.atom_ptr[index], n_atoms)].astype(np.int64), _ptr(n_atoms)

    def select(self, keep: np.ndarray) -> GraphSet:
        """A subset by boolean mask or index array, in memory (used to drop entries, e.g. unknown elements)."""
        idx = np.flatnonzero(keep) if keep.dtype == bool else np.asarray(keep, dtype=np.int64)
        z, atom_ptr = self.atoms(idx)
        n_edges = self.n_edges[idx]
        edges = _ranges(self.edge_ptr[idx], n_edges)
        return GraphSet(
            self.ids[idx], z.astype(np.int16), atom_ptr, np.ascontiguousarray(self.edge_index[:, edges]),
            np.array(self.distance[edges]), _ptr(n_edges), self.problems, self.from_cache, self.seconds,
        )


def pack(ids: Sequence[str], graphs: Sequence[CrystalGraph]) -> GraphSet:
    n_atoms = np.array([g.n_atoms for g in graphs], dtype=np.int64)
    n_edges = np.array([g.n_edges for g in graphs], dtype=np.int64)
    if graphs:
        z = np.concatenate([g.z for g in graphs]).astype(np.int16)
        edge_index = np.concatenate([g.edge_index for g in graphs], axis=1).astype(np.int32)
        distance = np.concatenate([g.distance for g in graphs]).astype(np.float32)
    else:
        z, edge_index, distance = np.zeros(0, np.int16), np.zeros((2, 0), np.int32), np.zeros(0, np.float32)
    return GraphSet(np.array(ids, dtype=str), z, _ptr(n_atoms), edge_index, distance, _ptr(n_edges))


def concat(parts: Sequence[GraphSet]) -> GraphSet:
    """Packed sets one after another (in memory)."""
    if not parts:
        return pack([], [])
    return GraphSet(
        np.concatenate([p.ids for p in parts]), np.concatenate([p.z for p in parts]),
        _ptr(np.concatenate([p.n_atoms for p in parts])), np.concatenate([p.edge_index for p in parts], axis=1),
        np.concatenate([p.distance for p in parts]), _ptr(np.concatenate([p.n_edges for p in parts])),
        [q for p in parts for q in p.problems],
    )


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


def entry_to_graph(entry: Entry, config: GraphConfig, fast_cif: bool = True) -> CrystalGraph:
    """One entry's graph: plain P1 CIFs through the fast reader (data/fastcif.py), everything else through pymatgen
    (``fast_cif=False``: everything, for comparisons)."""
    if fast_cif and isinstance(entry.content, str) and not entry.content.lstrip().startswith("{"):
        graph = plain_cif_graph(entry.content, config, entry.id)
        if graph is not None:
            return graph
    from cgcnn_lab.data.sources import parse_structure

    return structure_to_graph(parse_structure(entry), config, entry.id)


def _featurize_chunk(args: tuple[list[Entry], GraphConfig, bool]) -> GraphSet:
    """One chunk of entries -> packed graphs + problems (packed in the worker: one array per field to send back)."""
    entries, config, fast_cif = args
    ids, graphs, problems = [], [], []
    for entry in entries:
        try:
            graphs.append(entry_to_graph(entry, config, fast_cif))
            ids.append(entry.id)
        except (DataError, GraphError) as err:
            problems.append(Problem(entry.where, entry.id, _problem_message(err, entry)))
    part = pack(ids, graphs)
    part.problems = problems
    return part


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


def featurize_parts(
    entries: Sequence[Entry], config: GraphConfig, jobs: int = 0, progress: bool = False, fast_cif: bool = True
) -> Iterator[GraphSet]:
    """Packed graphs chunk by chunk, in entry order; in parallel processes for large datasets (``jobs=0``: all cores)."""
    entries = list(entries)
    jobs = jobs or (os.cpu_count() or 1)
    if len(entries) < PARALLEL_THRESHOLD:
        jobs = 1
    chunk = max(1, min(500, len(entries) // (jobs * 4) or 1))
    chunks = [(entries[i : i + chunk], config, fast_cif) for i in range(0, len(entries), chunk)]
    bar = None
    if progress and interactive():  # a log file gets the summary line afterwards, not a redrawn bar
        from tqdm import tqdm

        bar = tqdm(total=len(entries), desc="featurising", unit="crystal", leave=False)
    try:
        if jobs == 1:
            parts = map(_featurize_chunk, chunks)
            for c, part in zip(chunks, parts):
                yield part
                if bar:
                    bar.update(len(c[0]))
        else:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                for c, part in zip(chunks, pool.map(_featurize_chunk, chunks)):
                    yield part
                    if bar:
                        bar.update(len(c[0]))
    finally:
        if bar:
            bar.close()


def featurize_entries(
    entries: Sequence[Entry], config: GraphConfig, jobs: int = 0, progress: bool = False, fast_cif: bool = True
) -> tuple[list[str], list[CrystalGraph], list[Problem]]:
    """(ids, graphs, problems) of ``entries``, in memory and uncached: for inspection and tests."""
    gs = concat(list(featurize_parts(entries, config, jobs, progress, fast_cif)))
    return [str(i) for i in gs.ids], [gs.graph(i) for i in range(len(gs))], gs.problems


class _CacheWriter:
    """Appends featurised parts to the cache files in a temporary folder; ``commit`` renames it into place."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        self.files = {name: open(self.tmp / f"{name}.bin", "wb") for name in LAYOUT}  # noqa: SIM115 closed in commit
        self.ids: list[str] = []
        self.problems: list[Problem] = []
        self.lengths = dict.fromkeys(LAYOUT, 0)

    def add(self, part: GraphSet) -> None:
        arrays = {"z": part.z, "edges": part.edge_index.T, "distance": part.distance,
                  "n_atoms": part.n_atoms, "n_edges": part.n_edges}
        for name, array in arrays.items():
            dtype, _ = LAYOUT[name]
            self.files[name].write(np.ascontiguousarray(array, dtype=dtype).tobytes())
            self.lengths[name] += len(array)
        self.ids.extend(str(i) for i in part.ids)
        self.problems.extend(part.problems)

    def commit(self) -> None:
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        (self.tmp / "ids.json").write_text(json.dumps(self.ids))
        (self.tmp / "problems.json").write_text(json.dumps([[p.where, p.id, p.message] for p in self.problems]))
        (self.tmp / "meta.json").write_text(json.dumps({"version": CACHE_VERSION, "lengths": self.lengths}))
        if self.path.exists():  # a damaged or stale folder under the same key: move it aside, then replace
            stale = self.path.with_name(f".{self.path.name}.{os.getpid()}.stale")
            os.replace(self.path, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(self.tmp, self.path)
        except OSError:  # another process committed the same key first: its folder holds the same graphs
            self.abort()

    def abort(self) -> None:
        for f in self.files.values():
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _load(path: Path, entries: Sequence[Entry]) -> GraphSet | None:
    """Memory-map a cache folder, or None if it is missing or damaged (it is then rebuilt, never trusted)."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        if meta["version"] != CACHE_VERSION:
            return None
        arrays = {}
        for name, (dtype, columns) in LAYOUT.items():
            n = int(meta["lengths"][name])
            file = path / f"{name}.bin"
            if file.stat().st_size != n * columns * np.dtype(dtype).itemsize:
                return None
            shape = (n, columns) if columns > 1 else (n,)
            arrays[name] = np.memmap(file, dtype=dtype, mode="r", shape=shape) if n else np.zeros(shape, dtype)
        ids = json.loads((path / "ids.json").read_text())
        problems = [Problem(*map(str, p)) for p in json.loads((path / "problems.json").read_text())]
        if not all(isinstance(i, str) for i in ids) or len(ids) != len(arrays["n_atoms"]):
            return None
        gs = GraphSet(
            ids=np.array(ids, dtype=str), z=arrays["z"], atom_ptr=_ptr(arrays["n_atoms"]),
            edge_index=arrays["edges"].T, distance=arrays["distance"], edge_ptr=_ptr(arrays["n_edges"]),
            problems=problems,
        )
        return gs if _consistent(gs, entries) else None
    except Exception:  # noqa: BLE001  missing, truncated, garbage, wrong shapes or types: rebuild
        return None


def _consistent(gs: GraphSet, entries: Sequence[Entry]) -> bool:
    """Pointers and indices agree, and every entry is accounted for exactly once (graph or problem).

    One pass over the arrays in chunks: a damaged cache is found in bounded memory, even for sets larger than it.
    """
    if (gs.n_atoms < 1).any() or (gs.n_edges < 0).any():
        return False
    if gs.atom_ptr[-1] != len(gs.z) or not gs.edge_ptr[-1] == gs.distance.shape[0] == gs.edge_index.shape[1]:
        return False
    for c0, c1 in gs.chunks():
        a0, a1, e0, e1 = gs.atom_ptr[c0], gs.atom_ptr[c1], gs.edge_ptr[c0], gs.edge_ptr[c1]
        local_limit = np.repeat(gs.n_atoms[c0:c1], gs.n_edges[c0:c1])
        edges = gs.edge_index[:, e0:e1]
        if (edges < 0).any() or (edges >= local_limit).any() or not np.isfinite(gs.distance[e0:e1]).all():
            return False
        if (gs.z[a0:a1] < 1).any():
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
    fast_cif: bool = True,
) -> GraphSet:
    """Graphs for ``entries``: from the cache when the same entries and neighbour settings were seen before.

    With the cache on, the result is memory-mapped from the cache folder whether it was just written or found.
    ``fast_cif=False`` reads every CIF with pymatgen (same graphs, slower: for comparisons).
    """
    start = time.perf_counter()
    if not use_cache:  # the key hashes every entry (structures serialised): only worth it when the cache is used
        gs = concat(list(featurize_parts(entries, config, jobs, progress, fast_cif)))
        gs.seconds = time.perf_counter() - start
        return gs
    path = Path(cache_dir or default_cache_dir()) / "graphs" / cache_key(entries, config)
    gs = _load(path, entries)
    if gs is None:
        try:
            gs = _write(path, featurize_parts(entries, config, jobs, progress, fast_cif), entries)
        except OSError as err:  # a read-only or full disk must not stop a run: featurise in memory instead
            import warnings

            warnings.warn(f"could not write graph cache {path}: {err}", stacklevel=2)
            gs = concat(list(featurize_parts(entries, config, jobs, progress, fast_cif)))
    else:
        where = {e.id: e.where for e in entries}  # the files may have moved since the cache was written
        gs.problems = [Problem(where.get(p.id, p.where), p.id, p.message) for p in gs.problems]
        gs.from_cache = True
    gs.seconds = time.perf_counter() - start
    return gs


def _write(path: Path, parts: Iterator[GraphSet], entries: Sequence[Entry]) -> GraphSet:
    """Stream ``parts`` into the cache folder, then map it. Raises OSError if it cannot be written or read back."""
    writer = _CacheWriter(path)
    try:
        for part in parts:
            writer.add(part)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    gs = _load(path, entries)
    if gs is None:  # written but not readable back (e.g. a file system that drops data): do not trust it
        raise OSError("written but does not read back consistently")
    return gs
