"""The experiment runner: a grid of ordinary runs, results collected, finished runs not repeated."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from siamgrad.experiments import grids
from siamgrad.experiments import runner as reproduce
from siamgrad.config import build_config
from siamgrad.errors import ConfigError, TrainingError

TINY = ["backbone=tiny", "batch_size=128", "epochs=1", "method.proj_hidden_dim=32", "method.proj_output_dim=16",
        "eval.knn_k=20", "diag.enabled=false", "diag.report=false", "threads=2"]


def _numpy_knn(ftr, ytr, fte, yte, k, t, classes):
    """Wu et al. kNN re-derived in numpy: cosine similarity, top-k, votes exp(sim / t)."""
    a = ftr / np.linalg.norm(ftr, axis=1, keepdims=True)
    b = fte / np.linalg.norm(fte, axis=1, keepdims=True)
    sim = b @ a.T
    idx = np.argsort(-sim, axis=1)[:, :k]
    votes = np.zeros((len(b), classes))
    for i in range(len(b)):
        np.add.at(votes[i], ytr[idx[i]], np.exp(sim[i, idx[i]] / t))
    return 100.0 * float((votes.argmax(1) == yte).mean())


def test_grid_runs_collects_and_resumes(tmp_path, monkeypatch):
    exp = grids.Experiment(
        "toy grid", sizes={"cpu": TINY},
        runs=[("a", ["method=simclr"]), ("b", ["method=unigrad", "method.lam=2", "data.fraction=0.5"])],
        x="fraction", hue=["method"], full_train_knn=True)
    monkeypatch.setitem(grids.EXPERIMENTS, "toy", exp)
    md = reproduce.run_experiment("toy", [], out_dir=str(tmp_path), log=False)
    text = md.read_text()
    assert "| a | simclr |" in text and "| b | unigrad |" in text and "siamgrad reproduce toy size=cpu" in text
    rows = list(csv.DictReader(open(md.parent / "results.csv")))
    assert [r["run"] for r in rows] == ["a", "b"]
    # the varied settings are columns: lam only acts in simclr's gradient form (blank), unigrad's is 2
    assert [r["lam"] for r in rows] == ["", "2.0"]
    assert [float(r["fraction"]) for r in rows] == [1.0, 0.5]
    assert all(0 <= float(r["knn_top1"]) <= 100 for r in rows) and all(r["status"] == "ok" for r in rows)
    assert (md.parent / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # run b trained on half the data: its kNN bank in training was that half, knn_full_train uses the
    # whole labeled train split; re-derive it in numpy from the checkpoint's backbone
    from siamgrad.data.datasets import load_dataset
    from siamgrad.eval.knn import extract_features, load_backbone

    backbone, state = load_backbone(str(md.parent / "b" / "latest.pt"))
    train, test = load_dataset("digits", None, "train"), load_dataset("digits", None, "test")
    assert state["config"]["data"]["fraction"] == 0.5
    mean, std = tuple(state["mean"]), tuple(state["std"])
    ftr = extract_features(backbone, train.images, mean, std).numpy()
    fte = extract_features(backbone, test.images, mean, std).numpy()
    expected = _numpy_knn(ftr, train.labels.numpy(), fte, test.labels.numpy(), 20, 0.1, len(train.classes))
    assert float(rows[1]["knn_full_train"]) == pytest.approx(expected, abs=0.3)

    # re-running does not retrain: the checkpoints stay as they were
    stamp = (md.parent / "a" / "latest.pt").stat().st_mtime_ns
    reproduce.run_experiment("toy", [], out_dir=str(tmp_path), log=False)
    assert (md.parent / "a" / "latest.pt").stat().st_mtime_ns == stamp


def test_failed_run_is_recorded_and_the_grid_goes_on(tmp_path, monkeypatch):
    """A run that stops on a non-finite loss becomes a 'failed' row; the next runs still train."""
    import siamgrad.train.loop as train_mod

    calls = []

    def fake_train(cfg, log=True):
        calls.append(cfg.run_name)
        if cfg.run_name == "bad":
            raise TrainingError("loss is nan at step 3; stopped with the last good checkpoint intact (none yet)")
        return train_mod.TrainResult(Path(cfg.out_dir) / cfg.run_name, 7, 41.5, 20.0, 30.0, 42.0)

    monkeypatch.setattr(train_mod, "train", fake_train)
    exp = grids.Experiment("toy", sizes={"cpu": TINY},
                               runs=[("bad", ["method=simclr", "optim.lr=100"]), ("good", ["method=simclr"])])
    monkeypatch.setitem(grids.EXPERIMENTS, "toy2", exp)
    md = reproduce.run_experiment("toy2", [], out_dir=str(tmp_path), log=False)
    rows = list(csv.DictReader(open(md.parent / "results.csv")))
    assert calls == ["bad", "good"]
    assert rows[0]["status"].startswith("failed: loss is nan at step 3") and rows[0]["knn_top1"] == ""
    assert rows[1]["status"] == "ok" and float(rows[1]["knn_top1"]) == 41.5 and rows[1]["steps"] == "7"
    assert [r["lr"] for r in rows] == ["100.0", "0.5"]  # optim.lr varies: a column, the default where unset


def test_only_trains_the_named_runs(tmp_path, monkeypatch):
    import siamgrad.train.loop as train_mod

    calls = []

    def fake_train(cfg, log=True):
        calls.append(cfg.run_name)
        return train_mod.TrainResult(Path(cfg.out_dir) / cfg.run_name, 7, 41.5, 20.0, 30.0, 42.0)

    monkeypatch.setattr(train_mod, "train", fake_train)
    exp = grids.Experiment("toy", sizes={"cpu": TINY},
                               runs=[("a", ["method=simclr"]), ("b", ["method=byol"]), ("c", ["method=moco"])])
    monkeypatch.setitem(grids.EXPERIMENTS, "toy3", exp)
    md = reproduce.run_experiment("toy3", ["only=c,a"], out_dir=str(tmp_path), log=False)
    assert calls == ["a", "c"]  # the grid's order, not the option's
    assert "siamgrad reproduce toy3 size=cpu only=c,a" in md.read_text()
    assert "In progress" not in md.read_text()  # both named runs done
    assert [r["run"] for r in csv.DictReader(open(md.parent / "results.csv"))] == ["a", "c"]
    with pytest.raises(ConfigError, match="only=x: no such run in 'toy3' size=cpu; its runs are: a, b, c"):
        reproduce.run_experiment("toy3", ["only=a,x"], out_dir=str(tmp_path), log=False)
    with pytest.raises(ConfigError, match="only= is empty"):
        reproduce.run_experiment("toy3", ["only="], out_dir=str(tmp_path), log=False)


def test_unknown_experiment_and_size():
    with pytest.raises(ConfigError, match="unknown experiment 'nope'"):
        reproduce.run_experiment("nope")
    with pytest.raises(ConfigError, match="size=huge is not valid"):
        reproduce.run_experiment("methods", ["size=huge"])


def test_every_registered_grid_builds_valid_configs():
    from siamgrad.methods.registry import resolve_options

    for name, exp in grids.EXPERIMENTS.items():
        for size, base in exp.sizes.items():
            runs = exp.runs_for(size)
            labels = [label for label, _ in runs]
            assert runs and len(set(labels)) == len(labels), (name, size)
            keys = reproduce.varied_columns(exp, size)
            shown = [reproduce.column_name(k, keys) for k in keys]
            assert exp.x is None or exp.x in shown, (name, exp.x)
            for label, settings in runs:
                cfg = build_config([*base, *settings])
                opts = {k: v for k, v in cfg.method.items() if k != "name"}
                resolve_options(cfg.method["name"], **opts)
                for k in keys:
                    reproduce.setting_value(cfg, k)


def test_columns_show_resolved_settings():
    """target=auto shows the branch the registry picks; options that do not act in a form are blank."""
    def value(settings, key):
        return reproduce.setting_value(build_config(settings), key)

    assert value(["method=byol"], "method.target") == "momentum"
    assert value(["method=simsiam", "method.form=gradient"], "method.target") == "stopgrad"
    assert value(["method=simclr"], "method.lam") is None  # only in the gradient form
    assert value(["method=simclr", "method.form=gradient", "method.lam=3"], "method.lam") == 3.0
    assert value(["method=byol", "method.pred_layers=1"], "method.pred_layers") == 1
    assert value(["method=byol"], "method.eps") is None  # BYOL's F estimate exists in the gradient form only
    assert value(["method=directpred", "method.eps=0.1"], "method.eps") == 0.1
    assert value(["method=vicreg"], "method.lambd") is None  # not a VICReg option
    assert value(["augment.n_views=4"], "augment.n_views") == 4
    assert value(["data.fraction=0.25"], "data.fraction") == 0.25
    assert reproduce.column_name("method.lam", ["method.lam", "optim.lr"]) == "lam"
    assert reproduce.column_name("optim.momentum", ["method.momentum", "optim.momentum"]) == "optim.momentum"


def test_paper_grids_vary_what_the_papers_vary():
    """The grids hold the settings of the issue: forms, targets, predictors, widths, views/fractions."""
    def configs(name, size):
        exp = grids.EXPERIMENTS[name]
        return [(label, build_config([*exp.sizes[size], *s])) for label, s in exp.runs_for(size)]

    t1 = configs("unigrad_table1", "cpu")
    pairs = {(c.method["name"], c.method["form"]) for _, c in t1}
    for m in ("simclr", "moco", "byol", "simsiam", "barlow_twins", "vicreg"):
        assert {(m, "original"), (m, "gradient")} <= pairs
    assert all(c.method.get("target") == "stopgrad" for _, c in t1 if c.method["form"] == "gradient")
    t2 = configs("unigrad_table2", "paper")
    for m in ("simclr", "byol", "barlow_twins", "unigrad"):
        assert {c.method["target"] for _, c in t2 if c.method["name"] == m} == {"stopgrad", "momentum", "momentum_positive"}
    dp = configs("directpred", "cpu")
    assert {c.method.get("pred_layers") for _, c in dp if c.method["name"] == "byol"} == {1, 2}
    assert {c.method.get("eps", 0.01) for _, c in dp if c.method["name"] == "directpred"} >= {0.0, 0.01, 0.1}
    assert {c.method.get("rho", 0.3) for _, c in dp if c.method["name"] == "directpred"} >= {0.0, 0.3, 0.99}
    sp = configs("small_projectors", "paper")
    widths = {c.method["proj_output_dim"] for _, c in sp}
    assert widths == {128, 256, 512, 1024, 2048, 8192}
    assert all(c.backbone == "resnet50" and c.optim.name == "adamw" for _, c in sp)
    mv = configs("many_views", "paper")
    pts = {(c.method["name"], c.augment.n_views, c.data.fraction) for _, c in mv}
    for m in ("barlow_twins", "vicreg"):
        assert {(m, 2, 1.0), (m, 4, 0.5), (m, 8, 0.25), (m, 2, 0.25), (m, 8, 1.0)} <= pts
    assert build_config(["preset=stl10_resnet50_small_proj"]).data.name == "stl10"


def test_cpu_grids_fit_the_cpu_budget():
    """CPU sizes stay under 1,200 step-equivalents (batch 256, two 32-px views through the small
    backbone in bf16, about 1.4 s each on 2 cores; a momentum encoder's extra forward counts 1/3, a
    local crop its share of a global crop's pixels, a mixed copy a global crop): under 30 minutes with
    evaluation."""
    from siamgrad.data.datasets import load_dataset

    if not Path(grids.SUBSET).is_dir():
        pytest.skip("the shared CIFAR-10 subset is not here")
    n = len(load_dataset("cifar10", grids.SUBSET, "train"))
    for name in ("unigrad_table1", "unigrad_table2", "unigrad_table3", "directpred", "small_projectors",
                 "many_views"):
        exp = grids.EXPERIMENTS[name]
        total = 0.0
        for _, s in exp.runs_for("cpu"):
            cfg = build_config([*exp.sizes["cpu"], *s])
            steps = cfg.epochs * (int(n * cfg.data.fraction) // cfg.batch_size)
            a = cfg.augment
            local = a.local_crops * (a.local_size or 0) ** 2 / 32**2
            views = (a.n_views + local + (a.n_views if a.mix != "none" else 0)) / 2
            momentum = 4 / 3 if reproduce.setting_value(cfg, "method.target") in ("momentum", "momentum_positive") else 1
            total += steps * views * momentum * cfg.batch_size / 256
        assert total < 1200, (name, total)


def test_results_table_formats_small_and_missing_values():
    assert reproduce._fmt(0.0051) == "0.0051" and reproduce._fmt(41.234) == "41.23"
    assert reproduce._fmt(None) == "" and reproduce._fmt(True) == "true" and reproduce._fmt(0.0) == "0.00"


def _bench(name):
    import importlib.util
    import sys

    here = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(here))
    try:
        spec = importlib.util.spec_from_file_location(name, here / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(here))


def test_benchmark_peer_pipeline_applies_the_recipe():
    """The throughput benchmark's peer side (torchvision on PIL images) applies siamgrad's recipe:
    with the crop fixed to the whole image and the flip certain, a view is the mirrored image,
    normalized -- re-derived in numpy."""
    import dataclasses

    from siamgrad.augment.recipes import PRESETS
    from siamgrad.data.in_memory import ImageDataset

    bench = _bench("bench_throughput")
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)
    ds = ImageDataset(torch.from_numpy(imgs), torch.from_numpy(np.arange(6) % 3), ["a", "b", "c"], "cifar10")
    recipe = dataclasses.replace(PRESETS["none"][0], size=8, flip_p=1.0)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    peer = bench.PeerDataset(ds, [bench.peer_transform(recipe, mean, std)] * 3)
    views, label = peer[4]
    assert len(views) == 3 and label == 4 % 3
    expected = (imgs[4][:, :, ::-1] / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(views[0].numpy(), expected, atol=1e-5)
    # the full CIFAR recipe: M views of the right shape from both pipelines, different per view
    full = bench.peer_dataset(ds, 2)
    v, _ = full[0]
    assert [tuple(t.shape) for t in v] == [(3, 8, 8)] * 2 and not np.allclose(v[0].numpy(), v[1].numpy())
    ours, _ = next(iter(bench.BatchedViews(ds, 2, 4)))
    assert [tuple(t.shape) for t in ours] == [(4, 3, 8, 8)] * 2


def test_the_gpu_size_trains_full_cifar10_with_resnet18_at_each_methods_cifar_recipe():
    from siamgrad.config import uses_cifar_stem
    from siamgrad.experiments import claims

    every = {**grids.EXPERIMENTS, **grids.CLAIM_GRIDS}
    with_gpu = [n for n, e in every.items() if "gpu" in e.sizes]
    assert set(claims.claim_runs([cl.at("gpu") for cl in claims.CLAIMS])) <= set(with_gpu)
    lr = {"simclr": 0.4, "moco": 0.3, "byol": 1.0, "simsiam": 0.5, "barlow_twins": 0.3, "vicreg": 0.3}
    for name in with_gpu:
        exp = every[name]
        for label, s in exp.runs_for("gpu"):
            cfg = build_config([*exp.sizes["gpu"], *s])
            assert (cfg.backbone, uses_cifar_stem(cfg), cfg.data.name, cfg.data.root) == \
                ("resnet18", True, "cifar10", None), (name, label)
            assert (cfg.epochs, cfg.batch_size) == (grids.GPU_EPOCHS, 256), (name, label)
            m = cfg.method["name"]
            if cfg.method.get("form", "original") == "original" and m in lr and name != "unigrad_lambda":
                # solo-learn's CIFAR recipe (scripts/pretrain/cifar/METHOD.yaml)
                assert cfg.optim.lr == lr[m], (name, label)
                assert cfg.optim.name == ("sgd" if m in ("moco", "simsiam") else "lars"), (name, label)
                assert cfg.optim.name == "sgd" or cfg.optim.lars_eta == 0.02, (name, label)


def test_only_adds_to_the_table_an_earlier_only_wrote(tmp_path, monkeypatch):
    import siamgrad.train.loop as train_mod

    calls = []

    def fake_train(cfg, log=True):
        calls.append(cfg.run_name)
        return train_mod.TrainResult(Path(cfg.out_dir) / cfg.run_name, 7, 40.0 + cfg.seed, 20.0, 30.0, 42.0)

    monkeypatch.setattr(train_mod, "train", fake_train)
    exp = grids.Experiment("toy", sizes={"cpu": TINY},
                           runs=[("a", ["method=simclr"]), ("b", ["method=byol"]), ("c", ["method=moco"])])
    monkeypatch.setitem(grids.EXPERIMENTS, "toy_add", exp)
    reproduce.run_experiment("toy_add", ["only=c", "seeds=2"], out_dir=str(tmp_path), log=False)
    md = reproduce.run_experiment("toy_add", ["only=a", "seeds=2"], out_dir=str(tmp_path), log=False)
    assert calls == ["c-s0", "c-s1", "a-s0", "a-s1"]
    rows = list(csv.DictReader(open(md.parent / "results.csv")))
    assert [(r["run"], r["seed"], r["knn_top1"]) for r in rows] == [
        ("a", "0", "40.0"), ("c", "0", "40.0"), ("a", "1", "41.0"), ("c", "1", "41.0")]
    seeds = list(csv.DictReader(open(md.parent / "results_seeds.csv")))
    assert [(r["run"], r["seeds"], r["knn_top1"]) for r in seeds] == [("a", "2", "40.5"), ("c", "2", "40.5")]
    assert "In progress" not in md.read_text()
    # training a kept run again replaces its row instead of adding a second one
    reproduce.run_experiment("toy_add", ["only=c", "seeds=2"], out_dir=str(tmp_path), log=False)
    rows = list(csv.DictReader(open(md.parent / "results.csv")))
    assert sorted((r["run"], r["seed"]) for r in rows) == [("a", "0"), ("a", "1"), ("c", "0"), ("c", "1")]


def test_cpu_grids_keep_the_shape_docs_claims_csv_was_measured_at():
    """The CPU grids pin batch 256 and 32 px views: docs/claims.csv's seeds were trained so, and a
    new seed must pair with them, whatever the cifar10_cpu preset's own recipe."""
    assert build_config(["preset=cifar10_cpu"]).augment.size != 32  # the pin is what keeps 32 here
    for name, exp in {**grids.EXPERIMENTS, **grids.CLAIM_GRIDS}.items():
        if "preset=cifar10_cpu" not in exp.sizes["cpu"]:
            continue
        for label, s in exp.runs_for("cpu"):
            cfg = build_config([*exp.sizes["cpu"], *s])
            assert (cfg.batch_size, cfg.augment.size) == (256, 32), (name, label)
