"""The saved-model spec: everything needed to rebuild a trained network and read its outputs, in one typed,
versioned object. A cgcnn-lab checkpoint stores ``ModelSpec.to_dict()`` (plain Python types, so the file loads
with ``torch.load(weights_only=True)``) as Lightning's ``hyper_parameters["spec"]``; a checkpoint of the original
CGCNN code converts into one (``original.py``). Nothing else reads or writes the format.

Versions: 1 (cgcnn-lab 0.1, before the spec had an owner) and 2 (adds ``model.degree_histogram``); version 1
specs load unchanged except that a ``pyg-pna`` model gets the fixed histogram version 1 used.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from cgcnn_lab.checkpoint import CheckpointError
from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.data.graph import GraphConfig
from cgcnn_lab.model.config import LEGACY_DEGREE_HISTOGRAM, ModelConfig
from cgcnn_lab.targets import TargetTransform

SPEC_VERSION = 2
FORMAT = "cgcnn-lab"
LEGACY_UNKNOWN_UNIT = "target units"  # what models trained without --unit stored before: read as no unit


@dataclass(frozen=True)
class ModelSpec:
    """A trained model's network, graph settings, element encoding and target decoding."""

    model: ModelConfig
    graph: GraphConfig
    encoding: ElementEncoding | None  # None: a learned element embedding
    transform: TargetTransform | None  # regression: network output -> data unit; None for classification
    target_names: list[str] = field(default_factory=lambda: ["target"])
    unit: str = ""  # "" when trained without --unit: values are then shown without one
    threshold: float | None = None  # classification from a continuous column: class 1 above it
    format: str = FORMAT  # "cgcnn-original" for a converted checkpoint of the original code
    version: int = SPEC_VERSION

    @property
    def task(self) -> str:
        return self.model.task

    @property
    def per_atom(self) -> bool:
        return self.transform is not None and self.transform.per_atom

    @property
    def learned_unit(self) -> str:
        """The unit of what the network learns: per atom for a target learned per atom ("" when unknown)."""
        return f"{self.unit}/atom" if self.per_atom and self.unit else self.unit

    @property
    def class_names(self) -> list[str]:
        """What each class means, for plots and tables: ``band_gap ≤ 0`` / ``band_gap > 0`` for a threshold,
        ``is_perovskite = 1`` for labels."""
        name = self.target_names[0]
        if self.threshold is not None:
            return [f"{name} ≤ {self.threshold:g}", f"{name} > {self.threshold:g}"]
        return [f"{name} = {k}" for k in range(self.n_outputs)]

    @property
    def n_outputs(self) -> int:
        return self.model.n_outputs

    def build_model(self):
        """A fresh :class:`~cgcnn_lab.model.network.CGCNN` of this architecture (untrained weights)."""
        from cgcnn_lab.model.network import CGCNN

        return CGCNN(self.model, None if self.encoding is None else self.encoding.table)

    def to_dict(self) -> dict:
        return {
            "version": self.version, "format": self.format, "model": self.model.to_dict(),
            "graph": self.graph.to_dict(), "encoding": None if self.encoding is None else self.encoding.to_dict(),
            "transform": None if self.transform is None else self.transform.to_dict(),
            "target_names": list(self.target_names), "unit": self.unit, "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, d: object, where: str = "checkpoint") -> ModelSpec:
        """Read a stored spec; one clear error for a file from a newer or unknown version."""
        if not isinstance(d, dict) or not isinstance(d.get("model"), dict) or "graph" not in d:
            raise CheckpointError(f"{where}: not a cgcnn-lab checkpoint (no model spec inside)")
        version = d.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise CheckpointError(f"{where}: unknown saved-model spec version {version!r}; this cgcnn-lab reads "
                                  f"versions 1 to {SPEC_VERSION}")
        if version > SPEC_VERSION:
            raise CheckpointError(f"{where}: written by a newer cgcnn-lab (saved-model spec version {version}; "
                                  f"this cgcnn-lab reads versions 1 to {SPEC_VERSION}): upgrade cgcnn-lab "
                                  "(pip install -U cgcnn-lab) to load it")
        model = ModelConfig.from_dict(d["model"])
        if version == 1 and model.convolution.needs_degree and model.degree_histogram is None:
            model = replace(model, degree_histogram=list(LEGACY_DEGREE_HISTOGRAM))
        encoding, transform = d.get("encoding"), d.get("transform")
        return cls(
            model=model, graph=GraphConfig(**d["graph"]),
            encoding=None if encoding is None else ElementEncoding.from_dict(encoding),
            transform=None if transform is None or model.task != "regression" else TargetTransform.from_dict(transform),
            target_names=list(d.get("target_names") or ["target"]), unit=_unit(d.get("unit")),
            threshold=d.get("threshold"), format=d.get("format", FORMAT), version=SPEC_VERSION,
        )


def _unit(stored: str | None) -> str:
    return "" if stored in (None, LEGACY_UNKNOWN_UNIT) else stored


def with_unit(text: str, unit: str | None) -> str:
    """``text unit``, or ``text`` alone when the unit is unknown ("")."""
    return f"{text} {unit}" if unit else text


def in_unit(text: str, unit: str | None) -> str:
    """``text (unit)`` for an axis or a heading, or ``text`` alone when the unit is unknown."""
    return f"{text} ({unit})" if unit else text
