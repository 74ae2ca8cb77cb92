"""The experiment lab: variant construction, identical splits, skipping finished work, the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cgcnn_lab.cli import main
from cgcnn_lab.data.demo import DEMO_TARGET, write_demo_dataset
from cgcnn_lab.experiments import Variant, apply, base_value, full_grid, load_sweep, one_at_a_time, parse_grid
from cgcnn_lab.model.config import ModelConfig
from cgcnn_lab.training.options import DataOptions, TrainOptions


def test_parse_grid_and_errors():
    grid = parse_grid(["conv=gated,shared", "max-nbr=4,8", "conv=none"])
    assert grid == {"conv": ["gated", "shared", "none"], "max_nbr": ["4", "8"]}
    with pytest.raises(ValueError, match="unknown factor"):
        parse_grid(["colour=red"])
    with pytest.raises(ValueError, match="FACTOR=VALUE"):
        parse_grid(["conv"])


def test_full_grid_and_one_at_a_time():
    grid = {"conv": ["gated", "shared"], "pool": ["mean", "max", "sum"]}
    assert len(full_grid(grid)) == 6
    data, model, opts = DataOptions(), ModelConfig(), TrainOptions()
    base = {k: base_value(k, data, model, opts) for k in grid}
    assert base == {"conv": "gated", "pool": "mean"}
    names = [v.name for v in one_at_a_time(grid, base)]
    assert names == ["base", "conv=shared", "pool=max", "pool=sum"]  # the base values are not repeated


def test_apply_changes_only_copies():
    data, model, opts = DataOptions(), ModelConfig(), TrainOptions()
    v = Variant((("max_nbr", "4"), ("batchnorm", "off"), ("lr", "0.01"), ("init_from", "none")))
    d, m, o = apply(v, data, model, opts)
    assert (d.max_neighbors, m.batchnorm, o.lr, o.init_from) == (4, False, 0.01, None)
    assert (data.max_neighbors, model.batchnorm, opts.lr) == (12, True, 2e-3)


def test_sweep_file(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('mode = "one-at-a-time"\nseeds = 2\n[grid]\nconv = ["gated", "none"]\nbatchnorm = [true, false]\n')
    sweep = load_sweep(path)
    assert sweep["grid"] == {"conv": ["gated", "none"], "batchnorm": ["true", "false"]}
    assert sweep["mode"] == "one-at-a-time" and sweep["seeds"] == 2
    yaml_path = tmp_path / "sweep.yaml"
    yaml_path.write_text("grid:\n  pool: [mean, sum]\n")
    assert load_sweep(yaml_path)["grid"] == {"pool": ["mean", "sum"]}
    (tmp_path / "bad.toml").write_text("seeds = 2\n")
    with pytest.raises(ValueError, match="grid"):
        load_sweep(tmp_path / "bad.toml")


def test_compare_end_to_end_skips_finished_and_shares_splits(tmp_path, capsys):
    table = write_demo_dataset(tmp_path / "demo.csv.gz", n=80, seed=3)
    out = tmp_path / "lab"
    argv = ["compare", str(table), "--target", DEMO_TARGET, "--unit", "eV/atom", "--grid", "conv=gated,none",
            "--mode", "one-at-a-time", "--seeds", "2", "--epochs", "2", "--n-conv", "1", "--atom-fea-len", "16",
            "--h-fea-len", "16", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(argv) == 0
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 4 and set(results.variant) == {"base", "conv=none"}
    assert {"test_mae", "unit", "seconds", "n_parameters", "epochs_run", "best_val_mae"} <= set(results.columns)
    for name in ("summary.md", "report.md", "test_error.png", "learning_curves.png", "parity_best.png"):
        assert (out / name).is_file(), name
    # identical test splits for every variant and seed
    test_ids = {tuple(sorted(pd.read_csv(Path(r) / "test_results.csv").id)) for r in results.run}
    assert len(test_ids) == 1
    # mean ± std in the summary are the seeds' mean and std
    base = results[results.variant == "base"].test_mae
    assert f"{base.mean():.4f} ± {base.std(ddof=0):.4f}" in (out / "summary.md").read_text()
    # seeds differ: different initialisation gives different numbers
    assert not np.isclose(base.iloc[0], base.iloc[1])

    capsys.readouterr()
    assert main(argv) == 0  # repeated: nothing is trained again
    assert "4 done already, 0 to train" in capsys.readouterr().out

    # a report of what has finished, training nothing (here: everything)
    capsys.readouterr()
    assert main([*argv, "--report-only"]) == 0
    assert "0 to train" in capsys.readouterr().out
    empty = tmp_path / "nothing"
    assert main([*argv[:-5], "--out", str(empty), "--cache-dir", str(tmp_path / "cache"), "--report-only"]) == 2
