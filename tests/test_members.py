"""--members K: K ensemble members trained as one network, each equal to its own separate run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import cgcnn_lab
from cgcnn_lab.cli import main
from cgcnn_lab.data.demo import DEMO_TARGET, write_demo_dataset
from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.data.sources import DataError
from cgcnn_lab.inference import load_trained
from cgcnn_lab.model import members as members_module
from cgcnn_lab.model.config import ModelConfig
from cgcnn_lab.model.members import MemberStack
from cgcnn_lab.model.network import CGCNN
from cgcnn_lab.training.options import DataOptions, TrainOptions
from cgcnn_lab.training.run import train


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("data") / "demo.csv.gz", n=120, seed=3)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


def _batch(table, cache, collapse: bool):
    dataset = cgcnn_lab.featurize(str(table), targets=[DEMO_TARGET], cache_dir=cache)
    y = dataset.targets
    loader = dataset.loader(np.arange(48), batch_size=48, collapse=collapse, targets=(y - y.mean()) / y.std())
    return next(iter(loader))


CONFIGS = [
    {"n_conv": 2},  # the paper's network: the fused edge step in training
    {"n_conv": 2, "readout": "atom", "stoichiometry": True, "n_h": 2},
    {"n_conv": 1, "activation": "relu", "pool": "max"},  # the composite edge step
    {"n_conv": 2, "atom_encoding": "learned", "batchnorm": False, "pool": "sum"},
    {"conv": "none"},
]


@pytest.mark.parametrize("collapse", [True, False])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_the_stack_computes_each_members_own_function(table, cache, config, collapse):
    """Training-mode outputs, every gradient and the running statistics, then evaluation, in float64."""
    batch = _batch(table, cache, collapse)
    table_ = None if config.get("atom_encoding") == "learned" else ElementEncoding.cgcnn92().table
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append(CGCNN(ModelConfig(atom_fea_len=16, h_fea_len=16, **config), table_).double().train())
    stack = MemberStack(copy.deepcopy(members)).train()
    batch.y = batch.y.double()
    out = stack(batch)
    if stack._compiled_step(out):  # the compiled chains ran, not their uncompiled fallback (model/compiled.py)
        assert members_module._bn_gate.compiled is not None and not members_module._bn_gate.failed
    ref = torch.stack([m(batch) for m in members])
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    upstream = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    for k, member in enumerate(members):
        mine = stack.member_state(k, {name: t.grad for name, t in stack.stacked_tensors().items()
                                      if isinstance(t, torch.nn.Parameter)})
        for name, p in member.named_parameters():
            if name.endswith("fc_full.bias") and config.get("batchnorm", True):  # batch norm follows: exactly zero
                assert not p.grad.any() and not mine[name].any(), name
            torch.testing.assert_close(mine[name], p.grad, rtol=1e-8, atol=1e-10, msg=name)
        state = member.state_dict()
        for name, value in stack.member_state(k).items():
            torch.testing.assert_close(value, state[name], msg=name)  # running statistics included
    stack.eval()
    with torch.no_grad():
        evaluated = torch.stack([m.eval()(batch) for m in members])
        torch.testing.assert_close(stack(batch), evaluated, rtol=1e-10, atol=1e-10)
    if stack._compiled_step(out):  # evaluation's compiled chains ran too
        assert members_module._gate_eval.compiled is not None and not members_module._gate_eval.failed
    assert isinstance(stack.member(2), CGCNN)


def _options(tmp_path, name, **kw):
    return TrainOptions(epochs=kw.pop("epochs", 4), batch_size=32, out=str(tmp_path / name), progress=False, **kw)


def test_member_0_is_the_plain_run_and_the_folder_is_an_ensemble(table, cache, tmp_path):
    data = DataOptions(source=str(table), targets=[DEMO_TARGET], unit="eV/atom", cache_dir=cache)
    model = ModelConfig(n_conv=2, atom_fea_len=16, h_fea_len=16)
    plain = train(data, model, _options(tmp_path, "plain", ema=0.9), log=lambda *_: None)  # the matbench preset's
    result = train(data, model, _options(tmp_path, "members", members=3, ema=0.9), log=lambda *_: None)
    out = result.out
    assert sorted(p.name for p in out.glob("member*")) == ["member0", "member1", "member2"]
    record = json.loads((out / "ensemble.json").read_text())
    assert record["members"] == ["member0", "member1", "member2"] and record["scale"][0] > 0
    assert result.metrics["members"] == 3 and len(result.metrics["member_best_epochs"]) == 3
    assert result.metrics["best_val_mae"] == pytest.approx(record["val_mae"])  # the ensemble's, what compare ranks
    assert len(result.metrics["member_test_scores"]) == 3
    curve = pd.read_csv(out / "metrics.csv")
    assert {"val_member_mae0", "val_member_mae2", "val_ensemble_mae"} <= set(curve.columns)
    # same initialisation and batches: member 0 predicts what the plain run predicts, to float tolerance
    first, alone = (np.asarray(cgcnn_lab.predict(m, str(table), cache_dir=cache)) for m in (out / "member0", plain.out))
    np.testing.assert_allclose(first, alone, rtol=1e-4, atol=1e-4 * np.abs(alone).mean())
    second = np.asarray(cgcnn_lab.predict(out / "member1", str(table), cache_dir=cache))
    assert np.abs(second - alone).mean() > 1e-3 * np.abs(alone).mean()  # another initialisation
    # predict reads the run folder as the ensemble: the mean of the members, with their calibrated spread
    assert main(["predict", str(out), str(table), "--out", str(tmp_path / "p.csv"), "--cache-dir", cache]) == 0
    frame = pd.read_csv(tmp_path / "p.csv")
    assert "prediction_std" in frame and (frame["prediction_std"] > 0).all()
    # the members of one or several runs join an ensemble like separate runs (and --select chooses among them)
    argv = ["ensemble", str(table), "--target", DEMO_TARGET, "--members", str(out), str(plain.out), "--out",
            str(tmp_path / "joined"), "--cache-dir", cache]
    assert main(argv) == 0
    joined = json.loads((tmp_path / "joined" / "ensemble.json").read_text())
    assert joined["members"] == ["../members/member0", "../members/member1", "../members/member2", "../plain"]
    # a member is an ordinary model: exported alone
    assert main(["export", str(out / "member1"), "--format", "safetensors", "--out", str(tmp_path / "one")]) == 0
    assert load_trained(tmp_path / "one").spec.model.conv == "gated"


def test_members_classify_stop_on_patience_and_resume(table, cache, tmp_path):
    median = float(pd.read_csv(table)[DEMO_TARGET].median())
    data = DataOptions(source=str(table), targets=[DEMO_TARGET], threshold=median, cache_dir=cache)
    model = ModelConfig(n_conv=1, atom_fea_len=16, h_fea_len=16, task="classification")
    result = train(data, model, _options(tmp_path, "cls", epochs=3, members=2, scheduler="none"), log=lambda *_: None)
    assert "test_accuracy" in result.metrics and (result.out / "member1" / "model.safetensors").is_file()
    assert result.metrics["best_val_loss"] == json.loads((result.out / "ensemble.json").read_text())["val_loss"] > 0
    with pytest.raises(DataError, match="members: 2 in the run, 3 now"):
        train(data, model, _options(tmp_path, "cls", epochs=5, members=3, resume=True), log=lambda *_: None)
    resumed = train(data, model, _options(tmp_path, "cls", epochs=5, members=2, scheduler="none", resume=True),
                    log=lambda *_: None)
    straight = train(data, model, _options(tmp_path, "straight", epochs=5, members=2, scheduler="none"),
                     log=lambda *_: None)
    for k in range(2):  # best weights and the optimiser travel in the checkpoint: resuming changes nothing
        a, b = (load_trained(run.out / f"member{k}").model.state_dict() for run in (resumed, straight))
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    stopped = train(data, model, _options(tmp_path, "stop", epochs=40, members=2, patience=1, lr=0.5),
                    log=lambda *_: None)
    assert stopped.metrics["epochs_run"] < 40  # every member ran out of patience


def test_what_members_cannot_stack_is_said(table, cache, tmp_path, capsys):
    argv = ["train", str(table), "--target", DEMO_TARGET, "--members", "2", "--conv", "shared", "--epochs", "1",
            "--out", str(tmp_path / "x"), "--cache-dir", cache, "--no-progress"]
    assert main(argv) != 0
    assert "--members trains the gated convolution" in capsys.readouterr().err
    argv[argv.index("shared")] = "gated"
    assert main([*argv, "--devices", "2"]) != 0
    assert "does not combine with several devices" in capsys.readouterr().err
    assert main([*argv[:5], "0", *argv[6:]]) != 0
    assert "--members 0" in capsys.readouterr().err
