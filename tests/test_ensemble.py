"""Ensembles: members chosen and their spread calibrated on validation, then used as one model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import cgcnn_lab
from cgcnn_lab.cli import main
from cgcnn_lab.data.demo import DEMO_TARGET, write_demo_dataset
from cgcnn_lab.ensembles import conformal_factor, coverage, greedy


def test_greedy_selection_prefers_the_member_that_fits_validation():
    y = np.linspace(0, 1, 50)[:, None]
    good, biased, noisy = y + 0.01, y + 0.5, y + np.random.default_rng(0).normal(0, 0.3, y.shape)
    chosen = greedy(np.stack([biased, noisy, good]), y, 3)
    assert chosen[0] == 2 and chosen.count(2) >= 2


def test_the_conformal_factors_give_their_coverage_on_new_crystals():
    rng = np.random.default_rng(1)
    members = rng.normal(0, 1, (5, 8000, 1))
    sigma = members.std(0)
    y = members.mean(0) + 3.0 * sigma * rng.standard_t(3, (8000, 1))  # heavy-tailed errors, 3x the spread
    calibration, new = slice(0, 4000), slice(4000, 8000)
    k68, k95 = (conformal_factor(members[:, calibration], y[calibration], level) for level in (0.6827, 0.9545))
    assert k95[0] > 2 * k68[0]  # heavier tails than a normal error: the 95 % band is wider than 2σ
    inside = coverage(y[new] - members[:, new].mean(0), sigma[new] * k68, k95 / k68)
    assert inside["within_1sigma"] == pytest.approx(0.683, abs=0.03)
    assert inside["within_95band"] == pytest.approx(0.954, abs=0.015)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Three seeds of a small model on one split of a generated table."""
    tmp = tmp_path_factory.mktemp("ens")
    table = write_demo_dataset(tmp / "demo.csv.gz", n=120, seed=2)
    runs = []
    for seed in range(3):
        result = cgcnn_lab.train(str(table), targets=[DEMO_TARGET], unit="eV/atom", seed=seed, split_seed=0,
                                 n_conv=1, atom_fea_len=16, h_fea_len=16, epochs=3, progress=False,
                                 out=str(tmp / f"seed{seed}"), cache_dir=str(tmp / "cache"), log=lambda *_: None)
        runs.append(result.out)
    return table, runs, tmp


def test_an_ensemble_is_calibrated_on_validation_and_predicts_as_a_model(members, capsys):
    table, runs, tmp = members
    out = tmp / "ensemble"
    argv = ["ensemble", str(table), "--target", DEMO_TARGET, "--members", *map(str, runs), "--out", str(out),
            "--cache-dir", str(tmp / "cache")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "within ±1σ" in printed and "95.45 % band" in printed and "calibration.png" in printed
    record = json.loads((out / "ensemble.json").read_text())
    assert record["counts"] == [1, 1, 1] and record["scale"][0] > 0 and record["band95"][0] >= 1
    calibrated = record["test_calibrated"]
    assert 0 <= calibrated["within_1sigma"] <= calibrated["within_95band"] <= 1
    assert (out / "calibration.png").stat().st_size > 0
    # predict with the folder: the members' mean, their spread times the scale
    assert main(["predict", str(out), str(table), "--target", DEMO_TARGET, "--out", str(tmp / "p.csv"),
                 "--cache-dir", str(tmp / "cache")]) == 0
    by_folder = pd.read_csv(tmp / "p.csv")
    assert main(["predict", str(runs[0]), str(table), "--target", DEMO_TARGET, "--ensemble", *map(str, runs[1:]),
                 "--out", str(tmp / "raw.csv"), "--cache-dir", str(tmp / "cache")]) == 0
    by_list = pd.read_csv(tmp / "raw.csv")
    np.testing.assert_allclose(by_folder["prediction"], by_list["prediction"], rtol=1e-6)
    np.testing.assert_allclose(by_folder["prediction_std"], by_list["prediction_std"] * record["scale"][0], rtol=1e-6)


def test_members_of_different_splits_are_refused(members, tmp_path, capsys):
    table, runs, tmp = members
    other = cgcnn_lab.train(str(table), targets=[DEMO_TARGET], seed=5, n_conv=1, atom_fea_len=16, h_fea_len=16,
                            epochs=1, progress=False, out=str(tmp_path / "other"), cache_dir=str(tmp / "cache"),
                            log=lambda *_: None)
    argv = ["ensemble", str(table), "--target", DEMO_TARGET, "--members", str(runs[0]), str(other.out),
            "--out", str(tmp_path / "e")]
    assert main(argv) == 2
    assert "validated on other crystals" in capsys.readouterr().err
    assert not (tmp_path / "e" / "ensemble.json").exists()


def test_a_member_twice_or_members_without_spread_are_refused(members, tmp_path, capsys):
    table, runs, tmp = members
    argv = ["ensemble", str(table), "--target", DEMO_TARGET, "--out", str(tmp_path / "e"), "--cache-dir",
            str(tmp / "cache"), "--members"]
    assert main([*argv, str(runs[0]), str(runs[0]), str(runs[1])]) == 2
    assert "listed twice" in capsys.readouterr().err
    import shutil

    shutil.copytree(runs[0], tmp_path / "copy")
    assert main([*argv, str(runs[0]), str(tmp_path / "copy")]) == 2
    assert "no spread to calibrate" in capsys.readouterr().err
