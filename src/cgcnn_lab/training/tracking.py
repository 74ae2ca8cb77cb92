"""Experiment tracking (``--logger csv|tensorboard|mlflow|wandb``): Lightning's loggers, every one offline and
inside the run folder (``OUT/logs/NAME``), so a run needs no server, account or network and its logs travel with
it. Each gets the run's configuration (config.json) as hyper-parameters, the train/validation metrics and learning
rate of every epoch, and at the end the numbers of metrics.json (the test metrics).

A resumed run (``--resume``) logs as a new version/run of the same folder, its steps continuing the old ones: the
CSV logger would otherwise delete its earlier file and MLflow refuses changed parameters (``--epochs`` raised).
"""

from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path

from cgcnn_lab.data.sources import DataError

# the module each logger needs; the extra of cgcnn-lab that installs it has the logger's name
NEEDS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
PROJECT = "cgcnn-lab"  # MLflow's experiment and W&B's project name; each run folder has its own store


def check_loggers(names: list[str]) -> None:
    """Stop before any work when a chosen logger's package is missing, naming the extra that installs it."""
    for name in names:
        module = NEEDS.get(name)
        if module is None:
            continue
        try:
            importlib.import_module(module)
        except ImportError as err:
            detail = "" if err.name in (module, None) else f" ({err})"  # a package of its own that is missing
            raise DataError(f"--logger {name} needs {module}: pip install 'cgcnn-lab[{name}]'{detail}") from None


def make_loggers(names: list[str], out: Path) -> list:
    """Lightning loggers writing under ``out/logs``, in the order asked (none: no logs folder)."""
    if not names:
        return []
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return [_MAKERS[name](logs, out) for name in names]


def _csv(logs: Path, out: Path):
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(logs, name="csv")  # logs/csv/version_N/{metrics.csv,hparams.yaml}


def _tensorboard(logs: Path, out: Path):
    from lightning.pytorch.loggers import TensorBoardLogger

    # no placeholder hp_metric: the hyper-parameters are written once, at the end, with the test metrics
    return TensorBoardLogger(logs, name="tensorboard", default_hp_metric=False)


def _mlflow(logs: Path, out: Path):
    """A local file store (``file:`` URI): no database or server. MLflow 3 keeps it in maintenance mode and asks
    for an explicit opt-in; a database store would need SQLAlchemy and ~10 s of schema migrations per run."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from lightning.pytorch.loggers import MLFlowLogger
    from lightning.pytorch.utilities import rank_zero_only
    from mlflow.tracking import MlflowClient

    uri = (logs / "mlflow").resolve().as_uri()
    client = MlflowClient(uri)
    # made here, so Lightning does not warn that it is missing; by one process (data-parallel ones log nothing)
    if rank_zero_only.rank == 0 and client.get_experiment_by_name(PROJECT) is None:
        client.create_experiment(PROJECT)
    return MLFlowLogger(experiment_name=PROJECT, run_name=str(out), tracking_uri=uri)


def _wandb(logs: Path, out: Path):
    from lightning.pytorch.loggers import WandbLogger

    # offline: logs/wandb/offline-run-*, uploaded later, if wanted, by `wandb sync`
    return WandbLogger(project=PROJECT, name=str(out), save_dir=str(logs), offline=True)


_MAKERS = {"csv": _csv, "tensorboard": _tensorboard, "mlflow": _mlflow, "wandb": _wandb}


def log_config(loggers: list, config: dict) -> None:
    """The run's configuration (config.json, nested keys joined by '/') as every logger's hyper-parameters."""
    for logger in loggers:
        logger.log_hyperparams(_as_json(config))


def _as_json(config: dict) -> dict:
    """``config`` as config.json holds it: tuples as lists, so that hparams.yaml is plain YAML."""
    return json.loads(json.dumps(config))


def final_metrics(metrics: dict) -> dict[str, float]:
    """The numbers of metrics.json (test scores, best validation value, epochs, seconds): lists, units and
    missing values are left out."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)}


def log_final(loggers: list, config: dict, metrics: dict, step: int) -> None:
    """The run's final numbers to every logger, which is then closed. TensorBoard takes them with the
    hyper-parameters: its HPARAMS table shows a metric only when written that way."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    final = final_metrics(metrics)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(_as_json(config), metrics=final)
        else:
            logger.log_metrics(final, step=step)
        logger.save()
        logger.finalize("success")
        if isinstance(logger, WandbLogger):  # the next run in this process would otherwise log into this one
            logger.experiment.finish()
