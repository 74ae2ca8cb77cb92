from otter.test_files import test_case

OK_FORMAT = False

name = "q2_2"
points = 2

@test_case(points=None, hidden=False)
def test_shared_conv(MySharedConv):
    from cgcnn_lab.course import homework as hw
    hw.check_conv(hw.defined(MySharedConv, 'MySharedConv', 'Exercise 2.2'), 'shared')

@test_case(points=None, hidden=True)
def test_shared_conv_other_sizes(MySharedConv):
    """Other feature sizes: the layer uses atom_dim and edge_dim, not A = 16 and B = 41."""
    from cgcnn_lab.course import homework as hw
    hw.check_conv(MySharedConv, 'shared', atom_dim=7, edge_dim=3)

