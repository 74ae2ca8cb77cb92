"""The experiment lab: variant construction, identical splits, skipping finished work, the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cgcnn_lab.cli import main
from cgcnn_lab.data.demo import DEMO_TARGET, write_demo_dataset
from cgcnn_lab.experiments import (
    Variant,
    _headline,
    apply,
    base_value,
    full_grid,
    load_sweep,
    make_plots,
    one_at_a_time,
    parse_grid,
    ranking,
    summarize,
    summary_markdown,
    write_report,
)
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
    summary_md = (out / "summary.md").read_text()
    assert f"{base.mean():.4f} ± {base.std(ddof=0):.4f}" in summary_md
    # the variant selected (first row) is the one with the lowest mean best validation MAE
    best_on_val = results.groupby("variant").best_val_mae.mean().idxmin()
    assert f"| **{best_on_val}** (selected) |" in summary_md and "selected on validation" in summary_md
    assert "validation MAE, eV/atom (mean ± std)" in summary_md
    assert f"Best on validation: **{best_on_val}**" in (out / "report.md").read_text()
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


@pytest.fixture
def saved(monkeypatch) -> dict[str, Figure]:
    """File name -> the figure that would have been written there (nothing is written)."""
    figures: dict[str, Figure] = {}
    monkeypatch.setattr(Figure, "savefig", lambda self, path, *a, **k: figures.__setitem__(Path(path).name, self))
    return figures


def _results(rows: list[tuple[str, int, float, float]], per_atom: bool = True, unit: str | None = None,
             run_root: Path | None = None) -> pd.DataFrame:
    """A results frame as ``compare`` builds it: (variant, seed, best validation MAE, test MAE) per run."""
    test = "test_mae_per_atom" if per_atom else "test_mae"
    frame = pd.DataFrame([{"variant": v, "seed": s, "run": str((run_root or Path("runs")) / v / f"seed{s}"),
                           "best_val_mae": val, test: t, "seconds": 1.0, "n_parameters": 100, "epochs_run": 3,
                           "unit": None if unit is None else unit.removesuffix("/atom")}
                          for v, s, val, t in rows])
    if per_atom:
        frame["test_mae"] = frame[test] * 10  # totals: another ranking, never the one used
        frame["unit_per_atom"] = unit
    return frame


def test_best_variant_is_chosen_on_validation_not_test():
    # "good-val" has the lowest validation MAE but the worse test MAE: it is the selected one
    results = _results([("good-val", 0, 0.10, 0.50), ("good-val", 1, 0.12, 0.52),
                        ("good-test", 0, 0.20, 0.30), ("good-test", 1, 0.22, 0.28)])
    rank = ranking(results)
    assert (rank.select, rank.test, rank.on_validation) == ("best_val_mae", "test_mae_per_atom", True)
    summary = summarize(results)
    assert list(summary.index) == ["good-val", "good-test"]
    assert summary.loc["good-val", "test_mae_per_atom_mean"] == pytest.approx(0.51)  # test reported beside
    md = summary_markdown(summary, rank)
    assert "selected on validation" in md and "not used to choose" in md
    assert "| validation MAE per atom (mean ± std) | test MAE per atom (mean ± std) |" in md
    assert md.index("good-val") < md.index("good-test")
    assert "| **good-val** (selected) | 0.1100 ± 0.0100 | 0.5100 ± 0.0100 |" in md
    assert "None" not in md and "target units" not in md


def test_classification_is_chosen_on_validation_loss():
    results = pd.DataFrame({"variant": ["a", "b"], "seed": [0, 0], "best_val_loss": [0.4, 0.6],
                            "test_accuracy": [0.7, 0.9], "seconds": [1.0, 1.0], "n_parameters": [10, 10]})
    rank = ranking(results)
    assert (rank.select, rank.test) == ("best_val_loss", "test_accuracy")
    assert list(summarize(results).index) == ["a", "b"]  # lower validation loss wins over higher test accuracy
    assert "validation NLL loss" in summary_markdown(summarize(results), rank)


def test_without_validation_the_ranking_says_it_uses_test():
    results = _results([("a", 0, np.nan, 0.3), ("b", 0, np.nan, 0.2)], per_atom=False)
    rank = ranking(results)
    assert not rank.on_validation and rank.select == "test_mae"
    assert list(summarize(results).index) == ["b", "a"]
    assert "no validation metric" in summary_markdown(summarize(results), rank)


def test_headline_units():
    row = _results([("a", 0, 0.3041, 0.2367)], unit=None).iloc[0].to_dict()
    assert _headline(row) == "validation MAE per atom 0.3041, test MAE per atom 0.2367"
    row = _results([("a", 0, 0.3041, 0.2367)], unit="eV/atom").iloc[0].to_dict()
    assert _headline(row) == "validation MAE per atom 0.3041 eV/atom, test MAE per atom 0.2367 eV/atom"
    old = {**row, "unit": "target units", "unit_per_atom": "target units/atom"}  # metrics.json of older versions
    assert "target units" not in _headline(old)


def _fake_runs(root: Path, results: pd.DataFrame) -> None:
    """metrics.csv and test_results.csv of every run of ``results``: totals 10× the per-atom values."""
    for k, run in enumerate(results.run):
        Path(run).mkdir(parents=True)
        e = np.arange(1, 11)
        pd.DataFrame({"epoch": e, "val_mae": (0.5 + 0.01 * k) / e}).to_csv(Path(run) / "metrics.csv", index=False)
        t = np.array([-4.0, -5.0, -6.0])
        pd.DataFrame({"id": [1, 2, 3], "target": t * 10, "prediction": (t + 0.1) * 10, "target_per_atom": t,
                      "prediction_per_atom": t + 0.1}).to_csv(Path(run) / "test_results.csv", index=False)


@pytest.mark.parametrize("unit", [None, "eV/atom"])
def test_per_atom_figures_and_report(tmp_path, saved, unit):
    results = _results([("good-val", 0, 0.10, 0.50), ("good-test", 0, 0.20, 0.30)], unit=unit, run_root=tmp_path)
    _fake_runs(tmp_path, results)
    variants = [Variant((("conv", "x"),)), Variant((("conv", "y"),))]  # names only matter for the labels
    results["variant"] = [v.name for v in variants]
    summary = summarize(results)
    figures = make_plots(tmp_path, results, summary, variants)
    assert [f.name for f in figures] == ["test_error.png", "learning_curves.png", "parity_best.png"]
    suffix = f" ({unit})" if unit else ""
    # parity of the variant selected on validation, per atom like the ranking (not the totals)
    parity = saved["parity_best.png"].axes[0]
    assert parity.get_xlabel() == f"target{suffix}"
    assert np.allclose(parity.collections[0].get_offsets()[:, 0], [-4.0, -5.0, -6.0])
    legend = [t.get_text() for t in parity.get_legend().get_texts()]
    assert legend == [f"MAE 0.1{' ' + unit if unit else ''}"]
    assert "best on validation: conv=x" in parity.get_title()
    # validation curves: per-atom MAE with its unit or none, integer epochs
    curves = saved["learning_curves.png"].axes[0]
    saved["learning_curves.png"].canvas.draw()
    assert curves.get_ylabel() == f"validation MAE per atom{suffix}"
    assert all(float(t).is_integer() for t in curves.get_xticks())
    assert saved["test_error.png"].axes[0].get_xlabel() == f"test MAE per atom{suffix}"
    write_report(tmp_path, results, summary, figures, variants, [0], 1.0)
    report = (tmp_path / "report.md").read_text()
    assert "Best on validation: **conv=x**" in report and "The test split was not used to choose." in report
    assert "None" not in report and "target units" not in report
