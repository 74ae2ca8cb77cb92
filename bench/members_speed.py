"""Can K ensemble members trained in one process, as batched weights, beat K members trained one after the other?

    .venv/bin/python bench/members_speed.py [--batches 30] [--rounds 5] [--threads 2 1] [--members 1 4 8]
                                            [--no-profile] [--no-vmap] [--device cuda] [--max-nbr 8]
                                            [--against OLD_MEMBERS_PY ...] [--eval]

The "profile first" step of ``--members K``. Real training batches: Castelli perovskites, Matbench fold-0 training
crystals (``matbench_fold != 0``), featurised by the package with 8 neighbours (``--max-nbr``), ``--batches`` shuffled batches of 64
merged graphs (``collapse=True``, as training builds them). The ``matbench`` network (gated, 4 convs, 64 atom /
32 hidden features, cgcnn92 element table), L1 loss, fused AdamW (``training.module.make_optimizer``).

* baseline: K separate ``CGCNN`` models (the package's, fused gated edge step), each forward + L1 loss + backward +
  AdamW step over the batches, one member after the other;
* A, "stacked" (composite autograd) and "stacked-fused" (the edge step as one autograd.Function, as
  convs.py fuses it): the package's ``model/members.py:MemberStack`` (what ``--members K`` trains; it began here as a
  prototype), the same function with a leading member dimension K on every weight
  and on the features ([K, N, F]): batched matmuls (bmm/baddbmm, shared inputs broadcast), one ``embedding_bag``
  for all members' edge gathers, batch-norm statistics per member; one fused AdamW over the
  stacked tensors. Checked against separate models with the same weights (outputs in eval and training mode,
  gradients in training mode);
* B, "vmap": ``torch.func.stack_module_state`` + ``functional_call`` + ``torch.vmap`` over the package's CGCNN
  (reports what fails).

Measures member-steps per second (K steps per batch) for K in ``--members`` at each thread count, alternating
baseline and candidates round by round in this process (another job may share the machine), and reports medians,
then the torch.profiler top operators for K = 8 stacked against 8 sequential members.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

import cgcnn_lab
from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.model.config import ModelConfig
from cgcnn_lab.model.members import MemberStack
from cgcnn_lab.model.network import CGCNN
from cgcnn_lab.training.module import make_optimizer

DATA = Path(os.environ.get("DATA") or Path(__file__).resolve().parents[2] / "shared/data/castelli_perovskites.csv.gz")
if not DATA.exists():
    DATA = Path("/work/shared/data/castelli_perovskites.csv.gz")
MATBENCH = {"conv": "gated", "n_conv": 4, "atom_fea_len": 64, "h_fea_len": 32}  # presets.py "matbench"
LR, WEIGHT_DECAY = 2e-3, 0.01


# ---------------------------------------------------------------------------------------------------- data
DEVICE = torch.device("cpu")


def sync() -> None:
    """Wait for the device (timings on a GPU would otherwise measure kernel launches only)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def load_batches(n_batches: int, batch_size: int = 64, seed: int = 0, max_nbr: int = 8):
    dataset = cgcnn_lab.featurize(str(DATA), targets=["e_form"], max_neighbors=max_nbr)
    folds = pd.read_csv(DATA, usecols=["id", "matbench_fold"]).set_index("id")["matbench_fold"]
    train = np.flatnonzero(folds.loc[dataset.ids].to_numpy() != 0)
    y = dataset.targets
    targets = (y - y[train].mean(0)) / y[train].std(0)  # standardised, as training learns it (roughly)
    loader = dataset.loader(train, batch_size=batch_size, shuffle=True, seed=seed, collapse=True, targets=targets)
    batches = []
    for b in loader:
        batches.append(b.to(DEVICE))
        if len(batches) == n_batches:
            break
    return dataset, len(train), batches


def build_models(k: int, table, seed: int = 0) -> list[CGCNN]:
    models = []
    for m in range(k):
        torch.manual_seed(seed + m)  # members differ in initialisation only
        models.append(CGCNN(ModelConfig(**MATBENCH), table).to(DEVICE).train())
    return models


def stacked_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ over members of each member's L1 loss: member gradients stay independent."""
    return (out - y.unsqueeze(0)).abs().mean(dim=(1, 2)).sum()


# ---------------------------------------------------------------------------------------------------- candidate B
def try_vmap(models: list[CGCNN], batch) -> list[str]:
    """What torch.func can do with the package's CGCNN: eval forward, training forward, forward + backward."""
    from torch.func import functional_call, stack_module_state, vmap

    notes = []
    base = models[0]
    params, buffers = stack_module_state(models)

    def run(p, b):
        return functional_call(base, (p, b), (batch,))

    for mode in ("eval", "train"):
        base.train(mode == "train")
        try:
            out = vmap(run)(params, buffers)
            ref = torch.stack([m.train(mode == "train")(batch) for m in models])
            notes.append(f"vmap {mode} forward: OK, max |diff| vs separate models {float((out - ref).abs().max()):.1e}")
            if mode == "train":
                stacked_loss(out, batch.y).backward()
                notes.append("vmap train backward: OK")
        except Exception as err:  # noqa: BLE001 - the point is to report it
            msg = str(err).strip().splitlines()[0][:160]
            notes.append(f"vmap {mode}: FAILS: {type(err).__name__}: {msg}")
        finally:
            for m in models:
                m.train()
    return notes


# ---------------------------------------------------------------------------------------------------- checks
def check_equal(models: list[CGCNN], batches, fused: bool) -> list[str]:
    import copy

    separate = [copy.deepcopy(m) for m in models]
    stacked = MemberStack(separate)
    if not fused:  # the composite edge step: what non-softplus activations and no batch norm use
        stacked._compiled_step = lambda x: False
    b = batches[0]
    lines = []
    with torch.no_grad():
        for m in separate:
            m.eval()
        stacked.eval()
        ref = torch.stack([m(b) for m in separate])
        out = stacked(b)
        lines.append(f"eval forward, {len(models)} members: max |stacked - separate| = {float((out - ref).abs().max()):.2e}"
                     f" (outputs ~{float(ref.abs().mean()):.2f})")
    for m in separate:
        m.train()
        m.zero_grad()
    stacked.train()
    ref = torch.stack([m(b) for m in separate])
    out = stacked(b)
    lines.append(f"train forward (batch statistics per member): max |diff| = {float((out - ref).abs().max().detach()):.2e}")
    stacked_loss(ref, b.y).backward()
    stacked_loss(out, b.y).backward()
    worst, worst_name, bias = 0.0, "", 0.0
    grads = {name: t.grad for name, t in stacked.stacked_tensors().items() if isinstance(t, nn.Parameter)}
    for i, m in enumerate(separate):
        mine = stacked.member_state(i, grads)
        scale = max(float(p.grad.abs().max()) for p in m.parameters())
        for name, p in m.named_parameters():
            diff = float((mine[name] - p.grad).abs().max())
            if name.endswith("fc_full.bias"):  # followed by batch norm: its exact gradient is 0 (rounding noise)
                bias = max(bias, diff / scale)
                continue
            rel = diff / max(float(p.grad.abs().max()), 1e-3 * scale)
            if rel > worst:
                worst, worst_name = rel, name
    lines.append(f"train gradients, all members: max |diff| / max |grad| of the tensor = {worst:.2e} ({worst_name}); "
                 f"fc_full.bias (exactly 0 before rounding, batch norm follows): max |diff| = {bias:.1e} of the "
                 "member's largest gradient")
    running = stacked.stacked_tensors()["convs.0.bn1.running_mean"]
    rm = max(float((running[i] - m.convs[0].bn1.running_mean).abs().max()) for i, m in enumerate(separate))
    lines.append(f"running statistics after the training forward (layer 0 bn1): max |diff| = {rm:.2e}")
    return lines


# ---------------------------------------------------------------------------------------------------- timing
class Sequential:
    name = "sequential"

    def __init__(self, models):
        self.models = models
        self.opts = [make_optimizer("adamw", m.parameters(), LR, WEIGHT_DECAY) for m in models]

    def epoch(self, batches):
        for model, opt in zip(self.models, self.opts):  # one member after the other
            for b in batches:
                loss = F.l1_loss(model(b), b.y)
                opt.zero_grad()
                loss.backward()
                opt.step()


class Stacked:
    name = "stacked"
    fused = False
    stack = MemberStack

    def __init__(self, models):
        self.model = self.stack(models).train()
        if not self.fused:
            self.model._compiled_step = lambda x: False
        self.opt = make_optimizer("adamw", self.model.parameters(), LR, WEIGHT_DECAY)

    def epoch(self, batches):
        for b in batches:
            loss = stacked_loss(self.model(b), b.y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()


class StackedFused(Stacked):
    name = "stacked-fused"
    fused = True


def stacked_from(path: str) -> type[Stacked]:
    """``--against FILE``: the fused stack of another ``model/members.py`` (an earlier commit's: ``git show
    REV:src/cgcnn_lab/model/members.py > FILE``), timed beside this one."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"against_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return type("Against", (StackedFused,), {"name": f"stacked-fused ({path})", "stack": module.MemberStack})


def time_all(table, batches, ks, threads, rounds, against=()):
    rows = []
    for t in threads:
        torch.set_num_threads(t)
        for k in ks:
            variants = [cls(build_models(k, table)) for cls in (Sequential, Stacked, StackedFused, *against)]
            for v in variants:
                v.epoch(batches[:3])  # warm-up
            times = {v.name: [] for v in variants}
            n = len(variants)
            for r in range(rounds):
                for v in variants[r % n:] + variants[: r % n]:  # rotate the order too
                    sync()
                    start = time.perf_counter()
                    v.epoch(batches)
                    sync()
                    times[v.name].append(time.perf_counter() - start)
            steps = k * len(batches)
            med = {name: statistics.median(ts) for name, ts in times.items()}
            for name, ts in times.items():
                rows.append({"threads": t, "k": k, "variant": name, "rate": steps / med[name], "ms": 1e3 * med[name] / steps,
                                 "speedup": med["sequential"] / med[name], "spread": min(ts) / max(ts)})
            print(f"  threads={t} K={k}: " + ", ".join(f"{r['variant']} {r['rate']:.1f} member-steps/s "
                  f"({r['speedup']:.2f}x)" for r in rows[-len(times):]), flush=True)
    return rows


def time_eval(table, k: int, threads: int, rounds: int, n_crystals: int = 4000, max_nbr: int = 8) -> str:
    """Evaluation (validation, predict): K separate models against the stack, batches of 256 crystals."""
    torch.set_num_threads(threads)
    dataset = cgcnn_lab.featurize(str(DATA), targets=["e_form"], max_neighbors=max_nbr)
    batches = [b.to(DEVICE) for b in dataset.loader(np.arange(n_crystals), 256, collapse=True)]
    models = [m.eval() for m in build_models(k, table)]
    stack = MemberStack(models).eval()
    runs = {"separate": lambda b: [m(b) for m in models], "stacked": stack}
    times = {name: [] for name in runs}
    with torch.no_grad():
        for r in range(rounds + 1):  # the first round warms up (and compiles)
            for name, run in runs.items():
                sync()
                start = time.perf_counter()
                for b in batches:
                    run(b)
                sync()
                if r:
                    times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return (f"evaluation, {n_crystals} crystals in batches of 256, K={k}, {threads} threads: {k} separate models "
            f"{med['separate']:.2f} s, stacked {med['stacked']:.2f} s ({med['separate'] / med['stacked']:.2f}x)")


def profile(table, batches, k, threads):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    torch.set_num_threads(threads)
    out = []
    for v in (Sequential(build_models(k, table)), Stacked(build_models(k, table)),
              StackedFused(build_models(k, table))):
        v.epoch(batches[:3])
        with prof(activities=[ProfilerActivity.CPU]) as p:
            v.epoch(batches[:10])
        events = p.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        n_ops = sum(e.count for e in events if e.key.startswith("aten::"))
        out.append(f"\n{v.name}, K={k}, {threads} threads, 10 batches: {total / 1e3:.0f} ms self CPU, "
                   f"{n_ops / 10:.0f} aten calls per batch ({n_ops / 10 / k:.0f} per member-step)")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]:
            out.append(f"    {e.key:<42} {e.self_cpu_time_total / 1e3:8.1f} ms {100 * e.self_cpu_time_total / total:5.1f}%"
                       f"  {e.count:6d} calls")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--members", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--no-vmap", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--max-nbr", type=int, default=8, help="neighbours per atom (the matbench preset: 12)")
    p.add_argument("--eval", action="store_true", help="only time evaluation (validation, predict): separate vs stacked")
    p.add_argument("--against", nargs="+", default=[], metavar="FILE",
                   help="also time the fused stack of these members.py files (earlier commits'), interleaved")
    args = p.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when piped to a file
    print(f"load average before: {os.getloadavg()}")
    if args.eval:
        for k in args.members:
            print(time_eval(ElementEncoding.cgcnn92().table, k, args.threads[0], args.rounds, max_nbr=args.max_nbr))
        return
    _dataset, n_train, batches = load_batches(args.batches, max_nbr=args.max_nbr)
    table = ElementEncoding.cgcnn92().table
    nodes = np.mean([b.num_nodes for b in batches])
    edges = np.mean([b.edge_index.shape[1] for b in batches])
    dist = np.mean([len(torch.unique(b.distance)) for b in batches])
    print(f"fold 0: {n_train} training crystals; {len(batches)} batches of 64 (merged): {nodes:.0f} atom rows, "
          f"{edges:.0f} edges, {dist:.0f} distinct distances per batch (mean)")

    torch.set_num_threads(args.threads[0])
    print("\n## equality check (stacked vs separate CGCNN with the same weights, 8 members, float32)")
    for fused in (False, True):
        print(f"{'stacked-fused' if fused else 'stacked'}:")
        for line in check_equal(build_models(8, table), batches, fused):
            print("- " + line)
    if not args.no_vmap:
        print("\n## candidate B: torch.func.stack_module_state + functional_call + vmap over CGCNN")
        for line in try_vmap(build_models(4, table), batches[0]):
            print("- " + line)

    print("\n## timing (alternating rounds, medians)")
    rows = time_all(table, batches, args.members, args.threads, args.rounds, [stacked_from(f) for f in args.against])
    if not args.no_profile:
        print("\n## profile (torch.profiler, self CPU time, top operators)")
        for line in profile(table, batches, max(args.members), args.threads[0]):
            print(line)
    print(f"\nload average after: {os.getloadavg()}")
    print("\n| threads | K | variant | member-steps/s | ms per member-step | speedup vs sequential | min/max round |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} | {r['k']} | {r['variant']} | {r['rate']:.1f} | {r['ms']:.2f} | {r['speedup']:.2f}x "
              f"| {r['spread']:.2f} |")

if __name__ == "__main__":
    main()
