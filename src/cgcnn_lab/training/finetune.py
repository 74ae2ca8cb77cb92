"""Fine-tuning: start a run from a trained model (ours or the original code's), keeping what its weights fit."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from cgcnn_lab.data.dataset import CrystalDataset
from cgcnn_lab.data.graph import GraphConfig
from cgcnn_lab.data.sources import DataError
from cgcnn_lab.inference import TrainedModel, predict_outputs
from cgcnn_lab.model.config import ModelConfig
from cgcnn_lab.optionfield import weight_options
from cgcnn_lab.targets import TargetTransform
from cgcnn_lab.training.options import DataOptions
from cgcnn_lab.training.splits import Split

ARCHITECTURE = weight_options(ModelConfig)  # conv, widths, depth, ...: the checkpoint's
BOND_FEATURES = weight_options(DataOptions)  # radius and Gaussian grid: the first Linear of every layer is shaped by them
NEIGHBOR_CHOICE = ("max_neighbors", "shell_tol")  # which neighbours: no weight depends on it


def inherit_architecture(pretrained: ModelConfig, requested: ModelConfig) -> ModelConfig:
    """Fine-tuning keeps the pretrained network's shape; the task and head come from the new data."""
    return replace(requested, **{k: getattr(pretrained, k) for k in ARCHITECTURE})


def non_default_options(data: DataOptions, model_cfg: ModelConfig) -> tuple[str, ...]:
    """The graph and architecture options set to other than their defaults: what counts as asked from Python."""
    data_defaults, model_defaults = DataOptions(), ModelConfig()
    return tuple(
        [n for n in (*NEIGHBOR_CHOICE, *BOND_FEATURES) if getattr(data, n) != getattr(data_defaults, n)]
        + [n for n in ARCHITECTURE if getattr(model_cfg, n) != getattr(model_defaults, n)]
    )


def fine_tuning_setup(
    pretrained: TrainedModel, data: DataOptions, model_cfg: ModelConfig, asked: tuple[str, ...] | None
) -> tuple[GraphConfig, ModelConfig, list[str]]:
    """Graph and architecture of a run that starts from ``pretrained``: the checkpoint's, except the neighbour
    choice (M, completed shells), which is honoured when asked for because the weights do not depend on it.
    Asking for other bond features or another architecture is an error rather than silently ignored: the weights
    fit only the checkpoint's. ``asked`` names the options given on the command line (or set by a ``compare``
    variant); from Python (None), a value other than the default counts as asked for. Returns the graph, the model
    config and what was changed."""
    asked = non_default_options(data, model_cfg) if asked is None else asked
    graph, changed = pretrained.graph_config, []
    for name in NEIGHBOR_CHOICE:
        value = getattr(data, name)
        if name in asked and value != getattr(graph, name):
            # completed shells and the original's fake neighbours exclude each other: one replace for both
            graph = replace(graph, **{name: value}, **({"pad_to_max": False} if name == "shell_tol" and value else {}))
            changed.append(f"{name} {value}")
    requested = GraphConfig(data.radius, graph.max_neighbors, data.gaussian_step, data.gaussian_width)
    conflicts = [f"{name} {getattr(graph, name)} (asked: {getattr(data, name)})" for name in BOND_FEATURES
                 if name in asked and getattr(requested, name) != getattr(graph, name)
                 and not (name == "gaussian_width" and requested.width == graph.width)]  # None means the step
    arch = pretrained.spec.model
    conflicts += [f"{name} {getattr(arch, name)} (asked: {getattr(model_cfg, name)})" for name in ARCHITECTURE
                  if name in asked and getattr(model_cfg, name) != getattr(arch, name)]
    if conflicts:
        raise DataError(f"--init-from {pretrained.path}: its weights fit only its own bond features and architecture, "
                        f"and these were asked otherwise: {'; '.join(conflicts)}. Leave those options out to fine-tune it, "
                        "or train from scratch")
    return graph, inherit_architecture(arch, model_cfg), changed


def transfer_weights(source: torch.nn.Module, target: torch.nn.Module, freeze_convs: bool) -> int:
    """Copy every tensor whose name and shape match (the output layer only if the output count matches)."""
    own = target.state_dict()
    matching = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
    target.load_state_dict(matching, strict=False)
    if freeze_convs:
        for name, param in target.named_parameters():
            if name.startswith(("embedding.", "edge_embedding.", "convs.")):
                param.requires_grad_(False)
    return len(matching)


def continue_transform(pretrained: TrainedModel, dataset: CrystalDataset, split: Split, data: DataOptions,
                       fitted: TargetTransform, log) -> TargetTransform:
    """Fine-tuning on the pretrained model's own quantity: keep its output scale (see TargetTransform.continue_from);
    otherwise ``fitted``, the transform fitted to the new targets."""
    if pretrained.transform is None:
        return fitted
    base = pretrained.transform.with_per_atom(data.per_atom)
    zero_shot = predict_outputs(pretrained.model, dataset, base, subset=split.train)
    kept = TargetTransform.continue_from(
        base, dataset.targets[split.train], zero_shot, *dataset.graphs.atoms(split.train), data.per_atom,
        data.use_element_ref,
    )
    if kept is None:
        log("the targets are not on the pretrained model's scale: its output layer is rescaled to them")
        return fitted
    log("the targets are the pretrained model's quantity: training starts from its predictions"
        + (", with per-element references fitted to its errors on the training split" if kept.element_ref else ""))
    return kept


def degree_histogram(dataset: CrystalDataset, subset: np.ndarray) -> list[int]:
    """Atoms per in-degree over the training crystals (PNA's degree scalers)."""
    degree = dataset.graphs.degree()
    atoms = np.repeat(np.arange(len(dataset)), dataset.n_atoms)
    return np.bincount(degree[np.isin(atoms, subset)]).astype(int).tolist()
