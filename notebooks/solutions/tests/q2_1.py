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

@test_case(points=None, hidden=True)
def test_neighbor_sum_every_atom(per_edge, summed, x, edge_index, edge_attr):
    """Every atom, from x and the edges directly: v_j (the sender) first, then u_ij, summed onto the centre."""
    import torch
    from cgcnn_lab.course import homework as hw
    neighbor, center = edge_index
    want_edges = torch.cat([x[neighbor], edge_attr], dim=1)
    hw.check_close(per_edge, want_edges, 'per_edge = v_j ⊕ u_ij (neighbour features first, j = edge_index[0])', atol=1e-05)
    want = torch.stack([want_edges[center == i].sum(0) for i in range(x.shape[0])])
    hw.check_close(summed, want, 'summed, every atom', atol=0.0001)

