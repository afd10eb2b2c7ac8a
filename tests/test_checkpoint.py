"""Atomic checkpoints: no half-written files, corrupt ones detected in one line, safe loading."""

import os

import pytest
import torch

from siamgrad import checkpoint as ck
from siamgrad.errors import CheckpointError


def test_round_trip_and_previous_kept(tmp_path):
    p = tmp_path / "latest.pt"
    ck.save_checkpoint({"step": 1, "w": torch.ones(3)}, p)
    ck.save_checkpoint({"step": 2, "w": torch.zeros(3)}, p)
    assert ck.load_checkpoint(p)["step"] == 2
    assert ck.load_checkpoint(ck.previous_path(p))["step"] == 1
    assert [f.name for f in tmp_path.iterdir() if f.name.endswith(".tmp")] == []


def test_truncated_checkpoint_detected_and_fallback(tmp_path):
    p = tmp_path / "latest.pt"
    ck.save_checkpoint({"step": 1}, p)
    ck.save_checkpoint({"step": 2, "w": torch.randn(1000)}, p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        ck.load_checkpoint(p)
    assert "truncated or corrupt" in str(e.value) and "\n" not in str(e.value)
    with pytest.warns(UserWarning, match="falling back"):
        state, used = ck.load_with_fallback(p)
    assert state["step"] == 1 and used == ck.previous_path(p)


def test_garbage_and_foreign_files(tmp_path):
    g = tmp_path / "g.pt"
    g.write_bytes(os.urandom(300))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ck.load_checkpoint(g)
    f = tmp_path / "foreign.pt"
    torch.save({"a": 1}, f)
    with pytest.raises(CheckpointError, match="not a siamgrad checkpoint"):
        ck.load_checkpoint(f)
    with pytest.raises(CheckpointError, match="not found"):
        ck.load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        ck.load_checkpoint(tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/siamgrad_pwned",))


def test_pickle_code_is_never_executed(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"format": ck.FORMAT, "payload": _Evil()}, p)
    if os.path.exists("/tmp/siamgrad_pwned"):
        os.unlink("/tmp/siamgrad_pwned")
    with pytest.raises(CheckpointError):
        ck.load_checkpoint(p)
    assert not os.path.exists("/tmp/siamgrad_pwned")


def test_failed_write_leaves_old_file(tmp_path):
    p = tmp_path / "latest.pt"
    ck.save_checkpoint({"step": 1}, p)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(Exception):
        ck.save_checkpoint({"step": 2, "bad": Boom()}, p)
    assert ck.load_checkpoint(p)["step"] == 1
    assert [f.name for f in tmp_path.iterdir() if f.name.endswith(".tmp")] == []
