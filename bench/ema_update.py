"""The cost of one weight-average update (``--ema``) after a training step, on the ``matbench`` network.

    .venv/bin/python bench/ema_update.py [--threads 2] [--updates 500] [--rounds 5]

Lightning's ``EMAWeightAveraging(decay)`` (a Python loop of three operators per tensor) against the package's
``training.callbacks.ema_callback`` (one ``_foreach_lerp_`` over all tensors), both through torch's
``AveragedModel.update_parameters`` over the 56 parameters and buffers; medians of ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.model.config import ModelConfig
from cgcnn_lab.model.network import CGCNN
from cgcnn_lab.training.callbacks import ema_callback

MATBENCH = {"conv": "gated", "n_conv": 4, "atom_fea_len": 64, "h_fea_len": 32}  # presets.py "matbench"


def ms_per_update(average: AveragedModel, model, updates: int, rounds: int) -> float:
    average.update_parameters(model)  # the first update copies
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(updates):
            average.update_parameters(model)
        times.append((time.perf_counter() - start) / updates * 1e3)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--updates", type=int, default=500)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = CGCNN(ModelConfig(**MATBENCH), ElementEncoding.cgcnn92().table)
    n = len(list(model.parameters())) + len(list(model.buffers()))
    ours = ema_callback(0.999)._kwargs  # what --ema 0.999 hands to AveragedModel
    for name, kwargs in [("Lightning EMAWeightAveraging (avg_fn)", {"avg_fn": get_ema_avg_fn(0.999)}),
                         ("cgcnn-lab --ema (multi_avg_fn)", ours)]:
        ms = ms_per_update(AveragedModel(model, use_buffers=True, **kwargs), model, args.updates, args.rounds)
        print(f"| {name} | {n} tensors | {ms:.3f} ms per update |")


if __name__ == "__main__":
    main()
