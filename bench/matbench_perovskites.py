"""Matbench v0.1 ``matbench_perovskites``: train on four folds, test on the fifth, report MAE in eV per cell.

    .venv/bin/python bench/matbench_perovskites.py --folds 0 --preset matbench          # fold 0, ~1 h on 2 CPU cores
    .venv/bin/python bench/matbench_perovskites.py --folds 0 1 2 3 4 --preset best --accelerator gpu
    .venv/bin/python bench/matbench_perovskites.py --report runs/matbench               # summarise finished runs
    .venv/bin/python bench/matbench_perovskites.py --report runs/best runs/best-m4      # ensemble across variants
    .venv/bin/python bench/matbench_perovskites.py --report runs/best* runs/mb-* --select   # members chosen on validation

The folds are the official ones (``matbench_fold`` in ``castelli_perovskites.csv.gz``: the fold whose test set
holds the row). The validation set (10%) is carved from the four training folds with a fixed seed; the test fold
is never seen before the final evaluation with the best-validation checkpoint. Several ``--seeds`` are also
reported as an ensemble (mean prediction), and so are runs of one preset from several ``--report`` folders
(variants of it, e.g. trained with ``--max-nbr 4`` into another ``--out``). Every run is a plain ``cgcnn-lab train`` run folder under ``--out``.
``--select`` picks ensemble members honestly: a greedy forward selection that scores each candidate ensemble on the
validation rows (predicted once per run and kept in its folder as ``val_predictions.csv``) and only reports the
test MAE alongside. Runs with another validation set (another split seed) cannot be compared there and are left out.

Anchors (Matbench leaderboard, mean of 5 folds, eV/cell): coGN 0.0269, ALIGNN 0.0288, SchNet 0.0342, MEGNet 0.0352,
CGCNN v2019 (original code) 0.0452, Dummy 0.5660.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared/data/castelli_perovskites.csv.gz"


def run_name(preset: str, fold: int, seed: int) -> str:
    return f"{preset}-fold{fold}-seed{seed}"


def train_fold(args, fold: int, seed: int) -> None:
    from cgcnn_lab.cli import main as cli

    out = Path(args.out) / run_name(args.preset, fold, seed)
    if (out / "metrics.json").exists():
        print(f"{out}: done already, skipped")
        return
    argv = ["train", str(args.data), "--target", "e_form", "--unit", "eV", "--preset", args.preset,
            "--fold-col", "matbench_fold", "--test-fold", str(fold), "--val-ratio", "0.1", "--seed", str(seed),
            "--out", str(out), "--accelerator", args.accelerator, "--no-progress", *args.extra]
    if args.epochs:
        argv += ["--epochs", str(args.epochs)]
    if (out / "checkpoints/last.ckpt").exists():
        argv.append("--resume")
    if cli(argv):
        raise SystemExit(f"fold {fold} seed {seed} failed")


def ensemble_mae(runs) -> float:
    """Test MAE of the mean prediction of several runs on one fold (matched by crystal id)."""
    preds = [pd.read_csv(Path(run) / "test_results.csv").set_index("id") for run in runs]
    ids = preds[0].index
    mean_pred = np.mean([p.loc[ids, "prediction"].to_numpy() for p in preds], axis=0)
    return float(np.abs(mean_pred - preds[0]["target"].to_numpy()).mean())


def report(*outs: Path) -> pd.DataFrame:
    rows = []
    for metrics_file in sorted(f for out in outs for f in out.glob("*-fold*-seed*/metrics.json")):
        preset, fold, seed = metrics_file.parent.name.rsplit("-", 2)
        m = json.loads(metrics_file.read_text())
        config = json.loads((metrics_file.parent / "config.json").read_text())
        rows.append({"preset": preset, "fold": int(fold[4:]), "seed": int(seed[4:]), "mae": m["test_mae"],
                     "epochs": m["epochs_run"], "seconds": m["seconds"], "accelerator": config["train"]["accelerator"],
                     "run": str(metrics_file.parent)})
    if not rows:
        raise SystemExit(f"no finished runs under {', '.join(map(str, outs))}")
    runs = pd.DataFrame(rows).sort_values(["preset", "fold", "seed"])
    print("| run | preset | fold | seed | test MAE (eV/cell) | epochs | train time | accelerator |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs.itertuples():
        print(f"| {r.run} | {r.preset} | {r.fold} | {r.seed} | {r.mae:.4f} | {r.epochs} | {r.seconds:.0f} s "
              f"| {r.accelerator} |")
    print()
    groups = list(runs.groupby("preset"))
    if runs["preset"].nunique() > 1:  # e.g. `best` and `matbench` runs on different graphs: averaged together too
        groups.append(("all runs", runs))
    for preset, group in groups:
        per_fold = group.groupby("fold")["mae"].mean()
        line = (f"{preset}: single models, mean over folds {per_fold.mean():.4f} ± {per_fold.std(ddof=0):.4f} eV "
                f"({len(per_fold)} fold(s): {', '.join(f'{v:.4f}' for v in per_fold)})")
        ensembles = {fold: ensemble_mae(g["run"]) for fold, g in group.groupby("fold") if len(g) > 1}
        if ensembles:
            e = np.array(list(ensembles.values()))
            line += f"; ensemble of the runs {e.mean():.4f} ± {e.std():.4f} eV ({', '.join(f'{v:.4f}' for v in e)})"
        print(line)
    return runs


def validation_predictions(run: Path, data: Path, raw_cache: dict) -> pd.Series:
    """A run's predictions on its own validation rows, by crystal id (computed once, kept in the run folder)."""
    from cgcnn_lab.inference import resolve_checkpoint

    kept = run / "val_predictions.csv"
    if kept.exists() and kept.stat().st_mtime > resolve_checkpoint(run).stat().st_mtime:  # not older than the model
        return pd.read_csv(kept, dtype={"id": str}).set_index("id")["prediction"]
    from dataclasses import fields

    from cgcnn_lab.data.dataset import build_dataset
    from cgcnn_lab.data.sources import load_dataset
    from cgcnn_lab.inference import load_trained, predict_outputs
    from cgcnn_lab.training.options import TrainOptions
    from cgcnn_lab.training.splits import make_split

    config = json.loads((run / "config.json").read_text())
    opts = TrainOptions(**{f.name: config["train"][f.name] for f in fields(TrainOptions) if f.name in config["train"]})
    if "raw" not in raw_cache:
        raw_cache["raw"] = load_dataset(data, ["e_form"], extra_cols=["matbench_fold"])
    raw = raw_cache["raw"]
    trained = load_trained(run)
    dataset = build_dataset(raw, trained.graph_config, trained.encoding, config["data"].get("cache_dir"))
    split = make_split(dataset, raw, opts)
    values = predict_outputs(trained.model, dataset, trained.transform, subset=split.val)[:, 0]
    series = pd.Series(values, index=pd.Index(np.asarray(dataset.ids)[split.val].astype(str), name="id"),
                       name="prediction")
    series.to_frame().to_csv(kept)
    return series


def select(runs: pd.DataFrame, data: Path) -> None:
    """Greedy forward selection of ensemble members per fold, scored on validation (test MAE only reported)."""
    raw_cache: dict = {}
    truth = pd.read_csv(data, usecols=["id", "e_form"], dtype={"id": str}).set_index("id")["e_form"]
    for fold, group in runs.groupby("fold"):
        val = {r.run: validation_predictions(Path(r.run), data, raw_cache) for r in group.itertuples()}
        test = {r.run: pd.read_csv(Path(r.run) / "test_results.csv", dtype={"id": str}).set_index("id")
                for r in group.itertuples()}
        sets = {r: frozenset(val[r].index) for r in group["run"]}
        common = max(set(sets.values()), key=list(sets.values()).count)  # the validation set most runs share
        same = [r for r in group["run"] if sets[r] == common]
        reference = same[0]
        if len(same) < len(group):
            print(f"fold {fold}: left out (another validation set than {reference}): "
                  f"{', '.join(r for r in group['run'] if r not in same)}")
        val_ids, test_ids = val[reference].index, test[reference].index
        print(f"fold {fold}: greedy forward selection on {len(val_ids)} validation rows")
        greedy({r: val[r].loc[val_ids].to_numpy() for r in same}, truth.loc[val_ids].to_numpy(),
               {r: test[r].loc[test_ids, "prediction"].to_numpy() for r in same},
               test[reference].loc[test_ids, "target"].to_numpy())


def greedy(val: dict[str, np.ndarray], y_val: np.ndarray, test: dict[str, np.ndarray], y_test: np.ndarray) -> None:
    """Add, one at a time, the run whose addition gives the lowest validation MAE of the mean prediction."""
    def mae(preds: dict[str, np.ndarray], members: list[str], y: np.ndarray) -> float:
        return float(np.abs(np.mean([preds[m] for m in members], axis=0) - y).mean())

    chosen: list[str] = []
    best_val = np.inf
    print("| step | added | validation MAE | test MAE |")
    print("|---|---|---|---|")
    while len(chosen) < len(val):
        run = min((r for r in val if r not in chosen), key=lambda r: mae(val, [*chosen, r], y_val))
        chosen.append(run)
        v, t = mae(val, chosen, y_val), mae(test, chosen, y_test)
        print(f"| {len(chosen)} | {run} | {v:.4f}{' (best so far)' if v < best_val else ''} | {t:.4f} |")
        best_val = min(best_val, v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--folds", type=int, nargs="+", default=[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--preset", default="matbench", help="a cgcnn-lab preset (src/cgcnn_lab/training/presets.py)")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--out", default="runs/matbench")
    p.add_argument("--report", metavar="DIR", nargs="+",
                   help="only summarise the finished runs in DIR(s); runs of a preset and fold are also averaged")
    p.add_argument("--select", action="store_true",
                   help="with --report: choose ensemble members by greedy forward selection on validation")
    args, args.extra = p.parse_known_args()  # anything else goes to `cgcnn-lab train` (e.g. --n-conv 5)
    if args.report:
        runs = report(*map(Path, args.report))
        if args.select:
            select(runs, Path(args.data))
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    print(f"commit {commit}; {platform.machine()}, {platform.node()}; python {sys.version.split()[0]}")
    start = time.perf_counter()
    for fold in args.folds:
        for seed in args.seeds:
            train_fold(args, fold, seed)
    print(f"wall time {time.perf_counter() - start:.0f} s")
    report(Path(args.out))


if __name__ == "__main__":
    main()
