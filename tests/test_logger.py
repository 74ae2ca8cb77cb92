"""Experiment tracking (``--logger``): what TensorBoard, MLflow, the CSV logger and W&B wrote, read back with their
own readers and checked against the run folder's metrics.csv and metrics.json."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import cgcnn_lab
from cgcnn_lab.cli import main
from cgcnn_lab.data.demo import DEMO_TARGET, write_demo_dataset
from cgcnn_lab.training.options import TrainOptions

TINY = ["--n-conv", "1", "--atom-fea-len", "16", "--h-fea-len", "16", "--batch-size", "16", "--threads", "1",
        "--no-progress"]


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("logger") / "demo.csv.gz", n=60, seed=3)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


def train(table: Path, cache: str, out: Path, *argv: str) -> Path:
    assert main(["train", str(table), "--target", DEMO_TARGET, "--out", str(out), "--cache-dir", cache, *TINY,
                 *argv]) == 0
    return out


@pytest.fixture(scope="module")
def tracked(table, cache, tmp_path_factory) -> Path:
    """One 3-epoch run logged by three loggers at once (two spellings of the option)."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    return train(table, cache, tmp_path_factory.mktemp("tracked") / "run", "--epochs", "3",
                 "--logger", "csv,tensorboard", "--logger", "mlflow")


def run_files(out: Path) -> tuple[pd.DataFrame, dict]:
    return pd.read_csv(out / "metrics.csv"), json.loads((out / "metrics.json").read_text())


def mlflow_runs(out: Path) -> tuple:
    from mlflow.tracking import MlflowClient

    client = MlflowClient((out / "logs" / "mlflow").resolve().as_uri())
    experiment = client.get_experiment_by_name("cgcnn-lab")
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_tensorboard_holds_every_epoch_the_test_metrics_and_the_hyperparameters(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    curve, metrics = run_files(tracked)
    events = EventAccumulator(str(tracked / "logs" / "tensorboard" / "version_0"))
    events.Reload()
    for name in ("train_loss", "val_loss", "val_mae"):
        assert [e.value for e in events.Scalars(name)] == pytest.approx(curve[name].tolist(), rel=1e-6), name
    assert len(events.Scalars("lr-AdamW")) == 3
    assert events.Scalars("test_mae")[-1].value == pytest.approx(metrics["test_mae"], rel=1e-6)
    hparams = {tag: plugin_data_pb2.HParamsPluginData.FromString(content)
               for tag, content in events.PluginTagToContent("hparams").items()}
    start = hparams["_hparams_/session_start_info"].session_start_info.hparams
    assert start["train/epochs"].number_value == 3 and start["model/n_conv"].number_value == 1
    assert start["data/targets"].string_value == str([DEMO_TARGET])
    shown = {m.name.tag for m in hparams["_hparams_/experiment"].experiment.metric_infos}
    assert {"test_mae", "test_rmse", "best_val_mae"} <= shown  # the HPARAMS table's columns


def test_mlflow_holds_the_options_every_epoch_and_the_test_metrics(tracked):
    curve, metrics = run_files(tracked)
    client, runs = mlflow_runs(tracked)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == str(tracked)
    params = run.data.params
    assert params["train/epochs"] == "3" and params["model/n_conv"] == "1" and params["train/logger"] == str(
        ["csv", "tensorboard", "mlflow"])
    assert run.data.metrics["test_mae"] == pytest.approx(metrics["test_mae"], rel=1e-9)
    assert run.data.metrics["test_r2"] == pytest.approx(metrics["test_r2"], rel=1e-9)
    history = client.get_metric_history(run.info.run_id, "val_mae")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(curve["val_mae"].tolist())


def test_csv_logger_writes_lightnings_table_and_the_options(tracked):
    curve, metrics = run_files(tracked)
    logs = tracked / "logs" / "csv" / "version_0"
    table = pd.read_csv(logs / "metrics.csv")
    assert table["val_mae"].dropna().tolist() == pytest.approx(curve["val_mae"].tolist())
    assert table["test_mae"].dropna().tolist() == pytest.approx([metrics["test_mae"]])
    options = yaml.safe_load((logs / "hparams.yaml").read_text())
    assert options["train"]["epochs"] == 3 and options["model"]["n_conv"] == 1


def test_a_resumed_run_logs_a_new_version_and_each_fold_its_own(table, cache, tmp_path):
    """--resume may raise --epochs (MLflow refuses a changed parameter in one run): a new version/run; each fold of
    --folds is an ordinary run with its own logs. From Python, ``logger`` takes one name or a comma list."""
    pytest.importorskip("mlflow")
    kw = {"targets": [DEMO_TARGET], "n_conv": 1, "atom_fea_len": 16, "h_fea_len": 16, "threads": 1,
          "progress": False, "cache_dir": cache, "out": str(tmp_path / "run"), "logger": "csv,mlflow",
          "log": lambda *_: None}
    cgcnn_lab.train(str(table), epochs=1, **kw)
    result = cgcnn_lab.train(str(table), epochs=2, resume=True, **kw)
    logs = result.out / "logs"
    assert sorted(p.name for p in (logs / "csv").iterdir()) == ["version_0", "version_1"]
    resumed = pd.read_csv(logs / "csv" / "version_1" / "metrics.csv")
    assert resumed["epoch"].dropna().unique().tolist() == [1]  # the second epoch only
    _, runs = mlflow_runs(result.out)
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert [r.data.params["train/epochs"] for r in runs] == ["1", "2"]
    assert runs[1].data.metrics["test_mae"] == pytest.approx(result.metrics["test_mae"], rel=1e-9)

    cv = train(table, cache, tmp_path / "cv", "--epochs", "1", "--folds", "2", "--logger", "csv")
    for k in range(2):
        fold_logs = pd.read_csv(cv / f"fold{k}" / "logs" / "csv" / "version_0" / "metrics.csv")
        fold_metrics = json.loads((cv / f"fold{k}" / "metrics.json").read_text())
        assert fold_logs["test_mae"].dropna().tolist() == pytest.approx([fold_metrics["test_mae"]])


def test_wandb_logs_offline_into_the_run_folder(table, cache, tmp_path):
    pytest.importorskip("wandb")
    out = train(table, cache, tmp_path / "run", "--epochs", "1", "--logger", "wandb")
    (run,) = (out / "logs" / "wandb").glob("offline-run-*")
    (records,) = run.glob("*.wandb")  # W&B's own binary log; `wandb sync` uploads it
    deadline = time.monotonic() + 30  # its service process writes the file out just after the run's finish()
    while b"test_mae" not in (data := records.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [name for name in (b"test_mae", b"val_mae", b"n_conv", b"cgcnn-lab") if name not in data] == []


@pytest.mark.parametrize("name", ["tensorboard", "mlflow", "wandb"])
def test_a_missing_package_is_one_line_naming_the_extra(name, table, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, name, None)  # as if not installed: its import fails
    out = tmp_path / "run"
    assert main(["train", str(table), "--target", DEMO_TARGET, "--out", str(out), "--logger", f"csv,{name}"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --logger {name} needs {name}: pip install 'cgcnn-lab[{name}]'\n"
    assert not out.exists()  # stopped before reading the data


def test_logger_names_from_the_command_line_and_python(capsys):
    assert TrainOptions(logger="TensorBoard, mlflow").logger == ["tensorboard", "mlflow"]
    assert TrainOptions(logger=["csv", "csv,wandb"]).logger == ["csv", "wandb"]
    assert TrainOptions().logger == []
    assert main(["train", "data.csv", "--logger", "neptune"]) == 2
    assert capsys.readouterr().err == "error: --logger neptune: choose from csv, tensorboard, mlflow, wandb\n"
