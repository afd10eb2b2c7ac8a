"""Fault tolerance: SIGKILL and restart, corrupt checkpoints, NaN/Inf losses, bad inputs and configs.

* SIGKILL: a real ``python -m siamgrad train`` process is killed with ``kill -9`` three times at
  different points of one run (each time after a checkpoint exists; the kills land wherever the
  process happens to be: a step, an epoch-end evaluation, a checkpoint write) and restarted with
  the same command each time; the final weights and optimizer state equal those of an
  uninterrupted run bit for bit, and the metrics hold each step exactly once.
* corrupt checkpoints: ``latest.pt`` truncated or overwritten with garbage -> the run resumes from
  ``latest.prev.pt`` with a one-line warning and still ends with the uninterrupted weights; both
  bad -> one ``error:`` line naming both; a checkpoint of another model -> one line.
* NaN/Inf: ``on_nan=skip`` skips and counts (parameters untouched by a skipped step),
  ``on_nan=stop`` stops with the step number and an intact checkpoint, for NaN and Inf, also
  from a real divergence on the command line; ``max_bad_steps`` bounds consecutive skips.
* bad inputs: images of the wrong shape/dtype/device to ImageDataset and training_step, empty
  datasets, data roots in another format than claimed, malformed configs (fuzzed on the command
  line with hypothesis): one-line SiamgradErrors, ``error: ...`` and exit status 2 on the command
  line, never a traceback.
"""

from __future__ import annotations

import os
import random
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from siamgrad import checkpoint as ck
from siamgrad import methods
from siamgrad.cli import main
from siamgrad.config import build_config
from siamgrad.data.datasets import load_dataset
from siamgrad.data.in_memory import ImageDataset, channel_stats
from siamgrad.errors import DataError, SiamgradError, TrainingError
from siamgrad.data.batches import InMemoryBatches
from siamgrad.train.loop import Trainer, read_metrics, train

# threads=1: on a loaded 2-core machine one thread per process is many times faster
TINY = ["backbone=tiny", "method.proj_hidden_dim=32", "method.proj_output_dim=16", "eval.knn_k=20",
        "progress=false", "threads=1", "diag.report=false", "diag.batch=64", "eval.random_baseline=false"]


@pytest.fixture(autouse=True)
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _cfg(tmp_path: Path, *extra: str):
    return build_config(TINY + ["batch_size=64", "epochs=1", "data.fraction=0.5", f"out_dir={tmp_path}", *extra])


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for part in ("method", "probe"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k}"
    fa, fb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert fa.keys() == fb.keys()
    for i in fa:
        for k in fa[i]:
            assert torch.equal(torch.as_tensor(fa[i][k]), torch.as_tensor(fb[i][k])), f"optimizer {i}.{k}"


# --------------------------------------------------------------------------------------------
# SIGKILL and restart


def _logged_step(run_dir: Path) -> int:
    steps = [r["step"] for r in read_metrics(run_dir) if "loss" in r]
    return max(steps, default=0)


def test_sigkill_three_times_then_resume_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    # 337 images / 32 = 10 steps per epoch, 30 steps; a checkpoint every 2 steps and at epoch ends
    args = [*TINY, "batch_size=32", "epochs=3", "data.fraction=0.25", "log_every=1", "checkpoint_every=2",
            f"out_dir={tmp_path}"]
    cmd = [sys.executable, "-m", "siamgrad", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = subprocess.Popen([*cmd, "run_name=straight"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
    run_dir = tmp_path / "killed"
    kills, resumed_at = [], []
    for target in (3, 12, 22):  # early in epoch 1, just after the first epoch end, late in epoch 3
        proc = subprocess.Popen([*cmd, "run_name=killed"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        deadline = time.monotonic() + 240
        while _logged_step(run_dir) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before the kill at step {target}: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        if kills:
            assert "resumed from" in err
            resumed_at.append(int(err.split("resumed from", 1)[1].split("at step", 1)[1].split()[0]))
        # never a half-written or missing checkpoint: a kill between "latest.pt -> latest.prev.pt" and
        # "new -> latest.pt" once left only latest.prev.pt; the old file is now hard-linked to
        # latest.prev.pt first, so latest.pt exists at every instant of a write
        state = ck.load_checkpoint(run_dir / "latest.pt")
        kills.append((_logged_step(run_dir), state["step"]))
    final = subprocess.run([*cmd, "run_name=killed"], capture_output=True, text=True, timeout=240, env=env)
    assert final.returncode == 0, final.stderr[-3000:]
    out, err = straight.communicate(timeout=240)
    assert straight.returncode == 0, err[-3000:]

    # every restart resumed from the checkpoint the previous kill left, and lost no step
    assert [ckpt_step for _, ckpt_step in kills[:2]] == resumed_at
    assert f"at step {kills[-1][1]}" in final.stderr
    assert all(0 < ckpt_step <= logged for logged, ckpt_step in kills)
    assert kills[0][0] >= 3 and kills[1][0] >= 12 and kills[2][0] >= 22
    a, b = ck.load_checkpoint(tmp_path / "straight" / "latest.pt"), ck.load_checkpoint(run_dir / "latest.pt")
    assert a["step"] == b["step"] == 30
    _assert_same_state(a, b)
    assert [r["step"] for r in read_metrics(run_dir) if "loss" in r] == list(range(1, 31))
    assert (run_dir / "results.json").is_file()


# --------------------------------------------------------------------------------------------
# corrupt checkpoints


def test_corrupt_latest_falls_back_to_previous_and_still_ends_with_same_weights(tmp_path, capsys) -> None:
    full = train(_cfg(tmp_path, "run_name=full"), log=False)
    for damage in ("truncate", "garbage"):
        name = f"part-{damage}"
        part = train(_cfg(tmp_path, f"run_name={name}", "stop_after=5", "checkpoint_every=2"), log=False)
        latest = part.run_dir / "latest.pt"
        assert ck.load_checkpoint(latest)["step"] == 5 and ck.load_checkpoint(ck.previous_path(latest))["step"] == 4
        data = latest.read_bytes()
        # garbage starts with a byte that is no pickle opcode: random bytes that happen to begin with
        # GLOBAL would be refused as unsafe rather than reported as corrupt (also a fallback, other words)
        garbage = b"\x00" + random.Random(damage).randbytes(len(data) - 1)
        latest.write_bytes(data[: len(data) // 3] if damage == "truncate" else garbage)
        capsys.readouterr()
        done = train(_cfg(tmp_path, f"run_name={name}"), log=True)
        err = capsys.readouterr().err
        warning = next(line for line in err.splitlines() if line.startswith("warning:"))
        assert "truncated or corrupt" in warning and "latest.prev.pt" in warning
        assert "resumed from" in err and "latest.prev.pt at step 4" in err
        assert done.step == full.step
        _assert_same_state(ck.load_checkpoint(full.run_dir / "latest.pt"), ck.load_checkpoint(latest))


def test_both_checkpoints_bad_is_one_line_naming_both(tmp_path, capsys) -> None:
    part = train(_cfg(tmp_path, "run_name=bad", "stop_after=3", "checkpoint_every=1"), log=False)
    latest = part.run_dir / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:100])
    ck.previous_path(latest).write_bytes(b"\0" * 50)
    capsys.readouterr()
    assert main(["train", *[a for a in TINY], "batch_size=64", "epochs=1", "data.fraction=0.5",
                 f"out_dir={tmp_path}", "run_name=bad"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "'latest.pt' and 'latest.prev.pt'" in err and "both unreadable" in err


def test_checkpoint_of_another_model_is_one_line(tmp_path, capsys) -> None:
    train(_cfg(tmp_path, "run_name=other", "stop_after=2"), log=False)
    capsys.readouterr()
    code = main(["train", *TINY, "batch_size=64", "epochs=1", "data.fraction=0.5", f"out_dir={tmp_path}",
                 "run_name=other", "method.proj_output_dim=8"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err
    assert "does not fit this model" in err and "config.yaml" in err


# --------------------------------------------------------------------------------------------
# NaN / Inf


def _poison(trainer: Trainer, bad: dict[int, float]) -> None:
    """Make the loss of the given (0-based) steps NaN/Inf: multiply it by the value (graph kept)."""
    real = trainer.method.training_step

    def poisoned(views):
        loss, logs = real(views)
        return (loss * bad[trainer.step] if trainer.step in bad else loss), logs

    trainer.method.training_step = poisoned


def test_skip_skips_and_counts_nan_and_inf(tmp_path) -> None:
    t = Trainer(_cfg(tmp_path, "run_name=skip", "on_nan=skip", "log_every=1"), log=False)
    _poison(t, {3: float("nan"), 6: float("inf")})
    seen: dict[int, tuple[dict, dict]] = {}
    real_step = t.train_step

    def watched(images, labels):
        before = {k: v.clone() for k, v in t.method.named_parameters()}
        out = real_step(images, labels)
        seen[t.step] = (before, {k: v.clone() for k, v in t.method.named_parameters()})
        return out

    t.train_step = watched
    res = t.fit()
    assert res.step == t.total_steps == 10 and t.skipped_steps == 2
    for step in (3, 6):  # a skipped step leaves every parameter as it was
        before, after = seen[step]
        assert all(torch.equal(before[k], after[k]) for k in before)
    before, after = seen[4]
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(p).all() for p in t.method.parameters())
    recs = read_metrics(t.run_dir)
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3, 5, 6, 8, 9, 10]
    assert [r["skipped_steps"] for r in recs if "skipped_steps" in r and "loss" not in r] == [1, 2]
    state = ck.load_checkpoint(t.run_dir / "latest.pt")
    assert state["skipped_steps"] == 2


@pytest.mark.parametrize("value,word", [(float("inf"), "inf"), (float("nan"), "nan")])
def test_stop_names_the_step_and_keeps_the_last_checkpoint(tmp_path, value, word) -> None:
    t = Trainer(_cfg(tmp_path, f"run_name=stop-{word}", "checkpoint_every=1"), log=False)
    _poison(t, {4: value})
    with pytest.raises(TrainingError) as e:
        t.fit()
    msg = str(e.value)
    assert f"loss is {word} at step 4" in msg and "\n" not in msg and "latest.pt" in msg
    state = ck.load_checkpoint(t.run_dir / "latest.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())


def test_consecutive_bad_steps_beyond_the_limit_stop(tmp_path) -> None:
    t = Trainer(_cfg(tmp_path, "run_name=limit", "on_nan=skip", "max_bad_steps=2"), log=False)
    _poison(t, {2: float("nan"), 3: float("inf"), 4: float("nan")})
    with pytest.raises(TrainingError, match="at step 4"):
        t.fit()
    assert t.skipped_steps == 2


def test_real_divergence_stops_on_the_command_line(tmp_path) -> None:
    out = subprocess.run([sys.executable, "-m", "siamgrad", "train", *TINY, "batch_size=64", "epochs=1",
                          "data.fraction=0.5", "optim.lr=1e30", "optim.warmup_epochs=0", "checkpoint_every=1",
                          f"out_dir={tmp_path}", "run_name=diverge"], capture_output=True, text=True, timeout=240,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: loss is") and " at step " in last and "Traceback" not in out.stderr
    step = int(last.split(" at step ")[1].split(";")[0])
    if step > 0:
        assert ck.load_checkpoint(tmp_path / "diverge" / "latest.pt")["step"] == step


# --------------------------------------------------------------------------------------------
# bad images and datasets


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg.strip() and "\n" not in msg, msg
    return msg


def test_images_of_wrong_shape_or_dtype_are_one_line_errors() -> None:
    good = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    for images, fragment in [
        (torch.zeros(4, 3, 8, 8), "uint8"),
        (torch.zeros(4, 3, 8, dtype=torch.uint8), "uint8 tensor [N, 3, H, W]"),
        (torch.zeros(4, 1, 8, 8, dtype=torch.uint8), "3 channels"),
        (torch.zeros(4, 3, 8, 6, dtype=torch.uint8), "square"),
        (np.zeros((4, 3, 8, 8), dtype=np.uint8), "uint8 tensor"),
    ]:
        with pytest.raises(DataError) as e:
            ImageDataset(images, None, [], "x")
        assert fragment in _one_line(e)
    with pytest.raises(DataError) as e:
        ImageDataset(good, torch.zeros(3, dtype=torch.long), ["a"], "x")
    assert "one entry per image" in _one_line(e)

    torch.manual_seed(0)
    from siamgrad.models.backbones import build_backbone

    backbone, dim = build_backbone("tiny")
    m = methods.build("simclr", backbone, dim, proj_hidden_dim=16, proj_output_dim=8)
    v = torch.randn(4, 3, 8, 8)
    for views, fragment in [
        ([v.to(torch.uint8), v.to(torch.uint8)], "float tensors"),
        ([v[:, :1], v[:, :1]], "1 channels but the backbone takes 3"),
        ([v[0], v[0]], "image batches [N, C, H, W]"),
        ([v.double(), v.double()], "views are torch.float64 but the model is torch.float32"),
        ([v, v.double()], "same dtype"),
        ([v, v[:2]], "same batch size"),
        ([v[:1], v[:1]], "at least 2 images"),
        ([v], "at least 2 view"),
        ("images", "at least 2 view"),
    ]:
        with pytest.raises(SiamgradError) as e:
            m.training_step(views)
        assert fragment in _one_line(e), fragment


def test_empty_datasets_are_one_line_errors(tmp_path) -> None:
    empty = ImageDataset(torch.zeros(0, 3, 8, 8, dtype=torch.uint8), None, [], "empty")
    with pytest.raises(DataError) as e:
        channel_stats(empty)
    assert "empty" in _one_line(e)
    with pytest.raises(SiamgradError) as e:
        InMemoryBatches(empty, torch.device("cpu"), 8, seed=0)
    assert "0 images" in _one_line(e)
    folder = tmp_path / "imgs" / "cat"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", str(tmp_path / "imgs"), "train", image_size=16)
    assert "is empty" in _one_line(e)


def _write_png(path: Path, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path)


def _write_cifar10(folder: Path) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                            "truck"]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def _cli_error(capsys, *args: str) -> str:
    capsys.readouterr()
    assert main(["train", *TINY, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_data_roots_in_another_format_than_claimed(tmp_path, capsys) -> None:
    images = tmp_path / "photos"
    for i in range(4):
        _write_png(images / ("a" if i % 2 else "b") / f"{i}.png", i)
    cifar = tmp_path / "cifar-10-batches-py"
    _write_cifar10(cifar)
    assert len(load_dataset("cifar10", str(tmp_path), "train")) == 20  # the fake copy is itself valid
    assert "CIFAR-10 train files not found" in _cli_error(capsys, "data=cifar10", f"data.root={images}")
    assert "STL-10" in _cli_error(capsys, "data=stl10", f"data.root={tmp_path}")
    assert "CIFAR-100" in _cli_error(capsys, "data=cifar100", f"data.root={tmp_path}")
    assert "is empty" in _cli_error(capsys, "data=imagefolder", f"data.root={cifar}")
    (cifar / "data_batch_2").write_bytes(b"\x80\x02garbage")
    assert "data_batch_2" in _cli_error(capsys, "data=cifar10", f"data.root={tmp_path}")
    assert "does not exist" in _cli_error(capsys, "data=imagefolder", f"data.root={tmp_path / 'nowhere'}")


def test_config_mistakes_print_one_line(tmp_path, capsys) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("epochs: [1,\n  method: {")
    # the real interpreter: nothing but the error line on stderr
    for args, fragment in [([f"config={bad_yaml}", "method=nope"], "is not valid YAML")]:
        out = subprocess.run([sys.executable, "-m", "siamgrad", "train", *TINY, f"out_dir={tmp_path}", *args],
                             capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert out.returncode == 2, (args, out.stderr[-2000:])
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], (args, out.stderr)
    assert build_config(["optim.lr=1e-3"]).optim.lr == 1e-3  # YAML 1.1 reads 1e-3 as text; still a number
    for args, fragment in [
        (["method=nope"], "unknown method 'nope'"),
        (["epochs=-3"], "epochs: -3 is out of range"),
        (["optim.lr=abc"], "optim.lr: expected a number"),
        (["method=simclr", "method.temperature=0"], "method.temperature=0"),
        (["method=moco", "method.queue_size=2.5"], "method.queue_size=2.5"),
        (["batch_size=100000"], "larger than the training set"),
        (["augment.n_views=1"], "augment.n_views: 1 is out of range"),
        (["backbone=resnet999"], "unknown backbone"),
        (["augment.preset=nope"], "unknown preset"),
        (["data=mnist"], "data.name: 'mnist' is not valid"),
    ]:
        assert fragment in _cli_error(capsys, f"out_dir={tmp_path}", *args), args


KEYS = ["epochs", "batch_size", "optim.lr", "optim.name", "method", "method.lam", "method.momentum", "data",
        "data.fraction", "augment.n_views", "augment.scale", "eval.knn_k", "on_nan", "resume", "seed",
        "sync_bn", "precision", "nonsense", "optim", "diag.every", "method.temperature", "threads"]
VALUES = st.one_of(
    st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "null", "true", "no", "[1, 2]", "[0.2, 1.0]", "{a: 1}", "simclr", "byol", "vicreg",
                     "sgd", "lars", "bf16", "auto", ".nan", "-.inf", "[", "]:", "'x", "~"]),
    st.text(max_size=12),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4))
def test_fuzzed_command_lines_print_a_config_or_one_error_line(capsys, pairs) -> None:
    capsys.readouterr()
    code = main(["config", *[f"{k}={v}" for k, v in pairs]])
    out = capsys.readouterr()
    if code == 0:
        assert out.out.strip() and not out.err.strip()
    else:
        assert code == 2 and out.err.startswith("error: ") and out.err.count("\n") == 1, out.err
