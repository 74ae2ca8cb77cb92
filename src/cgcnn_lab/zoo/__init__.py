"""The model zoo: cgcnn-lab models trained on public DFT data, shipped inside the package (nothing is downloaded),
each a packaged model (``packaged.py``: safetensors + card) in a folder of this package named after it.

``cgcnn-lab models`` lists them; every command and function that takes a model takes a zoo name too
(``cgcnn-lab predict perovskite-e-form DATA``, ``cgcnn_lab.load("perovskite-e-form")``, ``--init-from``).
``bench/build_zoo.py`` trains each with one command, which its card records, and packages it
(``deploy.package_run``).
"""

from __future__ import annotations

import json
from pathlib import Path

from cgcnn_lab.packaged import CARD, WEIGHTS

ZOO = Path(__file__).resolve().parent


ENSEMBLE = "ensemble.json"  # an ensemble folder (ensembles.py): its members are packaged models inside it


def _is_model(folder: Path) -> bool:
    return (folder / WEIGHTS).is_file() or (folder / ENSEMBLE).is_file()


def names() -> list[str]:
    """The shipped models (single models and calibrated ensembles), by name."""
    return sorted(p.name for p in ZOO.iterdir() if _is_model(p))


def find(name: str | Path) -> Path | None:
    """The folder of zoo model ``name``, or None when it is not one (e.g. a path)."""
    text = str(name)
    if "/" in text or "\\" in text or text.startswith("."):
        return None
    folder = ZOO / text
    return folder if _is_model(folder) else None


def card(name: str) -> dict:
    folder = find(name)
    if folder is None:
        raise ValueError(f"no zoo model {name!r}; the zoo has {', '.join(names()) or 'no models'}")
    return json.loads((folder / CARD).read_text())


__all__ = ["ZOO", "card", "find", "names"]
