"""Target transforms: per-atom scaling for extensive targets, and normalisation fitted on the training split.

The network always learns ``(y / n_atoms? - mean) / std``; ``decode`` undoes it so that every number a user
sees is in the data's own unit (and, with ``per_atom``, also per atom).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch


@dataclass
class TargetTransform:
    per_atom: bool = False
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])

    @classmethod
    def fit(cls, targets: np.ndarray, n_atoms: np.ndarray, per_atom: bool) -> "TargetTransform":
        """Fit on the training split only (so validation/test leak nothing into the scaling)."""
        y = targets / n_atoms[:, None] if per_atom else targets
        std = y.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        return cls(per_atom, [float(v) for v in y.mean(axis=0)], [float(v) for v in std])

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return like.new_tensor(self.mean), like.new_tensor(self.std)

    def encode(self, y: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
        """Data unit -> what the network learns."""
        mean, std = self._stats(y)
        if self.per_atom:
            y = y / n_atoms.unsqueeze(1)
        return (y - mean) / std

    def decode_intensive(self, out: torch.Tensor) -> torch.Tensor:
        """Network output -> data unit, per atom when ``per_atom`` (the quantity the model actually learns)."""
        mean, std = self._stats(out)
        return out * std + mean

    def decode(self, out: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
        """Network output -> data unit (total, for an extensive target learned per atom)."""
        y = self.decode_intensive(out)
        return y * n_atoms.unsqueeze(1) if self.per_atom else y

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TargetTransform":
        return cls(bool(d["per_atom"]), [float(v) for v in d["mean"]], [float(v) for v in d["std"]])
