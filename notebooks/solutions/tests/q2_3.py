from otter.test_files import test_case

OK_FORMAT = False

name = "q2_3"
points = 3

@test_case(points=None, hidden=False)
def test_gated_conv(MyGatedConv):
    from cgcnn_lab.course import homework as hw
    hw.check_conv(hw.defined(MyGatedConv, 'MyGatedConv', 'Exercise 2.3'), 'gated')

@test_case(points=None, hidden=True)
def test_gated_conv_other_sizes(MyGatedConv):
    """Other feature sizes: the layer uses atom_dim and edge_dim, not A = 16 and B = 41."""
    from cgcnn_lab.course import homework as hw
    hw.check_conv(MyGatedConv, 'gated', atom_dim=7, edge_dim=3)

