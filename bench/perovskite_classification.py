"""Perovskite oxides vs other oxides, 5-fold cross-validation (BENCHMARKS.md and docs/experiments.md, "Perovskites
vs other oxides").

    .venv/bin/cgcnn-lab compare ../shared/data/perovskite_vs_oxides.csv.gz --target is_perovskite \\
        --task classification --folds 5 --report-subset ABO3 --grid conv=gated,shared,none --seeds 3 --epochs 60 \\
        --parallel 2 --out runs/pvo-cv
    .venv/bin/python bench/perovskite_classification.py runs/pvo-cv

Prints, as markdown: the baselines (majority class; the rule "ABO3 means perovskite"), every variant's pooled
out-of-fold accuracy overall and on the 974 ABO3 members (mean ± std over seeds; every crystal tested once per
seed), and every crystal the best variant (chosen on validation) gets wrong in any seed, with its formula, space
group and label.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT.parent / "shared" / "data" / "perovskite_vs_oxides.csv.gz"


def abo3(formulas: pd.Series) -> np.ndarray:
    """Which formulas are ABO3, by the same pattern matcher as ``--report-subset ABO3``."""
    from pymatgen.core import Composition

    from cgcnn_lab.data.formula import subset_mask

    atoms, ptr = [], [0]
    for f in formulas:
        atoms += [el.Z for el, n in Composition(f).items() for _ in range(round(n))]
        ptr.append(len(atoms))
    return subset_mask("ABO3", np.array(atoms), np.array(ptr))


def ensemble(runs) -> pd.Series:
    """Mean class-1 probability over the runs (seeds) of a variant, by crystal id."""
    frames = [pd.read_csv(Path(run) / "test_results.csv", dtype={"id": str}).set_index("id")["p1"] for run in runs]
    return pd.concat(frames, axis=1).mean(axis=1)


def describe(formula: str, group: str) -> str:
    """What a crystal is, where a simple rule can say it (the rest is left for the reader)."""
    from pymatgen.core import Composition

    amounts = Composition(formula).reduced_composition.get_el_amt_dict()
    oxygen = amounts.pop("O", 0)
    counts = sorted(amounts.values())
    if oxygen == 6 and counts == [1, 1, 2]:
        return "A2BB'O6 double perovskite" if group.startswith(("Fm-3m", "I4/m ", "P2_1/c", "P2_1/n", "R-3")) \
            else "A2BB'O6"
    if oxygen == 6 and counts == [1, 1, 1, 1]:
        return "AA'BB'O6 double perovskite" if group.startswith(("Fm-3m", "F-43m", "P2_1/n")) else "AA'BB'O6"
    if oxygen == 12 and group.startswith("Im-3 "):
        return "AA'3B4O12 quadruple perovskite"
    if oxygen == 1 and len(counts) == 2 and max(counts) >= 3:
        return "anti-perovskite family (A3BO, A4B2O)"
    if oxygen == 3 and counts == [1, 1]:
        return "cubic ABO3" if group.startswith("Pm-3m") else "distorted or non-perovskite ABO3"
    if len(amounts) == 1:
        return "binary oxide"
    return ""


def _wrong(run) -> pd.Series:
    """1 for each crystal the run's pooled out-of-fold prediction gets wrong, by id."""
    frame = pd.read_csv(Path(run) / "test_results.csv", dtype={"id": str}).set_index("id")
    return (frame["prediction"] != frame["target"]).astype(int)


def space_group(cif: str) -> str:
    import warnings

    warnings.filterwarnings("ignore", message="Issues encountered while parsing CIF")
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    s = Structure.from_str(cif, fmt="cif")
    sga = SpacegroupAnalyzer(s, symprec=0.1)
    return f"{sga.get_space_group_symbol()} ({sga.get_space_group_number()})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compare", type=Path, help="the compare folder (runs/pvo-cv)")
    args = parser.parse_args()
    table = pd.read_csv(TABLE, dtype={"id": str}).set_index("id")
    y, member = table["is_perovskite"].to_numpy(), abo3(table["formula"])
    print(f"{len(table)} crystals, {y.sum()} perovskites; {member.sum()} ABO3 members ({y[member].sum()} perovskites)\n")
    print("| model | seeds | accuracy, all (5-fold, pooled) | accuracy, ABO3 members | ROC-AUC, all |")
    print("|---|---|---|---|---|")
    majority = int(np.bincount(y).argmax())
    for name, pred in (("majority class", np.full(len(y), majority)), ("rule: ABO3 means perovskite", member)):
        print(f"| {name} | – | {(pred == y).mean():.4f} | {(pred == y)[member].mean():.4f} | – |")
    results = pd.read_csv(args.compare / "results.csv")
    ranked = results.groupby("variant", sort=False).agg(
        val=("best_val_loss", "mean"), acc=("test_accuracy", "mean"), acc_sd=("test_accuracy", "std"),
        abo3=("test_accuracy_ABO3", "mean"), abo3_sd=("test_accuracy_ABO3", "std"), auc=("test_auc", "mean"),
        n=("seed", "size")).sort_values("val")
    for variant, r in ranked.iterrows():
        print(f"| CGCNN {variant} | {int(r.n)} | {r.acc:.4f} ± {r.acc_sd:.4f} | {r.abo3:.4f} ± {r.abo3_sd:.4f} | "
              f"{r.auc:.4f} |")
        p1 = ensemble(results.loc[results.variant == variant, "run"]).reindex(table.index).to_numpy()
        right = (p1 > 0.5) == y
        print(f"| CGCNN {variant}, mean of its {int(r.n)} seeds | ensemble | {right.mean():.4f} | "
              f"{right[member].mean():.4f} | – |")
    best = ranked.index[0]
    runs = results.loc[results.variant == best, "run"]
    p_mean = ensemble(runs)
    wrong_in = pd.concat([_wrong(run) for run in runs], axis=1).sum(axis=1)
    missed = [i for i in table.index if (p_mean[i] > 0.5) != bool(table.loc[i, "is_perovskite"])]
    print(f"\nBest on validation: {best}. The {len(missed)} crystals the mean of its {len(runs)} seeds gets wrong "
          f"({int((wrong_in > 0).sum())} are wrong in at least one seed):\n")
    print("| id | formula | space group | what | label | wrong in | p(perovskite), mean |")
    print("|---|---|---|---|---|---|---|")
    for crystal in sorted(missed, key=lambda i: (table.loc[i, "is_perovskite"], -wrong_in[i], i)):
        row = table.loc[crystal]
        group = space_group(row.cif)
        print(f"| {crystal} | {row.formula} | {group} | {describe(row.formula, group)} | "
              f"{'perovskite' if row.is_perovskite else 'other'} | {int(wrong_in[crystal])}/{len(runs)} | "
              f"{p_mean[crystal]:.2f} |")
    wrong = missed
    print("\n" + json.dumps({"best": best, "wrong": len(wrong)}))


if __name__ == "__main__":
    main()
