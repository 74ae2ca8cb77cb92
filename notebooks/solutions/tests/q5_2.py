from otter.test_files import test_case

OK_FORMAT = False

name = "q5_2"
points = 2

@test_case(points=None, hidden=False)
def test_classifier(result):
    from cgcnn_lab.course import homework as hw
    metrics = hw.defined(result, 'result', 'Exercise 5.2').metrics
    for name in ('test_accuracy', 'test_auc'):
        assert name in metrics, f"no {name} in result.metrics: train with ModelConfig(task='classification', ...)"
        assert 0 <= metrics[name] <= 1, f'{name} = {metrics[name]} is not in [0, 1]'

@test_case(points=None, hidden=True)
def test_classifier_as_asked(result, threshold, EPOCHS):
    """The run folder's config.json: a two-class classifier on gap > threshold, trained for EPOCHS epochs."""
    import json
    config = json.loads((result.out / 'config.json').read_text())
    assert config['model']['task'] == 'classification' and config['model']['n_outputs'] == 2, "ModelConfig(task='classification', n_outputs=2)"
    used = config['data']['threshold']
    assert (used is None) == (threshold is None) and (used is None or abs(used - threshold) < 1e-09), f'DataOptions(threshold=threshold): the run used threshold {used}, the labels {threshold}'
    assert config['train']['epochs'] == EPOCHS, f'train for EPOCHS = {EPOCHS} epochs'

