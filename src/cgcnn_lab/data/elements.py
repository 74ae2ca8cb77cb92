"""Atom (element) encodings for CGCNN: atomic number -> fixed feature vector.

CGCNN starts every atom from a feature vector that depends only on its element.
An :class:`ElementEncoding` is that lookup table (row ``z`` = element ``z``) plus a
mask of the elements it actually defines, so a structure containing an element
the model never had features for fails loudly instead of silently becoming a
zero vector.

Two sources:

* :meth:`ElementEncoding.from_atom_init` reads the original CGCNN
  ``atom_init.json`` (``{"Z": [features...]}``), for comparability with the paper.
* :meth:`ElementEncoding.cgcnn92` recomputes the same 92-feature recipe
  (Xie & Grossman, PRL 120, 145301 (2018), Table S2) from pymatgen's element
  data, so the project does not depend on an opaque data file.

``cgcnn92`` layout (inferred from the published atom_init.json; segment sums
reproduce its column counts). Every segment is a one-hot, or all zeros when
pymatgen has no value for that element::

    columns  segment       n   encoding
    0-18     group         19  index = group 1..18; index 0 = f-block (La-Yb, Ac-No)
    19-25    period         7  index = period - 1
    26-35    electroneg.   10  Pauling X, linear bins 0.5 .. 4.0 (width 0.35)
    36-45    cov. radius   10  pm, linear bins 25 .. 250 (width 22.5)
    46-57    valence e-    12  index = count - 1, count 1..12 (see _valence_electrons)
    58-67    1st ioniz.    10  ln(eV), linear bins 1.3 .. 3.3 (width 0.2)
    68-77    e- affinity   10  eV, linear bins -3.0 .. 3.7 (width 0.67)
    78-81    block          4  s, p, d, f
    82-91    atomic vol.   10  ln(cm^3/mol), linear bins 1.5 .. 4.3 (width 0.28)

Bins are left-closed ``[e_k, e_k+1)``; values outside the range go to the first
or last bin (the original puts e.g. boron's volume, ln V = 1.48, in bin 0).

pymatgen sources: ``group``/``row``/``block``, ``X``,
``CovalentRadius.radius`` (Cordero et al. 2008), ``full_electronic_structure``,
``ionization_energies[0]``, ``electron_affinity``, atomic volume = ``atomic_mass``
/ ``Density of solid`` (falling back to ``molar_volume`` for gases etc.).
Missing in pymatgen -> all-zero segment: X for He/Ne/Ar, covalent radius for
Bk-Fm, molar volume for At/Fr/Fm.

Agreement with atom_init.json, Z = 1..100: fraction with the same one-hot
index (both all-zero counts as agreeing); in brackets, the same fraction over
elements where both define the property::

    group 1.00   period 1.00   valence 0.99   1st ionization 1.00   block 0.99
    electronegativity 0.77 (0.87 of 85)    covalent radius 0.42 (0.44 of 96)
    electron affinity 0.62 (0.84 of 74)    atomic volume   0.83 (0.88 of 91)

The disagreements come from the data, not the bin edges (the paper's ranges
reproduce the original wherever the two sources share values). The original's
covalent radii look like Pyykko's single-bond radii (K 196, Rb 210, Cs 232 pm
fit its bins), smaller for metals than Cordero's, so pymatgen puts most metals
one bin higher. The original leaves properties undefined where
pymatgen has estimates: X of Kr, Rn and several lanthanides/actinides;
affinities of unstable anions (Mg, Zn, Cd, Hg, noble gases, most actinides).
Its gas volumes are larger than pymatgen's molar volumes (one bin lower for
H, N, F, noble gases). X = 1.90 (Si, Cu, Re) sits on a bin edge and
lands one bin higher than in the original. pymatgen puts He in the p block
(the original: s) and Pd's 4d10 5s0 gives 10 valence electrons (original: 12).
Only Z = 1..100 are marked available, like the original: pymatgen has almost
no property data beyond fermium.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CGCNN92_MAX_Z",
    "CGCNN92_SEGMENTS",
    "MAX_Z",
    "ElementEncoding",
    "UnknownElementError",
    "element_symbol",
]

MAX_Z = 118
"""Largest atomic number in pymatgen's periodic table; tables have MAX_Z + 1 rows."""

CGCNN92_MAX_Z = 100
"""cgcnn92 defines Z = 1..100, like the original atom_init.json."""

CGCNN92_SEGMENTS: tuple[tuple[str, int], ...] = (
    ("group", 19),
    ("period", 7),
    ("electronegativity", 10),
    ("covalent_radius", 10),
    ("valence_electrons", 12),
    ("first_ionization_energy", 10),
    ("electron_affinity", 10),
    ("block", 4),
    ("atomic_volume", 10),
)
"""(name, length) of each one-hot segment of cgcnn92, in column order (sum 92)."""

# (low, high) of the 10 equal-width bins of each continuous segment, in the
# units produced by _continuous_properties.
_BIN_RANGES: dict[str, tuple[float, float]] = {
    "electronegativity": (0.5, 4.0),
    "covalent_radius": (25.0, 250.0),
    "first_ionization_energy": (1.3, 3.3),
    "electron_affinity": (-3.0, 3.7),
    "atomic_volume": (1.5, 4.3),
}
_BLOCKS = ("s", "p", "d", "f")


class UnknownElementError(ValueError):
    """A structure contains an element the encoding does not define.

    Keeps a one-string constructor (plus keyword attributes) so it survives
    pickling and re-raising across DataLoader worker processes.
    """

    def __init__(self, message: str, *, symbol: str | None = None, structure_id: str | None = None) -> None:
        super().__init__(message)
        self.symbol = symbol
        self.structure_id = structure_id


def element_symbol(z: int) -> str:
    """Chemical symbol of atomic number ``z``, or ``"Z=<z>"`` if there is none."""
    if 1 <= z <= len(_SYMBOLS):
        return _SYMBOLS[z - 1]
    return f"Z={z}"


# Hard-coded so that error messages need no pymatgen import.
_SYMBOL_TEXT = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn "
    "Ga Ge As Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce "
    "Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn "
    "Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl "
    "Mc Lv Ts Og"
)
_SYMBOLS = tuple(_SYMBOL_TEXT.split())
assert len(_SYMBOLS) == MAX_Z


@dataclass(eq=False)
class ElementEncoding:
    """Lookup table of per-element features plus the mask of defined elements.

    ``table[z]`` is the feature vector of atomic number ``z`` (row 0 unused);
    ``available[z]`` says whether ``z`` is defined. Rows of undefined elements
    are zero but must never be used: call :meth:`check` first.
    """

    name: str
    table: np.ndarray
    available: np.ndarray

    def __post_init__(self) -> None:
        self.table = np.ascontiguousarray(self.table, dtype=np.float32)
        self.available = np.asarray(self.available, dtype=bool)
        if self.table.ndim != 2 or self.table.shape[0] != MAX_Z + 1:
            raise ValueError(
                f"encoding {self.name!r}: table must have shape ({MAX_Z + 1}, n_features), "
                f"got {self.table.shape}"
            )
        if self.available.shape != (MAX_Z + 1,):
            raise ValueError(
                f"encoding {self.name!r}: available must have shape ({MAX_Z + 1},), "
                f"got {self.available.shape}"
            )
        if self.available[0]:
            raise ValueError(f"encoding {self.name!r}: Z=0 cannot be available")

    @property
    def n_features(self) -> int:
        """Length of one element's feature vector (the model's input width)."""
        return int(self.table.shape[1])

    # ------------------------------------------------------------------ sources

    @classmethod
    def cgcnn92(cls) -> ElementEncoding:
        """The paper's 92-feature one-hot recipe, computed from pymatgen data."""
        table, available = _cgcnn92_arrays()
        return cls("cgcnn92", table.copy(), available.copy())

    @classmethod
    def anion(cls, symbol: str) -> ElementEncoding:
        """Two features, [is ``symbol``, is another element]: the structure with the chemistry reduced to one bit
        (``--atom-init anion:O``). A model that cannot tell Ba from Nb has to judge an oxide by its geometry,
        which is what a structure classifier should learn (docs/experiments.md, perovskites vs other oxides)."""
        if symbol not in _SYMBOLS:
            raise ValueError(f"--atom-init anion:{symbol}: {symbol!r} is not an element symbol (e.g. anion:O)")
        z = _SYMBOLS.index(symbol) + 1
        table = np.zeros((MAX_Z + 1, 2), np.float32)
        table[1:, 1] = 1.0
        table[z] = [1.0, 0.0]
        available = np.ones(MAX_Z + 1, bool)
        available[0] = False
        return cls(f"anion:{symbol}", table, available)

    @classmethod
    def from_atom_init(cls, path: str | PathLike[str]) -> ElementEncoding:
        """Read an original-CGCNN ``atom_init.json`` (``{"Z": [features...]}``).

        Validated strictly, with the file named in every error, because a bad
        file would otherwise surface much later as a shape error in the model.
        """
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot read atom_init file: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(raw, dict) or not raw:
            raise ValueError(
                f'{path}: expected a non-empty JSON object {{"Z": [features...]}}, got {type(raw).__name__}'
            )

        rows: dict[int, list[float]] = {}
        for key, value in raw.items():
            try:
                z = int(key)
            except ValueError:
                raise ValueError(f"{path}: key {key!r} is not an integer atomic number") from None
            if not 1 <= z <= MAX_Z:
                raise ValueError(f"{path}: atomic number {z} outside 1..{MAX_Z}")
            if z in rows:
                raise ValueError(f"{path}: atomic number {z} appears twice")
            if not isinstance(value, list) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value
            ):
                raise ValueError(f"{path}: Z={key}: features must be a list of finite numbers")
            rows[z] = value

        lengths = {len(v) for v in rows.values()}
        if len(lengths) != 1:
            by_len = {n: sorted(z for z, v in rows.items() if len(v) == n) for n in lengths}
            detail = ", ".join(f"{n} features: Z={zs[:5]}" for n, zs in sorted(by_len.items()))
            raise ValueError(f"{path}: feature vectors have different lengths ({detail})")
        (n_features,) = lengths
        if n_features == 0:
            raise ValueError(f"{path}: feature vectors are empty")

        table = np.zeros((MAX_Z + 1, n_features), dtype=np.float32)
        available = np.zeros(MAX_Z + 1, dtype=bool)
        for z, value in rows.items():
            table[z] = value
            available[z] = True
        return cls(f"atom_init:{path}", table, available)

    # ------------------------------------------------------------------ use

    def check(self, z: np.ndarray, structure_id: str) -> None:
        """Raise :class:`UnknownElementError` if any atomic number in ``z`` is undefined."""
        z = np.asarray(z).reshape(-1)
        in_range = (z >= 1) & (z <= MAX_Z)
        ok = np.zeros(z.shape, dtype=bool)
        ok[in_range] = self.available[z[in_range].astype(np.int64)]
        if ok.all():
            return
        bad = int(z[np.flatnonzero(~ok)[0]])
        symbol = element_symbol(bad)
        raise UnknownElementError(
            f"structure {structure_id!r} contains element {symbol} (Z={bad}), "
            f"which element encoding {self.name!r} does not define",
            symbol=symbol,
            structure_id=structure_id,
        )

    def encode(self, z: np.ndarray) -> np.ndarray:
        """Feature rows for atomic numbers ``z`` (call :meth:`check` first)."""
        return self.table[np.asarray(z, dtype=np.int64)]

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form, safe for ``torch.load(weights_only=True)`` checkpoints.

        Only available rows are stored (the rest are zero by construction).
        """
        zs = np.flatnonzero(self.available)
        return {
            "name": self.name,
            "n_features": self.n_features,
            "rows": {str(int(z)): self.table[z].tolist() for z in zs},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ElementEncoding:
        """Inverse of :meth:`to_dict`."""
        try:
            name = str(d["name"])
            n_features = int(d["n_features"])
            rows = d["rows"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an ElementEncoding dict: {exc!r}") from exc
        table = np.zeros((MAX_Z + 1, n_features), dtype=np.float32)
        available = np.zeros(MAX_Z + 1, dtype=bool)
        for key, value in rows.items():
            z = int(key)
            if not 1 <= z <= MAX_Z or len(value) != n_features:
                raise ValueError(f"encoding {name!r}: bad row for Z={key}")
            table[z] = value
            available[z] = True
        return cls(name, table, available)


# ---------------------------------------------------------------------- cgcnn92


def choose_encoding(atom_init: str | PathLike[str] | None, folder_atom_init: str | PathLike[str] | None) -> ElementEncoding:
    """The element encoding of new data: ``--atom-init`` (a file, ``cgcnn92`` or ``anion:X``), else the data
    folder's ``atom_init.json`` (as the original code reads it), else the built-in cgcnn92."""
    path = atom_init or folder_atom_init
    if path is None or str(path) == "cgcnn92":
        return ElementEncoding.cgcnn92()
    if str(path).startswith("anion:") and not Path(path).exists():
        return ElementEncoding.anion(str(path).removeprefix("anion:"))
    return ElementEncoding.from_atom_init(path)


def _bin_index(x: float, low: float, high: float, n_bins: int = 10) -> int:
    """Left-closed equal-width bin of ``x``; out-of-range values clip to the ends."""
    # Rounding the edges keeps values sitting exactly on an edge (EN 2.6) in the
    # upper bin instead of depending on float noise.
    edges = np.round(np.linspace(low, high, n_bins + 1), 9)
    return int(np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_bins - 1))


def _valence_electrons(el: Any) -> int:
    """Valence electron count as the original uses it (checked against atom_init).

    s/p block: s + p electrons of the outermost shell (He 2, Cl 7).
    d block: outer s + (n-1) d electrons (Fe 8, Cu 11, Zn 12, Lu 3).
    f block: outer s electrons only (every lanthanide/actinide 2).
    """
    config: list[tuple[int, str, int]] = el.full_electronic_structure
    if el.block == "d":
        n_d = max(n for n, l, _ in config if l == "d")
        return sum(k for n, l, k in config if (n, l) in ((n_d, "d"), (n_d + 1, "s")))
    n_max = max(n for n, _, _ in config)
    return sum(k for n, l, k in config if n == n_max and l in ("s", "p"))


def _finite(x: Any) -> float | None:
    """``float(x)`` for a finite number, else None (pymatgen mixes None and NaN)."""
    if x is None:
        return None
    value = float(x)
    return value if math.isfinite(value) else None


def _continuous_properties(el: Any, covalent_radius: Mapping[str, float]) -> dict[str, float | None]:
    """Raw continuous properties in the units of _BIN_RANGES (None = missing)."""

    def get(fn: Callable[[], Any]) -> float | None:
        try:
            return _finite(fn())
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            return None

    ie = get(lambda: el.ionization_energies[0])
    # Atomic volume = M / rho of the solid (what the original's numbers follow);
    # pymatgen's molar volume covers the elements without a solid density.
    density = get(lambda: el.data["Density of solid"])  # kg/m^3
    vol = get(lambda: 1000.0 * float(el.atomic_mass) / density) if density else None
    if vol is None:
        vol = get(lambda: el.molar_volume)
    radius = covalent_radius.get(el.symbol)
    return {
        "electronegativity": get(lambda: el.X),
        "covalent_radius": None if radius is None else 100.0 * radius,  # angstrom -> pm
        "first_ionization_energy": None if ie is None or ie <= 0 else math.log(ie),
        "electron_affinity": get(lambda: el.electron_affinity),
        "atomic_volume": None if vol is None or vol <= 0 else math.log(vol),
    }


@functools.lru_cache(maxsize=1)
def _cgcnn92_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Build the cgcnn92 table once per process (pymatgen imported lazily)."""
    from pymatgen.core.periodic_table import Element

    try:
        from pymatgen.core.molecule_structure_comparator import CovalentRadius
    except ImportError:  # pymatgen < 2024.5 kept it under analysis
        from pymatgen.analysis.molecule_structure_comparator import CovalentRadius

    n_features = sum(n for _, n in CGCNN92_SEGMENTS)
    offsets = dict(
        zip(
            (name for name, _ in CGCNN92_SEGMENTS),
            np.cumsum([0] + [n for _, n in CGCNN92_SEGMENTS[:-1]]).tolist(),
        )
    )
    lengths = dict(CGCNN92_SEGMENTS)
    table = np.zeros((MAX_Z + 1, n_features), dtype=np.float32)
    available = np.zeros(MAX_Z + 1, dtype=bool)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns about missing data per element
        for z in range(1, CGCNN92_MAX_Z + 1):
            el = Element.from_Z(z)
            period = 6 if el.is_lanthanoid else 7 if el.is_actinoid else el.row
            index: dict[str, int | None] = {
                "group": 0 if el.block == "f" else el.group,
                "period": period - 1,
                "valence_electrons": _valence_electrons(el) - 1,
                "block": _BLOCKS.index(el.block),
            }
            for name, x in _continuous_properties(el, CovalentRadius.radius).items():
                index[name] = None if x is None else _bin_index(x, *_BIN_RANGES[name])
            for name, i in index.items():
                if i is not None and 0 <= i < lengths[name]:
                    table[z, offsets[name] + i] = 1.0
            available[z] = True
    table.setflags(write=False)
    available.setflags(write=False)
    return table, available
