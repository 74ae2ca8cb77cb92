"""Ensembles you can trust: members chosen and their spread calibrated on the validation split, checked on test.

The spread of an ensemble (the standard deviation of its members) ranks crystals by how unsure it is, but it is not
an error bar: members trained on the same data agree more than they are right. ``cgcnn-lab ensemble`` scales it
the split-conformal way: the calibrated σ is the spread times the 68.27 % quantile of |error| / spread over the
validation crystals, so ±σ holds 68.27 % of them; a second factor does the same for 95.45 % (±2σ for a normal
error). Errors of these models have heavier tails than a normal error (on Matbench, one RMS-fitted factor put 92 %
of test errors inside ±1σ), so the two bands get their own factors, and the test crystals say how well each holds.

The ensemble folder (``ensemble.json``: members, how often each counts, the factors) is a model like any other:
``cgcnn-lab predict ENSEMBLE DATA`` averages the members and writes the calibrated ``prediction_std``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cgcnn_lab.checkpoint import CheckpointError
from cgcnn_lab.data.sources import RawDataset
from cgcnn_lab.inference import ENSEMBLE_FILE as FILE
from cgcnn_lab.inference import Predictions, ensemble_members, predict_data
from cgcnn_lab.packaged import SPLIT, ids_by_split, read_split
from cgcnn_lab.spec import in_unit

LEVELS = (0.6827, 0.9545)  # the ±1σ and ±2σ bands of a normal error


def _splits(run: Path) -> dict[str, list[str]]:
    run = Path(run)
    rows = read_split(run / "split.csv") or read_split(run / SPLIT)  # a run folder, or a packaged model
    if not rows:
        raise CheckpointError(f"{run}: an ensemble member must be a run folder with split.csv (its validation and "
                              "test crystals)")
    return {name: sorted(ids) for name, ids in ids_by_split(rows, ("val", "test")).items()}


def _members_of(run: Path) -> list[Path]:
    """A run, or the members of an ensemble folder (``train --members K``, or an earlier ``ensemble``)."""
    if not (run / FILE).is_file():
        return [run]
    return ensemble_members(run, json.loads((run / FILE).read_text()), counted=False)


def member_predictions(runs: list[Path], raw: RawDataset, ids: list[str], **read) -> tuple[np.ndarray, Predictions]:
    """Each member's predictions [M, S, T] of the crystals ``ids`` of ``raw`` and the first member's Predictions
    (ids, targets and spec, in that order)."""
    wanted = set(ids)
    subset = RawDataset(raw.name, [e for e in raw.entries if e.id in wanted], raw.target_names, atom_init=raw.atom_init)
    preds = [predict_data([run], subset, log=lambda *_: None, **read) for run in runs]
    return np.stack([np.asarray(p.values) for p in preds]), preds[0]


def greedy(values: np.ndarray, y: np.ndarray, steps: int) -> list[int]:
    """Forward selection with replacement (Caruana et al. 2004): add the member that lowers the ensemble's MAE on
    ``y`` most, ``steps`` times; a member may count more than once. Returns the chosen members' indices."""
    chosen: list[int] = []
    total = np.zeros_like(values[0])
    for _ in range(steps):
        scores = [np.abs((total + v) / (len(chosen) + 1) - y).mean() for v in values]
        best = int(np.argmin(scores))
        chosen.append(best)
        total = total + values[best]
    return chosen


def coverage(error: np.ndarray, sigma: np.ndarray, k95: float | np.ndarray = 2.0) -> dict[str, float]:
    """Fraction of errors inside ±σ, ±2σ and the 95.45 % band (±k95·σ)."""
    inside = (lambda k: float((np.abs(error) <= k * sigma).mean()))
    return {"within_1sigma": inside(1.0), "within_2sigma": inside(2.0), "within_95band": inside(k95)}


def conformal_factor(values: np.ndarray, y: np.ndarray, level: float) -> np.ndarray:
    """Per target: the finite-sample split-conformal quantile of |error| / spread at ``level`` (so that a new
    crystal's error falls inside ±factor·spread with probability ``level``, if it is like these)."""
    mean, sigma = values.mean(0), values.std(0)
    z = np.abs(y - mean) / np.where(sigma > 0, sigma, np.nan)
    n = np.isfinite(z).sum(0)
    if not n.all():
        raise ValueError("the members agree exactly on every validation crystal: there is no spread to calibrate")
    q = np.minimum(1.0, np.ceil((n + 1) * level) / np.maximum(n, 1))
    return np.array([np.nanquantile(z[:, t], q[t], method="higher") for t in range(z.shape[1])])


def calibration(values: np.ndarray, y: np.ndarray) -> dict:
    """ensemble.json's calibration from the members' validation predictions [M, S, T] (a member counted twice
    appears twice) and the targets: the factor on the spread (σ), the 95.45 % band in σ, the ensemble's MAE."""
    scale, scale95 = (conformal_factor(values, y, level) for level in LEVELS)
    return {"scale": scale.tolist(), "band95": (scale95 / scale).tolist(), "n_val": len(y),
            "val_mae": float(np.abs(values.mean(0) - y).mean())}


def write(out: Path, record: dict) -> dict:
    (out / FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def build(runs: list[str | Path], raw: RawDataset, out: str | Path, select: bool = False, log=print, **read) -> dict:
    """Choose members (all, or greedily on validation), calibrate their spread on validation, score on test and
    write ``out``: ensemble.json, test_results.csv and calibration.png. Returns the ensemble's record."""
    runs = [member for r in runs for member in _members_of(Path(r))]
    distinct = len({r.resolve() for r in runs})
    if distinct < 2:
        raise ValueError("an ensemble needs at least two different members (run folders)")
    if distinct < len(runs):
        raise ValueError("a run is listed twice in --members: each member once (--select may count one more often)")
    splits = [_splits(r) for r in runs]
    for run, split in zip(runs[1:], splits[1:]):
        if split["val"] != splits[0]["val"]:
            raise ValueError(f"{run} was validated on other crystals than {runs[0]}: calibrating needs members of "
                             "one split (train them with the same --split-seed, or --fold-col/--test-fold)")
    val_ids, test_ids = splits[0]["val"], splits[0]["test"]
    values, pred = member_predictions(runs, raw, [*val_ids, *test_ids], **read)  # each member loaded once
    ids = np.asarray(pred.ids, dtype=str)
    is_val, is_test = np.isin(ids, val_ids), np.isin(ids, test_ids)
    val, val_pred = values[:, is_val], pred.subset(is_val)
    if val_pred.spec.task != "regression" or val_pred.targets is None or not len(val_pred):
        raise ValueError("calibrating a spread needs a regression ensemble and the validation crystals' targets in "
                         f"{raw.name}")
    chosen = greedy(val, val_pred.targets, len(runs)) if select else list(range(len(runs)))
    if len(set(chosen)) < 2:
        raise ValueError(f"the selection on validation kept one member ({runs[chosen[0]]}): no spread to calibrate; "
                         "build the ensemble from all members (without --select)")
    out = Path(out)
    record = {"members": [os.path.relpath(runs[k].resolve(), out.resolve()) for k in sorted(set(chosen))],
              "counts": [chosen.count(k) for k in sorted(set(chosen))],
              "selection": "greedy on validation MAE" if select else "all", **calibration(val[chosen], val_pred.targets)}
    out.mkdir(parents=True, exist_ok=True)
    if test_ids:
        scale, band95 = np.asarray(record["scale"]), np.asarray(record["band95"])
        record |= _test_record(values[:, is_test], chosen, scale, band95, pred.subset(is_test), out)
    log(summary(write(out, record), val_pred.spec.unit))
    return record


def _test_record(test: np.ndarray, chosen: list[int], scale: np.ndarray, band95: np.ndarray, pred: Predictions,
                 out: Path) -> dict:
    mean, sigma = test[chosen].mean(0), test[chosen].std(0)
    error = mean - pred.targets
    singles = [float(np.abs(m - pred.targets).mean()) for m in test]
    calibrated = Predictions(pred.ids, mean, pred.spec, pred.n_atoms, sigma * scale, pred.targets)
    calibrated.to_csv(out / "test_results.csv")
    plot_calibration(error[:, 0], sigma[:, 0] * scale[0], float(band95[0]), pred.spec.unit, out / "calibration.png")
    return {"n_test": len(pred), "test_mae": float(np.abs(error).mean()), "member_test_mae": singles,
            "test_raw": coverage(error, sigma), "test_calibrated": coverage(error, sigma * scale, band95)}


def summary(record: dict, unit: str) -> str:
    lines = [(f"ensemble of {sum(record['counts'])} ({record['selection']}): validation MAE {record['val_mae']:.4g}"
              f"{' ' + unit if unit else ''}; spread scaled by {', '.join(f'{s:.3g}' for s in record['scale'])} "
              f"(σ); the 95.45 % band is ±{', '.join(f'{k:.3g}' for k in record['band95'])} σ (2 for a normal error)")]
    if "test_mae" in record:
        singles = np.array(record["member_test_mae"])
        lines.append(f"test MAE {record['test_mae']:.4g} (members alone {singles.mean():.4g} ± {singles.std():.2g})")
        raw, cal = record["test_raw"], record["test_calibrated"]
        lines.append(f"test errors within ±1σ: {raw['within_1sigma']:.1%} with the raw spread, "
                     f"{cal['within_1sigma']:.1%} calibrated (aimed at 68.3 %); within the 95.45 % band: "
                     f"{raw['within_2sigma']:.1%} raw (±2σ), {cal['within_95band']:.1%} calibrated")
    return "\n".join(lines)


def plot_calibration(error: np.ndarray, sigma: np.ndarray, band95: float, unit: str, path: Path,
                     bins: int = 8) -> Path:
    """|error| against the calibrated σ: every crystal, and per bin of σ the 68.27 % and 95.45 % quantiles of
    |error|, which an honest σ puts on the lines σ and band95·σ."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.8, 4.4), dpi=120)
    ax = fig.subplots()
    ax.scatter(sigma, np.abs(error), s=6, alpha=0.3, color="0.5", label="|error| of a crystal")
    edges = np.quantile(sigma, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, sigma, side="right") - 1, 0, bins - 1)
    filled = [b for b in range(bins) if (which == b).any()]
    centre = np.array([sigma[which == b].mean() for b in filled])
    top = float(centre.max()) * 1.15
    for level, k, colour in ((LEVELS[0], 1.0, "C0"), (LEVELS[1], band95, "C1")):
        q = [np.quantile(np.abs(error[which == b]), level) for b in filled]
        ax.plot(centre, q, "o-", color=colour, label=f"{level:.2%} quantile of |error|, binned by σ")
        ax.plot([0, top], [0, k * top], color=colour, lw=1, ls="--", label=f"calibrated: {k:.3g} σ")
    ax.set_xlim(0, top)
    ax.set_ylim(0, band95 * top * 1.2)
    ax.set_xlabel(in_unit("predicted σ (calibrated spread)", unit))
    ax.set_ylabel(in_unit("|error|", unit))
    ax.set_title("calibration on the test crystals", fontsize=10)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return path
