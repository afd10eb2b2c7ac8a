"""A run folder that owns its files (issue: "a run folder that owns its files"), each checked on the
code path a user meets:

* results.json is merged, never replaced: ``siamgrad eval`` of a stopped run, then the same train
  command to the end, keeps the evaluation beside the training summary; one function writes the
  file for both, one merge at a time;
* the files of a run follow the umask, as ``open()``'s do (0644 under 022, 0600 under 077);
* a run folder is held by one training at a time: a second process on it stops with one ``error:``
  line naming the first's PID, ``siamgrad eval`` still reads it, and the lock of a killed run
  blocks neither its resume nor outlives it in a forked child.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from siamgrad import checkpoint as ck
from siamgrad.cli import main
from siamgrad.config import build_config
from siamgrad.eval.checkpoint import evaluate_checkpoint, merge_results
from siamgrad.train.loop import read_metrics, train
from siamgrad.train.run_folder import RunFolderInUse, RunLock

# threads=1: on a loaded 2-core machine one thread per process is many times faster
TINY = ["backbone=tiny", "method.proj_hidden_dim=32", "method.proj_output_dim=16", "eval.knn_k=20",
        "progress=false", "threads=1", "diag.report=false", "diag.batch=64", "eval.random_baseline=false"]
DIGITS = [*TINY, "batch_size=64", "epochs=1", "data.fraction=0.25"]  # 5 steps
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SUMMARY = ("step", "knn_accuracy", "best_knn_accuracy", "final_loss", "skipped_steps", "train_seconds")


@pytest.fixture(autouse=True)
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def _wait(what, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not what() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended too early: {proc.stderr.read()[-2000:]}"
    assert what(), "timed out waiting for the run"


def _holder(run: Path) -> int | None:
    try:
        return json.loads((run / ck.LOCK_FILE).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


# --------------------------------------------------------------------------------------------
# 1. results.json is merged, never replaced


def test_an_evaluation_of_a_stopped_run_survives_its_resumed_summary(tmp_path, capsys):
    # 22 steps per epoch, 3 epochs: stopped at 60, evaluated there, then trained to the end
    settings = [*TINY, "batch_size=16", "epochs=3", "data.fraction=0.25", f"out_dir={tmp_path}", "run_name=r"]
    run = tmp_path / "r"
    assert main(["train", *settings, "stop_after=60"]) == 0
    assert main(["eval", "knn", str(run), "--split", "val"]) == 0
    assert _results(run)["eval"]["knn@val"]["checkpoint_step"] == 60
    capsys.readouterr()
    assert main(["train", *settings]) == 0
    assert "resumed from" in capsys.readouterr().err

    results = _results(run)
    total = ck.load_checkpoint(run / "latest.pt")["total_steps"]
    assert total > 60 and results["step"] == total
    assert all(k in results for k in SUMMARY) and results["knn_accuracy"] is not None
    entry = results["eval"]["knn@val"]  # the evaluation of step 60 is still there, named by its step
    assert entry["checkpoint_step"] == 60 and entry["split"] == "val" and "knn_top1" in entry
    assert {"fewshot", "linear"} <= set(results["eval"])  # and the summary's own, of the last step


def test_one_merge_function_writes_results_json_for_training_and_evaluation(tmp_path):
    run = tmp_path / "r"
    path, kept = ck.merge_results(run, {"step": 5, "knn_accuracy": 50.0, "note": "mine",
                                        "eval": {"knn": {"checkpoint_step": 3}}})
    assert path == run / "results.json" and kept is None
    merge_results(run, "linear", {"checkpoint_step": 5})  # siamgrad eval's entry point
    ck.merge_results(run, {"step": 9, "knn_accuracy": 60.0})  # a later training summary
    assert _results(run) == {"step": 9, "knn_accuracy": 60.0, "note": "mine",
                             "eval": {"knn": {"checkpoint_step": 3}, "linear": {"checkpoint_step": 5}}}

    # a damaged file is kept aside, the caller told where
    (run / "results.json").write_bytes(b'{"step": 9, "ev')
    _, kept = ck.merge_results(run, {"step": 10})
    assert kept is not None and kept.read_bytes() == b'{"step": 9, "ev' and _results(run) == {"step": 10}


def test_merges_at_the_same_time_lose_no_entry(tmp_path):
    run = tmp_path / "r"
    ck.merge_results(run, {"step": 1})

    def evaluate(worker: int) -> None:
        for i in range(5):
            merge_results(run, f"p{worker}-{i}", {"checkpoint_step": 1})

    workers = [threading.Thread(target=evaluate, args=(w,)) for w in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    results = _results(run)
    assert results["step"] == 1 and len(results["eval"]) == 30


# --------------------------------------------------------------------------------------------
# 2. file modes follow the umask


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_the_files_of_a_run_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        cfg = [*DIGITS, f"out_dir={tmp_path}", "run_name=r"]
        train(build_config([*cfg, "stop_after=2"]), log=False)
        train(build_config(cfg), log=False)  # the resume rewrites metrics.jsonl
        run = tmp_path / "r"
        evaluate_checkpoint("knn", str(run), ["threads=1"], baselines=False)  # merges into results.json
        names = ["results.json", "config.yaml", "latest.pt", "latest.prev.pt", "metrics.jsonl", ck.LOCK_FILE]
        names += ["best.pt"] if (run / "best.pt").exists() else []
        modes = {name: oct((run / name).stat().st_mode & 0o777) for name in names}
        assert modes == {name: oct(mode) for name in names}
    finally:
        os.umask(old)


# --------------------------------------------------------------------------------------------
# 3. one training per run folder


def test_a_second_training_of_a_held_folder_stops_with_one_line_naming_the_first(tmp_path, capsys):
    settings = [*TINY, "batch_size=16", "epochs=200", "data.fraction=0.25", "checkpoint_every=1",
                f"out_dir={tmp_path}", "run_name=twin"]
    cmd = [sys.executable, "-m", "siamgrad", "train", *settings]
    run = tmp_path / "twin"
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        _wait(lambda: _holder(run) == first.pid and (run / "latest.pt").exists(), first)
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=ENV, check=False)
        assert second.returncode == 2, second.stderr[-2000:]
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), second.stderr
        line = lines[0]
        assert f"PID {first.pid}" in line and str(run) in line and "another run_name" in line and "wait" in line
        assert first.poll() is None  # the first trains on

        # in-process too, before any data is read; eval only reads the folder and merges its figures
        with pytest.raises(RunFolderInUse, match=f"PID {first.pid}"):
            train(build_config(settings), log=False)
        res = evaluate_checkpoint("knn", str(run), ["threads=1"], baselines=False)
        assert "knn" in _results(run)["eval"] and res["checkpoint_step"] >= 1
    finally:
        _stop(first)


def test_the_lock_of_a_killed_training_does_not_block_its_resume(tmp_path):
    settings = [*TINY, "batch_size=32", "epochs=3", "data.fraction=0.25", "log_every=1", "checkpoint_every=2",
                f"out_dir={tmp_path}", "run_name=k"]  # 30 steps
    cmd = [sys.executable, "-m", "siamgrad", "train", *settings]
    run = tmp_path / "k"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        _wait(lambda: (run / "latest.pt").exists() and _holder(run) == proc.pid, proc)
    finally:
        _stop(proc)
    assert proc.returncode == -signal.SIGKILL
    assert _holder(run) == proc.pid  # the killed process's lock file is still there, naming it
    ck.remove_stale_temps(run)
    assert (run / ck.LOCK_FILE).is_file()  # not a temporary to clean away

    final = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=ENV, check=False)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "resumed from" in final.stderr and "in use" not in final.stderr
    assert ck.load_checkpoint(run / "latest.pt")["step"] == 30 == _results(run)["step"]
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == list(range(1, 31))
    RunLock(run).check()  # a finished run holds nothing
    assert _holder(run) is None


_FORK_AND_DIE = """
import multiprocessing, os, sys, time
from pathlib import Path
from siamgrad.train.run_folder import RunLock
def sleep():
    os.close(1), os.close(2)  # the test reads the parent's output to its end
    time.sleep(120)
lock = RunLock(Path(sys.argv[1]))
lock.acquire(print)
child = multiprocessing.get_context("fork").Process(target=sleep)
child.start()
print(child.pid, flush=True)
os.kill(os.getpid(), 9)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_outliving_its_trainer_holds_no_lock(tmp_path):
    # a data worker forked by the trainer: killed with it or not, it must not keep the folder locked
    proc = subprocess.run([sys.executable, "-c", _FORK_AND_DIE, str(tmp_path)], capture_output=True, text=True,
                          timeout=240, env=ENV, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    child = int(proc.stdout.split()[-1])
    try:
        os.kill(child, 0)  # still alive
        lock = RunLock(tmp_path)
        lock.acquire(print)
        assert _holder(tmp_path) == os.getpid()
        lock.release()
    finally:
        os.kill(child, signal.SIGKILL)
