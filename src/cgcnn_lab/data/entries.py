"""The basic records of a dataset before featurisation (entries, problems, the dataset) and the checks every reader
shares: ``sources.py`` (folders, tables, Python objects) and ``files.py`` (structure files) both build on them."""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pymatgen is imported where structures are parsed: a cached run never pays for it
    from pymatgen.core import Structure


class DataError(ValueError):
    """Input data that cannot be used; the message names the file/row and the problem."""


@dataclass
class Entry:
    """One crystal before featurisation. ``content`` is the raw text (CIF or pymatgen JSON) or a Structure."""

    id: str
    where: str  # e.g. "data/123.cif" or "table.csv.gz row 17": used in every message about this entry
    content: str | Structure
    targets: np.ndarray | None = None  # float64 [T]; None when the data has no targets (prediction)
    extra: dict | None = None  # other table columns asked for (e.g. a fold column)


@dataclass
class Problem:
    where: str
    id: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class RawDataset:
    """Entries plus everything a run needs to know about their origin."""

    name: str
    entries: list[Entry]
    target_names: list[str]
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    atom_init: Path | None = None  # an atom_init.json shipped with a CGCNN folder

    @property
    def has_targets(self) -> bool:
        return bool(self.target_names) and all(e.targets is not None for e in self.entries)


class ProblemLog:
    """Collects problems; raises on the first one in strict mode."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.problems: list[Problem] = []

    def add(self, where: str, entry_id: str, message: str) -> None:
        problem = Problem(where, entry_id, message)
        if self.strict:
            raise DataError(f"{problem} (strict mode; drop --strict to skip bad entries)")
        self.problems.append(problem)


def problem_kind(message: str) -> str:
    """The kind of a problem: its message up to the first ':' or '(' (messages are written "kind: detail")."""
    return message.split(":")[0].split("(")[0].strip()


def summarize_problems(problems: Sequence[Problem], limit: int = 8) -> str:
    """One short block: counts by kind and the first few messages, never one line per structure."""
    if not problems:
        return ""
    kinds = Counter(problem_kind(p.message) for p in problems)
    head = f"skipped {len(problems)} entr{'y' if len(problems) == 1 else 'ies'}: " + ", ".join(
        f"{n} × {k}" for k, n in kinds.most_common()
    )
    lines = [head] + [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def parse_target(text: object, where: str, column: str) -> float:
    """A finite float, or a DataError explaining what the cell held (``None`` means an empty/null cell)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        raise DataError(f"{where}: missing target '{column}' (empty cell)")
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"{where}: target '{column}' is not a number: {str(text)[:40]!r}") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: target '{column}' is not finite: {str(text).strip()[:40]!r}")
    return value


def check_duplicates(entries: list[Entry], log: ProblemLog) -> list[Entry]:
    seen: dict[str, str] = {}
    kept = []
    for e in entries:
        if e.id in seen:
            log.add(e.where, e.id, f"duplicate id: {e.id!r} (first seen at {seen[e.id]})")
            continue
        seen[e.id] = e.where
        kept.append(e)
    return kept


def some(names: Sequence[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (", ..." if len(names) > k else "")


def is_structure(obj: object) -> bool:
    """A pymatgen Structure, recognised without importing pymatgen (it takes ~1 s to import)."""
    return any(c.__name__ in ("Structure", "IStructure") and c.__module__.startswith("pymatgen.")
               for c in type(obj).__mro__)


def is_atoms(obj: object) -> bool:
    """An ASE ``Atoms``, recognised without importing ASE (it takes ~1 s to import)."""
    return any(c.__name__ == "Atoms" and c.__module__.startswith("ase.") for c in type(obj).__mro__)


def parse_failure(err: Exception, caught: Sequence[warnings.WarningMessage]) -> str:
    """pymatgen's reason (often cryptic for truncated files) plus its first warnings, one line, bounded."""
    if isinstance(err, KeyError):
        reason = f"missing key {err}"
    else:
        text = str(err).strip()
        reason = f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
    hints = "; ".join(str(w.message).strip().splitlines()[0] for w in caught[:2] if str(w.message).strip())
    return f"{reason[:200]}{' (' + hints[:200] + ')' if hints else ''}; is the file truncated or not a structure?"
