"""The original CGCNN checkpoint format (``model_best.pth.tar`` of github.com/txie-93/cgcnn): detect, convert, export.

An original checkpoint is a dict ``{epoch, state_dict, best_mae_error, optimizer, normalizer, args}`` where
``args`` is the training script's ``vars(args)`` and ``normalizer`` is ``{'mean', 'std'}`` of the target. It
carries no element encoding (the original reads ``atom_init.json`` from the data folder) and no graph settings
(its data loader defaults: 8 Å, 12 neighbours, Gaussians from 0 in steps of 0.2 Å, read from ``args`` when a
fork stored them). Our :class:`CGCNN` uses the original's layer names, so the weights map one to one; the
graph is built with ``pad_to_max`` because the original pads atoms with fewer than 12 neighbours.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.data.graph import GraphConfig
from cgcnn_lab.model.config import ModelConfig
from cgcnn_lab.model.network import CGCNN
from cgcnn_lab.spec import ModelSpec
from cgcnn_lab.targets import TargetTransform

FORMAT = "cgcnn-original"
DEFAULTS = {"radius": 8.0, "max_num_nbr": 12, "dmin": 0.0, "step": 0.2}  # the original CIFData defaults
CLASSIFICATION_DROPOUT = 0.5  # the original's nn.Dropout() before the hidden layers (training only)


class OriginalFormatError(ValueError):
    """An original-format checkpoint we cannot use, or a model the original format cannot express."""


def is_original(ckpt: Any) -> bool:
    """True for a checkpoint written by the original code (``state_dict`` + ``args``, no cgcnn-lab spec)."""
    return (
        isinstance(ckpt, dict)
        and "hyper_parameters" not in ckpt
        and isinstance(ckpt.get("state_dict"), dict)
        and "args" in ckpt
        and "embedding.weight" in ckpt["state_dict"]
    )


def graph_config(args: dict) -> GraphConfig:
    """Graph settings from ``args`` (keys of forks that store them), else the original defaults; padded."""
    get = lambda *keys: next((args[k] for k in keys if args.get(k) is not None), DEFAULTS[keys[0]])
    if float(get("dmin")) != 0.0:
        raise OriginalFormatError(f"args dmin={get('dmin')}: only a Gaussian grid starting at 0 Å is supported")
    return GraphConfig(radius=float(get("radius")), max_neighbors=int(get("max_num_nbr", "max_nbr")),
                       gaussian_step=float(get("step")), pad_to_max=True)


def _count(state: dict, pattern: str) -> int:
    return len({m.group(1) for k in state if (m := re.fullmatch(pattern, k))})


def convert(ckpt: dict, encoding: ElementEncoding) -> tuple[CGCNN, ModelSpec]:
    """Original checkpoint + the ``atom_init.json`` encoding -> our model (eval mode) and its spec."""
    args, state = ckpt["args"], ckpt["state_dict"]
    if not isinstance(args, dict):
        raise OriginalFormatError(f"'args' is a {type(args).__name__}, expected the dict vars(args)")
    graph = graph_config(args)
    atom_fea_len, n_features = state["embedding.weight"].shape
    if n_features != encoding.n_features:
        raise OriginalFormatError(
            f"the model expects {n_features} element features but the atom_init encoding "
            f"({encoding.name}) has {encoding.n_features}: use the atom_init.json the model was trained with"
        )
    n_classes = state["fc_out.weight"].shape[0]
    task = args.get("task") or ("classification" if n_classes == 2 else "regression")
    if (task == "classification") != (n_classes == 2):
        raise OriginalFormatError(f"args task {task!r} does not match an output layer with {n_classes} outputs")
    config = ModelConfig(
        conv="gated", n_conv=_count(state, r"convs\.(\d+)\.fc_full\.weight"), atom_fea_len=int(atom_fea_len),
        h_fea_len=int(state["conv_to_fc.weight"].shape[0]), n_h=1 + _count(state, r"fcs\.(\d+)\.weight"),
        activation="softplus", batchnorm=True, pool="mean", atom_encoding="fixed", task=task,
        n_outputs=int(n_classes), dropout=CLASSIFICATION_DROPOUT if task == "classification" else 0.0,
        radius=graph.radius, gaussian_step=graph.gaussian_step,
    )
    for key in ("n_conv", "atom_fea_len", "h_fea_len", "n_h"):
        if key in args and int(args[key]) != getattr(config, key):
            raise OriginalFormatError(f"args {key}={args[key]} but the weights have {getattr(config, key)}")
    model = CGCNN(config, encoding.table)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "element_table" and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise OriginalFormatError(f"weights do not fit the original architecture: missing {missing[:4]}, "
                                  f"unexpected {unexpected[:4]}")
    model.eval()
    norm = ckpt.get("normalizer") or {"mean": 0.0, "std": 1.0}
    transform = TargetTransform(False, [float(norm["mean"])], [float(norm["std"])])
    spec = ModelSpec(config, graph, encoding, transform if task == "regression" else None, format=FORMAT)
    return model, spec


def check_exportable(spec: ModelSpec) -> None:
    """Raise OriginalFormatError naming the first thing the original code cannot express."""
    m, t = spec.model, spec.transform or TargetTransform()
    reasons = [
        (not m.convolution.exportable or m.n_conv == 0,
         f"conv {m.conv!r}: the original has only the gated convolution"),
        (m.pool != "mean", f"pool {m.pool!r}: the original pools by mean"),
        (m.stoichiometry, "stoichiometry features: the original's output network reads the pooled atoms only"),
        (m.activation != "softplus", f"activation {m.activation!r}: the original uses softplus"),
        (not m.batchnorm, "batchnorm off: the original always has batch norm in its convolutions"),
        (m.atom_encoding != "fixed", "learned element embedding: the original needs an atom_init.json table"),
        (spec.encoding is None, "no element encoding stored"),
        (m.gaussian_width not in (None, m.gaussian_step), "Gaussian width != step: the original uses the step"),
        (m.task == "classification" and m.n_outputs != 2, f"{m.n_outputs} classes: the original has 2"),
        (m.task == "regression" and m.n_outputs != 1, f"{m.n_outputs} targets: the original predicts one"),
        (t.per_atom, "per-atom target transform: the original predicts the target directly"),
        (t.element_ref is not None, "element reference energies: the original has no composition baseline"),
        (spec.graph.shell_tol is not None,
         "completed neighbour shells (--shell-tol): the original keeps exactly the M nearest"),
    ]
    for bad, reason in reasons:
        if bad:
            raise OriginalFormatError(f"cannot export to the original CGCNN format: {reason}")


def to_original(model: CGCNN, spec: ModelSpec, epoch: int = 0) -> dict:
    """The original checkpoint dict for a gated-conv model (``optimizer`` omitted: not resumable there)."""
    check_exportable(spec)
    graph, m = spec.graph, spec.model
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if k != "element_table"}
    t = spec.transform or TargetTransform()
    args = {
        "task": m.task, "atom_fea_len": m.atom_fea_len, "h_fea_len": m.h_fea_len, "n_conv": len(model.convs),
        "n_h": m.n_h, "radius": graph.radius, "max_num_nbr": graph.max_neighbors, "dmin": 0.0,
        "step": m.gaussian_step, "exported_by": "cgcnn-lab",
    }
    return {
        "epoch": int(epoch), "state_dict": state, "best_mae_error": math.nan, "args": args,
        "normalizer": {"mean": torch.tensor(float(t.mean[0])), "std": torch.tensor(float(t.std[0]))},
    }


def write_atom_init(encoding: ElementEncoding, path: str | Path) -> None:
    """The encoding as an original ``atom_init.json`` (the original code reads it from the data folder)."""
    import json

    rows = encoding.to_dict()["rows"]
    Path(path).write_text(json.dumps(rows))
