from otter.test_files import test_case

OK_FORMAT = False

name = "q1_1"
points = 1

@test_case(points=None, hidden=False)
def test_atomic_numbers(atomic_numbers, structure):
    from cgcnn_lab.course import homework as hw
    hw.check_species(hw.defined(atomic_numbers, 'atomic_numbers', 'Exercise 1.1'), structure)

