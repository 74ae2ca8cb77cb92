from otter.test_files import test_case

OK_FORMAT = False

name = "q2_1"
points = 2

@test_case(points=None, hidden=False)
def test_neighbor_sum(per_edge, summed, graph, A, B, edge_index):
    from cgcnn_lab.course import homework as hw
    hw.check_shape(hw.defined(per_edge, 'per_edge', 'Exercise 2.1'), (graph.n_edges, A + B), 'per_edge')
    hw.check_shape(hw.defined(summed, 'summed', 'Exercise 2.1'), (graph.n_atoms, A + B), 'summed')
    center = edge_index[1]
    hw.check_close(summed[0], per_edge[center == 0].sum(0), 'sum over the 12 edges of atom 0', atol=0.0001)

