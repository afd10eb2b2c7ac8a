"""Every GPU figure siamgrad's speed case rests on, in one command: ``name=value`` lines.

    # on the development machine: the GPU machine sees only the checkout, not ../shared, so copy
    # the CIFAR-10 subset into local_data/ (ignored by git) first
    mkdir -p local_data && cp -r ../shared/data/cifar10-subset local_data/
    # on the GPU machine, from the repository root (sized for at most 8 minutes on one H100 /
    # H200, never timed on one yet; --sections reruns a part, e.g. --sections imagenet)
    python benchmarks/gpu_suite.py --data local_data/cifar10-subset
    # anywhere: the same code paths at tiny size on the CPU, in well under a minute (a test runs it)
    python benchmarks/gpu_suite.py --dry-run

With the device tool, carry the copy along: ``carry=["local_data"]`` (about 19 MB).

stdout holds only ``name=value`` lines, one per figure, in the order below (progress and notes go
to stderr). Rates are view-images/s (one augmented image through the backbone; a step on ``B``
images with 2 views moves ``2 B``), times are seconds, ``*_peak_mb`` the peak memory allocated
during that configuration's trials (CUDA: ``torch.cuda.max_memory_allocated``; CPU in the dry
run: the peak resident set), reset at the start of each configuration.

1. **CUDA tests** (``pytest -m cuda tests/test_cuda.py``: augmentation on the device against the
   CPU, fp32 / bf16 + channels_last steps of every method in both forms, compile, the streamed
   nvjpeg path, the trainer in bf16, a one-process NCCL group): ``cuda_tests_passed``,
   ``cuda_tests_failed``, ``cuda_tests_skipped``, ``cuda_tests_deselected``, ``cuda_tests_s``.
   The dry run runs the quick ones on the CPU (``SIAMGRAD_CUDA_TEST_DEVICE=cpu``, ``-k``
   :data:`DRY_TESTS`) and deselects the rest; all of them on the CPU take minutes.
2. **CIFAR size**: CIFAR-stem ResNet-18 + Barlow Twins 2048-2048 head, batch 512 per view, 2
   views. Model alone on views already on the device: ``cifar_model_fp32``,
   ``cifar_model_bf16_cl`` (bf16 autocast + channels_last), ``cifar_model_compiled`` (+
   ``torch.compile`` of the backbone, ``cifar_compile_s`` its first steps). With the compiled
   bf16 + channels_last step: siamgrad's augmentation alone (``cifar_siamgrad_augment``) and
   whole step (``cifar_siamgrad_step``: the subset as uint8 on the GPU, batched augmentation
   there), and the per-image PIL pipeline (torchvision transforms in ``DataLoader`` workers,
   ``bench_throughput.peer_dataset``) with 8 and 16 workers feeding the same step
   (``cifar_peer_step_w8``, ``cifar_peer_step_w16``). ``cifar_step_ratio`` = siamgrad / the
   faster peer (target >= 4), ``cifar_model_fraction`` = siamgrad / compiled model alone
   (target >= 0.85).
3. **ImageNet size**: synthetic 500 x 375 JPEGs (quality 90) written to local disk
   (``imagenet_jpegs``, ``imagenet_jpeg_mb``, ``imagenet_write_s``), ResNet-50 + SimCLR head at
   224 px, batch 128 per view, compiled, bf16 + channels_last: ``imagenet_model_compiled``,
   siamgrad's streamed path (workers read bytes, nvjpeg decodes batches on the GPU, ragged
   batched augmentation there; ``imagenet_siamgrad_step``) and the per-image PIL pipeline with
   16 workers (``imagenet_peer_step_w16``, ``bench_stream.PILPairs``); ``imagenet_step_ratio``
   (target >= 3.5) and ``imagenet_model_fraction`` (target >= 0.85).
4. **UniGrad on the CIFAR-10 subset** (``cifar10_resnet18`` preset, ``--unigrad-epochs``
   epochs, kNN at the end): ``unigrad_epochs``, ``unigrad_knn``, ``unigrad_random_knn`` (the
   same encoder at initialization), ``unigrad_wall_s`` (building the trainer and training),
   ``unigrad_peak_mb``.

Then ``suite_wall_s``. Measurement rules are the other benchmarks' (their functions are reused:
``bench_throughput`` for the in-memory pipelines, steps and timing, ``bench_stream`` for the JPEG
paths, ``bench_memory`` for peaks): every trial warms up first, the sides are interleaved round by
round and each figure is the median over the rounds. A DataLoader trial warms up for one batch
per worker plus two (the first wave of batches, made in parallel, would otherwise count as free)
and times at least two batches per worker. A section that would start after ``--budget``
seconds is skipped and its figures print as ``nan`` (``skipped=`` names it).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from siamgrad import cpu

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_memory import MB, PeakMemory  # noqa: E402
from bench_stream import PILPairs, streamed_views, write_synthetic_jpegs  # noqa: E402
from bench_throughput import (  # noqa: E402
    PRESET, SCALE, BatchedViews, interleaved, load_images, make_model, peer_dataset, peer_trial, sync, timed_rate,
)

#: Every name the suite prints, in order (the test checks the dry run prints each one).
NAMES = {
    "tests": ["cuda_tests_passed", "cuda_tests_failed", "cuda_tests_skipped", "cuda_tests_deselected", "cuda_tests_s"],
    "cifar": ["cifar_model_fp32", "cifar_model_fp32_peak_mb", "cifar_model_bf16_cl", "cifar_model_bf16_cl_peak_mb",
              "cifar_compile_s", "cifar_model_compiled", "cifar_model_compiled_peak_mb", "cifar_siamgrad_augment",
              "cifar_siamgrad_step", "cifar_siamgrad_step_peak_mb", "cifar_peer_step_w8", "cifar_peer_step_w8_peak_mb",
              "cifar_peer_step_w16", "cifar_peer_step_w16_peak_mb", "cifar_step_ratio", "cifar_model_fraction"],
    "imagenet": ["imagenet_jpegs", "imagenet_jpeg_mb", "imagenet_write_s", "imagenet_compile_s",
                 "imagenet_model_compiled", "imagenet_model_compiled_peak_mb", "imagenet_siamgrad_step",
                 "imagenet_siamgrad_step_peak_mb", "imagenet_peer_step_w16", "imagenet_peer_step_w16_peak_mb",
                 "imagenet_step_ratio", "imagenet_model_fraction"],
    "unigrad": ["unigrad_epochs", "unigrad_knn", "unigrad_random_knn", "unigrad_wall_s", "unigrad_peak_mb"],
}
SECTIONS = list(NAMES)
#: The CUDA tests the dry run runs on the CPU (``pytest -k``): the quick device-vs-CPU comparisons.
DRY_TESTS = "(augment and byol) or ragged or streamed or process_group"


@dataclass(frozen=True)
class Sizes:
    """What one run measures; :data:`GPU` is the real suite, :data:`DRY` the tiny CPU check."""

    cifar_backbone: str
    cifar_head: int  # Barlow Twins projector width (hidden = output)
    cifar_batch: int  # images per step (each gives 2 views)
    peer_workers: tuple[int, int]  # the CIFAR peer's two worker counts (named w8 / w16)
    imagenet_backbone: str
    imagenet_px: tuple[int, int]  # written JPEGs, width x height
    imagenet_size: int  # crop side
    imagenet_batch: int
    imagenet_images: int
    imagenet_workers: int  # the peer's workers (siamgrad's streamed path: its default)
    steps: int  # timed steps per trial (DataLoader trials: at least 2 per worker)
    warmup: int  # untimed steps first (DataLoader trials: one per worker + 2)
    rounds: int
    imagenet_rounds: int
    compile_backend: str
    loader_waves: bool  # DataLoader trials sized by their worker count (see the docstring)
    unigrad_batch: int
    unigrad_settings: tuple[str, ...]  # overrides of the cifar10_resnet18 preset


GPU = Sizes(cifar_backbone="resnet18", cifar_head=2048, cifar_batch=512, peer_workers=(8, 16),
            imagenet_backbone="resnet50", imagenet_px=(500, 375), imagenet_size=224, imagenet_batch=128,
            imagenet_images=4096, imagenet_workers=16, steps=20, warmup=3, rounds=3, imagenet_rounds=2,
            compile_backend="inductor", loader_waves=True,
            unigrad_batch=512, unigrad_settings=())
DRY = Sizes(cifar_backbone="tiny", cifar_head=64, cifar_batch=16, peer_workers=(1, 2),
            imagenet_backbone="tiny", imagenet_px=(50, 38), imagenet_size=32, imagenet_batch=8,
            imagenet_images=40, imagenet_workers=2, steps=2, warmup=1, rounds=1, imagenet_rounds=1,
            compile_backend="eager", loader_waves=False,
            unigrad_batch=64, unigrad_settings=("backbone=tiny", "method.proj_hidden_dim=64",
                                                "method.proj_output_dim=64", "eval.knn_k=20"))


# --------------------------------------------------------------------------------------------
# output


class Report:
    """Prints ``name=value`` lines on stdout (and keeps them); notes go to stderr."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    @staticmethod
    def format(value: float) -> str:
        """Integers as they are; other values to six significant digits."""
        if isinstance(value, int):
            return str(value)
        return "nan" if math.isnan(value) else f"{value:.6g}"

    def __call__(self, name: str, value: float) -> None:
        self.values[name] = float(value)
        print(f"{name}={self.format(value)}", flush=True)

    def skip(self, section: str) -> None:
        for name in NAMES[section]:
            self(name, float("nan"))


def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def mb(nbytes: int) -> float:
    return nbytes / MB


# --------------------------------------------------------------------------------------------
# 1. the CUDA tests


def run_cuda_tests(report: Report, dry: bool, timeout: float) -> None:
    """``pytest -m cuda tests/test_cuda.py`` in a child process; its counts and time."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", str(REPO / "tests" / "test_cuda.py")]
    if dry:
        env["SIAMGRAD_CUDA_TEST_DEVICE"] = "cpu"
        cmd += ["-k", DRY_TESTS]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        text, code = out.stdout + out.stderr, out.returncode
    except subprocess.TimeoutExpired as e:
        raw = e.stdout or ""
        text, code = raw.decode(errors="replace") if isinstance(raw, bytes) else raw, -1
        note(f"cuda tests: stopped after {timeout:.0f} s")
    counts = pytest_counts(text)
    if code != 0 or counts["failed"]:
        note("cuda tests, last lines:\n" + "\n".join(text.strip().splitlines()[-25:]))
    report("cuda_tests_passed", counts["passed"])
    report("cuda_tests_failed", counts["failed"] + counts["errors"] + (1 if code not in (0, 1, 5) else 0))
    report("cuda_tests_skipped", counts["skipped"])
    report("cuda_tests_deselected", counts["deselected"])
    report("cuda_tests_s", time.perf_counter() - t0)


def pytest_counts(text: str) -> dict[str, int]:
    """Counts of pytest's summary line (``3 passed, 1 failed, 2 skipped in 4.2s``)."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "deselected": 0}
    lines = [ln for ln in text.splitlines() if re.search(r"\b(passed|failed|skipped|error|errors|deselected)\b", ln)
             and re.search(r"\bin [0-9.]+s\b", ln)]
    if lines:
        for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", lines[-1]):
            counts["errors" if word.startswith("error") else word] += int(n)
    return counts


# --------------------------------------------------------------------------------------------
# helpers shared by the throughput sections


def fixed_views(batch: int, size: int, device: torch.device) -> Iterator[tuple[list[torch.Tensor], None]]:
    """The same two random views on the device forever: the model alone."""
    views = [torch.randn(batch, 3, size, size, device=device) for _ in range(2)]
    return itertools.repeat((views, None))


class Trials:
    """Interleaved trials that also keep each configuration's peak memory (the highest over its
    rounds)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peaks: dict[str, int] = {}

    def measured(self, name: str, fn: Callable[[], float]) -> Callable[[], float]:
        def run() -> float:
            with PeakMemory(self.device) as mem:
                rate = fn()
            self.peaks[name] = max(self.peaks.get(name, 0), mem.peak)
            return rate

        return run

    def once(self, name: str, fn: Callable[[], float]) -> float:
        return self.measured(name, fn)()


def loader_warmup(sizes: Sizes, workers: int) -> tuple[int, int]:
    """(warm-up, timed) batches of a DataLoader trial with ``workers`` workers (see the docstring)."""
    if not sizes.loader_waves:
        return sizes.warmup, sizes.steps
    return max(sizes.warmup, workers + 2), max(sizes.steps, 2 * workers)


def compile_first_steps(model, views: Iterator, steps: int = 2) -> float:
    """Seconds for the first steps after ``torch.compile`` (tracing and code generation)."""
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        model.step(next(views)[0])
    sync()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# 2. CIFAR size


def run_cifar(report: Report, sizes: Sizes, data_root: str | None, device: torch.device) -> None:
    b, vi = sizes.cifar_batch, 2 * sizes.cifar_batch
    head = dict(proj_hidden_dim=sizes.cifar_head, proj_output_dim=sizes.cifar_head)
    data = load_images(data_root)
    note(f"cifar: {len(data)} images, {sizes.cifar_backbone} + barlow_twins {sizes.cifar_head}-{sizes.cifar_head}, "
         f"batch {b} x 2 views, device {device}")
    trials = Trials(device)
    model = make_model(sizes.cifar_backbone, "fp32", False, device=device, method="barlow_twins", options=head)
    fixed = fixed_views(b, 32, device)

    def alone(steps: int = sizes.steps) -> float:
        return timed_rate(fixed, model.step, sizes.warmup, steps, vi)

    report("cifar_model_fp32", trials.once("fp32", alone))
    report("cifar_model_fp32_peak_mb", mb(trials.peaks["fp32"]))
    model.set_format("bf16", True)
    report("cifar_model_bf16_cl", trials.once("bf16_cl", alone))
    report("cifar_model_bf16_cl_peak_mb", mb(trials.peaks["bf16_cl"]))
    model.method.backbone.compile(backend=sizes.compile_backend)
    report("cifar_compile_s", compile_first_steps(model, fixed))

    ours = iter(BatchedViews(data, 2, b, preset=PRESET, scale=SCALE, device=device))
    peer = peer_dataset(data, 2)
    pin = device.type == "cuda"
    sides: dict[str, Callable[[], float]] = {
        "compiled": trials.measured("compiled", alone),
        "augment": lambda: timed_rate(ours, None, sizes.warmup, sizes.steps, vi),
        "siamgrad": trials.measured("siamgrad", lambda: timed_rate(ours, model.step, sizes.warmup, sizes.steps, vi)),
    }
    for w in sizes.peer_workers:
        warm, steps = loader_warmup(sizes, w)
        sides[f"peer_w{w}"] = trials.measured(
            f"peer_w{w}", lambda w=w, warm=warm, steps=steps: peer_trial(peer, w, model.step, warm, steps, b,
                                                                         pin_memory=pin))
    rates = interleaved(sides, sizes.rounds)
    w_lo, w_hi = sizes.peer_workers
    report("cifar_model_compiled", rates["compiled"])
    report("cifar_model_compiled_peak_mb", mb(trials.peaks["compiled"]))
    report("cifar_siamgrad_augment", rates["augment"])
    report("cifar_siamgrad_step", rates["siamgrad"])
    report("cifar_siamgrad_step_peak_mb", mb(trials.peaks["siamgrad"]))
    report("cifar_peer_step_w8", rates[f"peer_w{w_lo}"])
    report("cifar_peer_step_w8_peak_mb", mb(trials.peaks[f"peer_w{w_lo}"]))
    report("cifar_peer_step_w16", rates[f"peer_w{w_hi}"])
    report("cifar_peer_step_w16_peak_mb", mb(trials.peaks[f"peer_w{w_hi}"]))
    report("cifar_step_ratio", rates["siamgrad"] / max(rates[f"peer_w{w_lo}"], rates[f"peer_w{w_hi}"]))
    report("cifar_model_fraction", rates["siamgrad"] / rates["compiled"])


# --------------------------------------------------------------------------------------------
# 3. ImageNet size


def run_imagenet(report: Report, sizes: Sizes, device: torch.device, work: Path) -> None:
    from siamgrad.augment.multiview import build_augment
    from siamgrad.data import FolderSource, StreamBatches

    from bench_stream import MEAN, STD

    root = work / "jpegs"
    w, h = sizes.imagenet_px
    t0 = time.perf_counter()
    nbytes = write_synthetic_jpegs(root, sizes.imagenet_images, w, h)
    report("imagenet_jpegs", sizes.imagenet_images)
    report("imagenet_jpeg_mb", mb(nbytes))
    report("imagenet_write_s", time.perf_counter() - t0)

    b, size, vi = sizes.imagenet_batch, sizes.imagenet_size, 2 * sizes.imagenet_batch
    note(f"imagenet: {sizes.imagenet_images} JPEGs {w}x{h} in {root}, {sizes.imagenet_backbone} + simclr head, "
         f"{size} px, batch {b} x 2 views, device {device}")
    trials = Trials(device)
    model = make_model(sizes.imagenet_backbone, "bf16", True, device=device, method="simclr", options={},
                       cifar_stem=size <= 64, compile_backend=sizes.compile_backend)
    fixed = fixed_views(b, size, device)
    report("imagenet_compile_s", compile_first_steps(model, fixed))

    source = FolderSource.scan(root)
    files = [source.where / f for f in source.files]
    stream = StreamBatches(source, device, b, seed=0, max_side=512)  # its default workers: cores - 1
    ours = streamed_views(stream, build_augment("simclr", size, 2, mean=MEAN, std=STD))
    peer = PILPairs(files, size)
    pin = device.type == "cuda"
    warm_s, steps_s = loader_warmup(sizes, stream.workers)
    warm_p, steps_p = loader_warmup(sizes, sizes.imagenet_workers)
    rates = interleaved({
        "compiled": trials.measured("compiled", lambda: timed_rate(fixed, model.step, sizes.warmup, sizes.steps, vi)),
        "siamgrad": trials.measured("siamgrad", lambda: timed_rate(ours, model.step, warm_s, steps_s, vi)),
        "peer": trials.measured("peer", lambda: peer_trial(peer, sizes.imagenet_workers, model.step, warm_p, steps_p,
                                                           b, n_views=2, pin_memory=pin)),
    }, sizes.imagenet_rounds)
    ours.close()
    report("imagenet_model_compiled", rates["compiled"])
    report("imagenet_model_compiled_peak_mb", mb(trials.peaks["compiled"]))
    report("imagenet_siamgrad_step", rates["siamgrad"])
    report("imagenet_siamgrad_step_peak_mb", mb(trials.peaks["siamgrad"]))
    report("imagenet_peer_step_w16", rates["peer"])
    report("imagenet_peer_step_w16_peak_mb", mb(trials.peaks["peer"]))
    report("imagenet_step_ratio", rates["siamgrad"] / rates["peer"])
    report("imagenet_model_fraction", rates["siamgrad"] / rates["compiled"])


# --------------------------------------------------------------------------------------------
# 4. UniGrad on the CIFAR-10 subset


def write_synthetic_cifar(dst: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A CIFAR-10 folder in the official binary layout (``cifar-10-batches-bin``) of random images
    and labels: the dry run's stand-in for the subset."""
    folder = dst / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)

    def records(n: int) -> bytes:
        labels = torch.randint(0, 10, (n, 1), generator=g, dtype=torch.uint8)
        pixels = torch.randint(0, 256, (n, 3072), generator=g, dtype=torch.uint8)
        return torch.cat([labels, pixels], 1).numpy().tobytes()

    per = -(-n_train // 5)
    for i in range(1, 6):
        (folder / f"data_batch_{i}.bin").write_bytes(records(min(per, max(0, n_train - (i - 1) * per))))
    (folder / "test_batch.bin").write_bytes(records(n_test))
    return dst


def run_unigrad(report: Report, sizes: Sizes, data_root: str, device: torch.device, epochs: int, work: Path) -> None:
    from siamgrad.config import build_config
    from siamgrad.train.loop import Trainer

    settings = ["preset=cifar10_resnet18", f"data.root={data_root}", f"epochs={epochs}",
                f"batch_size={sizes.unigrad_batch}", f"device={device.type}", "progress=false", "diag.enabled=false",
                "eval.every=0", "diag.report=false", f"out_dir={work / 'runs'}", "run_name=unigrad",
                "resume=false", f"threads={torch.get_num_threads()}", *sizes.unigrad_settings]
    note("unigrad: " + " ".join(settings))
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        trainer = Trainer(build_config(settings), log=False)
        result = trainer.fit()
        sync()
        wall = time.perf_counter() - t0
    trainer.close()
    nan = float("nan")
    report("unigrad_epochs", epochs)
    report("unigrad_knn", result.knn_accuracy if result.knn_accuracy is not None else nan)
    report("unigrad_random_knn", result.random_knn_accuracy if result.random_knn_accuracy is not None else nan)
    report("unigrad_wall_s", wall)
    report("unigrad_peak_mb", mb(mem.peak))


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="the CIFAR-10 subset folder (holding cifar-10-batches-py); "
                                  "the dry run writes random stand-in images when absent")
    p.add_argument("--dry-run", action="store_true", help="the same code paths at tiny size on the CPU")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {','.join(SECTIONS)}")
    p.add_argument("--unigrad-epochs", type=int, default=None, help="default 50 (dry run 1)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds after which no section starts (default 400; dry run: none)")
    p.add_argument("--work-dir", default=None, help="where JPEGs and runs go (default: a temporary folder)")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.dry_run:
        sizes, device = DRY, torch.device("cpu")
        # a check of the code, not a measurement: as many threads as the machine's load leaves free
        torch.set_num_threads(cpu.busy_aware_threads(cpu.available_cpus()))
    else:
        if not torch.cuda.is_available():
            p.error("no CUDA device; use --dry-run for the CPU check")
        if not args.data or not Path(args.data).is_dir():
            p.error("--data must name the CIFAR-10 subset folder (see the docstring for copying it into the checkout)")
        sizes, device = GPU, torch.device("cuda")
        torch.backends.cudnn.benchmark = True
    budget = args.budget if args.budget is not None else (math.inf if args.dry_run else 400.0)
    epochs = args.unigrad_epochs or (1 if args.dry_run else 50)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="gpu_suite_"))
    work.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None or not Path(data).is_dir():
        data = str(write_synthetic_cifar(work / "cifar10", 320, 100))
        note(f"note: random stand-in CIFAR-10 images in {data}")
    note(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
         f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")

    report, skipped = Report(), []
    runs = {
        "tests": lambda: run_cuda_tests(report, args.dry_run, timeout=240),
        "cifar": lambda: run_cifar(report, sizes, data, device),
        "imagenet": lambda: run_imagenet(report, sizes, device, work),
        "unigrad": lambda: run_unigrad(report, sizes, data, device, epochs, work),
    }
    try:
        for name in sections:
            if time.perf_counter() - t_start > budget:
                skipped.append(name)
                report.skip(name)
                continue
            note(f"-- {name} ({time.perf_counter() - t_start:.0f} s in)")
            runs[name]()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    if skipped:
        print(f"skipped={','.join(skipped)}", flush=True)
    report("suite_wall_s", time.perf_counter() - t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
