"""K-fold cross-validation, stratified splits, formula subsets and the confusion matrix of a classifier."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cgcnn_lab.cli import main
from cgcnn_lab.data.demo import DEMO_TARGET, write_demo_dataset
from cgcnn_lab.data.formula import parse_pattern, subset_mask
from cgcnn_lab.data.sources import DataError
from cgcnn_lab.training.splits import kfold_assignment


def test_formula_patterns_match_reduced_stoichiometry():
    assert parse_pattern("ABO3") == ({8: 3}, [1, 1])
    assert parse_pattern("A2B2O6") == ({8: 3}, [1, 1])  # reduced
    z = np.array([38, 22, 8, 8, 8,  38, 38, 22, 8, 8, 8, 8,  20, 77, 8, 8, 8, 20, 77, 8, 8, 8,  3, 3, 3, 8])
    ptr = np.array([0, 5, 12, 22, 26])  # SrTiO3, Sr2TiO4, Ca2Ir2O6, Li3O
    assert subset_mask("ABO3", z, ptr).tolist() == [True, False, True, False]
    assert subset_mask("A2BO4", z, ptr).tolist() == [False, True, False, False]
    assert subset_mask("A3O", z, ptr).tolist() == [False, False, False, True]
    for bad in ("abo3", "AAO3", "ABQq3", ""):
        with pytest.raises(DataError, match="report-subset"):
            parse_pattern(bad)


def test_kfold_assignment_tests_every_crystal_once_and_keeps_class_shares():
    labels = np.r_[np.zeros(64, int), np.ones(36, int)]
    folds = kfold_assignment(100, 5, seed=1, strata=labels)
    assert np.bincount(folds).tolist() == [20] * 5
    for k in range(5):
        assert 7 <= labels[folds == k].sum() <= 8  # 36 positives over 5 folds
    assert not np.array_equal(folds, kfold_assignment(100, 5, seed=2, strata=labels))
    with pytest.raises(DataError, match="folds"):
        kfold_assignment(10, 1)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return write_demo_dataset(tmp_path_factory.mktemp("cv") / "demo.csv.gz", n=90, seed=5)


def test_cross_validation_pools_every_crystal_once_and_resumes(table, tmp_path, capsys):
    median = float(pd.read_csv(table)[DEMO_TARGET].median())
    argv = ["train", str(table), "--target", DEMO_TARGET, "--task", "classification", "--threshold", str(median),
            "--folds", "3", "--epochs", "2", "--n-conv", "1", "--report-subset", "ABX3", "--out", str(tmp_path / "cv"),
            "--no-cache", "--threads", "1"]
    assert main(argv) == 0
    out = tmp_path / "cv"
    results = pd.read_csv(out / "test_results.csv")
    assert len(results) == 90 and results["id"].is_unique and sorted(results["fold"].unique()) == [0, 1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["folds"] == 3 and metrics["n_test"] == 90
    assert metrics["test_accuracy"] == pytest.approx((results["prediction"] == results["target"]).mean())
    assert np.array(metrics["test_confusion"]).sum() == 90
    assert metrics["n_test_ABX3"] == 90  # every generated cell is an ABX3 perovskite
    for k in range(3):  # each fold is an ordinary run whose test split is its fold
        fold = pd.read_csv(out / f"fold{k}" / "test_results.csv")
        assert set(fold["id"]) == set(results.loc[results["fold"] == k, "id"])
    assert (out / "confusion.png").is_file() and (out / "roc.png").is_file()
    printed = capsys.readouterr().out
    assert "cross-validation accuracy" in printed and "--ensemble" in printed
    before = (out / "fold1" / "metrics.json").stat().st_mtime
    assert main(argv) == 0  # finished folds are not retrained
    assert (out / "fold1" / "metrics.json").stat().st_mtime == before
    assert main(["predict", str(out), str(table), "--out", str(tmp_path / "p.csv")]) == 2
    assert "cross-validation" in capsys.readouterr().err
