"""The experiment runner: a grid of ordinary runs, results collected, finished runs not repeated."""

import csv

import pytest

from siamgrad import reproduce
from siamgrad.errors import ConfigError

TINY = ["backbone=tiny", "batch_size=128", "epochs=1", "method.proj_hidden_dim=32", "method.proj_output_dim=16",
        "eval.knn_k=20", "diag.enabled=false", "threads=2"]


def test_grid_runs_collects_and_resumes(tmp_path, monkeypatch):
    exp = reproduce.Experiment("toy grid", sizes={"cpu": TINY},
                               runs=[("a", ["method=simclr"]), ("b", ["method=unigrad", "method.lam=2"])])
    monkeypatch.setitem(reproduce.EXPERIMENTS, "toy", exp)
    md = reproduce.run_experiment("toy", [], out_dir=str(tmp_path), log=False)
    text = md.read_text()
    assert "| a | simclr |" in text and "| b | unigrad |" in text and "siamgrad reproduce toy size=cpu" in text
    rows = list(csv.DictReader(open(md.parent / "results.csv")))
    assert [r["run"] for r in rows] == ["a", "b"]
    assert all(0 <= float(r["knn_top1"]) <= 100 for r in rows)
    assert (md.parent / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # re-running does not retrain: the checkpoints stay as they were
    stamp = (md.parent / "a" / "latest.pt").stat().st_mtime_ns
    reproduce.run_experiment("toy", [], out_dir=str(tmp_path), log=False)
    assert (md.parent / "a" / "latest.pt").stat().st_mtime_ns == stamp


def test_unknown_experiment_and_size():
    with pytest.raises(ConfigError, match="unknown experiment 'nope'"):
        reproduce.run_experiment("nope")
    with pytest.raises(ConfigError, match="size=huge is not valid"):
        reproduce.run_experiment("methods", ["size=huge"])


def test_every_registered_grid_builds_valid_configs():
    from siamgrad.config import build_config
    from siamgrad.methods import resolve_options

    for name, exp in reproduce.EXPERIMENTS.items():
        for size, base in exp.sizes.items():
            for label, settings in exp.runs:
                cfg = build_config([*base, *settings])
                opts = {k: v for k, v in cfg.method.items() if k != "name"}
                resolve_options(cfg.method["name"], **opts)
