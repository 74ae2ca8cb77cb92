"""The command line as a user meets it: wall time of fresh `cgcnn-lab` processes, from process start to exit.

    .venv/bin/python bench/cli_speed.py [--shared ../shared] [--repeats 5]

Each command runs `--repeats` times in a new process (subprocess + time.perf_counter); the median and the range go
into one Markdown row for BENCHMARKS.md, with its target and pass/fail:
  --help             `cgcnn-lab --help` (import time of the CLI)
  predict (run)      a run folder this script trains first (course set, 1 epoch), graphs already cached
  predict (.pth.tar) the original CGCNN's pretrained formation-energy checkpoint, graphs already cached
  featurize          a fresh copy of the course set (670 CIF files) into a fresh empty cache, every repeat
  original           the original CGCNN's featurisation (bench/original_cgcnn.py `featurise`, what its
                     `CIFData.__getitem__` does) of the same fresh copy, in a fresh Python process importing what
                     its data.py imports; repeats alternate with ours, and original / ours is reported
All commands share one temporary CGCNN_LAB_CACHE (featurize gets its own per repeat); OMP_NUM_THREADS is untouched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "cgcnn-lab"  # the entry script a user runs, next to this interpreter
COURSE = "data/homework/perovskite_energy"
PRETRAINED = "pretrained/cgcnn-original/formation-energy-per-atom.pth.tar"
TARGETS = {"help": 0.5, "predict": 2.5, "featurize": 2.5, "ratio": 8.0}  # seconds; the ratio is a lower bound

# The original's whole featurisation, as one process: its data.py imports, then every crystal of id_prop.csv read
# from disk and featurised one by one (argv: bench dir, data dir).
ORIGINAL = """
import csv, functools, json, os, random, sys, warnings
import numpy as np
import torch
from pymatgen.core.structure import Structure
from torch.utils.data import DataLoader, Dataset
sys.path.insert(0, sys.argv[1])
from original_cgcnn import featurise
root = sys.argv[2]
atom_init = json.load(open(os.path.join(root, "atom_init.json")))
with open(os.path.join(root, "id_prop.csv")) as f:
    ids = [row[0] for row in csv.reader(f)]
for cif_id in ids:
    with open(os.path.join(root, cif_id + ".cif")) as f:
        featurise([f.read()], atom_init)
"""


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one process, start to exit; stops the benchmark if it fails."""
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode:
        print(result.stdout[-2000:], result.stderr[-2000:], sep="\n")
        raise SystemExit(f"failed ({result.returncode}): {' '.join(cmd)}")
    return seconds


def row(name: str, times: list[float], target: float | None) -> str:
    med = statistics.median(times)
    verdict = "—" if target is None else ("pass" if med <= target else "**fail**")
    return (f"| `{name}` | {med:.2f} | {min(times):.2f}–{max(times):.2f} | "
            f"{'—' if target is None else f'≤ {target} s'} | {verdict} |")


def repeat(cmd: list[str], env: dict[str, str], repeats: int, warm_up: bool = False) -> list[float]:
    if warm_up:
        timed(cmd, env)
    return [timed(cmd, env) for _ in range(repeats)]


def train_run(data: Path, out: Path, env: dict[str, str]) -> None:
    print(f"training the run folder for predict (1 epoch) in {out} ...", file=sys.stderr)
    timed([str(CLI), "train", str(data), "--per-atom", "--unit", "eV", "--epochs", "1", "--no-progress",
           "--out", str(out)], env)


def featurize_ab(data: Path, tmp: Path, env: dict[str, str], repeats: int) -> tuple[list[float], list[float]]:
    """Ours and the original alternating, each on a fresh copy of the data (ours also with a fresh empty cache)."""
    ours, original = [], []
    for i in range(repeats):
        for who, times in (("ours", ours), ("original", original)):
            copy = tmp / f"featurize-{who}-{i}" / data.name
            shutil.copytree(data, copy)  # not timed
            if who == "ours":
                cache = tmp / f"featurize-cache-{i}"
                cache.mkdir()
                times.append(timed([str(CLI), "featurize", str(copy)], {**env, "CGCNN_LAB_CACHE": str(cache)}))
            else:
                times.append(timed([sys.executable, "-c", ORIGINAL, str(ROOT / "bench"), str(copy)], env))
    return ours, original


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default=str(ROOT.parent / "shared"))
    p.add_argument("--repeats", type=int, default=5, help="runs of each command (default 5)")
    args = p.parse_args()
    shared = Path(args.shared).resolve()
    data, pretrained = shared / COURSE, shared / PRETRAINED
    missing = [str(path) for path in (data / "id_prop.csv", pretrained) if not path.exists()]
    if missing:
        raise SystemExit(f"shared data missing: {', '.join(missing)} (pass --shared DIR)")
    if not CLI.exists():
        raise SystemExit(f"no cgcnn-lab entry script next to {sys.executable} (install the package in this venv)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="cli-speed-") as name:
        tmp = Path(name)
        env = {**os.environ, "CGCNN_LAB_CACHE": str(tmp / "cache")}
        csv = str(tmp / "predictions.csv")
        rows.append(row("cgcnn-lab --help", repeat([str(CLI), "--help"], env, args.repeats), TARGETS["help"]))
        train_run(data, tmp / "run", env)
        for label, model in (("RUN", tmp / "run"), (PRETRAINED.rsplit("/", 1)[1], pretrained)):
            times = repeat([str(CLI), "predict", str(model), str(data), "--out", csv], env, args.repeats, warm_up=True)
            rows.append(row(f"cgcnn-lab predict {label} perovskite_energy (cached)", times, TARGETS["predict"]))
        ours, original = featurize_ab(data, tmp, env, args.repeats)
    rows.append(row("cgcnn-lab featurize perovskite_energy (fresh copy, empty cache)", ours, TARGETS["featurize"]))
    rows.append(row("original CGCNN featurisation, same copy (fresh process)", original, None))
    ratios = [o / c for o, c in zip(original, ours)]
    speedup = statistics.median(original) / statistics.median(ours)
    rows.append(f"| featurize: original / ours | {speedup:.1f}x (medians) | {min(ratios):.1f}x–{max(ratios):.1f}x "
                f"(pairs) | ≥ {TARGETS['ratio']:.0f}x | {'pass' if speedup >= TARGETS['ratio'] else '**fail**'} |")
    print(f"\n{args.repeats} repeats each, fresh processes, wall seconds start to exit ({CLI})\n")
    print("| command | median s | range s | target | result |\n|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
