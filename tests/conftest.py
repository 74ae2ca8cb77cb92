"""Shared test helpers."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def write_exploit(tmp_path) -> Callable[[Path, Callable[[object], object]], Path]:
    """``write_exploit(path, wrap)`` pickles ``wrap(payload)`` to ``path``, where unpickling ``payload`` would
    create ``tmp_path / "pwned"``; tests assert that loading is refused and the marker never appears."""

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    def write(path: Path, wrap: Callable[[object], object]) -> Path:
        with open(path, "wb") as f:
            pickle.dump(wrap(Exploit()), f)
        return path

    return write
