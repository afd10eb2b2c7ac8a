"""benchmarks/gpu_suite.py: its dry run (the suite's code paths at tiny size on the CPU) prints
every figure once, in order, and the figures agree with what the run left on disk."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_suite  # noqa: E402

from siamgrad.data import load_dataset  # noqa: E402


def _parse(stdout: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in stdout.splitlines():
        name, sep, value = line.partition("=")
        assert sep and name and " " not in name, f"not a name=value line: {line!r}"
        assert name not in values, f"{name} printed twice"
        values[name] = float(value)
    return values


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("suite")
    out = subprocess.run([sys.executable, str(BENCH / "gpu_suite.py"), "--dry-run", "--work-dir", str(work)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return _parse(out.stdout), work


def test_dry_run_prints_every_name_once_in_order(dry_run):
    values, _ = dry_run
    expected = [n for section in gpu_suite.SECTIONS for n in gpu_suite.NAMES[section]] + ["suite_wall_s"]
    assert list(values) == expected
    # the four ratio figures are among them
    assert {"cifar_step_ratio", "cifar_model_fraction", "imagenet_step_ratio", "imagenet_model_fraction"} <= set(values)
    for name, v in values.items():
        assert math.isfinite(v) and v >= 0, f"{name}={v}"


def test_dry_run_runs_the_quick_cuda_tests_on_the_cpu(dry_run):
    values, _ = dry_run
    # the dry run selects the quick device-vs-CPU comparisons (gpu_suite.DRY_TESTS) and runs them
    assert values["cuda_tests_failed"] == 0
    assert values["cuda_tests_passed"] >= 1 and values["cuda_tests_skipped"] == 0
    assert values["cuda_tests_deselected"] >= 1


def test_dry_run_ratios_follow_from_the_rates(dry_run):
    v, _ = dry_run
    peer = max(v["cifar_peer_step_w8"], v["cifar_peer_step_w16"])
    assert v["cifar_step_ratio"] == pytest.approx(v["cifar_siamgrad_step"] / peer, rel=1e-4)
    assert v["cifar_model_fraction"] == pytest.approx(v["cifar_siamgrad_step"] / v["cifar_model_compiled"],
                                                      rel=1e-4)
    assert v["imagenet_step_ratio"] == pytest.approx(v["imagenet_siamgrad_step"] / v["imagenet_peer_step_w16"],
                                                     rel=1e-4)
    assert v["imagenet_model_fraction"] == pytest.approx(
        v["imagenet_siamgrad_step"] / v["imagenet_model_compiled"], rel=1e-4)
    for name in ("cifar_model_fp32", "cifar_model_bf16_cl", "cifar_siamgrad_augment", "imagenet_siamgrad_step"):
        assert v[name] > 0


def test_dry_run_figures_match_what_it_wrote(dry_run):
    v, work = dry_run
    files = sorted((work / "jpegs").rglob("*.jpg"))
    assert len(files) == v["imagenet_jpegs"] == gpu_suite.DRY.imagenet_images
    assert sum(f.stat().st_size for f in files) / gpu_suite.MB == pytest.approx(v["imagenet_jpeg_mb"], rel=1e-3)
    from PIL import Image

    with Image.open(files[0]) as im:
        assert im.size == gpu_suite.DRY.imagenet_px  # (width, height)
    results = json.loads((work / "runs" / "unigrad" / "results.json").read_text())
    assert v["unigrad_knn"] == pytest.approx(results["knn_accuracy"], abs=1e-3)
    assert 0 <= v["unigrad_knn"] <= 100 and v["unigrad_epochs"] == 1


def test_synthetic_cifar_reads_back(tmp_path):
    root = gpu_suite.write_synthetic_cifar(tmp_path, 23, 7, seed=3)
    train, test = load_dataset("cifar10", root, "train"), load_dataset("cifar10", root, "test")
    assert train.images.shape == (23, 3, 32, 32) and test.images.shape == (7, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and 0 <= int(train.labels.min()) <= int(train.labels.max()) <= 9
    assert not torch.equal(train.images[0], train.images[1])


@pytest.mark.parametrize("text,counts", [
    ("....\n12 passed, 3 skipped in 4.20s\n", {"passed": 12, "failed": 0, "skipped": 3, "errors": 0, "deselected": 0}),
    ("F.\n== 1 failed, 1 passed, 2 warnings in 0.50s ==\n",
     {"passed": 1, "failed": 1, "skipped": 0, "errors": 0, "deselected": 0}),
    ("23 skipped, 1 error in 9.1s", {"passed": 0, "failed": 0, "skipped": 23, "errors": 1, "deselected": 0}),
    ("5 passed, 18 deselected in 8.0s", {"passed": 5, "failed": 0, "skipped": 0, "errors": 0, "deselected": 18}),
    ("no tests ran in 0.01s", {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "deselected": 0}),
])
def test_pytest_counts(text, counts):
    assert gpu_suite.pytest_counts(text) == counts


def test_report_format():
    assert gpu_suite.Report.format(7) == "7"
    assert gpu_suite.Report.format(0.12345678) == "0.123457"
    assert gpu_suite.Report.format(72345.67) == "72345.7"
    assert gpu_suite.Report.format(float("nan")) == "nan"
    for v in (3.14159e-5, 0.987654321, 123456789.0):
        assert float(gpu_suite.Report.format(v)) == pytest.approx(v, rel=1e-5)


def test_the_real_suite_refuses_without_cuda_or_data(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        gpu_suite.main(["--data", "/nonexistent"])


# -- the throughput benchmark's busy processes (--contention N)


def test_busy_processes_start_stop_and_end_by_themselves():
    import time

    from bench_throughput import busy_processes

    with busy_processes(2, seconds=60) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)  # running
    assert all(p.poll() is not None for p in procs)  # stopped with the block
    with busy_processes(1, seconds=0.5) as procs:
        deadline = time.monotonic() + 30
        while procs[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert procs[0].returncode == 0  # ended by itself, inside the block
