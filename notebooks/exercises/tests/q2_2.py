from otter.test_files import test_case

OK_FORMAT = False

name = "q2_2"
points = 2

@test_case(points=None, hidden=False)
def test_shared_conv(MySharedConv):
    from cgcnn_lab.course import homework as hw
    hw.check_conv(hw.defined(MySharedConv, 'MySharedConv', 'Exercise 2.2'), 'shared')

