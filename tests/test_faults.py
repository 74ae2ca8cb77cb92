"""Faults and scale-out: a killed run resumes to the same result; two DDP processes train like one.

Both run the real command line in subprocesses (as a user or a cluster would), on small generated data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from cgcnn_lab.data.demo import DEMO_TARGET, write_demo_dataset
from cgcnn_lab.inference import safe_load

COMMON = ["--target", DEMO_TARGET, "--n-conv", "2", "--atom-fea-len", "32", "--h-fea-len", "32", "--batch-size", "32",
          "--lr", "3e-3", "--dropout", "0.1", "--no-progress"]


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("data") / "demo.csv.gz", n=120, seed=2)


def cli(*args: str, cache: Path) -> list[str]:
    return [sys.executable, "-m", "cgcnn_lab.cli", "train", *args, "--cache-dir", str(cache)]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def epochs_done(run: Path) -> int:
    try:
        return len(pd.read_csv(run / "metrics.csv"))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


EPOCHS = "6"


@pytest.fixture(scope="module")
def uninterrupted(table, tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("whole")
    whole = base / "run"
    subprocess.run(cli(str(table), *COMMON, "--epochs", EPOCHS, "--out", str(whole), cache=base / "c"),
                   check=True, capture_output=True, env=env())
    return whole, base / "c"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_killed_run_resumes_to_the_same_result(table, uninterrupted, tmp_path, sig):
    """Kill a run mid-training, resume it: metrics, test predictions and weights equal an uninterrupted run."""
    epochs = EPOCHS
    (whole, cache), killed = uninterrupted, tmp_path / "killed"

    # a shell starts background jobs with SIGINT ignored, and the child would inherit that: restore the default so
    # that the signal means what it means at a terminal, however the tests were started
    proc = subprocess.Popen(cli(str(table), *COMMON, "--epochs", epochs, "--out", str(killed), cache=cache),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509  one signal disposition, no locks
    deadline = time.time() + 120
    while epochs_done(killed) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    done = epochs_done(killed)
    assert 2 <= done < int(epochs), f"the run was not interrupted mid-training ({done} epochs done)"
    assert safe_load(killed / "checkpoints" / "last.ckpt")["epoch"] + 1 >= done - 1  # at most one epoch lost

    subprocess.run(cli(str(table), *COMMON, "--epochs", epochs, "--out", str(killed), "--resume", cache=cache),
                   check=True, capture_output=True, env=env())
    a, b = pd.read_csv(whole / "metrics.csv"), pd.read_csv(killed / "metrics.csv")
    cols = ["epoch", "train_loss", "val_loss", "train_mae", "val_mae", "lr"]
    pd.testing.assert_frame_equal(a[cols], b[cols], rtol=1e-6)
    pd.testing.assert_frame_equal(pd.read_csv(whole / "test_results.csv"), pd.read_csv(killed / "test_results.csv"),
                                  rtol=1e-6)
    wa = safe_load(whole / "checkpoints" / "last.ckpt")["state_dict"]
    wb = safe_load(killed / "checkpoints" / "last.ckpt")["state_dict"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-6, atol=1e-7)


def test_corrupted_last_checkpoint_is_a_clear_error(table, uninterrupted, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(uninterrupted[0], run)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    result = subprocess.run(cli(str(table), *COMMON, "--epochs", "2", "--out", str(run), "--resume",
                                cache=tmp_path / "c"), capture_output=True, text=True, env=env(), check=False)
    assert result.returncode == 2
    assert "last.ckpt" in result.stderr and "Traceback" not in result.stderr


def test_ddp_on_two_cpu_processes_matches_one_process(table, tmp_path):
    """Lightning DDP (gloo) with 2 CPU processes: same global batch, metrics within noise of a single process."""
    results = {}
    for name, extra in (("one", []), ("ddp", ["--devices", "2", "--strategy", "ddp"])):
        run = tmp_path / name
        proc = subprocess.run(cli(str(table), *COMMON, "--epochs", "10", "--out", str(run), *extra,
                                  cache=tmp_path / "c"), capture_output=True, text=True, env=env(), timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[name] = json.loads((run / "metrics.json").read_text())
        assert len(pd.read_csv(run / "metrics.csv")) == 10
    one, ddp = results["one"]["test_mae"], results["ddp"]["test_mae"]
    assert ddp == pytest.approx(one, rel=0.35), (one, ddp)
