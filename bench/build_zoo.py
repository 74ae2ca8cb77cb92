"""Build the model zoo that ships inside the package (``cgcnn-lab models``): train each model on its ``../shared``
dataset with a held-out test split, then package its best checkpoint as safetensors + a JSON card.

    .venv/bin/python bench/build_zoo.py                       # every model (resumes unfinished trainings)
    .venv/bin/python bench/build_zoo.py perovskite-e-form     # one model
    .venv/bin/python bench/build_zoo.py --package-only        # re-package finished runs (e.g. after a card change)

Each model's recipe is a ``cgcnn-lab train`` command line (below, the one source of it): the card records it, with
the test scores of the run, so every shipped number comes from one command. Runs go to ``runs/zoo/NAME``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ZOO = ROOT / "src" / "cgcnn_lab" / "zoo"

# name -> (data file under ../shared/data, description, licence of the data, train options)
RECIPES: dict[str, tuple[str, str, str, list[str]]] = {
    "perovskite-e-form": (
        "castelli_perovskites.csv.gz",
        ("Heat of formation of cubic ABX3 perovskites (5-atom cells; Castelli et al. 2012, the Matbench task "
        "matbench_perovskites), eV per cell. Held out: Matbench fold 0 (its official test fold)."),
        ("Computational Materials Repository, open with citation of Castelli et al., Energy Environ. Sci. 5, 5814 "
        "and 9034 (2012)"),
        ["--target", "e_form", "--unit", "eV", "--preset", "matbench", "--fold-col", "matbench_fold",
         "--test-fold", "0", "--seed", "0"]),
    "mp-perovskite-e-form": (
        "mp_perovskites.csv.gz",
        "Formation energy per atom of Materials Project perovskites (1,517 crystals), eV/atom.",
        "Materials Project, CC BY 4.0",
        ["--target", "e_form_per_atom", "--unit", "eV/atom", "--preset", "matbench", "--seed", "0"]),
    "mp-perovskite-band-gap": (
        "mp_perovskites.csv.gz",
        "PBE band gap of Materials Project perovskites (1,517 crystals), eV (0 for metals).",
        "Materials Project, CC BY 4.0",
        ["--target", "band_gap", "--unit", "eV", "--preset", "matbench", "--element-ref", "off", "--seed", "0"]),
    "mp-perovskite-metal": (
        "mp_perovskites.csv.gz",
        "Metal (PBE band gap 0) or not, Materials Project perovskites (1,517 crystals); class 1: band_gap > 0.",
        "Materials Project, CC BY 4.0",
        # the matbench preset's network and training (its L1 loss and element references are for regression)
        ["--target", "band_gap", "--task", "classification", "--threshold", "0", "--conv", "gated", "--n-conv", "4",
         "--atom-fea-len", "64", "--h-fea-len", "32", "--max-nbr", "8", "--optimizer", "adamw", "--lr", "2e-3",
         "--weight-decay", "0.01", "--scheduler", "cosine", "--ema", "0.999", "--epochs", "150", "--seed", "0"]),
    "perovskite-vs-oxides": (
        "perovskite_vs_oxides.csv.gz",
        ("Perovskite oxide (1) or another oxide (0): the course's classification task, 2,599 Materials Project "
        "oxides. Per-site readout: `cgcnn-lab explain` shows which sites make a crystal a perovskite."),
        "Materials Project, CC BY 4.0 (matminer's packaging: BSD-style)",
        ["--target", "is_perovskite", "--task", "classification", "--conv", "shared", "--readout", "atom",
         "--report-subset", "ABO3", "--seed", "0"]),
}


def run_folder(name: str) -> Path:
    return ROOT / "runs" / "zoo" / name


def train_command(name: str) -> list[str]:
    """The ``cgcnn-lab train`` command of a zoo model, as a user would type it from the repository root."""
    data, _, _, options = RECIPES[name]
    return ["cgcnn-lab", "train", f"../shared/data/{data}", *options, "--out", f"runs/zoo/{name}"]


def train(name: str) -> None:
    out = run_folder(name)
    resume = ["--resume"] if (out / "checkpoints" / "last.ckpt").is_file() else []
    if (out / "metrics.json").is_file():
        print(f"{name}: trained ({out})")
        return
    command = train_command(name)
    exe = str(Path(sys.executable).with_name("cgcnn-lab"))
    print(" ".join(command + resume), flush=True)
    subprocess.run([exe, *command[1:], *resume], cwd=ROOT, check=True)


def package(name: str) -> None:
    """safetensors + card from the run's best checkpoint, its metrics and the recipe."""
    from cgcnn_lab.deploy import package_run

    data, description, licence, _ = RECIPES[name]
    card = package_run(run_folder(name), ZOO / name, name=name, description=description,
                       data=f"../shared/data/{data}", licence=licence,
                       command=" ".join(train_command(name)) + f" && python bench/build_zoo.py --package-only {name}")
    print(f"{name}: {ZOO / name} ({card['size_bytes'] / 1024:.0f} KiB), test {card['test']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", metavar="NAME", help=f"models to build (default all): {', '.join(RECIPES)}")
    p.add_argument("--package-only", action="store_true", help="package finished runs, train nothing")
    p.add_argument("--train-only", action="store_true", help="train, package nothing")
    args = p.parse_args()
    unknown = sorted(set(args.names) - set(RECIPES))
    if unknown:
        p.error(f"unknown model {', '.join(unknown)}; the zoo has {', '.join(RECIPES)}")
    for name in args.names or list(RECIPES):
        if not args.package_only:
            train(name)
        if not args.train_only:
            package(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
