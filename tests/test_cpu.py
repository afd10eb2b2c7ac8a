"""CPU thread sizing (siamgrad.cpu): cores from faked affinity masks and cgroup files, busy-aware
thread counts from faked load averages, and the augmentation running with the busy-aware count."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import pytest
import torch

from siamgrad import cpu
from siamgrad.augment import multiview
from siamgrad.augment.multiview import build_augment


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _cgroup(tmp_path, files: dict[str, str], proc: str):
    root = tmp_path / "cg"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    root.mkdir(parents=True, exist_ok=True)
    pc = root.parent / "proc_cgroup"
    pc.write_text(proc)
    return cpu.cgroup_cpu_quota(root, pc)


# -- cores available


def test_cgroup_v2_quota_unlimited_and_nested(tmp_path):
    assert _cgroup(tmp_path / "a", {"cpu.max": "200000 100000\n"}, "0::/\n") == pytest.approx(2.0)
    assert _cgroup(tmp_path / "b", {"cpu.max": "max 100000\n"}, "0::/\n") is None
    # the tightest of the process's cgroup and its ancestors wins
    nested = {"cpu.max": "max 100000", "jobs/cpu.max": "150000 100000", "jobs/me/cpu.max": "400000 100000"}
    assert _cgroup(tmp_path / "c", nested, "0::/jobs/me\n") == pytest.approx(1.5)
    assert _cgroup(tmp_path / "d", {"jobs/me/cpu.max": "50000 100000"}, "0::/jobs/me\n") == pytest.approx(0.5)


def test_cgroup_v1_quota(tmp_path):
    v1 = {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "250000\n", "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"}
    proc = "4:memory:/docker/x\n2:cpu,cpuacct:/docker/x\n0::/\n"
    assert _cgroup(tmp_path / "a", v1, proc) == pytest.approx(2.5)
    unlimited = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert _cgroup(tmp_path / "b", unlimited, "1:cpu:/\n") is None
    assert _cgroup(tmp_path / "c", {}, "1:cpu:/\n") is None  # no files at all: no limit


def test_available_cpus_is_the_mask_bounded_by_the_quota_rounded_up(monkeypatch):
    assert cpu.available_cpus(affinity=8, quota=None) == 8
    assert cpu.available_cpus(affinity=8, quota=2.5) == 3
    assert cpu.available_cpus(affinity=8, quota=2.0) == 2
    assert cpu.available_cpus(affinity=2, quota=16.0) == 2
    assert cpu.available_cpus(affinity=8, quota=0.2) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert cpu.affinity_cpus() == 3
    assert cpu.available_cpus(quota=None) == 3


def test_default_threads_respects_the_launcher():
    assert cpu.default_threads({}, cpus=8) == 8
    assert cpu.default_threads({"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "4"}, cpus=8) == 1  # torchrun's
    assert cpu.default_threads({"LOCAL_WORLD_SIZE": "4"}, cpus=8) == 2
    assert cpu.default_threads({"LOCAL_WORLD_SIZE": "4"}, cpus=2) == 1
    assert cpu.default_threads({"OMP_NUM_THREADS": "", "LOCAL_WORLD_SIZE": "x"}, cpus=3) == 3


# -- busy-aware counts


def _reference_threads(cpus, load, own, ceiling):
    """The largest t in 1..min(ceiling, cpus) with t cores each left at least 1 - SLACK free."""
    others = max(0.0, load - max(0.0, own))
    free = min(cpus, max(0.0, cpus - others))
    top = max(1, min(ceiling, cpus))
    best = 1
    for t in range(1, top + 1):
        if t - 1 + (1 - cpu.SLACK) <= free + 1e-9:  # the t-th core has >= 1 - SLACK free
            best = t
    return best


def test_threads_for_examples():
    # 2 cores, 2 other busy processes beside a process using one core: nothing free, one thread
    assert cpu.threads_for(2, load=3.0, own=1.0) == 1
    # 2 cores, the load is this process's own two threads: both free
    assert cpu.threads_for(2, load=2.0, own=2.0) == 2
    # a third of a core taken by others: the second core is not free enough
    assert cpu.threads_for(2, load=2.34, own=2.0) == 1
    # a fifth taken: still granted
    assert cpu.threads_for(2, load=2.2, own=2.0) == 2
    # 16 cores, 4 busy elsewhere, capped by the caller's count
    assert cpu.threads_for(16, load=4.0, own=0.0) == 12
    assert cpu.threads_for(16, load=4.0, own=0.0, ceiling=4) == 4
    assert cpu.threads_for(4, load=40.0, own=0.0) == 1


def test_threads_for_matches_the_reference_on_random_inputs():
    rng = random.Random(0)
    for _ in range(2000):
        cpus = rng.randint(1, 64)
        load, own = rng.uniform(0, 2 * cpus), rng.uniform(0, cpus)
        ceiling = rng.randint(1, 80)
        assert cpu.threads_for(cpus, load, own, ceiling) == _reference_threads(cpus, load, own, ceiling)


def test_own_load_follows_a_step_like_the_kernel_average():
    own = cpu.OwnLoad(now=0.0, cpu=0.0)
    t, c = 0.0, 0.0
    for _ in range(120):  # two minutes at 1.5 cores: the first update sets it, later ones keep it
        t, c = t + 1.0, c + 1.5
        value = own.update(now=t, cpu=c)
    assert value == pytest.approx(1.5)
    for _ in range(60):  # then one time constant at 0.5 cores, in 1-s steps
        t, c = t + 1.0, c + 0.5
        value = own.update(now=t, cpu=c)
    # a first-order filter after one time constant: new + (old - new) / e, whatever the step size
    assert value == pytest.approx(0.5 + (1.5 - 0.5) * math.exp(-1.0))
    assert own.update(now=t, cpu=c) == pytest.approx(value)  # no time passed: unchanged


def test_busy_aware_threads_reads_the_load_average(monkeypatch, torch_threads):
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 1.0, 0.5))
    assert cpu.busy_aware_threads(2, cpus=2, own=0.0) == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert cpu.busy_aware_threads(2, cpus=2, own=0.0) == 2
    torch.set_num_threads(1)  # the default ceiling is torch's current count
    assert cpu.busy_aware_threads(cpus=8, load=0.0, own=0.0) == 1


def test_limit_threads_sets_and_restores(monkeypatch, torch_threads):
    torch.set_num_threads(2)
    monkeypatch.setattr(cpu, "_CPUS", 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (6.0, 6.0, 6.0))
    with cpu.limit_threads() as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError):
        with cpu.limit_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2  # restored after an error too
    with cpu.limit_threads(5) as n:  # never above the caller's count
        assert n == 2 and torch.get_num_threads() == 2


def test_augmentation_runs_with_the_busy_aware_count(monkeypatch, torch_threads):
    torch.set_num_threads(2)
    monkeypatch.setattr(cpu, "_CPUS", 2)
    seen: list[int] = []
    real = multiview.augment_view

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(multiview, "augment_view", spy)
    aug = build_augment("cifar", 32, 2)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (8.0, 8.0, 8.0))  # busy: one thread
    busy = aug(x, generator=torch.Generator().manual_seed(1))
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2
    seen.clear()
    aug.threads = None  # the caller's count, whatever the load
    free = aug(x, generator=torch.Generator().manual_seed(1))
    assert seen and set(seen) == {2}
    for a, b in zip(busy, free):  # the thread count changes no result
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    aug.threads = 0
    with pytest.raises(Exception, match="threads must be"):
        aug(x, generator=torch.Generator().manual_seed(1))


def test_native_bf16_agrees_with_the_cpu_flags():
    flags = Path("/proc/cpuinfo")
    if not flags.exists():
        pytest.skip("no /proc/cpuinfo to read the CPU flags from")
    words = set(flags.read_text().split())
    assert cpu.native_bf16() == bool({"avx512_bf16", "amx_tile"} & words)


def test_bf16_if_native_resolves_by_the_cpu(monkeypatch):
    from siamgrad import config

    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(config, "native_bf16", lambda native=native: native)
        cfg = config.resolve(config.build_config(["device=cpu", "precision=bf16_if_native"]))
        assert cfg.precision == expected
    assert config.resolve(config.build_config(["device=cpu"])).precision == "fp32"  # auto stays exact on a CPU
