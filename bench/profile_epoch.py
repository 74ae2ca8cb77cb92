"""Time (and optionally profile) one training epoch of the gated model on the course perovskites, without
Lightning: model forward + backward + optimiser step over the training-sized set.

    .venv/bin/python bench/profile_epoch.py [--data DIR] [--profile]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from cgcnn_lab.data.dataset import build_dataset
from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.data.graph import GraphConfig
from cgcnn_lab.data.sources import load_dataset
from cgcnn_lab.model.network import CGCNN, ModelConfig

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/homework/perovskite_energy"))
    p.add_argument("--profile", action="store_true", help="print the torch.profiler table of one epoch")
    p.add_argument("--plain", action="store_true", help="do not merge repeated edges")
    p.add_argument("--cpu-time", action="store_true",
                   help="report CPU time of this process instead of wall time (steadier on a busy machine, 1 thread)")
    p.add_argument("--bf16", action="store_true", help="forward under bf16 autocast (what --precision bf16-mixed does)")
    args = p.parse_args()
    raw = load_dataset(args.data)
    encoding = ElementEncoding.from_atom_init(raw.atom_init) if raw.atom_init else ElementEncoding.cgcnn92()
    dataset = build_dataset(raw, GraphConfig(), encoding)
    n_train = int(0.8 * len(dataset))
    torch.manual_seed(0)
    model = CGCNN(ModelConfig(), encoding.table)
    collapse = model.merges_graphs and not args.plain
    batches = list(dataset.loader(range(n_train), batch_size=64, shuffle=True, collapse=collapse))
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)

    clock = time.process_time if args.cpu_time else time.perf_counter

    def epoch() -> float:
        start = clock()
        for b in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                out = model(b)
            loss = ((out - b.y) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return clock() - start

    epoch()  # warm-up
    times = [epoch() for _ in range(3)]
    atoms = sum(b.num_nodes for b in batches)
    print(f"{n_train} crystals, {atoms} atoms: {min(times):.3f} s per epoch (best of 3), "
          f"{n_train / min(times):.0f} crystals/s, {torch.get_num_threads()} threads")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            epoch()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
