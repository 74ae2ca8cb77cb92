"""The Castelli experiment-lab set: a fixed 3,000-row subset of Matbench folds 1-4 for training (and
validation), plus the whole official fold 0 as the test set.

    .venv/bin/python bench/castelli_lab_subset.py OUT.csv.gz [--n 3000] [--seed 0]

then ``cgcnn-lab compare OUT.csv.gz --target e_form --fold-col matbench_fold --test-fold 0 ...`` (docs/experiments.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/castelli_perovskites.csv.gz"))
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    frame = pd.read_csv(args.data)
    train = frame[frame["matbench_fold"] != 0].sample(n=args.n, random_state=args.seed)
    subset = pd.concat([train, frame[frame["matbench_fold"] == 0]]).sort_index()
    subset.to_csv(args.out, index=False)
    print(f"{args.out}: {len(train)} rows of folds 1-4 + {len(subset) - len(train)} rows of fold 0")


if __name__ == "__main__":
    main()
