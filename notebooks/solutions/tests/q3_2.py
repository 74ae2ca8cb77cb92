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

@test_case(points=None, hidden=True)
def test_two_runs_as_asked(results, EPOCHS):
    """The run folders' config.json: the right convolution under each key, per-atom energies with the element
    reference, EPOCHS epochs, and one split for both."""
    import json
    for conv, run in results.items():
        config = json.loads((run.out / 'config.json').read_text())
        assert config['model']['conv'] == conv, f"results[{conv!r}] was trained with conv={config['model']['conv']!r}"
        assert config['data']['per_atom'] and config['data']['element_ref'], 'train on energies per atom with the element reference: DataOptions(per_atom=True, element_ref=True)'
        assert config['train']['epochs'] == EPOCHS, f'train for EPOCHS = {EPOCHS} epochs'
    shared, gated = (results['shared'].split.test, results['gated'].split.test)
    assert sorted(shared.tolist()) == sorted(gated.tolist()), 'the two runs were tested on different crystals: use the same seed (TrainOptions(seed=0)) for both'

