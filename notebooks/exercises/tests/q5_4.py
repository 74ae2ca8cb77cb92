from otter.test_files import test_case

OK_FORMAT = False

name = "q5_4"
points = 2

@test_case(points=None, hidden=False)
def test_abo3(is_abo3):
    from cgcnn_lab.course import homework as hw
    hw.check_abo3(hw.defined(is_abo3, 'is_abo3', 'Exercise 5.4'))

