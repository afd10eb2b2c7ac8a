"""Atomic checkpoint and file writes, and safe loading.

Checkpoints are written to a temporary file in the same folder, flushed to disk, then renamed
over the old one, so a crash never leaves a half-written checkpoint. The file being replaced is
kept as ``NAME.prev.pt``, so a checkpoint damaged later on disk still has a good predecessor.
Loading always uses ``torch.load(..., weights_only=True)``: no pickle code runs.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from siamgrad.errors import CheckpointError

FORMAT = "siamgrad-checkpoint"
VERSION = 1


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


def atomic_write_bytes(path: str | Path, write, keep_previous: bool = False) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path`` and rename it into place.

    With ``keep_previous``, the file being replaced is first renamed to ``NAME.prev.EXT``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def previous_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.stem + ".prev" + p.suffix)


def save_checkpoint(state: dict, path: str | Path, keep_previous: bool = True) -> None:
    """Write ``state`` atomically; the replaced file becomes ``NAME.prev.pt``."""
    path = Path(path)
    state = {"format": FORMAT, "version": VERSION, **state}

    atomic_write_bytes(path, lambda f: torch.save(state, f), keep_previous=keep_previous)


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
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise CheckpointError(
            f"checkpoint '{p}' is truncated or corrupt ({reason}); use {previous_path(p).name} "
            "beside it or retrain"
        ) from None
    except Exception as e:
        if "global" not in str(e).lower():  # garbage bytes: not a zip/pickle at all
            raise CheckpointError(
                f"checkpoint '{p}' is truncated or corrupt ({type(e).__name__}); use "
                f"{previous_path(p).name} beside it or retrain"
            ) from None
        # the weights-only unpickler refused an object: never fall back to full pickle
        raise CheckpointError(
            f"checkpoint '{p}' holds objects that cannot be loaded safely ({type(e).__name__}); "
            "only siamgrad checkpoints are supported"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"'{p}' is not a siamgrad checkpoint; give one written by siamgrad train")
    return state


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
        warnings.warn(f"{first}; falling back to {prev}", stacklevel=2)
        return state, prev
