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

Cross-validations trained with ``--members K`` (each fold an ensemble), one or several:

    .venv/bin/cgcnn-lab train ../shared/data/perovskite_vs_oxides.csv.gz --target is_perovskite \
        --task classification --folds 5 --report-subset ABO3 --stoichiometry on --atom-init anion:O --members 3 \
        --out runs/pvo-m3-topo
    .venv/bin/python bench/perovskite_classification.py --members runs/pvo-m3-topo runs/pvo-m3-cgcnn92

prints each member's pooled out-of-fold accuracy (mean ± std over members), each run's ensemble, the mean of the
runs' ensembles, and the crystals that last one gets wrong.
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


def member_p1(run: Path, table: pd.DataFrame, scratch: Path) -> list[pd.Series]:
    """Each member's pooled out-of-fold p(perovskite) of a ``--folds 5 --members K`` run: fold f's member k
    predicts fold f's test crystals."""
    import cgcnn_lab

    folds = pd.read_csv(run / "test_results.csv", dtype={"id": str}).set_index("id")["fold"]
    n_members = len(json.loads((run / "fold0" / "ensemble.json").read_text())["members"])
    pooled: list[list[pd.Series]] = [[] for _ in range(n_members)]
    for fold in sorted(folds.unique()):
        part = scratch / f"fold{fold}.csv"
        table.loc[folds.index[folds == fold]].reset_index().to_csv(part, index=False)
        for k in range(n_members):
            pred = cgcnn_lab.predict(run / f"fold{fold}" / f"member{k}", str(part), targets=["is_perovskite"])
            pooled[k].append(pd.Series(np.asarray(pred)[:, 1], index=[str(i) for i in pred.ids]))
    return [pd.concat(parts) for parts in pooled]


def members_report(runs: list[Path], table: pd.DataFrame, y: np.ndarray, member: np.ndarray) -> pd.Series:
    """Members alone, each run's ensemble and the mean of the runs' ensembles; returns that mean's p(perovskite)."""
    import tempfile

    def scored(p1: pd.Series) -> tuple[float, float]:
        right = (p1.reindex(table.index).to_numpy() > 0.5) == y
        return right.mean(), right[member].mean()

    print("| run | accuracy, all | accuracy, ABO3 members | ABO3 misses |\n|---|---|---|---|")
    ensembles = []
    with tempfile.TemporaryDirectory() as scratch:
        for run in runs:
            members = [scored(p) for p in member_p1(run, table, Path(scratch))]
            (a, a_sd), (b, b_sd) = ((np.mean(v), np.std(v)) for v in zip(*members))
            print(f"| {run.name}: {len(members)} members alone | {a:.4f} ± {a_sd:.4f} | {b:.4f} ± {b_sd:.4f} | |")
            ensembles.append(pd.read_csv(run / "test_results.csv", dtype={"id": str}).set_index("id")["p1"])
            a, b = scored(ensembles[-1])
            print(f"| {run.name}: their ensemble | {a:.4f} | {b:.4f} | {round((1 - b) * member.sum())} |")
    mean = pd.concat(ensembles, axis=1).mean(axis=1)
    if len(runs) > 1:
        a, b = scored(mean)
        print(f"| mean of the {len(runs)} ensembles | {a:.4f} | {b:.4f} | {round((1 - b) * member.sum())} |")
    return mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compare", type=Path, nargs="?", help="the compare folder (runs/pvo-cv)")
    parser.add_argument("--members", type=Path, nargs="+", help="cross-validation folders trained with --members K")
    args = parser.parse_args()
    table = pd.read_csv(TABLE, dtype={"id": str}).set_index("id")
    if args.members:
        y, member = table["is_perovskite"].to_numpy(), abo3(table["formula"])
        p_mean = members_report(args.members, table, y, member)
        missed = [i for i in table.index if (p_mean[i] > 0.5) != bool(table.loc[i, "is_perovskite"])]
        which = "the ensemble" if len(args.members) == 1 else f"the mean of the {len(args.members)} ensembles"
        print(f"\nThe {len(missed)} crystals {which} gets wrong:\n")
        print("| id | formula | space group | what | label | p(perovskite) |\n|---|---|---|---|---|---|")
        for crystal in sorted(missed, key=lambda i: (table.loc[i, "is_perovskite"], i)):
            row = table.loc[crystal]
            group = space_group(row.cif)
            print(f"| {crystal} | {row.formula} | {group} | {describe(row.formula, group)} | "
                  f"{'perovskite' if row.is_perovskite else 'other'} | {p_mean[crystal]:.2f} |")
        return
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
