"""The Lightning module: loss, metrics and optimiser around a :class:`CGCNN`.

Everything needed to rebuild the model and read its outputs lives in the saved-model spec (``spec.py``), passed in
as its plain dict, which Lightning stores in every checkpoint as ``hyper_parameters``: a checkpoint file alone is
enough to predict, and it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from cgcnn_lab.spec import ModelSpec


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9):
    """Adam/AdamW use PyTorch's fused kernels where the device has them: one kernel for all 30 parameter tensors
    instead of ~10 per tensor (0.4 vs 1.4 ms a step on CPU; the Castelli model loop measured 2.2-2.4 s against
    2.8-3.1 s per epoch, BENCHMARKS.md)."""
    params = list(params)
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        try:
            return cls(params, lr=lr, weight_decay=weight_decay, fused=True)
        except RuntimeError:  # a device without fused kernels
            return cls(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose adam, adamw or sgd")


class CGCNNModule(L.LightningModule):
    def __init__(self, spec: dict, optim: dict) -> None:
        super().__init__()
        # the spec as plain data: checkpoints load without unpickling code. Not sent to --logger's trackers: they get
        # config.json, not the element encoding's thousands of numbers
        self.save_hyperparameters(logger=False)
        self.spec, self.optim = ModelSpec.from_dict(spec), optim
        self.model = self.spec.build_model()
        self.task = self.spec.task
        self.transform = self.spec.transform
        self._sums: dict[str, dict] = {}

    def forward(self, batch) -> torch.Tensor:
        return self.model(batch)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        # Lightning's generic mover walks the dataclass field by field (~0.4 ms a step, 5% of a Castelli epoch);
        # a CrystalBatch moves itself, and on the device it is already on, not at all
        return batch if batch.z.device == device else batch.to(device)

    def _step(self, batch, stage: str) -> torch.Tensor:
        out = self.model(batch)
        if self.task == "classification":
            labels = batch.y[:, 0].long()
            loss = F.nll_loss(out, labels)
            self._accumulate(stage, batch.num_graphs, loss=loss, accuracy=(out.argmax(1) == labels).float().mean())
        else:
            target = self.transform.encode(batch.y, batch)
            loss = F.l1_loss(out, target) if self.optim["loss"] == "l1" else F.mse_loss(out, target)
            # MAE in the unit the model learns (per atom with --per-atom), the number a user compares
            y_true = self.transform.intensive(batch.y, batch)
            mae = (self.transform.decode_intensive(out.detach(), batch) - y_true).abs().mean()
            self._accumulate(stage, batch.num_graphs, loss=loss, mae=mae)
        return loss

    def _accumulate(self, stage: str, n: int, **values: torch.Tensor) -> None:
        """Crystal-weighted sums of this epoch's metrics. ``self.log`` costs ~1.5 ms a call on CPU (~5% of a
        Castelli epoch at two calls a step), so metrics are summed here and logged once per epoch."""
        sums = self._sums.setdefault(stage, {"crystals": 0})
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value.detach() * n
        sums["crystals"] += n

    def _log_epoch(self, stage: str) -> None:
        sums = self._sums.pop(stage, None)
        if not sums:
            return
        n = sums.pop("crystals")
        for name, total in sums.items():
            self.log(f"{stage}_{name}", total / n, on_step=False, on_epoch=True, batch_size=n,
                     prog_bar=stage == "val" and name == "loss", sync_dist=self._sync)

    @property
    def _sync(self) -> bool:
        """Average epoch metrics over data-parallel processes (each trains on its share of the batches)."""
        return self._trainer is not None and self.trainer.world_size > 1

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # random state, so that a resumed run continues exactly (dropout); plain tensors: loads with weights_only
        checkpoint["rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if isinstance(checkpoint.get("rng_state"), torch.Tensor):
            torch.set_rng_state(checkpoint["rng_state"])

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        if batch_idx + 1 == self.trainer.num_training_batches:
            # logged from the last step, not on_train_epoch_end: callbacks (metrics.csv) run before the module's hook
            self._log_epoch("train")
        return loss

    def on_train_epoch_start(self) -> None:
        self._sums.pop("train", None)  # a resumed or interrupted epoch starts its sums afresh

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def configure_optimizers(self):
        o = self.optim
        optimizer = make_optimizer(o["optimizer"], self.model.parameters(), o["lr"], o["weight_decay"], o["momentum"])
        schedule = o["scheduler"]
        if schedule == "none":
            return optimizer
        if schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=o["epochs"], eta_min=o["lr"] * 0.01)
        elif schedule == "step":
            milestones = [int(o["epochs"] * f) for f in (0.5, 0.75)]
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
        elif schedule == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=10)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}
        else:
            raise ValueError(f"unknown scheduler {schedule!r}; choose none, cosine, step or plateau")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
