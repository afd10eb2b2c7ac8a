"""Faults that overwrote or silently dropped what a user made, or misled (issue: "Nothing a user made
is overwritten or silently dropped"), each checked on the code path a user meets:

* an export never writes over a run folder's files; a damaged latest.pt falls back to
  latest.prev.pt for ``eval`` and ``export`` as it does for training;
* a damaged or missing CIFAR test file is named in one line, in training and in ``eval``;
* a damaged results.json is kept beside the new one and said so, and training rewrites its summary;
* an unavailable ``device=`` and a ``threads=`` beyond the CPUs: one line each;
* Ctrl-C during the final evaluation prints the command that finishes the run;
* messages that misled: a checkpoint reason cut mid-word and a missing ``.prev.pt`` suggested, the
  reason of an undecodable image, ``--out`` of an export, a refused YAML tag, a one-class image
  folder, a grid re-run with other epochs, the split of a linear probe's figures.
"""

from __future__ import annotations

import os
import pickle
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from siamgrad import checkpoint as ck
from siamgrad.cli import main
from siamgrad.config import build_config
from siamgrad.cpu import cap_threads
from siamgrad.data.bad_images import UnreadableImageWarning
from siamgrad.data.datasets import load_dataset
from siamgrad.data.decode import decode_image_bytes
from siamgrad.errors import CheckpointError, OneLineWarning
from siamgrad.eval.checkpoint import evaluate_checkpoint, format_result
from siamgrad.export import export_backbone
from siamgrad.train.loop import Trainer, train

from test_faults_io import ENV, TINY, _one_error_line, keep_threads  # noqa: F401 - keep_threads: autouse fixture

DIGITS = [*TINY, "batch_size=64", "epochs=1", "data.fraction=0.25"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny digits run: latest.pt, latest.prev.pt (the same last step), best.pt, results.json."""
    out = tmp_path_factory.mktemp("finished")
    run = train(build_config([*DIGITS, f"out_dir={out}", "run_name=r"]), log=False).run_dir
    assert {"latest.pt", "latest.prev.pt", "best.pt", "results.json"} <= {p.name for p in run.iterdir()}
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "out" / run.name
    shutil.copytree(run, dst)
    return dst


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# --------------------------------------------------------------------------------------------
# 1. export never writes over a run's files; eval and export fall back from a damaged latest.pt


def test_an_export_never_writes_over_a_run_folders_files(finished_run, tmp_path, capsys):
    run = _copy(finished_run, tmp_path)
    before = _files(run)
    # the weights file itself, a results.json beside the .pt (the export's JSON), a checkpoint name
    for out, named in [("latest.pt", "latest.pt"), ("best.pt", "best.pt"), ("latest.prev.pt", "latest.prev.pt"),
                       ("results.pt", "results.json"), ("metrics.pt", "metrics.pt")]:
        if out == "metrics.pt":
            (run / "metrics.pt").write_bytes(b"the user's own file")
            before = _files(run)
        err = _one_error_line(capsys, ["export", str(run), "--out", str(run / out)])
        assert f"{run / named}" in err and "run folder" in err, err
        assert f"{run / 'export'}" in err and "another path" in err, err
        assert _files(run) == before  # nothing in the run folder changed
    # a checkpoint copied elsewhere is not replaced either
    elsewhere = tmp_path / "keep"
    elsewhere.mkdir()
    shutil.copy(run / "latest.pt", elsewhere / "mine.pt")
    err = _one_error_line(capsys, ["export", str(run), "--out", str(elsewhere / "mine.pt")])
    assert "siamgrad checkpoint" in err and str(elsewhere / "mine.pt") in err
    assert (elsewhere / "mine.pt").read_bytes() == before["latest.pt"]
    # the export's own files (RUN/export/, or a fresh path) are written, and written again
    for _ in range(2):
        assert main(["export", str(run)]) == 0
        assert main(["export", str(run), "--out", str(run / "export" / "b.pt")]) == 0
        assert main(["export", str(run), "--out", str(tmp_path / "x" / "w.safetensors")]) == 0
    assert (run / "latest.pt").read_bytes() == before["latest.pt"]
    assert torch.load(run / "export" / "b.pt", weights_only=True)  # a plain tensor dict, the export's own


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 3])
    elif how == "garbage":
        path.write_bytes(b"\x00" + random.Random(how).randbytes(len(data) - 1))
    else:  # what an export over latest.pt used to leave: a plain tensor dict, no siamgrad checkpoint
        torch.save({"conv.weight": torch.zeros(2, 2)}, path)


@pytest.mark.parametrize("how", ["truncate", "garbage", "backbone-only"])
def test_eval_and_export_fall_back_from_a_damaged_latest_pt(finished_run, tmp_path, how):
    run = _copy(finished_run, tmp_path)
    _damage(run / "latest.pt", how)
    with pytest.warns(ck.CheckpointFallbackWarning, match="falling back to .*latest.prev.pt"):
        res = evaluate_checkpoint("knn", str(run), ["threads=1"], baselines=False)
    assert 0 <= res["knn_top1"] <= 100 and res["checkpoint_step"] == ck.load_checkpoint(run / "best.pt")["step"]
    with pytest.warns(ck.CheckpointFallbackWarning, match="latest.prev.pt"):
        exp = export_backbone(str(run))
    assert exp.weights.is_file() and exp.max_abs_diff is not None and exp.max_abs_diff < 1e-5


def test_the_fallback_warning_is_one_line_on_the_command_line(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    _damage(run / "latest.pt", "truncate")
    out = subprocess.run([sys.executable, "-m", "siamgrad", "export", str(run)], capture_output=True, text=True,
                         timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: checkpoint ") and "Traceback" not in out.stderr, lines
    assert "truncated or corrupt" in lines[0] and lines[0].endswith(f"falling back to {run / 'latest.prev.pt'}")
    assert "wrote " in out.stdout


# --------------------------------------------------------------------------------------------
# 2. a damaged or missing CIFAR test file


def _write_cifar10(folder: Path, per_batch: int = 8) -> None:
    """A tiny CIFAR-10 copy in the official python format (pickled dicts of a uint8 N x 3072 array)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [i % 4 for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, protocol=2))


CIFAR = ["backbone=tiny", "method.proj_hidden_dim=32", "method.proj_output_dim=16", "eval.knn_k=5",
         "progress=false", "threads=1", "diag.enabled=false", "eval.random_baseline=false", "batch_size=8",
         "epochs=1", "data=cifar10"]


@pytest.mark.parametrize("how", ["truncate", "garbage", "missing"])
def test_a_damaged_or_missing_cifar_test_file_is_named_in_one_line(tmp_path, capsys, how):
    root = tmp_path / "copy"
    _write_cifar10(root / "cifar-10-batches-py")
    test_batch = root / "cifar-10-batches-py" / "test_batch"
    settings = [*CIFAR, f"data.root={root}", f"out_dir={tmp_path / 'runs'}", "run_name=c"]
    capsys.readouterr()
    assert main(["train", *settings]) == 0  # the intact copy trains and is evaluated
    assert "trained n/a" not in capsys.readouterr().out
    data = test_batch.read_bytes()
    if how == "truncate":
        test_batch.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        test_batch.write_bytes(b"\x80\x02" + b"garbage" * 10)
    else:
        test_batch.unlink()
    # evaluating the run names the file, not "no test split"
    err = _one_error_line(capsys, ["eval", "knn", str(tmp_path / "runs" / "c")])
    assert "test_batch" in err and "no labeled" not in err, err
    # and so does training on the damaged copy, as for a damaged training batch
    err = _one_error_line(capsys, ["train", *settings, "run_name=d"])
    assert "test_batch" in err and str(test_batch.parent) in err, err
    assert ("missing test_batch" in err) if how == "missing" else ("truncated or corrupt" in err), err
    assert not (tmp_path / "runs" / "d").exists()


# --------------------------------------------------------------------------------------------
# 3. a damaged results.json


def test_a_damaged_results_json_is_kept_and_the_training_summary_written_again(finished_run, tmp_path, capsys):
    run = _copy(finished_run, tmp_path)
    cfg = build_config([*DIGITS, f"out_dir={run.parent}", "run_name=r"])
    damaged = b'{"step": 5, "knn_accuracy": 71.2, "eval": {"kn'
    (run / "results.json").write_bytes(damaged)
    with pytest.warns(OneLineWarning, match=r"is damaged .*kept it as results\.json\.damaged-"):
        evaluate_checkpoint("knn", str(run), ["threads=1"], baselines=False)
    kept = sorted(run.glob("results.json.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == damaged  # what was there is beside the new file
    assert "step" not in ck.read_json_keeping_damaged(run / "results.json")[0]

    # the same train command: the summary is written again, the evaluation of this checkpoint kept
    capsys.readouterr()
    res = train(cfg, log=True)
    err = capsys.readouterr().err
    assert "holds no training summary" in err and "already finished" not in err, err
    results = ck.read_json_keeping_damaged(run / "results.json")[0]
    assert res.knn_accuracy is not None and results["step"] == res.step and "knn" in results["eval"]
    from siamgrad.report.summary import train_summary

    assert "trained n/a" not in train_summary(run, res.knn_accuracy, None, None)

    # damaged again, then trained: kept aside and said in one line, the summary written again
    (run / "results.json").write_bytes(b"\x00\x01 not json")
    capsys.readouterr()
    res = train(cfg, log=True)
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "results.json" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: ") and "is damaged" in warning[0], err
    assert len(list(run.glob("results.json.damaged-*"))) == 2 and res.knn_accuracy is not None
    assert ck.read_json_keeping_damaged(run / "results.json")[0]["knn_accuracy"] == res.knn_accuracy


# --------------------------------------------------------------------------------------------
# 4. and 5. device= and threads=


def test_an_unavailable_device_is_one_line_naming_the_devices(finished_run, tmp_path, capsys):
    asked = ["bogus", "cuda:7"] + ([] if torch.backends.mps.is_available() else ["mps"])
    for device in asked:
        err = _one_error_line(capsys, ["train", *DIGITS, f"device={device}", f"out_dir={tmp_path}", "run_name=x"])
        assert err.startswith(f"error: device={device}: ") and "devices on this machine: cpu" in err, err
        err = _one_error_line(capsys, ["eval", "knn", str(finished_run), f"device={device}"])
        assert f"device={device}" in err and "devices on this machine: cpu" in err, err
    assert not (tmp_path / "x").exists()


def test_threads_beyond_the_cpus_are_capped_with_a_one_line_warning(finished_run, tmp_path, capsys):
    assert cap_threads(2, cpus=2) == (2, None)
    n, note = cap_threads(999, cpus=2)
    assert n == 2 and "threads=999" in note and "2 CPU(s)" in note and "\n" not in note
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    capsys.readouterr()
    Trainer(build_config([*DIGITS, "threads=999", f"out_dir={tmp_path}", "run_name=t"]), log=True)
    assert torch.get_num_threads() == min(999, cpus)
    lines = [line for line in capsys.readouterr().err.splitlines() if "threads=999" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: threads=999 is more than"), lines
    torch.set_num_threads(1)
    run = _copy(finished_run, tmp_path)
    with pytest.warns(OneLineWarning, match="threads=999"):
        evaluate_checkpoint("knn", str(run), ["threads=999"], baselines=False, write=False)
    assert torch.get_num_threads() == min(999, cpus)


# --------------------------------------------------------------------------------------------
# 6. Ctrl-C during the final evaluation


def test_ctrl_c_during_the_final_evaluation_prints_the_command_that_finishes_it(tmp_path, capsys, monkeypatch):
    real = Trainer.knn

    def interrupted_at_the_end(self, backbone=None):
        if self.step == self.total_steps:  # the final evaluation (epochs=1 has no other)
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(500):  # the handler raises KeyboardInterrupt at the next check
                time.sleep(0.01)
        return real(self, backbone)

    monkeypatch.setattr(Trainer, "knn", interrupted_at_the_end)
    capsys.readouterr()
    code = main(["train", *DIGITS, f"out_dir={tmp_path}", "run_name=r"])
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGINT, err
    assert "nothing was saved" not in err and "Traceback" not in err, err
    line = next(line for line in err.splitlines() if "final evaluation was interrupted" in line)
    assert line.startswith("training finished at step 5 ") and "finish it with: siamgrad train " in line, line
    state = ck.load_checkpoint(tmp_path / "r" / "latest.pt")
    assert state["step"] == state["total_steps"] == 5 and not (tmp_path / "r" / "results.json").exists()
    monkeypatch.undo()
    words = shlex.split(line.split("finish it with: ", 1)[1])
    assert words[:2] == ["siamgrad", "train"] and "resume=true" in words
    done = train(build_config(words[2:]), log=False)  # the printed command's settings
    assert done.step == 5 and done.knn_accuracy is not None
    assert ck.read_json_keeping_damaged(tmp_path / "r" / "results.json")[0]["step"] == 5


# --------------------------------------------------------------------------------------------
# 7. messages that misled


def test_a_truncated_best_pt_gives_a_whole_reason_and_only_files_that_exist(finished_run, tmp_path, capsys):
    run = _copy(finished_run, tmp_path)
    best = run / "best.pt"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 3])
    with pytest.raises(CheckpointError) as e:
        ck.load_checkpoint(best)
    msg = str(e.value)
    assert "truncated or corrupt (" in msg and "\n" not in msg
    reason = msg.split("truncated or corrupt (", 1)[1].split(")", 1)[0]
    assert "miniz" not in reason and "If you" not in reason and not reason.endswith(" If yo"), reason
    assert reason.endswith(("directory", "argument")), reason  # a whole phrase: torch's first sentence
    assert "best.prev.pt" not in msg and msg.endswith("; use latest.pt beside it or retrain"), msg
    err = _one_error_line(capsys, ["eval", "knn", str(best)])
    assert "best.prev.pt" not in err and "use latest.pt beside it" in err, err
    # nothing beside it: retrain
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(best, alone / "best.pt")
    with pytest.raises(CheckpointError, match=r"; retrain \(no other checkpoint is beside it\)$"):
        ck.load_checkpoint(alone / "best.pt")


def test_a_text_file_named_jpg_is_called_not_an_image(tmp_path):
    with pytest.raises(ValueError) as e:
        decode_image_bytes(b"meeting notes, not a picture\n")
    assert "not an image file" in str(e.value) and "decode_avif" not in str(e.value), str(e.value)
    from PIL import Image

    for i in range(3):
        (tmp_path / "imgs" / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(tmp_path / "imgs" / "a" / f"{i}.png")
    (tmp_path / "imgs" / "a" / "notes.jpg").write_text("meeting notes, not a picture\n")
    with pytest.warns(UnreadableImageWarning) as seen:
        ds = load_dataset("imagefolder", str(tmp_path / "imgs"), "train", image_size=8, max_bad_fraction=0.5)
    assert len(ds) == 3
    msg = str(seen[0].message)
    assert "notes.jpg (not an image file: no known image format starts with the bytes b'meeting '" in msg, msg
    assert "decode_avif" not in msg


needs_mount = pytest.mark.skipif(
    shutil.which("unshare") is None or subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True).returncode != 0,
    reason="mounting a tmpfs in a private namespace is not allowed here")


@needs_mount
def test_an_export_to_a_read_only_folder_names_the_out_option(finished_run, tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    cmd = [sys.executable, "-m", "siamgrad", "export", str(finished_run), "--out", str(mnt / "x" / "w.safetensors")]
    script = 'mount -t tmpfs -o ro tmpfs "$1" || exit 99; shift; exec "$@"'
    out = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(mnt), *cmd], capture_output=True,
                         text=True, timeout=300, env=ENV)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write {mnt}/x") and "read-only file system" in last, last
    assert last.endswith("point --out at a writable folder") and "out_dir" not in last, last


def test_a_python_yaml_tag_is_refused_as_unsafe_not_called_a_syntax_error(tmp_path, capsys):
    f = tmp_path / "evil.yaml"
    f.write_text('epochs: !!python/object/apply:os.system ["echo hi"]\n')
    err = _one_error_line(capsys, ["config", f"config={f}"])
    assert "YAML tag !!python/object/apply:os.system at line 1" in err and "refused" in err, err
    assert "safe loading only" in err and "fix its syntax" not in err, err
    f.write_text("epochs: [1,\n  method: {")  # a real syntax error keeps its words
    assert "is not valid YAML" in _one_error_line(capsys, ["config", f"config={f}"])


def test_a_one_class_image_folder_says_knn_needs_two_classes(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 4)):
        (tmp_path / "imgs" / split / "cat").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / split / "cat" / f"{i}.png")
    settings = [*TINY, "eval.random_baseline=true", "data=imagefolder", f"data.root={tmp_path / 'imgs'}",
                "data.image_size=16", "batch_size=8", "epochs=1", "eval.knn_k=5", f"out_dir={tmp_path}",
                "run_name=one", "data.workers=0"]
    capsys.readouterr()
    assert main(["train", *settings]) == 0
    out = capsys.readouterr()
    warning = [line for line in out.err.splitlines() if "two classes" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: kNN needs labeled data with two classes or more")
    assert "('cat')" in warning[0], warning
    assert "train longer" not in out.out and "100.00%" not in out.out, out.out
    err = _one_error_line(capsys, ["eval", "knn", str(tmp_path / "one")])
    assert "kNN needs labeled data with two classes or more" in err and "add images of other classes" in err, err


def test_a_grid_rerun_with_other_epochs_says_to_delete_the_folder_or_use_out(tmp_path, capsys, monkeypatch):
    from siamgrad.experiments import grids

    exp = grids.Experiment("toy", sizes={"cpu": [*TINY, "batch_size=64", "epochs=2", "data.fraction=0.25"]},
                           runs=[("a", ["method=simclr"])])
    monkeypatch.setitem(grids.EXPERIMENTS, "toy_epochs", exp)
    assert main(["reproduce", "toy_epochs", "epochs=1", "--out", str(tmp_path)]) == 0
    err = _one_error_line(capsys, ["reproduce", "toy_epochs", "--out", str(tmp_path)])
    folder = tmp_path / "toy_epochs-cpu" / "a"
    assert f"run folder '{folder}' holds a checkpoint for 5 steps, the grid's run takes 10" in err, err
    assert "delete that folder" in err and "another --out" in err and "resume with the same" not in err, err


def test_a_linear_probe_on_the_val_split_labels_its_figures_val(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    res = evaluate_checkpoint("linear", str(run), ["threads=1", "eval.linear_epochs=5"], split="val")
    assert {"linear_val_top1", "linear_val_top1_random_init", "linear_val_top1_raw_pixels"} <= res.keys()
    assert not [k for k in res if "test" in k], res.keys()
    assert "linear_val_top1: " in format_result("linear", res)
    from siamgrad.report import rundata
    from siamgrad.report.html import evaluation_rows

    # the run's own end put the test split's linear probe there too: the val row is labelled val
    rows = [r for r in evaluation_rows(rundata.load_run(run)) if r[0] == "linear probe" and r[1] == "val"]
    assert rows and rows[0][2] == f"{res['linear_val_top1']:.2f}", rows
