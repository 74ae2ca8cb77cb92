"""One definition per option: a dataclass field that carries its help text, flag and choices.

``ModelConfig``, ``DataOptions`` and ``TrainOptions`` declare their fields with :func:`option`; the command
line (``cli.py``), the experiment lab's factors (``experiments.py``) and the presets are generated from these
fields, so a default, a choice or a help text is written once. Plain ``dataclasses``: importing this costs
nothing, so ``cgcnn-lab --help`` needs neither torch nor pymatgen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

# values a command-line "auto/on/off" option or a compare factor may spell
ON, OFF, NONE = ("on", "true", "1", "yes"), ("off", "false", "0", "no"), ("none", "auto", "scratch", "")


def option(default: Any = dataclasses.MISSING, *, help: str, group: str, flag: str | None = None,
           choices: Sequence[str] | None = None, metavar: str | None = None, style: str | None = None,
           factor: bool = True, weights: bool = False, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that is also a command-line option (``flag``: default ``--field-name``) and, with
    ``factor``, a factor of ``compare``. ``style``: ``"on-off"`` for a bool spelled on/off, ``"auto"`` for a
    bool or None spelled auto/on/off, ``"negate"`` for a bool default True switched off by the flag. ``weights``:
    a trained network's weights depend on it, so fine-tuning takes the checkpoint's value (train/finetune.py)."""
    meta = {"help": help, "group": group, "flag": flag, "choices": choices, "metavar": metavar, "style": style,
            "factor": factor, "weights": weights}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def options_of(cls) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are options (in declaration order)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def factor_name(f: dataclasses.Field) -> str:
    """A field's name in ``compare --grid``: its flag in snake case (``--max-nbr`` -> ``max_nbr``)."""
    return flag_of(f).removeprefix("--").replace("-", "_")


def value_type(f: dataclasses.Field) -> str:
    """The base type of a field's annotation: ``"float | None"`` -> ``"float"``."""
    parts = [p.strip() for p in str(f.type).split("|")]
    return next(p for p in parts if p != "None")


def parse_value(f: dataclasses.Field, text: str) -> Any:
    """A field's value from text as a user writes it (command line or ``compare --grid``)."""
    kind, optional, low = value_type(f), "None" in str(f.type), str(text).strip().lower()
    if kind == "bool":
        if low in ON:
            return True
        if low in OFF:
            return False
        if optional and low in NONE:
            return None
        raise ValueError(f"{factor_name(f)}: expected on/off{'/auto' if optional else ''}, got {text!r}")
    if optional and low in NONE + (("off",) if kind != "str" else ()):
        return None
    value = {"int": int, "float": float}.get(kind, str)(text)
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ValueError(f"{factor_name(f)} {text!r}: choose from {', '.join(choices)}")
    return value


def text_of(f: dataclasses.Field, value: Any) -> str:
    """The inverse of :func:`parse_value`: how a value is written in ``compare``'s tables."""
    if value is None:
        return "auto" if value_type(f) == "bool" else "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def weight_options(cls) -> tuple[str, ...]:
    """The fields of ``cls`` that a trained network's weights depend on."""
    return tuple(f.name for f in options_of(cls) if f.metadata["weights"])
