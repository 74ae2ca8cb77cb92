from otter.test_files import test_case

OK_FORMAT = False

name = "q1_2"
points = 1

@test_case(points=None, hidden=False)
def test_atom_features(atom_fea, structure, encoding):
    from cgcnn_lab.course import homework as hw
    hw.check_shape(hw.defined(atom_fea, 'atom_fea', 'Exercise 1.2'), (len(structure), encoding.n_features), 'atom_fea')
    hw.check_atom_features(atom_fea, structure, encoding.table)

