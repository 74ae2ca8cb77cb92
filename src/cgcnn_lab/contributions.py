"""Per-site contributions: which atoms make a crystal's prediction (the CGCNN paper's interpretability analysis).

A model trained with ``readout="atom"`` applies its output network to every atom and then pools, so its
prediction *is* the mean (or sum) of per-atom terms. Decoded into the target's unit, each term is that site's
contribution: with ``--per-atom`` energies they are site energies in eV/atom whose mean is the predicted energy
per atom and whose sum is the predicted total energy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cgcnn_lab.data.elements import element_symbol
from cgcnn_lab.inference import TrainedModel
from cgcnn_lab.targets import TargetTransform


@torch.no_grad()
def site_contributions(trained: TrainedModel, dataset, batch_size: int = 256) -> pd.DataFrame:
    """One row per atom: id, site, element, contribution (decoded), and the crystal's prediction."""
    model, config, transform = trained.model, trained.model.config, trained.transform
    if config.readout != "atom" or config.pool not in ("mean", "sum"):
        raise ValueError(
            f"{trained.path}: per-site contributions need a model trained with --readout atom and mean or sum "
            f"pooling (this one: readout {config.readout}, pool {config.pool})"
        )
    model.eval()
    frames = []
    for batch in dataset.loader(batch_size=batch_size):  # every site: no merged atoms
        raw = model.site_outputs(batch)  # [N, T]
        sizes = TargetTransform.sizes(batch).to(raw.dtype)[batch.batch]  # atoms of each site's crystal, [N, 1]
        if transform is None:  # classification: contribution to the log-odds of class 1 (or of the top class)
            contribution = raw[:, 1] - raw[:, 0] if raw.shape[1] == 2 else raw.max(1).values
            contribution = contribution.unsqueeze(1)
        else:
            contribution = transform.decode_sites(raw, batch.z, sizes, summed=config.pool == "sum")
        pooled = torch.zeros(int(batch.num_graphs), contribution.shape[1], dtype=contribution.dtype)
        pooled = pooled.index_add_(0, batch.batch, contribution)
        if config.pool == "mean":
            pooled = pooled / (batch.ptr[1:] - batch.ptr[:-1]).unsqueeze(1)
        site = torch.arange(batch.num_nodes) - batch.ptr[batch.batch]
        ids = np.asarray(dataset.ids)[batch.entry.numpy()]
        frames.append(pd.DataFrame({
            "id": ids[batch.batch.numpy()],
            "site": site.numpy(),
            "element": [element_symbol(int(z)) for z in batch.z],
            "contribution": contribution[:, 0].double().numpy(),
            "crystal_value": pooled[batch.batch, 0].double().numpy(),
        }))
    return pd.concat(frames, ignore_index=True)


def plot_contributions(frame: pd.DataFrame, crystal_id: str, unit: str, path: Path) -> Path:
    """Bar chart of one crystal's site contributions, coloured by element."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = frame[frame["id"].astype(str) == str(crystal_id)]
    if rows.empty:
        raise ValueError(f"no crystal with id {crystal_id!r} in the explained data")
    elements = list(dict.fromkeys(rows["element"]))
    colours = {e: f"C{k % 10}" for k, e in enumerate(elements)}
    fig = Figure(figsize=(max(4.5, 0.28 * len(rows) + 2), 4.2), dpi=120)
    ax = fig.subplots()
    ax.bar(rows["site"], rows["contribution"], color=[colours[e] for e in rows["element"]])
    line = ax.axhline(rows["crystal_value"].iloc[0], color="0.3", lw=1, ls="--", label="crystal (pooled)")
    ax.set_xlabel("site")
    ax.set_ylabel(f"contribution ({unit})")
    ax.set_title(f"per-site contributions of {crystal_id}", fontsize=10)
    handles = [line, *(Patch(color=colours[e], label=e) for e in elements)]
    ax.legend(handles=handles, fontsize=8, ncol=min(len(handles), 5), loc="upper center",
              bbox_to_anchor=(0.5, -0.18), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    return path
