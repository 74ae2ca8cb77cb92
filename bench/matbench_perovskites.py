"""Matbench v0.1 ``matbench_perovskites``: train on four folds, test on the fifth, report MAE in eV per cell.

    .venv/bin/python bench/matbench_perovskites.py --folds 0 --preset matbench          # fold 0, ~1 h on 2 CPU cores
    .venv/bin/python bench/matbench_perovskites.py --folds 0 1 2 3 4 --preset best --accelerator gpu
    .venv/bin/python bench/matbench_perovskites.py --report runs/matbench               # summarise finished runs
    .venv/bin/python bench/matbench_perovskites.py --report runs/best runs/best-m4      # ensemble across variants

The folds are the official ones (``matbench_fold`` in ``castelli_perovskites.csv.gz``: the fold whose test set
holds the row). The validation set (10%) is carved from the four training folds with a fixed seed; the test fold
is never seen before the final evaluation with the best-validation checkpoint. Several ``--seeds`` are also
reported as an ensemble (mean prediction), and so are runs of one preset from several ``--report`` folders
(variants of it, e.g. trained with ``--max-nbr 4`` into another ``--out``). Every run is a plain ``cgcnn-lab train`` run folder under ``--out``.

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--folds", type=int, nargs="+", default=[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--preset", default="matbench", help="a cgcnn-lab preset (src/cgcnn_lab/presets.py)")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--out", default="runs/matbench")
    p.add_argument("--report", metavar="DIR", nargs="+",
                   help="only summarise the finished runs in DIR(s); runs of a preset and fold are also averaged")
    args, args.extra = p.parse_known_args()  # anything else goes to `cgcnn-lab train` (e.g. --n-conv 5)
    if args.report:
        report(*map(Path, args.report))
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
