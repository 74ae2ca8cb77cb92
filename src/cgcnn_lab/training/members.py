"""Training K ensemble members in one process (``--members K``), and the run folder it leaves.

The members differ in initialisation only: member k starts from the weights a plain run with ``--seed SEED+k``
starts from, and all see the batches of ``--seed SEED`` (so member 0 is the plain run). Each has its own loss,
gradients, batch-norm statistics and best epoch on validation; with ``--patience`` the run stops once every member
has gone that many epochs without improving (a member that stopped improving earlier keeps its best weights while
the others train on). The run folder is an ensemble (``ensembles.py``)::

    OUT/member0 ... member{K-1}   each a packaged model (its best epoch): predict, explain or export it alone
    OUT/ensemble.json              the members; for regression their spread calibrated on validation
    OUT/checkpoints/last.ckpt      all members, their best weights so far and the optimiser, for --resume
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cgcnn_lab import ensembles
from cgcnn_lab.inference import TrainedModel, predict_outputs
from cgcnn_lab.model.members import MemberStack
from cgcnn_lab.packaged import save_packaged, write_split
from cgcnn_lab.spec import ModelSpec
from cgcnn_lab.training.module import CGCNNModule


def member_seeds(seed: int, k: int) -> list[int]:
    return [seed + i for i in range(k)]


class MembersModule(CGCNNModule):
    """``CGCNNModule`` for a ``MemberStack``: the summed member losses train every member at once; validation
    keeps each member's best weights (``best``), which travel in every checkpoint."""

    def __init__(self, spec: dict, optim: dict, members: int, seed: int, patience: int = 0) -> None:
        super().__init__(spec, optim)
        self.save_hyperparameters(logger=False)
        models = []
        for s in member_seeds(seed, members):
            torch.manual_seed(s)  # the initialisation of a plain run with --seed s
            models.append(self.spec.build_model())
        self.model = MemberStack(models)
        self.patience = patience
        self.best = {"value": torch.full((members,), float("inf")), "epoch": torch.zeros(members, dtype=torch.long),
                     "stale": torch.zeros(members, dtype=torch.long),
                     "state": {k: v.detach().clone() for k, v in self.model.stacked_tensors().items()}}

    def _step(self, batch, stage: str) -> torch.Tensor:
        out = self.model(batch)  # [K, B, outputs]
        k, n = out.shape[0], batch.num_graphs
        if self.task == "classification":
            labels = batch.y[:, 0].long()
            losses = F.nll_loss(out.flatten(0, 1), labels.repeat(k), reduction="none").view(k, n).mean(1)
            correct = (out.argmax(2) == labels).float().mean(1)
            mean_p = out.detach().exp().mean(0)
            self._accumulate(stage, n, loss=losses.mean(), accuracy=correct.mean(), member_loss=losses,
                             member_accuracy=correct, ensemble_accuracy=(mean_p.argmax(1) == labels).float().mean())
        else:
            error = out - self.transform.encode(batch.y, batch)
            losses = (error.abs() if self.optim["loss"] == "l1" else error.square()).mean(dim=(1, 2))
            y_true = self.transform.intensive(batch.y, batch)
            decoded = self.transform.decode_intensive(out.detach(), batch)  # [K, B, T]
            mae = (decoded - y_true).abs().mean(dim=(1, 2))
            self._accumulate(stage, n, loss=losses.mean(), mae=mae.mean(), member_loss=losses, member_mae=mae,
                             ensemble_mae=(decoded.mean(0) - y_true).abs().mean())
        return losses.sum()  # member k's gradient is that of its own loss

    def _log_epoch(self, stage: str) -> None:
        sums = self._sums.get(stage)
        if sums:  # per-member values as one column each (metrics.csv, --logger)
            for name in [n for n in sums if n.startswith("member_")]:
                for k, v in enumerate(sums.pop(name)):
                    sums[f"{name}{k}"] = v
        super()._log_epoch(stage)

    def keep_best(self) -> None:
        """After a validation epoch, with the weights it validated (``KeepBestMembers`` runs before the weight
        average swaps them back): keep each member that improved on its monitored value."""
        sums = self._sums.get("val")
        if not sums:
            return
        values = (sums["member_loss" if self.task == "classification" else "member_mae"] / sums["crystals"]).cpu()
        best = self.best
        improved = values < best["value"]
        best["value"] = torch.where(improved, values, best["value"])
        best["epoch"][improved] = self.current_epoch + 1
        best["stale"] = torch.where(improved, 0, best["stale"] + 1)
        for name, tensor in self.model.stacked_tensors().items():
            best["state"][name][improved.to(tensor.device)] = tensor.detach()[improved.to(tensor.device)]
        if self.patience and bool((best["stale"] >= self.patience).all()):
            self.trainer.should_stop = True  # every member has gone --patience epochs without improving

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["members_best"] = self.best  # plain tensors: loads with weights_only

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if "members_best" in checkpoint:
            self.best = checkpoint["members_best"]

    def best_members(self) -> list:
        """Each member as a ``CGCNN`` with the weights of its best validation epoch."""
        state = {name: t.cpu() for name, t in self.best["state"].items()}
        return [self.model.member(k, state) for k in range(self.model.k)]


class KeepBestMembers:
    """Lightning callback, first in the list: each member's best weights are taken at the end of validation, before
    ``--ema``'s callback swaps the averaged weights (which validated) back for the raw ones."""

    def __new__(cls):
        import lightning as L

        class _Keep(L.Callback):
            def on_validation_epoch_end(self, trainer, pl_module) -> None:
                if not trainer.sanity_checking:
                    pl_module.keep_best()

        return _Keep()


def write_members(out: Path, module: MembersModule, spec: ModelSpec, split_rows, command: str) -> list[TrainedModel]:
    """OUT/member{k}: each member at its best epoch as a packaged model; returns them, loaded."""
    trained = []
    for k, model in enumerate(module.best_members()):
        folder = out / f"member{k}"
        card = {"name": f"{out.name}/member{k}", "member": k, "of": module.model.k,
                "best_epoch": int(module.best["epoch"][k]), "initialised_as_seed": module.hparams.seed + k,
                "command": command}
        save_packaged(model.state_dict(), spec, folder, card)
        write_split(folder, split_rows)
        trained.append(TrainedModel(model.eval(), spec, folder))
    return trained


def write_ensemble(out: Path, trained: list[TrainedModel], dataset, val_idx: np.ndarray, trained_on: np.ndarray) -> dict:
    """OUT/ensemble.json over the members, with the ensemble's validation MAE or loss; a regression ensemble's spread
    is calibrated split-conformally on the validation crystals (``ensembles.py``), a classifier's spread (of
    probabilities) is left as it is. ``trained_on``: the targets or class labels the members learned."""
    record = {"members": [t.path.name for t in trained], "counts": [1] * len(trained), "selection": "all",
              "scale": [1.0] * trained[0].spec.n_outputs, "n_val": len(val_idx)}
    if not len(val_idx):
        return ensembles.write(out, record)
    values = np.stack([predict_outputs(t.model, dataset, t.transform, subset=val_idx) for t in trained])
    if trained[0].spec.task == "regression":
        y = trained_on[val_idx]
        record |= ensembles.calibration(values, y)
        if trained[0].spec.per_atom:  # in the unit learned, as the run's val_mae
            record["val_mae_per_atom"] = float((np.abs(values.mean(0) - y) / dataset.n_atoms[val_idx][:, None]).mean())
    else:  # the NLL of the mean class probabilities, the ensemble's validation loss
        labels = trained_on[val_idx, 0].astype(int)
        chosen = values.mean(0)[np.arange(len(labels)), labels]
        record["val_loss"] = float(-np.log(np.clip(chosen, 1e-12, None)).mean())
    return ensembles.write(out, record)
