"""What the JSON API answers, as typed models: FastAPI documents them on its OpenAPI page (``/docs``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Problem(BaseModel):
    """A refused request: the same one-line message the command line prints after ``error:``."""

    detail: str = Field(description="what is wrong, naming the file")


class ModelInfo(BaseModel):
    name: str = Field(description="what `model` must be in POST /predict and POST /view")
    kind: str = Field(description="zoo, run (a cgcnn-lab run or checkpoint), original (the original CGCNN code's "
                                  "checkpoint) or ensemble")
    description: str
    task: str = Field(description="regression or classification")
    targets: list[str]
    unit: str | None = Field(description="unit of the predictions (None: unknown)")
    per_atom: bool = Field(description="a total per cell learned per atom: rows add prediction_per_atom")
    classes: list[str] | None = Field(description="what each class means (classification)")
    ensemble_members: int = Field(description="more than 1: an ensemble, whose rows add prediction_std")
    atom_readout: bool = Field(description="per-site contributions exist (POST /view colours the atoms by them)")
    contribution_unit: str | None
    graph: dict[str, Any] = Field(description="the model's neighbour graph: radius (Å) and max_neighbors")
    test: dict[str, float] = Field(description="a zoo model's scores on its held-out test split")


class LimitsInfo(BaseModel):
    file_bytes: int
    request_bytes: int
    structures: int
    atoms: int
    formats: list[str]
    text: str = Field(description="the limits in one sentence")


class PredictResult(BaseModel):
    model: str
    task: str
    unit: str | None
    targets: list[str]
    classes: list[str] | None
    columns: list[str] = Field(description="the columns of `cgcnn-lab predict`'s CSV, in its order")
    rows: list[dict[str, Any]] = Field(description="one per structure: the columns, plus `file` (the upload it came "
                                                   "from) and, for a classifier, `class` (the most probable one)")
    skipped: int = Field(description="structures that could not be predicted (`notes` says why)")
    notes: list[str] = Field(description="what the command line prints: structures read, skipped and why")
    warnings: list[str] = Field(description="what makes the numbers less trustworthy, e.g. structures the model "
                                            "was trained on")
    csv: str = Field(description="the table as `cgcnn-lab predict --out` writes it")


class Atom(BaseModel):
    site: int
    element: str
    xyz: list[float] = Field(description="Cartesian position, Å")
    contribution: float | None = Field(None, description="this site's share of the prediction (atom readout)")


class Bond(BaseModel):
    i: int = Field(description="centre atom (site)")
    j: int = Field(description="neighbour atom (site)")
    to: list[float] = Field(description="Cartesian position of the neighbour's periodic image the bond reaches, Å")
    distance: float
    inside: bool = Field(description="the neighbour is in the cell itself, not a periodic image")


class StructureView(BaseModel):
    model: str
    id: str
    file: str
    lattice: list[list[float]] = Field(description="cell vectors as rows, Å")
    atoms: list[Atom]
    bonds: list[Bond] = Field(description="the neighbour graph the model reads")
    graph: dict[str, Any]
    prediction: dict[str, Any] = Field(description="this structure's row of POST /predict")
    contribution_unit: str | None
    crystal_value: float | None = Field(description="the pooled contributions: the prediction in their unit")
    note: str = Field(description="why there are no contributions, if there are none")
