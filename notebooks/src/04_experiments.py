# %% [markdown]
# # 4. Experiments: neighbours, activation and batch norm, pooling
#
# The course asked three questions: how does the number of neighbours M change the model? What do the
# activation function and batch norm do? Mean or max pooling? Each is answered here by a **one-factor
# experiment**: start from a baseline, change one setting, keep everything else (data, split, epochs)
# fixed, and repeat each setting with **several seeds** so the spread between runs is visible. A difference
# smaller than the error bars is not a result.
#
# Target: the energy per atom of the course perovskites (notebook 3). `CGCNN_HOMEWORK_FAST=1` shrinks
# everything to a smoke test; without it, expect a few minutes per setting on a laptop CPU.

# %%
import sys

if "google.colab" in sys.modules:
    REPO = "https://github.com/cgcnn-lab/cgcnn-lab"  # the course's copy of this repository
    get_ipython().run_line_magic("pip", f"install -q 'cgcnn-lab[course] @ git+{REPO}'")

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import otter
import pandas as pd

from cgcnn_lab.course import homework as hw
from cgcnn_lab.model.network import ModelConfig
from cgcnn_lab.training.options import DataOptions, TrainOptions
from cgcnn_lab.training.run import train

hw.inline_plots()
DATA_DIR = Path(os.environ.get("CGCNN_DATA", "../../../shared/data"))  # the one data setting
FAST = hw.fast_mode()
N_CRYSTALS = 60 if FAST else None
EPOCHS = 2 if FAST else 100
SEEDS = [0, 1] if FAST else [0, 1, 2]
BASE_MODEL = dict(n_conv=1, atom_fea_len=16, h_fea_len=32) if FAST else dict(n_conv=3)
raw, description = hw.energy_dataset(DATA_DIR, n=N_CRYSTALS, seed=0)
print(description, "|", len(raw.entries), "crystals", "| FAST mode" if FAST else "")
grader = otter.Notebook()  # grader.check("q4_1") runs the tests of exercise 4.1, from tests/q4_1.py

# %% [markdown] question="q4_1" points=3
# ### Exercise 4.1 — one run of the experiment
# Complete `run_once(setting, seed)`: train on `raw` with the baseline plus the changes in `setting`, a dict
# that may hold `max_neighbors` (a `DataOptions` field) and any `ModelConfig` field (`activation`,
# `batchnorm`, `pool`). Return the test MAE per atom. The seed must change the split, the initialisation
# and the shuffling (`TrainOptions(seed=seed)` does all three). The check comes after the experiments below,
# which call `run_once`.

# %%
def run_once(name, setting, seed):
    setting = dict(setting)
    max_neighbors = setting.pop("max_neighbors", 12)
    # BEGIN SOLUTION: train with the baseline + this setting and return the test MAE per atom
    # Hint: DataOptions(per_atom=True, element_ref=True, unit="eV", max_neighbors=max_neighbors)
    # Hint: ModelConfig(**BASE_MODEL, **setting); TrainOptions(epochs=EPOCHS, batch_size=32, seed=seed,
    # Hint:     out=hw.run_dir(f"nb4-{name}-{seed}"), progress=False)
    # Hint: the result's .metrics["test_mae_per_atom"]
    result = train(
        DataOptions(per_atom=True, element_ref=True, unit="eV", max_neighbors=max_neighbors),
        ModelConfig(**BASE_MODEL, **setting),
        TrainOptions(epochs=EPOCHS, batch_size=32, seed=seed, out=hw.run_dir(f"nb4-{name}-{seed}"), progress=False),
        raw=raw, log=lambda *args: None,
    )
    return result.metrics["test_mae_per_atom"]
    # END SOLUTION

# %% [markdown]
# The settings: one factor at a time against the baseline (M = 12, softplus, batch norm, mean pooling).

# %%
EXPERIMENTS = {
    "neighbours M": {"M=12 (baseline)": {}, "M=6": {"max_neighbors": 6}}
    | ({} if FAST else {"M=3": {"max_neighbors": 3}, "M=18": {"max_neighbors": 18}}),
    "activation / batch norm": {"softplus + BN (baseline)": {}, "softplus, no BN": {"batchnorm": False},
                                "ReLU + BN": {"activation": "relu"}}
    | ({} if FAST else {"tanh + BN": {"activation": "tanh"}}),
    "pooling": {"mean (baseline)": {}, "max": {"pool": "max"}} | ({} if FAST else {"sum": {"pool": "sum"}}),
}
rows, baseline_runs = [], {}
for factor, settings in EXPERIMENTS.items():
    for label, setting in settings.items():
        for seed in SEEDS:
            if not setting and seed in baseline_runs:  # the baseline is shared by the three experiments
                mae = baseline_runs[seed]
            else:
                mae = run_once(f"{factor.split()[0]}-{len(rows)}", setting, seed)
                if not setting:
                    baseline_runs[seed] = mae
            rows.append({"factor": factor, "setting": label, "seed": seed, "mae": mae})
results = pd.DataFrame(rows)
summary = results.groupby(["factor", "setting"], sort=False)["mae"].agg(["mean", "std", "count"])
summary.round(4)


# %% tags=["test"]
def test_experiments(results, EXPERIMENTS, SEEDS):
    import numpy as np

    from cgcnn_lab.course import homework as hw

    mae = hw.defined(results, "results", "Exercise 4.1 (the experiments cell)")["mae"].to_numpy(dtype=float)
    hw.check_shape(mae, (sum(len(s) for s in EXPERIMENTS.values()) * len(SEEDS),), "results")
    assert np.isfinite(mae).all() and (mae > 0).all(), "every run must give a finite, positive test MAE per atom"


# %% tags=["test", "hidden"]
def test_seed_and_setting_are_used(results):
    """Each seed gives another split and initialisation, and each setting another model: their MAEs differ."""
    import numpy as np

    for (factor, label), runs in results.groupby(["factor", "setting"], sort=False):
        maes = runs["mae"].to_numpy(dtype=float)
        assert not np.isclose(maes.min(), maes.max(), rtol=1e-5, atol=1e-8), (
            f"{factor}, {label}: every seed gives the same MAE ({maes[0]:.5f}): pass the seed to TrainOptions(seed=seed)")
    for factor, runs in results.groupby("factor", sort=False):
        by_setting = runs.groupby("setting", sort=False)["mae"].apply(lambda m: m.to_numpy(dtype=float))
        baseline = by_setting.iloc[0]
        for label, maes in by_setting.iloc[1:].items():
            assert not np.allclose(maes, baseline, rtol=1e-5, atol=1e-8), (
                f"{label!r} gives the baseline's MAEs: the setting is not used (max_neighbors goes to DataOptions, "
                "the other keys to ModelConfig(**BASE_MODEL, **setting))")

# %%
fig, axes = plt.subplots(1, len(EXPERIMENTS), figsize=(13, 3.8), sharey=True)
for ax, factor in zip(axes, EXPERIMENTS):
    s = summary.loc[factor]
    ax.bar(range(len(s)), s["mean"], yerr=s["std"], capsize=4, color="tab:blue", alpha=0.7)
    for k, label in enumerate(s.index):
        ax.scatter([k] * len(SEEDS), results.query("factor == @factor and setting == @label")["mae"],
                   color="k", s=10, zorder=3)
    ax.set_xticks(range(len(s)), s.index, rotation=20, ha="right")
    ax.set_title(factor)
axes[0].set_ylabel("test MAE (eV/atom)")
fig.suptitle(f"mean ± std over seeds {SEEDS} (dots: single runs)", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown] question="q4_w1" points=2
# ## Written questions
#
# **Q1 (neighbours).** How does M change the error and the cost? Why?

# %% [markdown] tags=["solution"]
# The cost (edges, memory, time per epoch) grows linearly with M. With very few neighbours (M = 3) an atom in
# a perovskite does not even see its full first shell (6 anions around B, 12 around A), so the graph cannot
# describe the coordination and the error rises. Beyond the first one or two shells (M ≈ 12) extra neighbours
# add little information: their contribution to the energy is small, and several convolution layers already
# reach them indirectly (the receptive field grows with each layer). So the error falls quickly up to about
# M = 12 and then flattens, while the cost keeps growing: the default M = 12 is a compromise.

# %% [markdown] question="q4_w2" points=2
# **Q2 (activation, batch norm).** What did removing batch norm or changing the activation do, and why?

# %% [markdown] tags=["solution"]
# Batch norm rescales the summed messages, whose size grows with the number of neighbours and varies a lot
# between crystals; without it, training is less stable and usually needs a smaller learning rate, so at a
# fixed budget the error is higher and varies more between seeds. Softplus is smooth and never exactly zero in
# its gradient, unlike ReLU, whose "dead" units can stop learning, and the energy is a smooth function of the
# positions, which a smooth activation represents more naturally. Differences between activations are often
# within the seed-to-seed spread: look at the error bars before concluding.

# %% [markdown] question="q4_w3" points=2
# **Q3 (pooling).** Mean, max or sum: which suits the energy per atom, and what would suit the total energy?

# %% [markdown] tags=["solution"]
# The energy per atom is an average property: mean pooling matches it (each atom contributes its share). Max
# pooling keeps only the most extreme atom in each feature, discarding how many atoms of each kind there are,
# so it does worse on an average. Sum pooling is extensive: it would suit the total energy of the cell (a sum
# of atomic contributions), but for a per-atom target it makes the output depend on the cell size, which the
# model then has to undo.
