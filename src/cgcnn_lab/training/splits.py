"""Train/validation/test splits: by ratio with a seed, by explicit id lists, or by a fold column."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cgcnn_lab.data.dataset import CrystalDataset
from cgcnn_lab.data.sources import DataError, RawDataset
from cgcnn_lab.training.options import TrainOptions


@dataclass
class Split:
    train: np.ndarray  # indices into the dataset
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> str:
        return f"train {len(self.train)} / val {len(self.val)} / test {len(self.test)}"

    def rows(self, ids: np.ndarray) -> list[tuple[str, str]]:
        """(id, split) of every crystal, train first."""
        return [(str(ids[i]), name) for name in ("train", "val", "test") for i in getattr(self, name)]

    def write(self, path: Path, ids: np.ndarray) -> None:
        """``split.csv`` of a run folder (id,split): ``predict`` reads it to warn when it is asked to score
        crystals the model was trained on (``inference.split_of_run``)."""
        import csv

        with open(path, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["id", "split"])
            writer.writerows(self.rows(ids))


def _counts(n: int, val_ratio: float, test_ratio: float, train_ratio: float | None) -> tuple[int, int, int]:
    n_val, n_test = round(val_ratio * n), round(test_ratio * n)
    n_train = n - n_val - n_test if train_ratio is None else min(round(train_ratio * n), n - n_val - n_test)
    return n_train, n_val, n_test


def ratio_split(
    n: int, train_ratio: float | None = None, val_ratio: float = 0.1, test_ratio: float = 0.1, seed: int = 0,
    strata: np.ndarray | None = None,
) -> Split:
    """Shuffle with ``seed`` and cut; ``train_ratio=None`` gives the training split everything left over.
    With ``strata`` (class labels), each class is cut in the same proportions (a stratified split)."""
    for name, r in (("val", val_ratio), ("test", test_ratio), ("train", train_ratio or 0.0)):
        if not 0 <= r <= 1:
            raise ValueError(f"{name} ratio must be in [0, 1], got {r}")
    if val_ratio + test_ratio + (train_ratio or 0) > 1 + 1e-9:
        raise ValueError("train + val + test ratios exceed 1")
    n_train, n_val, n_test = _counts(n, val_ratio, test_ratio, train_ratio)
    if n_train < 1 or n_val < 1:
        raise DataError(f"{n} crystals are too few for a split with a non-empty training and validation set")
    rng = np.random.default_rng(seed)
    if strata is not None:
        return _stratified(strata, (n_train, n_val, n_test), rng)
    order = rng.permutation(n)
    return Split(order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val : n_train + n_val + n_test])


def _stratified(strata: np.ndarray, sizes: tuple[int, int, int], rng: np.random.Generator) -> Split:
    """Each class split in the proportions ``sizes`` (largest remainders keep the totals exact), then shuffled."""
    classes, counts = np.unique(strata, return_counts=True)
    n = len(strata)
    parts: list[list[np.ndarray]] = [[], [], []]
    shares = np.outer(counts, sizes[1:]) / n  # val and test members of each class
    taken = np.floor(shares).astype(int)
    for k, need in enumerate(sizes[1:]):  # hand the remaining places to the largest remainders
        order = np.argsort(-(shares[:, k] - taken[:, k]), kind="stable")
        taken[order[: need - taken[:, k].sum()], k] += 1
    for c, (n_val, n_test) in zip(classes, taken):
        members = rng.permutation(np.flatnonzero(strata == c))
        cuts = [members[n_val + n_test :], members[:n_val], members[n_val : n_val + n_test]]
        for part, cut in zip(parts, cuts):
            part.append(cut)
    train, val, test = (rng.permutation(np.concatenate(p)) for p in parts)
    return Split(train[: sizes[0]], val, test)


def read_id_list(path: str | Path) -> list[str]:
    """One id per line (a CSV's first column also works); blank lines and '#' comments ignored."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as err:
        raise DataError(f"{path}: cannot read id list ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: id list is not UTF-8 text (byte {err.start}); expected one id per line") from None
    ids = [ln.split(",")[0].strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not ids:
        raise DataError(f"{path}: no ids in the id list (the file is empty or only comments)")
    seen: set[str] = set()
    twice = [i for i in ids if i in seen or seen.add(i)]
    if twice:
        raise DataError(f"{path}: id {twice[0]!r} listed twice" + (f" (and {len(twice) - 1} more)" if len(twice) > 1 else ""))
    return ids


def id_split(ids: Sequence[str], train: Sequence[str], val: Sequence[str], test: Sequence[str], names=("train", "val", "test")) -> Split:
    """Explicit ids. Ids that are not in the dataset (e.g. skipped as bad entries) are an error naming them."""
    position = {str(i): k for k, i in enumerate(ids)}
    parts = []
    for name, wanted in zip(names, (train, val, test)):
        missing = [i for i in wanted if i not in position]
        if missing:
            raise DataError(f"{name} ids not in the dataset (or skipped as bad entries): {missing[:5]}"
                            + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        parts.append(np.array([position[i] for i in wanted], dtype=np.int64))
    overlap = (set(train) & set(val)) | (set(train) & set(test)) | (set(val) & set(test))
    if overlap:
        raise DataError(f"ids in more than one split: {sorted(overlap)[:5]}")
    return Split(*parts)


def fold_split(folds: np.ndarray, test_fold: int, val_ratio: float = 0.1, seed: int = 0) -> Split:
    """Test on one fold (e.g. Matbench's official fold); validation: ``val_ratio`` of the other folds, drawn
    with ``seed``."""
    folds = np.asarray(folds)
    if test_fold not in set(folds.tolist()):
        raise DataError(f"test fold {test_fold} not present; folds are {sorted(set(folds.tolist()))}")
    test = np.flatnonzero(folds == test_fold)
    rest = np.flatnonzero(folds != test_fold)
    rest = rest[np.random.default_rng(seed).permutation(len(rest))]
    n_val = round(val_ratio * len(rest))
    return Split(rest[n_val:], rest[:n_val], test)


def _fold_number(where: str, value: object, column: str) -> int:
    try:
        number = float(value)  # type: ignore[arg-type]
        if number.is_integer():
            return int(number)
    except (TypeError, ValueError):
        pass
    raise DataError(f"{where}: fold column '{column}' holds {value!r}, not an integer fold number")


def kfold_assignment(n: int, k: int, seed: int = 0, strata: np.ndarray | None = None) -> np.ndarray:
    """A fold number 0..k-1 per crystal for k-fold cross-validation, drawn with ``seed``; with ``strata`` (class
    labels) every fold holds each class in the same proportion (fold sizes differ by at most one)."""
    if not 2 <= k <= n:
        raise DataError(f"--folds {k}: cross-validation needs between 2 and {n} folds")
    rng = np.random.default_rng(seed)
    strata = np.zeros(n, dtype=np.int64) if strata is None else np.asarray(strata)
    order = np.concatenate([rng.permutation(np.flatnonzero(strata == c)) for c in np.unique(strata)])
    folds = np.empty(n, dtype=np.int64)
    folds[order] = np.arange(n) % k  # dealt round-robin, class after class: each class spread evenly
    return folds


def make_split(dataset: CrystalDataset, raw: RawDataset, opts: TrainOptions, strata: np.ndarray | None = None) -> Split:
    """The split the options ask for: a fold column, id lists, or seeded ratios (stratified by ``strata``, the
    class labels of a classification run, so that every split has the classes in the same proportions)."""
    if opts.folds:
        if opts.test_fold is None:
            raise DataError("--folds K trains one run per fold (cgcnn_lab.training.crossval); one run needs --test-fold")
        folds = kfold_assignment(len(dataset), opts.folds, opts.split_seed_value, strata)
        return fold_split(folds, opts.test_fold, opts.val_ratio, opts.split_seed_value)
    if opts.fold_col:
        if opts.test_fold is None:
            raise DataError("--fold-col needs --test-fold K")
        by_id = {e.id: (e.where, e.extra[opts.fold_col]) for e in raw.entries}
        folds = np.array([_fold_number(*by_id[str(i)], opts.fold_col) for i in dataset.ids])
        return fold_split(folds, opts.test_fold, opts.val_ratio, opts.split_seed_value)
    if opts.train_ids or opts.val_ids or opts.test_ids:
        if not (opts.train_ids and opts.val_ids):
            raise DataError("explicit splits need at least --train-ids and --val-ids")
        lists = [read_id_list(p) if p else [] for p in (opts.train_ids, opts.val_ids, opts.test_ids)]
        return id_split(list(dataset.ids), *lists)
    return ratio_split(len(dataset), opts.train_ratio, opts.val_ratio, opts.test_ratio, opts.split_seed_value, strata)
