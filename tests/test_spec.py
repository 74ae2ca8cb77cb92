"""The saved-model spec: one typed, versioned object owns the checkpoint format."""

from __future__ import annotations

import pytest
import torch

from cgcnn_lab.checkpoint import CheckpointError
from cgcnn_lab.cli import main
from cgcnn_lab.data.elements import ElementEncoding
from cgcnn_lab.data.graph import GraphConfig
from cgcnn_lab.inference import load_trained
from cgcnn_lab.model.config import LEGACY_DEGREE_HISTOGRAM, ModelConfig
from cgcnn_lab.spec import SPEC_VERSION, ModelSpec
from cgcnn_lab.targets import TargetTransform


def _spec(**model) -> ModelSpec:
    config = ModelConfig(n_conv=2, atom_fea_len=16, h_fea_len=8, **model)
    return ModelSpec(config, GraphConfig(max_neighbors=8), ElementEncoding.cgcnn92(),
                     TargetTransform(True, [-1.5], [0.7]), ["e"], "eV")


def _version1(spec: ModelSpec) -> dict:
    """The dict cgcnn-lab 0.1 wrote (train/run.py before the spec had an owner): no format, no histogram."""
    d = spec.to_dict()
    d["version"] = 1
    del d["format"]
    del d["model"]["degree_histogram"]
    return d


def _checkpoint(tmp_path, stored: dict):
    model = ModelSpec.from_dict(stored).build_model() if stored.get("version", 0) in (1, 2) else _spec().build_model()
    path = tmp_path / "model.ckpt"
    torch.save({"hyper_parameters": {"spec": stored},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def test_round_trip_keeps_every_field():
    spec = _spec(conv="shared", pool="sum")
    back = ModelSpec.from_dict(spec.to_dict())
    assert back.to_dict() == spec.to_dict() and back.model == spec.model and back.transform == spec.transform
    assert back.version == SPEC_VERSION and back.per_atom and back.task == "regression"
    assert (back.encoding.table == spec.encoding.table).all()


def test_run_folders_written_before_the_spec_had_an_owner_still_load(tmp_path):
    stored = _version1(_spec())
    trained = load_trained(_checkpoint(tmp_path, stored))
    assert trained.spec.version == SPEC_VERSION and trained.spec.unit == "eV" and trained.graph_config.max_neighbors == 8
    assert trained.spec.transform == TargetTransform(True, [-1.5], [0.7])


def test_a_version_1_pna_model_gets_the_histogram_version_1_used():
    stored = _version1(_spec(conv="pyg-pna", degree_histogram=[0, 1]))
    assert ModelSpec.from_dict(stored).model.degree_histogram == LEGACY_DEGREE_HISTOGRAM


def test_a_newer_version_is_refused_with_one_clear_message(tmp_path, capsys):
    stored = {**_spec().to_dict(), "version": SPEC_VERSION + 1}
    with pytest.raises(CheckpointError, match="newer cgcnn-lab.*upgrade"):
        ModelSpec.from_dict(stored, "x.ckpt")
    path = _checkpoint(tmp_path, stored)
    assert main(["export", str(path), "--out", str(tmp_path / "x.pth.tar")]) == 2
    err = capsys.readouterr().err
    assert f"saved-model spec version {SPEC_VERSION + 1}" in err and "Traceback" not in err


@pytest.mark.parametrize("version", [None, 0, "2", True])
def test_an_unknown_version_is_refused(version):
    with pytest.raises(CheckpointError, match="unknown saved-model spec version"):
        ModelSpec.from_dict({**_spec().to_dict(), "version": version})


def test_something_else_is_not_a_cgcnn_lab_checkpoint():
    with pytest.raises(CheckpointError, match="not a cgcnn-lab checkpoint"):
        ModelSpec.from_dict({"epoch": 3})
