from otter.test_files import test_case

OK_FORMAT = False

name = "q5_5"
points = 2

@test_case(points=None, hidden=False)
def test_oxide_classifier(HAVE_OXIDES, result_ox):
    from cgcnn_lab.course import homework as hw
    assert HAVE_OXIDES, 'perovskite_vs_oxides.csv.gz is missing: this exercise needs the course data (CGCNN_DATA)'
    metrics = hw.defined(result_ox, 'result_ox', 'Exercise 5.5').metrics
    assert 'test_accuracy' in metrics, "train a classifier: ModelConfig(task='classification', n_outputs=2, ...)"
    assert metrics.get('n_test_ABO3', 0) > 0 and 'test_accuracy_ABO3' in metrics, "no ABO3 scores in the metrics: TrainOptions(..., report_subset=['ABO3'])"

@test_case(points=None, hidden=True)
def test_oxide_classifier_as_asked(result_ox, raw_ox, EPOCHS):
    """The run folder: the oxides (all of raw_ox split three ways), EPOCHS epochs, test probabilities in [0, 1]."""
    import json
    import pandas as pd
    config = json.loads((result_ox.out / 'config.json').read_text())
    assert config['train']['epochs'] == EPOCHS, f'train for EPOCHS = {EPOCHS} epochs'
    split = result_ox.split
    assert len(split.train) + len(split.val) + len(split.test) == len(raw_ox.entries), 'train on raw_ox'
    p1 = pd.read_csv(result_ox.out / 'test_results.csv')['p1']
    assert p1.between(0, 1).all(), 'test_results.csv: p1 is a probability'

