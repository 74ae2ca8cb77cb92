# %% [markdown]
# # 1. From a crystal to a crystal graph (NaCl)
#
# CGCNN (Xie & Grossman, *Phys. Rev. Lett.* 120, 145301, 2018) predicts a property of a crystal — its energy,
# its band gap, whether it is a metal — from the positions and elements of its atoms alone, instead of running
# an expensive quantum-mechanical (DFT) calculation whose cost grows faster than N³ in the number of atoms.
#
# The network does not see a picture of the crystal. It sees a **crystal graph**:
#
# * one **node** per atom in the unit cell, carrying a feature vector **v**ᵢ that depends only on its element;
# * one **edge** per neighbour within a cutoff radius, carrying a feature vector **u**₍ᵢ,ⱼ₎ₖ built from the
#   distance. A crystal is periodic, so atom *j* can be a neighbour of *i* several times, through different
#   copies ("periodic images") of the unit cell: that is the index *k*.
#
# In this notebook you build that graph by hand for table salt, NaCl, then compare it with `cgcnn_lab`'s.
#
# **What you need from pymatgen** (the library that reads crystal files):
#
# | you want | pymatgen |
# |---|---|
# | read a CIF file | `structure = Structure.from_file(path)` |
# | the lattice: lengths a, b, c (Å) and angles (°) | `structure.lattice.abc`, `structure.lattice.angles` |
# | the i-th atom (a "site") | `structure[i]`; `len(structure)` sites; `for site in structure:` |
# | its element and atomic number | `structure[i].specie` (an `Element`), `structure[i].specie.Z` (same as `.number`) |
# | its position | `structure[i].frac_coords` (fractions of the lattice vectors), `structure[i].coords` (Å) |
# | neighbours within r Å, **periodic images included** | `structure.get_neighbors(structure[i], r)`: a list of neighbours `nbr`, with `nbr.index` (the neighbour's site index in the cell) and `nbr.nn_distance` (Å) |

# %%
# Colab: install the package first (locally, `pip install -e '.[test]'` in the repository did it).
import sys

if "google.colab" in sys.modules:
    REPO = "https://github.com/cgcnn-lab/cgcnn-lab"  # the course's copy of this repository
    get_ipython().run_line_magic("pip", f"install -q 'cgcnn-lab[course] @ git+{REPO}'")

# %%
# All imports, at the top: nothing is installed or imported half-way through.
import os
from pathlib import Path

import matplotlib.pyplot as plt
import networkx as nx
import numpy as np
import otter
import torch
from pymatgen.core import Structure

from cgcnn_lab.course import homework as hw
from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.data.graph import GraphConfig, structure_to_graph
from cgcnn_lab.model.expansion import GaussianExpansion

hw.inline_plots()
DATA_DIR = Path(os.environ.get("CGCNN_DATA", "../../../shared/data"))  # the one data setting
NACL_CIF = Path("../data/NaCl.cif")
if not NACL_CIF.exists():  # e.g. on Colab: write the same file from pymatgen
    NACL_CIF = hw.write_nacl_cif("data/NaCl.cif")
print("data folder:", DATA_DIR, "(present)" if DATA_DIR.exists() else "(absent: not needed here)")
grader = otter.Notebook()  # grader.check("q1_1") runs the tests of exercise 1.1, from tests/q1_1.py

# %% [markdown]
# ## 1.1 Read the crystal
#
# A CIF file describes the **unit cell** (three lattice vectors) and the atoms inside it. Repeating the cell
# in all three directions builds the infinite crystal. NaCl is cubic with a = 5.64 Å; its conventional cell
# holds 4 Na and 4 Cl.

# %%
structure = Structure.from_file(NACL_CIF)
print("lattice lengths a, b, c (Å):", structure.lattice.abc)
print("lattice angles (°):        ", structure.lattice.angles)
print(f"{len(structure)} sites:")
print(" i  element  Z   fractional coordinates      Cartesian coordinates (Å)")
for i, site in enumerate(structure):
    print(f"{i:2d}  {site.specie!s:7s} {site.specie.Z:3d}   {np.round(site.frac_coords, 3)!s:26s} "
          f"{np.round(site.coords, 3)}")

# %% [markdown]
# Each row is one **site**: its element, its atomic number Z, its position as fractions of the three lattice
# vectors (0 ≤ x < 1: inside the cell) and the same position in Å.

# %% [markdown] question="q1_1" points=1
# ### Exercise 1.1 — atomic numbers
# Make `atomic_numbers`, a list with the atomic number of every site, in site order. Then run the next cell,
# `grader.check("q1_1")`: it runs the exercise's public tests and prints a hint when the answer is not right yet.

# %%
# BEGIN SOLUTION: one atomic number per site, in site order
# Hint: structure[i].specie is the element of site i; its .Z attribute is the atomic number
atomic_numbers = [site.specie.Z for site in structure]
# END SOLUTION
print(atomic_numbers)


# %% tags=["test"]
def test_atomic_numbers(atomic_numbers, structure):
    from cgcnn_lab.course import homework as hw

    hw.check_species(hw.defined(atomic_numbers, "atomic_numbers", "Exercise 1.1"), structure)

# %% [markdown]
# ## 1.2 Atom features v_i
#
# CGCNN starts every atom from a fixed vector that depends only on its element: 92 numbers, each a one-hot
# segment (group, period, electronegativity bin, covalent-radius bin, valence electrons, ionisation energy,
# electron affinity, block, atomic volume). The original code ships it as `atom_init.json`:
# `{"11": [0, 1, 0, ...], "17": [...]}`, keys are atomic numbers as strings. `cgcnn_lab` keeps the same
# table as an array: `encoding.table[Z]` is the 92-vector of element Z (row 0 is unused).

# %%
atom_init = DATA_DIR / "homework" / "perovskite_energy" / "atom_init.json"
encoding = ElementEncoding.from_atom_init(atom_init) if atom_init.exists() else ElementEncoding.cgcnn92()
print(f"encoding {encoding.name!r}: table {encoding.table.shape}, Na row has ones at",
      np.flatnonzero(encoding.table[11]))

# %% [markdown] question="q1_2" points=1
# ### Exercise 1.2 — the atom feature matrix
# Build `atom_fea`, shape `[number of sites, 92]`: row i is the feature vector of site i's element.

# %%
# BEGIN SOLUTION: stack the element feature vectors of the sites
# Hint: encoding.table[z] is the row of atomic number z; np.stack a list of rows
atom_fea = np.stack([encoding.table[z] for z in atomic_numbers])
# END SOLUTION
print("atom_fea:", atom_fea.shape)


# %% tags=["test"]
def test_atom_features(atom_fea, structure, encoding):
    from cgcnn_lab.course import homework as hw

    hw.check_shape(hw.defined(atom_fea, "atom_fea", "Exercise 1.2"), (len(structure), encoding.n_features), "atom_fea")
    hw.check_atom_features(atom_fea, structure, encoding.table)

# %% [markdown]
# ## 1.3 Neighbours, with periodic images
#
# Atom 0 (Na at the corner) has 6 Cl neighbours at a/2 = 2.82 Å, but only 3 of them are inside the cell:
# the others belong to the neighbouring copies of the cell. A neighbour search that only looks inside the
# cell misses them. `structure.get_neighbors(site, r)` searches the periodic images too.

# %% [markdown] question="q1_3" points=2
# ### Exercise 1.3 — all neighbours within a radius
# Write `neighbor_pairs(structure, radius)`: a list of `(i, j, d)` triples, for every site i every neighbour j
# within `radius` and its distance d in Å. The same j may appear several times (different images, different or
# equal distances). The check compares **sets**, not lists: any order is fine. (The autograder also tries your
# function on other crystals.)

# %%
RADIUS = 6.0


def neighbor_pairs(structure, radius):
    # BEGIN SOLUTION: the (i, j, distance) triples of every neighbour of every site within radius
    # Hint: for i, site in enumerate(structure): for nbr in structure.get_neighbors(site, radius): ...
    # Hint: nbr.index is j, nbr.nn_distance is the distance
    return [
        (i, nbr.index, nbr.nn_distance)
        for i, site in enumerate(structure)
        for nbr in structure.get_neighbors(site, radius)
    ]
    # END SOLUTION


pairs = neighbor_pairs(structure, RADIUS)
print(f"{len(pairs)} edges; atom 0 has distances", sorted({round(float(d), 2) for i, _, d in pairs if i == 0}))


# %% tags=["test"]
def test_neighbors_of_nacl(neighbor_pairs, structure, RADIUS):
    from cgcnn_lab.course import homework as hw

    hw.check_neighbors(hw.defined(neighbor_pairs, "neighbor_pairs", "Exercise 1.3")(structure, RADIUS), structure,
                       RADIUS)


# %% tags=["test", "hidden"]
def test_neighbors_of_a_one_atom_cell(neighbor_pairs):
    """Polonium, one atom per cell: every neighbour is a periodic image of atom 0 itself."""
    from pymatgen.core import Lattice, Structure

    from cgcnn_lab.course import homework as hw

    po = Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]])
    hw.check_neighbors(neighbor_pairs(po, 5.0), po, 5.0)


# %% tags=["test", "hidden"]
def test_neighbors_of_other_crystals(neighbor_pairs):
    """CsCl and a triclinic cell: nothing in the answer may depend on NaCl's cubic cell."""
    from pymatgen.core import Lattice, Structure

    from cgcnn_lab.course import homework as hw

    cscl = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    triclinic = Structure(Lattice.from_parameters(4.1, 5.3, 6.2, 81, 97, 104), ["Si", "O", "O"],
                          [[0.1, 0.2, 0.3], [0.45, 0.1, 0.8], [0.7, 0.6, 0.15]])
    for crystal, radius in ((cscl, 5.5), (triclinic, 4.5)):
        hw.check_neighbors(neighbor_pairs(crystal, radius), crystal, radius)

# %% [markdown]
# **What the check catches.** Here is the classic mistake, distances computed inside one cell (no periodic
# images), and what the checker says about it:

# %%
cart = structure.cart_coords
in_cell = [(i, j, float(np.linalg.norm(cart[i] - cart[j])))
           for i in range(len(structure)) for j in range(len(structure))
           if i != j and np.linalg.norm(cart[i] - cart[j]) <= RADIUS]
result = hw.check_neighbors(in_cell, structure, RADIUS, raise_on_fail=False)

# %% [markdown] question="q1_4" points=2
# ### Exercise 1.4 — keep the M nearest
# CGCNN keeps at most the M = 12 nearest neighbours of each atom within 8 Å. Write `nearest_neighbors(structure,
# cutoff, m)`: the `(i, j, d)` triples of the m nearest neighbours of every atom within `cutoff` (all of them if
# there are fewer). Ties (several neighbours at exactly the same distance) make *which* j is kept arbitrary, so
# the check compares the distances of each atom only.

# %%
M, CUTOFF = 12, 8.0


def nearest_neighbors(structure, cutoff, m):
    # BEGIN SOLUTION: the m nearest neighbours of each atom within cutoff
    # Hint: sort each atom's neighbours by nbr.nn_distance and keep the first m
    nearest = []
    for i, site in enumerate(structure):
        nbrs = sorted(structure.get_neighbors(site, cutoff), key=lambda nbr: nbr.nn_distance)[:m]
        nearest += [(i, nbr.index, nbr.nn_distance) for nbr in nbrs]
    return nearest
    # END SOLUTION


nearest = nearest_neighbors(structure, CUTOFF, M)
print(f"{len(nearest)} edges: {M} per atom")


# %% tags=["test"]
def test_nearest_of_nacl(nearest_neighbors, structure, CUTOFF, M):
    from cgcnn_lab.course import homework as hw

    nearest = hw.defined(nearest_neighbors, "nearest_neighbors", "Exercise 1.4")(structure, CUTOFF, M)
    hw.check_neighbors(nearest, structure, CUTOFF, max_neighbors=M)


# %% tags=["test", "hidden"]
def test_nearest_other_m_and_crystals(nearest_neighbors, structure):
    """m = 4 cuts NaCl's first shell of 6 (a tie); a triclinic cell; a cell with fewer than m neighbours."""
    from pymatgen.core import Lattice, Structure

    from cgcnn_lab.course import homework as hw

    triclinic = Structure(Lattice.from_parameters(4.1, 5.3, 6.2, 81, 97, 104), ["Si", "O", "O"],
                          [[0.1, 0.2, 0.3], [0.45, 0.1, 0.8], [0.7, 0.6, 0.15]])
    po = Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]])
    for crystal, cutoff, m in ((structure, 8.0, 4), (triclinic, 6.0, 5), (po, 3.5, 12)):
        hw.check_neighbors(nearest_neighbors(crystal, cutoff, m), crystal, cutoff, max_neighbors=m)

# %% [markdown]
# The library does the same with pymatgen's C neighbour search. Its edges are `edge_index[0]` = neighbour j
# (sender), `edge_index[1]` = centre i (receiver), the PyTorch Geometric convention. Same graph, in another
# order — which is why we compare as sets:

# %%
graph = structure_to_graph(structure, GraphConfig(radius=CUTOFF, max_neighbors=M))
library_pairs = list(zip(graph.edge_index[1], graph.edge_index[0], graph.distance))
print(f"library: {graph.n_atoms} atoms, {graph.n_edges} edges")
hw.check_neighbors(library_pairs, structure, CUTOFF, max_neighbors=M)

# %% [markdown]
# ## 1.4 Draw the crystal graph
#
# Nodes are the 8 atoms of the cell; an edge i–j is drawn once per pair, labelled with how many bonds it
# stands for (periodic images) and their length. Within 3 Å every Na sees 6 Cl at 2.82 Å: each of the 4 Cl
# of the cell is reached through 1 or 2 images.

# %%
SHELL = 3.0
G = nx.MultiGraph()
for i, site in enumerate(structure):
    G.add_node(i, element=str(site.specie))
for i, j, d in pairs:
    if d <= SHELL and i < j:
        G.add_edge(i, j, distance=d)
labels = {}
for i, j in {tuple(e) for e in G.edges()}:
    ds = [data["distance"] for data in G.get_edge_data(i, j).values()]
    labels[(i, j)] = f"{len(ds)}×{np.mean(ds):.2f} Å"
fig, ax = plt.subplots(figsize=(6, 5))
pos = nx.circular_layout(G)
colors = ["tab:purple" if G.nodes[n]["element"] == "Na" else "tab:green" for n in G]
nx.draw_networkx(nx.Graph(G), pos, ax=ax, node_color=colors, node_size=900, font_color="white",
                 labels={n: f"{G.nodes[n]['element']}{n}" for n in G})
nx.draw_networkx_edge_labels(nx.Graph(G), pos, edge_labels=labels, ax=ax, font_size=8)
ax.set_title(f"NaCl crystal graph, bonds up to {SHELL} Å (count × length)")
ax.axis("off")
plt.show()

# %% [markdown]
# ## 1.5 Bond features: the Gaussian expansion
#
# A single number d is a poor input for a neural network layer (one weight per distance can only scale it).
# CGCNN expands it on a grid of Gaussians, a smooth one-hot code of the distance:
#
# $$u_k(d) = \exp\!\left(-\frac{(d-\mu_k)^2}{\sigma^2}\right),\qquad \mu_k = 0, 0.2, \dots, 8\ \text{Å},\quad \sigma = 0.2\ \text{Å}$$
#
# That is 41 centres (0 and 8 included).

# %% [markdown] question="q1_5" points=2
# ### Exercise 1.5 — write the expansion
# `gaussian_expand(distances)` takes a 1-D tensor of E distances and returns an `[E, 41]` tensor; `dmax`, `step`
# and `width` set the grid (the autograder tries others).

# %%
def gaussian_expand(distances, dmax=8.0, step=0.2, width=0.2):
    # BEGIN SOLUTION: exp(-(d - mu_k)^2 / width^2) for every distance and every centre mu_k
    # Hint: centres = torch.arange(0, dmax + step / 2, step) includes dmax (41 values)
    # Hint: broadcasting distances[:, None] - centres[None, :] gives an [E, 41] matrix
    distances = torch.as_tensor(distances, dtype=torch.float32)
    centres = torch.arange(0.0, dmax + step / 2, step)
    return torch.exp(-((distances[:, None] - centres[None, :]) ** 2) / width**2)
    # END SOLUTION


# %% tags=["test"]
def test_gaussian(gaussian_expand):
    from cgcnn_lab.course import homework as hw

    hw.check_gaussian(hw.defined(gaussian_expand, "gaussian_expand", "Exercise 1.5"))


# %% tags=["test", "hidden"]
def test_gaussian_other_grid(gaussian_expand):
    """Another grid and width: the centres and the width come from the arguments, not from constants."""
    from cgcnn_lab.course import homework as hw

    hw.check_gaussian(lambda d: gaussian_expand(d, dmax=5.0, step=0.5, width=0.4), radius=5.0, step=0.5, width=0.4)


# %% tags=["test", "hidden"]
def test_gaussian_one_distance(gaussian_expand):
    """A single distance still gives a [1, 41] matrix (no squeeze)."""
    import torch

    from cgcnn_lab.course import homework as hw

    hw.check_shape(gaussian_expand(torch.tensor([2.0])), (1, 41), "gaussian_expand(torch.tensor([2.0]))")

# %%
d = torch.tensor([2.82, 3.99, 4.88])
fig, ax = plt.subplots(figsize=(7, 3))
centres = GaussianExpansion().centers
for value, row in zip(d, gaussian_expand(d)):
    ax.plot(centres, row, "o-", ms=3, label=f"d = {value:.2f} Å")
ax.set_xlabel("Gaussian centre μ_k (Å)")
ax.set_ylabel("u_k(d)")
ax.legend()
ax.set_title("each distance becomes a 41-vector peaked at its own value")
plt.show()
hw.check_close(gaussian_expand(d), GaussianExpansion()(d), "your expansion vs GaussianExpansion", atol=1e-5)

# %% [markdown] question="q1_w1" points=2
# ## Written questions
#
# **Q1.** Why does the crystal graph need periodic images? What would a model trained on in-cell neighbours
# only get wrong?

# %% [markdown] tags=["solution"]
# A crystal is infinite: an atom near a face of the cell has most of its neighbours in the next copy of the
# cell. Without images, atom 0 of NaCl sees no Cl at 2.82 Å in some directions and instead distant atoms,
# and two identical atoms at different places in the cell get different graphs. The graph would then depend
# on an arbitrary choice (where the cell starts), not on the material; a model would learn artefacts of that
# choice, and the same crystal described with a shifted or larger cell would get another prediction.

# %% [markdown] question="q1_w2" points=2
# **Q2.** Why expand distances on Gaussians instead of feeding d directly? What do the grid step and the
# width control?

# %% [markdown] tags=["solution"]
# A linear layer applied to d can only produce a*d + b, a monotonic function of the distance; the interaction
# between atoms is not monotonic (attractive at some distances, repulsive at others). The Gaussian code turns
# d into a vector whose weights can express *any* smooth function of d (a sum of bumps), like a one-hot code
# that varies smoothly. The step sets the resolution (0.2 Å distinguishes bond lengths that differ by ~0.1 Å);
# the width sets the overlap between neighbouring Gaussians: too narrow and distances between grid points are
# poorly represented, too wide and nearby distances become indistinguishable.

# %% [markdown] question="q1_w3" points=2
# **Q3.** The checks in this notebook never use `==` on floats and never compare lists element by element.
# Why?

# %% [markdown] tags=["solution"]
# Floating-point results depend on the order of operations (and on the library version and hardware): the
# same mathematics can differ in the last bits, so `==` fails on correct code. Neighbour lists are sets: any
# order is a correct answer, and equal distances (NaCl has 6 neighbours at exactly 2.82 Å) can come out in any
# order. So we compare within a tolerance, and compare multisets of (i, j, rounded distance).
