"""How many CPU threads to use: the cores this process may run on, and how many of them are free.

Two questions, answered from what the kernel reports:

* **How many cores may this process use?** :func:`available_cpus`: the CPUs of the process's
  affinity mask (``os.sched_getaffinity``: ``taskset``, a batch scheduler's CPU set) bounded by
  the cgroup CPU quota (``cpu.max`` on cgroup v2, ``cpu.cfs_quota_us / cpu.cfs_period_us`` on
  v1: a container limited to 2 CPUs on a 64-core host may use 2, whatever ``os.cpu_count()``
  says), rounded up, at least 1.
* **How many of them are free right now?** :func:`busy_aware_threads`: the load of the other
  processes is the 1-minute load average (``os.getloadavg``, the mean number of runnable tasks)
  minus this process's own share, estimated as its CPU time per second of wall time smoothed
  with the same 1-minute exponential filter as the kernel's average (:class:`OwnLoad`). A thread
  is granted for every core of which at least ``1 - SLACK`` is left by the others, at least 1
  and at most the ceiling (the thread count the caller runs with).

Why it matters: torch's OpenMP parallel regions end at a barrier, so a region is only as fast as
its slowest thread. When other processes keep the cores busy, one of ``T`` threads is often
descheduled and the whole region waits for it: ``T`` threads on an oversubscribed machine can be
many times slower than one (docs/benchmarks.md). :func:`limit_threads` runs a block (the batched
augmentation, see :mod:`siamgrad.augment.multiview`) with the busy-aware count and restores the
caller's count afterwards; ``torch.set_num_threads`` is cheap (no threads are started or joined).

Every function takes its inputs (affinity set, quota, load, own share) as optional arguments,
so the arithmetic is testable without a busy machine.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = [
    "native_bf16",
    "SLACK",
    "LOAD_WINDOW_S",
    "OwnLoad",
    "affinity_cpus",
    "available_cpus",
    "busy_aware_threads",
    "cap_threads",
    "cgroup_cpu_quota",
    "default_threads",
    "free_cores",
    "limit_threads",
    "threads_for",
]

#: A core counts as free when the other processes leave at least ``1 - SLACK`` of it: an OpenMP
#: thread that must share its core a quarter of the time already stalls its region's barrier.
SLACK = 0.25

#: Time constant of the kernel's 1-minute load average, in seconds (own share filtered alike).
LOAD_WINDOW_S = 60.0


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (``os.cpu_count()`` where the mask is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _parse_v2(text: str) -> float | None:
    """``cpu.max`` of cgroup v2: ``"QUOTA PERIOD"`` or ``"max PERIOD"`` (no limit)."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    quota = float(parts[0])
    period = float(parts[1]) if len(parts) > 1 else 100_000.0
    return quota / period if quota > 0 and period > 0 else None


def _parse_v1(quota_text: str, period_text: str) -> float | None:
    """``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` of cgroup v1 (a quota of -1: no limit)."""
    quota, period = float(quota_text.strip()), float(period_text.strip())
    return quota / period if quota > 0 and period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cgroup_cpu_quota(root: str | os.PathLike[str] = "/sys/fs/cgroup",
                     proc_cgroup: str | os.PathLike[str] = "/proc/self/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in CPUs (e.g. 2.5), or ``None`` when unlimited.

    Looks at the process's own cgroup (from ``proc_cgroup``) and every ancestor up to ``root``,
    cgroup v2 first (``cpu.max``), then v1 (``cpu/`` or ``cpu,cpuacct/`` hierarchies); the
    tightest limit wins. Unreadable files count as no limit.
    """
    root = Path(root)
    v2_path, v1_path = "/", "/"
    text = _read(Path(proc_cgroup)) or ""
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2_path = path or "/"
        elif "cpu" in controllers.split(","):
            v1_path = path or "/"

    def ancestors(path: str) -> list[str]:
        rel = [p for p in path.strip("/").split("/") if p and p != ".."]
        return ["/".join(rel[:k]) for k in range(len(rel), -1, -1)]

    limits: list[float] = []
    for rel in ancestors(v2_path):
        t = _read(root / rel / "cpu.max")
        if t is not None and (q := _parse_v2(t)) is not None:
            limits.append(q)
    for hierarchy in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        base = root / hierarchy
        if not base.is_dir():
            continue
        for rel in ancestors(v1_path):
            qt, pt = _read(base / rel / "cpu.cfs_quota_us"), _read(base / rel / "cpu.cfs_period_us")
            if qt is not None and pt is not None:
                try:
                    q = _parse_v1(qt, pt)
                except ValueError:
                    q = None
                if q is not None:
                    limits.append(q)
        break
    return min(limits) if limits else None


_READ = object()  # "read the machine's value" (None already means "no limit")


def available_cpus(affinity: int | None = None, quota: float | None | object = _READ) -> int:
    """CPUs this process may use: the affinity mask bounded by the cgroup quota (rounded up).

    ``affinity``: CPUs in the mask (default: :func:`affinity_cpus`); ``quota``: CPUs of the
    cgroup quota, ``None`` for no limit (default: :func:`cgroup_cpu_quota`).
    """
    n = affinity_cpus() if affinity is None else int(affinity)
    q = cgroup_cpu_quota() if quota is _READ else quota
    if q is not None:
        n = min(n, math.ceil(q - 1e-9))
    return max(1, n)


def cap_threads(asked: int, cpus: int | None = None) -> tuple[int, str | None]:
    """``threads=asked`` bounded by the CPUs this process may run on (``cpus``, default
    :func:`affinity_cpus`): threads beyond them only wait for each other at the barrier ending
    every parallel region. Returns the count to use and, when it was capped, a one-line warning."""
    n = affinity_cpus() if cpus is None else max(1, int(cpus))
    if asked <= n:
        return asked, None
    return n, (f"threads={asked} is more than the {n} CPU(s) this process may use; using threads={n} "
               "(more threads than CPUs wait on each other and run many times slower)")


def default_threads(env: dict[str, str] | None = None, cpus: int | None = None) -> int:
    """Torch threads for a process not told how many: ``OMP_NUM_THREADS`` when set (``torchrun``
    sets 1 for several processes per node), else the available CPUs shared by this node's
    ``LOCAL_WORLD_SIZE`` processes, at least 1."""
    env = os.environ if env is None else env
    raw = (env.get("OMP_NUM_THREADS") or "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    local = (env.get("LOCAL_WORLD_SIZE") or "").strip()
    n = available_cpus() if cpus is None else cpus
    return max(1, n // (int(local) if local.isdigit() and int(local) > 0 else 1))


def free_cores(cpus: int, load: float, own: float) -> float:
    """Cores the other processes leave: ``cpus - max(0, load - own)``, clipped to ``[0, cpus]``."""
    others = max(0.0, float(load) - max(0.0, float(own)))
    return min(float(cpus), max(0.0, cpus - others))


def threads_for(cpus: int, load: float, own: float, ceiling: int | None = None) -> int:
    """Threads to run with: one per core the others leave at least ``1 - SLACK`` of.

    ``floor(free_cores + SLACK)``, at least 1 and at most ``ceiling`` (default ``cpus``).
    """
    free = free_cores(cpus, load, own)
    top = cpus if ceiling is None else max(1, min(int(ceiling), cpus))
    return max(1, min(top, math.floor(free + SLACK + 1e-9)))


class OwnLoad:
    """This process's share of the load average: CPU time per wall second, filtered like it.

    Each :meth:`update` folds the rate since the previous one into an exponential average with
    time constant :data:`LOAD_WINDOW_S` (the first one starts from the mean rate since the
    object was made). CPU time is ``time.process_time()``: all threads of the process, user and
    system; DataLoader workers are other processes and count as others' load.
    """

    def __init__(self, now: float | None = None, cpu: float | None = None):
        self.t = time.monotonic() if now is None else now
        self.cpu = time.process_time() if cpu is None else cpu
        self.value: float | None = None
        self.lock = threading.Lock()

    def update(self, now: float | None = None, cpu: float | None = None) -> float:
        """The filtered share after folding in the time since the last call (cores, >= 0)."""
        now = time.monotonic() if now is None else now
        cpu = time.process_time() if cpu is None else cpu
        with self.lock:
            dt = now - self.t
            if dt <= 0:
                return self.value or 0.0
            rate = max(0.0, (cpu - self.cpu) / dt)
            if self.value is None:
                self.value = rate
            else:
                keep = math.exp(-dt / LOAD_WINDOW_S)
                self.value = keep * self.value + (1.0 - keep) * rate
            self.t, self.cpu = now, cpu
            return self.value


_OWN = OwnLoad()
_CPUS: int | None = None


def _cpus() -> int:
    global _CPUS
    if _CPUS is None:  # the mask and quota rarely change during a run: read them once
        _CPUS = available_cpus()
    return _CPUS


def busy_aware_threads(ceiling: int | None = None, *, cpus: int | None = None, load: float | None = None,
                       own: float | None = None) -> int:
    """Threads for a parallel block now: :func:`threads_for` with the machine's figures.

    ``ceiling``: the most to use (default: torch's current thread count). ``cpus``, ``load``
    (1-minute load average) and ``own`` (this process's share of it) default to the readings of
    :func:`available_cpus`, ``os.getloadavg`` and :class:`OwnLoad`.
    """
    cpus = _cpus() if cpus is None else cpus
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # pragma: no cover - no load average: assume the cores are ours
            load = 0.0
    own = _OWN.update() if own is None else own
    ceiling = torch.get_num_threads() if ceiling is None else ceiling
    return threads_for(cpus, load, own, ceiling)


@contextlib.contextmanager
def limit_threads(threads: int | None = None) -> Iterator[int]:
    """Run the block with ``threads`` torch threads (default :func:`busy_aware_threads`), never more
    than the current count; the current count is restored afterwards. Yields the count used."""
    before = torch.get_num_threads()
    n = busy_aware_threads(before) if threads is None else max(1, min(int(threads), before))
    if n == before:
        yield n
        return
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles).

    Elsewhere oneDNN emulates bf16 convolutions, which is slower than fp32, so bf16 autocast pays
    only where this is true (``precision=bf16_if_native``).
    """
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(probe is not None and bool(probe()) for probe in probes)
