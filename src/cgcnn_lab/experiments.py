"""The experiment lab: many variants of one training run, on identical splits, over several seeds.

``compare`` answers "which convolution / how many neighbours / which activation / batch norm / pooling" with
data: every variant is a normal run folder (so any of them can be inspected or used to predict), the splits are
fixed by one split seed, graphs are featurised once per graph setting (the cache is shared), finished variants
are skipped when the command is repeated, and the results are summarised as mean ± std over seeds, the best
variant chosen on the validation split (the test split is reported, never used to choose).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import Field, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cgcnn_lab.model.config import ModelConfig
from cgcnn_lab.optionfield import factor_name, options_of, parse_value, text_of
from cgcnn_lab.spec import LEGACY_UNKNOWN_UNIT, in_unit, with_unit
from cgcnn_lab.training.finetune import fine_tuning_setup, non_default_options
from cgcnn_lab.training.options import DataOptions, TrainOptions


def _factors() -> dict[str, tuple[str, Field]]:
    """factor name -> (which options object, its field): every option marked as a factor (optionfield.py)."""
    objects = {"data": DataOptions, "model": ModelConfig, "train": TrainOptions}
    return {factor_name(f): (where, f) for where, cls in objects.items() for f in options_of(cls) if f.metadata["factor"]}


FACTORS = _factors()


@dataclass(frozen=True)
class Variant:
    """One configuration: factor -> value (as text, exactly as the user wrote it)."""

    settings: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.settings) or "base"

    @property
    def label(self) -> str:
        return short_name(self.name)

    @property
    def folder(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.name.replace(",", "__").replace("=", "-"))


def short_name(name: str) -> str:
    """A variant name for tables and plots: file path values (e.g. init_from) shown by their file name."""
    parts = [p.partition("=") for p in name.split(",")]
    return ",".join(k + s + (Path(v).name.removesuffix(".pth.tar") if "/" in v else v) for k, s, v in parts)


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["conv=gated,shared", "max_nbr=4,8"]`` -> ``{"conv": ["gated", "shared"], "max_nbr": ["4", "8"]}``."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values.strip():
            raise ValueError(f"--grid {item!r}: expected FACTOR=VALUE[,VALUE...]")
        if key not in FACTORS:
            raise ValueError(f"--grid {item!r}: unknown factor {key!r}; choose from {', '.join(FACTORS)}")
        grid.setdefault(key, [])
        grid[key] += [v.strip() for v in values.split(",") if v.strip()]
    return grid


def load_sweep(path: str | Path) -> dict:
    """A sweep file (TOML or YAML): ``grid`` (factor -> list), optional ``mode`` and ``seeds``."""
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() == ".toml":
        import tomllib

        sweep = tomllib.loads(text)
    else:
        import yaml

        sweep = yaml.safe_load(text)
    if not isinstance(sweep, dict) or not isinstance(sweep.get("grid"), dict):
        raise ValueError(f"{path}: a sweep file needs a 'grid' table of factor -> list of values")  # noqa: TRY004
    sweep["grid"] = parse_grid([f"{k}={','.join(str(v).lower() if isinstance(v, bool) else str(v) for v in vs)}"
                                for k, vs in sweep["grid"].items()])
    return sweep


def base_value(factor: str, data: DataOptions, model: ModelConfig, opts: TrainOptions) -> str:
    where, field = FACTORS[factor]
    return text_of(field, getattr({"data": data, "model": model, "train": opts}[where], field.name))


def full_grid(grid: dict[str, list[str]]) -> list[Variant]:
    keys = list(grid)
    return [Variant(tuple(zip(keys, values))) for values in itertools.product(*(grid[k] for k in keys))]


def one_at_a_time(grid: dict[str, list[str]], base: dict[str, str]) -> list[Variant]:
    """The base configuration, then each factor changed alone: what the course's questions need."""
    variants = [Variant(())]
    for factor, values in grid.items():
        for value in values:
            if _same(FACTORS[factor][1], value, base[factor]):
                continue
            variants.append(Variant(((factor, value),)))
    return variants


def variants_of(grid: dict[str, list[str]], mode: str, data: DataOptions, model: ModelConfig,
                opts: TrainOptions) -> list[Variant]:
    """The variants ``compare`` trains: every combination (``grid``), or the base and each factor alone
    (``one-at-a-time``, the base read from the options)."""
    if mode == "one-at-a-time":
        return one_at_a_time(grid, {k: base_value(k, data, model, opts) for k in grid})
    return full_grid(grid)


def _same(field: Field, a: str, b: str) -> bool:
    try:
        return parse_value(field, a) == parse_value(field, b)
    except ValueError:
        return a == b


def apply(variant: Variant, data: DataOptions, model: ModelConfig, opts: TrainOptions):
    """The options of one variant (copies; the inputs are not changed)."""
    changes: dict[str, dict] = {"data": {}, "model": {}, "train": {}}
    for factor, value in variant.settings:
        where, field = FACTORS[factor]
        changes[where][field.name] = parse_value(field, value)
    # what a variant sets is asked for, even a default value (max_nbr=12 against an 8-neighbour checkpoint)
    base_asked = non_default_options(data, model) if opts.asked is None else opts.asked
    asked = tuple(sorted({*base_asked, *changes["data"], *changes["model"]}))
    return replace(data, **changes["data"]), replace(model, **changes["model"]), replace(opts, **changes["train"], asked=asked)


def check_fine_tuning(data: DataOptions, model: ModelConfig, opts: TrainOptions, variants: list[Variant]) -> None:
    """Refuse, before anything trains, a variant whose options a checkpoint it starts from cannot take (rather
    than stopping the sweep when its turn comes)."""
    from cgcnn_lab.inference import load_trained

    loaded: dict[str, object] = {}
    for variant in variants:
        d, m, o = apply(variant, data, model, opts)
        if not o.init_from:
            continue
        if o.init_from not in loaded:
            folder_init = Path(d.source or "") / "atom_init.json"
            loaded[o.init_from] = load_trained(o.init_from, atom_init=d.atom_init or (folder_init if folder_init.is_file() else None))
        try:
            fine_tuning_setup(loaded[o.init_from], d, m, o.asked)
        except ValueError as err:
            raise type(err)(f"variant {variant.name}: {err}") from None


def _run_one(job: tuple) -> dict:
    """Train one (variant, seed) in a worker; returns its results row."""
    variant, seed, data, model, opts, out = job
    from cgcnn_lab.training.run import train  # shares the cores with the other workers (cpu.py)

    data, model, opts = apply(variant, data, model, opts)
    run_dir = Path(out) / "runs" / variant.folder / f"seed{seed}"
    opts = replace(opts, seed=seed, split_seed=opts.split_seed_value, out=str(run_dir), progress=False,
                   resume=(run_dir / "checkpoints" / "last.ckpt").exists())
    result = train(data, model, opts, log=lambda *_: None)
    return _row(variant, seed, run_dir, result.metrics)


def _row(variant: Variant, seed: int, run_dir: Path, metrics: dict) -> dict:
    row = {"variant": variant.name, "seed": seed, **dict(variant.settings), "run": str(run_dir)}
    row.update({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))})
    return row


def compare(
    data: DataOptions,
    model: ModelConfig,
    opts: TrainOptions,
    variants: list[Variant],
    seeds: list[int],
    out: str | Path,
    jobs: int = 1,
    log=print,
    report_only: bool = False,
) -> pd.DataFrame:
    """Train every variant × seed (skipping finished ones), then write results.csv, summary.md, plots, report.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    opts = replace(opts, split_seed=opts.split_seed_value)  # one split for every variant and seed
    rows, todo = [], []
    for variant in variants:
        for seed in seeds:
            run_dir = out / "runs" / variant.folder / f"seed{seed}"
            if (run_dir / "metrics.json").exists():
                rows.append(_row(variant, seed, run_dir, json.loads((run_dir / "metrics.json").read_text())))
            else:
                todo.append((variant, seed))
    if report_only:  # summarise what has finished (e.g. while a long sweep is still running)
        if not rows:
            raise ValueError(f"{out}: no finished runs to report")
        done = {r["variant"] for r in rows}
        variants, todo = [v for v in variants if v.name in done], []
    log(f"{len(variants)} variants × {len(seeds)} seeds: {len(rows)} done already, {len(todo)} to train"
        f"{f' in {jobs} processes' if jobs > 1 and todo else ''}")
    pending = {variant for variant, _ in todo}
    check_fine_tuning(data, model, opts, [v for v in variants if v in pending])
    _warm_cache(data, variants, model, opts)
    jobs_args = [(v, s, data, model, opts, str(out)) for v, s in todo]
    start = time.perf_counter()
    if jobs > 1 and len(todo) > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_run_one, job) for job in jobs_args]
            for k, future in enumerate(as_completed(futures), 1):
                row = future.result()
                rows.append(row)
                log(f"[{k}/{len(todo)}] {row['variant']} seed {row['seed']}: {_headline(row)}")
    else:
        for k, job in enumerate(jobs_args, 1):
            row = _run_one(job)
            rows.append(row)
            log(f"[{k}/{len(todo)}] {row['variant']} seed {row['seed']}: {_headline(row)}")
    results = pd.DataFrame(rows)
    order = {v.name: i for i, v in enumerate(variants)}
    results = results.sort_values(["variant", "seed"], key=lambda c: c.map(order) if c.name == "variant" else c)
    results.to_csv(out / "results.csv", index=False)
    summary = summarize(results)
    table = summary_markdown(summary, ranking(results))
    (out / "summary.md").write_text(table)
    figures = make_plots(out, results, summary, variants)
    write_report(out, results, summary, figures, variants, seeds, time.perf_counter() - start)
    log(table)
    return results


def _warm_cache(data: DataOptions, variants: list[Variant], model: ModelConfig, opts: TrainOptions) -> None:
    """Featurise each distinct graph setting once, before any worker starts (workers then read the cache)."""
    from cgcnn_lab.data.featurize import featurize
    from cgcnn_lab.data.sources import load_dataset

    if not data.use_cache:
        return
    raw = None
    for graph in {apply(v, data, model, opts)[0].graph for v in variants}:
        raw = raw or load_dataset(data.source, data.targets, data.id_col, data.structure_col, data.strict,
                                  extra_cols=[opts.fold_col] if opts.fold_col else [])
        featurize(raw.entries, graph, cache_dir=data.cache_dir, jobs=data.jobs)


@dataclass(frozen=True)
class Ranking:
    """How the variants of a comparison are ranked, and what is reported beside the ranking.

    The best variant is chosen on the validation split (the best validation value of each run: ``best_val_mae``,
    per atom for per-atom runs, or ``best_val_loss`` for classification), never on the test split, whose metric
    is only reported. ``unit`` is the unit of both MAE columns ("" when the runs were trained without --unit)."""

    select: str  # results column that ranks: best_val_mae / best_val_loss (a test column only without validation)
    select_name: str  # e.g. "validation MAE per atom"
    select_lower: bool  # lower is better for the ranking column
    test: str  # headline test metric: test_mae_per_atom / test_mae / test_accuracy
    test_name: str  # e.g. "test MAE per atom"
    unit: str  # of the MAE values (per atom when per atom); "" when unknown or for classification
    per_atom: bool

    @property
    def on_validation(self) -> bool:
        return self.select.startswith("best_val_")

    @property
    def select_label(self) -> str:
        """An axis label: ``validation MAE per atom (eV/atom)``, without a unit when unknown."""
        return in_unit(self.select_name, self.unit)

    @property
    def test_label(self) -> str:
        return in_unit(self.test_name, self.unit)

    def header(self, name: str) -> str:
        """A table column heading: ``test MAE, eV/cell (mean ± std)``."""
        return f"{name}, {self.unit} (mean ± std)" if self.unit else f"{name} (mean ± std)"

    def value(self, text: str) -> str:
        """``text`` followed by the unit, when there is one."""
        return with_unit(text, self.unit)

    @property
    def note(self) -> str:
        """One sentence that says how the best variant was chosen."""
        if self.on_validation:
            return (f"Ranked by {self.select_name} (mean over seeds of each run's best epoch), best first: the best "
                    f"variant is selected on validation; the {self.test_name} is reported beside it, not used to "
                    "choose.")
        return f"Ranked by {self.test_name}, best first: these runs logged no validation metric."


def _text(results: pd.DataFrame, column: str) -> str:
    """The first unit string in ``column`` ("" when absent, null or the old "target units" placeholder)."""
    if column not in results:
        return ""
    value = next((v for v in results[column] if isinstance(v, str) and v), "")
    return "" if value.startswith(LEGACY_UNKNOWN_UNIT) else value


def ranking(results: pd.DataFrame) -> Ranking:
    """How ``results`` (one row per run) are ranked: on validation, test reported beside."""
    per_atom = "test_mae_per_atom" in results
    if per_atom or "test_mae" in results:
        unit = _text(results, "unit_per_atom" if per_atom else "unit")
        what = "MAE per atom" if per_atom else "MAE"
        test, test_name = ("test_mae_per_atom" if per_atom else "test_mae"), f"test {what}"
        select, select_name, lower = "best_val_mae", f"validation {what}", True
    else:
        unit, test, test_name = "", "test_accuracy", "test accuracy"
        select, select_name, lower = "best_val_loss", "validation NLL loss", True
    if select not in results or not results[select].notna().any():  # no validation split: test is all there is
        select, select_name, lower = test, test_name, test != "test_accuracy"
    return Ranking(select, select_name, lower, test, test_name, unit, per_atom)


def _curve_files(run: Path) -> list[Path]:
    """A run's metrics.csv; for a cross-validation (``--folds``), its folds'."""
    return [run / "metrics.csv"] if (run / "metrics.csv").exists() else sorted(run.glob("fold*/metrics.csv"))


def _headline(row: dict) -> str:
    """One run's result for the progress log: validation (what ranks) and test."""
    r = ranking(pd.DataFrame([row]))
    value = row.get(r.select)
    val = f"{r.value(f'{r.select_name} {value:.4g}')}, " if r.on_validation and pd.notna(value) else ""
    return val + r.value(f"{r.test_name} {row[r.test]:.4g}")


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per variant, best on validation first (``ranking``)."""
    r = ranking(results)
    cols = [c for c in (r.select, r.test, "test_mae", "test_rmse", "test_r2", "test_accuracy", "test_auc", "test_f1",
                        "best_val_mae", "best_val_loss", "seconds", "epochs_run", "n_parameters") if c in results]
    cols = list(dict.fromkeys(cols))
    grouped = results.groupby("variant", sort=False)[cols]
    summary = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=0).add_suffix("_std"))
    summary["seeds"] = results.groupby("variant", sort=False).size()
    return summary.sort_values(f"{r.select}_mean", ascending=r.select_lower, na_position="last", kind="stable")


def _mean_std(row: pd.Series, column: str) -> str:
    return f"{row[f'{column}_mean']:.4f} ± {row[f'{column}_std']:.4f}"


def summary_markdown(summary: pd.DataFrame, rank: Ranking) -> str:
    """The summary table, best on validation first, with the sentence that says so."""
    head = [rank.header(rank.select_name)] + ([rank.header(rank.test_name)] if rank.on_validation else [])
    lines = [rank.note, "", f"| variant | {' | '.join(head)} | seeds | train time (s) | parameters |",
             "|---|" + "---|" * (len(head) + 3)]
    for k, (name, r) in enumerate(summary.iterrows()):
        label = short_name(str(name))
        label = f"**{label}** (selected)" if k == 0 else label
        values = [_mean_std(r, rank.select)] + ([_mean_std(r, rank.test)] if rank.on_validation else [])
        lines.append(f"| {label} | {' | '.join(values)} | {int(r['seeds'])} | {r['seconds_mean']:.0f} | "
                     f"{int(r['n_parameters_mean']):,} |")
    return "\n".join(lines) + "\n"


def make_plots(out: Path, results: pd.DataFrame, summary: pd.DataFrame, variants: list[Variant]) -> list[Path]:
    from matplotlib.figure import Figure

    from cgcnn_lab.training import plots

    rank = ranking(results)
    metric, label = rank.test, rank.test_label
    best = summary.index[0]
    figures = []
    # test error per variant, with error bars over seeds; the variant selected on validation in orange
    shown = [v for v in variants if v.name in summary.index]
    names = [v.name for v in shown]
    fig = Figure(figsize=(7.0, 1.5 + 0.35 * len(names)), dpi=120)
    ax = fig.subplots()
    means = summary.loc[names, f"{metric}_mean"]
    stds = summary.loc[names, f"{metric}_std"]
    colors = ["tab:orange" if n == best else "tab:blue" for n in names]
    ax.barh(range(len(names)), means, xerr=stds, capsize=3, color=colors, alpha=0.8)
    ax.set_yticks(range(len(names)), [v.label for v in shown], fontsize=8)
    ax.invert_yaxis()  # first variant on top, as in the command
    ax.set_xlabel(label)
    picked = "orange: selected on validation" if rank.on_validation else "orange: best"
    ax.set_title(f"{label}: mean ± std over {int(summary['seeds'].max())} seeds\n({picked})", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "test_error.png")
    figures.append(out / "test_error.png")
    # validation curves, mean over seeds, one line per variant (val_mae is per atom for per-atom runs)
    regression = rank.test != "test_accuracy"
    curve_metric = "val_mae" if regression else "val_loss"
    what = "MAE per atom" if rank.per_atom else "MAE"
    fig = Figure(figsize=(6.5, 4.2), dpi=120)
    ax = fig.subplots()
    for variant in shown:
        runs = results.loc[results.variant == variant.name, "run"]
        files = [f for r in runs for f in _curve_files(Path(r))]
        curves = [c for c in (pd.read_csv(f) for f in files) if curve_metric in c]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        ax.plot(curves[0]["epoch"][:n], np.mean([c[curve_metric][:n] for c in curves], axis=0), label=variant.label,
                lw=1.2)
    plots.epoch_axis(ax)
    ax.set_ylabel(in_unit(f"validation {what}", rank.unit) if regression else "validation NLL loss")
    ax.set_title("validation curves, mean over seeds", fontsize=10)
    plots.log_y(ax)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png")
    figures.append(out / "learning_curves.png")
    # parity plot of the best variant (its first seed), per atom when the ranking is per atom
    if regression:
        run = Path(results.loc[results.variant == best, "run"].iloc[0])
        frame = pd.read_csv(run / "test_results.csv")
        columns = ("target_per_atom", "prediction_per_atom") if rank.per_atom else ("target", "prediction")
        if set(columns) <= set(frame.columns):
            best_label = next((v.label for v in variants if v.name == best), best)
            chosen = "best on validation" if rank.on_validation else "best"
            seed = results.loc[results.variant == best, "seed"].iloc[0]
            per_atom = ", per atom" if rank.per_atom else ""
            plots.parity(frame[columns[0]].to_numpy(), frame[columns[1]].to_numpy(), rank.unit,
                         f"{chosen}: {best_label} (seed {seed}{per_atom})", out / "parity_best.png")
            figures.append(out / "parity_best.png")
    return figures


def write_report(out: Path, results: pd.DataFrame, summary: pd.DataFrame, figures: list[Path],
                 variants: list[Variant], seeds: list[int], seconds: float) -> None:
    rank = ranking(results)
    best = summary.index[0]
    row = summary.loc[best]
    if rank.on_validation:
        headline = (f"Best on validation: **{short_name(str(best))}**, {rank.select_name} "
                    f"{rank.value(_mean_std(row, rank.select))}; its {rank.test_name}: "
                    f"{rank.value(_mean_std(row, rank.test))}. The test split was not used to choose.")
    else:
        headline = (f"Best by {rank.test_name}: **{short_name(str(best))}** "
                    f"({rank.value(_mean_std(row, rank.test))}).")
    lines = [
        "# Experiment report",
        "",
        (f"{len(variants)} variants × {len(seeds)} seeds (seeds {seeds}); every variant uses the same "
         "train/validation/test split. Each row of `results.csv` is one run folder under `runs/`."),
        "",
        headline,
        "",
        summary_markdown(summary, rank),
    ]
    factors = sorted({k for v in variants for k, _ in v.settings})
    if len(factors) > 0 and any(len(v.settings) == 1 for v in variants) and "base" in summary.index:
        def both(r: pd.Series) -> str:
            return f"validation {_mean_std(r, rank.select)}, test {_mean_std(r, rank.test)}" if rank.on_validation \
                else _mean_std(r, rank.test)

        lines += ["## One factor at a time", ""]
        for factor in factors:
            rows = [(v.name, summary.loc[v.name]) for v in variants if v.settings and v.settings[0][0] == factor]
            lines.append(f"- **{factor}**: base {both(summary.loc['base'])}; " + "; ".join(
                f"{name.split('=', 1)[1]} {both(r)}" for name, r in rows))
        lines.append("")
    lines += ["## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures]
    lines += ["", f"Training time of this invocation: {seconds:.0f} s."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
