"""Can K ensemble members trained in one process, as batched weights, beat K members trained one after the other?

    .venv/bin/python bench/members_speed.py [--batches 30] [--rounds 5] [--threads 2 1] [--members 1 4 8]
                                            [--no-profile] [--no-vmap]

The "profile first" step of ``--members K``. Real training batches: Castelli perovskites, Matbench fold-0 training
crystals (``matbench_fold != 0``), featurised by the package with 8 neighbours, ``--batches`` shuffled batches of 64
merged graphs (``collapse=True``, as training builds them). The ``matbench`` network (gated, 4 convs, 64 atom /
32 hidden features, cgcnn92 element table), L1 loss, fused AdamW (``training.module.make_optimizer``).

* baseline: K separate ``CGCNN`` models (the package's, fused gated edge step), each forward + L1 loss + backward +
  AdamW step over the batches, one member after the other;
* A, "stacked" (composite autograd) and "stacked-fused" (the edge step as one autograd.Function, as
  convs.py fuses it): ``StackedGatedCGCNN`` below, the same function with a leading member dimension K on every weight
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
from cgcnn_lab.model.network import CGCNN
from cgcnn_lab.training.module import make_optimizer

DATA = Path(__file__).resolve().parents[2] / "shared/data/castelli_perovskites.csv.gz"
if not DATA.exists():
    DATA = Path("/work/shared/data/castelli_perovskites.csv.gz")
MATBENCH = {"conv": "gated", "n_conv": 4, "atom_fea_len": 64, "h_fea_len": 32}  # presets.py "matbench"
LR, WEIGHT_DECAY = 2e-3, 0.01


# ---------------------------------------------------------------------------------------------------- data
def load_batches(n_batches: int, batch_size: int = 64, seed: int = 0):
    dataset = cgcnn_lab.featurize(str(DATA), targets=["e_form"], max_neighbors=8)
    folds = pd.read_csv(DATA, usecols=["id", "matbench_fold"]).set_index("id")["matbench_fold"]
    train = np.flatnonzero(folds.loc[dataset.ids].to_numpy() != 0)
    y = dataset.targets
    targets = (y - y[train].mean(0)) / y[train].std(0)  # standardised, as training learns it (roughly)
    loader = dataset.loader(train, batch_size=batch_size, shuffle=True, seed=seed, collapse=True, targets=targets)
    batches = []
    for b in loader:
        batches.append(b)
        if len(batches) == n_batches:
            break
    return dataset, len(train), batches


def build_models(k: int, table, seed: int = 0) -> list[CGCNN]:
    models = []
    for m in range(k):
        torch.manual_seed(seed + m)  # members differ in initialisation only
        models.append(CGCNN(ModelConfig(**MATBENCH), table).train())
    return models


# ---------------------------------------------------------------------------------------------------- candidate A
class _StackedGatedMessages(torch.autograd.Function):
    """convs.py's ``_GatedMessages`` (the fused edge step) with a member dimension: x [K, N, A], weights
    [K, in, out], one batched matmul per weight block, one ``embedding_bag`` over K·E bags, batch-norm statistics
    per member (a batched GEMV with the shared edge weights), backward written out, in place where it can."""

    @staticmethod
    def forward(ctx, x, bonds, wc, wn, wu, bias, rows, center, neighbor, inverse, m, w, gamma, beta, eps: float):
        k, n, a = x.shape
        e, n_rows = center.shape[0], 2 * n + bonds.shape[0]
        table = torch.cat([torch.baddbmm(bias, x, wc), torch.bmm(x, wn), torch.matmul(bonds, wu)], dim=1)
        z = F.embedding_bag(rows, table.view(k * n_rows, 2 * a), mode="sum").view(k, e, 2 * a)
        mean = torch.matmul(w, z)  # [K, 1, 2A]
        centred = z.sub_(mean)
        var = torch.matmul(w, centred * centred)
        inv = torch.rsqrt(var + eps)
        x_hat = centred.mul_(inv)
        y = torch.addcmul(beta, x_hat, gamma)
        gate, core = torch.sigmoid(y[..., :a]), F.softplus(y[..., a:])
        mm = m.view(1, e, 1)
        messages = (gate * core).mul_(mm)
        out = messages.new_zeros((k, n, a)).index_add_(1, center, messages)
        ctx.save_for_backward(x, bonds, wc, wn, wu, x_hat, gate, core, center, neighbor, inverse, mm, w, inv, gamma)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, dout, _dmean, _dvar):
        x, bonds, wc, wn, _wu, x_hat, gate, core, center, neighbor, inverse, mm, w, inv, gamma = ctx.saved_tensors
        k, n, a = x.shape
        dm = dout.index_select(1, center).mul_(mm)
        dy = torch.empty_like(x_hat)
        torch.mul(dm * gate, torch.expm1(core.neg()).neg_(), out=dy[..., a:])  # softplus'(c) = σ(c)
        torch.mul((dm * core).mul_(gate), 1.0 - gate, out=dy[..., :a])
        dbeta = dy.sum(1, keepdim=True)
        dgamma = (dy * x_hat).sum(1, keepdim=True)
        g = gamma * inv  # [K, 1, 2A]
        correction = torch.addcmul(g * dbeta, x_hat, g * dgamma).mul_(w.T)
        dz = dy.mul_(g).sub_(correction)
        d_table = dz.new_zeros((k, 2 * n + bonds.shape[0], 2 * a))
        d_center, d_neighbor, d_bond = d_table[:, :n], d_table[:, n : 2 * n], d_table[:, 2 * n :]
        d_center.index_add_(1, center, dz)
        d_neighbor.index_add_(1, neighbor, dz)
        d_bond.index_add_(1, inverse, dz)
        dx = torch.baddbmm(torch.bmm(d_center, wc.transpose(1, 2)), d_neighbor, wn.transpose(1, 2))
        xt = x.transpose(1, 2)
        return (dx, None, torch.bmm(xt, d_center), torch.bmm(xt, d_neighbor), torch.matmul(bonds.T, d_bond),
                d_center.sum(1, keepdim=True), None, None, None, None, None, None, dgamma, dbeta, None)


class StackedGatedCGCNN(nn.Module):
    """K gated CGCNNs (mean pooling, n_h = 1, softplus, batch norm) as one module: every weight has a leading member
    dimension, features are [K, N, F]. The forward is the function of ``CGCNN`` + ``GatedConv`` (fused step) on
    merged graphs: bond features per distinct distance, edge/atom multiplicities in sums, batch norms and pooling."""

    def __init__(self, models: list[CGCNN], fused: bool = False) -> None:
        super().__init__()
        ref = models[0]
        self.fused = fused  # the edge step as _StackedGatedMessages (training) instead of composite autograd
        self.k = len(models)
        self.a = a = ref.config.atom_fea_len
        self.register_buffer("element_table", ref.element_table.clone())
        self.expansion = ref.expansion
        self.n_conv = len(ref.convs)
        self.eps = ref.convs[0].bn1.eps
        self.momentum = ref.convs[0].bn1.momentum

        def stack(get):
            return nn.Parameter(torch.stack([get(m).detach() for m in models]).clone().contiguous())

        self.emb_w = stack(lambda m: m.embedding.weight.T)  # [K, Fe, A]
        self.emb_b = stack(lambda m: m.embedding.bias.unsqueeze(0))  # [K, 1, A]
        self.wc, self.wn, self.wu, self.bias = (nn.ParameterList() for _ in range(4))
        self.g1, self.b1, self.g2, self.b2 = (nn.ParameterList() for _ in range(4))
        for layer in range(self.n_conv):
            def conv(m, layer=layer):
                return m.convs[layer]
            self.wc.append(stack(lambda m: conv(m).fc_full.weight[:, :a].T))  # [K, A, 2A]
            self.wn.append(stack(lambda m: conv(m).fc_full.weight[:, a : 2 * a].T))  # [K, A, 2A]
            self.wu.append(stack(lambda m: conv(m).fc_full.weight[:, 2 * a :].T))  # [K, B, 2A]
            self.bias.append(stack(lambda m: conv(m).fc_full.bias.unsqueeze(0)))  # [K, 1, 2A]
            self.g1.append(stack(lambda m: conv(m).bn1.weight.unsqueeze(0)))
            self.b1.append(stack(lambda m: conv(m).bn1.bias.unsqueeze(0)))
            self.g2.append(stack(lambda m: conv(m).bn2.weight.unsqueeze(0)))
            self.b2.append(stack(lambda m: conv(m).bn2.bias.unsqueeze(0)))
            for name in ("bn1", "bn2"):
                bn = getattr(models[0].convs[layer], name)
                self.register_buffer(f"rm_{name}_{layer}", torch.stack([getattr(m.convs[layer], name).running_mean
                                                                        for m in models]).clone())
                self.register_buffer(f"rv_{name}_{layer}", torch.stack([getattr(m.convs[layer], name).running_var
                                                                        for m in models]).clone())
                del bn
        self.fc1_w = stack(lambda m: m.conv_to_fc.weight.T)  # [K, A, H]
        self.fc1_b = stack(lambda m: m.conv_to_fc.bias.unsqueeze(0))
        self.out_w = stack(lambda m: m.fc_out.weight.T)  # [K, H, 1]
        self.out_b = stack(lambda m: m.fc_out.bias.unsqueeze(0))

    def _bn(self, x, w_row, gamma, beta, name: str, total):
        """Batch norm of x [K, R, C] over rows weighted by w_row [1, R] (Σ = 1), statistics per member."""
        rm, rv = getattr(self, f"rm_{name}"), getattr(self, f"rv_{name}")
        if not self.training:
            return (x - rm.unsqueeze(1)) * (torch.rsqrt(rv + self.eps).unsqueeze(1) * gamma) + beta
        mean = torch.matmul(w_row, x)  # [K, 1, C]: one batched GEMV
        centred = x - mean
        var = torch.matmul(w_row, centred * centred)
        with torch.no_grad():
            rm.lerp_(mean.squeeze(1), self.momentum)
            rv.lerp_(var.squeeze(1) * (total / (total - 1).clamp_min(1)), self.momentum)
        return torch.addcmul(beta, centred, torch.rsqrt(var + self.eps) * gamma)

    def forward(self, batch) -> torch.Tensor:
        k, a = self.k, self.a
        neighbor, center = batch.edge_index
        n = batch.z.shape[0]
        x = torch.baddbmm(self.emb_b, self.element_table[batch.z].expand(k, -1, -1), self.emb_w)  # [K, N, A]
        distances, inverse = torch.unique(batch.distance, return_inverse=True)
        u = self.expansion(distances)  # [U, B], shared by the members
        n_rows = 2 * n + u.shape[0]
        rows = torch.stack([center, neighbor + n, inverse + 2 * n], dim=1)  # [E, 3]
        rows = (rows.unsqueeze(0) + (torch.arange(k) * n_rows).view(k, 1, 1)).view(-1, 3)  # [K·E, 3]
        ew = batch.edge_weight.to(x.dtype)
        count = batch.atom_weight.index_select(0, center).to(x.dtype) * ew
        edge_w = (count / count.sum()).unsqueeze(0)  # [1, E]
        aw = batch.atom_weight.to(x.dtype)
        atom_w = (aw / aw.sum()).unsqueeze(0)  # [1, N]
        m = ew.view(1, -1, 1)
        e = center.shape[0]
        for layer in range(self.n_conv):
            if self.fused and self.training:
                summed, mean, var = _StackedGatedMessages.apply(
                    x, u, self.wc[layer], self.wn[layer], self.wu[layer], self.bias[layer], rows, center, neighbor,
                    inverse, ew, edge_w, self.g1[layer], self.b1[layer], self.eps)
                total = count.sum()
                with torch.no_grad():
                    self.get_buffer(f"rm_bn1_{layer}").lerp_(mean.squeeze(1), self.momentum)
                    self.get_buffer(f"rv_bn1_{layer}").lerp_(var.squeeze(1) * (total / (total - 1)), self.momentum)
                x = F.softplus(x + self._bn(summed, atom_w, self.g2[layer], self.b2[layer], f"bn2_{layer}", aw.sum()))
                continue
            table = torch.cat([torch.baddbmm(self.bias[layer], x, self.wc[layer]), torch.bmm(x, self.wn[layer]),
                               torch.matmul(u, self.wu[layer])], dim=1)  # [K, 2N + U, 2A]
            z = F.embedding_bag(rows, table.view(k * n_rows, 2 * a), mode="sum").view(k, e, 2 * a)
            y = self._bn(z, edge_w, self.g1[layer], self.b1[layer], f"bn1_{layer}", count.sum())
            gate, core = y.split(a, dim=2)
            messages = torch.sigmoid(gate) * F.softplus(core) * m
            summed = x.new_zeros((k, n, a)).index_add_(1, center, messages)
            x = F.softplus(x + self._bn(summed, atom_w, self.g2[layer], self.b2[layer], f"bn2_{layer}", aw.sum()))
        # weighted mean pooling as one [B, N] matrix for all members
        n_crystals = batch.num_graphs
        pool = x.new_zeros((n_crystals, n)).index_put_((batch.batch, torch.arange(n)), aw)
        pool = pool / pool.sum(1, keepdim=True).clamp_min(1)
        h = F.softplus(torch.matmul(pool, x))  # [K, B, A]
        h = F.softplus(torch.baddbmm(self.fc1_b, h, self.fc1_w))
        return torch.baddbmm(self.out_b, h, self.out_w)  # [K, B, 1]

    def member_grads(self, member: int) -> dict[str, torch.Tensor]:
        """Gradients of one member, named as the CGCNN's parameters (for the check)."""
        a = self.a
        g = {"embedding.weight": self.emb_w.grad[member].T, "embedding.bias": self.emb_b.grad[member, 0],
             "conv_to_fc.weight": self.fc1_w.grad[member].T, "conv_to_fc.bias": self.fc1_b.grad[member, 0],
             "fc_out.weight": self.out_w.grad[member].T, "fc_out.bias": self.out_b.grad[member, 0]}
        for layer in range(self.n_conv):
            p = f"convs.{layer}."
            g[p + "fc_full.weight"] = torch.cat([self.wc[layer].grad[member].T, self.wn[layer].grad[member].T,
                                                 self.wu[layer].grad[member].T], dim=1)
            g[p + "fc_full.bias"] = self.bias[layer].grad[member, 0]
            g[p + "bn1.weight"], g[p + "bn1.bias"] = self.g1[layer].grad[member, 0], self.b1[layer].grad[member, 0]
            g[p + "bn2.weight"], g[p + "bn2.bias"] = self.g2[layer].grad[member, 0], self.b2[layer].grad[member, 0]
        assert a
        return g


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
    stacked = StackedGatedCGCNN(separate, fused)
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
    for i, m in enumerate(separate):
        mine = stacked.member_grads(i)
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
    rm = max(float((stacked.rm_bn1_0[i] - m.convs[0].bn1.running_mean).abs().max()) for i, m in enumerate(separate))
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

    def __init__(self, models):
        self.model = StackedGatedCGCNN(models, self.fused).train()
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


def time_all(table, batches, ks, threads, rounds):
    rows = []
    for t in threads:
        torch.set_num_threads(t)
        for k in ks:
            variants = [Sequential(build_models(k, table)), Stacked(build_models(k, table)),
                        StackedFused(build_models(k, table))]
            for v in variants:
                v.epoch(batches[:3])  # warm-up
            times = {v.name: [] for v in variants}
            for r in range(rounds):
                for v in variants[r % 3:] + variants[: r % 3]:  # rotate the order too
                    start = time.perf_counter()
                    v.epoch(batches)
                    times[v.name].append(time.perf_counter() - start)
            steps = k * len(batches)
            med = {name: statistics.median(ts) for name, ts in times.items()}
            for name, ts in times.items():
                rows.append({"threads": t, "k": k, "variant": name, "rate": steps / med[name], "ms": 1e3 * med[name] / steps,
                                 "speedup": med["sequential"] / med[name], "spread": min(ts) / max(ts)})
            print(f"  threads={t} K={k}: " + ", ".join(f"{r['variant']} {r['rate']:.1f} member-steps/s "
                  f"({r['speedup']:.2f}x)" for r in rows[-len(times):]), flush=True)
    return rows


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
    args = p.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when piped to a file
    print(f"load average before: {os.getloadavg()}")
    _dataset, n_train, batches = load_batches(args.batches)
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
    rows = time_all(table, batches, args.members, args.threads, args.rounds)
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
