from otter.test_files import test_case

OK_FORMAT = False

name = "q1_3"
points = 2

@test_case(points=None, hidden=False)
def test_neighbors_of_nacl(neighbor_pairs, structure, RADIUS):
    from cgcnn_lab.course import homework as hw
    hw.check_neighbors(hw.defined(neighbor_pairs, 'neighbor_pairs', 'Exercise 1.3')(structure, RADIUS), structure, RADIUS)

@test_case(points=None, hidden=True)
def test_neighbors_of_a_one_atom_cell(neighbor_pairs):
    """Polonium, one atom per cell: every neighbour is a periodic image of atom 0 itself."""
    from pymatgen.core import Lattice, Structure
    from cgcnn_lab.course import homework as hw
    po = Structure(Lattice.cubic(3.35), ['Po'], [[0, 0, 0]])
    hw.check_neighbors(neighbor_pairs(po, 5.0), po, 5.0)

@test_case(points=None, hidden=True)
def test_neighbors_of_other_crystals(neighbor_pairs):
    """CsCl and a triclinic cell: nothing in the answer may depend on NaCl's cubic cell."""
    from pymatgen.core import Lattice, Structure
    from cgcnn_lab.course import homework as hw
    cscl = Structure(Lattice.cubic(4.12), ['Cs', 'Cl'], [[0, 0, 0], [0.5, 0.5, 0.5]])
    triclinic = Structure(Lattice.from_parameters(4.1, 5.3, 6.2, 81, 97, 104), ['Si', 'O', 'O'], [[0.1, 0.2, 0.3], [0.45, 0.1, 0.8], [0.7, 0.6, 0.15]])
    for crystal, radius in ((cscl, 5.5), (triclinic, 4.5)):
        hw.check_neighbors(neighbor_pairs(crystal, radius), crystal, radius)

