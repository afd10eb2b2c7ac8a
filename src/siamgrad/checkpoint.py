"""Atomic checkpoint and file writes, and safe loading.

Checkpoints are written to a temporary file in the same folder, flushed to disk, then renamed
over the old one, so a crash never leaves a half-written checkpoint. The file being replaced is
kept as ``NAME.prev.pt`` (hard-linked there before the rename, so ``NAME.pt`` exists at every
instant), so a checkpoint damaged later on disk still has a good predecessor.
Loading always uses ``torch.load(..., weights_only=True)``: no pickle code runs.

Write failures the user can fix are one-line :class:`CheckpointError` s: a full disk (also
checked before a checkpoint write, against the checkpoint's expected size), a read-only or
forbidden folder; they name the setting that chose the place (``out_dir`` unless told
otherwise, e.g. ``--out`` for an export). A write cut short by SIGKILL leaves
``.NAME.XXXXXXXX.tmp`` behind; :func:`remove_stale_temps` deletes those of a run folder's own files.
A damaged JSON file about to be replaced is kept beside it (:func:`read_json_keeping_damaged`).
A run's ``results.json`` has one writer, :func:`merge_results`, for training and evaluation alike.
Files written here get the mode an ``open()`` would give them (``0o666`` less the umask).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from siamgrad.errors import CheckpointError, OneLineWarning

FORMAT = "siamgrad-checkpoint"
VERSION = 1

MB = 1 << 20
# the files a run folder's writer replaces atomically (their temporaries are its own to delete)
RUN_FILES = ("latest.pt", "latest.prev.pt", "best.pt", "best.prev.pt", "config.yaml", "metrics.jsonl",
             "results.json")
# the lock a training holds on its run folder (siamgrad.train.run_folder); never replaced nor
# deleted, since the lock lives on the file itself
LOCK_FILE = ".lock"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# disks: where a path lives, how much room is left, one-line errors for write failures


def _existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def mount_point(path: str | Path) -> Path:
    """The mount point of the file system ``path`` (or its nearest existing folder) is on."""
    p = _existing(Path(path)).resolve()
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | Path) -> int:
    """Bytes an unprivileged writer may still use on the file system of ``path``."""
    return shutil.disk_usage(_existing(Path(path))).free


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind ``e`` (torch's zip writer reports a full disk as a RuntimeError raised
    while handling it)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno is not None:
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def no_space_error(path: str | Path, needed: int, option: str = "out_dir") -> CheckpointError:
    """``no space left on DEVICE writing FILE: free N MB or point out_dir elsewhere`` (``option``:
    the setting that chose the place)."""
    short = max(needed - free_bytes(Path(path).parent), 0) / MB
    n = f"{max(0.1, math.ceil(short * 10) / 10):.1f}" if short < 10 else f"{math.ceil(short)}"
    return CheckpointError(f"no space left on {mount_point(path)} writing {path}: free {n} MB or point "
                           f"{option} elsewhere")


def write_error(e: BaseException, path: str | Path | None, needed: int = MB,
                option: str = "out_dir") -> CheckpointError | None:
    """A one-line error for a write to ``path`` that failed with ``e`` (full disk, read-only or
    forbidden folder), or None when ``e`` is another kind of failure. ``path`` None: the file the
    error names, if any. ``option``: the setting the fix names (``out_dir``, ``--out``)."""
    os_err = _os_error(e)
    if os_err is None:
        return None
    path = path if path is not None else os_err.filename
    if path is None:
        if os_err.errno in _NO_SPACE + (errno.EROFS,):
            return CheckpointError(f"a write failed: {os_err.strerror.lower()}; free some space or point {option} "
                                   "elsewhere")
        return None
    if os_err.errno in _NO_SPACE:
        return no_space_error(path, needed, option)
    if os_err.errno in _READ_ONLY:
        where = f" (at {os_err.filename})" if os_err.filename and Path(os_err.filename) != Path(path) else ""
        what = "read-only file system" if os_err.errno == errno.EROFS else "permission denied"
        return CheckpointError(f"cannot write {path}{where}: {what} ({errno.errorcode[os_err.errno]}); point "
                               f"{option} at a writable folder")
    return None


def make_dir(path: str | Path, option: str = "out_dir") -> Path:
    """``mkdir -p path`` with a one-line error for a full, read-only or forbidden location."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        err = write_error(e, p, option=option)
        if err is None:
            raise
        raise err from None
    return p


def expected_size(state: Any) -> int:
    """A lower bound on the bytes ``torch.save(state)`` writes: the storage of every tensor in it."""
    seen: dict[int, int] = {}
    stack = [state]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            s = x.untyped_storage()
            seen[s.data_ptr() or id(s)] = s.nbytes()
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
    return sum(seen.values())


def check_free_space(path: str | Path, needed: int) -> None:
    """Raise the one-line no-space error unless ``needed`` bytes (plus a small margin) fit beside
    ``path``."""
    p = Path(path)
    if free_bytes(p.parent) < needed + needed // 50 + 64 * 1024:
        raise no_space_error(p, needed + needed // 50 + 64 * 1024)


# --------------------------------------------------------------------------------------------
# atomic writes


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno in _NO_SPACE:
            raise
        shutil.copy2(src, dst)  # a file system without hard links


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux), else by
    setting and restoring it under a lock."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        old = os.umask(0o077)  # not 0: a file another thread creates meanwhile is private, not open to all
        os.umask(old)
    return old


def _chmod_as_open(fd: int) -> None:
    """Give the file ``fd`` the mode ``open()`` would (``mkstemp`` makes it 0600 whatever the umask)."""
    if hasattr(os, "fchmod"):
        try:
            os.fchmod(fd, 0o666 & ~current_umask())
        except OSError:  # a file system without modes (FAT, some network mounts): write it anyway
            pass


def atomic_write_bytes(path: str | Path, write, keep_previous: bool = False, *, size: int | None = None,
                       option: str = "out_dir") -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path`` and rename it into place.

    With ``keep_previous``, the file being replaced is first kept as ``NAME.prev.EXT`` (a hard
    link, renamed over the old one; ``path`` itself is never absent). ``size``: the bytes expected,
    for the free-space figure of a no-space error. A full disk, a read-only or forbidden folder
    raise a one-line :class:`CheckpointError` naming ``option`` (the setting that chose the place);
    the old files are then untouched. The file's mode follows the umask, as ``open()``'s does.
    """
    path = Path(path)
    make_dir(path.parent, option)
    tmp = link = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        _chmod_as_open(fd)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            prev = previous_path(path)
            link = path.parent / f".{prev.name}.{secrets.token_hex(4)}.tmp"  # the writer's temp pattern
            _link_or_copy(path, link)
            os.replace(link, prev)
            link = None
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except BaseException as e:
        for t in (tmp, link):
            if t is not None:
                try:
                    os.unlink(t)
                except FileNotFoundError:
                    pass
        err = write_error(e, path, needed=size or MB, option=option) if isinstance(e, Exception) else None
        if err is None:
            raise
        raise err from None


def atomic_write_text(path: str | Path, text: str, option: str = "out_dir") -> None:
    data = text.encode()
    atomic_write_bytes(path, lambda f: f.write(data), size=len(data), option=option)


def atomic_write_json(path: str | Path, obj: Any, option: str = "out_dir") -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", option=option)


def keep_damaged(path: str | Path) -> Path:
    """Rename the damaged file ``path`` to ``NAME.damaged-YYYYmmdd-HHMMSS`` beside it (a new name,
    never over another file) and return that path: what a user made is kept, not replaced."""
    p = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = p.with_name(f"{p.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        aside = p.with_name(f"{p.name}.damaged-{stamp}-{n}")
        n += 1
    os.replace(p, aside)
    _fsync_dir(p.parent)
    return aside


def read_json_keeping_damaged(path: str | Path) -> tuple[dict | None, Path | None]:
    """``(data, None)`` for the JSON object in the file ``path`` (``data`` None when there is no
    file); a file that is not a JSON object is kept aside (:func:`keep_damaged`) and ``(None, kept
    path)`` returned, so the caller may write a fresh one and say where the old one went."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
        data = json.loads(text)
    except FileNotFoundError:
        return None, None
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict):
        return None, keep_damaged(p)
    return data, None


@contextlib.contextmanager
def _folder_locked(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the folder itself for the block: one read-modify-write of a file
    in it at a time (it never meets a training's run-folder lock, which is on another file).
    Where folders cannot be locked (no ``fcntl``, some network file systems) the block runs unlocked."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # closing releases the lock


def merge_results(run_dir: str | Path, updates: dict[str, Any]) -> tuple[Path, Path | None]:
    """Merge ``updates`` into ``run_dir/results.json``, the one writer of that file (the training
    summary, ``siamgrad eval`` figures): its keys replace those of the file, except ``eval``, whose
    entries are merged one by one, so an evaluation survives the training summary and the other
    way round; every other key in the file stays. Written atomically, one merge at a time.

    Returns ``(path, kept)``: ``kept`` is where a damaged results.json went
    (:func:`read_json_keeping_damaged`; the caller says so), None otherwise.
    """
    path = Path(run_dir) / "results.json"
    make_dir(path.parent)
    with _folder_locked(path.parent):  # two merges at once would each drop the other's entries
        old, kept = read_json_keeping_damaged(path)
        results = dict(old or {})
        for key, value in updates.items():
            if key == "eval" and isinstance(value, dict):
                evals = results.get("eval") if isinstance(results.get("eval"), dict) else {}
                results["eval"] = {**evals, **value}
            else:
                results[key] = value
        atomic_write_json(path, results)
    return path, kept


def previous_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.stem + ".prev" + p.suffix)


_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def remove_stale_temps(folder: str | Path, names: tuple[str, ...] = RUN_FILES) -> list[Path]:
    """Delete the temporaries of :func:`atomic_write_bytes` for the files ``names`` in ``folder``
    (left by a process killed mid-write; call it when no write of these files is in flight).
    Returns the paths removed."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for p in entries:
        if p.name == LOCK_FILE:  # held by a live training, or harmless: never a temporary
            continue
        m = _TEMP.match(p.name)
        if m and m["name"] in names and p.is_file() and not p.is_symlink():
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


def save_checkpoint(state: dict, path: str | Path, keep_previous: bool = True) -> None:
    """Write ``state`` atomically; the replaced file becomes ``NAME.prev.pt``.

    Before writing, the free space beside ``path`` is checked against the expected size (the
    larger of the tensors' bytes and the file being replaced): a disk too full for it is a
    one-line error before anything is touched.
    """
    path = Path(path)
    state = {"format": FORMAT, "version": VERSION, **state}
    size = expected_size(state)
    try:
        size = max(size, path.stat().st_size)
    except OSError:
        pass
    check_free_space(path, size)
    atomic_write_bytes(path, lambda f: torch.save(state, f), keep_previous=keep_previous, size=size)


def _reason(e: BaseException, limit: int = 120) -> str:
    """The first sentence of an exception's message (torch appends advice paragraphs), cut at a word
    boundary when still long; the exception's type when it has no message."""
    text = " ".join(str(e).split())
    if not text:
        return type(e).__name__
    first = re.split(r"(?<=[a-z0-9)])\. ", text, maxsplit=1)[0].rstrip(".")
    if len(first) > limit:
        first = first[:limit].rsplit(" ", 1)[0] + " ..."
    return first


def _instead(p: Path) -> str:
    """What to use instead of the damaged checkpoint ``p``: a file that exists beside it, or retraining."""
    for other in (previous_path(p), p.with_name("latest.pt"), p.with_name("best.pt")):
        if other != p and other.is_file():
            return f"use {other.name} beside it or retrain"
    return "retrain (no other checkpoint is beside it)"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``) or raise a one-line CheckpointError."""
    p = Path(path).expanduser()
    if p.is_dir():
        for name in ("latest.pt", "best.pt"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise CheckpointError(f"no checkpoint in '{p}'; expected latest.pt or best.pt there")
    if not p.is_file():
        raise CheckpointError(f"checkpoint '{p}' not found; give the path of a .pt file or a run folder")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint '{p}' is truncated or corrupt ({_reason(e)}); {_instead(p)}") from None
    except Exception as e:
        if "global" not in str(e).lower():  # garbage bytes: not a zip/pickle at all
            raise CheckpointError(
                f"checkpoint '{p}' is truncated or corrupt ({type(e).__name__}); {_instead(p)}"
            ) from None
        # the weights-only unpickler refused an object: never fall back to full pickle
        raise CheckpointError(
            f"checkpoint '{p}' holds objects that cannot be loaded safely ({type(e).__name__}); "
            "only siamgrad checkpoints are supported"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"'{p}' is not a siamgrad checkpoint; give one written by siamgrad train")
    return state


class CheckpointFallbackWarning(OneLineWarning):
    """A damaged checkpoint was passed over for the previous one beside it."""


def load_with_fallback(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict, Path]:
    """Load ``path``; if it is missing or corrupt, warn and load ``NAME.prev.pt`` instead.

    Returns ``(state, path_used)``. When neither loads, one :class:`CheckpointError` line names both.
    """
    p = Path(path)
    prev = previous_path(p)
    try:
        return load_checkpoint(p, map_location), p
    except CheckpointError as first:
        if not prev.is_file():
            raise
        try:
            state = load_checkpoint(prev, map_location)
        except CheckpointError:
            raise CheckpointError(
                f"checkpoints '{p.name}' and '{prev.name}' in '{p.parent}' are both unreadable "
                f"(truncated, corrupt or missing); delete them to start the run over, or use another run_name"
            ) from None
        warnings.warn(f"{first}; falling back to {prev}", CheckpointFallbackWarning, stacklevel=2)
        return state, prev


def load_for_reading(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict, Path]:
    """The checkpoint a command that reads one uses (``eval``, ``export``, ``analyze gradients``):
    ``path``, or for a run folder its ``latest.pt`` (``best.pt`` where it has none). A damaged or
    foreign file falls back to ``NAME.prev.pt`` beside it with a one-line warning, as training's
    resume does (:func:`load_with_fallback`). Returns ``(state, path used)``."""
    p = Path(path).expanduser()
    if p.is_dir():
        for name in ("latest.pt", "best.pt"):
            if (p / name).is_file() or previous_path(p / name).is_file():
                p = p / name
                break
        else:
            raise CheckpointError(f"no checkpoint in '{p}'; expected latest.pt or best.pt there")
    return load_with_fallback(p, map_location)


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_for_checkpoint(state: dict, settings: list[str] | None, *, applies: tuple[str, ...], command: str):
    """The checkpoint's config with the ``key=value`` ``settings`` applied, for a command that
    uses the checkpoint's model as it is (``eval``, ``analyze gradients``).

    ``applies``: the config sections and keys the command reads (e.g. ``("data", "eval")``); a
    setting that changes anything else (``method=``, ``backbone=``, ...) would be silently ignored
    or clash with the weights, so it is a one-line :class:`~siamgrad.errors.ConfigError`.
    """
    from siamgrad.config import build_config, to_dict
    from siamgrad.errors import ConfigError

    base = state["config"]
    cfg = build_config(settings, base=base)
    before, after = _flat(to_dict(build_config(None, base=base))), _flat(to_dict(cfg))
    changed = [k for k in after if after[k] != before.get(k) and k.split(".")[0] not in applies]
    if changed:
        changed.sort(key=lambda k: k != "method.name")  # a method change shows as method.name first
        shown = ", ".join(f"{k}={after[k]}" for k in changed[:3]) + (", ..." if len(changed) > 3 else "")
        own = f"method {before.get('method.name')}, backbone {before.get('backbone')}"
        scope = ", ".join(f"{a}.*" if isinstance(base.get(a), dict) else a for a in applies)
        raise ConfigError(f"{command} uses the checkpoint's model as trained ({own}) and would ignore {shown}; "
                          f"drop it (only {scope} settings apply)")
    return cfg
