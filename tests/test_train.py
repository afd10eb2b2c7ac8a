"""The trainer end to end on the embedded digits data: exact resume, NaN stop, run folder, CLI."""

import json
import subprocess
import sys

import pytest
import torch

from siamgrad import checkpoint as ck
from siamgrad.cli import main
from siamgrad.config import build_config
from siamgrad.errors import TrainingError
from siamgrad.train.loop import Trainer, read_metrics, train

TINY = ["backbone=tiny", "batch_size=128", "epochs=2", "method.proj_hidden_dim=32",
        "method.proj_output_dim=16", "eval.knn_k=20", "progress=false", "threads=2"]


def _cfg(tmp_path, *extra):
    return build_config(TINY + [f"out_dir={tmp_path}", *extra])


def _weights(run_dir):
    return ck.load_checkpoint(run_dir / "latest.pt")["method"]


@pytest.mark.parametrize("method", ["unigrad", "simclr"])
def test_stopped_and_resumed_run_ends_with_same_weights(tmp_path, method):
    full = train(_cfg(tmp_path, f"method={method}", "run_name=full"), log=False)
    part = train(_cfg(tmp_path, f"method={method}", "run_name=part", "stop_after=7"), log=False)
    assert part.stopped_early and part.step == 7
    assert ck.load_checkpoint(part.run_dir / "latest.pt")["step"] == 7
    stopped_seconds = ck.load_checkpoint(part.run_dir / "latest.pt")["train_seconds"]
    resumed = train(_cfg(tmp_path, f"method={method}", "run_name=part", "resume=true"), log=False)
    assert resumed.step == full.step == 20
    # training time counts on across the resume: each logged record's is at least the one before
    seconds = [r["train_seconds"] for r in read_metrics(resumed.run_dir) if "train_seconds" in r]
    assert seconds == sorted(seconds) and 0 < stopped_seconds < seconds[-1]
    results = json.loads((resumed.run_dir / "results.json").read_text())
    assert results["train_seconds"] == pytest.approx(seconds[-1], abs=1e-3)
    a, b = _weights(full.run_dir), _weights(resumed.run_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and the weights did change from the initialization
    init = Trainer(_cfg(tmp_path, f"method={method}", "run_name=init"), log=False).method.state_dict()
    assert any(not torch.equal(init[k], a[k]) for k in a if a[k].is_floating_point())


def test_run_folder_contents_and_metrics(tmp_path):
    res = train(_cfg(tmp_path, "run_name=r"), log=False)
    names = {p.name for p in res.run_dir.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "latest.pt", "best.pt", "results.json"} <= names
    recs = read_metrics(res.run_dir)
    assert any("loss" in r for r in recs) and any("knn_acc" in r for r in recs)
    assert any("online_probe_acc" in r for r in recs)
    results = json.loads((res.run_dir / "results.json").read_text())
    assert results["knn_accuracy"] == res.knn_accuracy
    assert 0 <= res.random_knn_accuracy <= 100 and res.raw_pixel_knn_accuracy > 80  # digits pixels are easy
    # a finished run re-run with the same name does no more steps
    again = train(_cfg(tmp_path, "run_name=r"), log=False)
    assert again.step == res.step


def test_nan_loss_stops_with_step_and_intact_checkpoint(tmp_path):
    t = Trainer(_cfg(tmp_path, "run_name=nan", "checkpoint_every=1"), log=False)
    real = t.method.training_step

    def poisoned(views):
        loss, logs = real(views)
        return (loss * float("nan") if t.step == 3 else loss), logs

    t.method.training_step = poisoned
    with pytest.raises(TrainingError) as e:
        t.fit()
    msg = str(e.value)
    assert "at step 3" in msg and "\n" not in msg
    assert ck.load_checkpoint(t.run_dir / "latest.pt")["step"] == 3


def test_cli_errors_are_one_line(capsys):
    assert main(["train", "epochz=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown config key 'epochz'") and "\n" not in err
    assert main(["train", "method=nope", "progress=false"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["eval", "knn", "/no/such/ckpt.pt"]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_train_and_eval_end_to_end(tmp_path):
    cmd = [sys.executable, "-m", "siamgrad", "train", *TINY, f"out_dir={tmp_path}", "run_name=cli"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "kNN top-1: trained" in out.stdout and "random-init" in out.stdout
    ev = subprocess.run([sys.executable, "-m", "siamgrad", "eval", "knn", str(tmp_path / "cli"),
                         "eval.knn_k=20"], capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr
    assert "knn_top1:" in ev.stdout


def test_batches_shard_across_processes_and_resume_mid_epoch():
    from siamgrad.data.in_memory import ImageDataset
    from siamgrad.data.batches import InMemoryBatches

    n = 50
    ds = ImageDataset(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous(),
                      torch.arange(n) % 5, [str(i) for i in range(5)], "toy")
    one = InMemoryBatches(ds, torch.device("cpu"), 12, seed=3)
    two = [InMemoryBatches(ds, torch.device("cpu"), 12, seed=3, rank=r, world=2) for r in range(2)]
    assert len(one) == 4
    full = [x[:, 0, 0, 0] for x, _ in one.epoch(1)]
    parts = [[x[:, 0, 0, 0] for x, _ in b.epoch(1)] for b in two]
    for step, batch in enumerate(full):
        assert torch.equal(torch.cat([parts[0][step], parts[1][step]]), batch)
    seen = torch.cat(full)
    assert len(set(seen.tolist())) == 48  # no repeats within an epoch, 2 dropped
    assert [x[:, 0, 0, 0].tolist() for x, _ in one.epoch(1, start=2)] == [b.tolist() for b in full[2:]]
    assert not torch.equal(torch.cat([x for x, _ in one.epoch(2)]), torch.cat([x for x, _ in one.epoch(1)]))


def test_collapse_stops_the_run_and_keeps_last_good_checkpoint(tmp_path):
    t = Trainer(_cfg(tmp_path, "run_name=collapse", "diag.every=2", "diag.patience=2", "checkpoint_every=1",
                     "diag.gradients=false"), log=False)
    with torch.no_grad():  # a constant encoder: every image gets the same features
        for p in t.method.backbone.parameters():
            p.zero_()
    with pytest.raises(TrainingError) as e:
        t.fit()
    msg = str(e.value)
    assert "collapse" in msg and "at step 4" in msg and "diag.collapse=warn" in msg and "\n" not in msg
    # the collapsed state of step 4 is not saved: the checkpoint is the one before the stop
    assert ck.load_checkpoint(t.run_dir / "latest.pt")["step"] == 3
    recs = [r for r in read_metrics(t.run_dir) if "diag/collapse" in r]
    assert recs and recs[-1]["step"] == 4
