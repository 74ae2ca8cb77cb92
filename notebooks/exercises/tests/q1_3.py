from otter.test_files import test_case

OK_FORMAT = False

name = "q1_3"
points = 2

@test_case(points=None, hidden=False)
def test_neighbors_of_nacl(neighbor_pairs, structure, RADIUS):
    from cgcnn_lab.course import homework as hw
    hw.check_neighbors(hw.defined(neighbor_pairs, 'neighbor_pairs', 'Exercise 1.3')(structure, RADIUS), structure, RADIUS)

