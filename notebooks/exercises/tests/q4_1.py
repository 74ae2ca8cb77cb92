from otter.test_files import test_case

OK_FORMAT = False

name = "q4_1"
points = 3

@test_case(points=None, hidden=False)
def test_experiments(results, EXPERIMENTS, SEEDS):
    import numpy as np
    from cgcnn_lab.course import homework as hw
    mae = hw.defined(results, 'results', 'Exercise 4.1 (the experiments cell)')['mae'].to_numpy(dtype=float)
    hw.check_shape(mae, (sum((len(s) for s in EXPERIMENTS.values())) * len(SEEDS),), 'results')
    assert np.isfinite(mae).all() and (mae > 0).all(), 'every run must give a finite, positive test MAE per atom'

