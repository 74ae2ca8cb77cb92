"""A crystal's stoichiometry as a few numbers the output network can read (``--stoichiometry on``).

Mean pooling gives the output network the average of a crystal's atom vectors. How many different elements the
crystal has, and how evenly they are spread, are non-linear functions of that average that the network would have
to learn, and where elements share features it cannot: an ABO3 perovskite (3 elements, 1:1:3) and an A2BB'O6 double
perovskite (4 elements, 2:1:1:6) differ in exactly this. These are Magpie's stoichiometric attributes
(Ward et al., npj Comput. Mater. 2, 16028, 2016; matminer's ``Stoichiometry``): the number of elements and the
L^p norms of the element fractions, computed from the batch's atomic numbers inside the model, so nothing is
cached and a saved model needs no new input.
"""

from __future__ import annotations

import torch

NORMS = (2, 3, 5, 7, 10)
N_FEATURES = 1 + len(NORMS)
_N_ELEMENTS = 119


def stoichiometry(z: torch.Tensor, batch: torch.Tensor, n_crystals, atom_weight: torch.Tensor | None = None):
    """[n_crystals, N_FEATURES]: number of elements, then ||fractions||_p for p in NORMS.

    A merged row (data/batching.py) stands for ``atom_weight`` identical atoms and counts that often."""
    weight = torch.ones_like(z, dtype=torch.float32) if atom_weight is None else atom_weight.to(torch.float32)
    counts = weight.new_zeros((n_crystals, _N_ELEMENTS)).index_put_((batch, z), weight, accumulate=True)
    fractions = counts / counts.sum(dim=1, keepdim=True).clamp(min=1e-12)
    norms = [fractions.pow(p).sum(dim=1).pow(1.0 / p) for p in NORMS]
    return torch.stack([(counts > 0).sum(dim=1).to(torch.float32), *norms], dim=1)
