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


# --------------------------------------------------------------------------------------------
# full disk, read-only folders, stale temporaries, latest.pt present at every instant

import errno
import re
import shutil
import subprocess
import sys
from pathlib import Path

NO_SPACE = re.compile(r"^no space left on (?P<dev>\S+) writing (?P<file>\S+): free (?P<mb>[0-9.]+) MB or point "
                      r"out_dir elsewhere$")


class _FillsUp:
    """A file object that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, b):
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _tmp_files(folder):
    return sorted(f.name for f in Path(folder).iterdir() if f.name.endswith(".tmp"))


def test_full_disk_mid_write_is_one_line_and_keeps_the_previous_checkpoints(tmp_path, monkeypatch):
    p = tmp_path / "latest.pt"
    ck.save_checkpoint({"step": 1, "w": torch.ones(1000)}, p)
    ck.save_checkpoint({"step": 2, "w": torch.ones(1000)}, p)
    real_fdopen = os.fdopen
    monkeypatch.setattr(ck.os, "fdopen", lambda fd, mode: _FillsUp(real_fdopen(fd, mode), room=2000))
    # the disk fills up after the free-space check (another writer): 0.25 MiB left for a 1 MiB file
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda path: usage._replace(free=2**18))
    monkeypatch.setattr(ck, "check_free_space", lambda path, needed: None)
    with pytest.raises(CheckpointError) as e:
        ck.save_checkpoint({"step": 3, "w": torch.ones(2**18)}, p)  # 1 MiB of tensor data
    msg = str(e.value)
    m = NO_SPACE.match(msg)
    assert m and "\n" not in msg, msg
    assert m["file"] == str(p) and Path(m["dev"]) == ck.mount_point(tmp_path)
    # torch's zip writer turned the ENOSPC into a RuntimeError; the figure is what is missing for
    # the checkpoint (its tensors' 1 MiB less the 0.25 MiB free), rounded up to 0.1 MB
    assert float(m["mb"]) == 0.8
    monkeypatch.undo()
    assert ck.load_checkpoint(p)["step"] == 2 and ck.load_checkpoint(ck.previous_path(p))["step"] == 1
    assert _tmp_files(tmp_path) == []


def test_too_little_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    p = tmp_path / "latest.pt"
    ck.save_checkpoint({"step": 1, "w": torch.ones(500_000)}, p)  # 2 MB of tensor data
    size = p.stat().st_size
    before = p.read_bytes()
    usage = shutil.disk_usage(tmp_path)
    free = size // 2
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda path: usage._replace(free=free))
    writes = []
    monkeypatch.setattr(ck.torch, "save", lambda *a, **k: writes.append(a))
    with pytest.raises(CheckpointError) as e:
        ck.save_checkpoint({"step": 2, "w": torch.zeros(500_000)}, p)
    m = NO_SPACE.match(str(e.value))
    assert m, str(e.value)
    assert writes == [] and _tmp_files(tmp_path) == []  # refused before any byte was written
    # at least the missing half of the file, plus the safety margin (under 0.2 MB here)
    short = (size - free) / 2**20
    assert short <= float(m["mb"]) <= short + 0.2
    monkeypatch.undo()
    assert p.read_bytes() == before
    ck.save_checkpoint({"step": 2, "w": torch.zeros(500_000)}, p)  # with room, it writes
    assert ck.load_checkpoint(p)["step"] == 2


def test_expected_size_is_the_tensor_storage_counted_once():
    w = torch.zeros(100, 10)
    state = {"a": w, "b": [w[0], {"c": torch.ones(7, dtype=torch.float64)}], "n": 3, "s": "x"}
    assert ck.expected_size(state) == 100 * 10 * 4 + 7 * 8
    p_state = {"w": torch.randn(1000)}
    assert ck.expected_size(p_state) <= len(_saved_bytes(p_state))


def _saved_bytes(state):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


@pytest.mark.parametrize("code,words", [(errno.EROFS, "read-only file system (EROFS)"), (errno.EACCES, "permission denied (EACCES)")])
def test_read_only_or_forbidden_folder_is_one_line(tmp_path, monkeypatch, code, words):
    def refuse(*a, **k):
        raise OSError(code, os.strerror(code), str(tmp_path / "runs"))

    monkeypatch.setattr(ck.tempfile, "mkstemp", refuse)
    with pytest.raises(CheckpointError) as e:
        ck.atomic_write_text(tmp_path / "runs" / "x" / "config.yaml", "a: 1\n")
    msg = str(e.value)
    assert words in msg and "point out_dir at a writable folder" in msg and "\n" not in msg
    assert errno.errorcode[code] in msg
    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(CheckpointError, match=re.escape(words)):
        ck.make_dir(tmp_path / "elsewhere" / "run")


def test_latest_exists_at_every_instant_of_a_write(tmp_path, monkeypatch):
    # a kill between "old latest -> prev" and "new -> latest" must still leave a latest.pt
    p = tmp_path / "latest.pt"
    ck.save_checkpoint({"step": 1}, p)
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(p.is_file())
        real_replace(src, dst)
        seen.append(p.is_file())

    monkeypatch.setattr(ck.os, "replace", replace)
    ck.save_checkpoint({"step": 2}, p)
    ck.save_checkpoint({"step": 3}, p)
    monkeypatch.undo()
    assert len(seen) == 8 and all(seen)
    assert ck.load_checkpoint(p)["step"] == 3 and ck.load_checkpoint(ck.previous_path(p))["step"] == 2
    assert os.stat(p).st_ino != os.stat(ck.previous_path(p)).st_ino  # two files, not two names of one
    assert _tmp_files(tmp_path) == []


def test_stale_temporaries_of_the_run_files_are_removed_and_nothing_else(tmp_path):
    stale = [".latest.pt.k2j_9x0a.tmp", ".best.pt.abcdefgh.tmp", ".latest.prev.pt.0123abcd.tmp",
             ".metrics.jsonl.zzzzzzzz.tmp", ".config.yaml.a1b2c3d4.tmp"]
    kept = [".latest.pt.tmp", ".notes.txt.abcdefgh.tmp", "latest.pt.abcdefgh.tmp", ".best.pt.ABCDEFGH.tmp",
            ".best.pt.abcdefghi.tmp", "report.html", "latest.pt"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".latest.pt.abcdefgh.tmp").write_bytes(b"x")
    removed = ck.remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(f.name for f in tmp_path.iterdir() if f.is_file()) == sorted(kept)
    assert (tmp_path / "sub" / ".latest.pt.abcdefgh.tmp").exists()
    assert ck.remove_stale_temps(tmp_path / "missing") == []


def _tmp_name_matches_the_writer(tmp_path):
    import tempfile

    fd, name = tempfile.mkstemp(prefix=".latest.pt.", suffix=".tmp", dir=tmp_path)
    os.close(fd)
    return ck.remove_stale_temps(tmp_path) == [Path(name)]


def test_the_stale_pattern_is_the_writers_own(tmp_path):
    assert all(_tmp_name_matches_the_writer(tmp_path) for _ in range(50))


# a real full tmpfs and a read-only mount, in a private mount namespace (skipped where not allowed)

def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="mounting a tmpfs in a private namespace is not allowed here")

FILL = """
import sys, torch
from siamgrad import checkpoint as ck
from siamgrad.errors import CheckpointError
p = sys.argv[1] + "/run/latest.pt"
step = 0
try:
    while True:
        step += 1
        ck.save_checkpoint({"step": step, "w": torch.full((40_000,), float(step))}, p)
except CheckpointError as e:
    print(step, e, sep="\\n")
print(ck.load_checkpoint(p)["step"], ck.load_checkpoint(ck.previous_path(p))["step"])
ck.atomic_write_bytes(p, lambda f: f.write(b"x" * 10**6), keep_previous=True)  # past the free-space check
"""


@needs_mount
def test_a_real_full_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(FILL)
    # 512 KiB: two 160 KB checkpoints (latest, prev) fit, a third beside them does not
    out = subprocess.run(["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size=512k tmpfs "{mnt}" && '
                          f'exec "{sys.executable}" "{script}" "{mnt}"'], capture_output=True, text=True, timeout=120)
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stdout + out.stderr
    failed_at, first, intact = int(lines[0]), lines[1], lines[2]
    assert failed_at == 3 and NO_SPACE.match(first) and f"on {mnt} writing {mnt}/run/latest.pt" in first
    assert intact == "2 1"
    last = out.stderr.strip().splitlines()[-1]  # the write that got past the check: the same line
    assert out.returncode == 1 and "CheckpointError: no space left on" in last, out.stderr


@needs_mount
def test_a_real_read_only_mount(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    code = (f"from siamgrad import checkpoint as ck\nfor p in ('{mnt}/runs/x/config.yaml', '{mnt}/config.yaml'):\n"
            "    try:\n        ck.atomic_write_text(p, 'a: 1')\n    except Exception as e:\n"
            "        print(type(e).__name__, e)\n")
    out = subprocess.run(["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o ro tmpfs "{mnt}" && '
                          f'exec "{sys.executable}" -c "{code}"'], capture_output=True, text=True, timeout=60)
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout + out.stderr
    for line in lines:
        assert line.startswith("CheckpointError cannot write ") and "read-only file system (EROFS)" in line
