from otter.test_files import test_case

OK_FORMAT = False

name = "q5_4"
points = 2

@test_case(points=None, hidden=False)
def test_abo3(is_abo3):
    from cgcnn_lab.course import homework as hw
    hw.check_abo3(hw.defined(is_abo3, 'is_abo3', 'Exercise 5.4'))

@test_case(points=None, hidden=True)
def test_abo3_more_formulas(is_abo3):
    """Formulas the public test does not try: element order, a larger unreduced cell, double perovskites and
    layered oxides."""
    probes = {'BaZrO3': True, 'TiSrO3': True, 'Sr3Ti3O9': True, 'LaAlO3': True, 'Ba2FeMoO6': False, 'La2NiO4': False, 'Ca3Ti2O7': False, 'Fe2O3': False, 'SrTiO3F': False}
    import numpy as np
    for formula, want in probes.items():
        got = is_abo3(formula)
        assert isinstance(got, (bool, np.bool_)) and bool(got) == want, f'is_abo3({formula!r}) returned {got!r}, expected {want}'

