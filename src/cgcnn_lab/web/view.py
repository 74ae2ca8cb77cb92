"""One structure as the 3-D view draws it: the cell, the atoms in the order the model saw them, each one's
contribution (models with an atom readout), and the neighbour graph the model was given, bond by bond with the
periodic image each bond reaches.

The atoms come from the same reader as the graph (data/featurize.py's ``entry_to_graph``: the fast CIF reader,
else pymatgen), so site k here is site k of ``explain``; the bonds are the model's own cut (``nearest_neighbor_edges``
with its graph settings), re-run with the periodic images kept, which the stored graph does not need.
"""

from __future__ import annotations

import numpy as np

from cgcnn_lab.data.elements import element_symbol
from cgcnn_lab.data.fastcif import read_plain_cif
from cgcnn_lab.data.graph import Cell, GraphConfig, nearest_neighbor_edges
from cgcnn_lab.data.sources import Entry, parse_structure


def cell_of(entry: Entry) -> Cell:
    """The cell of an entry as featurising reads it (atoms wrapped into the cell, in the graph's order)."""
    text = entry.content
    if isinstance(text, str) and not text.lstrip().startswith("{"):
        cell = read_plain_cif(text)
        if cell is not None:
            return cell
    return Cell.from_structure(parse_structure(entry))  # parse_structure wraps the atoms into the cell


def bonds(cell: Cell, config: GraphConfig) -> list[dict]:
    """The graph's edges as segments: from centre atom ``i`` to the image of neighbour ``j`` it bonds to
    (``to``, Cartesian Å), with the distance; a bond inside the cell is listed once."""
    from pymatgen.optimization.neighbors import find_points_in_spheres

    tol = 1e-8
    centers, neighbors, images, distances = find_points_in_spheres(
        cell.cart, cell.cart, r=config.radius, pbc=np.ones(3, dtype=np.int64), lattice=cell.matrix, tol=tol)
    keep = ~((centers == neighbors) & (distances <= tol))
    centers, neighbors, images, distances = centers[keep], neighbors[keep], images[keep], distances[keep]
    # the model's cut, with each pair's position in place of its neighbour: the kept pairs keep their images
    edge_index, _ = nearest_neighbor_edges(centers, np.arange(len(centers)), distances, len(cell.z),
                                           config.max_neighbors, config.shell_tol)
    found, seen = [], set()
    for pair, i in zip(edge_index[0].tolist(), edge_index[1].tolist()):
        j, image = int(neighbors[pair]), images[pair]
        if not image.any():
            if (min(i, j), max(i, j)) in seen:
                continue
            seen.add((min(i, j), max(i, j)))
        to = cell.cart[j] + image @ cell.matrix
        found.append({"i": i, "j": j, "to": [round(float(x), 4) for x in to],
                      "distance": round(float(distances[pair]), 4), "inside": not image.any()})
    return found


def structure_view(entry: Entry, config: GraphConfig, contributions: np.ndarray | None = None) -> dict:
    """What the page's viewer draws for one structure."""
    cell = cell_of(entry)
    if contributions is not None and len(contributions) != len(cell.z):  # never colour the wrong atoms
        contributions = None
    atoms = [{"site": k, "element": element_symbol(int(z)), "xyz": [round(float(x), 4) for x in xyz]}
             | ({"contribution": float(contributions[k])} if contributions is not None else {})
             for k, (z, xyz) in enumerate(zip(cell.z, cell.cart))]
    return {"id": entry.id, "lattice": np.round(cell.matrix, 6).tolist(), "atoms": atoms,
            "bonds": bonds(cell, config), "graph": {"radius": config.radius, "max_neighbors": config.max_neighbors}}
