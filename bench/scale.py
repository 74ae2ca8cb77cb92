"""Memory at scale: cache bytes per edge and peak memory of featurising and training on a large dataset.

    .venv/bin/python bench/scale.py castelli                 # the full Castelli set (18,928 cells)
    .venv/bin/python bench/scale.py synthetic --n 200000     # 200,000 strained copies of Castelli cells

``synthetic`` writes a table of N CIFs (Castelli cells with random strains and atomic displacements, so every
structure is distinct), featurises it into a fresh cache (parallel processes), then trains one epoch of the
default gated model on it, with the graphs loaded into memory and streamed from the memory-mapped cache
(``--stream``). Each stage runs in its own process; its peak memory is the maximum resident set size of that
process (and of its featurisation workers), read from ``getrusage``. Pages of the mapped cache count in the
resident set but are file-backed: the kernel drops them under pressure instead of running out of memory.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CASTELLI = ROOT.parent / "shared/data/castelli_perovskites.csv.gz"


def peak_gb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    return own, children


def synthetic_table(n: int, out: Path, seed: int = 0) -> Path:
    """N distinct cells: Castelli structures with random strain (±3%) and displacements (0.05 Å)."""
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifWriter

    frame = pd.read_csv(CASTELLI, usecols=["id", "cif", "e_form"])
    rng = np.random.default_rng(seed)
    base = [Structure.from_str(c, fmt="cif") for c in frame["cif"].iloc[:500]]
    rows = []
    for i in range(n):
        k = int(rng.integers(len(base)))
        s = base[k].copy()
        s.apply_strain(rng.uniform(-0.03, 0.03, 3))
        s.perturb(0.05)
        rows.append({"id": f"syn_{i}", "e_form": float(frame["e_form"].iloc[k]) + rng.normal(0, 0.05),
                     "cif": str(CifWriter(s))})
    pd.DataFrame(rows).to_csv(out, index=False)
    return out


def _status_gb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def stage_featurise(table: Path, target: str, cache: str) -> None:
    from cgcnn_lab.data.featurize import featurize
    from cgcnn_lab.data.graph import GraphConfig
    from cgcnn_lab.data.sources import load_dataset

    start = time.perf_counter()
    raw = load_dataset(str(table), [target])
    loaded = time.perf_counter() - start
    graphs = featurize(raw.entries, GraphConfig(), cache_dir=cache)
    seconds = time.perf_counter() - start
    folders = [p for p in Path(cache, "graphs").iterdir() if not p.name.startswith(".")]
    size = sum(f.stat().st_size for p in folders for f in p.iterdir())
    edges = len(graphs.distance)
    own, children = peak_gb()
    print(f"| featurise | {len(graphs)} structures, {edges:,} edges | {seconds:.0f} s (table read {loaded:.0f} s) | "
          f"cache {size / 1e6:.0f} MB = {size / edges:.1f} bytes/edge | peak RSS {own:.2f} GB "
          f"(workers {children:.2f} GB) |")


def stage_train(table: Path, target: str, cache: str, epochs: int, stream: str) -> None:
    from cgcnn_lab.model.network import ModelConfig
    from cgcnn_lab.training.options import DataOptions, TrainOptions
    from cgcnn_lab.training.run import train

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        opts = TrainOptions(epochs=epochs, batch_size=128, out=out, progress=False)
        data = DataOptions(source=str(table), targets=[target], cache_dir=cache,
                           stream={"auto": None, "on": True, "off": False}[stream])
        lines = []
        train(data, ModelConfig(), opts, log=lines.append)
        own, _ = peak_gb()
        streamed = any("streaming" in line for line in lines)
        print(f"| train {epochs} epoch(s), {'streamed' if streamed else 'in memory'} | default gated model | "
              f"{time.perf_counter() - start:.0f} s | peak RSS {own:.2f} GB (of it mapped cache files now: "
              f"{_status_gb('RssFile'):.2f} GB) |")


def measure(table: Path, target: str, epochs: int, streams: list[str]) -> None:
    """Each stage in its own process, so each peak is its own."""
    with tempfile.TemporaryDirectory() as cache:
        run = lambda *a: subprocess.run([sys.executable, __file__, "_stage", *map(str, a)], check=True)
        run("featurise", table, target, cache)
        for stream in streams:
            run("train", table, target, cache, epochs, stream)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["castelli", "synthetic"])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--table", help="reuse a synthetic table written before")
    p.add_argument("--stream", nargs="+", default=["off", "on"], choices=["auto", "on", "off"],
                   help="training runs to measure: graphs loaded into memory (off) and/or streamed from the cache (on)")
    if sys.argv[1:2] == ["_stage"]:
        stage, table, target, cache, *rest = sys.argv[2:]
        if stage == "featurise":
            stage_featurise(Path(table), target, cache)
        else:
            stage_train(Path(table), target, cache, int(rest[0]), rest[1])
        return
    args = p.parse_args()
    if args.what == "castelli":
        measure(CASTELLI, "e_form", args.epochs, args.stream)
        return
    table = Path(args.table) if args.table else Path(tempfile.gettempdir()) / f"synthetic-{args.n}.csv.gz"
    if not table.exists():
        start = time.perf_counter()
        synthetic_table(args.n, table)
        print(f"wrote {table} ({args.n} structures) in {time.perf_counter() - start:.0f} s")
    measure(table, "e_form", args.epochs, args.stream)


if __name__ == "__main__":
    main()
