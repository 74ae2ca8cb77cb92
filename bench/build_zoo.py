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


# name -> (the zoo model whose recipe the members share, the seeds of the other members): members of one split
# (--split-seed of the first), averaged, their spread calibrated on its validation crystals (cgcnn-lab ensemble)
ENSEMBLES: dict[str, tuple[str, list[int]]] = {
    "perovskite-e-form-ensemble": ("perovskite-e-form", [1, 2]),
}


def run_folder(name: str) -> Path:
    return ROOT / "runs" / "zoo" / name


def train_command(name: str) -> list[str]:
    """The ``cgcnn-lab train`` command of a zoo model, as a user would type it from the repository root."""
    data, _, _, options = RECIPES[name]
    return ["cgcnn-lab", "train", f"../shared/data/{data}", *options, "--out", f"runs/zoo/{name}"]


CGCNN_LAB = str(Path(sys.executable).with_name("cgcnn-lab"))


def run_training(command: list[str], out: Path) -> None:
    """A ``cgcnn-lab train`` command, unless its run finished; an interrupted one resumes."""
    if (out / "metrics.json").is_file():
        print(f"trained: {out}")
        return
    resume = ["--resume"] if (out / "checkpoints" / "last.ckpt").is_file() else []
    print(" ".join(command + resume), flush=True)
    subprocess.run([CGCNN_LAB, *command[1:], *resume], cwd=ROOT, check=True)


def train(name: str) -> None:
    run_training(train_command(name), run_folder(name))


def package(name: str) -> None:
    """safetensors + card from the run's best checkpoint, its metrics and the recipe."""
    from cgcnn_lab.deploy import package_run

    data, description, licence, _ = RECIPES[name]
    card = package_run(run_folder(name), ZOO / name, name=name, description=description,
                       data=f"../shared/data/{data}", licence=licence,
                       command=" ".join(train_command(name)) + f" && python bench/build_zoo.py --package-only {name}")
    print(f"{name}: {ZOO / name} ({card['size_bytes'] / 1024:.0f} KiB), test {card['test']}")


def member_command(base: str, seed: int) -> list[str]:
    """A further member of an ensemble: the base model's command with another initialisation, the same split."""
    data, _, _, options = RECIPES[base]
    kept = [a for k, a in enumerate(options) if a != "--seed" and (k == 0 or options[k - 1] != "--seed")]
    return ["cgcnn-lab", "train", f"../shared/data/{data}", *kept, "--seed", str(seed), "--split-seed", "0",
            "--out", f"runs/zoo/{base}-seed{seed}"]


def build_ensemble(name: str, train_members: bool) -> None:
    """Train the further members (resuming), calibrate with ``cgcnn-lab ensemble``, and package every member and
    the ensemble's record into the zoo."""
    import json
    import shutil

    from cgcnn_lab.deploy import package_run

    base, seeds = ENSEMBLES[name]
    data, description, licence, _ = RECIPES[base]
    commands = [member_command(base, seed) for seed in seeds]
    runs = [run_folder(base)] + [ROOT / c[-1] for c in commands]
    if train_members:
        for command, run in zip(commands, runs[1:]):
            run_training(command, run)
    calibrated = ROOT / "runs" / "zoo" / name
    target = RECIPES[base][3][RECIPES[base][3].index("--target") + 1]
    calibrate = [CGCNN_LAB, "ensemble", f"../shared/data/{data}", "--target", target, "--members",
                 *map(str, runs), "--out", str(calibrated)]
    subprocess.run(calibrate, cwd=ROOT, check=True)
    record = json.loads((calibrated / "ensemble.json").read_text())
    out = ZOO / name
    shutil.rmtree(out, ignore_errors=True)
    member = json.loads((ZOO / base / "card.json").read_text())  # the first member is the zoo's base model
    sizes = member["size_bytes"]
    for k, run in enumerate(runs[1:], start=1):
        sizes += package_run(run, out / f"member{k}", description=f"member {k} of {name}",
                             data=f"../shared/data/{data}", licence=licence)["size_bytes"]
    record["members"] = [f"../{base}"] + [f"member{k}" for k in range(1, len(runs))]
    (out / "ensemble.json").write_text(json.dumps(record, indent=2) + "\n")
    command = " && ".join([" ".join(train_command(base)), *(" ".join(c) for c in commands),
                           f"python bench/build_zoo.py --package-only {name}"])
    card = {"name": name, "description": f"{description} The mean of {len(runs)} members (seeds 0, "
                                          f"{', '.join(map(str, seeds))}; one split), with a calibrated spread: "
                                          "prediction_std is a σ that holds 68 % of validation errors.",
            "data": f"../shared/data/{data}", "licence": licence, "command": command,
            "cgcnn_lab_version": member["cgcnn_lab_version"],
            "test": {"mae": record["test_mae"], "member_mae": record["member_test_mae"],
                     **{f"calibrated_{k}": v for k, v in record["test_calibrated"].items()}},
            "split_sizes": member["split_sizes"], "members": len(runs), "scale": record["scale"],
            "band95": record["band95"],
            **{k: member[k] for k in ("task", "targets", "unit", "per_atom_training", "threshold", "classes",
                                      "graph", "network", "parameters")},
            "size_bytes": sizes}
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"{name}: {out} ({sizes / 1024:.0f} KiB), test MAE {record['test_mae']:.4g}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", metavar="NAME", help=f"models to build (default all): {', '.join(RECIPES)}")
    p.add_argument("--package-only", action="store_true", help="package finished runs, train nothing")
    p.add_argument("--train-only", action="store_true", help="train, package nothing")
    args = p.parse_args()
    unknown = sorted(set(args.names) - set(RECIPES) - set(ENSEMBLES))
    if unknown:
        p.error(f"unknown model {', '.join(unknown)}; the zoo has {', '.join([*RECIPES, *ENSEMBLES])}")
    for name in args.names or [*RECIPES, *ENSEMBLES]:
        if name in ENSEMBLES:
            build_ensemble(name, train_members=not args.package_only)
            continue
        if not args.package_only:
            train(name)
        if not args.train_only:
            package(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
