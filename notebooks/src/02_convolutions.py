# %% [markdown]
# # 2. Graph convolutions on crystals: shared-weight (Eq. 3) and gated (Eq. 5)
#
# A convolution layer updates every atom's feature vector from its neighbours. After R layers, atom i's
# vector summarises its environment up to R bonds away; pooling (an average over atoms) then gives one
# vector for the crystal, and a small fully connected network maps it to the property.
#
# Notation (per layer t): v_i is the feature vector of centre atom i (length A), v_j of a neighbour,
# u_ij the Gaussian-expanded bond (length B = 41), ⊕ concatenation, ⊙ element-wise product, g an activation
# (softplus), σ the sigmoid. The sums run over all edges (j, k) that end at i.
#
# **Shared weights (paper Eq. 3; the course's Eq. 3):** one matrix W_c for every neighbour.
#
# $$v_i^{(t+1)} = g\Big[\Big(\sum_{j,k} v_j^{(t)} \oplus u_{(i,j)_k}\Big) W_c^{(t)} + v_i^{(t)} W_s^{(t)} + b^{(t)}\Big]$$
#
# **Gated (paper Eq. 5, the CGCNN layer; the course called it Eq. 4):** with z = v_i ⊕ v_j ⊕ u_ij, a
# *filter* σ(z W_f + b_f) in [0, 1] decides how much each neighbour contributes, a *core* g(z W_s + b_s) what
# it contributes, and the result is added to v_i (a residual connection). Batch norm (BN) is applied after
# the linear map and after the sum, as in the original code:
#
# $$v_i^{(t+1)} = g\Big(v_i^{(t)} + \mathrm{BN}\Big[\sum_{j,k} \sigma(z W_f + b_f) \odot g(z W_s + b_s)\Big]\Big)$$
#
# **Edges as tensors** (PyTorch Geometric convention, used by `cgcnn_lab`): `edge_index` is `[2, E]`;
# `edge_index[0]` holds the neighbour j (sender) of each edge, `edge_index[1]` the centre i (receiver).
# `x[edge_index[0]]` gathers the neighbour features per edge, `out.index_add_(0, edge_index[1], messages)`
# sums messages onto their centre atom.

# %%
import sys

if "google.colab" in sys.modules:
    REPO = "https://github.com/cgcnn-lab/cgcnn-lab"  # the course's copy of this repository
    get_ipython().run_line_magic("pip", f"install -q 'cgcnn-lab[course] @ git+{REPO}'")

# %%
import numpy as np
import otter
import torch
from pymatgen.core.operations import SymmOp
from torch import nn

from cgcnn_lab.course import homework as hw
from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.data.graph import GraphConfig, structure_to_graph
from cgcnn_lab.model.convs import GatedConv, SharedConv
from cgcnn_lab.model.expansion import GaussianExpansion

hw.inline_plots()
torch.manual_seed(0)
grader = otter.Notebook()  # grader.check("q2_1") runs the tests of exercise 2.1, from tests/q2_1.py

# %% [markdown]
# ## 2.1 A graph to work on
# NaCl again (notebook 1), now as tensors: atom features x `[N, A]` (the 92-vector through a linear
# embedding to A = 16), edges `[2, E]`, bond features `[E, 41]`.

# %%
structure = hw.nacl_structure()
graph = structure_to_graph(structure, GraphConfig(radius=8.0, max_neighbors=12))
encoding = ElementEncoding.cgcnn92()
A = 16
embed = nn.Linear(encoding.n_features, A)
x = embed(torch.from_numpy(encoding.table[graph.z]))
edge_index = torch.from_numpy(graph.edge_index)
edge_attr = GaussianExpansion()(torch.from_numpy(graph.distance))
B = edge_attr.shape[1]
print(f"x {tuple(x.shape)}, edge_index {tuple(edge_index.shape)}, edge_attr {tuple(edge_attr.shape)}")

# %% [markdown] question="q2_1" points=2
# ### Exercise 2.1 — the neighbour sum of Eq. 3, step by step
# 1. `per_edge`: for every edge, v_j ⊕ u_ij, shape `[E, A + B]`.
# 2. `summed`: for every atom i, the sum of `per_edge` over the edges ending at i, shape `[N, A + B]`.

# %%
neighbor, center = edge_index
# BEGIN SOLUTION: gather v_j per edge, concatenate u_ij, and sum onto the centre atoms
# Hint: x[neighbor] (or x.index_select(0, neighbor)) is [E, A]; torch.cat([...], dim=1)
# Hint: torch.zeros(N, A + B).index_add_(0, center, per_edge) sums the rows that share a centre
per_edge = torch.cat([x[neighbor], edge_attr], dim=1)
summed = torch.zeros(x.shape[0], A + B).index_add_(0, center, per_edge)
# END SOLUTION
print("per_edge", tuple(per_edge.shape), "summed", tuple(summed.shape))


# %% tags=["test"]
def test_neighbor_sum(per_edge, summed, graph, A, B, edge_index):
    from cgcnn_lab.course import homework as hw

    hw.check_shape(hw.defined(per_edge, "per_edge", "Exercise 2.1"), (graph.n_edges, A + B), "per_edge")
    hw.check_shape(hw.defined(summed, "summed", "Exercise 2.1"), (graph.n_atoms, A + B), "summed")
    center = edge_index[1]
    hw.check_close(summed[0], per_edge[center == 0].sum(0), "sum over the 12 edges of atom 0", atol=1e-4)


# %% tags=["test", "hidden"]
def test_neighbor_sum_every_atom(per_edge, summed, x, edge_index, edge_attr):
    """Every atom, from x and the edges directly: v_j (the sender) first, then u_ij, summed onto the centre."""
    import torch

    from cgcnn_lab.course import homework as hw

    neighbor, center = edge_index
    want_edges = torch.cat([x[neighbor], edge_attr], dim=1)
    hw.check_close(per_edge, want_edges, "per_edge = v_j ⊕ u_ij (neighbour features first, j = edge_index[0])",
                   atol=1e-5)
    want = torch.stack([want_edges[center == i].sum(0) for i in range(x.shape[0])])
    hw.check_close(summed, want, "summed, every atom", atol=1e-4)

# %% [markdown] question="q2_2" points=2
# ### Exercise 2.2 — the shared-weight convolution as a module
# Complete `MySharedConv`. Use the layer names of the library (`check_conv` copies the library's weights into
# yours to compare outputs): `lin_neighbors = nn.Linear(A + B, A, bias=False)` is W_c, `lin_self =
# nn.Linear(A, A)` is W_s and b, `bn = nn.BatchNorm1d(A)` normalises before the activation `act`.

# %%
class MySharedConv(nn.Module):
    def __init__(self, atom_dim, edge_dim):
        super().__init__()
        self.lin_neighbors = nn.Linear(atom_dim + edge_dim, atom_dim, bias=False)
        self.lin_self = nn.Linear(atom_dim, atom_dim)
        self.bn = nn.BatchNorm1d(atom_dim)
        self.act = nn.Softplus()

    def forward(self, x, edge_index, edge_attr):
        neighbor, center = edge_index
        # BEGIN SOLUTION: g[BN((sum_j v_j ⊕ u_ij) W_c + v_i W_s + b)]
        # Hint: reuse your Exercise 2.1 code for the sum, then the two linear layers, self.bn, self.act
        per_edge = torch.cat([x[neighbor], edge_attr], dim=1)
        summed = x.new_zeros(x.shape[0], per_edge.shape[1]).index_add_(0, center, per_edge)
        return self.act(self.bn(self.lin_neighbors(summed) + self.lin_self(x)))
        # END SOLUTION


# %% tags=["test"]
def test_shared_conv(MySharedConv):
    from cgcnn_lab.course import homework as hw

    hw.check_conv(hw.defined(MySharedConv, "MySharedConv", "Exercise 2.2"), "shared")


# %% tags=["test", "hidden"]
def test_shared_conv_other_sizes(MySharedConv):
    """Other feature sizes: the layer uses atom_dim and edge_dim, not A = 16 and B = 41."""
    from cgcnn_lab.course import homework as hw

    hw.check_conv(MySharedConv, "shared", atom_dim=7, edge_dim=3)

# %% [markdown] question="q2_3" points=3
# ### Exercise 2.3 — the gated CGCNN convolution
# Complete `MyGatedConv`. `fc_full = nn.Linear(2A + B, 2A)` holds W_f and W_s in one matrix: its output's
# first A columns are the filter, the last A the core (`.chunk(2, dim=1)`). z_ij is v_i ⊕ v_j ⊕ u_ij, in
# that order (centre first).

# %%
class MyGatedConv(nn.Module):
    def __init__(self, atom_dim, edge_dim):
        super().__init__()
        self.fc_full = nn.Linear(2 * atom_dim + edge_dim, 2 * atom_dim)
        self.bn1 = nn.BatchNorm1d(2 * atom_dim)
        self.bn2 = nn.BatchNorm1d(atom_dim)
        self.core_act = nn.Softplus()
        self.out_act = nn.Softplus()

    def forward(self, x, edge_index, edge_attr):
        neighbor, center = edge_index
        # BEGIN SOLUTION: g(v_i + BN(sum_j σ(z W_f + b_f) ⊙ g(z W_s + b_s)))
        # Hint: z = torch.cat([x[center], x[neighbor], edge_attr], dim=1); gated = self.bn1(self.fc_full(z))
        # Hint: nbr_filter, nbr_core = gated.chunk(2, dim=1); sum the messages with index_add_ as before
        z = torch.cat([x[center], x[neighbor], edge_attr], dim=1)
        nbr_filter, nbr_core = self.bn1(self.fc_full(z)).chunk(2, dim=1)
        messages = torch.sigmoid(nbr_filter) * self.core_act(nbr_core)
        summed = x.new_zeros(x.shape).index_add_(0, center, messages)
        return self.out_act(x + self.bn2(summed))
        # END SOLUTION


# %% tags=["test"]
def test_gated_conv(MyGatedConv):
    from cgcnn_lab.course import homework as hw

    hw.check_conv(hw.defined(MyGatedConv, "MyGatedConv", "Exercise 2.3"), "gated")


# %% tags=["test", "hidden"]
def test_gated_conv_other_sizes(MyGatedConv):
    """Other feature sizes: the layer uses atom_dim and edge_dim, not A = 16 and B = 41."""
    from cgcnn_lab.course import homework as hw

    hw.check_conv(MyGatedConv, "gated", atom_dim=7, edge_dim=3)

# %% [markdown]
# The checker also knows the usual mistakes. A gated layer without the residual connection:

# %%
class NoResidual(MyGatedConv):
    def forward(self, x, edge_index, edge_attr):
        neighbor, center = edge_index
        z = torch.cat([x[center], x[neighbor], edge_attr], dim=1)
        nbr_filter, nbr_core = self.bn1(self.fc_full(z)).chunk(2, dim=1)
        summed = x.new_zeros(x.shape).index_add_(0, center, torch.sigmoid(nbr_filter) * self.core_act(nbr_core))
        return self.out_act(self.bn2(summed))


_ = hw.check_conv(NoResidual, "gated", raise_on_fail=False)

# %% [markdown]
# ## 2.2 Side by side: what can each layer tell apart?
#
# Take a centre atom with two neighbours, a Na and a Cl, at 2.5 Å and 3.5 Å. In environment **(a)** the Na
# is the near one; in **(b)** the Cl is. These are different chemical environments. The shared layer first
# sums v_j ⊕ u_ij over neighbours: Σ v_j = v_Na + v_Cl and Σ u_ij = u(2.5) + u(3.5) are *the same* in (a)
# and (b), so its output is the same. The gated layer weights each neighbour by a function of *its own* v_j
# and u_ij before summing, so it can tell them apart.

# %%
def two_neighbour_environment(near, far):
    """Centre atom 0 (O) with neighbours 1 and 2; `near`/`far` are the elements at 2.5 and 3.5 Å."""
    z = torch.tensor([8, {"Na": 11, "Cl": 17}[near], {"Na": 11, "Cl": 17}[far]])
    feats = embed(torch.from_numpy(encoding.table[z.numpy()]))
    ei = torch.tensor([[1, 2, 0, 0], [0, 0, 1, 2]])  # 1->0 and 2->0, plus edges back so every atom has one
    dist = torch.tensor([2.5, 3.5, 2.5, 3.5])
    return feats, ei, GaussianExpansion()(dist)


torch.manual_seed(1)
layers = {"shared (Eq. 3)": SharedConv(A, B, batchnorm=False), "gated (Eq. 5)": GatedConv(A, B, batchnorm=False)}
with torch.no_grad():
    for name, layer in layers.items():
        out_a = layer(*two_neighbour_environment("Na", "Cl"))[0]
        out_b = layer(*two_neighbour_environment("Cl", "Na"))[0]
        n_params = sum(p.numel() for p in layer.parameters())
        print(f"{name:15s} {n_params:6d} parameters; |out(a) - out(b)| for the centre atom = "
              f"{(out_a - out_b).abs().max():.2e}")

# %% [markdown]
# ## 2.3 Invariance
#
# A property of a crystal cannot depend on how we number its atoms, list its bonds, rotate it or shift it.
# Check it on the library's gated layer: renumber the atoms, rotate the crystal — the outputs follow.

# %%
conv = GatedConv(A, B).eval()
with torch.no_grad():
    out = conv(x, edge_index, edge_attr)
    perm = torch.randperm(graph.n_atoms)  # new atom k is old atom perm[k]
    inverse = torch.argsort(perm)
    out_perm = conv(x[perm], inverse[edge_index], edge_attr)
hw.check_close(out_perm, out[perm], "outputs after renumbering the atoms (rows follow the atoms)", atol=1e-5)

rotated = structure.copy()
rotated.apply_operation(SymmOp.from_axis_angle_and_translation([1, 2, 3], 37.0, translation_vec=[0.3, -0.2, 0.1]))
g_rot = structure_to_graph(rotated, GraphConfig(radius=8.0, max_neighbors=12))
hw.check_close(np.sort(g_rot.distance), np.sort(graph.distance), "bond lengths of the rotated + shifted crystal",
               atol=1e-4)

# %% [markdown] question="q2_w1" points=2
# ## Written questions
#
# **Q1 (invariance).** Which transformations of the input leave the prediction of a CGCNN unchanged, and which
# part of the architecture guarantees each? Is the model *equivariant* anywhere?

# %% [markdown] tags=["solution"]
# *Permutations* of atoms and of edges: every layer treats atoms with the same shared weights and sums over
# neighbours (a sum does not depend on order); the atom features are permutation-*equivariant* (renumbering the
# atoms renumbers the rows of the output, as the check above shows), and pooling (mean/max/sum over atoms) makes
# the crystal vector *invariant*. *Rotations, reflections and translations*: the graph only holds elements and
# interatomic distances, which these operations do not change, so the input itself is invariant. *Choice of
# unit cell*: periodic images make the neighbourhood of an atom the same whatever cell is chosen, and mean
# pooling makes a supercell (the same crystal, doubled) give the same output. What the model cannot see is
# anything that is not a distance: bond angles, chirality (a crystal and its mirror image have the same graph).

# %% [markdown] question="q2_w2" points=2
# **Q2.** Why is the shared-weight convolution (Eq. 3) weaker than the gated one (Eq. 5)? Give the example
# of section 2.2 in your own words, and say what the residual connection adds.

# %% [markdown] tags=["solution"]
# Eq. 3 sums v_j ⊕ u_ij over the neighbours *before* any weight or non-linearity acts, so only the total of the
# neighbours' features and the total of the bond features survive: which neighbour sits at which distance is
# lost (section 2.2: Na near/Cl far and Cl near/Na far give identical outputs). Eq. 5 builds z from v_i, v_j and
# u_ij *per edge* and applies a non-linear, learned gate to each edge before summing, so a Cl at 2.5 Å and a Na
# at 2.5 Å contribute differently, and the gate σ can switch off unimportant (e.g. distant) neighbours. The
# residual v_i + ... keeps the atom's own information through the layers and gives gradients a direct path,
# which makes deeper stacks trainable.
