"""Lightning callbacks of a run: metrics.csv after every epoch, the weight average, and quiet banners."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pandas as pd

from cgcnn_lab.cpu import set_threads
from cgcnn_lab.data.sources import DataError


class EpochMetricsCSV:
    """Lightning callback that writes metrics.csv after every epoch (atomically: survives a killed run)."""

    def __new__(cls, path: Path):
        import lightning as L

        class _Writer(L.Callback):
            def __init__(self) -> None:
                self.path = path
                self.start = time.perf_counter()

            def on_train_epoch_end(self, trainer, pl_module) -> None:
                if trainer.sanity_checking or trainer.global_rank != 0:
                    return
                m = {k: float(v) for k, v in trainer.callback_metrics.items()}
                row = {"epoch": trainer.current_epoch + 1}
                for k in ("train_loss", "val_loss", "train_mae", "val_mae", "train_accuracy", "val_accuracy"):
                    if k in m:
                        row[k] = m[k]
                # --members: the ensemble's and each member's validation values (training/members.py)
                row |= {k: v for k, v in m.items() if k.startswith(("val_ensemble_", "val_member_"))}
                row["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
                row["seconds"] = round(time.perf_counter() - self.start, 3)
                frame = pd.DataFrame([row])
                if self.path.exists():  # a resumed run may repeat the epoch its checkpoint was taken in
                    earlier = pd.read_csv(self.path)
                    frame = pd.concat([earlier[earlier["epoch"] < row["epoch"]], frame])
                tmp = self.path.with_suffix(".tmp")
                frame.to_csv(tmp, index=False)
                os.replace(tmp, self.path)

        return _Writer()


class EpochLines:
    """Lightning callback for output that is not watched live (a log file, a pipe): one plain line per epoch
    instead of a progress bar redrawn every step."""

    def __new__(cls, every: int = 1, log=print):
        import lightning as L

        class _Lines(L.Callback):
            def __init__(self) -> None:
                self.start = time.perf_counter()

            def on_train_epoch_end(self, trainer, pl_module) -> None:
                epoch = trainer.current_epoch + 1
                if trainer.sanity_checking or trainer.global_rank != 0 or (epoch % every and epoch != trainer.max_epochs):
                    return
                m = trainer.callback_metrics
                values = "  ".join(f"{k} {float(m[k]):.4g}" for k in
                                   ("train_loss", "val_loss", "val_mae", "val_accuracy") if k in m)
                log(f"epoch {epoch}/{trainer.max_epochs}  {values}  ({time.perf_counter() - self.start:.1f} s)",
                    flush=True)

        return _Lines()


class ShareCores:
    """Lightning callback: at the start of every epoch, use this training's share of the cores (``cpu.CoreShare``),
    so trainings started or finished meanwhile are taken into account within an epoch."""

    def __new__(cls, share):
        import lightning as L

        class _Share(L.Callback):
            def on_train_epoch_start(self, trainer, pl_module) -> None:
                set_threads(share.threads())

        return _Share()


def ema_callback(decay: float):
    """Lightning's exponential moving average of the weights: validation, checkpoints' ``state_dict`` and therefore
    predictions use the averaged weights; the raw ones travel in the checkpoint for ``--resume``. What
    ``EMAWeightAveraging(decay)`` does (after every step, buffers included), updated with one ``_foreach_lerp_`` over
    all tensors (``multi_avg_fn``) instead of its Python loop of three operators per tensor."""
    if not 0.0 < decay < 1.0:
        raise DataError(f"--ema {decay}: the decay must be between 0 and 1, e.g. 0.999")
    try:
        from lightning.pytorch.callbacks import WeightAveraging
    except ImportError:
        raise DataError("--ema needs lightning >= 2.6 (WeightAveraging)") from None
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    return WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(decay))  # updates after every step, as EMA's does


def quiet_lightning() -> None:
    """Lightning's banners ('GPU available', tips) are noise here; real warnings still show."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
