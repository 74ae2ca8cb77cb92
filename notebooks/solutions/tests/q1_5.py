from otter.test_files import test_case

OK_FORMAT = False

name = "q1_5"
points = 2

@test_case(points=None, hidden=False)
def test_gaussian(gaussian_expand):
    from cgcnn_lab.course import homework as hw
    hw.check_gaussian(hw.defined(gaussian_expand, 'gaussian_expand', 'Exercise 1.5'))

@test_case(points=None, hidden=True)
def test_gaussian_other_grid(gaussian_expand):
    """Another grid and width: the centres and the width come from the arguments, not from constants."""
    from cgcnn_lab.course import homework as hw
    hw.check_gaussian(lambda d: gaussian_expand(d, dmax=5.0, step=0.5, width=0.4), radius=5.0, step=0.5, width=0.4)

@test_case(points=None, hidden=True)
def test_gaussian_one_distance(gaussian_expand):
    """A single distance still gives a [1, 41] matrix (no squeeze)."""
    import torch
    from cgcnn_lab.course import homework as hw
    hw.check_shape(gaussian_expand(torch.tensor([2.0])), (1, 41), 'gaussian_expand(torch.tensor([2.0]))')

