"""Faults that used to lose work or mislead (issue 17): a full disk and a read-only out_dir on the
command line, a data.root the dataset does not read, settings a checkpoint command would ignore.

The full disk and the read-only mount are real: a small tmpfs mounted in a private mount namespace
(``unshare -rm``) around a ``siamgrad train`` process; skipped where mounting is not allowed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
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
