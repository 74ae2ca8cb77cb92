"""The Python API of the top-level package: the command line's verbs, with the same options."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

import cgcnn_lab
from cgcnn_lab.data.demo import DEMO_TARGET, write_demo_dataset
from cgcnn_lab.data.sources import DataError


def perovskites(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    structures, energies = [], []
    for k in range(n):
        a = 4.0 + 0.4 * rng.random()
        s = Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
                      [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        s = s * (2, 1, 1) if k % 2 else s
        structures.append(s)
        energies.append(len(s) * (-8.0 + 2.0 * (a - 4.2) ** 2))
    return structures, energies


SMALL = {"n_conv": 1, "atom_fea_len": 16, "h_fea_len": 16, "epochs": 2, "progress": False}


def test_train_predict_load_on_structures(tmp_path):
    structures, energies = perovskites(40)
    result = cgcnn_lab.train(structures, energies, per_atom=True, unit="eV", out=str(tmp_path / "run"),
                             cache_dir=str(tmp_path / "cache"), log=lambda *_: None, **SMALL)
    assert result.metrics["unit"] == "eV" and "test_mae_per_atom" in result.metrics
    pred = cgcnn_lab.predict(result.out, structures[:3])
    frame = pred.frame()
    assert list(frame.columns) == ["id", "prediction", "prediction_per_atom"] and len(pred) == 3
    assert pred.unit == "eV" and np.asarray(pred).shape == (3, 1)
    model = cgcnn_lab.load(result.out)
    assert model.spec.per_atom and model.spec.model.n_conv == 1


def test_train_on_a_table_with_a_preset_where_keywords_win(tmp_path):
    table = write_demo_dataset(tmp_path / "demo.csv.gz", n=60, seed=1)
    result = cgcnn_lab.train(table, targets=[DEMO_TARGET], preset="matbench", out=str(tmp_path / "m"),
                             cache_dir=str(tmp_path / "cache"), log=lambda *_: None, **SMALL)
    model = cgcnn_lab.load(result.out)
    assert model.spec.model.n_conv == 1 and model.spec.graph.max_neighbors == 8  # keyword; the preset's M
    pred = cgcnn_lab.predict(result.out, table, targets=[DEMO_TARGET], cache_dir=str(tmp_path / "cache"))
    assert pred.scores()["mae"] >= 0 and len(pred) == 60


def test_several_targets_keep_their_columns_and_missing_targets_are_refused(tmp_path):
    structures, energies = perovskites(30)
    y = np.c_[energies, np.asarray(energies) / 2]
    result = cgcnn_lab.train(structures, y, out=str(tmp_path / "two"), log=lambda *_: None, **SMALL)
    columns = pd.read_csv(result.out / "test_results.csv").columns
    assert {"target:target0", "prediction:target1"} <= set(columns)
    with pytest.raises(DataError, match="no targets"):
        cgcnn_lab.train(structures, out=str(tmp_path / "none"), log=lambda *_: None, **SMALL)


def test_a_preset_with_init_from_keeps_the_checkpoints_network(tmp_path):
    """The preset's architecture is not something the user asked for: fine-tuning takes the checkpoint's."""
    table = write_demo_dataset(tmp_path / "demo.csv.gz", n=60, seed=1)
    quiet = {"targets": [DEMO_TARGET], "cache_dir": str(tmp_path / "cache"), "log": lambda *_: None}
    base = cgcnn_lab.train(table, out=str(tmp_path / "base"), **quiet, **SMALL)
    tuned = cgcnn_lab.train(table, preset="matbench", init_from=str(base.out), epochs=1, progress=False,
                            out=str(tmp_path / "tuned"), **quiet)
    assert cgcnn_lab.load(tuned.out).spec.model.n_conv == SMALL["n_conv"]


def test_an_unknown_keyword_is_named():
    with pytest.raises(ValueError, match="epochz"):
        cgcnn_lab.train("data.csv", epochz=3)
