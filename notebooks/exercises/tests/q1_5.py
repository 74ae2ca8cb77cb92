from otter.test_files import test_case

OK_FORMAT = False

name = "q1_5"
points = 2

@test_case(points=None, hidden=False)
def test_gaussian(gaussian_expand):
    from cgcnn_lab.course import homework as hw
    hw.check_gaussian(hw.defined(gaussian_expand, 'gaussian_expand', 'Exercise 1.5'))

