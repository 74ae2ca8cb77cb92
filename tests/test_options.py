"""Options are defined once (dataclass fields) and the command line, compare's factors and presets follow."""

from __future__ import annotations

import dataclasses

import pytest

from cgcnn_lab.cli import build_parser, given_options, training_options
from cgcnn_lab.experiments import FACTORS
from cgcnn_lab.model.config import ModelConfig
from cgcnn_lab.optionfield import flag_of, options_of, parse_value, text_of
from cgcnn_lab.training.options import DataOptions, TrainOptions

CLASSES = (DataOptions, ModelConfig, TrainOptions)


def parse(*argv: str):
    parser = build_parser()
    args = parser.parse_args(["train", "data.csv", *argv])
    args.asked = given_options(args.subparsers["train"], ["train", "data.csv", *argv])
    return training_options(args, "runs/data")


def test_defaults_on_the_command_line_are_the_dataclass_defaults():
    data, model, opts = parse()
    assert data == DataOptions(source="data.csv")
    assert model == ModelConfig()
    assert opts == TrainOptions(out="runs/data", asked=())


def test_every_option_field_is_a_flag_of_train():
    flags = {s for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions for s in a.option_strings}
    for cls in CLASSES:
        for f in options_of(cls):
            assert flag_of(f) in flags, f.name


def test_values_are_typed_as_the_fields_are():
    data, model, opts = parse("--batchnorm", "off", "--element-ref", "on", "--stream", "on", "--no-cache",
                              "--max-nbr", "8", "--shell-tol", "0.01", "--lr", "1e-3", "--no-progress", "--out", "x")
    assert (model.batchnorm, data.element_ref, data.stream, data.use_cache) == (False, True, True, False)
    assert (data.max_neighbors, data.shell_tol, opts.lr, opts.progress, opts.out) == (8, 0.01, 1e-3, False, "x")
    assert parse("--element-ref", "auto")[0].element_ref is None


def test_a_wrong_value_names_the_option(capsys):
    with pytest.raises(SystemExit):
        parse("--batchnorm", "maybe")
    assert "--batchnorm" in capsys.readouterr().err


def test_compare_factors_are_the_fields_marked_as_factors():
    expected = {f.name for cls in CLASSES for f in options_of(cls) if f.metadata["factor"]}
    assert {field.name for _, field in FACTORS.values()} == expected
    assert "max_nbr" in FACTORS and FACTORS["max_nbr"][1].name == "max_neighbors"  # named as on the command line


@pytest.mark.parametrize("factor", sorted(FACTORS))
def test_factor_text_round_trips(factor):
    where, field = FACTORS[factor]
    cls = {"data": DataOptions, "model": ModelConfig, "train": TrainOptions}[where]
    default = getattr(cls(), field.name)
    assert parse_value(field, text_of(field, default)) == default


def test_options_have_help_and_a_known_group():
    for cls in CLASSES:
        for f in options_of(cls):
            assert f.metadata["help"] and f.metadata["group"] in ("data", "graph", "target", "model", "split", "training")
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
