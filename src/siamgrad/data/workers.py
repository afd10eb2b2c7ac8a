"""DataLoader worker processes that read and decode image files: how many, and their setup."""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["auto_workers", "pass_through", "worker_init"]


def auto_workers(world: int = 1) -> int:
    """Reader processes per training process: ``min(16, cores per process - 1)``, at least 1
    (cores: this process's CPU affinity; processes per machine: ``LOCAL_WORLD_SIZE`` or ``world``)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cpus = os.cpu_count() or 2
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world) or 1)
    return max(1, min(16, cpus // max(1, local) - 1))


def worker_init(_: int) -> None:
    """A worker's setup: one thread (one decode per core; no oversubscription)."""
    torch.set_num_threads(1)


def pass_through(x: Any) -> Any:
    """The collate function of loaders whose dataset items are already whole batches."""
    return x
