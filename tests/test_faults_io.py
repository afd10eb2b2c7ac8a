"""Faults that used to lose work or mislead (issue 17): a full disk and a read-only out_dir on the
command line, a data.root the dataset does not read, settings a checkpoint command would ignore.

The full disk and the read-only mount are real: a small tmpfs mounted in a private mount namespace
(``unshare -rm``) around a ``siamgrad train`` process; skipped where mounting is not allowed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from siamgrad import checkpoint as ck
from siamgrad.cli import main
from siamgrad.config import build_config, resolve
from siamgrad.errors import ConfigError
from siamgrad.train.loop import read_metrics, train

TINY = ["backbone=tiny", "method.proj_hidden_dim=32", "method.proj_output_dim=16", "eval.knn_k=20",
        "progress=false", "threads=1", "diag.report=false", "diag.batch=64", "eval.random_baseline=false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _one_error_line(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# --------------------------------------------------------------------------------------------
# data.root without data=


def test_data_root_that_the_dataset_does_not_read_is_an_error(tmp_path, capsys):
    for argv in (["train", *TINY, f"data.root={tmp_path}", f"out_dir={tmp_path}"],
                 ["config", f"data.root={tmp_path}"], ["config", "data=digits", f"data.root={tmp_path}"]):
        err = _one_error_line(capsys, argv)
        assert f"data.root={tmp_path}" in err and "digits" in err and "data=cifar10" in err and "imagefolder" in err
    assert not any(tmp_path.iterdir())  # nothing was trained
    cfg = build_config([])
    cfg.data.root = str(tmp_path)  # a config built in Python is checked where it is resolved
    with pytest.raises(ConfigError, match="data.root"):
        resolve(cfg)
    for name in ("cifar10", "imagefolder", "shards"):  # datasets that read data.root keep it
        assert build_config([f"data={name}", f"data.root={tmp_path}"]).data.root == str(tmp_path)
    assert build_config([]).data.root is None


# --------------------------------------------------------------------------------------------
# settings that a checkpoint command would ignore


@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("simclr")
    res = train(build_config([*TINY, "method=simclr", "batch_size=64", "epochs=1", "data.fraction=0.25",
                              "stop_after=2", f"out_dir={out}", "run_name=s"]), log=False)
    return res.run_dir


def test_analyze_gradients_with_another_method_is_one_line(simclr_run, capsys):
    err = _one_error_line(capsys, ["analyze", "gradients", str(simclr_run), "method=byol"])
    assert "method.name=byol" in err and "method simclr" in err and "drop it" in err and "Missing key" not in err
    err = _one_error_line(capsys, ["analyze", "gradients", str(simclr_run), "backbone=resnet18"])
    assert "backbone=resnet18" in err and "backbone tiny" in err


def test_eval_refuses_settings_it_would_ignore(simclr_run, capsys):
    for setting, shown in [("method=byol", "method.name=byol"), ("backbone=resnet18", "backbone=resnet18"),
                           ("epochs=5", "epochs=5")]:
        err = _one_error_line(capsys, ["eval", "knn", str(simclr_run), setting])
        assert err.startswith("error: eval knn uses the checkpoint's model") and shown in err, err
        assert "method simclr, backbone tiny" in err and "drop it" in err


def test_config_for_checkpoint_applies_only_what_the_command_reads(simclr_run):
    state = ck.load_checkpoint(simclr_run)
    cfg = ck.config_for_checkpoint(state, ["eval.knn_k=7", "data.workers=0", "seed=3", "method=simclr"],
                                   applies=("data", "eval", "seed"), command="eval")
    assert (cfg.eval.knn_k, cfg.data.workers, cfg.seed, cfg.method["name"]) == (7, 0, 3, "simclr")
    for bad, shown in [(["method=byol"], "method.name=byol"), (["backbone=small"], "backbone=small"),
                       (["epochs=9"], "epochs=9"), (["method.temperature=0.5"], "method.temperature=0.5"),
                       (["optim.lr=1"], "optim.lr=1.0")]:
        with pytest.raises(ConfigError) as e:
            ck.config_for_checkpoint(state, bad, applies=("data", "eval", "seed"), command="eval")
        msg = str(e.value)
        assert msg.startswith("eval uses the checkpoint's model") and shown in msg and "\n" not in msg, msg
        assert "only data.*, eval.*, seed settings apply" in msg


# --------------------------------------------------------------------------------------------
# a real full disk and a read-only out_dir under siamgrad train


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                          capture_output=True).returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="mounting a tmpfs in a private namespace is not allowed here")


def _train_on_mount(mnt: Path, options: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``siamgrad train`` with out_dir on a fresh tmpfs at ``mnt``; afterwards the files it left
    are copied to ``mnt.parent / 'left'`` (the mount vanishes with the namespace)."""
    left = mnt.parent / "left"
    cmd = [sys.executable, "-m", "siamgrad", "train", *TINY, f"out_dir={mnt}", *args]
    script = (f'mount -t tmpfs -o {options} tmpfs "$1" || exit 99; shift; "$@"; rc=$?; '
              f'cp -a "{mnt}/." "{left}/"; exit $rc')
    left.mkdir()
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(mnt), *cmd], capture_output=True,
                          text=True, timeout=timeout, env=ENV)


NO_SPACE = re.compile(r"^error: no space left on (\S+) writing (\S+): free ([0-9.]+) MB or point out_dir elsewhere$")


@needs_mount
def test_training_onto_a_full_disk_stops_with_one_line_and_intact_checkpoints(tmp_path):
    # 1 MiB holds the run folder with two tiny checkpoints (latest, prev: ~1/3 MB each), not a third beside them
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = _train_on_mount(mnt, "size=1m", "batch_size=32", "epochs=2", "data.fraction=0.25", "log_every=1",
                          "checkpoint_every=1", "run_name=full", "eval.every=0")
    assert out.returncode != 99, "mount failed"
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    m = NO_SPACE.match(last)
    assert m and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert m.group(1) == str(mnt) and m.group(2).startswith(f"{mnt}/full/")
    run = tmp_path / "left" / "full"
    latest = ck.load_checkpoint(run / "latest.pt")
    prev = ck.load_checkpoint(ck.previous_path(run / "latest.pt"))
    assert 1 <= prev["step"] == latest["step"] - 1  # both intact, one step apart
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


@needs_mount
def test_training_into_a_read_only_out_dir_is_one_line(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    out = _train_on_mount(mnt, "ro", "batch_size=64", "epochs=1", "data.fraction=0.25", "run_name=r")
    assert out.returncode != 99, "mount failed"
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write {mnt}/r") and "read-only file system (EROFS)" in last, last
    assert "point out_dir at a writable folder" in last


# --------------------------------------------------------------------------------------------
# Ctrl-C / SIGTERM, the resume hints executed as printed, stale temporaries, records once


def _hint(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "resume with: " in line]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0].split("resume with: ", 1)[1]


def _run_hint(hint: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a printed command in a shell, as a user pasting it would (siamgrad on the PATH)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{ENV.get('PATH', '')}"
    assert hint.startswith("siamgrad train "), hint
    return subprocess.run(["bash", "-c", hint], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**ENV, "PATH": path})


def _weights(run: Path) -> dict:
    return ck.load_checkpoint(run / "latest.pt")["method"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


RUN = [*TINY, "batch_size=32", "epochs=2", "data.fraction=0.25", "log_every=1"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must end equal to."""
    out = tmp_path_factory.mktemp("straight")
    return train(build_config([*RUN, f"out_dir={out}", "run_name=straight"]), log=False).run_dir


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_saves_and_prints_the_command_that_resumes(tmp_path, straight, sig):
    work = tmp_path / "work"
    work.mkdir()
    out_dir, name = "../out dir", "my run"  # relative, with spaces: the hint must quote both
    cmd = [sys.executable, "-m", "siamgrad", "train", *RUN, f"out_dir={out_dir}", f"run_name={name}"]
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    run = tmp_path / "out dir" / name
    deadline = time.monotonic() + 240
    while _logged(run) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    state = ck.load_checkpoint(run / "latest.pt")  # the step in flight finished and was saved
    assert state["step"] >= 3 and state["step"] == _logged(run)
    hint = _hint(err)
    assert f"interrupted by {signal.Signals(sig).name} after step {state['step']}" in err
    assert "'out_dir=../out dir'" in hint and "'run_name=my run'" in hint and "resume=true" in hint
    if sig == signal.SIGTERM:
        return
    done = _run_hint(hint, work)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"at step {state['step']}" in done.stderr and (run / "results.json").is_file()
    assert _same(_weights(run), _weights(straight))


def _logged(run: Path) -> int:
    return max((r["step"] for r in read_metrics(run) if "loss" in r), default=0)


def test_the_stop_after_hint_runs_as_printed(tmp_path, straight):
    work = tmp_path / "w"
    work.mkdir()
    out = subprocess.run([sys.executable, "-m", "siamgrad", "train", *RUN, "out_dir=../o", "run_name=a b", "stop_after=4"],
                         cwd=work, capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    hint = _hint(out.stderr)
    assert "out_dir=../o" in hint and "'run_name=a b'" in hint
    done = _run_hint(hint, work)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "o" / "a b"
    assert "at step 4" in done.stderr and (run / "results.json").is_file()
    assert _same(_weights(run), _weights(straight))


def test_stale_temporaries_are_removed_on_start_and_on_finish(tmp_path, monkeypatch):
    cfg = [*TINY, "batch_size=64", "epochs=1", "data.fraction=0.25", f"out_dir={tmp_path}", "run_name=r"]
    run = tmp_path / "r"
    run.mkdir()
    planted = [".latest.pt.a1b2c3d4.tmp", ".best.pt.zz9_xk2q.tmp", ".latest.prev.pt.00000000.tmp"]
    foreign = [".notes.txt.abcdefgh.tmp", "mine.tmp"]  # not the run writer's: kept

    def plant():
        for n in planted + foreign:
            (run / n).write_bytes(b"\0" * 4096)

    def temps():
        return sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp"))

    plant()
    seen = []
    real = ck.save_checkpoint

    def spy(state, path, keep_previous=True):
        seen.append(temps())
        real(state, path, keep_previous)
        plant()  # as if a write had been killed here: left over until the run ends

    monkeypatch.setattr(ck, "save_checkpoint", spy)
    train(build_config(cfg), log=False)
    assert seen and seen[0] == sorted(foreign)  # gone at start, before the run's first write
    assert temps() == sorted(foreign)  # and those left during the run, gone at its end


def test_a_kill_before_results_json_does_not_duplicate_records(tmp_path):
    cfg = build_config([*TINY, "batch_size=64", "epochs=2", "data.fraction=0.25", "log_every=1",
                        f"out_dir={tmp_path}", "run_name=r"])
    first = train(cfg, log=False)
    before = read_metrics(first.run_dir)
    # a kill after the final checkpoint, before results.json (e.g. while the report is written)
    (first.run_dir / "results.json").unlink()
    again = train(cfg, log=False)
    after = read_metrics(again.run_dir)
    assert again.step == first.step and (again.run_dir / "results.json").is_file()
    assert again.knn_accuracy == first.knn_accuracy

    def count(recs, key):
        steps = [r["step"] for r in recs if key in r]
        return {s: steps.count(s) for s in steps}

    for key in ("knn_acc", "loss"):
        assert set(count(after, key).values()) == {1}, (key, count(after, key))
        assert count(after, key) == count(before, key)
    assert len(after) == len(before)
