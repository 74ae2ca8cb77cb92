from otter.test_files import test_case

OK_FORMAT = False

name = "q5_1"
points = 2

@test_case(points=None, hidden=False)
def test_labels_and_baseline(labels, majority_accuracy, raw):
    import numpy as np
    from cgcnn_lab.course import homework as hw
    hw.check_shape(hw.defined(labels, 'labels', 'Exercise 5.1'), (len(raw.entries),), 'labels')
    assert set(np.unique(labels).tolist()) <= {0, 1}, 'labels are 0 (metal) or 1 (non-metal)'
    hw.check_close(hw.defined(majority_accuracy, 'majority_accuracy', 'Exercise 5.1'), np.bincount(np.asarray(labels, dtype=int)).max() / len(labels), 'majority accuracy')

@test_case(points=None, hidden=True)
def test_labels_at_the_threshold(labels, gaps, threshold):
    """A gap of exactly 0 is a metal: label = gap > threshold (strictly), and the label follows the gap."""
    import numpy as np
    from cgcnn_lab.course import homework as hw
    want = (gaps > threshold).astype(int) if threshold is not None else gaps.astype(int)
    at = np.isclose(gaps, threshold) if threshold is not None else np.zeros(len(gaps), dtype=bool)
    ones_at_threshold = int(np.asarray(labels)[at].sum())
    assert ones_at_threshold == 0, f'{ones_at_threshold} crystals with a gap of exactly {threshold} eV are labelled non-metal: a metal has no gap, so use gaps > threshold, not >='
    hw.check_close(labels, want, 'labels vs (gaps > threshold)')

