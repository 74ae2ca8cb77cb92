"""The package's structure: imports run one way (data -> model -> spec/targets -> inference -> training ->
lab/course -> cli and the top-level API), also inside functions; inference and the command line's start never
load the training stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cgcnn_lab"

# floor of each top-level part of the package: a module may import its own floor and those below it
FLOORS = {
    "optionfield": 0, "console": 0, "cpu": 0, "version": 0, "data": 1, "model": 2, "spec": 3, "targets": 3,
    "checkpoint": 3, "metrics": 3, "packaged": 3, "inference": 4, "original": 4, "zoo": 4, "embedding": 4,
    "deploy": 4, "ensembles": 4, "training": 5, "experiments": 6, "contributions": 6, "course": 6, "cli": 7,
    "__init__": 7, "web": 7,
}


def _part(module: str) -> str:
    """``cgcnn_lab.training.run`` -> ``train``; the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every cgcnn_lab import in a file, at any depth (functions included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("cgcnn_lab")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cgcnn_lab"):
            if node.module == "cgcnn_lab":  # from cgcnn_lab import original: the submodule's floor
                found += [(node.lineno, f"cgcnn_lab.{a.name}" if (SRC / a.name).exists()
                           or (SRC / f"{a.name}.py").exists() else "cgcnn_lab") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def _floor_violations() -> list[str]:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        module = "cgcnn_lab." + ".".join(path.relative_to(SRC).with_suffix("").parts)
        own = FLOORS[_part(module.removesuffix(".__init__")) if path.name != "__init__.py" or path.parent != SRC
                     else "__init__"]
        for line, target in _imports(path):
            if FLOORS[_part(target)] > own:
                bad.append(f"{path.relative_to(SRC)}:{line} imports {target} (a higher floor)")
    return bad


def test_imports_run_one_way_also_inside_functions():
    assert _floor_violations() == []


def test_every_module_has_a_floor():
    parts = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in SRC.glob("*") if p.suffix == ".py" or p.is_dir()}
    assert parts - {"__pycache__"} <= set(FLOORS)


def _heavy_after(code: str) -> list[str]:
    """The heavy libraries loaded by running ``code`` in a fresh interpreter."""
    probe = (f"{code}\nimport sys\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & "
             "{'lightning', 'torch_geometric', 'torchmetrics', 'torch', 'pymatgen', 'matplotlib', 'pandas', 'ase'}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return ast.literal_eval(out.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["cgcnn_lab.inference", "cgcnn_lab.original", "cgcnn_lab.contributions"])
def test_inference_never_loads_the_training_stack(module):
    loaded = _heavy_after(f"import {module}")
    assert not {"lightning", "torch_geometric", "torchmetrics"} & set(loaded), loaded


def test_the_command_line_starts_without_torch():
    """``cgcnn-lab --help`` (and every subcommand's help) builds its parser from the option dataclasses alone."""
    code = "from cgcnn_lab.cli import build_parser\nfor c in ('train', 'compare', 'predict'): build_parser()"
    assert _heavy_after(code) == []
    assert _heavy_after("import cgcnn_lab") == []


def test_featurising_imports_no_torch():
    code = "import cgcnn_lab.data.dataset, cgcnn_lab.data.featurize, cgcnn_lab.data.sources, cgcnn_lab.data.elements"
    assert not {"torch", "lightning", "torch_geometric"} & set(_heavy_after(code))


def test_lightning_lives_under_train_and_pyg_where_a_pyg_layer_is_built():
    """Lightning only under training/; torch_geometric only in model/pyg.py and, for a PyG ``Data`` view of one
    crystal, data/dataset.py (inside the method)."""
    for path in SRC.rglob("*.py"):
        text, rel = path.read_text(), str(path.relative_to(SRC))
        if "import lightning" in text or "from lightning" in text:
            assert rel.startswith("training/"), rel
        if "torch_geometric" in text.replace("torch_geometric (", ""):
            assert rel in ("model/pyg.py", "data/dataset.py") or "import torch_geometric" not in text \
                and "from torch_geometric" not in text, rel


def test_listing_the_zoo_reads_json_only():
    """``cgcnn-lab models`` prints the cards without importing torch (half a second, not four)."""
    assert _heavy_after("from cgcnn_lab import zoo\nfor n in zoo.names(): zoo.card(n)") == []
