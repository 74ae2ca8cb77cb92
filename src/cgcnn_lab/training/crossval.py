"""K-fold cross-validation (``--folds K``): one ordinary run per fold in ``OUT/fold{k}``, then the out-of-fold
predictions pooled in ``OUT``, so every crystal is scored once by a model that never saw it. With one split,
a few hundred test crystals say little once a model is nearly always right; pooled, the whole set does.

``OUT`` then holds ``test_results.csv`` (every crystal, with its fold), ``metrics.json`` (pooled test metrics,
the folds' mean best validation value, total time) and the pooled parity or ROC plot; ``compare --folds K`` reads
it like any run. Folds that finished are not retrained; an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from cgcnn_lab.data.dataset import build_dataset
from cgcnn_lab.inference import Predictions
from cgcnn_lab.training.inputs import RunResult, classes_of, read_data
from cgcnn_lab.training.report import (
    class_counts,
    predict_run,
    run_models,
    subset_metrics,
    subset_predictions,
    summary,
    write_plots,
)
from cgcnn_lab.training.splits import Split, make_split


def cross_validate(data, model_cfg, opts, raw, log, train_fold):
    """Train the ``opts.folds`` folds (those not finished) with ``train_fold`` (``run.train``: one run, its test
    split the fold), pool their test predictions, write ``opts.out``."""
    start, out = time.perf_counter(), Path(opts.out)
    raw = raw if raw is not None else read_data(data, opts)
    runs = []
    for k in range(opts.folds):
        fold = out / f"fold{k}"
        runs.append(fold)
        if (fold / "metrics.json").exists():
            log(f"fold {k}: finished already ({fold})")
            continue
        log(f"fold {k} of {opts.folds}")
        resume = (fold / "checkpoints" / "last.ckpt").exists()
        train_fold(data, model_cfg, replace(opts, test_fold=k, out=str(fold), resume=resume), raw=raw, log=log)
    fold_models = [run_models(run) for run in runs]  # (models, spread scale) of each fold
    spec = fold_models[0][0][0].spec  # the first fold's first model
    dataset = build_dataset(raw, spec.graph, spec.encoding, data.cache_dir, data.use_cache, data.strict, data.jobs)
    strata = classes_of(dataset, data, spec.task)
    tests = [make_split(dataset, raw, replace(opts, test_fold=k), strata).test for k in range(opts.folds)]
    idx = np.concatenate(tests)
    values = np.concatenate([predict_run(models, scale, dataset, test)[0].values
                             for (models, scale), test in zip(fold_models, tests)])
    pooled = Predictions(dataset.ids[idx], values, spec, dataset.n_atoms[idx], targets=dataset.targets[idx])
    parts = subset_predictions(pooled, dataset, idx, opts.report_subset)
    metrics = _pooled_metrics(runs, pooled, parts, time.perf_counter() - start)
    frame = pooled.frame()
    frame.insert(1, "fold", np.repeat(np.arange(opts.folds), [len(t) for t in tests]))
    frame.to_csv(out / "test_results.csv", index=False)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_plots(out, "val_loss", pooled, "cross-validation")
    log(summary(out, metrics, pooled, parts))
    return RunResult(out, metrics, dataset, Split(np.array([], int), np.array([], int), idx), metrics["seconds"])


def _pooled_metrics(runs: list[Path], pooled: Predictions, parts: dict, seconds: float) -> dict:
    """metrics.json of the whole cross-validation: pooled test scores, the folds' means of their run facts."""
    folds = [json.loads((run / "metrics.json").read_text()) for run in runs]
    mean = pd.DataFrame(folds).mean(numeric_only=True)
    metrics = {"split": "cross-validation", "folds": len(runs), "n_test": len(pooled), "unit": folds[0]["unit"],
               "seconds": round(float(sum(f["seconds"] for f in folds)), 2), "wall_seconds": round(seconds, 2),
               "epochs_run": float(mean["epochs_run"]), "n_parameters": folds[0]["n_parameters"],
               "best_epoch": None}
    metrics |= {k: float(mean[k]) for k in ("best_val_mae", "best_val_loss") if k in mean}
    metrics |= {f"test_{k}": v for k, v in (pooled.scores() or {}).items()}
    if "unit_per_atom" in folds[0]:
        metrics["unit_per_atom"] = folds[0]["unit_per_atom"]
    metrics |= subset_metrics(parts) | class_counts(pooled)
    metrics["per_fold"] = [{k: f[k] for k in f if k.startswith("test_") and not isinstance(f[k], list)} for f in folds]
    return metrics
