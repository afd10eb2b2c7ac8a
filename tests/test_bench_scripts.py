"""The benchmark scripts run end to end on a tiny dataset (their figures are not checked here)."""

import re
import sys
from pathlib import Path

from test_data import write_cifar10_python

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_time_to_knn_trains_both_sides_and_prints_the_ratio(tmp_path, capsys):
    import bench_time_to_knn

    write_cifar10_python(tmp_path / "cifar-10-batches-py", sizes=(16, 16, 16, 16, 16), n_test=16)
    tiny = ["backbone=tiny", "batch_size=16", "eval.knn_k=5", "method.proj_hidden_dim=32",
            "method.proj_output_dim=16"]
    rc = bench_time_to_knn.main(["--data-root", str(tmp_path), "--target", "101", "0", "--max-epochs", "2",
                                 "--threads", "1", "--workers", "0", *(x for s in tiny for x in ("--set", s))])
    out = capsys.readouterr().out
    assert rc == 0
    assert "epoch 2 siamgrad: kNN" in out and "epoch 2 peer: kNN" in out
    # 0% is reached at the first epoch, 101% never: the run goes on to --max-epochs
    assert "siamgrad: did not reach 101.0% in 2 epochs" in out
    assert re.search(r"^time_ratio@0=\d+\.\d\d$", out, re.M) and "time_ratio=nan" in out
    sides = {m[0]: float(m[1]) for m in re.findall(r"^epoch 2 (\w+): kNN .* after ([\d.]+) s", out, re.M)}
    ratio = float(re.search(r"epoch_ratio=([\d.]+)", out)[1])
    p, a = sides["peer"], sides["siamgrad"]  # printed to 0.1 s: the ratio lies within their rounding
    assert (p - 0.05) / (a + 0.05) - 0.005 <= ratio <= (p + 0.05) / max(a - 0.05, 1e-3) + 0.005


def test_seed_spread_scores_each_run_as_eval_knn_does_and_splits_their_spread(tmp_path, capsys):
    import seed_spread

    from siamgrad.config import build_config
    from siamgrad.eval.checkpoint import evaluate_checkpoint
    from siamgrad.experiments.stats import mean_interval
    from siamgrad.train.loop import train

    write_cifar10_python(tmp_path / "cifar-10-batches-py", sizes=(16, 16, 16, 16, 16), n_test=40)
    tiny = ["data=cifar10", f"data.root={tmp_path}", "backbone=tiny", "batch_size=16", "epochs=1",
            "eval.knn_k=5", "eval.every=0", "method.proj_hidden_dim=32", "method.proj_output_dim=16",
            "diag.enabled=false", "diag.report=false", "progress=false", f"out_dir={tmp_path / 'runs'}"]
    runs = [str(train(build_config([*tiny, f"seed={k}", f"run_name=s{k}"]), log=False).run_dir) for k in range(3)]
    # the independent figure: siamgrad eval knn's accuracy of each run (knn_accuracy, not knn_correct)
    accs = [evaluate_checkpoint("knn", r, baselines=False, write=False)["knn_top1"] for r in runs]
    capsys.readouterr()
    assert seed_spread.main([*runs, "--target-sd", "1"]) == 0
    out = capsys.readouterr().out
    for r, a in zip(runs, accs):
        assert f"{r}: kNN {a:.2f}% on 40 test images" in out
    assert f"seeds=3 images=40 sd={mean_interval(accs).sd:.2f} " in out
    assert "images_for_target=" in out
    # on the validation split every run is scored on seed 0's draw: run s0's own figure
    val0 = evaluate_checkpoint("knn", runs[0], split="val", baselines=False, write=False)
    assert seed_spread.main([*runs, "--split", "val"]) == 0
    assert f"{runs[0]}: kNN {val0['knn_top1']:.2f}% on {val0['eval_images']} val images" in capsys.readouterr().out
    assert seed_spread.main(runs[:1]) == 2


def test_recipe_search_trains_seeds_and_splits_their_spread(tmp_path, capsys, monkeypatch):
    import cpu_recipe_search

    write_cifar10_python(tmp_path / "cifar-10-batches-py", sizes=(16, 16, 16, 16, 16), n_test=40)
    tiny = ["backbone=tiny", "batch_size=16", "epochs=1", "eval.knn_k=5", "method.proj_hidden_dim=32",
            "method.proj_output_dim=16", "threads=1"]
    monkeypatch.setattr(cpu_recipe_search, "CANDIDATES", {"tiny": tiny})
    rc = cpu_recipe_search.main(["--only", "tiny", "--seeds", "2", "--per-image", "--out", str(tmp_path / "runs"),
                                 "--data-root", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    spread = next(line for line in out.splitlines() if line.startswith("| tiny | 2 |"))
    test_sd = spread.split("|")[4].split("(")[1].split(")")[0]  # "mean (sd) [low, high]" of test kNN
    split_rows = [line.split("|") for line in out.splitlines() if line.startswith("| tiny | val |")
                  or line.startswith("| tiny | test |")]
    assert [r[2].strip() for r in split_rows] == ["val", "test"]
    assert split_rows[1][4].strip() == test_sd  # the split's total spread is the seeds' sd


def test_run_end_times_both_sides_and_prints_the_ratio(capsys):
    import bench_run_end

    tiny = ["backbone=tiny", "method.proj_hidden_dim=32", "method.proj_output_dim=16", "eval.knn_k=20",
            "epochs=1", "batch_size=128", "diag.report=false", "threads=1", "progress=false"]
    assert bench_run_end.main(["--baseline", "HEAD", "--settings", *tiny]) == 0
    out = capsys.readouterr().out
    figures = dict(line.split("=") for line in out.split())
    assert set(figures) == {"baseline_wall_s", "baseline_train_s", "baseline_beyond_s", "wall_s", "train_s",
                            "beyond_s", "beyond_ratio"}
    for side in ("baseline_", ""):
        wall, trained, beyond = (float(figures[f"{side}{k}"]) for k in ("wall_s", "train_s", "beyond_s"))
        assert wall > trained > 0 and abs(wall - trained - beyond) < 0.11
    # the ratio of the unrounded times: within the rounding of the two printed to 0.1 s
    b, a, ratio = float(figures["baseline_beyond_s"]), float(figures["beyond_s"]), float(figures["beyond_ratio"])
    assert (b - 0.05) / (a + 0.05) - 0.005 <= ratio <= (b + 0.05) / (a - 0.05) + 0.005
