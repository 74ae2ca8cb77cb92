"""Throughput of cgcnn-lab on this machine: featurisation, training, inference, memory, FLOP rate.

    .venv/bin/python bench/speed.py [--shared ../shared] [--skip course-run] [--device cpu|cuda]

Sections (each prints one Markdown row; record them in BENCHMARKS.md with the commit):
  featurise   course set (670 CIF files) and the Castelli table (18,928 CIF strings): cold (fresh cache) and cached
  train       the Matbench-sized gated model of the original code (4 convs, 64 atom / 32 hidden features, batch 128,
              Adam) on 11,357 Castelli crystals: model loop (forward + backward + step) and the full `train()` path
              (Lightning, validation, checkpoints) — crystals per second per epoch; FLOPs counted by PyTorch's
              FlopCounterMode, against the fp32 matmul peak measured in the same run
  infer       predictions for all 18,928 crystals
  course-run  `cgcnn-lab train` on the course set end to end (featurise cold + 60 epochs), wall time
  optimizer-ab  fused against unfused Adam, epochs of the model loop interleaved
  original-featurise  the original code's featurisation (bench/original_cgcnn.py) against ours, cold, on the course
              set and 2,000 Castelli rows, one after the other in one process
  original-ab   the original code's training step (bench/original_cgcnn.py) against ours, epochs alternating, so
              the "x the original" needs no number measured on another day (CPU)
Peak memory is the process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cgcnn_lab.data.batching import PackedGraphs, PackedLoader
from cgcnn_lab.data.dataset import build_dataset
from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.data.featurize import featurize
from cgcnn_lab.data.graph import GraphConfig
from cgcnn_lab.data.sources import load_dataset
from cgcnn_lab.model.network import CGCNN, ModelConfig
from cgcnn_lab.training.module import make_optimizer

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN = 11_357  # the original code's 60% training split of the Castelli set
ORIGINAL = {"featurise course": 49.0, "featurise castelli": 131.0, "train": 1620.0}  # structures or crystals per second


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()
    except OSError:
        return "?"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def matmul_peak(device: str) -> float:
    """fp32 GFLOP/s of a 2048^3 matrix product, best of 5."""
    a = torch.randn(2048, 2048, device=device)
    best = float("inf")
    for _ in range(6):
        sync(device)
        start = time.perf_counter()
        a @ a
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best / 1e9


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_featurise(shared: Path) -> None:
    """Cold = parse + check + neighbour graphs + cache write, in a fresh cache; "read" is loading the files/table."""
    for reader in ("fast", "pymatgen"):
        for name, source, targets in [
            ("course", shared / "data/homework/perovskite_energy", []),
            ("castelli", shared / "data/castelli_perovskites.csv.gz", ["e_form"]),
        ]:
            start = time.perf_counter()
            raw = load_dataset(str(source), targets)
            read = time.perf_counter() - start
            with tempfile.TemporaryDirectory() as cache:
                cold = featurize(raw.entries, GraphConfig(), cache_dir=cache, fast_cif=reader == "fast")
                warm = featurize(raw.entries, GraphConfig(), cache_dir=cache)
            n = len(raw.entries)
            ratio = n / cold.seconds / ORIGINAL[f"featurise {name}"]
            total = n / (read + cold.seconds) / ORIGINAL[f"featurise {name}"]
            print(f"| featurise {name}, {reader} CIF reader | {n} structures | read {read:.2f} s | cold "
                  f"{cold.seconds:.2f} s ({n / cold.seconds:.0f}/s, {ratio:.1f}x the original; with reading "
                  f"{total:.1f}x) | cached {warm.seconds:.3f} s |")


def castelli(shared: Path):
    raw = load_dataset(str(shared / "data/castelli_perovskites.csv.gz"), ["e_form"])
    encoding = ElementEncoding.cgcnn92()
    return raw, encoding, build_dataset(raw, GraphConfig(), encoding)


MATBENCH_MODEL = ModelConfig(n_conv=4, atom_fea_len=64, h_fea_len=32)  # the original's Matbench-sized network


def train_steps(model, optimizer, batches) -> None:
    """The model loop: forward, MSE, backward, optimiser step for each batch."""
    for b in batches:
        loss = torch.nn.functional.mse_loss(model(b), b.y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def timed_epoch(model, optimizer, batches, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    train_steps(model, optimizer, batches)
    sync(device)
    return time.perf_counter() - start


def bench_train(shared: Path, device: str) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    _, encoding, dataset = castelli(shared)
    for collapse in (False, True):
        torch.manual_seed(0)
        packed = PackedGraphs(dataset.graphs, dataset.targets, device=device, collapse=collapse)
        batches = list(PackedLoader(packed, np.arange(N_TRAIN), 128, shuffle=True))
        model = CGCNN(MATBENCH_MODEL, encoding.table).to(device)
        optimizer = make_optimizer("adam", model.parameters(), 1e-3)  # the one train() uses (fused kernels)
        with FlopCounterMode(display=False) as counter:
            train_steps(model, optimizer, batches[:10])
        flops_per_epoch = counter.get_total_flops() / 10 * len(batches)
        timed_epoch(model, optimizer, batches, device)  # warm-up
        seconds = min(timed_epoch(model, optimizer, batches, device) for _ in range(3))
        peak = matmul_peak(device)
        rate = N_TRAIN / seconds
        print(f"| train model loop ({'merged edges' if collapse else 'plain edges'}) | {seconds:.2f} s/epoch | "
              f"{rate:.0f} crystals/s ({rate / ORIGINAL['train']:.2f}x the original) | "
              f"{flops_per_epoch / seconds / 1e9:.1f} GFLOP/s counted vs matmul peak {peak:.0f} GFLOP/s |")


def bench_optimizer_ab(shared: Path, device: str, repeats: int = 3) -> None:
    """Fused against unfused Adam in the model loop, epochs interleaved (steadier than separate runs)."""
    _, encoding, dataset = castelli(shared)
    packed = PackedGraphs(dataset.graphs, dataset.targets, device=device, collapse=True)
    batches = list(PackedLoader(packed, np.arange(N_TRAIN), 128, shuffle=True))
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for fused in (False, True):
            torch.manual_seed(0)
            model = CGCNN(MATBENCH_MODEL, encoding.table).to(device)
            optimizer = torch.optim.Adam(model.parameters(), 1e-3, fused=fused)
            timed_epoch(model, optimizer, batches, device)  # warm-up
            times[fused].append(timed_epoch(model, optimizer, batches, device))
    print(f"| optimizer A/B (model loop, merged edges) | unfused {', '.join(f'{t:.2f}' for t in times[False])} s | "
          f"fused {', '.join(f'{t:.2f}' for t in times[True])} s |")


def bench_train_cli(shared: Path, device: str, epochs: int = 8) -> None:
    """The real training path: Lightning, validation every epoch, best + last checkpoints, metrics.csv."""
    import pandas as pd

    from cgcnn_lab.training.options import DataOptions, TrainOptions
    from cgcnn_lab.training.run import train

    raw, _, dataset = castelli(shared)
    keep = {str(i) for i in dataset.ids[:N_TRAIN + 1262]}  # train + a 10% validation split
    raw.entries = [e for e in raw.entries if e.id in keep]
    with tempfile.TemporaryDirectory() as out:
        opts = TrainOptions(epochs=epochs, batch_size=128, optimizer="adam", lr=1e-3, scheduler="none", out=out,
                            val_ratio=0.1, test_ratio=0.0, progress=False, accelerator="gpu" if device != "cpu" else "cpu")
        train(DataOptions(source="castelli"), MATBENCH_MODEL, opts, raw=raw,
              log=lambda *a: None)
        seconds = np.diff(pd.read_csv(Path(out) / "metrics.csv")["seconds"].to_numpy())
    per_epoch = float(np.median(seconds))
    n_train = int(0.9 * len(keep))
    print(f"| train `train()` (Lightning, val + checkpoints) | {per_epoch:.2f} s/epoch | {n_train / per_epoch:.0f} "
          f"crystals/s ({n_train / per_epoch / ORIGINAL['train']:.2f}x the original) | median of epochs 2-{epochs} |")


def bench_infer(shared: Path, device: str) -> None:
    from cgcnn_lab.inference import predict_outputs
    from cgcnn_lab.targets import TargetTransform

    _, encoding, dataset = castelli(shared)
    model = CGCNN(MATBENCH_MODEL, encoding.table).to(device)
    predict_outputs(model, dataset, TargetTransform(), subset=np.arange(1000))
    sync(device)
    start = time.perf_counter()
    predict_outputs(model, dataset, TargetTransform(), batch_size=1024)
    sync(device)
    seconds = time.perf_counter() - start
    print(f"| infer | {len(dataset)} crystals | {seconds:.2f} s | {len(dataset) / seconds:.0f} crystals/s |")


def bench_original_featurise(shared: Path, device: str) -> None:
    """The original's featurisation and ours (fast reader, fresh cache) on the same structures, in the same minutes."""
    import json

    from original_cgcnn import featurise

    atom_init = json.loads((shared / "data/homework/perovskite_energy/atom_init.json").read_text())
    for name, source, targets, limit in [
        ("course", shared / "data/homework/perovskite_energy", [], None),
        ("castelli", shared / "data/castelli_perovskites.csv.gz", ["e_form"], 2000),
    ]:
        entries = load_dataset(str(source), targets).entries[:limit]
        start = time.perf_counter()
        featurise([e.content for e in entries], atom_init)
        original = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as cache:
            ours = featurize(entries, GraphConfig(), cache_dir=cache).seconds
        n = len(entries)
        print(f"| original-featurise {name} | {n} structures | original {original:.2f} s ({n / original:.0f}/s) | "
              f"cgcnn-lab cold {ours:.2f} s ({n / ours:.0f}/s) | **{original / ours:.1f}x** |")


def bench_original_ab(shared: Path, device: str, repeats: int = 3) -> None:
    """Epochs of the original's step and of our model loop, alternating in one process (batching included in both)."""
    from original_cgcnn import OriginalCGCNN, padded_features, train_epoch

    if device != "cpu":
        raise SystemExit("original-ab times the CPU")
    raw, encoding, ours = castelli(shared)
    padded = build_dataset(raw, GraphConfig(pad_to_max=True), encoding)
    train = np.arange(N_TRAIN)
    crystals = padded_features(padded.graphs.select(train), encoding.table)
    targets = torch.as_tensor(padded.targets[train], dtype=torch.float32)
    packed = PackedGraphs(ours.graphs, ours.targets, device=device, collapse=True)
    torch.manual_seed(0)
    original = OriginalCGCNN()
    original_opt = torch.optim.Adam(original.parameters(), 1e-3)  # the original's optimiser: plain Adam
    model = CGCNN(MATBENCH_MODEL, encoding.table)
    optimizer = make_optimizer("adam", model.parameters(), 1e-3)
    times: dict[str, list[float]] = {"original": [], "cgcnn-lab": []}
    for epoch in range(repeats + 1):  # the first round warms both up
        order = np.random.default_rng(epoch).permutation(N_TRAIN)
        start = time.perf_counter()
        train_epoch(original, original_opt, crystals, targets, 128, order)
        t_original = time.perf_counter() - start
        start = time.perf_counter()
        train_steps(model, optimizer, PackedLoader(packed, train, 128, shuffle=True, seed=epoch))
        t_ours = time.perf_counter() - start
        if epoch:
            times["original"].append(t_original)
            times["cgcnn-lab"].append(t_ours)
    o, c = np.median(times["original"]), np.median(times["cgcnn-lab"])
    print(f"| original-ab (model loop incl. batching, epochs alternating) | original {', '.join(f'{t:.2f}' for t in times['original'])} s "
          f"({N_TRAIN / o:.0f} crystals/s) | cgcnn-lab {', '.join(f'{t:.2f}' for t in times['cgcnn-lab'])} s "
          f"({N_TRAIN / c:.0f} crystals/s) | **{o / c:.2f}x** (medians) |")


def bench_course_run(shared: Path, extra: str = "", epochs: int = 60) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "cgcnn_lab.cli", "train", str(shared / "data/homework/perovskite_energy"),
               "--per-atom", "--unit", "eV", "--epochs", str(epochs), "--out", f"{tmp}/run", "--cache-dir", f"{tmp}/cache",
               "--no-progress", *extra.split()]
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
    if result.returncode:
        print(result.stdout[-2000:], result.stderr[-2000:])
        raise SystemExit("course run failed")
    mae = [line for line in result.stdout.splitlines() if "MAE per atom" in line]
    print(f"| course run (cold cache, {epochs} epochs{', ' + extra if extra else ''}, process start to exit) | {wall:.1f} s | {mae[-1].strip() if mae else ''} |")


SECTIONS = {"featurise": bench_featurise, "train": bench_train, "train-cli": bench_train_cli, "infer": bench_infer,
            "course-run": bench_course_run, "optimizer-ab": bench_optimizer_ab, "original-ab": bench_original_ab,
            "original-featurise": bench_original_featurise}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default=str(ROOT.parent / "shared"))
    p.add_argument("--only", nargs="*", choices=list(SECTIONS), help="run these sections only")
    p.add_argument("--skip", nargs="*", default=[], choices=list(SECTIONS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--course-epochs", type=int, default=60, help="epochs of the course-run section")
    p.add_argument("--course-args", default="", help="extra `cgcnn-lab train` options for course-run, e.g. "
                   "'--precision bf16-mixed'")
    args = p.parse_args()
    shared = Path(args.shared)
    print(f"commit {commit()}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device {args.device}")
    for name, fn in SECTIONS.items():
        if name in args.skip or (args.only and name not in args.only):
            continue
        if name == "course-run":
            fn(shared, args.course_args, args.course_epochs)
        elif name == "featurise":
            fn(shared)
        else:
            fn(shared, args.device)
    print(f"peak memory (max RSS of this process) {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
