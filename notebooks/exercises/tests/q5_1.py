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

