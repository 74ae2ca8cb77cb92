"""The models a server offers: named when it starts (zoo names, run folders, checkpoints, ensembles), each loaded
once then to fail early with the command line's message. A request only ever picks one of these by name: no
path, and so no checkpoint, ever comes from a request."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cgcnn_lab import zoo
from cgcnn_lab.inference import expand_ensembles, load_trained
from cgcnn_lab.spec import ModelSpec


@dataclass
class ServedModel:
    """One model on offer: what ``predict_data`` is given for it, and what the page says about it."""

    name: str
    ref: str  # a zoo name or the path given at start
    spec: ModelSpec  # of the (first) member
    members: int = 1  # > 1: an ensemble, whose spread is shown
    atom_init: str | None = None  # an original CGCNN checkpoint's element encoding
    card: dict = field(default_factory=dict)  # a zoo model's card

    @property
    def atom_readout(self) -> bool:
        """Per-site contributions exist: one model trained with ``--readout atom`` (contributions.py)."""
        config = self.spec.model
        return self.members == 1 and config.readout == "atom" and config.pool in ("mean", "sum")

    @property
    def contribution_unit(self) -> str:
        """What a site's contribution is measured in, as ``cgcnn-lab explain`` says it."""
        spec = self.spec
        return f"log-odds of {spec.class_names[-1]}" if spec.transform is None else spec.learned_unit or "target's unit"

    def info(self) -> dict:
        """The model as ``GET /models`` lists it."""
        spec, card = self.spec, self.card
        kind = "zoo" if card else "ensemble" if self.members > 1 else "original" if spec.format != "cgcnn-lab" else "run"
        return {
            "name": self.name, "kind": kind, "description": card.get("description", ""), "task": spec.task,
            "targets": list(spec.target_names), "unit": spec.unit or None, "per_atom": spec.per_atom,
            "classes": spec.class_names if spec.task == "classification" else None,
            "ensemble_members": self.members, "atom_readout": self.atom_readout,
            "contribution_unit": self.contribution_unit if self.atom_readout else None,
            "graph": {"radius": spec.graph.radius, "max_neighbors": spec.graph.max_neighbors},
            "test": card.get("test", {}),
        }


def serve_models(refs: Sequence[str | Path] = (), atom_init: str | Path | None = None,
                 with_zoo: bool | None = None) -> dict[str, ServedModel]:
    """The models named in ``refs`` (their text as the name), then the zoo's (by default only when ``refs`` is
    empty); each is loaded here to check it, so that a broken one stops the server before it starts (a request
    loads its model's weights again: they are small, and a run folder retrained meanwhile is not half-read)."""
    served: dict[str, ServedModel] = {}
    shipped = zoo.names() if with_zoo or (with_zoo is None and not refs) else []
    for ref in [*refs, *shipped]:  # a zoo ensemble serves its members' mean and spread, as a run ensemble does
        name = str(ref).rstrip("/") or str(ref)
        if name in served:
            continue
        members, _ = expand_ensembles([ref])
        spec = load_trained(members[0], atom_init=atom_init).spec
        for member in members[1:]:
            load_trained(member, atom_init=atom_init)
        card = zoo.card(name) if zoo.find(name) is not None and not Path(name).exists() else {}
        own = str(atom_init) if atom_init and spec.format == "cgcnn-original" else None  # ours carry their own
        served[name] = ServedModel(name, str(ref), spec, len(members), own, card)
    if not served:
        raise ValueError("no models to serve: name one or more (zoo names, run folders, checkpoints)")
    return served
