"""Course fine-tuning variants on the five random splits (BENCHMARKS.md, "More data, corrections and the loss").

    .venv/bin/python bench/course_variants.py [--variants recipe l1 two-stage ...] [--seeds 0 1 2 3 4] [--out DIR]

Every variant starts from the published formation-energy model (`--lr 2.5e-4`, 100 epochs, `--per-atom`):
  recipe            the course recipe of BENCHMARKS.md (MSE)
  l1 / l1-5e-4      the same with `--loss l1` (and `--lr 5e-4`)
  atom-readout      the same with `--readout atom` (the output network per atom, then the mean: a sum of atom terms)
  two-stage         first the Materials Project perovskites (`e_form_per_atom`) without any crystal whose reduced
                    formula occurs in the course set, then the course recipe from that model
  mp2020            targets minus their MP2020 corrections (pymatgen's MaterialsProject2020Compatibility)
  two-stage-mp2020  both stages on targets minus their corrections
The derived data sets are written to OUT/data; the runs to OUT/<variant>-s<seed>. Prints test MAE per atom per split.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
COURSE = SHARED / "data/homework/perovskite_energy"
PRETRAINED = SHARED / "pretrained/cgcnn-original/formation-energy-per-atom.pth.tar"
VARIANTS = ("recipe", "l1", "l1-5e-4", "atom-readout", "two-stage", "mp2020", "two-stage-mp2020")


def mp2020_correction(structure) -> float:
    """The Materials Project 2020 correction of one calculation (eV per cell): anion corrections, and +U ones for
    oxides and fluorides of the elements the MP input set runs with U."""
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility
    from pymatgen.entries.computed_entries import ComputedStructureEntry
    from pymatgen.io.vasp.sets import MPRelaxSet

    u_values = MPRelaxSet.CONFIG["INCAR"]["LDAUU"]
    elements = {e.symbol for e in structure.composition}
    anion = "O" if "O" in elements else "F" if "F" in elements else None
    hubbards = {el: u_values[anion].get(el, 0.0) for el in elements} if anion else {}
    plus_u = any(u > 0 for u in hubbards.values())
    entry = ComputedStructureEntry(structure, 0.0, parameters={
        "run_type": "GGA+U" if plus_u else "GGA", "is_hubbard": plus_u, "hubbards": hubbards if plus_u else {}})
    return MaterialsProject2020Compatibility(check_potcar=False).process_entry(entry).correction


def prepare(out: Path) -> dict[str, Path]:
    """The Materials Project perovskites without the course formulas, and both sets minus their corrections."""
    from pymatgen.core import Composition, Structure

    warnings.filterwarnings("ignore")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"mp": out / "mp_noformula.csv.gz", "mp-mp2020": out / "mp_noformula_mp2020.csv.gz",
             "course-mp2020": out / "course_mp2020"}
    if all(p.exists() for p in paths.values()):
        return paths
    course = pd.read_csv(COURSE / "id_prop.csv", header=None, names=["id", "energy"])
    structures = {i: Structure.from_file(COURSE / f"{i}.cif") for i in course.id}
    formulas = {s.composition.reduced_formula for s in structures.values()}
    mp = pd.read_csv(SHARED / "data/mp_perovskites.csv.gz")
    mp = mp[~mp.formula.map(lambda f: Composition(f).reduced_formula).isin(formulas)]
    mp.to_csv(paths["mp"], index=False)
    mp_structures = [Structure.from_str(text, fmt="cif") for text in mp.cif]
    per_atom = np.array([mp2020_correction(s) / len(s) for s in mp_structures])
    mp.assign(e_form_per_atom=mp.e_form_per_atom - per_atom).to_csv(paths["mp-mp2020"], index=False)
    folder = paths["course-mp2020"]
    folder.mkdir(exist_ok=True)
    for f in [*COURSE.glob("*.cif"), COURSE / "atom_init.json"]:
        if not (folder / f.name).exists():
            (folder / f.name).symlink_to(f.resolve())
    corrected = course.energy - np.array([mp2020_correction(structures[i]) for i in course.id])
    pd.DataFrame({"id": course.id, "energy": corrected}).to_csv(folder / "id_prop.csv", header=False, index=False)
    print(f"{len(mp)} Materials Project perovskites share no reduced formula with the course set")
    return paths


def cgcnn_lab(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cgcnn_lab.cli", *args, "--no-progress"], check=True,
                   stdout=subprocess.DEVNULL)


def first_stage(data: Path, out: Path) -> Path:
    if not (out / "metrics.json").exists():
        cgcnn_lab("train", str(data), "--target", "e_form_per_atom", "--unit", "eV/atom", "--atom-init",
                  str(COURSE / "atom_init.json"), "--init-from", str(PRETRAINED), "--lr", "5e-4", "--epochs", "100",
                  "--seed", "0", "--out", str(out))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", default="runs/course-variants")
    args = p.parse_args()
    if not COURSE.is_dir():
        sys.exit(f"{COURSE} not found (the course data lives in ../shared)")
    out = Path(args.out)
    data = prepare(out / "data")
    for variant in args.variants:
        course, start, lr, extra = COURSE, PRETRAINED, "5e-4" if variant == "l1-5e-4" else "2.5e-4", []
        if variant.startswith("l1"):
            extra = ["--loss", "l1"]
        if variant == "atom-readout":
            extra = ["--readout", "atom"]
        if variant.endswith("mp2020"):
            course = data["course-mp2020"]
        if variant.startswith("two-stage"):
            start = first_stage(data["mp-mp2020" if variant.endswith("mp2020") else "mp"], out / f"{variant}-first")
        maes = []
        for seed in args.seeds:
            run = out / f"{variant}-s{seed}"
            if not (run / "metrics.json").exists():
                cgcnn_lab("train", str(course), "--per-atom", "--unit", "eV", "--seed", str(seed), "--init-from",
                          str(start), "--lr", lr, "--epochs", "100", *extra, "--out", str(run))
            maes.append(json.loads((run / "metrics.json").read_text())["test_mae_per_atom"])
        print(f"| {variant} | {', '.join(f'{m:.4f}' for m in maes)} | {np.mean(maes):.4f} ± {np.std(maes):.4f} |")


if __name__ == "__main__":
    main()
