"""Target transforms: per-atom scaling, per-element reference energies, normalisation — all fitted on the
training split only, so validation and test data leak nothing into them.

The network learns ``q = (y / n_atoms if per_atom else y)``, minus an optional composition baseline
``Σ_i c_i ref[z_i]`` (c_i: atomic fractions), scaled to zero mean and unit variance. ``decode`` undoes every
step, so each number a user sees is in the data's own unit. The element references are the standard trick of
CHGNet/M3GNet: a linear fit of energy per atom on composition removes the part of the target that only depends
on which elements are present, leaving the network the part that depends on structure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

N_ELEMENTS = 119


def composition_fractions(z: np.ndarray, atom_ptr: np.ndarray) -> np.ndarray:
    """[S, 119] atomic fractions of each crystal (vectorised over the packed atom array)."""
    n = np.diff(atom_ptr)
    crystal = np.repeat(np.arange(len(n)), n)
    counts = np.zeros((len(n), N_ELEMENTS))
    np.add.at(counts, (crystal, z), 1.0)
    return counts / n[:, None]


def fit_element_references(fractions: np.ndarray, q: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """Per-element references [119, T] such that mean(q) + fractions @ ref ≈ q (ridge least squares).

    The fit is on centred targets, so the ridge pulls rarely seen elements towards the average and an element
    absent from the training split gets 0: a crystal containing it falls back on the mean, not on an arbitrary
    offset of several eV/atom.
    """
    seen = fractions.sum(axis=0) > 0
    x = fractions[:, seen]
    centred = q - q.mean(axis=0)
    a = x.T @ x + ridge * np.eye(x.shape[1])
    ref = np.zeros((N_ELEMENTS, q.shape[1]))
    ref[seen] = np.linalg.solve(a, x.T @ centred)
    return ref


def _spread(q: np.ndarray) -> np.ndarray:
    """Mean absolute deviation per column: the MAE of predicting the mean."""
    return np.abs(q - q.mean(axis=0)).mean(axis=0)


@dataclass
class TargetTransform:
    per_atom: bool = False
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    element_ref: list[list[float]] | None = None  # [119][T] composition baseline, or None

    @classmethod
    def fit(
        cls, targets: np.ndarray, z: np.ndarray, atom_ptr: np.ndarray, per_atom: bool, element_ref: bool = False
    ) -> TargetTransform:
        """Fit on the training split: ``targets`` [S, T], packed atomic numbers ``z`` with offsets ``atom_ptr``."""
        n_atoms = np.diff(atom_ptr).astype(np.float64)
        q = targets / n_atoms[:, None] if per_atom else targets
        ref = None
        if element_ref:
            fractions = composition_fractions(z, atom_ptr)
            ref = fit_element_references(fractions, q)
            q = q - fractions @ ref
        std = q.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        return cls(per_atom, [float(v) for v in q.mean(axis=0)], [float(v) for v in std],
                   None if ref is None else ref.tolist())

    @classmethod
    def continue_from(
        cls, pretrained: TargetTransform, targets: np.ndarray, zero_shot: np.ndarray, z: np.ndarray,
        atom_ptr: np.ndarray, per_atom: bool, element_ref: bool = False,
    ) -> TargetTransform | None:
        """A transform that keeps a pretrained model's output scale, so fine-tuning starts from its predictions.

        ``zero_shot`` [S, T] are the pretrained model's predictions for the training ``targets`` (data unit). With
        ``element_ref``, per-element references are fitted to what the pretrained model gets wrong (``q - zero_shot``
        per atom): the standard per-element shifts between its training data and the new data (changed
        pseudopotentials, energy corrections) are removed before the first step, and the network refines the rest.
        A pretrained model's own element references stay part of its predictions (the new ones are added to them).
        With ``element_ref`` the targets only need to be the pretrained quantity *up to per-element references*:
        a total energy per atom continues a formation-energy model, since the two differ by Σ_i c_i μ_i. The start is
        kept when the pretrained predictions plus fitted references explain the training targets better than the
        references alone do. Without them, None when the targets are not the pretrained model's quantity (their mean
        is further than three of its scales from its predictions', or their spread differs from that scale by more
        than a factor of three; the scale is the larger of its predictions' spread and its training targets').
        None means the head is rescaled to the new targets as usual.
        """
        if len(pretrained.mean) != targets.shape[1]:
            return None
        n_atoms = np.diff(atom_ptr).astype(np.float64)[:, None]
        q, q0 = (targets / n_atoms, zero_shot / n_atoms) if per_atom else (targets, zero_shot)
        pm, ps = np.asarray(pretrained.mean), np.asarray(pretrained.std)
        residual = q - q0
        ref = None if pretrained.element_ref is None else np.asarray(pretrained.element_ref)  # part of its predictions
        if element_ref:
            fractions = composition_fractions(z, atom_ptr)
            fitted = fit_element_references(fractions, residual)
            residual = residual - fractions @ fitted
            alone = q - fractions @ fit_element_references(fractions, q)  # what the references explain on their own
            if np.any(_spread(residual) >= _spread(alone)):
                return None
            ref = fitted if ref is None else ref + fitted
        else:
            # the scale of the pretrained quantity: the spread of its predictions here, or of its own training targets
            scale, spread = np.maximum(q0.std(axis=0), ps), q.std(axis=0)
            if np.any(np.abs(q.mean(axis=0) - q0.mean(axis=0)) > 3 * scale) or np.any(spread > 3 * scale) \
                    or np.any(spread < scale / 3):
                return None
        shift = residual.mean(axis=0)
        return cls(per_atom, [float(v) for v in pm + shift], [float(v) for v in ps], None if ref is None else ref.tolist())

    def with_per_atom(self, per_atom: bool) -> TargetTransform:
        """The same numbers for a target read per atom (or not): the original code's models predict per-atom
        quantities directly, while a data set may hold the totals."""
        return TargetTransform(per_atom, list(self.mean), list(self.std), self.element_ref)

    def _baseline(self, batch, like: torch.Tensor) -> torch.Tensor | float:
        """Σ_i c_i ref[z_i] per crystal of the batch (0 without element references)."""
        if self.element_ref is None:
            return 0.0
        ref = like.new_tensor(self.element_ref)[batch.z]  # [N, T]
        atom_weight = getattr(batch, "atom_weight", None)  # a merged row stands for that many atoms
        if atom_weight is not None:
            ref = ref * atom_weight.to(ref.dtype).unsqueeze(1)
        total = like.new_zeros((batch.num_graphs, ref.shape[1])).index_add_(0, batch.batch, ref)
        return total / self.sizes(batch).to(like.dtype)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return like.new_tensor(self.mean), like.new_tensor(self.std)

    @staticmethod
    def sizes(batch) -> torch.Tensor:
        """[B, 1] atoms per crystal, merged atoms counted as often as they stand (data/batching.py)."""
        atom_weight = getattr(batch, "atom_weight", None)
        if atom_weight is None:
            return (batch.ptr[1:] - batch.ptr[:-1]).to(torch.float32).unsqueeze(1)
        sizes = atom_weight.new_zeros(batch.num_graphs).index_add_(0, batch.batch, atom_weight)
        return sizes.to(torch.float32).unsqueeze(1)

    def intensive(self, y: torch.Tensor, batch) -> torch.Tensor:
        """Data unit -> the quantity learned, before normalisation (per atom with ``per_atom``)."""
        return y / self.sizes(batch).to(y.dtype) if self.per_atom else y

    def encode(self, y: torch.Tensor, batch) -> torch.Tensor:
        """Data unit -> what the network is trained to output."""
        mean, std = self._stats(y)
        return (self.intensive(y, batch) - self._baseline(batch, y) - mean) / std

    def decode_intensive(self, out: torch.Tensor, batch) -> torch.Tensor:
        """Network output -> data unit, per atom with ``per_atom`` (the quantity the model learns)."""
        mean, std = self._stats(out)
        return out * std + mean + self._baseline(batch, out)

    def decode(self, out: torch.Tensor, batch) -> torch.Tensor:
        """Network output -> data unit (the total, for an extensive target learned per atom)."""
        q = self.decode_intensive(out, batch)
        return q * self.sizes(batch).to(q.dtype) if self.per_atom else q

    def decode_sites(self, site_out: torch.Tensor, z: torch.Tensor, sizes: torch.Tensor, summed: bool) -> torch.Tensor:
        """Per-site outputs [N, T] of an atom-readout network -> per-site contributions in the learned unit (per atom
        with ``per_atom``): their mean (their sum when ``summed``: sum pooling) is ``decode_intensive`` of the pooled
        output, the composition baseline included site by site. ``sizes``: [N, 1] atoms of each site's crystal."""
        mean, std = self._stats(site_out)
        offset = mean + (site_out.new_tensor(self.element_ref)[z] if self.element_ref is not None else 0.0)
        return site_out * std + (offset / sizes if summed else offset)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TargetTransform:
        ref = d.get("element_ref")
        return cls(bool(d["per_atom"]), [float(v) for v in d["mean"]], [float(v) for v in d["std"]],
                   None if ref is None else [[float(v) for v in row] for row in ref])
