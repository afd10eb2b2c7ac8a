"""Where a result was measured: the code's commit, the CPU, torch and the thread count.

Every row of a grid's ``results.csv`` and of the claims' evidence file carries these, so a
contrast can say whether its two runs came from one machine, and a reader can rerun a figure on
the code that made it.

>>> sorted(provenance(threads=2))
['commit', 'cpu', 'threads', 'torch']
"""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

import torch

FIELDS = ("commit", "cpu", "torch", "threads")


def commit() -> str:
    """The short commit of the checkout this process's siamgrad was imported from, ``+dirty`` when
    tracked files had changed; ``unknown`` outside a git checkout (an installed wheel). Read when
    this module is imported: a process runs the code it loaded, whatever lands after."""
    return _COMMIT


def _read_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.partition(":")[2].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def provenance(threads: int | None = None) -> dict[str, str | int]:
    """``commit``, ``cpu``, ``torch`` and ``threads`` (torch's intra-op threads unless given)."""
    return {"commit": commit(), "cpu": cpu_model(), "torch": torch.__version__,
            "threads": int(threads if threads is not None else torch.get_num_threads())}


_COMMIT = _read_commit()
