"""Equal tuning: the coordinate search over each method's space, chosen on the validation split alone."""

from pathlib import Path

import pytest

from siamgrad.errors import ConfigError
from siamgrad.experiments import grids
from siamgrad.experiments import tuning as T

ROOT = Path(__file__).resolve().parents[1]


def _fake(calls, val, test=lambda s: 0.0):
    def train(space, cand, size_settings, out_dir, extra, log):
        settings = " ".join(T._settings(space, cand))
        calls.append(settings)
        return {"method": space.method, "settings": settings, "val_knn": str(val(cand)), "knn_top1": str(test(cand)),
                "linear_top1": "", "minutes": "1.0"}
    return train


def test_the_search_keeps_the_best_validation_value_of_each_axis_in_turn(tmp_path, monkeypatch):
    calls = []
    # val kNN peaks at temperature 0.5 and lr 0.15; the test split would pick the opposite corner
    val = lambda c: 40 + 10 * c["method.temperature"] - 5 * c["optim.lr"]  # noqa: E731
    test = lambda c: 60 - val(c)  # noqa: E731
    monkeypatch.setattr(T, "_train", _fake(calls, val, test))
    doc = tmp_path / "tuning.md"
    T.run_tuning(["only=simclr", f"doc={doc}"], out_dir=str(tmp_path / "runs"), log=False)
    space = T.SPACES["simclr"]
    assert len(calls) == 1 + sum(len(a.values) - 1 for a in space.axes) == 5  # the start is shared by both axes
    # first axis with lr at its start (0.3), then lr with the chosen temperature
    assert calls[:3] == [" ".join([*space.base, f"method.temperature={t:g}", "optim.lr=0.3"]) for t in (0.1, 0.2, 0.5)]
    assert T.chosen(T.read_trials(tmp_path / "tuning.csv")) == {"simclr": {"method.temperature": 0.5, "optim.lr": 0.15}}
    text = doc.read_text()
    assert "| simclr | method.temperature=0.5, optim.lr=0.15 | 5 of 5 (2 axes) |" in text
    assert "| moco | not searched yet | 0 of 7 |" in text
    # again: every trial is in the trials file, nothing trains
    T.run_tuning(["only=simclr", f"doc={doc}"], out_dir=str(tmp_path / "runs"), log=False)
    assert len(calls) == 5
    # a diverged trial is never chosen; a tie keeps the starting value
    calls.clear()
    nan_at = lambda c: float("nan") if c["method.temperature"] == 0.5 else 40.0  # noqa: E731
    monkeypatch.setattr(T, "_train", _fake(calls, nan_at))
    T.run_tuning(["only=simclr", f"doc={tmp_path / 'other.md'}"], out_dir=str(tmp_path / "runs2"), log=False)
    assert T.chosen(T.read_trials(tmp_path / "other.csv"))["simclr"] == {"method.temperature": 0.2, "optim.lr": 0.3}


def test_every_method_is_searched_over_the_same_kinds_of_axes():
    for name, space in T.SPACES.items():
        keys = [a.key for a in space.axes]
        assert keys[-1] == "optim.lr", name  # every method: its learning rate, last
        assert all(len(a.values) == 3 and a.values == tuple(sorted(a.values)) for a in space.axes), name
        assert ("method.momentum" in keys) == (name in ("moco", "byol", "directpred", "unigrad")), name
    assert {a.values for s in T.SPACES.values() for a in s.axes if a.key == "optim.lr"} == {T._LR.values}


def test_bad_settings_are_one_line_errors(tmp_path):
    for bad, match in ((["only=nope"], "tune knows"), (["size=paper"], "does not apply"), (["train=maybe"], "train=")):
        with pytest.raises(ConfigError, match=match):
            T.run_tuning([*bad, f"doc={tmp_path / 't.md'}"], out_dir=str(tmp_path), log=False)


def test_a_real_trial_scores_the_validation_split(tmp_path, monkeypatch):
    """One tiny real run per candidate through the runner: val kNN comes from the split carved from the
    training images, beside the test kNN and the linear probe."""
    tiny = ["backbone=tiny", "method.proj_hidden_dim=32", "method.proj_output_dim=16", "eval.knn_k=20",
            "epochs=1", "batch_size=128", "diag.enabled=false", "diag.report=false", "threads=1", "eval.every=0",
            "eval.linear_epochs=5"]
    monkeypatch.setattr(T, "CPU24", tiny)
    monkeypatch.setitem(T.SPACES, "simclr", T.Space("simclr", ("method=simclr",),
                                                    (T.Axis("optim.lr", (0.1, 0.3)),)))
    doc = tmp_path / "tuning.md"
    T.run_tuning(["only=simclr", f"doc={doc}"], out_dir=str(tmp_path / "runs"), log=False)
    trials = T.read_trials(tmp_path / "tuning.csv")
    assert len(trials) == 2 and all(float(r["val_knn"]) > 20 for r in trials)
    assert all(r["knn_top1"] and r["linear_top1"] and r["torch"] and r["cpu"] for r in trials)
    assert (tmp_path / "runs" / "tune_simclr-tune" / "lr0.3" / "scores.json").is_file()


def test_the_grids_tuned_values_are_what_the_committed_search_chose():
    trials = T.read_trials(ROOT / "docs" / "tuning.csv")
    picks = T.chosen(trials)
    for name, pick in picks.items():
        space = T.SPACES[name]
        complete = {r["settings"] for r in trials if r["method"] == name}
        # a search that has tried every axis in full is what the grids must use
        if len(complete) >= 1 + sum(len(a.values) - 1 for a in space.axes):
            assert grids.TUNED.get(name) == [f"{k}={v:g}" for k, v in pick.items()], name
    assert set(grids.TUNED) <= set(picks)


def test_the_claims_cpu_size_adds_each_methods_tuned_values_where_a_grid_does_not_set_them(monkeypatch):
    from siamgrad.config import build_config

    monkeypatch.setitem(grids.TUNED, "vicreg", ["method.cov_weight=4", "optim.lr=0.15"])
    monkeypatch.setitem(grids.TUNED, "barlow_twins", ["method.lambd=0.16", "optim.lr=0.6"])
    monkeypatch.setitem(grids.TUNED, "simclr-gradient", ["method.lam=2", "optim.lr=0.15"])
    # the small_projectors grid sets cov_weight itself: only the learning rate is added
    assert grids.tuned(["method=vicreg", "method.cov_weight=50"]) == ["method=vicreg", "method.cov_weight=50",
                                                                      "optim.lr=0.15"]
    # a tuned lambd replaces width_scaled's formula, keeping its l2-normalization
    cfg = build_config(grids.tuned(["method=barlow_twins", "method.width_scaled=true"]))
    assert cfg.method["lambd"] == 0.16 and cfg.method["l2"] is True and not cfg.method.get("width_scaled")
    assert grids.tuned(["method=simclr", "method.form=gradient"])[-2:] == ["method.lam=2", "optim.lr=0.15"]
    monkeypatch.setitem(grids.TUNED, "simclr", ["method.temperature=0.1"])
    assert grids.tuned(["method=simclr"]) == ["method=simclr", "method.temperature=0.1"]  # not the gradient form's
    # every claims grid on the subset has the size, on the CPU24 schedule
    for name in ("unigrad_table1", "unigrad_table2", "directpred", "claims_collapse", "many_views", "claims_speed"):
        exp = grids.find(name)
        assert exp.sizes["cpu24"][: len(grids.CPU24)] == grids.CPU24 and exp.runs_for("cpu24")
        base = exp.sizes["cpu24"]
        for _, s in exp.runs_for("cpu24"):
            c = build_config([*base, *s])
            assert (c.epochs, c.batch_size, c.augment.size) == (grids.CPU24_EPOCHS, 128, 24)


def test_a_tuned_value_replaces_the_cpu_default_it_was_searched_from(monkeypatch):
    from siamgrad.config import build_config

    monkeypatch.setitem(grids.TUNED, "simclr", ["method.temperature=0.1", "optim.lr=0.6"])
    monkeypatch.setitem(grids.TUNED, "barlow_twins-gradient", ["method.lam=6", "optim.lr=0.15"])
    cfg = build_config(grids.tuned([*grids._CPU_OPTS["simclr"], "method.form=original"]))
    assert (cfg.method["temperature"], cfg.optim.lr) == (0.1, 0.6)
    grad = build_config(grids.tuned([*grids._CPU_OPTS["barlow_twins"], "method.form=gradient", "method.lam=3"]))
    assert (grad.method["lam"], grad.optim.lr) == (6.0, 0.15)
