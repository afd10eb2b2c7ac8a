"""Weights & Biases logging (log.wandb=true): every numeric record of metrics.jsonl reaches the W&B
run at its step; a missing package is a one-line error; offline mode writes the run to disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

TINY = ["backbone=tiny", "method.proj_hidden_dim=32", "method.proj_output_dim=16", "eval.knn_k=20",
        "progress=false", "threads=1", "diag.enabled=false", "diag.report=false", "epochs=1",
        "data.fraction=0.1", "batch_size=32", "log_every=1"]


class FakeRun:
    def __init__(self):
        self.logged: list[tuple[dict, int]] = []
        self.finished = False

    def log(self, values, step):
        self.logged.append((dict(values), step))

    def finish(self):
        self.finished = True


def test_every_numeric_record_is_logged_at_its_step(tmp_path, monkeypatch):
    from siamgrad.config import build_config
    from siamgrad.train.loop import train

    calls: dict = {}
    run = FakeRun()

    def init(**kw):
        calls.update(kw)
        return run

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    res = train(build_config(TINY + [f"out_dir={tmp_path}", "run_name=w", "log.wandb=true",
                                     "log.wandb_project=proj"]), log=False)
    assert calls["project"] == "proj" and calls["name"] == "w" and calls["dir"] == str(res.run_dir)
    assert calls["config"]["log"]["wandb"] is True and calls["config"]["backbone"] == "tiny"
    records = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = []
    for r in records:
        vals = {k: v for k, v in r.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if vals:
            expected.append((vals, r["step"]))
    assert run.logged == expected and len(expected) >= 3
    assert any("loss" in v for v, _ in run.logged) and any("knn_acc" in v for v, _ in run.logged)
    assert run.finished


def test_missing_wandb_is_a_one_line_error(tmp_path):
    code = ("import sys; sys.modules['wandb'] = None\n"
            "from siamgrad.cli import main\n"
            f"sys.exit(main(['train', *{TINY!r}, 'out_dir={tmp_path}', 'run_name=m', 'log.wandb=true']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'siamgrad[wandb]'" in lines[0], r.stderr


def test_offline_mode_writes_the_run_to_disk(tmp_path):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'siamgrad[wandb]')")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    r = subprocess.run([sys.executable, "-m", "siamgrad", "train", *TINY, f"out_dir={tmp_path}", "run_name=o",
                        "log.wandb=true"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    runs = list((tmp_path / "o" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    data = list(runs[0].glob("run-*.wandb"))
    assert data and data[0].stat().st_size > 1000
