"""A featurised dataset ready for training: graphs + targets + what was skipped and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.data.featurize import GraphSet, featurize
from cgcnn_lab.data.graph import GraphConfig
from cgcnn_lab.data.sources import DataError, Problem, ProblemLog, RawDataset, summarize_problems


@dataclass
class CrystalDataset:
    """Featurised crystals + targets; ``dataset[i]`` is one crystal as a PyTorch Geometric ``Data`` object.

    Plain numpy until a batch is asked for: featurising and reporting never import torch (or PyG, which takes
    ~4 s to import); a map-style dataset for ``torch.utils.data.DataLoader`` all the same (``__len__``,
    ``__getitem__``)."""

    name: str
    graphs: GraphSet
    targets: np.ndarray | None  # float64 [S, T] in the data's own units
    target_names: list[str]
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stream: bool | None = None  # batches read from the memory-mapped cache (data/batching.py); None: by size

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, i: int):
        """One crystal as a PyG ``Data`` (for inspection and for PyG tools; training slices the packed arrays)."""
        import torch
        from torch_geometric.data import Data

        g = self.graphs
        if not -len(g) <= i < len(g):
            raise IndexError(f"crystal {i} out of range for {len(g)} crystals")
        i = int(i) % len(g)
        graph = g.graph(i)
        d = Data(z=torch.from_numpy(graph.z), edge_index=torch.from_numpy(graph.edge_index),
                 distance=torch.from_numpy(graph.distance), num_nodes=graph.n_atoms)
        d.entry = torch.tensor([i])  # position in the dataset (not "index": PyG would offset it)
        if self.targets is not None:
            d.y = torch.as_tensor(self.targets[i : i + 1], dtype=torch.float32)
        return d

    def loader(
        self, subset=None, batch_size: int = 256, shuffle: bool = False, seed: int = 0, collapse: bool = False,
        targets: np.ndarray | None = None, device: str = "cpu", stream: bool | None = None,
    ):
        """Batches of ``subset`` (positions; default all) sliced from the packed arrays (data/batching.py)."""
        from cgcnn_lab.data.batching import PackedGraphs, PackedLoader

        stream = self.stream if stream is None else stream
        packed = PackedGraphs(self.graphs, self.targets if targets is None else targets, device, collapse, stream)
        return PackedLoader(packed, subset, batch_size, shuffle, seed)

    @property
    def ids(self) -> np.ndarray:
        return self.graphs.ids

    @property
    def n_atoms(self) -> np.ndarray:
        return self.graphs.n_atoms

    def summary(self) -> str:
        g = self.graphs
        lines = [
            (f"{self.name}: {len(g)} crystals, {len(g.z)} atoms, {len(g.distance)} edges"
             f" ({'cached graphs' if g.from_cache else 'featurised'} in {g.seconds:.2f} s)")
        ]
        lines += self.notes
        if self.problems:
            lines.append(summarize_problems(self.problems))
        return "\n".join(lines)


def build_dataset(
    raw: RawDataset,
    config: GraphConfig,
    encoding: ElementEncoding | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    strict: bool = False,
    jobs: int = 0,
    progress: bool = False,
) -> CrystalDataset:
    """Featurise (or load from cache), drop entries the encoding cannot represent, attach targets."""
    if not raw.entries:
        detail = f"\n{summarize_problems(raw.problems)}" if raw.problems else ""
        raise DataError(f"{raw.name}: empty dataset, no usable crystals{detail}")
    graphs = featurize(raw.entries, config, cache_dir=cache_dir, use_cache=use_cache, jobs=jobs, progress=progress)
    log = ProblemLog(strict)
    if strict and graphs.problems:
        p = graphs.problems[0]
        raise DataError(f"{p} (strict mode; drop --strict to skip bad entries)")
    log.problems.extend(raw.problems + graphs.problems)

    keep = np.ones(len(graphs), dtype=bool)
    if encoding is not None:
        known = encoding.available[np.minimum(graphs.z, len(encoding.available) - 1)] & (graphs.z < len(encoding.available))
        if not known.all():
            crystal_of_atom = np.repeat(np.arange(len(graphs)), graphs.n_atoms)
            by_id = {e.id: e for e in raw.entries}
            for i in np.unique(crystal_of_atom[~known]):
                entry = by_id[str(graphs.ids[i])]
                try:
                    encoding.check(graphs.graph(int(i)).z, entry.id)
                except ValueError as err:
                    log.add(entry.where, entry.id, f"unknown element: {err}")
                keep[i] = False
    if not keep.all():
        graphs = graphs.select(keep)
    if len(graphs) == 0:
        raise DataError(f"{raw.name}: empty dataset, no crystal could be featurised\n{summarize_problems(log.problems)}")

    notes = list(raw.notes)
    degree = graphs.degree()
    short = int((degree < config.max_neighbors).sum())
    if short:
        n_crystals = len(np.unique(np.repeat(np.arange(len(graphs)), graphs.n_atoms)[degree < config.max_neighbors]))
        notes.append(
            f"{short} atom(s) in {n_crystals} crystal(s) have fewer than {config.max_neighbors} neighbours within "
            f"{config.radius} Å; they use the neighbours they have (no padding)"
        )
    targets = None
    if raw.has_targets:
        by_id = {e.id: e.targets for e in raw.entries}
        targets = np.stack([by_id[str(i)] for i in graphs.ids]).astype(np.float64)
    return CrystalDataset(raw.name, graphs, targets, list(raw.target_names), log.problems, notes)
