"""Synthetic demo dataset: distorted ABX3 perovskites labelled by their Ewald energy.

**This data is generated, not computed with DFT and not measured.** It exists so that a
fresh clone, with no downloads, can run the whole pipeline end to end
(``cgcnn-lab demo``): build crystal graphs, train a CGCNN, and evaluate it.

What is generated
-----------------
Each entry is a charge-balanced perovskite ``ABX3`` built from a curated list of common
ions. Every element has exactly **one** oxidation state in that list (Sn is always 4+,
Pb always 2+, ...), so the charges, and therefore the label, are fully determined by the
plain element symbols in the CIF. Allowed charge combinations (``a + b + 3x = 0``):

* chalcogenides (X = O, S, Se; x = -2): A+ B5+, A2+ B4+, A3+ B3+
* halides (X = F, Cl, Br, I; x = -1): A+ B2+

The ideal cubic cell (5 atoms) has lattice parameter
``a0 = max(2 (r_B + r_X), sqrt(2) (r_A + r_X))`` from pymatgen's Shannon radii
(A in XII, B and X in VI coordination, with fallbacks), i.e. the B-X or the A-X contact,
whichever is longer (Goldschmidt geometry). It is then distorted:

* a random symmetric lattice strain (components ~ N(0, 2 %), clipped to +-5 %);
* random atomic displacements, per entry sigma ~ U(0.05, 0.15) angstrom, clipped at 3 sigma;
* for a fraction of entries a 10-atom supercell: 2x1x1, or sqrt2 x sqrt2 x 1 with an
  alternating in-plane octahedral rotation (a0a0c-like tilt, up to 10 degrees) before the
  random displacements.

The label
---------
``ewald_energy_per_atom`` (eV/atom) is the electrostatic (Madelung) energy of the point
charges at the formal oxidation states, computed with
:class:`pymatgen.analysis.ewald.EwaldSummation`, divided by the number of sites.

Why it is learnable
-------------------
The Ewald energy is an exact, deterministic function of the structure: it is a sum of
pair terms ``q_i q_j / r_ij`` (with Ewald convergence), so it depends only on the species
(which fix the charges) and on the interatomic distances, which is exactly the information
a crystal graph holds (atom features + distance-expanded edges). It spans a wide range
(halides about -5 to -9 eV/atom, chalcogenides about -23 to -43 eV/atom) and varies within a
composition through strain and displacements, so a model must use both the species and the
geometry. The long-range tail beyond a graph cutoff is smooth and largely captured by the
local environment, so a CGCNN reaches a small error but not zero.

The CIF text is written without oxidation states (plain element symbols) so that any
normal CIF reader rebuilds the structure.
"""

from __future__ import annotations

import functools
import gzip
import os
import pathlib
import tempfile
import warnings

import numpy as np
import pandas as pd

DEMO_TARGET = "ewald_energy_per_atom"
DEMO_UNIT = "eV/atom"

__all__ = ["DEMO_TARGET", "DEMO_UNIT", "generate_perovskites", "write_demo_dataset"]

# --- curated ions: one oxidation state per element --------------------------------------
A_IONS: dict[int, tuple[str, ...]] = {
    1: ("Na", "K", "Rb", "Cs"),
    2: ("Ca", "Sr", "Ba", "Pb"),
    3: ("La", "Pr", "Nd", "Bi"),
}
B_IONS: dict[int, tuple[str, ...]] = {
    5: ("Nb", "Ta", "Sb"),
    4: ("Ti", "Zr", "Hf", "Sn", "Ge"),
    3: ("Al", "Ga", "Sc", "Cr", "Fe", "In"),
    2: ("Mg", "Mn", "Co", "Ni", "Zn", "Cd", "Pb"),  # halide perovskites (A+ B2+ X3-)
}
X_IONS: dict[int, tuple[str, ...]] = {
    -2: ("O", "S", "Se"),
    -1: ("F", "Cl", "Br", "I"),
}

# Fallback radii (angstrom) if pymatgen has no Shannon radius for the coordination asked.
_FALLBACK_RADIUS = {"A": 1.35, "B": 0.70, "X": 1.60}
_CN = {"A": ("XII", "X", "IX", "VIII"), "B": ("VI",), "X": ("VI",)}

# Probabilities of the cell kinds: 5-atom cubic, 2x1x1, sqrt2 x sqrt2 x 1.
_CELL_KINDS = ("cubic", "2x1x1", "sqrt2")
_CELL_PROBS = (0.6, 0.2, 0.2)

_STRAIN_SIGMA = 0.02
_STRAIN_CLIP = 0.05
_DISP_SIGMA_RANGE = (0.05, 0.15)
_MAX_TILT_DEG = 10.0

# Fractional coordinates of the 5-atom cubic cell: A, B, X, X, X.
_CUBIC_FRAC = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]])


def _all_charges() -> dict[str, int]:
    charges: dict[str, int] = {}
    for table in (A_IONS, B_IONS, X_IONS):
        for q, els in table.items():
            for el in els:
                if charges.setdefault(el, q) != q:  # pragma: no cover - guards the table
                    raise ValueError(f"{el} listed with two oxidation states")
    return charges


CHARGES: dict[str, int] = _all_charges()


def _shannon_or_none(sp, cn: str) -> float | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # spin-state ambiguity warnings (Mn2+, Co2+, Fe3+)
            return float(sp.get_shannon_radius(cn))
    except (KeyError, ValueError):  # no entry for this coordination number
        return None


@functools.cache
def _radius(el: str, site: str) -> float:
    """Shannon ionic radius of ``el`` at its fixed charge for the given site (A/B/X)."""
    from pymatgen.core import Species

    sp = Species(el, CHARGES[el])
    for cn in _CN[site]:
        r = _shannon_or_none(sp, cn)
        if r is not None:
            return r
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = sp.ionic_radius
    return float(r) if r is not None else _FALLBACK_RADIUS[site]


def _combos() -> list[tuple[str, str, str]]:
    """All (A, B, X) element triples allowed by the curated list (charge balanced)."""
    out = []
    for x, xs in X_IONS.items():
        for a, as_ in A_IONS.items():
            b = -3 * x - a
            for el_b in B_IONS.get(b, ()):
                for el_a in as_:
                    for el_x in xs:
                        if len({el_a, el_b, el_x}) == 3:
                            out.append((el_a, el_b, el_x))
    return out


def _ideal_a0(el_a: str, el_b: str, el_x: str) -> float:
    r_a, r_b, r_x = _radius(el_a, "A"), _radius(el_b, "B"), _radius(el_x, "X")
    return max(2.0 * (r_b + r_x), np.sqrt(2.0) * (r_a + r_x))


def _cell(kind: str, a0: float, tilt_rad: float) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Undistorted cell: (lattice 3x3, cartesian coords Nx3, role per site 0=A 1=B 2=X)."""
    roles5 = [0, 1, 2, 2, 2]
    cub = _CUBIC_FRAC * a0
    if kind == "cubic":
        return np.eye(3) * a0, cub, roles5
    if kind == "2x1x1":
        lat = np.diag([2 * a0, a0, a0])
        cart = np.concatenate([cub, cub + [a0, 0.0, 0.0]])
        return lat, cart, roles5 * 2
    # sqrt2 x sqrt2 x 1: two cubic cells related by (1,0,0), which is not a lattice vector.
    lat = np.array([[a0, a0, 0.0], [-a0, a0, 0.0], [0.0, 0.0, a0]])
    cart = []
    half = 0.5 * a0 * np.tan(tilt_rad)
    for i, sign in ((0, 1.0), (1, -1.0)):
        c = cub + [i * a0, 0.0, 0.0]
        # Octahedron around B rotates about z by sign*tilt; equatorial X (z = 1/2) move
        # perpendicular to their B-X-B bond, alternating sign, corner-sharing preserved.
        c[3, 0] += sign * half  # X at (1/2, 0, 1/2): bond along y, moves along x
        c[4, 1] -= sign * half  # X at (0, 1/2, 1/2): bond along x, moves along y
        cart.append(c)
    return lat, np.concatenate(cart), roles5 * 2


def generate_perovskites(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Generate ``n`` distorted ABX3 perovskites labelled with their Ewald energy per atom.

    Returns a DataFrame with columns ``id``, ``formula``, ``structure`` (CIF text, plain
    element symbols) and :data:`DEMO_TARGET` (eV/atom). Deterministic for ``(n, seed)``.
    """
    from pymatgen.analysis.ewald import EwaldSummation
    from pymatgen.core import Lattice, Species, Structure
    from pymatgen.io.cif import CifWriter

    if n < 0:
        raise ValueError("n must be >= 0")
    rng = np.random.default_rng(seed)
    combos = _combos()

    # Draw every per-entry random number up front (vectorised, order-independent of pymatgen).
    combo_idx = rng.integers(len(combos), size=n)
    kind_idx = rng.choice(len(_CELL_KINDS), size=n, p=_CELL_PROBS)
    strain6 = np.clip(rng.normal(0.0, _STRAIN_SIGMA, size=(n, 6)), -_STRAIN_CLIP, _STRAIN_CLIP)
    disp_sigma = rng.uniform(*_DISP_SIGMA_RANGE, size=n)
    tilt = np.deg2rad(rng.uniform(0.0, _MAX_TILT_DEG, size=n))
    disp = np.clip(rng.standard_normal(size=(n, 10, 3)), -3.0, 3.0) * disp_sigma[:, None, None]

    # Symmetric strain tensors, eps[k] = [[e0, e5/2, e4/2], [e5/2, e1, e3/2], [e4/2, e3/2, e2]].
    eps = np.zeros((n, 3, 3))
    eps[:, [0, 1, 2], [0, 1, 2]] = strain6[:, :3]
    for k, (i, j) in zip((3, 4, 5), ((1, 2), (0, 2), (0, 1))):
        eps[:, i, j] = eps[:, j, i] = 0.5 * strain6[:, k]
    deform = np.eye(3)[None] + eps

    a0_of = {c: _ideal_a0(*c) for c in combos}
    species_cache: dict[str, Species] = {el: Species(el, q) for el, q in CHARGES.items()}

    ids, formulas, cifs, energies = [], [], [], []
    for k in range(n):
        el_a, el_b, el_x = combos[combo_idx[k]]
        lat, cart, roles = _cell(_CELL_KINDS[kind_idx[k]], a0_of[(el_a, el_b, el_x)], tilt[k])
        nat = len(roles)
        cart = cart + disp[k, :nat]
        # Homogeneous strain of lattice and positions (row-vector convention: v' = v F^T).
        lat = lat @ deform[k].T
        cart = cart @ deform[k].T
        frac = np.linalg.solve(lat.T, cart.T).T % 1.0
        symbols = [(el_a, el_b, el_x)[r] for r in roles]

        lattice = Lattice(lat)
        charged = Structure(lattice, [species_cache[s] for s in symbols], frac)
        energy = EwaldSummation(charged).total_energy / nat
        plain = Structure(lattice, symbols, frac)

        ids.append(f"demo-{k:05d}")
        formulas.append(plain.composition.reduced_formula)
        cifs.append(str(CifWriter(plain)))
        energies.append(float(energy))

    return pd.DataFrame(
        {"id": ids, "formula": formulas, "structure": cifs, DEMO_TARGET: np.asarray(energies, float)}
    )


def write_demo_dataset(path: str | os.PathLike, n: int = 2000, seed: int = 0) -> pathlib.Path:
    """Generate the demo dataset and write it as a gzipped CSV at ``path``, atomically.

    The CSV is written to a temporary file in the target directory and moved into place
    with :func:`os.replace`, so readers never see a partial file. The gzip header carries no
    file name or timestamp, so the bytes are reproducible for a given ``(n, seed)``.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = generate_perovskites(n=n, seed=seed)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        # Name-less, timestamp-less gzip header: same bytes whatever the temp file is called.
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write(df.to_csv(index=False).encode("utf-8"))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; make it a normal data file
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
