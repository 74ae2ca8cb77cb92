"""What one request may hold: stated once here, shown on the page, in the OpenAPI page and in every refusal."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# the formats a request may upload, by data/files.py's names: text formats only (no ASE database, trajectory or
# JSON, whose readers may build arbitrary objects), so nothing from a request is ever unpickled; structure JSON is
# read without the properties monty would import modules for (data/sources.py)
FORMATS = {"cif": "CIF", "vasp": "POSCAR", "extxyz": "extxyz"}
ACCEPTED = "CIF (.cif), POSCAR (.vasp, .poscar, POSCAR*, CONTCAR*) or extxyz (.xyz, .extxyz)"


def megabytes(n: int) -> str:
    return f"{n / 1e6:g} MB"


@dataclass(frozen=True)
class Limits:
    """Bounds on one request: a local server must stay responsive whatever is dropped on it."""

    file_bytes: int = 2_000_000  # one uploaded file
    request_bytes: int = 10_000_000  # the whole request body, refused before it is read
    structures: int = 50  # files, or frames of an extxyz file, in one request
    atoms: int = 500  # in one structure

    def __post_init__(self) -> None:
        flags = {"file_bytes": "--max-file-mb", "request_bytes": "--max-request-mb", "structures": "--max-structures",
                 "atoms": "--max-atoms"}
        for name, value in asdict(self).items():
            if value < 1:
                shown = megabytes(value) if name.endswith("bytes") else value
                raise ValueError(f"{flags[name]} must be positive (got {shown})")

    def describe(self) -> str:
        """The limits in one sentence, as the page and the API's documentation state them."""
        return (f"{ACCEPTED}; at most {self.structures} structures per request (each frame of an extxyz file "
                f"counts), {self.atoms} atoms per structure, {megabytes(self.file_bytes)} per file and "
                f"{megabytes(self.request_bytes)} per request")

    def as_dict(self) -> dict:
        return asdict(self) | {"formats": list(FORMATS.values()), "text": self.describe()}
