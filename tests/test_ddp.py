"""Two CPU processes (gloo, DDP) with half batches train exactly as one process with the whole batch.

For every method (8), and for four of them with multi-crop and CutMix (2 global and 2 local crops,
a mixed copy of each global crop), the trainer runs 2 steps of the same config (global ``batch_size=16``, SGD
with momentum, the online probe on) once in one process and once in 2 processes launched as torchrun
does (``RANK``/``WORLD_SIZE``/``MASTER_*`` in the environment; the trainer joins the gloo group
itself) with ``sync_bn=true``: the tiny ResNet backbone and the projector/predictor heads keep their
batch norm, normalized over the global batch by :class:`siamgrad.distributed.GlobalBatchNorm`.

The models run in float64 (default dtype float64; the augmentation stays float32 and is the same in
both, so the comparison sees the distributed computation and not float32 rounding, which alone
moves 2-step updates by up to ~1e-3 relative). Tolerances:

* the logged loss of both steps (the mean of the ranks' losses): relative difference <= 1e-10;
* the parameter update ``w_2 - w_0`` of every floating tensor of the method (backbone, heads,
  momentum encoder) and of the probe: ``||d_2proc - d_1proc|| <= 1e-9 ||d_1proc|| + 1e-12``; the
  other floating state (batch-norm statistics, F matrices, MoCo queue) to ``rtol=1e-9, atol=1e-12``;
  integer state (pointers, counters) exactly. (Observed: about 1e-12 and below.)

A control run without ``sync_bn`` (batch norm over each rank's half) misses these tolerances by far,
which shows the comparison can fail. A NaN loss on one rank only makes every rank skip that step
(``on_nan=skip``) and the run goes on without a hang; ranks that find different checkpoints (an
``out_dir`` not shared by all nodes) stop with one line instead of training apart.

Resume with another number of processes (float64, same tolerances): a run begun by one process
(4 steps), continued by 2 (to step 8, across an epoch end), finished by one (step 12) ends with the
weights of an uninterrupted one-process run. Through the real command line (float32): a run begun
by ``torchrun --nproc_per_node=2 -m siamgrad train`` (diagnostics and kNN at an epoch end) and
finished by ``python -m siamgrad train`` (1 process) with the same settings.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from siamgrad import checkpoint as ck
from siamgrad import methods
from siamgrad.config import build_config
from siamgrad.errors import ConfigError
from siamgrad.train.loop import Trainer, read_metrics, train

pytestmark = pytest.mark.skipif(not dist.is_available() or sys.platform == "win32",
                                reason="needs torch.distributed with gloo")

WORLD = 2
LOSS_RTOL = 1e-10
UPDATE_RTOL, UPDATE_ATOL = 1e-9, 1e-12
STATE_RTOL, STATE_ATOL = 1e-9, 1e-12

COMMON = ["backbone=tiny", "batch_size=16", "epochs=1", "stop_after=2", "log_every=1",
          "method.proj_hidden_dim=16", "method.proj_output_dim=8", "progress=false",
          "diag.enabled=false", "eval.random_baseline=false", "optim.warmup_epochs=0",
          "optim.lr=2.0", "data.fraction=0.5", "sync_bn=true", "threads=1"]
# 110 images: 6 steps per epoch, 12 in all; no kNN on the way (eval.every=0, ends by stop_after)
MIXED = ["method=byol", "method.pred_hidden_dim=8", "data.fraction=0.08", "epochs=2", "eval.every=0"]


# multi-crop (2 global 16 px crops, 2 local 8 px crops) and CutMix: the local crops' per-view batch
# norm, the mixed images' partners and the mixed targets' partners cross the processes
_MULTICROP = ["augment.local_crops=2", "augment.local_size=8", "augment.mix=cutmix"]
MULTICROP = {
    "mc-unigrad": ["method=unigrad", *_MULTICROP],
    "mc-simclr": ["method=simclr", *_MULTICROP],  # target none: the mixed positive carries a gradient
    "mc-byol": ["method=byol", "method.pred_hidden_dim=8", "method.local_predictor=true", *_MULTICROP],
    "mc-barlow_twins": ["method=barlow_twins", *_MULTICROP],
}


def _method_args(name: str) -> list[str]:
    args = [f"method={name}"]
    if "pred_hidden_dim" in methods.default_options(name):
        args.append("method.pred_hidden_dim=8")
    if name == "moco":
        # the key shuffle is drawn per process count (a local permutation on one process, the
        # official cross-process one under torchrun), so equality across counts needs it off
        args += ["method.queue_size=64", "method.shuffle_bn=false"]
    return args


def _config(out_dir: Path, run_name: str, *extra: str):
    return build_config(COMMON + [f"out_dir={out_dir}", f"run_name={run_name}", *extra])


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _worker(rank: int, ports: list[int], jobs: list[tuple[str, list[str]]], out_dir: str) -> None:
    """One rank of torchrun-like jobs: the trainer initializes the process group from the environment.

    Each job gets a fresh rendezvous port (a torchrun process joins one group in its life; here
    one process runs several jobs in a row)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    for port, (run_name, extra) in zip(ports, jobs):
        os.environ["MASTER_PORT"] = str(port)
        if run_name == "split-fs":  # as if rank 1 ran on a node that does not see rank 0's out_dir
            where = Path(out_dir) / "elsewhere" if rank == 1 else Path(out_dir)
            t = Trainer(_config(where, "ddp-simclr", *extra), log=False)
            with pytest.raises(ConfigError, match="processes found different checkpoints.*every node sees"):
                t.fit()
            t.close()
            continue
        t = Trainer(_config(Path(out_dir), run_name, *extra), log=False)
        assert (t.rank, t.world) == (rank, WORLD) and dist.is_initialized()
        first = t.step
        if run_name == "ddp-nan" and rank == 1:  # a NaN loss at step 1 on rank 1 only
            real = t.method.training_step
            t.method.training_step = lambda views: (lambda out: (out[0] * (float("nan") if t.step == 1 else 1.0),
                                                                 out[1]))(real(views))
        t.fit()
        assert (t.run_dir / "latest.pt").exists()  # rank 0 wrote it before the final barrier
        # only rank 0 writes: exactly one metrics record per step (but skipped ones)
        skipped = [2] if run_name == "ddp-nan" else []
        assert [r["step"] for r in read_metrics(t.run_dir) if "loss" in r][first:] == [
            s for s in range(first + 1, t.step + 1) if s not in skipped]
        assert t.skipped_steps == len(skipped)  # every rank skipped the step together (and nothing hung)
        t.close()
        assert not dist.is_initialized()


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One spawn of 2 processes for all the 2-process jobs (process start-up dominates the time)."""
    out = tmp_path_factory.mktemp("ddp")
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        # the mixed run's first part: one process, 4 steps
        part = train(_config(out, "mixed", *MIXED, "stop_after=4"), log=False)
        assert part.step == 4
        jobs = [(f"ddp-{n}", _method_args(n)) for n in methods.available()]
        jobs.append(("ddp-nosync-simclr", [*_method_args("simclr"), "sync_bn=false"]))
        jobs.append(("split-fs", [*_method_args("simclr"), "stop_after=4"]))  # changes nothing
        jobs.append(("mixed", [*MIXED, "stop_after=8"]))  # its second part: 2 processes
        jobs.append(("ddp-nan", [*_method_args("simclr"), "on_nan=skip", "stop_after=3"]))
        jobs += [(f"ddp-{label}", args) for label, args in MULTICROP.items()]
        mp.spawn(_worker, args=(_free_ports(len(jobs)), jobs, str(out)), nprocs=WORLD, join=True)
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
    return out


def _update_error(d_ddp: torch.Tensor, d_one: torch.Tensor) -> float:
    """``||d_ddp - d_one|| / (||d_one|| + atol/rtol)`` -- at most ``UPDATE_RTOL`` when they agree."""
    return float((d_ddp - d_one).double().norm() / (d_one.double().norm() + UPDATE_ATOL / UPDATE_RTOL))


def _compare(w0: dict, one: dict, ddp: dict, what: str) -> list[str]:
    """Mismatches between two final states given the initial one (empty list: equivalent)."""
    bad = []
    for k, a in one.items():
        b = ddp[k]
        if not a.is_floating_point():
            if not torch.equal(a, b):
                bad.append(f"{what}.{k} differs")
        elif k in w0 and not k.endswith(("running_mean", "running_var")) and not k.startswith("state."):
            err = _update_error(b - w0[k], a - w0[k])
            if err > UPDATE_RTOL:
                bad.append(f"{what}.{k}: relative update error {err:.2e}")
        elif not torch.allclose(a.double(), b.double(), rtol=STATE_RTOL, atol=STATE_ATOL):
            bad.append(f"{what}.{k}: max |diff| {float((a - b).abs().max()):.2e}")
    return bad


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if "loss" in r]


def test_two_processes_match_one_process_for_every_method(runs: Path, float64, keep_threads) -> None:
    names = methods.available()
    assert len(names) == 8
    failures = []
    for name in names:
        t = Trainer(_config(runs, f"one-{name}", *_method_args(name)), log=False)
        w0 = {k: v.clone() for k, v in t.method.state_dict().items()}
        p0 = {k: v.clone() for k, v in t.probe.state_dict().items()}
        t.fit()
        one, ddp = (ck.load_checkpoint(runs / f"{kind}-{name}" / "latest.pt") for kind in ("one", "ddp"))
        assert one["step"] == ddp["step"] == 2
        losses = [_losses(runs / f"{kind}-{name}") for kind in ("one", "ddp")]
        assert len(losses[0]) == len(losses[1]) == 2
        for a, b in zip(*losses):
            if abs(a - b) > LOSS_RTOL * abs(a):
                failures.append(f"{name}: loss {a:.12g} (1 process) vs {b:.12g} (2 processes)")
        # the update is not negligible: the comparison is meaningful
        moved = max(float((one["method"][k] - w0[k]).abs().max()) for k in w0 if w0[k].is_floating_point())
        assert moved > 1e-3, name
        failures += [f"{name}: {m}" for m in _compare(w0, one["method"], ddp["method"], "method")]
        failures += [f"{name}: {m}" for m in _compare(p0, one["probe"], ddp["probe"], "probe")]
    assert not failures, "\n".join(failures)

    # control: batch norm over each rank's half batch is another computation, far outside the tolerances
    one = ck.load_checkpoint(runs / "one-simclr" / "latest.pt")["method"]
    nosync = ck.load_checkpoint(runs / "ddp-nosync-simclr" / "latest.pt")["method"]
    a, b = _losses(runs / "one-simclr")[0], _losses(runs / "ddp-nosync-simclr")[0]
    assert abs(a - b) > 1e6 * LOSS_RTOL * abs(a)
    w0 = Trainer(_config(runs, "init-simclr", *_method_args("simclr")), log=False).method.state_dict()
    errors = [_update_error(nosync[k] - w0[k], one[k] - w0[k]) for k in w0
              if k.startswith("backbone.") and k.endswith("weight")]
    assert max(errors) > 1e6 * UPDATE_RTOL


def test_two_processes_match_one_process_with_multicrop_and_mixing(runs: Path, float64, keep_threads) -> None:
    failures = []
    for label, args in MULTICROP.items():
        t = Trainer(_config(runs, f"one-{label}", *args), log=False)
        w0 = {k: v.clone() for k, v in t.method.state_dict().items()}
        assert t.mixing(8) is not None and t.augment.total_views == 4
        t.fit()
        one, ddp = (ck.load_checkpoint(runs / f"{kind}-{label}" / "latest.pt") for kind in ("one", "ddp"))
        assert one["step"] == ddp["step"] == 2
        for a, b in zip(*(_losses(runs / f"{kind}-{label}") for kind in ("one", "ddp"))):
            if abs(a - b) > LOSS_RTOL * abs(a):
                failures.append(f"{label}: loss {a:.12g} (1 process) vs {b:.12g} (2 processes)")
        moved = max(float((one["method"][k] - w0[k]).abs().max()) for k in w0 if w0[k].is_floating_point())
        assert moved > 1e-3, label
        failures += [f"{label}: {m}" for m in _compare(w0, one["method"], ddp["method"], "method")]
    assert not failures, "\n".join(failures)


def test_resume_with_another_number_of_processes(runs: Path, float64, keep_threads) -> None:
    assert ck.load_checkpoint(runs / "mixed" / "latest.pt")["step"] == 8  # 1 process, then 2
    done = train(_config(runs, "mixed", *MIXED, "stop_after=12"), log=False)  # then 1 again
    assert done.step == 12
    t = Trainer(_config(runs, "straight", *MIXED, "stop_after=12"), log=False)
    w0 = {k: v.clone() for k, v in t.method.state_dict().items()}
    assert t.fit().step == 12
    a, b = (ck.load_checkpoint(runs / name / "latest.pt") for name in ("straight", "mixed"))
    failures = _compare(w0, a["method"], b["method"], "method")
    assert not failures, "\n".join(failures)
    la, lb = _losses(runs / "straight"), _losses(runs / "mixed")
    assert len(la) == len(lb) == 12  # one record per step over the three launches
    assert all(abs(x - y) <= LOSS_RTOL * abs(x) for x, y in zip(la, lb))


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found beside the Python executable"
    cmd = [torchrun, "--standalone", f"--nproc_per_node={WORLD}", "-m", "siamgrad", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_torchrun_command_line_and_resume_in_one_process(tmp_path: Path, keep_threads) -> None:
    # 3 steps per epoch: the epoch end (diagnostics on every rank, kNN on rank 0) falls in the 2-process part
    args = [a for a in COMMON if not a.startswith(("stop_after", "diag.", "data.fraction", "epochs"))]
    args += ["method=simclr", "data.fraction=0.04", "epochs=2", "diag.batch=32", "diag.report=false",
             f"out_dir={tmp_path}"]
    first = _torchrun([*args, "run_name=cli", "stop_after=4"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stderr.count("run folder:") == 1 and "2 processes" in first.stderr  # rank 0 alone speaks
    assert ck.load_checkpoint(tmp_path / "cli" / "latest.pt")["step"] == 4
    recs = read_metrics(tmp_path / "cli")
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3, 4]
    assert any("knn_acc" in r for r in recs) and any("diag/rank" in r or "diag/width" in r for r in recs)
    # the same command in one process resumes (resume=auto) and finishes
    second = subprocess.run([sys.executable, "-m", "siamgrad", "train", *args, "run_name=cli"],
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr and "kNN top-1: trained" in second.stdout
    assert json.loads((tmp_path / "cli" / "results.json").read_text())["step"] == 6
    # float32: the 2-process losses agree with one process's to float32 rounding
    ref = train(build_config([*args, "run_name=ref"]), log=False)
    assert ref.step == 6
    for x, y in zip(_losses(tmp_path / "ref")[:2], _losses(tmp_path / "cli")[:2]):
        assert abs(x - y) <= 1e-5 * abs(x)
