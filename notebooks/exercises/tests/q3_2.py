from otter.test_files import test_case

OK_FORMAT = False

name = "q3_2"
points = 3

@test_case(points=None, hidden=False)
def test_two_runs(results):
    import math
    from cgcnn_lab.course import homework as hw
    runs = hw.defined(results, 'results', 'Exercise 3.2')
    assert set(runs) == {'shared', 'gated'}, f'results has the keys {sorted(runs)}: train both convolutions'
    for conv, run in runs.items():
        mae = run.metrics.get('test_mae_per_atom')
        assert mae is not None and math.isfinite(mae), f'results[{conv!r}] has no finite test_mae_per_atom: train with DataOptions(per_atom=True, ...)'

