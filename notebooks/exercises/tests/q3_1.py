from otter.test_files import test_case

OK_FORMAT = False

name = "q3_1"
points = 1

@test_case(points=None, hidden=False)
def test_energy_per_atom(energy_per_atom, energies, n_atoms, dataset):
    from cgcnn_lab.course import homework as hw
    hw.check_shape(hw.defined(energy_per_atom, 'energy_per_atom', 'Exercise 3.1'), (len(dataset),), 'energy_per_atom')
    hw.check_close(energy_per_atom * n_atoms, energies, 'energy_per_atom × n_atoms vs the total energy', rtol=1e-06)

