from otter.test_files import test_case

OK_FORMAT = False

name = "q1_4"
points = 2

@test_case(points=None, hidden=False)
def test_nearest_of_nacl(nearest_neighbors, structure, CUTOFF, M):
    from cgcnn_lab.course import homework as hw
    nearest = hw.defined(nearest_neighbors, 'nearest_neighbors', 'Exercise 1.4')(structure, CUTOFF, M)
    hw.check_neighbors(nearest, structure, CUTOFF, max_neighbors=M)

