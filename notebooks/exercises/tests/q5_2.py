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

