"""A run's folder: where it is, whether it resumes, and its checkpoints, config and results.

Layout: ``config.yaml`` (the resolved config), ``metrics.jsonl`` and ``tb/``, ``latest.pt``
(with ``latest.prev.pt``, the one it replaced) and ``best.pt``, ``results.json`` once finished,
``report/``. Only rank 0 writes; every rank knows the paths. results.json is merged, never
replaced (:func:`siamgrad.checkpoint.merge_results`): the evaluations ``siamgrad eval`` put there
survive a resumed run's summary, and a damaged one is kept beside the new one
(``results.json.damaged-<time>``). A training holds ``.lock`` in the folder (:class:`RunLock`), so
a second process on the same folder stops with one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from siamgrad import checkpoint as ckpt
from siamgrad.config import Config, dump_yaml
from siamgrad.errors import ConfigError, SiamgradError
from siamgrad.train.metrics import MetricsLog, NullMetrics, trim_metrics

try:
    import fcntl
except ImportError:  # Windows: no flock, so no run-folder lock
    fcntl = None  # type: ignore[assignment]


class RunFolderInUse(SiamgradError):
    """Another process is training in this run folder (it holds the folder's lock)."""


# the descriptors of the locks this process holds: a forked child (a data worker) closes its
# copies, or one outliving a killed trainer would keep the lock and block the resume
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)  # closing, not unlocking: unlocking would free the parent's lock too
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


class RunLock:
    """The exclusive lock a training holds on its run folder: an ``flock`` on ``RUN/.lock``, which
    names the holder (PID and host) for the message of a process refused.

    The kernel drops an flock when its process ends, killed or not, so a lock left by a killed run
    never blocks the resume. The file stays after the run (unlocked, it is harmless): deleting it
    while another process has it open would let two processes lock two different files.
    """

    WAIT_S = 1.0  # a start's check() holds a shared lock for an instant; a training holds it for good

    def __init__(self, folder: Path):
        self.path = folder / ckpt.LOCK_FILE
        self.fd: int | None = None
        self.pid: int | None = None

    def check(self) -> None:
        """Raise :class:`RunFolderInUse` when another process holds the lock; takes nothing (a
        start is refused before it loads any data)."""
        if fcntl is None:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:  # no lock file: nobody ever trained here
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._in_use() from None
        except OSError:  # a file system without locks: acquire() says so
            pass
        finally:
            os.close(fd)

    def acquire(self, say: Callable[[str], None]) -> None:
        """Take the lock for this process, or raise :class:`RunFolderInUse` naming its holder."""
        if fcntl is None or self.fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            err = ckpt.write_error(e, self.path)
            if err is None:
                raise
            raise err from None
        deadline = time.monotonic() + self.WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise self._in_use() from None
                time.sleep(0.02)
            except OSError as e:
                os.close(fd)
                say(f"warning: cannot lock {self.path} ({e.strerror}); make sure no other process trains in "
                    f"{self.path.parent} meanwhile")
                return
        holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n"
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)
        except OSError:  # the name is for messages only; the lock is what counts
            pass
        self.fd, self.pid = fd, os.getpid()
        _HELD.add(fd)

    def release(self) -> None:
        """Drop the lock (a no-op when not held, or in a forked child, whose copy is closed)."""
        if self.fd is None or self.pid != os.getpid():
            return
        fd, self.fd = self.fd, None
        _HELD.discard(fd)
        try:
            os.ftruncate(fd, 0)  # the holder's name goes with the hold
        except OSError:
            pass
        os.close(fd)

    def _in_use(self) -> RunFolderInUse:
        try:
            holder = json.loads(self.path.read_text())
            who = f"PID {int(holder['pid'])} on {holder['host']}"
        except (OSError, ValueError, TypeError, KeyError):  # being written or cleared right now
            who = "another process"
        return RunFolderInUse(f"run folder '{self.path.parent}' is in use by another training ({who}); wait for "
                              "it to finish or use another run_name")


class RunFolder:
    """The folder of one configured run (``out_dir/run_name``; a name is made up when none is set)."""

    def __init__(self, cfg: Config, *, is_main: bool = True):
        name = cfg.run_name or f"{cfg.method.get('name')}-{cfg.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.path = Path(cfg.out_dir).expanduser() / name
        self.cfg, self.is_main = cfg, is_main
        self.latest = self.path / "latest.pt"
        self.lock = RunLock(self.path)
        if is_main:
            self.lock.check()
        if cfg.resume is True and not self.has_checkpoint():
            raise ConfigError(f"resume=true but '{self.path}' holds no checkpoint; check run_name/out_dir")
        if cfg.resume is False and self.latest.exists():
            raise ConfigError(
                f"run folder '{self.path}' already holds a checkpoint; use resume=true or another run_name"
            )

    @contextlib.contextmanager
    def held(self, say: Callable[[str], None]) -> Iterator[None]:
        """Hold the folder's lock for the block (rank 0; the folder is created first)."""
        if not self.is_main:
            yield
            return
        ckpt.make_dir(self.path)  # a read-only or full out_dir: one line
        self.lock.acquire(say)
        try:
            yield
        finally:
            self.lock.release()

    def has_checkpoint(self) -> bool:
        return self.latest.exists() or ckpt.previous_path(self.latest).exists()

    def latest_or_none(self) -> str:
        """The latest checkpoint's path for a message, or ``none yet``."""
        return str(self.latest) if self.latest.exists() else "none yet"

    def load_latest(self, device: torch.device) -> tuple[dict, Path, list[str]] | None:
        """The latest checkpoint (or its predecessor when damaged) unless ``resume=false``.

        Returns ``(state, path used, warnings)`` or ``None`` when there is nothing to resume.
        """
        if self.cfg.resume is False or not self.has_checkpoint():
            return None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state, used = ckpt.load_with_fallback(self.latest, map_location=device)
        return state, used, [str(w.message) for w in caught]

    def finished_results(self, say: Callable[[str], None]) -> dict[str, Any] | None:
        """``results.json`` of a finished run, else ``None`` (the final evaluation then runs again).

        A damaged results.json is kept aside; one without the training summary (written by
        ``siamgrad eval`` alone) stays, its evaluations of the final checkpoint are kept when the
        summary is written. Either is said in one line through ``say``.
        """
        done = self.path / "results.json"
        if not self.is_main:  # rank 0 keeps a damaged file aside; the others decide alike
            try:
                results = json.loads(done.read_text())
            except (OSError, ValueError):
                return None
            return results if isinstance(results, dict) and "step" in results else None
        results, kept = ckpt.read_json_keeping_damaged(done)
        if kept is not None:
            say(f"warning: {done} is damaged (not a JSON object); kept it as {kept.name} and evaluating the "
                "finished run again to write a new one")
        elif results is not None and "step" not in results:
            say(f"warning: {done} holds no training summary (only `siamgrad eval` figures); evaluating the "
                "finished run again to write it")
            results = None
        return results

    def open(self, cfg: Config, *, resumed_at: int | None, final: bool = False) -> MetricsLog | NullMetrics:
        """Create the folder, write ``config.yaml`` and open the metrics (rank 0; a no-op sink elsewhere).

        Temporaries of writes cut short by a kill are removed. A resumed run first drops the metric
        records written after its checkpoint (``final``: the checkpoint is the last step's, whose
        final evaluation runs again, so its kNN record goes too); a run starting afresh drops those
        of an earlier attempt that died before its first checkpoint.
        """
        if not self.is_main:
            return NullMetrics()
        ckpt.make_dir(self.path)  # a read-only or full out_dir: one line
        ckpt.remove_stale_temps(self.path)
        ckpt.atomic_write_text(self.path / "config.yaml", dump_yaml(cfg))
        if resumed_at is None:
            trim_metrics(self.path, -1)
        else:
            trim_metrics(self.path, resumed_at, drop_evals_at=resumed_at if final else None)
        return MetricsLog(self.path, cfg=cfg)

    def close(self) -> None:
        """The end of this process's part in the run, finished or stopped: temporaries of writes
        cut short by a kill go (rank 0)."""
        if self.is_main:
            ckpt.remove_stale_temps(self.path)

    def save(self, state: dict, name: str = "latest.pt") -> Path:
        """Write the checkpoint ``name`` (rank 0 only; the path on every rank)."""
        path = self.path / name
        if self.is_main:
            ckpt.save_checkpoint(state, path, keep_previous=(name == "latest.pt"))
        return path

    def write_results(self, results: dict[str, Any], say: Callable[[str], None] | None = None) -> None:
        """Merge the training summary ``results`` into results.json: every ``eval`` entry already
        there stays (each names the checkpoint step it scored), a damaged file is kept aside."""
        if not self.is_main:
            return
        path, kept = ckpt.merge_results(self.path, results)
        if kept is not None and say is not None:
            say(f"warning: {path} was damaged (not a JSON object); kept it as {kept.name}")

    def resume_command(self, processes: int = 1) -> str:
        """The shell command that resumes this run: the run's own config.yaml (the resolved settings)
        with out_dir and run_name as given (relative paths stay relative to where the run started)
        and ``resume=true``, each word quoted for the shell."""
        cfg = self.cfg
        words = ["siamgrad", "train"] if processes == 1 else ["torchrun", f"--nproc_per_node={processes}", "-m",
                                                               "siamgrad", "train"]
        settings = [f"config={Path(cfg.out_dir) / self.path.name / 'config.yaml'}", f"out_dir={cfg.out_dir}",
                    f"run_name={self.path.name}", "resume=true"]
        if cfg.stop_after is not None:
            settings.append("stop_after=null")
        return " ".join(words + [shlex.quote(s) for s in settings])


def say(enabled: bool, msg: str) -> None:
    """One line on stderr (rank 0's voice)."""
    if enabled:
        print(msg, file=sys.stderr, flush=True)
