from otter.test_files import test_case

OK_FORMAT = False

name = "q1_4"
points = 2

@test_case(points=None, hidden=False)
def test_nearest_of_nacl(nearest_neighbors, structure, CUTOFF, M):
    from cgcnn_lab.course import homework as hw
    nearest = hw.defined(nearest_neighbors, 'nearest_neighbors', 'Exercise 1.4')(structure, CUTOFF, M)
    hw.check_neighbors(nearest, structure, CUTOFF, max_neighbors=M)

@test_case(points=None, hidden=True)
def test_nearest_other_m_and_crystals(nearest_neighbors, structure):
    """m = 4 cuts NaCl's first shell of 6 (a tie); a triclinic cell; a cell with fewer than m neighbours."""
    from pymatgen.core import Lattice, Structure
    from cgcnn_lab.course import homework as hw
    triclinic = Structure(Lattice.from_parameters(4.1, 5.3, 6.2, 81, 97, 104), ['Si', 'O', 'O'], [[0.1, 0.2, 0.3], [0.45, 0.1, 0.8], [0.7, 0.6, 0.15]])
    po = Structure(Lattice.cubic(3.35), ['Po'], [[0, 0, 0]])
    for crystal, cutoff, m in ((structure, 8.0, 4), (triclinic, 6.0, 5), (po, 3.5, 12)):
        hw.check_neighbors(nearest_neighbors(crystal, cutoff, m), crystal, cutoff, max_neighbors=m)

