"""--members K end to end: one `cgcnn-lab train --members K` against the same K members trained one after the other.

    .venv/bin/python bench/members_train.py [--members 8] [--epochs 3] [--rounds 1] [--threads 2] [--accelerator cpu]
                                            [--stacked-only]

Matbench ``matbench_perovskites`` fold 0 (Castelli set, ``--fold-col matbench_fold --test-fold 0``), the
``matbench`` preset, validation 10 % with split seed 0. "one after the other": K ordinary runs, ``--seed k`` for
k < K; "stacked": one run with ``--members K --seed 0`` (member k starts as ``--seed k`` does). Both go through the
command line's ``train`` in this process, featurised graphs cached beforehand, rounds alternating the order.
Reports member-epochs per second of the training loop (metrics.csv's last ``seconds``: epochs and validation) and
of the whole command (start to finished run folder), and the test MAE of each member and of the ensemble.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from cgcnn_lab.cli import main as cli

DATA = Path(__file__).resolve().parents[2] / "shared/data/castelli_perovskites.csv.gz"


def train(out: Path, args, *extra: str) -> dict:
    argv = ["train", str(args.data), "--target", "e_form", "--unit", "eV", "--preset", "matbench", "--fold-col",
            "matbench_fold", "--test-fold", "0", "--val-ratio", "0.1", "--split-seed", "0", "--epochs",
            str(args.epochs), "--threads", str(args.threads), "--accelerator", args.accelerator, "--no-progress",
            "--out", str(out), *extra]
    start = time.perf_counter()
    if cli(argv):
        raise SystemExit(f"{out}: training failed")
    wall = time.perf_counter() - start
    loop = float(pd.read_csv(out / "metrics.csv")["seconds"].iloc[-1])
    return {"wall": wall, "loop": loop, "metrics": json.loads((out / "metrics.json").read_text())}


def one_after_the_other(tmp: Path, args) -> dict:
    runs = [train(tmp / f"seed{k}", args, "--seed", str(k)) for k in range(args.members)]
    return {"wall": sum(r["wall"] for r in runs), "loop": sum(r["loop"] for r in runs),
            "maes": [r["metrics"]["test_mae"] for r in runs]}


def stacked(tmp: Path, args) -> dict:
    run = train(tmp / "stacked", args, "--seed", "0", "--members", str(args.members))
    maes = [s["mae"] for s in run["metrics"]["member_test_scores"]]
    return {"wall": run["wall"], "loop": run["loop"], "maes": maes, "ensemble": run["metrics"]["test_mae"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--stacked-only", action="store_true",
                   help="time the --members run alone (a GPU's short call: s per member-epoch)")
    args = p.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    print(f"load average before: {os.getloadavg()}")
    variants = {"one after the other": one_after_the_other, "stacked (--members)": stacked}
    if args.stacked_only:
        del variants["one after the other"]
    results: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        train(tmp / "warm", argparse.Namespace(**{**vars(args), "epochs": 1}))  # featurise into the cache once
        for r in range(args.rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                shutil.rmtree(tmp / "round", ignore_errors=True)
                results[name].append(variants[name](tmp / "round", args))
                print(f"round {r}: {name}: {results[name][-1]['loop']:.1f} s training loop, "
                      f"{results[name][-1]['wall']:.1f} s in all", flush=True)
    print(f"load average after: {os.getloadavg()}\n")
    k_epochs = args.members * args.epochs
    first = results[next(iter(variants))]
    base = {what: statistics.median(x[what] for x in first) for what in ("loop", "wall")}
    print(f"| {args.members} members x {args.epochs} epochs, {args.threads} threads, {args.accelerator} | training "
          "loop | member-epochs/s | speed-up | whole command | speed-up | member test MAE (eV) |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        loop, wall = (statistics.median(x[what] for x in rows) for what in ("loop", "wall"))
        maes = rows[-1]["maes"]
        ens = f"; ensemble {rows[-1]['ensemble']:.4f}" if "ensemble" in rows[-1] else ""
        print(f"| {name} | {loop:.1f} s | {k_epochs / loop:.2f} ({loop / k_epochs:.3f} s per member-epoch) | "
              f"{base['loop'] / loop:.2f}x | {wall:.1f} s | {base['wall'] / wall:.2f}x | "
              f"{statistics.mean(maes):.4f} ± {statistics.pstdev(maes):.4f}{ens} |")


if __name__ == "__main__":
    main()
