"""End-to-end training, checkpoints and prediction, on small generated data (and the course set when present)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cgcnn_lab.cli import main
from cgcnn_lab.data.demo import DEMO_TARGET, write_demo_dataset
from cgcnn_lab.data.sources import DataError, from_structures
from cgcnn_lab.inference import CheckpointError, load_trained, predict_structures, safe_load
from cgcnn_lab.model.config import ModelConfig
from cgcnn_lab.training.options import DataOptions, TrainOptions
from cgcnn_lab.training.run import train

SHARED = Path(__file__).resolve().parents[2] / "shared"
COURSE = SHARED / "data" / "homework" / "perovskite_energy"


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "demo.csv.gz"
    return write_demo_dataset(path, n=160, seed=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


def small_model(**kw) -> ModelConfig:
    return ModelConfig(n_conv=2, atom_fea_len=32, h_fea_len=32, **kw)


def quick(tmp_path: Path, name: str, epochs: int = 6, lr: float = 3e-3, **kw) -> TrainOptions:
    return TrainOptions(epochs=epochs, batch_size=32, lr=lr, out=str(tmp_path / name), progress=False, **kw)


def test_short_run_lowers_loss_and_writes_run_folder(table, cache, tmp_path):
    data = DataOptions(source=str(table), targets=[DEMO_TARGET], unit="eV/atom", cache_dir=cache)
    result = train(data, small_model(), quick(tmp_path, "run", epochs=8), log=lambda *_: None)
    out = result.out
    for name in ("config.json", "split.csv", "metrics.csv", "test_results.csv", "metrics.json", "loss.png",
                 "mae.png", "parity.png", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (out / name).is_file(), name
    curve = pd.read_csv(out / "metrics.csv")
    assert len(curve) == 8
    assert curve["train_loss"].iloc[-1] < 0.5 * curve["train_loss"].iloc[0]
    assert curve["val_mae"].min() < curve["val_mae"].iloc[0]
    results = pd.read_csv(out / "test_results.csv")
    assert list(results.columns) == ["id", "target", "prediction"]
    assert len(results) == len(result.split.test) == 16
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["unit"] == "eV/atom"
    assert metrics["test_mae"] == pytest.approx((results.target - results.prediction).abs().mean())
    # much better than predicting the mean of the targets
    assert metrics["test_mae"] < 0.5 * (results.target - results.target.mean()).abs().mean()


def test_same_seed_same_numbers(table, cache, tmp_path):
    data = DataOptions(source=str(table), targets=[DEMO_TARGET], cache_dir=cache)
    a = train(data, small_model(), quick(tmp_path, "a", epochs=3), log=lambda *_: None)
    b = train(data, small_model(), quick(tmp_path, "b", epochs=3), log=lambda *_: None)
    ma, mb = pd.read_csv(a.out / "metrics.csv"), pd.read_csv(b.out / "metrics.csv")
    cols = ["train_loss", "val_loss", "val_mae"]
    np.testing.assert_array_equal(ma[cols].to_numpy(), mb[cols].to_numpy())
    # training switches deterministic mode's NaN fill of new tensors off, and gives the process its setting back
    assert torch.utils.deterministic.fill_uninitialized_memory


def test_streamed_training_equals_in_memory(table, cache, tmp_path):
    """--stream on reads every batch from the memory-mapped cache: the same run, number for number."""
    runs = {}
    for stream in (False, True):
        data = DataOptions(source=str(table), targets=[DEMO_TARGET], cache_dir=cache, stream=stream)
        runs[stream] = train(data, small_model(), quick(tmp_path, f"stream-{stream}", epochs=3), log=lambda *_: None).out
    curves = [pd.read_csv(runs[s] / "metrics.csv").drop(columns="seconds") for s in (False, True)]
    pd.testing.assert_frame_equal(*curves)
    pd.testing.assert_frame_equal(*[pd.read_csv(runs[s] / "test_results.csv") for s in (False, True)])


@pytest.mark.parametrize("conv", ["gated", "egated"])  # egated: bond states and an extra embedding round-trip too
def test_checkpoint_round_trip_predicts_identically(table, cache, tmp_path, conv):
    data = DataOptions(source=str(table), targets=[DEMO_TARGET], cache_dir=cache)
    result = train(data, small_model(conv=conv), quick(tmp_path, "run", epochs=3), log=lambda *_: None)
    saved = pd.read_csv(result.out / "test_results.csv")

    out_csv = tmp_path / "pred.csv"
    assert main(["predict", str(result.out), str(table), "--target", DEMO_TARGET, "--out", str(out_csv),
                 "--cache-dir", cache]) == 0
    pred = pd.read_csv(out_csv).set_index("id").loc[saved.id]
    np.testing.assert_allclose(pred["prediction"].to_numpy(), saved["prediction"].to_numpy(), rtol=0, atol=1e-5)

    # a CGCNN folder without targets (ids only): predictions, no metrics
    folder = tmp_path / "new"
    folder.mkdir()
    rows = pd.read_csv(table).set_index("id").loc[saved.id[:3]]
    for crystal_id, cif in rows["structure"].items():
        (folder / f"{crystal_id}.cif").write_text(cif)
    (folder / "id_prop.csv").write_text("\n".join(rows.index) + "\n")
    assert main(["predict", str(result.out), str(folder), "--out", str(out_csv), "--cache-dir", cache]) == 0
    unlabelled = pd.read_csv(out_csv)
    assert list(unlabelled.columns) == ["id", "prediction"]
    np.testing.assert_allclose(unlabelled["prediction"], saved["prediction"][:3], atol=1e-5)

    # from Python, on pymatgen structures: the same numbers again
    from pymatgen.core import Structure

    frame = pd.read_csv(table).set_index("id").loc[saved.id[:5]]
    structures = [Structure.from_str(c, fmt="cif") for c in frame["structure"]]
    values = predict_structures(result.out, structures, ids=list(frame.index))
    np.testing.assert_allclose(np.asarray(values)[:, 0], saved["prediction"].to_numpy()[:5], atol=1e-4)
    table_of = values.frame()  # the same table as the CLI's CSV: ids with their predictions, in the model's unit
    assert list(table_of["id"]) == list(frame.index) and values.unit == values.spec.unit
    np.testing.assert_allclose(table_of["prediction"], saved["prediction"].to_numpy()[:5], atol=1e-4)


def test_resume_continues_from_last_checkpoint(table, cache, tmp_path):
    data = DataOptions(source=str(table), targets=[DEMO_TARGET], cache_dir=cache)
    train(data, small_model(), quick(tmp_path, "run", epochs=2), log=lambda *_: None)
    with pytest.raises(DataError, match="--resume"):
        train(data, small_model(), quick(tmp_path, "run", epochs=4), log=lambda *_: None)
    opts = quick(tmp_path, "run", epochs=4)
    opts.resume = True
    config = (tmp_path / "run" / "config.json").read_text()
    # other graphs or another network are not a continuation: refused, naming the difference, config.json kept
    with pytest.raises(DataError, match="graph max_neighbors: 12 in the run, 8 now.*model n_conv: 2 in the run, 3 now"):
        train(replace(data, max_neighbors=8), replace(small_model(), n_conv=3), opts, log=lambda *_: None)
    assert (tmp_path / "run" / "config.json").read_text() == config
    train(data, small_model(), opts, log=lambda *_: None)
    curve = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert curve["epoch"].tolist() == [1, 2, 3, 4]


def test_classification_with_threshold(table, cache, tmp_path):
    median = float(pd.read_csv(table)[DEMO_TARGET].median())
    data = DataOptions(source=str(table), targets=[DEMO_TARGET], threshold=median, cache_dir=cache)
    result = train(data, small_model(task="classification", n_outputs=2), quick(tmp_path, "cls", epochs=8),
                   log=lambda *_: None)
    m = result.metrics
    assert set(m) >= {"test_accuracy", "test_auc", "test_f1"}
    assert m["test_auc"] > 0.8  # the label is mostly composition: easy to learn
    assert (result.out / "roc.png").is_file() and (result.out / "accuracy.png").is_file()
    results = pd.read_csv(result.out / "test_results.csv")
    assert set(results.target.unique()) <= {0, 1}
    assert set(results.prediction.unique()) <= {0, 1}  # a label: the most probable class
    assert results.p1.between(0, 1).all()
    assert (results.prediction == (results.p1 > 0.5)).all()


def test_fold_and_id_splits(table, cache, tmp_path):
    frame = pd.read_csv(table)
    frame["fold"] = np.arange(len(frame)) % 5
    folded = tmp_path / "folded.csv"
    frame.to_csv(folded, index=False)
    data = DataOptions(source=str(folded), targets=[DEMO_TARGET], cache_dir=cache)
    result = train(data, small_model(), quick(tmp_path, "fold", epochs=1, fold_col="fold", test_fold=2),
                   log=lambda *_: None)
    tested = set(pd.read_csv(result.out / "test_results.csv").id)
    assert tested == set(frame.id[frame.fold == 2])

    ids = frame.id.tolist()
    for name, part in (("train", ids[:100]), ("val", ids[100:130]), ("test", ids[130:])):
        (tmp_path / f"{name}.txt").write_text("\n".join(part) + "\n")
    opts = quick(tmp_path, "ids", epochs=1, train_ids=str(tmp_path / "train.txt"),
                 val_ids=str(tmp_path / "val.txt"), test_ids=str(tmp_path / "test.txt"))
    result = train(DataOptions(source=str(table), targets=[DEMO_TARGET], cache_dir=cache), small_model(), opts,
                   log=lambda *_: None)
    assert set(pd.read_csv(result.out / "test_results.csv").id) == set(ids[130:])


def test_python_structures_per_atom(tmp_path, cache):
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(0)
    structures, energies = [], []
    for k in range(60):
        a = 4.0 + 0.4 * rng.random()
        s = Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
                      [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        if k % 2:
            s = s * (2, 1, 1)
        structures.append(s)
        energies.append(len(s) * (-8.0 + 2.0 * (a - 4.2) ** 2))  # extensive: total energy of the cell
    raw = from_structures(structures, energies, target_names=["energy"])
    result = train(DataOptions(per_atom=True, element_ref=True, unit="eV", cache_dir=cache), small_model(),
                   quick(tmp_path, "py", epochs=4), raw=raw, log=lambda *_: None)
    assert result.metrics["unit_per_atom"] == "eV/atom"
    assert "test_mae_per_atom" in result.metrics
    # totals = per-atom x atoms: the totals' error is the per-atom error scaled by cell size
    assert result.metrics["test_mae"] > result.metrics["test_mae_per_atom"]


def test_malicious_checkpoint_is_refused(tmp_path, write_exploit):
    path = write_exploit(tmp_path / "evil.ckpt", lambda payload: {"state_dict": {}, "payload": payload})
    with pytest.raises(CheckpointError, match="refused"):
        safe_load(path)
    with pytest.raises(CheckpointError):
        load_trained(path)
    assert not (tmp_path / "pwned").exists()


def test_not_our_checkpoint(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not a cgcnn-lab checkpoint"):
        load_trained(path)
    with pytest.raises(CheckpointError, match="run folder"):
        load_trained(tmp_path)


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "no such file" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "id_prop.csv").write_text("")
    assert main(["train", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "empty" in capsys.readouterr().err


def test_cli_featurize_reports(table, cache, capsys):
    assert main(["featurize", str(table), "--cache-dir", cache]) == 0
    out = capsys.readouterr().out
    assert "160 crystals" in out and "edges" in out and "41 Gaussian" in out


@pytest.mark.skipif(not COURSE.is_dir(), reason="../shared/data/homework/perovskite_energy not present")
def test_course_perovskites_per_atom_lowers_loss(tmp_path, cache):
    data = DataOptions(source=str(COURSE), per_atom=True, element_ref=True, unit="eV", cache_dir=cache)
    result = train(data, small_model(), quick(tmp_path, "course", epochs=5), log=lambda *_: None)
    curve = pd.read_csv(result.out / "metrics.csv")
    assert curve["train_loss"].iloc[-1] < curve["train_loss"].iloc[0]
    assert result.metrics["unit"] == "eV" and result.metrics["unit_per_atom"] == "eV/atom"
    # the folder's atom_init.json is the encoding, as in the original code
    assert load_trained(result.out).encoding.name.startswith("atom_init:")
    assert result.metrics["test_mae_per_atom"] < 0.6


def test_init_from_copies_weights_and_freezes_convolutions(table, cache, tmp_path):
    data = DataOptions(source=str(table), targets=[DEMO_TARGET], cache_dir=cache)
    first = train(data, small_model(), quick(tmp_path, "first", epochs=2), log=lambda *_: None)
    source = load_trained(first.out).model.state_dict()
    # the requested architecture is overridden by the checkpoint's (atom_fea_len 32, 2 convs)
    opts = quick(tmp_path, "tuned", epochs=2, init_from=str(first.out), freeze_convs=True)
    tuned = train(data, ModelConfig(), opts, log=lambda *_: None)
    weights = load_trained(tuned.out).model.state_dict()
    for name, value in weights.items():
        if name.startswith(("embedding.", "convs.")) and "running" not in name and "num_batches" not in name:
            torch.testing.assert_close(value, source[name], msg=f"{name} should be frozen")
    assert not torch.equal(weights["fc_out.weight"], source["fc_out.weight"])
    assert weights["embedding.weight"].shape == (32, 92)


def test_init_from_keeps_the_bond_features_but_completes_shells_when_asked(table, cache, tmp_path):
    first = train(DataOptions(source=str(table), targets=[DEMO_TARGET], cache_dir=cache, gaussian_step=0.4),
                  small_model(), quick(tmp_path, "first", epochs=1), log=lambda *_: None)
    lines: list[str] = []
    data = DataOptions(source=str(table), targets=[DEMO_TARGET], cache_dir=cache, shell_tol=0.01)
    tuned = train(data, ModelConfig(), quick(tmp_path, "tuned", epochs=1, init_from=str(first.out)), log=lines.append)
    graph = load_trained(tuned.out).graph_config
    assert (graph.gaussian_step, graph.shell_tol) == (0.4, 0.01)  # the checkpoint's grid, the asked-for shells
    assert any("neighbours as asked: shell_tol 0.01" in line for line in lines)


def test_init_from_honours_the_neighbour_count_and_refuses_what_the_weights_cannot_take(table, cache, tmp_path, capsys):
    first = train(DataOptions(source=str(table), targets=[DEMO_TARGET], cache_dir=cache, max_neighbors=8),
                  small_model(), quick(tmp_path, "first", epochs=1), log=lambda *_: None)
    common = ["train", str(table), "--target", DEMO_TARGET, "--cache-dir", cache, "--epochs", "1", "--no-progress",
              "--init-from", str(first.out)]
    # M is a choice of neighbours, not a weight: asked for explicitly, even as the default 12, it is used
    assert main([*common, "--max-nbr", "12", "--out", str(tmp_path / "m12")]) == 0
    assert load_trained(tmp_path / "m12").graph_config.max_neighbors == 12
    assert "neighbours as asked: max_neighbors 12" in capsys.readouterr().out
    # not asked: the checkpoint's 8 (the default 12 is not a request)
    assert main([*common, "--out", str(tmp_path / "kept")]) == 0
    assert load_trained(tmp_path / "kept").graph_config.max_neighbors == 8
    # another architecture or other bond features cannot be loaded into these weights: one clear error, no run
    capsys.readouterr()
    assert main([*common, "--n-conv", "4", "--gaussian-step", "0.4", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "gaussian_step 0.2 (asked: 0.4)" in err and "n_conv 2 (asked: 4)" in err and "--init-from" in err
    assert not (tmp_path / "bad").exists()
    # the same request from Python: a value other than the default counts as asked
    with pytest.raises(DataError, match="n_conv 2 \\(asked: 5\\)"):
        train(DataOptions(source=str(table), targets=[DEMO_TARGET], cache_dir=cache), ModelConfig(n_conv=5),
              quick(tmp_path, "py", epochs=1, init_from=str(first.out)), log=lambda *_: None)


def test_freezing_an_edge_gated_model_keeps_its_bond_embedding(table, cache, tmp_path):
    data = DataOptions(source=str(table), targets=[DEMO_TARGET], cache_dir=cache)
    first = train(data, small_model(conv="egated"), quick(tmp_path, "first", epochs=1), log=lambda *_: None)
    opts = quick(tmp_path, "tuned", epochs=2, init_from=str(first.out), freeze_convs=True)
    tuned = train(data, ModelConfig(), opts, log=lambda *_: None)
    before, after = load_trained(first.out).model.state_dict(), load_trained(tuned.out).model.state_dict()
    for name in ("edge_embedding.0.weight", "convs.0.lin_edges.weight", "embedding.weight"):
        torch.testing.assert_close(after[name], before[name])
    assert not torch.equal(after["fc_out.weight"], before["fc_out.weight"])


def test_compare_variants_ask_for_what_they_set_and_are_checked_before_training(table, cache, tmp_path, capsys):
    first = train(DataOptions(source=str(table), targets=[DEMO_TARGET], cache_dir=cache, max_neighbors=8),
                  small_model(), quick(tmp_path, "first", epochs=1), log=lambda *_: None)
    common = ["compare", str(table), "--target", DEMO_TARGET, "--cache-dir", cache, "--epochs", "1", "--seeds", "1",
              "--init-from", str(first.out)]
    # max_nbr=12 is the default, but a variant that sets it asks for it: the run uses 12, as its label says
    assert main([*common, "--grid", "max_nbr=8,12", "--out", str(tmp_path / "m")]) == 0
    graphs = {m: load_trained(tmp_path / "m" / "runs" / f"max_nbr-{m}" / "seed0").graph_config.max_neighbors
              for m in (8, 12)}
    assert graphs == {8: 8, 12: 12}
    # a variant the checkpoint cannot take stops the sweep before anything trains, naming the variant
    capsys.readouterr()
    assert main([*common, "--grid", "n_conv=2,4", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "variant n_conv=4" in err and "n_conv 2 (asked: 4)" in err
    assert not (tmp_path / "bad" / "runs").exists()


def test_split_seed_keeps_one_split_for_several_seeds(table, cache, tmp_path):
    common = ["train", str(table), "--target", DEMO_TARGET, "--cache-dir", cache, "--epochs", "1", "--no-progress",
              "--n-conv", "1"]
    for name, extra in {"s0": ["--seed", "0"], "s1": ["--seed", "1", "--split-seed", "0"], "own": ["--seed", "1"]}.items():
        assert main([*common, *extra, "--out", str(tmp_path / name)]) == 0
    ids = {name: set(pd.read_csv(tmp_path / name / "test_results.csv").id) for name in ("s0", "s1", "own")}
    assert ids["s1"] == ids["s0"] != ids["own"]  # the guard: seed 1 alone draws another split
    assert json.loads((tmp_path / "s1" / "config.json").read_text())["train"]["split_seed"] == 0


def test_given_options_tells_written_options_from_defaults():
    from cgcnn_lab.cli import build_parser, given_options

    parser = build_parser()
    train_parser = parser.parse_args(["train", "x"]).subparsers["train"]
    argv = ["train", "x", "--max-nbr=8", "--n-conv", "3", "--preset", "best", "--lr", "1e-3", "--", "--conv"]
    assert given_options(train_parser, argv) == ("lr", "max_neighbors", "n_conv", "preset")
    assert given_options(train_parser, ["train", "x", "--max-n", "8"]) == ()  # no abbreviations: main refuses it


@pytest.mark.parametrize("pool", ["mean", "sum"])
def test_site_contributions_add_up_to_the_prediction(table, cache, tmp_path, pool):
    data = DataOptions(source=str(table), targets=[DEMO_TARGET], per_atom=True, unit="eV", cache_dir=cache)
    result = train(data, small_model(readout="atom", pool=pool), quick(tmp_path, "atomwise", epochs=2),
                   log=lambda *_: None)
    out = tmp_path / "contrib.csv"
    assert main(["explain", str(result.out), str(table), "--target", DEMO_TARGET, "--out", str(out),
                 "--cache-dir", cache]) == 0
    sites = pd.read_csv(out)
    pred = pd.read_csv(result.out / "test_results.csv").set_index("id")["prediction"]
    per_crystal = sites.groupby("id")["contribution"].sum()  # per-atom energies sum to the total energy
    scale = 1.0 if pool == "mean" else sites.groupby("id").size()  # sum pooling: they sum to the per-atom value
    np.testing.assert_allclose((per_crystal * scale).loc[pred.index].to_numpy(), pred.to_numpy(), rtol=1e-4,
                               atol=1e-6 * float(pred.abs().max()))  # float32 sums: a prediction near 0 keeps 1e-6
    assert list(Path(tmp_path).glob("contrib_*.png"))

    plain = train(data, small_model(), quick(tmp_path, "crystalwise", epochs=1), log=lambda *_: None)
    assert main(["explain", str(plain.out), str(table), "--target", DEMO_TARGET, "--out", str(out),
                 "--cache-dir", cache]) == 2


def test_fold_split_validation_is_a_fraction_of_the_training_folds():
    from cgcnn_lab.training.splits import fold_split

    folds = np.arange(1000) % 5
    split = fold_split(folds, test_fold=0, val_ratio=0.1, seed=0)
    assert len(split.test) == 200 and len(split.val) == 80 and len(split.train) == 720
    assert not set(split.val) & set(split.train) and (folds[split.val] != 0).all()
    assert np.array_equal(split.val, fold_split(folds, 0, 0.1, seed=0).val)


def test_ema_validates_and_predicts_with_averaged_weights(table, cache, tmp_path):
    data = DataOptions(source=str(table), targets=[DEMO_TARGET], cache_dir=cache)
    result = train(data, small_model(), quick(tmp_path, "ema", epochs=3, ema=0.9), log=lambda *_: None)
    ckpt = safe_load(result.out / "checkpoints" / "last.ckpt")
    raw, averaged = ckpt["current_model_state"], ckpt["state_dict"]  # Lightning's EMAWeightAveraging layout
    assert set(raw) == set(averaged)
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw if raw[k].is_floating_point())
    trained = load_trained(result.out / "checkpoints" / "last.ckpt")
    for name, value in trained.model.state_dict().items():  # predictions use the averaged weights
        torch.testing.assert_close(value, averaged[f"model.{name}"])
    with pytest.raises(DataError, match="between 0 and 1"):
        train(data, small_model(), quick(tmp_path, "bad", epochs=1, ema=1.5), log=lambda *_: None)


def test_continue_from_fits_references_to_the_pretrained_models_errors():
    from cgcnn_lab.targets import TargetTransform, composition_fractions

    rng = np.random.default_rng(0)
    counts = rng.integers(2, 9, size=40)
    atom_ptr = np.concatenate([[0], np.cumsum(counts)])
    z = rng.choice([8, 26, 64, 82], size=atom_ptr[-1])
    shift = np.zeros(119)
    shift[[8, 26, 64, 82]] = [0.1, -0.3, -1.8, 0.4]  # per-element disagreements between old and new data, eV/atom
    zero_shot_per_atom = rng.normal(-6.0, 1.5, size=(40, 1))
    fractions = composition_fractions(z, atom_ptr)
    targets = (zero_shot_per_atom + 0.2 + fractions @ shift[:, None]) * counts[:, None]  # totals, as in the course
    pretrained = TargetTransform(False, [-6.1], [1.7])
    kept = TargetTransform.continue_from(pretrained, targets, zero_shot_per_atom * counts[:, None], z, atom_ptr,
                                         per_atom=True, element_ref=True)
    assert kept is not None and kept.per_atom and kept.std == [1.7]
    # the pretrained output (normalised with its own mean and std) decodes to the new targets exactly
    baseline = fractions @ np.asarray(kept.element_ref)
    decoded = ((zero_shot_per_atom - (-6.1)) / 1.7) * 1.7 + kept.mean[0] + baseline
    np.testing.assert_allclose(decoded * counts[:, None], targets, atol=1e-2)
    # a different quantity (a band gap around 1 eV) is not continued: the head is rescaled instead
    gaps = rng.uniform(0, 3, size=(40, 1))
    assert TargetTransform.continue_from(pretrained, gaps, zero_shot_per_atom, z, atom_ptr, False) is None
    assert TargetTransform.continue_from(pretrained, gaps, zero_shot_per_atom, z, atom_ptr, False, True) is None


def test_continue_from_a_formation_energy_model_to_total_energies():
    """Total energy per atom = formation energy per atom + Σ_i c_i μ_i: with element references a formation-energy
    model is a valid start for total energies, although their means are 5 eV/atom apart."""
    from cgcnn_lab.targets import TargetTransform, composition_fractions

    rng = np.random.default_rng(2)
    counts = rng.integers(2, 9, size=60)
    atom_ptr = np.concatenate([[0], np.cumsum(counts)])
    z = rng.choice([8, 22, 38, 56], size=atom_ptr[-1])
    mu = np.zeros((119, 1))
    mu[[8, 22, 38, 56]] = [[-4.9], [-7.8], [-1.7], [-1.9]]  # elemental reference energies, eV/atom
    fractions = composition_fractions(z, atom_ptr)
    e_form = rng.normal(-2.0, 0.6, size=(60, 1))  # what the pretrained model predicts, per atom
    noise = rng.normal(0, 0.05, size=(60, 1))  # what it gets wrong
    totals = (e_form + noise + fractions @ mu) * counts[:, None]
    pretrained = TargetTransform(False, [-1.9], [0.7])
    kept = TargetTransform.continue_from(pretrained, totals, e_form * counts[:, None], z, atom_ptr, True, True)
    assert kept is not None and kept.std == [0.7]
    decoded = e_form - (-1.9) + kept.mean[0] + fractions @ np.asarray(kept.element_ref)
    assert np.abs(decoded - totals / counts[:, None]).mean() < 0.06  # the start is the model's own error
    # without element references the 5 eV/atom offset is not the pretrained quantity: rescaled instead
    assert TargetTransform.continue_from(pretrained, totals, e_form * counts[:, None], z, atom_ptr, True) is None
    # a pretrained model that explains nothing beyond composition is not continued either
    unrelated = rng.normal(-2.0, 0.6, size=(60, 1)) * counts[:, None]
    assert TargetTransform.continue_from(pretrained, totals, unrelated, z, atom_ptr, True, True) is None


def test_init_from_starts_from_the_pretrained_predictions(table, cache, tmp_path):
    data = DataOptions(source=str(table), targets=[DEMO_TARGET], cache_dir=cache)
    first = train(data, small_model(), quick(tmp_path, "first", epochs=4), log=lambda *_: None)
    lines: list[str] = []
    opts = quick(tmp_path, "tuned", epochs=1, init_from=str(first.out), freeze_convs=True, lr=1e-9)
    tuned = train(data, ModelConfig(), opts, log=lines.append)
    assert any("training starts from its predictions" in line for line in lines)
    old, new = load_trained(first.out).transform, load_trained(tuned.out).transform
    assert new.std == old.std and new.element_ref is None  # the head keeps its scale; its mean error is removed
    before = pd.read_csv(first.out / "test_results.csv")
    after = pd.read_csv(tuned.out / "test_results.csv")
    # one epoch at a negligible learning rate changes only the batch-norm statistics
    moved = after.prediction - (before.prediction + new.mean[0] - old.mean[0])
    assert moved.abs().mean() < 0.2 * (before.prediction - before.target).abs().mean()
    # a target on another scale gets a rescaled head
    scaled = tmp_path / "scaled.csv.gz"
    frame = pd.read_csv(table)
    frame[DEMO_TARGET] = frame[DEMO_TARGET] * 100 + 500
    frame.to_csv(scaled, index=False)
    lines.clear()
    rescaled = train(DataOptions(source=str(scaled), targets=[DEMO_TARGET], cache_dir=cache), ModelConfig(),
                     quick(tmp_path, "rescaled", epochs=1, init_from=str(first.out)), log=lines.append)
    assert any("output layer is rescaled" in line for line in lines)
    assert load_trained(rescaled.out).transform.std[0] > 10 * load_trained(first.out).transform.std[0]


def test_bf16_mixed_precision_trains_with_an_fp32_head(table, cache, tmp_path):
    data = DataOptions(source=str(table), targets=[DEMO_TARGET], cache_dir=cache)
    result = train(data, small_model(), quick(tmp_path, "bf16", epochs=8, precision="bf16-mixed"), log=lambda *_: None)
    curve = pd.read_csv(result.out / "metrics.csv")
    assert curve["train_loss"].iloc[-1] < 0.5 * curve["train_loss"].iloc[0]
    results = pd.read_csv(result.out / "test_results.csv")
    assert result.metrics["test_mae"] < 0.5 * (results.target - results.target.mean()).abs().mean()
    batch = next(iter(result.dataset.loader(range(8), batch_size=8)))
    model = load_trained(result.out).model
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.atom_features(batch).dtype == torch.bfloat16  # the convolutions do run in bf16
        assert model(batch).dtype == torch.float32  # pooling and head leave autocast: full-resolution outputs


def test_continue_from_keeps_the_pretrained_models_own_references():
    from cgcnn_lab.targets import TargetTransform, composition_fractions

    rng = np.random.default_rng(1)
    counts = rng.integers(2, 9, size=30)
    atom_ptr = np.concatenate([[0], np.cumsum(counts)])
    z = rng.choice([3, 8, 26], size=atom_ptr[-1])
    old_ref = np.zeros((119, 1))
    old_ref[[3, 8, 26]] = [[-1.0], [-4.0], [-7.0]]
    pretrained = TargetTransform(True, [0.0], [0.3], old_ref.tolist())
    fractions = composition_fractions(z, atom_ptr)
    zero_shot = (fractions @ old_ref + rng.normal(0, 0.3, size=(30, 1))) * counts[:, None]
    kept = TargetTransform.continue_from(pretrained, zero_shot + 0.05 * counts[:, None], zero_shot, z, atom_ptr,
                                         per_atom=True, element_ref=False)
    assert kept is not None
    np.testing.assert_allclose(kept.element_ref, old_ref)  # still part of the starting predictions
    assert kept.mean[0] == pytest.approx(0.05) and kept.std == [0.3]


def test_predict_ensemble_averages_the_models(table, cache, tmp_path, capsys):
    data = DataOptions(source=str(table), targets=[DEMO_TARGET], cache_dir=cache)
    runs = [train(data, small_model(), quick(tmp_path, f"seed{s}", epochs=2, seed=s), log=lambda *_: None).out
            for s in (0, 1)]
    singles = []
    for k, run in enumerate(runs):
        assert main(["predict", str(run), str(table), "--out", str(tmp_path / f"p{k}.csv"), "--cache-dir", cache]) == 0
        singles.append(pd.read_csv(tmp_path / f"p{k}.csv")["prediction"].to_numpy())
    out = tmp_path / "ensemble.csv"
    assert main(["predict", str(runs[0]), str(table), "--ensemble", str(runs[1]), "--out", str(out),
                 "--cache-dir", cache]) == 0
    frame = pd.read_csv(out)
    np.testing.assert_allclose(frame["prediction"], np.mean(singles, axis=0), rtol=1e-6)
    np.testing.assert_allclose(frame["prediction_std"], np.std(singles, axis=0), rtol=1e-5, atol=1e-7)
    assert "ensemble of 2 models" in capsys.readouterr().out
    classifier = train(DataOptions(source=str(table), targets=[DEMO_TARGET], cache_dir=cache, threshold=-1.0),
                       small_model(task="classification"), quick(tmp_path, "clf", epochs=1), log=lambda *_: None).out
    assert main(["predict", str(runs[0]), str(table), "--ensemble", str(classifier), "--out", str(out),
                 "--cache-dir", cache]) == 2
    assert "task 'classification' differs" in capsys.readouterr().err


def test_presets_are_train_options_and_explicit_options_win(monkeypatch):
    import cgcnn_lab.training.run
    from cgcnn_lab import cli
    from cgcnn_lab.training.presets import PRESETS

    seen: dict = {}
    monkeypatch.setattr(cgcnn_lab.training.run, "train", lambda *objects: seen.update(
        {k: v for o in objects for k, v in vars(o).items()}))
    for name, preset in PRESETS.items():
        seen.clear()
        assert cli.main(["train", "data.csv", "--preset", name]) == 0
        assert {k: seen.get(k, "missing") for k in preset.values} == preset.values, name  # every key a real option
        assert seen["preset"] == name
    assert cli.main(["train", "data.csv", "--preset", "matbench", "--ema", "0", "--epochs", "5"]) == 0
    assert (seen["ema"], seen["epochs"], seen["weight_decay"], seen["element_ref"]) == (0.0, 5, 0.01, True)
    # the same objects from Python: explicit values kept, the rest from the preset
    data, model, opts = PRESETS["best"].apply(DataOptions(max_neighbors=4), ModelConfig(), TrainOptions(epochs=9),
                                              keep=["max_neighbors", "epochs"])
    assert (data.max_neighbors, opts.epochs, model.n_conv, opts.ema, opts.preset) == (4, 9, 5, 0.999, "best")


def test_classification_splits_are_stratified():
    from cgcnn_lab.training.splits import ratio_split

    labels = np.r_[np.zeros(640, int), np.ones(360, int)]  # 64/36, as perovskites vs other oxides
    for seed in range(3):
        split = ratio_split(len(labels), None, 0.1, 0.1, seed, strata=labels)
        assert (len(split.train), len(split.val), len(split.test)) == (800, 100, 100)
        assert labels[split.val].sum() == labels[split.test].sum() == 36
        assert len(np.unique(np.r_[split.train, split.val, split.test])) == 1000
    plain = ratio_split(len(labels), None, 0.1, 0.1, 0)
    assert (len(plain.train), len(plain.val), len(plain.test)) == (800, 100, 100)
