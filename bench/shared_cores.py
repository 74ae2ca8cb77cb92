"""Several cgcnn-lab trainings on one machine (BENCHMARKS.md, "Sharing the cores").

    .venv/bin/python bench/shared_cores.py [--together 3] [--epochs N] [--policies all default passive threads1 spin:N] [--out DIR]

Runs the course command (`cgcnn-lab train ../shared/data/homework/perovskite_energy --per-atom --unit eV`, the
default 200 epochs unless --epochs) once alone, then `--together` copies started at the same moment, for each
way of choosing threads, side by side in one invocation:
  default  what cgcnn-lab does by itself: each training takes cores / (trainings running) threads (cpu.py)
  all      --threads <all cores>: every process takes every core (what cgcnn-lab did before cpu.py)
  passive  all cores, OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep at once instead of spinning
  spin:N   all cores, GOMP_SPINCOUNT=N: idle threads spin N times, then sleep
  threads1 --threads 1
The graphs are cached first, so every run measures training alone. Prints the wall time of each run and the
ratio of the slowest run together to the run alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT.parent / "shared" / "data" / "homework" / "perovskite_energy"
CLI = [sys.executable, "-m", "cgcnn_lab.cli"]
ALL = str(os.cpu_count() or 1)
POLICIES = {"default": ({}, []), "all": ({}, ["--threads", ALL]),
            "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, ["--threads", ALL]), "threads1": ({}, ["--threads", "1"])}


def policy(name: str) -> tuple[dict, list]:
    """(environment, extra flags) of a policy name."""
    if name.startswith("spin:"):
        return {"GOMP_SPINCOUNT": name.split(":", 1)[1]}, ["--threads", ALL]
    if name not in POLICIES:
        raise SystemExit(f"unknown policy {name!r}: {', '.join(POLICIES)} or spin:N")
    return POLICIES[name]


def run_together(n: int, name: str, epochs: int | None, out: Path) -> list[float]:
    """Start ``n`` trainings at once; their wall times in seconds."""
    env_extra, flags = policy(name)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env |= env_extra
    procs = []
    for k in range(n):
        folder = out / f"{name.replace(':', '')}-{n}-{k}"
        shutil.rmtree(folder, ignore_errors=True)
        cmd = [*CLI, "train", str(COURSE), "--per-atom", "--unit", "eV", "--seed", str(k), "--out", str(folder),
               *flags, *(["--epochs", str(epochs)] if epochs else [])]
        log = open(folder.with_suffix(".log"), "w")  # noqa: SIM115  open while the process runs; closed below
        procs.append((time.perf_counter(), subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    times = []
    for start, proc, log in procs:
        if proc.wait() != 0:
            raise SystemExit(f"a run failed: see {log.name}")
        log.close()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--together", type=int, default=3)
    parser.add_argument("--epochs", type=int, help="default: cgcnn-lab's (200)")
    parser.add_argument("--policies", nargs="+", default=["all", "default"], help="see above")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-shared-cores")
    args = parser.parse_args()
    if not COURSE.is_dir():
        raise SystemExit(f"needs {COURSE}")
    args.out.mkdir(parents=True, exist_ok=True)
    subprocess.run([*CLI, "featurize", str(COURSE)], check=True, capture_output=True)  # graphs cached for all
    print(f"{os.cpu_count()} cores; course set, {args.epochs or 'default'} epochs; {args.together} together")
    print(f"{'policy':<10} {'alone s':>8} {'together s (each)':>28} {'slowest/alone':>14}")
    for name in args.policies:
        alone = run_together(1, name, args.epochs, args.out)[0]
        together = run_together(args.together, name, args.epochs, args.out)
        each = " ".join(f"{t:.1f}" for t in together)
        print(f"{name:<10} {alone:8.1f} {each:>28} {max(together) / alone:14.2f}", flush=True)


if __name__ == "__main__":
    main()
