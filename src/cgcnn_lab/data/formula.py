"""Stoichiometry patterns such as ``ABO3`` or ``A2BO4``: which crystals of a set have that reduced formula
(``--report-subset``). In a pattern, A, B, M and X stand for any element, each for a different one; other symbols
are themselves (so boron cannot be named in a pattern: B is always a wildcard)."""

from __future__ import annotations

import re
from math import gcd

import numpy as np

from cgcnn_lab.data.elements import MAX_Z, element_symbol
from cgcnn_lab.data.sources import DataError

WILDCARDS = frozenset("ABMX")
_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*)")
_NUMBER = {element_symbol(z): z for z in range(1, MAX_Z + 1)}


def parse_pattern(pattern: str) -> tuple[dict[int, int], list[int]]:
    """({atomic number: count} of the named elements, sorted counts of the wildcards), reduced to lowest terms."""
    tokens = _TOKEN.findall(pattern)
    if not tokens or "".join(s + n for s, n in tokens) != pattern:
        raise DataError(f"--report-subset {pattern!r}: not a formula pattern such as ABO3 or A2BO4")
    fixed: dict[int, int] = {}
    wild: dict[str, int] = {}
    for symbol, count in tokens:
        if symbol not in WILDCARDS and symbol not in _NUMBER:
            raise DataError(f"--report-subset {pattern!r}: {symbol!r} is neither an element nor a wildcard (A, B, M, X)")
        if symbol in wild or _NUMBER.get(symbol) in fixed:
            raise DataError(f"--report-subset {pattern!r}: {symbol} twice (write {symbol}2, not {symbol}{symbol})")
        if symbol in WILDCARDS:
            wild[symbol] = int(count or 1)
        else:
            fixed[_NUMBER[symbol]] = int(count or 1)
    divisor = gcd(*fixed.values(), *wild.values())
    return {z: n // divisor for z, n in fixed.items()}, sorted(n // divisor for n in wild.values())


def subset_mask(pattern: str, z: np.ndarray, atom_ptr: np.ndarray, crystals=None) -> np.ndarray:
    """Which crystals (atoms ``z[atom_ptr[i]:atom_ptr[i + 1]]``; only those at positions ``crystals`` when given,
    in that order) have the reduced formula ``pattern``."""
    fixed, wild = parse_pattern(pattern)
    crystals = np.arange(len(atom_ptr) - 1) if crystals is None else np.asarray(crystals)
    mask = np.zeros(len(crystals), dtype=bool)
    for k, i in enumerate(crystals):  # reporting, once per run: a few thousand small np.unique calls
        elements, counts = np.unique(z[atom_ptr[i] : atom_ptr[i + 1]], return_counts=True)
        counts = counts // gcd(*counts.tolist())
        have = dict(zip(elements.tolist(), counts.tolist()))
        if all(have.pop(e, None) == n for e, n in fixed.items()):
            mask[k] = sorted(have.values()) == wild
    return mask
