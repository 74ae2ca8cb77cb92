"""Embeddings: what a trained network has learned about each crystal (and each atom), as vectors for maps,
clustering, similarity search or another model's input (cgcnn#21/#23/#45).

A crystal's vector is the pooled atom features after the convolutions: the input of the output network for a
crystal-readout model, and the same pooling of the same features for an atom-readout one. An atom's vector is its
features after the convolutions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cgcnn_lab.inference import TrainedModel
from cgcnn_lab.model.network import pool

FORMATS = (".parquet", ".npz", ".csv")


@dataclass
class Embeddings:
    """Crystal vectors ``[S, F]`` by id and, when asked for, atom vectors ``[N, F]`` (``atom_crystal`` indexes
    ``ids``; ``site`` is the atom's index in its structure; ``z`` its atomic number)."""

    ids: np.ndarray
    vectors: np.ndarray
    atom_vectors: np.ndarray | None = None
    atom_crystal: np.ndarray | None = None
    site: np.ndarray | None = None
    z: np.ndarray | None = None

    def frame(self, atoms: bool = False):
        """A pandas DataFrame: id and e0..e{F-1} (per atom: id, site, element and the vector)."""
        import pandas as pd

        from cgcnn_lab.data.elements import element_symbol

        if not atoms:
            return pd.concat([pd.DataFrame({"id": self.ids}), _columns(self.vectors)], axis=1)
        if self.atom_vectors is None:
            raise ValueError("no atom vectors: embed with atoms=True (--atoms)")
        head = pd.DataFrame({"id": self.ids[self.atom_crystal], "site": self.site,
                             "element": [element_symbol(int(z)) for z in self.z]})
        return pd.concat([head, _columns(self.atom_vectors)], axis=1)

    def write(self, path: str | Path) -> list[Path]:
        """Parquet or CSV (one row per crystal; per atom in ``NAME_atoms.EXT`` beside it) or one NPZ with every
        array. Returns the files written."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in FORMATS:
            raise ValueError(f"{path}: write embeddings as {', '.join(FORMATS)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".npz":
            arrays = {k: v for k, v in vars(self).items() if v is not None}
            np.savez_compressed(path, **{k: v.astype(str) if k == "ids" else v for k, v in arrays.items()})
            return [path]
        written = [path]
        frames = [(path, self.frame())]
        if self.atom_vectors is not None:
            written.append(path.with_name(f"{path.stem}_atoms{path.suffix}"))
            frames.append((written[-1], self.frame(atoms=True)))
        for out, frame in frames:
            frame.to_parquet(out, index=False) if suffix == ".parquet" else frame.to_csv(out, index=False)
        return written


def _columns(vectors: np.ndarray):
    import pandas as pd

    return pd.DataFrame(vectors, columns=[f"e{k}" for k in range(vectors.shape[1])])


@torch.no_grad()
def embed(trained: TrainedModel, dataset, atoms: bool = False, batch_size: int = 256) -> Embeddings:
    """The crystal (and atom) vectors of every crystal of ``dataset``, in its order."""
    model = trained.model
    was_training = model.training
    model.eval()
    crystal, entries, per_atom, owner, site, z = [], [], [], [], [], []
    for batch in dataset.loader(batch_size=batch_size):  # every site: no merged atoms
        x = model.atom_features(batch).float()
        crystal.append(pool(model.config.pool, x, batch.batch, int(batch.num_graphs), None))
        entries.append(batch.entry)
        if atoms:
            per_atom.append(x)
            owner.append(batch.entry[batch.batch])
            site.append(torch.arange(batch.num_nodes) - batch.ptr[batch.batch])
            z.append(batch.z)
    model.train(was_training)
    width = model.config.atom_fea_len
    cat = (lambda parts, shape: torch.cat(parts).numpy() if parts else np.zeros(shape, np.float32))
    vectors = np.zeros((len(dataset.ids), width), np.float32)
    vectors[cat(entries, (0,))] = cat(crystal, (0, width))  # the dataset's order, whatever the batches' was
    result = Embeddings(np.asarray(dataset.ids), vectors)
    if atoms:
        result.atom_vectors = cat(per_atom, (0, width))
        result.atom_crystal, result.site, result.z = (cat(a, (0,)) for a in (owner, site, z))
    return result
