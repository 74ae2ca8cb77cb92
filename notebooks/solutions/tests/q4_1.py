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

@test_case(points=None, hidden=True)
def test_seed_and_setting_are_used(results):
    """Each seed gives another split and initialisation, and each setting another model: their MAEs differ."""
    import numpy as np
    for (factor, label), runs in results.groupby(['factor', 'setting'], sort=False):
        maes = runs['mae'].to_numpy(dtype=float)
        assert not np.isclose(maes.min(), maes.max(), rtol=1e-05, atol=1e-08), f'{factor}, {label}: every seed gives the same MAE ({maes[0]:.5f}): pass the seed to TrainOptions(seed=seed)'
    for factor, runs in results.groupby('factor', sort=False):
        by_setting = runs.groupby('setting', sort=False)['mae'].apply(lambda m: m.to_numpy(dtype=float))
        baseline = by_setting.iloc[0]
        for label, maes in by_setting.iloc[1:].items():
            assert not np.allclose(maes, baseline, rtol=1e-05, atol=1e-08), f"{label!r} gives the baseline's MAEs: the setting is not used (max_neighbors goes to DataOptions, the other keys to ModelConfig(**BASE_MODEL, **setting))"

