"""Seeds, intervals and the claims registry: the t-interval and paired-difference arithmetic against
SciPy (or a hand-worked example), verdicts from their numbers, resumable grids with seeds."""

import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest

from siamgrad.errors import ConfigError
from siamgrad.experiments import grids
from siamgrad.experiments import runner as reproduce
from siamgrad.experiments import stats

TINY = ["backbone=tiny", "batch_size=128", "epochs=1", "method.proj_hidden_dim=32", "method.proj_output_dim=16",
        "eval.knn_k=20", "diag.enabled=false", "diag.report=false", "threads=2"]


# ------------------------------------------------------------------ intervals


def test_t_interval_by_hand():
    """Values 1, 2, 3, 4, 5: mean 3, sd sqrt(2.5), t_{4, 0.975} = 2.776445 (printed tables),
    half-width 2.776445 * sqrt(2.5) / sqrt(5) = 1.963243."""
    iv = stats.mean_interval([1, 2, 3, 4, 5])
    assert iv.mean == 3 and iv.n == 5 and iv.sd == pytest.approx(math.sqrt(2.5))
    assert iv.half_width == pytest.approx(2.776445 * math.sqrt(0.5), abs=1e-5)
    assert (iv.low, iv.high) == pytest.approx((3 - 1.963243, 3 + 1.963243), abs=1e-5)
    # t tables: df 1 12.706, 2 4.303, 9 2.262, 30 2.042; the 90% quantile at df 2 is 2.920
    for df, q in ((1, 12.706), (2, 4.303), (9, 2.262), (30, 2.042)):
        assert stats.t_quantile(0.95, df) == pytest.approx(q, abs=1e-3)
    assert stats.t_quantile(0.90, 2) == pytest.approx(2.920, abs=1e-3)
    one = stats.mean_interval([41.0])
    assert one.mean == 41 and one.low == -math.inf and one.high == math.inf


def test_t_interval_and_paired_difference_match_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    import numpy as np

    rng = np.random.default_rng(3)
    for n in (2, 3, 4, 7, 12, 40):
        for level in (0.9, 0.95, 0.99):
            a = rng.normal(38, 1.5, n)
            b = a - 0.7 + rng.normal(0, 0.4, n)  # shares a's seed-to-seed variation
            iv = stats.mean_interval(a, level)
            lo, hi = scipy_stats.t.interval(level, n - 1, loc=a.mean(), scale=scipy_stats.sem(a))
            assert (iv.low, iv.high) == pytest.approx((lo, hi), rel=1e-9)
            d = stats.paired_difference(a, b, level)
            d_lo, d_hi = scipy_stats.t.interval(level, n - 1, loc=(a - b).mean(), scale=scipy_stats.sem(a - b))
            assert d.mean == pytest.approx((a - b).mean()) and (d.low, d.high) == pytest.approx((d_lo, d_hi), rel=1e-9)
            # the paired test's p-value: 0 lies outside the interval exactly when p < 1 - level
            p = scipy_stats.ttest_rel(a, b).pvalue
            assert (d.low > 0 or d.high < 0) == (p < 1 - level)
    for df in (1, 2, 3, 5, 8, 31):
        for t in (0.1, 1.0, 2.5, 9.0):
            assert stats.t_two_sided_prob(t, df) == pytest.approx(2 * scipy_stats.t.cdf(t, df) - 1, abs=1e-12)


def test_per_image_split_by_hand():
    """3 seeds x 4 images. Seed accuracies 50, 75, 25: sd 25. Images 0 and 3 never flip; images 1
    and 2 are right in 2 of 3 seeds (variance 1/3 each, unbiased), so the per-image variance is
    (100 / 4)^2 * 2/3 = 416.67 of the 625 total; the shared part is sqrt(208.33)."""
    correct = [[1, 1, 0, 0],
               [1, 1, 1, 0],
               [1, 0, 0, 0]]
    split = stats.per_image_split(correct)
    assert (split.seeds, split.images) == (3, 4)
    assert split.sd == pytest.approx(25.0)
    assert split.sd_per_image == pytest.approx(math.sqrt(625 * 2 / 3))
    assert split.sd_shared == pytest.approx(math.sqrt(625 / 3))
    # 0.5 points needs the per-image variance 416.67 * 4 / N below 0.25 - 208.33: impossible
    assert split.images_for(0.5) is None
    assert split.images_for(20.0) == 9  # 1666.67 / (400 - 208.33) = 8.7 images
    with pytest.raises(ConfigError, match="at least 2 seeds"):
        stats.per_image_split([[1, 0]])
    with pytest.raises(ConfigError, match="same"):
        stats.per_image_split([[1, 0], [1]])


def test_per_image_split_matches_numpy_and_a_simulation():
    import numpy as np

    rng = np.random.default_rng(0)
    # the identity: total variance = the diagonal of the per-image covariance + its off-diagonal sum
    c = rng.random((5, 300)) < rng.random(300)
    split = stats.per_image_split(c.tolist())
    cov = np.cov(c.astype(float), rowvar=False, ddof=1) * (100 / 300) ** 2
    assert split.sd ** 2 == pytest.approx(np.var(100 * c.mean(1), ddof=1))
    assert split.sd ** 2 == pytest.approx(cov.sum())
    assert split.sd_per_image ** 2 == pytest.approx(np.trace(cov))
    # images flipping independently: the per-image part is the whole spread, and it is
    # sqrt(sum q(1-q)) / n; a shift shared by all images of a seed shows up as the shared part
    q = rng.uniform(0.1, 0.9, 1000)
    independent = rng.random((400, 1000)) < q
    s = stats.per_image_split(independent.tolist())
    expected = 100 * math.sqrt((q * (1 - q)).sum()) / 1000
    assert s.sd_per_image == pytest.approx(expected, rel=0.05)
    assert s.sd == pytest.approx(expected, rel=0.1) and s.sd_shared < 0.4 * expected
    shift = rng.normal(0, 0.05, (400, 1))
    shared = rng.random((400, 1000)) < np.clip(q + shift, 0, 1)
    s2 = stats.per_image_split(shared.tolist())
    assert s2.sd_shared == pytest.approx(5.0, rel=0.2)  # 100 * the shift's sd
    assert s2.sd_per_image == pytest.approx(expected, rel=0.05)


def test_paired_difference_is_narrower_than_the_unpaired_intervals_suggest():
    """Seeds move both runs alike: the difference is constant, its interval a point."""
    a, b = [36.0, 38.0, 40.0], [35.0, 37.0, 39.0]
    d = stats.paired_difference(a, b)
    assert d.mean == pytest.approx(1.0) and d.half_width == pytest.approx(0.0, abs=1e-12)
    assert stats.mean_interval(a).half_width > 4
    with pytest.raises(ConfigError, match="same seeds"):
        stats.paired_difference([1, 2], [1, 2, 3])
    with pytest.raises(ConfigError, match="no values"):
        stats.mean_interval([])


# ------------------------------------------------------------------ grids with seeds


def _fake_train(store, trained, knn):
    """Stands in for train with its resume contract: a run folder that finished with the same
    config returns its result without training; anything else trains (recorded) and finishes."""
    import siamgrad.train.loop as train_mod
    from siamgrad.config import dump_yaml, to_dict

    def fake(cfg, log=True):
        folder = Path(cfg.out_dir) / cfg.run_name
        conf = to_dict(cfg)
        done = folder / "results.json"
        if done.is_file():
            saved = json.loads(done.read_text())
            assert saved["config"] == conf, f"{cfg.run_name}: resumed with another config"
        else:
            trained.append(cfg.run_name)
            folder.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps({"config": conf}))
            (folder / "config.yaml").write_text(dump_yaml(cfg))
        store[cfg.run_name] = cfg.seed
        return train_mod.TrainResult(folder, 7, knn(cfg.run_name, cfg.seed), 20.0, 30.0, 42.0)

    return fake


def test_seeds_repeat_every_run_and_resume_without_retraining(tmp_path, monkeypatch):
    import siamgrad.train.loop as train_mod

    seeds_seen, trained = {}, []
    knn = lambda name, seed: 40.0 + seed ** 2 + (3.0 if name.startswith("b") else 0.0)  # noqa: E731
    monkeypatch.setattr(train_mod, "train", _fake_train(seeds_seen, trained, knn))
    exp = grids.Experiment("toy", sizes={"cpu": TINY}, runs=[("a", ["method=simclr"]), ("b", ["method=byol"])],
                               hue=["method"])
    monkeypatch.setitem(grids.EXPERIMENTS, "toy_seeds", exp)
    md = reproduce.run_experiment("toy_seeds", ["seeds=2"], out_dir=str(tmp_path), log=False)
    assert trained == ["a-s0", "b-s0", "a-s1", "b-s1"]  # every run of seed 0 first
    assert seeds_seen == {"a-s0": 0, "b-s0": 0, "a-s1": 1, "b-s1": 1}
    # one more seed: only the new runs train, the finished ones are reused with the same config
    md = reproduce.run_experiment("toy_seeds", ["seeds=3"], out_dir=str(tmp_path), log=False)
    assert trained == ["a-s0", "b-s0", "a-s1", "b-s1", "a-s2", "b-s2"]
    rows = list(csv.DictReader(open(md.parent / "results.csv")))
    assert [(r["run"], r["seed"]) for r in rows] == [(x, str(k)) for k in range(3) for x in ("a", "b")]
    summary = {r["run"]: r for r in csv.DictReader(open(md.parent / "results_seeds.csv"))}
    for name in ("a", "b"):
        iv = stats.mean_interval([knn(name, k) for k in range(3)])
        s = summary[name]
        assert s["seeds"] == "3" and float(s["knn_top1"]) == pytest.approx(iv.mean)
        assert (float(s["knn_top1_low"]), float(s["knn_top1_high"])) == pytest.approx((iv.low, iv.high))
    text = md.read_text()
    assert "siamgrad reproduce toy_seeds size=cpu seeds=3" in text and "Over seeds" in text
    iv = stats.mean_interval([knn("a", k) for k in range(3)])
    assert f"| a | simclr | 3 | {iv.mean:.2f} ± {iv.half_width:.2f} [{iv.low:.2f}, {iv.high:.2f}] |" in text
    assert (md.parent / "results.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="seed= and seeds= together"):
        reproduce.run_experiment("toy_seeds", ["seeds=2", "seed=4"], out_dir=str(tmp_path), log=False)
    for bad in ("0", "3-2", "two", "-2", "1-"):
        with pytest.raises(ConfigError, match=f"seeds={bad} is neither a count nor a range"):
            reproduce.run_experiment("toy_seeds", [f"seeds={bad}"], out_dir=str(tmp_path), log=False)
    # a range adds seeds 3 and 4 beside the three above, training only those
    trained.clear()
    md = reproduce.run_experiment("toy_seeds", ["seeds=3-4", "only=a"], out_dir=str(tmp_path), log=False)
    assert trained == ["a-s3", "a-s4"]
    rows = list(csv.DictReader(open(md.parent / "results.csv")))
    assert sorted((r["run"], int(r["seed"])) for r in rows) == sorted(
        [(x, k) for k in range(3) for x in ("a", "b")] + [("a", 3), ("a", 4)])
    summary = {r["run"]: r for r in csv.DictReader(open(md.parent / "results_seeds.csv"))}
    assert summary["a"]["seeds"] == "5" and summary["b"]["seeds"] == "3"
    assert float(summary["a"]["knn_top1"]) == pytest.approx(stats.mean_interval([knn("a", k) for k in range(5)]).mean)


def test_seeds_reuse_a_run_trained_before_as_seed_0(tmp_path, monkeypatch):
    """A grid first run without seeds=: seeds=2 trains only seed 1, seed 0 is the existing run."""
    import siamgrad.train.loop as train_mod

    seen, trained = {}, []
    monkeypatch.setattr(train_mod, "train", _fake_train(seen, trained, lambda name, seed: 40.0 + seed))
    exp = grids.Experiment("toy", sizes={"cpu": TINY}, runs=[("a", ["method=simclr"]), ("b", ["method=byol"])])
    monkeypatch.setitem(grids.EXPERIMENTS, "toy_legacy", exp)
    reproduce.run_experiment("toy_legacy", [], out_dir=str(tmp_path), log=False)
    md = reproduce.run_experiment("toy_legacy", ["seeds=2"], out_dir=str(tmp_path), log=False)
    assert trained == ["a", "b", "a-s1", "b-s1"]
    rows = list(csv.DictReader(open(md.parent / "results.csv")))
    assert [(r["run"], r["seed"], r["knn_top1"]) for r in rows] == [
        ("a", "0", "40.0"), ("b", "0", "40.0"), ("a", "1", "41.0"), ("b", "1", "41.0")]
    # a run trained before with another seed is not seed 0: seed 0 gets its own folder
    reproduce.run_experiment("toy_legacy", ["only=a", "seed=5"], out_dir=str(tmp_path / "other"), log=False)
    reproduce.run_experiment("toy_legacy", ["only=a", "seeds=1"], out_dir=str(tmp_path / "other"), log=False)
    assert trained[-2:] == ["a", "a-s0"]


def test_seeds_with_real_training_reuse_finished_runs(tmp_path, monkeypatch):
    """Two seeds of one tiny run on the digits: different draws, and a rerun leaves both as they were."""
    exp = grids.Experiment("toy", sizes={"cpu": [*TINY, "data.fraction=0.5"]}, runs=[("a", ["method=simclr"])])
    monkeypatch.setitem(grids.EXPERIMENTS, "toy_real", exp)
    md = reproduce.run_experiment("toy_real", ["seeds=2"], out_dir=str(tmp_path), log=False)
    import torch

    w = [torch.load(md.parent / f"a-s{k}" / "latest.pt", weights_only=True) for k in (0, 1)]
    assert w[0]["config"]["seed"] == 0 and w[1]["config"]["seed"] == 1
    stamps = [(md.parent / f"a-s{k}" / "latest.pt").stat().st_mtime_ns for k in (0, 1)]
    reproduce.run_experiment("toy_real", ["seeds=2"], out_dir=str(tmp_path), log=False)
    assert [(md.parent / f"a-s{k}" / "latest.pt").stat().st_mtime_ns for k in (0, 1)] == stamps


# ------------------------------------------------------------------ claims and verdicts

from siamgrad.experiments import claims as C  # noqa: E402


def _iv(lo, hi):
    return stats.Interval((lo + hi) / 2, lo, hi, 3, 1.0)


def test_verdict_follows_from_the_interval_and_the_tolerance():
    v = C.verdict
    assert v("alike", _iv(-0.4, 0.8), 1.0) == C.HOLDS  # inside [-1, 1]
    assert v("alike", _iv(1.2, 3.0), 1.0) == C.FAILS  # wholly above 1
    assert v("alike", _iv(-3.0, -1.1), 1.0) == C.FAILS  # wholly below -1
    assert v("alike", _iv(0.5, 1.5), 1.0) == C.INCONCLUSIVE  # straddles 1
    assert v("greater", _iv(0.2, 2.0), 0.0) == C.HOLDS
    assert v("greater", _iv(-2.0, -0.1), 0.0) == C.FAILS
    assert v("greater", _iv(-0.5, 2.0), 0.0) == C.INCONCLUSIVE
    assert v("greater", _iv(-0.8, 0.5), -1.0) == C.HOLDS  # "at least as well, within 1 point"
    assert v("at_most", _iv(3.0, 9.0), 12.8) == C.HOLDS and v("at_most", _iv(14, 20), 12.8) == C.FAILS
    assert v("at_most", _iv(10, 15), 12.8) == C.INCONCLUSIVE
    assert v("at_least", _iv(0.9, 0.95), 0.9) == C.HOLDS and v("at_least", _iv(0.5, 0.8), 0.9) == C.FAILS
    assert C.combine([C.HOLDS, C.HOLDS]) == C.HOLDS
    assert C.combine([C.HOLDS, C.INCONCLUSIVE]) == C.INCONCLUSIVE
    assert C.combine([C.INCONCLUSIVE, C.FAILS, C.HOLDS]) == C.FAILS
    assert C.combine([C.HOLDS, C.NOT_MEASURED]) == C.NOT_MEASURED and C.combine([]) == C.NOT_MEASURED


def test_detectable_difference_by_hand_and_against_scipy():
    """(t_{0.975, n-1} + t_{0.8, n-1}) * sd / sqrt(n): n = 3, sd 1.17 (the 4-epoch size's median paired
    sd) by hand from the t table (4.303 and 1.061), and the quantiles against SciPy at other n."""
    assert stats.detectable_difference(1.17, 3) == pytest.approx((4.302653 + 1.060660) * 1.17 / math.sqrt(3), rel=1e-5)
    assert stats.detectable_difference(1.17, 3) == pytest.approx(3.6229, abs=1e-4)
    scipy_stats = pytest.importorskip("scipy.stats")
    for sd, n in ((1.0, 2), (0.5, 5), (2.4, 9), (1.0, 16)):
        t = scipy_stats.t.ppf(0.975, n - 1) + scipy_stats.t.ppf(0.8, n - 1)
        assert stats.detectable_difference(sd, n) == pytest.approx(t * sd / math.sqrt(n), rel=1e-9)
    # more seeds detect smaller differences; a smaller spread too
    assert stats.detectable_difference(1.0, 10) < stats.detectable_difference(1.0, 5) < stats.detectable_difference(1.0, 3)
    with pytest.raises(ConfigError, match="at least 2 seeds"):
        stats.detectable_difference(1.0, 1)
    # a contrast shows it from its paired sd; a ratio's on the log scale
    res = _results({"a": [0.4 + d for d in (-1.0, 0.0, 1.0)], "b": [0.0, 0.0, 0.0]})
    r = C.evaluate_contrast(C.Contrast("g", "a", "b", "alike", 1.0), res)
    assert r.verdict == C.INCONCLUSIVE and r.detectable == pytest.approx(stats.detectable_difference(1.0, 3))
    res = _results({"a": [2 * math.exp(d) for d in (-0.5, 0.0, 0.5)], "b": [1.0, 1.0, 1.0]})
    r = C.evaluate_contrast(C.Contrast("g", "a", "b", "greater", 1.0, ratio=True), res)
    assert r.detectable == pytest.approx(stats.detectable_difference(0.5, 3))
    assert "ratio beyond ×" in C._fmt_detectable(r)


def _floored(values, raw=35.0, rand=30.0):
    """As :func:`_results`, with the grid's first run carrying the baselines at every seed."""
    res = _results(values)
    first = next(iter(values))
    for row in res[("g", first)].values():
        row.update(raw_pixel_knn=raw, random_init_knn=rand)
    return res


def test_the_floor_guard_turns_a_contrast_of_unlearned_runs_into_below_floor():
    floor = C.Floor(margin=5.0)
    # both runs at least 5 points above the best baseline (raw pixels 35): the interval's verdict stands
    res = _floored({"a": [45.0, 46.0, 44.0], "b": [41.0, 41.5, 40.0]})
    r = C.evaluate_contrast(C.Contrast("g", "a", "b", "greater", 0.0), res, seeds=range(3), floor=floor)
    assert r.verdict == C.HOLDS and [f.clears(5.0) for f in r.floors] == [True, True]
    assert r.floors[1].value == pytest.approx((41.0 + 41.5 + 40.0) / 3) and r.floors[1].baseline == 35.0
    # b is only 4 points above raw pixels: below floor, whatever the interval says
    res = _floored({"a": [45.0, 46.0, 44.0], "b": [39.0, 39.5, 38.5]})
    r = C.evaluate_contrast(C.Contrast("g", "a", "b", "greater", 0.0), res, seeds=range(3), floor=floor)
    assert r.interval.low > 0 and r.verdict == C.BELOW_FLOOR
    assert "b 39.00 vs 40.00 (BELOW)" in C._fmt_floor(r)
    # the random-init encoder is the floor when it is the higher baseline
    res = _floored({"a": [45.0, 46.0, 44.0], "b": [41.0, 41.5, 40.0]}, raw=30.0, rand=37.0)
    r = C.evaluate_contrast(C.Contrast("g", "a", "b", "greater", 0.0), res, seeds=range(3), floor=floor)
    assert r.verdict == C.BELOW_FLOOR and r.floors[1].baseline == 37.0
    # no baseline recorded: no verdict
    r = C.evaluate_contrast(C.Contrast("g", "a", "b", "greater", 0.0),
                            _results({"a": [45.0, 46.0, 44.0], "b": [41.0, 41.5, 40.0]}), seeds=range(3), floor=floor)
    assert r.verdict == C.NOT_MEASURED and "floor not recorded" in C._fmt_floor(r)
    # a collapse contrast floors its control only: the collapsed run may sit at the random-init level
    res = _floored({"ctrl": [45.0, 46.0, 44.0], "dead": [31.0, 30.0, 30.5]})
    for row, rank in ((res[("g", "ctrl")], 40.0), (res[("g", "dead")], 6.0)):
        for seed in row:
            row[seed]["eff_rank"] = rank + seed
    c = C.Contrast("g", "dead", "ctrl", "less", 0.5, "eff_rank", ratio=True, floor=("b",))
    r = C.evaluate_contrast(c, res, seeds=range(3), floor=floor)
    assert [f.run for f in r.floors] == ["ctrl"] and r.verdict == C.HOLDS
    # combining: a failing contrast fails the claim; below floor beats holds; missing seeds beat below floor
    assert C.combine([C.HOLDS, C.BELOW_FLOOR]) == C.BELOW_FLOOR
    assert C.combine([C.FAILS, C.BELOW_FLOOR, C.NOT_MEASURED]) == C.FAILS
    assert C.combine([C.BELOW_FLOOR, C.NOT_MEASURED]) == C.NOT_MEASURED


def test_a_verdict_reads_exactly_the_registered_seeds_and_later_ones_confirm_apart():
    # seeds 0-2 say b is better; seeds 3-5, added later, say a is: the verdict stays with 0-2
    a = [40.0, 40.5, 39.5, 48.0, 47.0, 49.0]
    b = [42.0, 42.5, 41.0, 41.0, 40.0, 41.5]
    res = _floored({"base": [30.0] * 6, "a": a, "b": b}, raw=30.0, rand=20.0)
    claim = C.Claim("x", "P", "a beats b", (C.Contrast("g", "a", "b", "greater", 0.0),), "fig", "T", "n", seeds=3)
    (r,) = C.evaluate([claim], res, size="toy")
    assert r.registered == 3 and r.contrasts[0].seeds == [0, 1, 2]
    d = stats.paired_difference(a[:3], b[:3])
    assert r.contrasts[0].interval.mean == pytest.approx(d.mean) and r.verdict == C.FAILS
    assert r.confirmation[0].seeds == [3, 4, 5] and r.confirmation_verdict == C.HOLDS
    # fewer than the registered seeds: not measured, even with an interval clear of the tolerance
    claim5 = dataclasses.replace(claim, seeds=5)
    short = {k: {s: row for s, row in v.items() if s < 4} for k, v in res.items()}
    (r,) = C.evaluate([claim5], short, size="toy")
    assert r.contrasts[0].seeds == [0, 1, 2, 3] and r.verdict == C.NOT_MEASURED and r.confirmation == []
    # a size whose count was fixed for all claims by its first pass
    assert C.SIZE_SEEDS["cpu"] == 3 and claim5.registered("cpu") == 3 and claim5.registered("other") == 5


def _results(values):
    """(grid, run) -> {seed: row} from {run: [value per seed]} in grid 'g'."""
    return {("g", run): {k: {"knn_top1": str(x)} for k, x in enumerate(xs)} for run, xs in values.items()}


def test_contrast_numbers_and_verdicts_from_runs():
    a, b, c = [40.1, 38.0, 39.3], [39.9, 37.6, 39.4], [36.0, 35.1, 34.0]
    res = _results({"a": a, "b": b, "c": c})
    # a - b: paired differences 0.2, 0.4, -0.1 -> mean 0.1667; the interval is the paired one
    r = C.evaluate_contrast(C.Contrast("g", "a", "b", "alike", 1.0), res)
    d = stats.paired_difference(a, b)
    assert (r.interval.mean, r.interval.low, r.interval.high) == pytest.approx((d.mean, d.low, d.high))
    assert r.seeds == [0, 1, 2] and r.verdict == (C.HOLDS if -1 <= d.low and d.high <= 1 else C.INCONCLUSIVE)
    assert r.verdict == C.HOLDS  # differences 0.2, 0.4, -0.1: [-0.45, 0.79]
    assert C.evaluate_contrast(C.Contrast("g", "a", "c", "alike", 1.0), res).verdict == C.FAILS  # 4 points apart
    assert C.evaluate_contrast(C.Contrast("g", "a", "c", "greater", 0.0), res).verdict == C.HOLDS
    noisy = _results({"x": [40.0, 35.0, 41.0], "y": [38.0, 38.0, 38.0]})
    assert C.evaluate_contrast(C.Contrast("g", "x", "y", "greater", 0.0), noisy).verdict == C.INCONCLUSIVE
    # the paired seeds only: a seed one run lacks (or failed) is left out, below 3 -> not measured
    del res[("g", "b")][2]
    r = C.evaluate_contrast(C.Contrast("g", "a", "b", "alike", 1.0), res)
    assert r.seeds == [0, 1] and r.verdict == C.NOT_MEASURED and r.interval.n == 2
    assert C.evaluate_contrast(C.Contrast("g", "a", "nope", "alike", 1.0), res).verdict == C.NOT_MEASURED
    # a ratio: the geometric mean of a / b with the interval of the log ratios, back from logs
    r = C.evaluate_contrast(C.Contrast("g", "a", "c", "greater", 1.05, ratio=True), _results({"a": a, "c": c}))
    logs = stats.mean_interval([math.log(x / y) for x, y in zip(a, c)])
    assert (r.interval.mean, r.interval.low, r.interval.high) == pytest.approx(
        (math.exp(logs.mean), math.exp(logs.low), math.exp(logs.high)))
    with pytest.raises(ConfigError, match="kind 'bigger'"):
        C.Contrast("g", "a", "b", "bigger")
    with pytest.raises(ConfigError, match="compare two runs"):
        C.Contrast("g", "a", None, "alike")


def test_the_registry_names_runs_the_grids_have():
    from siamgrad.config import build_config

    assert [cl.key for cl in C.CLAIMS] == list("abcdefghijklmnop")
    for cl in C.CLAIMS:
        assert cl.statement and cl.paper_figure and cl.source and cl.paper and cl.note
        for c in cl.contrasts:
            for g, label in c.runs():
                exp = grids.find(g)
                runs = dict(exp.runs_for("cpu"))
                assert label in runs, (cl.key, g, label)
    for name, exp in grids.CLAIM_GRIDS.items():
        assert name not in grids.EXPERIMENTS
        for size, base in exp.sizes.items():
            for _, s in exp.runs_for(size):
                build_config([*base, *s])
    # the contrasts read the runs the statements speak of
    assert build_config([*grids.CLAIM_GRIDS["claims_collapse"].sizes["cpu"],
                         *dict(grids.CLAIM_GRIDS["claims_collapse"].runs_for("cpu"))["byol-no_predictor"]]).method["pred_layers"] == 0


def test_reproduce_claims_trains_what_they_need_and_writes_the_verdicts(tmp_path, monkeypatch):
    import siamgrad.train.loop as train_mod

    seen, trained = {}, []
    gain = {"good": 3.0, "same": 0.1, "base": 0.0, "spare": 9.0}
    knn = lambda name, seed: 40.0 + gain[name.rsplit("-s", 1)[0]] + 0.5 * seed  # noqa: E731
    monkeypatch.setattr(train_mod, "train", _fake_train(seen, trained, knn))
    exp = grids.Experiment("toy", sizes={"cpu": TINY},
                               runs=[("base", ["method=simclr"]), ("good", ["method=byol"]),
                                     ("same", ["method=moco"]), ("spare", ["method=vicreg"])])
    monkeypatch.setitem(grids.EXPERIMENTS, "toy_claims", exp)
    claims = [
        C.Claim("x", "P", "good beats base", (C.Contrast("toy_claims", "good", "base", "greater", 1.0),), "fig", "T1", "n"),
        C.Claim("y", "P", "same is like base", (C.Contrast("toy_claims", "same", "base", "alike", 1.0),), "fig", "T2", "n"),
        C.Claim("z", "P", "base beats good", (C.Contrast("toy_claims", "base", "good", "greater", 0.0),), "fig", "T3", "n"),
        C.Claim("w", "P", "no data yet", (), "fig", "T4", "n"),
    ]
    doc = tmp_path / "claims.md"
    out = str(tmp_path / "runs")
    path = C.run_claims(["size=cpu", "seeds=3", f"doc={doc}"], out_dir=out, log=False, claims=claims)
    assert path == doc
    assert sorted(trained) == sorted(f"{r}-s{k}" for r in ("base", "good", "same") for k in range(3))  # no 'spare'
    text = doc.read_text()
    row = {line.split(")")[0][3:]: line for line in text.splitlines() if line.startswith("| (")}
    # the fake runs clear the floor: raw pixels 30, random-init 20, kNN 40 and up
    assert "| holds | 3 of 3 |" in row["x"] and "| holds | 3 of 3 |" in row["y"] and "| fails | 3 of 3 |" in row["z"]
    assert "| no contrast yet | not yet measured at 3 seeds | 0 of 3 |" in row["w"]
    assert "+3.00 [+3.00, +3.00] (n=3)" in row["x"]  # the seeds move both runs alike: a constant difference
    assert "siamgrad reproduce toy_claims size=cpu seeds=3 only=good,base" in text
    assert "Status: 3 of 4 claims have a verdict from runs above the floor at their registered seeds." in text
    assert "* holds: (x), (y)" in text and "* fails: (z)" in text and "* not measured: (w)" in text
    # again: everything is reused, nothing retrains
    n = len(trained)
    C.run_claims(["size=cpu", "seeds=3", f"doc={doc}"], out_dir=out, log=False, claims=claims)
    assert len(trained) == n
    # train=false reads what is there and trains nothing
    C.run_claims(["size=cpu", "seeds=1", f"doc={doc}", "train=false"], out_dir=out, log=False, claims=claims)
    assert len(trained) == n and "| holds | 3 of 3 |" in doc.read_text()
    # one seed per run: every verdict waits for the registered 3
    one = {k: {0: v[0]} for k, v in C.load_results(out, "cpu", ["toy_claims"]).items()}
    text = C.report(C.evaluate(claims, one, size="cpu"), "cpu", C.claim_runs(claims))
    assert text.count("| not yet measured at 3 seeds | 1 of 3 |") == 3 and "+3.00 (1 seed)" in text
    with pytest.raises(ConfigError, match="only= does not apply"):
        C.run_claims(["only=a"], out_dir=out, log=False, claims=claims)


def test_cli_reproduce_claims_is_wired(tmp_path, monkeypatch):
    from siamgrad import cli

    calls = []
    monkeypatch.setattr(C, "run_claims", lambda settings, out_dir: calls.append((settings, out_dir)) or Path("x"))
    assert cli.main(["reproduce", "claims", "size=cpu", "train=false", "--out", str(tmp_path)]) == 0
    assert calls == [(["size=cpu", "train=false"], str(tmp_path))]


def test_reproduce_claims_on_the_real_registry_trains_each_named_run_once(tmp_path, monkeypatch):
    """The real claims over the real grids (train faked): every run they name, one seed, no other."""
    import siamgrad.train.loop as train_mod

    seen, trained = {}, []
    monkeypatch.setattr(train_mod, "train", _fake_train(seen, trained, lambda name, seed: 40.0))
    monkeypatch.setattr(reproduce, "full_train_knn", lambda run_dir, step: 41.0)
    doc = tmp_path / "claims.md"
    C.run_claims(["seeds=1", f"doc={doc}"], out_dir=str(tmp_path / "runs"), log=False)
    need = C.claim_runs(C.CLAIMS)
    assert sorted(trained) == sorted(f"{label}-s0" for labels in need.values() for label in labels)
    text = doc.read_text()
    assert all(f"| ({k}) " in text for k in "abcdefghijklmno")
    assert text.count("not yet measured at 3 seeds") >= 15  # one seed: no verdict anywhere
    # the collapse claim's controls are trained beside the collapsed runs
    assert {"byol-predictor", "simsiam-predictor"} <= set(need["claims_collapse"])


def test_the_claims_own_grid_runs_from_the_command_its_report_prints(monkeypatch, capsys):
    from siamgrad import cli
    from siamgrad.experiments import runner

    seen = {}

    def fake_run(name, settings, out_dir, exp=None):
        seen.update(name=name, settings=settings, exp=exp)
        return "done"

    monkeypatch.setattr(runner, "run_experiment", fake_run)
    line = C.command("claims_collapse", ["byol-no_predictor"], "cpu", 3)
    assert cli.main(line.split()[1:]) == 0
    assert seen["exp"] is grids.CLAIM_GRIDS["claims_collapse"]
    assert seen["settings"] == ["size=cpu", "seeds=3", "only=byol-no_predictor"]
    assert cli.main(["reproduce", "list"]) == 0 and "claims_collapse" in capsys.readouterr().out
    assert cli.main(["reproduce", "nope"]) != 0
    assert "unknown experiment 'nope'" in capsys.readouterr().err


def test_minutes_to_a_knn_target_read_from_the_run_curves(tmp_path):
    root = tmp_path / "speedy-cpu"
    # per seed: (training seconds, kNN) of every evaluation; "slow" reaches 35% at 120/150/90 s,
    # "fast" at 60/50/60 s; seed 3 of "slow" never reaches it and leaves its pair out
    curves = {"slow": [[(30, 30.0), (60, 34.0), (120, 35.5), (150, 37.0)], [(50, 33.0), (150, 35.0)],
                       [(45, 34.9), (90, 36.0)], [(60, 31.0), (120, 33.0)]],
              "fast": [[(30, 33.0), (60, 35.1), (90, 36.0)], [(50, 35.2)], [(60, 35.0)], [(60, 36.0)]]}
    rows = ["run,seed,knn_top1,status"]
    for run, per_seed in curves.items():
        for seed, curve in enumerate(per_seed):
            rows.append(f"{run},{seed},{curve[-1][1]},ok")
            folder = root / f"{run}-s{seed}"
            folder.mkdir(parents=True)
            lines = [json.dumps({"step": i, "loss": 1.0}) for i in range(2)]
            lines += [json.dumps({"step": 10 * (i + 1), "knn_acc": a, "train_seconds": t}) for i, (t, a) in enumerate(curve)]
            (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    root.joinpath("results.csv").write_text("\n".join(rows) + "\n")
    res = C.load_results(tmp_path, "cpu", ["speedy"])
    c = C.Contrast("speedy", "slow", "fast", "greater", 1.0, "minutes_to_knn@35", ratio=True)
    r = C.evaluate_contrast(c, res)
    ratios = [120 / 60, 150 / 50, 90 / 60]  # by hand from the curves above
    logs = stats.mean_interval([math.log(x) for x in ratios])
    assert r.seeds == [0, 1, 2]
    assert (r.interval.mean, r.interval.low, r.interval.high) == pytest.approx(
        (math.exp(logs.mean), math.exp(logs.low), math.exp(logs.high)))
    assert r.interval.mean == pytest.approx((2.0 * 3.0 * 1.5) ** (1 / 3))
    assert r.verdict == C.verdict("greater", r.interval, 1.0)
    assert C._value(res[("speedy", "slow")][3], "minutes_to_knn@35") is None
    assert C._value(res[("speedy", "fast")][0], "minutes_to_knn@35") == pytest.approx(1.0)


def test_each_size_has_its_own_claims_report_written_into_docs_only_from_the_checkout(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    assert C.default_doc("cpu", "runs/reproduce", cwd=repo) == repo / "docs" / "claims.md"
    # elsewhere (or a size without evidence in docs/) the report goes beside the runs, never ./docs
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "claims.csv").write_text("a user's file\n")
    assert C.default_doc("cpu", tmp_path / "runs", cwd=tmp_path) == tmp_path / "runs" / "claims.md"
    assert C.default_doc("paper", "out", cwd=repo) == Path("out") / "claims_paper.md"
    assert C._split(["size=paper", "doc=/tmp/x.md"])[3] == "/tmp/x.md"


def test_reproduce_claims_from_another_folder_touches_nothing_there_and_says_it_found_no_runs(
        tmp_path, monkeypatch, capsys):
    from siamgrad import cli

    (tmp_path / "docs").mkdir()
    notes = tmp_path / "docs" / "claims.md"
    notes.write_text("my notes\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["reproduce", "claims", "size=cpu", "train=false"]) == 2
    err = capsys.readouterr().err
    assert "no runs of the claims found under 'runs/reproduce' for size=cpu" in err and len(err.splitlines()) == 1
    assert notes.read_text() == "my notes\n" and sorted(p.name for p in (tmp_path / "docs").iterdir()) == ["claims.md"]


def test_the_report_regenerates_from_its_evidence_file_without_the_run_folders(tmp_path, monkeypatch):
    import shutil

    import siamgrad.train.loop as train_mod

    seen, trained = {}, []
    gain = {"good": 3.0, "base": 0.0}
    knn = lambda name, seed: 40.0 + gain[name.rsplit("-s", 1)[0]] + 0.5 * seed  # noqa: E731
    monkeypatch.setattr(train_mod, "train", _fake_train(seen, trained, knn))
    exp = grids.Experiment("toy", sizes={"cpu": TINY}, runs=[("base", ["method=simclr"]), ("good", ["method=byol"])])
    monkeypatch.setitem(grids.EXPERIMENTS, "toy_evidence", exp)
    claims = [C.Claim("x", "P", "good beats base", (C.Contrast("toy_evidence", "good", "base", "greater", 1.0),),
                      "fig", "T1", "n")]
    doc, out = tmp_path / "claims.md", tmp_path / "runs"
    C.run_claims(["seeds=3", f"doc={doc}"], out_dir=str(out), log=False, claims=claims)
    first = doc.read_text()
    evidence = C.read_evidence(tmp_path / "claims.csv")
    # the values the runs wrote, by seed, read back independently of the evidence file
    rows = {(r["run"], int(r["seed"])): float(r["knn_top1"])
            for r in csv.DictReader((out / "toy_evidence-cpu" / "results.csv").open())}
    knn = {k: v for k, v in evidence.values.items() if k[3] == "knn_top1"}
    assert knn == {("toy_evidence", run, seed, "knn_top1"): v for (run, seed), v in rows.items()}
    # the floor's baselines and each run's provenance travel with the values
    assert evidence.values[("toy_evidence", "base", 0, "raw_pixel_knn")] == 30.0
    assert evidence.provenance[("toy_evidence", "good", 2)]["torch"]
    shutil.rmtree(out)  # a fresh checkout: no run folders
    C.run_claims(["seeds=3", f"doc={doc}", "train=false"], out_dir=str(out), log=False, claims=claims)
    assert doc.read_text() == first and "| holds | 3 of 3 |" in first and len(trained) == 6
    # a malformed evidence file is named, with the fix
    (tmp_path / "claims.csv").write_text("grid,run\nx,y\n")
    with pytest.raises(ConfigError, match="claims.csv: expected the columns grid,run,seed,metric,value,commit"):
        C.run_claims(["train=false", f"doc={doc}"], out_dir=str(out), log=False, claims=claims)


def test_a_run_seed_in_the_evidence_is_not_trained_again_on_a_new_checkout(tmp_path, monkeypatch):
    import shutil

    import siamgrad.train.loop as train_mod

    seen, trained = {}, []
    monkeypatch.setattr(train_mod, "train", _fake_train(seen, trained, lambda name, seed: 45.0 + seed))
    exp = grids.Experiment("toy", sizes={"cpu": TINY}, runs=[("base", ["method=simclr"]), ("good", ["method=byol"])])
    monkeypatch.setitem(grids.EXPERIMENTS, "toy_again", exp)
    claims = [C.Claim("x", "P", "good beats base", (C.Contrast("toy_again", "good", "base", "greater", 0.0),),
                      "fig", "T1", "n", seeds=3)]
    doc, out = tmp_path / "claims.md", tmp_path / "runs"
    C.run_claims([f"doc={doc}", "seeds=0-1"], out_dir=str(out), log=False,
                 claims=claims)
    assert sorted(trained) == ["base-s0", "base-s1", "good-s0", "good-s1"]
    shutil.rmtree(out)  # a new checkout: the evidence file is all that is left
    C.run_claims([f"doc={doc}"], out_dir=str(out), log=False, claims=claims)  # the registered 3 seeds
    assert sorted(trained[4:]) == ["base-s2", "good-s2"]  # only the seed the evidence lacks
    assert C._ranges([5, 0, 1, 2, 7, 8]) == [(0, 2), (5, 5), (7, 8)] and C._ranges([]) == []
