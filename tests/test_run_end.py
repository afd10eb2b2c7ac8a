"""The end of a run, in stages: one ``siamgrad train`` from the command to results.json and the report
reads its data once and no checkpoint; the summary it prints is formatted from results.json."""

import json

import torch

import siamgrad.data.sets as sets
import siamgrad.report.html as html
import siamgrad.train.loop as loop
from siamgrad.cli import main

TINY = ["backbone=tiny", "method.proj_hidden_dim=32", "method.proj_output_dim=16", "eval.knn_k=20", "progress=false",
        "threads=1", "diag.batch=64", "batch_size=64", "epochs=1", "data.fraction=0.5", "eval.linear_epochs=20"]


def test_one_train_reads_its_data_once_and_no_checkpoint(tmp_path, monkeypatch, capsys):
    calls = {"load_data": 0, "torch.load": 0, "analyze_run": 0}

    def counting(name, fn):
        def wrapper(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapper

    monkeypatch.setattr(loop, "load_data", counting("load_data", loop.load_data))
    monkeypatch.setattr(sets, "load_data", counting("load_data", sets.load_data))
    monkeypatch.setattr(torch, "load", counting("torch.load", torch.load))
    monkeypatch.setattr(html, "analyze_run", counting("analyze_run", html.analyze_run))
    assert main(["train", *TINY, f"out_dir={tmp_path}", "run_name=r"]) == 0
    out = capsys.readouterr().out
    assert calls == {"load_data": 1, "torch.load": 0, "analyze_run": 1}, calls
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    # the demo's figures were evaluated in memory, at the final step, and the summary shows them
    few, lin = results["eval"]["fewshot"], results["eval"]["linear"]
    assert few["checkpoint_step"] == lin["checkpoint_step"] == results["step"]
    rows = {r["encoder"]: r["mean"] for r in few["rows"] if r["fraction"] == 0.01 and r["classifier"] == "knn"}
    assert set(rows) == {"trained", "random_init", "raw_pixels"}
    assert f"with few labels, kNN top-1: trained {rows['trained']:.2f}%" in out
    assert f"linear probe top-1:         trained {lin['linear_test_top1']:.2f}%" in out
    assert (tmp_path / "r" / "report" / "report.html").is_file()
    emb = json.loads((tmp_path / "r" / "report" / "embedding.json").read_text())
    assert emb["step"] == results["step"] and emb["points"] > 0


def test_the_in_memory_figures_are_those_siamgrad_eval_gives(tmp_path, capsys):
    """The trainer's few-label and linear figures against the same protocols run afresh from the
    checkpoint by ``siamgrad eval``: the same numbers."""
    assert main(["train", *TINY, "diag.report=false", f"out_dir={tmp_path}", "run_name=r"]) == 0
    kept = json.loads((tmp_path / "r" / "results.json").read_text())["eval"]
    from siamgrad.eval.checkpoint import evaluate_checkpoint

    lin = evaluate_checkpoint("linear", str(tmp_path / "r"), write=False)
    few = evaluate_checkpoint("fewshot", str(tmp_path / "r"), fractions=(0.01,), write=False)
    for suffix in ("", "_random_init", "_raw_pixels"):
        assert abs(lin["linear_test_top1" + suffix] - kept["linear"]["linear_test_top1" + suffix]) < 1e-6, suffix
    mine = {(r["encoder"], r["classifier"]): r["mean"] for r in kept["fewshot"]["rows"]}
    theirs = {(r["encoder"], r["classifier"]): r["mean"] for r in few["rows"]}
    assert mine.keys() == theirs.keys() and all(abs(mine[k] - theirs[k]) < 1e-6 for k in mine)
