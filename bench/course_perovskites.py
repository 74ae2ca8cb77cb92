"""Benchmark on the course perovskites: featurisation (cold, cached), seconds per epoch, test MAE per atom.

    .venv/bin/python bench/course_perovskites.py [--data ../shared/data/homework/perovskite_energy] [--seeds 0]

Runs exactly what the README tells a user to run (`cgcnn-lab train DATA --per-atom --seed S` with defaults) in a
fresh cache folder, and prints a Markdown table row per seed for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def featurisation_times(data: Path, cache: Path) -> tuple[float, float, int]:
    from cgcnn_lab.data.dataset import build_dataset
    from cgcnn_lab.data.elements import ElementEncoding
    from cgcnn_lab.data.graph import GraphConfig
    from cgcnn_lab.data.sources import load_dataset

    times = []
    for _ in range(2):  # cold, then from cache
        t = time.perf_counter()
        raw = load_dataset(data)
        ds = build_dataset(raw, GraphConfig(), ElementEncoding.from_atom_init(raw.atom_init) if raw.atom_init else None,
                           cache_dir=cache)
        times.append(time.perf_counter() - t)
    return times[0], times[1], len(ds)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/homework/perovskite_energy"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--extra", default="", help="extra train options, e.g. '--element-ref off'")
    args = p.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        sys.exit(f"{data} not found (the course data lives in ../shared/data/homework/perovskite_energy)")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        cold, warm, n = featurisation_times(data, Path(tmp) / "cache")
        print(f"featurisation of {n} structures: cold {cold:.2f} s ({n / cold:.0f}/s), cached {warm:.3f} s")
        maes = []
        for seed in args.seeds:
            out = Path(tmp) / f"run{seed}"
            cmd = [sys.executable, "-m", "cgcnn_lab.cli", "train", str(data), "--per-atom", "--unit", "eV",
                   "--seed", str(seed), "--out", str(out), "--cache-dir", str(Path(tmp) / "cache"), "--no-progress",
                   *args.extra.split()]
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t
            m = json.loads((out / "metrics.json").read_text())
            epochs = m["epochs_run"]
            maes.append(m["test_mae_per_atom"])
            print(f"| {commit} | seed {seed} | {m['test_mae_per_atom']:.4f} eV/atom | {m['test_mae']:.3f} eV | "
                  f"{epochs} epochs | {m['seconds'] / max(epochs, 1):.2f} s/epoch | {wall:.0f} s wall | "
                  f"{platform.processor() or platform.machine()} |")
        if len(maes) > 1:
            print(f"test MAE per atom over {len(maes)} seeds: {np.mean(maes):.4f} ± {np.std(maes):.4f} eV/atom")
        print("command:", " ".join(cmd[2:]))


if __name__ == "__main__":
    main()
